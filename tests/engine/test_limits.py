"""The request layer's controls, on their own."""

from __future__ import annotations

import asyncio
import time

import pytest

from corral._limits import AdaptiveConcurrency, CircuitBreaker, RateLimiter, _duration, backoff


def test_duration_formats():
    assert _duration("1s") == 1.0
    assert _duration("6m0s") == 360.0
    assert _duration("20ms") == pytest.approx(0.02)
    assert _duration("1m30.5s") == pytest.approx(90.5)
    assert _duration("2.5") == 2.5
    assert _duration(None) is None and _duration("soon") is None


def test_rate_limiter_paces_requests():
    async def go() -> float:
        lim = RateLimiter(rpm=600)  # 10/s, bursts of at most 10
        t0 = time.monotonic()
        for _ in range(25):
            await lim.acquire(1)
        return time.monotonic() - t0

    elapsed = asyncio.run(go())
    assert 1.2 < elapsed < 2.5  # 10 in the first burst, then 15 at 10/s


def test_rate_limiter_tokens_and_reconcile():
    async def go() -> float:
        lim = RateLimiter(tpm=6000)  # 100 tokens/s
        await lim.acquire(100)
        lim.settle(100, 250)  # the call used more than estimated: the overrun is paid back
        t0 = time.monotonic()
        await lim.acquire(10)
        return time.monotonic() - t0

    assert asyncio.run(go()) >= 1.4


def test_headers_create_and_tighten_limits():
    lim = RateLimiter()
    lim.observe({"x-ratelimit-limit-requests": "600", "x-ratelimit-remaining-requests": "599"})
    assert lim.requests is not None and lim.requests.rate == pytest.approx(10)
    lim.observe({"x-ratelimit-limit-requests": "120"})
    assert lim.requests.rate == pytest.approx(2)
    lim.observe({"x-ratelimit-limit-requests": "1200"})  # looser headers never loosen
    assert lim.requests.rate == pytest.approx(2)
    lim.observe({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "2s"})
    assert lim.requests.wait_time(1) > 1.5
    anth = RateLimiter()
    anth.observe({"anthropic-ratelimit-tokens-limit": "60000"})
    assert anth.tokens is not None and anth.tokens.rate == pytest.approx(1000)


def test_adaptive_concurrency_increases_and_halves():
    async def go() -> tuple[float, float, float]:
        g = AdaptiveConcurrency(32, start=4, cooldown_s=10)
        for _ in range(40):
            await g.acquire()
            await g.release("ok")
        grown = g.limit
        await g.acquire()
        await g.release("overload")
        cut = g.limit
        await g.acquire()
        await g.release("overload")  # within the cooldown: counted once
        return grown, cut, g.limit

    grown, cut, again = asyncio.run(go())
    assert grown > 8
    assert cut == pytest.approx(grown / 2, rel=0.05)
    assert again == cut


async def round_trip(g: AdaptiveConcurrency) -> None:
    """Every call the limit allows goes, then all of them answer."""
    n = int(g.limit)
    for _ in range(n):
        await g.acquire()
    for _ in range(n):
        await g.release("ok")


def test_slow_start_doubles_each_round_trip_then_grows_by_one():
    """From 8, a round trip of successes doubles the limit until the first overload; after it,
    a round trip adds about one."""

    async def go() -> list[float]:
        g = AdaptiveConcurrency(1024, start=8, cooldown_s=0)
        seen = []
        for _ in range(4):  # four round trips
            await round_trip(g)
            seen.append(g.limit)
        await g.acquire()
        await g.release("overload")
        seen.append(g.limit)
        await round_trip(g)
        seen.append(g.limit)
        return seen

    seen = asyncio.run(go())
    assert seen[:4] == [16, 32, 64, 128]
    assert seen[4] == 64  # halved, and out of slow start
    assert seen[5] == pytest.approx(65, abs=0.05)


def test_slow_start_ends_when_more_calls_in_flight_bring_no_more_answers(monkeypatch):
    """A provider that answers at most 100 calls a second at 0.1 s latency: past 10 in flight,
    doubling brings nothing, so slow start ends and the limit goes back to the best round's."""
    import corral._limits as limits

    clock = [0.0]
    monkeypatch.setattr(limits.time, "monotonic", lambda: clock[0])

    async def go() -> tuple[bool, float, list[float]]:
        g = AdaptiveConcurrency(1024, start=2)
        seen = []
        for _ in range(12):
            n = int(g.limit)
            span = max(0.1, n / 100.0)  # n in flight answer in one latency, or at 100 a second
            for _ in range(n):
                await g.acquire()
            for _i in range(n):
                clock[0] += span / n
                g.observe(0.1, None)
                await g.release("ok")
            seen.append(g.limit)
            if not g.slow_start:
                break
        return g.slow_start, g.limit, seen

    slow, limit, seen = asyncio.run(go())
    assert not slow, seen
    assert limit <= 40, seen  # 10 in flight suffice; it stopped within a few doublings of that
    assert max(seen) < 200, seen


def test_slow_start_ends_when_the_calls_start_to_queue(monkeypatch):
    """A client that can handle 100 answers a second at 0.1 s latency: past 10 in flight the
    calls queue, so their latency grows with the calls in flight. Slow start ends at the first
    round whose latency is INFLATION times the lowest, the limit lands near rate x lowest latency
    x INFLATION, and it does not creep up while the latency stays inflated."""
    import corral._limits as limits

    clock = [0.0]
    monkeypatch.setattr(limits.time, "monotonic", lambda: clock[0])

    async def one_round(g: AdaptiveConcurrency) -> None:
        n = int(g.limit)
        latency = max(0.1, n / 100.0)  # queueing: n in flight take n / 100 s to be answered
        for _ in range(n):
            await g.acquire()
        for _ in range(n):
            clock[0] += latency / n
            g.observe(latency, None)
            await g.release("ok")

    async def go() -> tuple[list[float], float]:
        g = AdaptiveConcurrency(1024, start=4)
        seen = []
        for _ in range(12):
            await one_round(g)
            seen.append(g.limit)
            if not g.slow_start:
                break
        landed = g.limit
        for _ in range(20):  # 20 more round trips of inflated latency
            await one_round(g)
        assert not g.slow_start, seen
        return seen, g.limit - landed

    seen, grew = asyncio.run(go())
    assert max(seen) <= 128, seen  # stopped within a few doublings past the 10 that suffice
    assert seen[-1] <= 100 * 0.1 * AdaptiveConcurrency.INFLATION * 2, seen
    assert grew < 1.0  # held while the calls queue


def test_rate_times_latency_caps_the_limit_and_token_limits_count_through_call_size():
    async def go() -> tuple[float, float]:
        g = AdaptiveConcurrency(1024, start=8)
        # 100 requests/s at 1 s latency: about 100 in flight, with room to spare
        for _ in range(50):
            g.observe(1.0, 100.0)
        g.limit = 1000.0
        g.observe(1.0, 100.0)
        capped = g.limit
        for _ in range(20):  # slow start goes on, up to the ceiling and no further
            await g.acquire()
            await g.release("ok")
        return capped, g.limit

    capped, later = asyncio.run(go())
    assert capped == pytest.approx(100 * 1.0 * AdaptiveConcurrency.HEADROOM + 1)
    assert later == pytest.approx(capped)
    lim = RateLimiter(rpm=6000, tpm=60_000)
    assert lim.per_second() == pytest.approx(100)  # no call seen yet: the request limit alone
    for _ in range(100):
        lim.settle(1000, 1000)
    assert lim.per_second() == pytest.approx(1.0)  # 1,000 tokens/s at 1,000 tokens a call
    assert RateLimiter().per_second() is None


def test_adaptive_concurrency_bounds_in_flight():
    async def go() -> int:
        g = AdaptiveConcurrency(3, start=3)
        peak = 0

        async def call() -> None:
            nonlocal peak
            await g.acquire()
            peak = max(peak, g.in_flight)
            await asyncio.sleep(0.01)
            await g.release("ok")

        await asyncio.gather(*(call() for _ in range(20)))
        return peak

    assert asyncio.run(go()) == 3


def test_circuit_breaker_opens_probes_and_closes():
    async def go() -> list[str]:
        b = CircuitBreaker(threshold=3, base_pause_s=0.1)
        events = []
        for _ in range(3):
            b.failure()
        assert b.open
        probe = await b.admit()  # waits the pause, then this caller probes
        events.append(f"probe={probe}")
        waiter = asyncio.create_task(b.admit())
        await asyncio.sleep(0.05)
        events.append(f"waiting={not waiter.done()}")
        b.success()
        events.append(f"released={await waiter is False}")
        events.append(f"open={b.open}")
        return events

    assert asyncio.run(go()) == ["probe=True", "waiting=True", "released=True", "open=False"]


def test_backoff_full_jitter_and_retry_after():
    assert backoff(0, 7.5) == 7.5
    assert backoff(3, 500) == 60.0  # capped
    samples = [backoff(4, None) for _ in range(200)]
    assert 0 <= min(samples) and max(samples) <= 8.0 and len(set(samples)) > 150


def test_breaker_counts_only_the_probes_failures_while_open():
    b = CircuitBreaker(threshold=3, base_pause_s=1.0)
    for _ in range(12):  # the calls in flight when it opened all fail at once
        b.failure()
    assert b.open and b.pause_s == 1.0
    b.failure(probe=True)
    assert b.pause_s == 2.0


def test_workers_sharing_an_account_each_pace_to_their_share_of_its_limits():
    from corral._limits import RateLimiter

    lim = RateLimiter(rpm=600, tpm=60_000)
    lim.share(4)  # four workers on the run: a quarter each
    assert lim.requests is not None and lim.tokens is not None
    assert lim.requests.rate == 600 / 60 / 4 and lim.tokens.rate == 60_000 / 60 / 4
    lim.observe({"x-ratelimit-limit-requests": "400"})  # the account's limit, announced: tighter
    assert lim.account["requests"] == 400 and lim.requests.rate == 400 / 60 / 4
    lim.share(1)  # alone again: the whole account
    assert lim.requests.rate == 400 / 60 and lim.tokens.rate == 60_000 / 60
