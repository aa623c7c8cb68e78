"""The request layer's controls: rate limits, adaptive concurrency, backoff, circuit breaker.

All of them live in the engine, for every model, so providers stay small. They are written for
one asyncio loop (no locks beyond asyncio's own).
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from dataclasses import dataclass, field
from typing import Any


class TokenBucket:
    """``rate`` units per second, holding at most ``burst`` units."""

    def __init__(self, per_minute: float, burst_s: float = 0.1) -> None:
        self.rate = per_minute / 60.0
        self.burst_s = burst_s  # a small burst: smooth pacing also satisfies sliding windows
        self.capacity = max(1.0, self.rate * burst_s)
        self.level = self.capacity
        self.stamp = time.monotonic()
        self.paused_until = 0.0

    def _refill(self) -> None:
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait_time(self, amount: float) -> float:
        self._refill()
        now = time.monotonic()
        if now < self.paused_until:
            return self.paused_until - now
        amount = min(amount, self.capacity)  # a request larger than the bucket waits for a full one
        if self.level >= amount:
            return 0.0
        return (amount - self.level) / self.rate

    def take(self, amount: float) -> None:
        self._refill()
        self.level -= amount  # may go negative: a reconciled overrun is paid back by waiting

    def set_rate(self, per_minute: float) -> None:
        self._refill()
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate * self.burst_s)
        self.level = min(self.level, self.capacity)


class RateLimiter:
    """Requests per minute and tokens per minute. Tokens are estimated before a call and
    reconciled with the reported usage after it; provider headers can tighten both."""

    def __init__(self, rpm: float | None = None, tpm: float | None = None) -> None:
        self.requests = TokenBucket(rpm) if rpm else None
        self.tokens = TokenBucket(tpm) if tpm else None
        #: the account's limits per minute (configured, or announced by the provider's headers)
        self.account: dict[str, float] = {k: v for k, v in (("requests", rpm), ("tokens", tpm)) if v}
        self.workers = 1  # the processes sharing the account's limits: each paces to its share

    def share(self, workers: int) -> None:
        """Pace to 1/``workers`` of the account's limits (other workers take the rest)."""
        workers = max(1, workers)
        if workers == self.workers:
            return
        self.workers = workers
        for attr, limit in self.account.items():
            bucket = getattr(self, attr)
            if bucket is not None:
                bucket.set_rate(limit / workers)

    async def acquire(self, tokens: int) -> None:
        """Wait for a request's and ``tokens``' share of the limits."""
        while True:
            wait = max(0.0, self.paused_until - time.monotonic())
            if self.requests is not None:
                wait = max(wait, self.requests.wait_time(1))
            if self.tokens is not None:
                wait = max(wait, self.tokens.wait_time(tokens))
            if wait <= 0:
                break
            await asyncio.sleep(min(wait, 5.0))
        if self.requests is not None:
            self.requests.take(1)
        if self.tokens is not None:
            self.tokens.take(tokens)

    def settle(self, estimated: int, actual: int) -> None:
        if self.tokens is not None and actual != estimated:
            self.tokens.take(actual - estimated)
        avg = self.tokens_per_call
        self.tokens_per_call = float(actual) if avg is None else avg + 0.1 * (actual - avg)

    def per_second(self) -> float | None:
        """The requests per second the limits allow (the token limit read through the calls'
        average size), or ``None`` while no limit is known."""
        rates = []
        if self.requests is not None:
            rates.append(self.requests.rate)
        if self.tokens is not None and self.tokens_per_call:
            rates.append(self.tokens.rate / self.tokens_per_call)
        return min(rates) if rates else None

    def observe(self, headers: dict[str, Any] | None) -> None:
        """Tighten from ``x-ratelimit-*`` (OpenAI) or ``anthropic-ratelimit-*`` headers."""
        if not headers:
            return
        h = {str(k).lower(): v for k, v in headers.items()}
        for kind, attr in (("requests", "requests"), ("tokens", "tokens")):
            limit = _num(h.get(f"x-ratelimit-limit-{kind}") or h.get(f"anthropic-ratelimit-{kind}-limit"))
            remaining = _num(
                h.get(f"x-ratelimit-remaining-{kind}") or h.get(f"anthropic-ratelimit-{kind}-remaining")
            )
            reset = _duration(
                h.get(f"x-ratelimit-reset-{kind}") or h.get(f"anthropic-ratelimit-{kind}-reset")
            )
            bucket = getattr(self, attr)
            if limit:
                if bucket is None:
                    self.account[attr] = limit
                    bucket = TokenBucket(limit / self.workers)
                    setattr(self, attr, bucket)
                elif limit < self.account.get(attr, float("inf")):
                    self.account[attr] = limit
                    bucket.set_rate(limit / self.workers)
            if bucket is not None and remaining is not None:
                bucket._refill()
                bucket.level = min(bucket.level, remaining)  # the provider's count wins
                if remaining <= 0 and reset:
                    bucket.paused_until = max(bucket.paused_until, time.monotonic() + reset)

    def pause(self, seconds: float) -> None:
        """Hold every caller for ``seconds`` (a 429's retry-after applies to all, not one)."""
        until = time.monotonic() + seconds
        self.paused_until = max(self.paused_until, until)

    paused_until: float = 0.0
    #: the moving average of a call's tokens (``None`` before the first call)
    tokens_per_call: float | None = None


def _num(v: Any) -> float | None:
    try:
        return float(v) if v is not None else None
    except (TypeError, ValueError):
        return None


_DUR = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")


def _duration(v: Any) -> float | None:
    """Seconds from ``"1s"``, ``"6m0s"``, ``"20ms"``, a number, or an RFC 3339 timestamp."""
    if v is None:
        return None
    text = str(v).strip()
    try:
        return float(text)
    except ValueError:
        pass
    parts = _DUR.findall(text)
    if parts and "".join(a + b for a, b in parts) == text.replace(" ", ""):
        scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
        return sum(float(a) * scale[b] for a, b in parts)
    try:
        from datetime import datetime

        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
        return max(0.0, when.timestamp() - time.time())
    except ValueError:
        return None


class AdaptiveConcurrency:
    """The calls allowed in flight: slow start, then additive increase / multiplicative decrease.

    From ``start``, each success adds one call while in slow start, so the limit doubles every
    round trip, until the first overload (429, 503), or until doubling stops paying: two rounds
    in a row whose answers per second grew by less than a quarter (the provider, not the calls
    in flight, is then the limit; the limit goes back to what the best round had), or one round
    whose latency is more than ``INFLATION`` times the lowest a round has had (the calls now
    queue, in this process or at the provider, so more of them add delay, not answers; the limit
    goes to the best round's rate x that lowest latency x ``INFLATION``). After that each success
    adds ``1/limit`` (about one a round trip) while the latency is not inflated, and an overload
    halves the limit, at most once per ``cooldown_s`` so one burst of errors counts once. The limit never passes ``maximum`` (the job's hard cap) nor
    the ceiling that the provider's rate limits and the calls' latency allow (:meth:`observe`:
    in flight = requests per second x latency, with room to spare): more calls in flight than
    that would only queue at the rate limiter.
    """

    #: the ceiling's room above rate x latency (latency varies from call to call)
    HEADROOM = 1.5
    #: weight of the newest latency in its moving average
    LATENCY_WEIGHT = 0.1
    #: a slow-start round must raise the answers per second by this factor to count as growth
    GROWTH = 1.25
    #: the shortest slow-start round, in seconds (at no latency, a rate over less is noise)
    MIN_ROUND_S = 0.05
    #: latency over this many times the lowest round's means the calls in flight are queueing
    INFLATION = 2.0

    def __init__(self, maximum: int, start: int | None = None, cooldown_s: float = 1.0) -> None:
        self.maximum = max(1, maximum)
        self.limit = float(min(self.maximum, start or self.maximum))
        self.in_flight = 0
        self.cooldown_s = cooldown_s
        self.last_cut = 0.0
        self.slow_start = True
        self.ceiling = float(self.maximum)
        self.latency_s: float | None = None
        # slow start's rounds: each lasts until as many calls answered as the limit at its start,
        # and at least one latency
        self._round_t0 = 0.0
        self._round_need = 0
        self._round_done = 0
        self._best_rate = 0.0
        self._best_limit = self.limit
        self._flat = 0
        #: the lowest latency (moving average) at the end of a slow-start round
        self._base_latency: float | None = None
        self._cond = asyncio.Condition()

    @property
    def cap(self) -> float:
        return min(float(self.maximum), self.ceiling)

    async def acquire(self) -> None:
        async with self._cond:
            await self._cond.wait_for(lambda: self.in_flight < int(self.limit))
            self.in_flight += 1

    async def release(self, outcome: str) -> None:
        async with self._cond:
            self.in_flight -= 1
            if outcome == "ok":
                if self.slow_start:
                    self._count_round()
                if self.slow_start and self._queueing():  # seen between rounds: stop at once
                    self._land()
                if self.slow_start:
                    self.limit = min(self.cap, self.limit + 1.0)
                elif not self._queueing():
                    self.limit = min(self.cap, self.limit + 1.0 / max(self.limit, 1.0))
            elif outcome == "overload":
                self.slow_start = False
                now = time.monotonic()
                if now - self.last_cut >= self.cooldown_s:
                    self.limit = max(1.0, self.limit / 2.0)
                    self.last_cut = now
            free = int(self.limit) - self.in_flight
            if free > 0:  # wake only as many waiters as may go: a thousand of them may wait
                self._cond.notify(free)

    def _count_round(self) -> None:
        now = time.monotonic()
        if self._round_need == 0:
            self._round_t0, self._round_need, self._round_done = now, max(1, int(self.limit)), 0
        self._round_done += 1
        # a round spans at least one latency, so that a burst of answers is not read as a rate
        span = now - self._round_t0
        if self._round_done < self._round_need or span < max(self.latency_s or 0.0, self.MIN_ROUND_S):
            return
        rate = self._round_done / span
        if self.latency_s is not None and not self._queueing():
            base = self._base_latency
            self._base_latency = self.latency_s if base is None else min(base, self.latency_s)
        if self._queueing():  # more in flight only waits longer
            self._land()
        elif rate >= self._best_rate * self.GROWTH:
            self._best_rate, self._best_limit, self._flat = rate, self.limit, 0
        else:
            self._flat += 1
            if self._flat >= 2:  # more calls in flight no longer bring more answers
                self.slow_start = False
                self.limit = min(self.limit, self._best_limit)
        self._round_need = 0

    def _land(self) -> None:
        """End slow start because the calls queue: keep what the best round had, or what its
        rate needs at the lowest latency (with ``INFLATION`` of room), whichever is more."""
        self.slow_start = False
        fits = self._best_rate * (self._base_latency or 0.0) * self.INFLATION
        self.limit = min(self.limit, max(self._best_limit, fits, 1.0))
        self._round_need = 0

    def _queueing(self) -> bool:
        """Whether the calls' latency is inflated past ``INFLATION`` x the lowest round's."""
        base, now = self._base_latency, self.latency_s
        return base is not None and now is not None and now > self.INFLATION * base

    def observe(self, latency_s: float, per_second: float | None) -> None:
        """A call's latency, and the request rate the limiter allows (``None``: no limit known)."""
        avg = self.latency_s
        self.latency_s = latency_s if avg is None else avg + self.LATENCY_WEIGHT * (latency_s - avg)
        if per_second:
            self.ceiling = max(1.0, per_second * self.latency_s * self.HEADROOM + 1.0)
            self.limit = min(self.limit, self.cap)


@dataclass
class CircuitBreaker:
    """Opens after ``threshold`` consecutive failures that look like an outage; while open, one
    caller at a time probes after a growing pause and everyone else waits, so a provider that is
    down pauses the run instead of burning every row's retries.

    ``down_since`` is when the current run of failures began and ``last_error`` what the last one
    said, so the engine can report the outage and give up after a bounded time."""

    threshold: int = 5
    base_pause_s: float = 1.0
    max_pause_s: float = 30.0
    failures: int = 0
    opened_at: float | None = None
    pause_s: float = 0.0
    probing: bool = False
    down_since: float | None = None
    last_error: str = ""
    _event: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def open(self) -> bool:
        return self.opened_at is not None

    def next_probe_in(self) -> float:
        """Seconds until the next probe may go (0 when closed or due)."""
        if self.opened_at is None:
            return 0.0
        return max(0.0, self.opened_at + self.pause_s - time.monotonic())

    def down_for(self) -> float:
        """Seconds since the current run of failures began (0 when the provider answers)."""
        return 0.0 if self.down_since is None else time.monotonic() - self.down_since

    async def admit(self, stop: asyncio.Event | None = None) -> bool:
        """Wait while open; returns True when this caller is the probe. Returns False at once
        when ``stop`` is set (the caller checks it)."""
        while self.opened_at is not None:
            if stop is not None and stop.is_set():
                return False
            if not self.probing and time.monotonic() >= self.opened_at + self.pause_s:
                self.probing = True
                return True
            self._event.clear()
            remaining = self.opened_at + self.pause_s - time.monotonic()
            waits = [asyncio.ensure_future(self._event.wait())]
            if stop is not None:
                waits.append(asyncio.ensure_future(stop.wait()))
            try:
                await asyncio.wait(waits, timeout=max(0.05, min(remaining, 1.0)),
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()
        return False

    def success(self) -> None:
        self.failures = 0
        self.down_since = None
        if self.opened_at is not None:
            self.opened_at = None
            self.probing = False
            self.pause_s = 0.0
            self._event.set()

    def failure(self, probe: bool = False, error: str = "") -> None:
        """A failure that looks like an outage. While open, only the probe's own failure counts
        (and doubles the pause); calls that were in flight when it opened do not."""
        self.failures += 1
        if error:
            self.last_error = error
        if self.down_since is None:
            self.down_since = time.monotonic()
        if self.opened_at is not None:
            if probe:
                self.probing = False
                self.pause_s = min(self.max_pause_s, max(self.base_pause_s, self.pause_s * 2))
                self.opened_at = time.monotonic()
        elif self.failures >= self.threshold:
            self.opened_at = time.monotonic()
            self.pause_s = self.base_pause_s

    def abandon_probe(self) -> None:
        """The probe was cancelled before it learned anything: let another caller probe."""
        if self.probing:
            self.probing = False
            self._event.set()


def backoff(retry: int, retry_after: float | None, base: float = 0.5, cap: float = 60.0) -> float:
    """Exponential backoff with full jitter; a provider's retry-after wins when given."""
    if retry_after is not None:
        return min(max(retry_after, 0.0), cap)
    return random.uniform(0, min(cap, base * (2**retry)))
