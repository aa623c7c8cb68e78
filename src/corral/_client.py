"""The request layer: every model call of a run goes through :meth:`RequestLayer.ask`.

``ask`` = response cache → run budget → rate limiter and concurrency slots → retry (with the
circuit breaker) → the model → the call recorded in the ledger before its answer is used. It is
written once, here, for every model, so providers stay small (see :mod:`corral._limits` for the
controls themselves). A :class:`Client` is one model with its own controls; the
:class:`RunBudget` holds the run's limits, what in-flight calls have reserved against them, and
what each model's calls are estimated to cost; a :class:`Halt` is how any part of a run stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import orjson

from corral._call_claims import Claimer
from corral._commit import GroupCommitter, dumps
from corral._limits import AdaptiveConcurrency, CircuitBreaker, RateLimiter, backoff
from corral._peers import Peers
from corral._per_turn import PerTurn
from corral.errors import (
    AuthenticationError,
    PermanentModelError,
    ProviderUnavailable,
    QuotaExceeded,
    RateLimited,
    TransientModelError,
)
from corral.job import MAX_CONCURRENCY, Budget, Job, ModelRef
from corral.models.base import Completion, Model, Request, Usage
from corral.store.base import AttemptRecord, CallRecord, Store

if TYPE_CHECKING:  # pragma: no cover
    from corral.batchapi import BatchCoordinator

#: a prompt longer than this (characters) is said to the user once per step: likely a mistake
PROMPT_WARN_CHARS = 1_000_000
#: the calls in flight a client's slow start begins from (then doubled each round trip): a
#: provider takes 32 at once from any SDK loop, and each doubling from 8 cost a round trip
SLOW_START_FROM = 32


# --- models ---------------------------------------------------------------------------------


def default_concurrency(model: Model) -> int:
    """Records worked on at once without a job's ``concurrency``: as many as the model allows in
    flight (the calls in flight then find the provider's capacity on their own), or 2 for a
    model that answers one call at a time, so the next prompt is ready when it is free."""
    cap = model.capabilities.max_concurrency
    return min(cap, MAX_CONCURRENCY) if cap > 1 else 2


# --- stopping and counting ------------------------------------------------------------------


class Stop(Exception):
    """Raised inside a worker when the run must stop scheduling new calls."""


class Deferred(Exception):
    """The record needs an answer that a provider batch will bring; it waits for the next pass."""


class Halt:
    """How a run is told to stop: the event every wait watches, why, and (for a provider that
    refused the credentials or the account, or stayed down) the error that ended it."""

    def __init__(self, event: asyncio.Event) -> None:
        self.event = event
        self.reason: str | None = None
        self.fatal: BaseException | None = None
        #: why the run ended early, for the exit code: auth, quota, outage
        self.cause: str | None = None

    def stopping(self) -> Stop:
        """The exception a worker raises once the run is stopping."""
        return Stop(self.reason or "stopping")

    def end(self, reason: str) -> Stop:
        """Stop the run for ``reason`` (the first reason given is kept)."""
        self.reason = self.reason or reason
        self.event.set()
        return Stop(reason)

    def fail(self, e: Exception) -> Stop:
        """Every row would fail (credentials, quota, an outage): stop the run with ``e``."""
        if self.fatal is None:
            self.fatal = e
        if isinstance(e, QuotaExceeded):
            what, self.cause = "account out of quota", self.cause or "quota"
        elif isinstance(e, ProviderUnavailable):
            what, self.cause = "provider unreachable", self.cause or "outage"
        else:
            what, self.cause = "authentication failed", self.cause or "auth"
        self.end(f"{what}: {e}")
        return Stop(str(e))


@dataclass
class Counts:
    """The run's counters, as shown while it runs: records by state, and the calls' usage."""

    states: dict[str, int] = field(default_factory=dict)
    made: int = 0
    replayed: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost: Decimal | None = Decimal(0)

    @classmethod
    def of_run(cls, store: Store, run_id: str, limit: int | None) -> Counts:
        """The counters as the store has them (a resumed run goes on from there)."""
        t = store.totals(run_id)
        return cls(store.counts(run_id, limit), t.made, t.replayed, t.input_tokens, t.output_tokens, t.cost)

    def move(self, src: str, dst: str, n: int = 1) -> None:
        """``n`` records went from state ``src`` to state ``dst``."""
        s = self.states
        s[src] = s.get(src, 0) - n
        s[dst] = s.get(dst, 0) + n

    def paid(self, u: Usage) -> None:
        """Count one paid call's usage (an unknown cost makes the run's cost unknown)."""
        self.made += 1
        self.input_tokens += u.input_tokens
        self.output_tokens += u.output_tokens
        if self.cost is not None:
            self.cost = None if u.cost is None else self.cost + u.cost


# --- clients and the run budget -------------------------------------------------------------


@dataclass(eq=False)
class Client:
    """One model and its own controls: rate limits, concurrency slots, circuit breaker."""

    model: Model
    ref: ModelRef
    limiter: RateLimiter
    slots: AdaptiveConcurrency
    breaker: CircuitBreaker
    headers_seen: float | None = None

    @classmethod
    def build(cls, model: Model, ref: ModelRef, concurrency: int) -> Client:
        return cls(
            model, ref, RateLimiter(ref.rpm, ref.tpm),
            AdaptiveConcurrency(concurrency, start=min(concurrency, SLOW_START_FROM)), CircuitBreaker(),
        )


@dataclass(slots=True)
class Hold:
    """A call's reservation in the run's budget."""

    cost: Decimal
    tokens: int
    probe: bool  # the call that finds out its model's price
    done: bool = False


@dataclass(slots=True)
class _Estimate:
    """What one model's next call is expected to use, learned from its calls so far."""

    #: the most one paid call has cost (reserved for each call while a cost budget is set)
    cost: Decimal | None = None
    most_output: int | None = None
    #: a call is finding out this model's price (while a cost cap is set, others wait for it)
    probing: bool = False


class RunBudget:
    """The run's limits (``budget:``) against what is spent and what in-flight calls reserved.

    A call reserves an estimate before it is made (:meth:`reserve`) and gives it back when it is
    counted (:meth:`settle`); a call that would pass a limit waits while others hold
    reservations (they may cost less, or not happen) and stops the run only when it alone would
    pass it."""

    def __init__(self, budget: Budget, counts: Counts, halt: Halt, model_id: str) -> None:
        self.limits = budget
        self.counts = counts
        self.halt = halt
        self.model_id = model_id
        #: a run-wide limit is set: calls reserve room before they are made
        self.active = any(v is not None for v in (budget.max_calls, budget.max_tokens, budget.max_cost_usd))
        self.per_record = budget.per_record if budget.per_record.active() else None
        self.in_flight = 0  # paid calls in flight, counted against max_calls before they return
        self.reserved_calls = 0  # calls holding a reservation
        self.cost_reserved = Decimal(0)
        self.tokens_reserved = 0
        self.unpriced: str | None = None  # the first model whose call came back without a price
        self.settled = asyncio.Event()  # set (and replaced) each time a reservation settles
        self.estimates: dict[Client, _Estimate] = {}
        self.peers: Peers | None = None  # the run's other workers, when it has a lease owner

    def check(self, cost: Decimal = Decimal(0), tokens: int = 0) -> None:
        """Stop the run if it has no room for one more call of the given estimate (on top of the
        calls in flight, which hold their own reservations)."""
        reason = self.over_budget(cost, tokens)
        if reason:
            raise self.halt.end(reason)

    def over_budget(self, cost: Decimal = Decimal(0), tokens: int = 0) -> str | None:
        """Which limit one more call of the given estimate would pass, or ``None``. With other
        workers on the run, the limit is this worker's share of what is left (corral._peers),
        looked up more often as the run nears it."""
        b, c, peers = self.limits, self.counts, self.peers
        mine = {"calls": Decimal(c.made), "tokens": Decimal(c.input_tokens + c.output_tokens),
                "cost": c.cost if c.cost is not None else Decimal(0)}
        limits = {k: Decimal(v) for k, v in (("calls", b.max_calls), ("tokens", b.max_tokens),
                                              ("cost", b.max_cost_usd)) if v is not None}
        if peers is not None and limits:
            held = {"calls": Decimal(self.in_flight), "tokens": Decimal(self.tokens_reserved), "cost": self.cost_reserved}
            due = any(peers.due(k, mine[k], held[k], v) for k, v in limits.items())
            peers.refresh(c.made, c.input_tokens + c.output_tokens, c.cost, force=due,
                          held=(self.in_flight, self.tokens_reserved, self.cost_reserved))

        def room(which: str) -> tuple[Decimal, Decimal, Decimal]:  # used, may use, the run's total
            sh = peers.share(which, mine[which], limits[which]) if peers is not None else None
            return (mine[which], limits[which], mine[which]) if sh is None else (sh.used, sh.room, sh.total)

        if "calls" in limits:
            used, most, _ = room("calls")
            if used + self.in_flight >= most:
                return f"budget: max_calls {b.max_calls:,} reached"
        if "tokens" in limits:
            used, most, _ = room("tokens")
            if used + self.tokens_reserved >= most or used + self.tokens_reserved + tokens > most:
                return f"budget: max_tokens {b.max_tokens:,} reached"
        if b.max_cost_usd is None:
            return None
        if c.cost is None:
            return (
                f"budget: max_cost_usd is set but model `{self.unpriced or self.model_id}` reports no price, "
                "so spending cannot be bounded; give the model a price or remove max_cost_usd"
            )
        spent, most, total = room("cost")
        if spent >= most or spent + self.cost_reserved + cost > most:
            return (
                f"budget: max_cost_usd {b.max_cost_usd} reached "
                f"(spent {total}; the next call would pass it)"
            )
        return None

    async def reserve(self, client: Client, request: Request) -> Hold:
        """Hold room for one call before it is made: the most a call of this model has cost so
        far, and its prompt plus the largest answer so far. While a model's price is still
        unknown, its calls go one at a time until the first is settled."""
        b = self.limits
        est = self.estimates.get(client)
        if est is None:
            est = self.estimates[client] = _Estimate()
        tokens = 0
        if b.max_tokens is not None:
            out = est.most_output if est.most_output is not None else request.max_tokens
            tokens = sum(len(m.content) for m in request.messages) // 4 + out
        cost = Decimal(0)
        probe = False
        if b.max_cost_usd is not None:
            while est.cost is None and est.probing:
                await self.settled.wait()
            if est.cost is None:
                est.probing = probe = True
            else:
                cost = est.cost
        stop = self.halt.event
        while self.over_budget(cost, tokens) and self.reserved_calls > 0 and not stop.is_set():
            await self.settled.wait()
        try:
            self.check(cost, tokens)
        except Stop:
            if probe:
                est.probing = False
                self._signal()
            raise
        self.reserved_calls += 1
        self.cost_reserved += cost
        self.tokens_reserved += tokens
        return Hold(cost, tokens, probe)

    def settle(self, client: Client, hold: Hold, comp: Completion | None) -> None:
        """Give a call's reservation back; with its answer, learn the model's price and size."""
        hold.done = True
        self.reserved_calls -= 1
        self.cost_reserved -= hold.cost
        self.tokens_reserved -= hold.tokens
        est = self.estimates[client]
        if comp is not None:
            u = comp.usage
            if u.cost is not None:
                est.cost = max(est.cost or Decimal(0), u.cost)
            est.most_output = max(est.most_output or 0, u.output_tokens)
        if hold.probe:
            est.probing = False
        self._signal()

    def _signal(self) -> None:
        """Wake every call waiting for room (the event is replaced, not cleared)."""
        self.settled.set()
        self.settled = asyncio.Event()


# --- the request layer ----------------------------------------------------------------------


class RequestLayer:
    """Asks the run's models: cache → budget → limiter → retry → model → ledger (see the
    module's docstring). One per run, shared by every worker."""

    def __init__(
        self, store: Store, run_id: str, budget: RunBudget, main: Client, clients: dict[str, Client],
        say: Callable[[str], None], owner: str | None = None,
    ) -> None:
        self.store = store
        self.run_id = run_id
        #: the worker's claims on the calls it pays, under its lease owner (corral._call_claims)
        self.claims = None if owner is None else Claimer(store, owner, budget.halt.event, say)
        #: the response cache, looked up for a turn of the event loop's rows in one query
        self.lookups: PerTurn[str, str | None] = PerTurn(self._cached)
        c = budget.counts
        budget.peers = None if owner is None else Peers(
            store, run_id, owner, (c.made, c.input_tokens + c.output_tokens, c.cost))
        self.budget = budget
        self.counts = budget.counts  # the run's counters and its stop, shared with the budget
        self.halt = budget.halt
        self.stop = budget.halt.event
        self.main = main
        self.clients = clients
        self.say = say
        #: the provider batches of the run's `mode: batch` steps, when it has any
        self.batches: BatchCoordinator | None = None
        self.inflight: dict[str, asyncio.Future[None]] = {}  # requests being asked, by cache key
        #: model calls in flight (a stop cancels them after the grace period)
        self.calls: set[asyncio.Future[Completion]] = set()
        self.warned: set[str] = set()  # steps whose oversized prompt was reported

    def calls_allowed(self) -> int:
        """The calls the run's models allow in flight now (their adaptive limits together)."""
        return int(self.main.slots.limit + sum(c.slots.limit for c in self.clients.values()))

    @classmethod
    def for_run(
        cls, store: Store, run_id: str, counts: Counts, halt: Halt, job: Job, concurrency: int,
        main: tuple[Model, ModelRef | None], extra: dict[str, tuple[Model, ModelRef]],
        say: Callable[[str], None], owner: str | None = None,
    ) -> RequestLayer:
        """The layer of a run: a client for the job's model (``concurrency`` calls at once at
        most) and one for each model its strategies name (as many as that model allows, capped
        by the job's ``concurrency``), under the job's budget."""
        model, ref = main
        clients: dict[str, Client] = {}
        for name, (m, r) in extra.items():
            cap = m.capabilities.max_concurrency
            clients[name] = Client.build(m, r, 1 if cap <= 1 else min(cap, job.concurrency or cap))
        first = Client.build(model, ref or ModelRef.model_validate({"name": model.id}), concurrency)
        budget = RunBudget(job.budget, counts, halt, model.id)
        return cls(store, run_id, budget, first, clients, say, owner)

    async def cut_short(self, grace_s: float) -> None:
        """On a stop, calls in flight get ``grace_s`` seconds to bring their answers (which are
        then recorded); the rest are cancelled so that nothing waits on a slow provider."""
        await self.stop.wait()
        deadline = time.monotonic() + grace_s
        while self.calls and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for call in list(self.calls):
            call.cancel()

    def client(self, name: str | None) -> Client:
        """The client of a model a strategy names (``None``: the job's model)."""
        if name is None:
            return self.main
        return self.clients[name]

    def paused(self) -> bool:
        """Whether a provider is down (its circuit breaker open) and its calls wait for it."""
        return self.main.breaker.open or any(c.breaker.open for c in self.clients.values())

    async def ask(
        self, committer: GroupCommitter, rec_key: str, label: str, attempt: int, request: Request,
        batch: bool = False, client: Client | None = None, strategy: str | None = None,
        kind: str | None = None,
    ) -> tuple[str, Completion]:
        """The answer to ``request`` for record ``rec_key``'s step ``label`` (and its cache key):
        replayed from the store when it was paid for before, else asked and recorded. With
        ``batch``, an answer not yet paid for is left to a provider batch (raises
        :class:`Deferred`)."""
        client = client or self.main
        h = request.cache_key(client.model.id)
        while True:
            while (flying := self.inflight.get(h)) is not None:  # in flight for another record: wait
                with contextlib.suppress(Exception):
                    await asyncio.shield(flying)
            hit = await self.lookups.get(h)
            if hit is not None or h not in self.inflight:
                break  # else another record began paying it during the look-up: wait for that
        if hit is not None:
            return h, self.replay(committer, (rec_key, label, attempt), h, client, hit, (strategy, kind), batch)
        if self.stop.is_set():
            raise self.halt.stopping()
        if batch and self.batches is not None:
            self.batches.want(h, rec_key, label, attempt, request, strategy, kind)  # raises
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.inflight[h] = done  # from here on, the same request for another record waits for this
        try:
            return h, await self._pay(committer, (rec_key, label, attempt), request, h, client, (strategy, kind))
        finally:
            del self.inflight[h]
            done.set_result(None)

    def _cached(self, request_hashes: list[str]) -> dict[str, str | None]:
        found = self.store.cached_many(request_hashes)
        return {h: found.get(h) for h in request_hashes}

    def replay(self, committer: GroupCommitter, at: tuple[str, str, int], h: str, client: Client,
                hit: str, made_by: tuple[str | None, str | None], batch: bool) -> Completion:
        """A recorded answer, put in the ledger as a replay (at no cost) for record, step, attempt
        ``at``; ``made_by`` is the (strategy, kind) of the call it stands for."""
        comp = Completion.from_dict(orjson.loads(hit))
        if batch and self.batches is not None and h in self.batches.paid:
            return comp  # paid in this run's batch, already in the ledger: not a replay
        self.counts.replayed += 1
        u = comp.usage
        committer.add(call=CallRecord(
            self.run_id, *at, h, client.model.id, True, u.input_tokens, u.output_tokens,
            u.cached_input_tokens, u.reasoning_tokens, Decimal(0), 0.0, strategy=made_by[0], kind=made_by[1]))
        return comp

    async def _pay(self, committer: GroupCommitter, at: tuple[str, str, int], request: Request, h: str,
                   client: Client, made_by: tuple[str | None, str | None]) -> Completion:
        """The paid call of ``request``, unless another worker is asking it now (then its answer,
        replayed: :mod:`corral._call_claims`); under the run's budget."""
        rec_key, label, attempt = at
        claims = self.claims
        if claims is not None and (hit := await claims.claim_or_wait(h, rec_key)) is not None:
            return self.replay(committer, at, h, client, hit, made_by, False)
        size = sum(len(m.content) for m in request.messages)
        if size > PROMPT_WARN_CHARS and label not in self.warned:
            self.warned.add(label)
            self.say(
                f"warning: step `{label}` sends a {size / 1e6:.1f} MB prompt for record {rec_key} "
                f"(about {size // 4:,} tokens), more than most models take; check the input "
                "column, or split long documents with extract's `chunking:`"
            )
        try:
            comp, latency = await self.spend(committer, at, request, h, client, made_by)
            u = comp.usage
            await committer.durable(CallRecord(
                self.run_id, rec_key, label, attempt, h, client.model.id, False,
                u.input_tokens, u.output_tokens, u.cached_input_tokens, u.reasoning_tokens,
                u.cost, latency, request_json=dumps(request.to_dict()), response_json=dumps(comp.to_dict()),
                strategy=made_by[0], kind=made_by[1], cache_write_tokens=u.cache_write_tokens,
            ))
        except BaseException:
            if claims is not None:  # no response recorded: another worker may ask it
                self.store.release_call(h, claims.owner)
            raise
        self.recorded(comp)
        return comp

    async def spend(
        self, committer: GroupCommitter, at: tuple[str, str, int], request: Request, h: str,
        client: Client, made_by: tuple[str | None, str | None],
    ) -> tuple[Completion, float]:
        """One paid call of ``request`` (cache key ``h``) for record, step, attempt ``at``, under
        the run's budget: room reserved before it is made, its usage counted once it answers (a
        call the provider billed but failed goes in the ledger as it is). Recording the answer
        is the caller's (:meth:`recorded` after): ``ask`` records it for one row, the packer
        (corral._pack) for each row it answers. ``made_by`` is the (strategy, kind) of the call."""
        budget, held = self.budget, None
        try:
            if self.stop.is_set():
                raise self.halt.stopping()
            held = await budget.reserve(client, request) if budget.active else None
            budget.in_flight += 1  # counted against max_calls from the budget check on
            try:
                comp, latency = await self._retrying(committer, *at, request, client)
            except PermanentModelError as e:
                used = getattr(e, "usage", None)
                if used is not None:  # the provider billed a call that failed: it still costs
                    self.counts.paid(used)
                    committer.add(call=CallRecord(
                        self.run_id, *at, h, client.model.id, False,
                        used.input_tokens, used.output_tokens, used.cached_input_tokens,
                        used.reasoning_tokens, used.cost, 0.0, strategy=made_by[0], kind=made_by[1]))
                raise
            finally:
                budget.in_flight -= 1
            u = comp.usage
            self.counts.paid(u)
            if u.cost is None:
                budget.unpriced = budget.unpriced or client.model.id
            if held is not None:  # counted: the reservation gives way to the real usage at once
                budget.settle(client, held, comp)
            return comp, latency
        finally:
            if held is not None and not held.done:  # the call failed before it was counted
                budget.settle(client, held, None)

    def recorded(self, comp: Completion) -> None:
        """A paid call's answer is durable: the run's other workers hear of what it spent."""
        if self.budget.peers is not None:
            u = comp.usage
            self.budget.peers.committed(u.input_tokens + u.output_tokens, u.cost)

    async def _retrying(
        self, committer: GroupCommitter, rec_key: str, label: str, attempt: int, request: Request,
        client: Client,
    ) -> tuple[Completion, float]:
        """Retry transient failures with exponential backoff and full jitter (or the provider's
        retry-after); an authentication failure stops the run. While the provider is down (the
        circuit breaker is open) a failure spends none of the record's retries: the record waits
        for the provider, up to the model's ``max_outage_s``."""
        retry = 0
        while True:
            try:
                return await self._once(request, client)
            except (AuthenticationError, QuotaExceeded) as e:
                raise self.halt.fail(e) from None
            except TransientModelError as e:
                if self.stop.is_set():
                    raise self.halt.stopping() from None
                if client.breaker.open and not isinstance(e, RateLimited):
                    continue  # an outage: wait for the provider, not for this record's retries
                if retry >= client.ref.max_retries:
                    raise TransientModelError(f"{e} (after {retry + 1} tries)") from None
                committer.add(attempt=AttemptRecord(
                    self.run_id, rec_key, label, attempt, None, "retry", f"try {retry + 1}: {e}"))
                await self.pause(backoff(retry, getattr(e, "retry_after", None)))
                retry += 1

    async def retried(self, client: Client, fn: Any, *args: Any) -> Any:
        """``await fn(*args)``, a provider call outside the ledger (a batch's submit, poll or
        fetch), retried on transient failures like a model call."""
        retry = 0
        while True:
            try:
                return await fn(*args)
            except (AuthenticationError, QuotaExceeded) as e:
                raise self.halt.fail(e) from None
            except TransientModelError as e:
                if retry >= client.ref.max_retries or self.stop.is_set():
                    raise
                await self.pause(backoff(retry, getattr(e, "retry_after", None)))
                retry += 1

    async def pause(self, seconds: float) -> None:
        """Sleep, but end at once (raising :class:`Stop`) when the run is told to stop."""
        if seconds > 0:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stop.wait(), timeout=seconds)
        if self.stop.is_set():
            raise self.halt.stopping()

    async def _once(self, request: Request, c: Client) -> tuple[Completion, float]:
        """One try: breaker, slot, rate token, the model (with its timeout), then what the
        controls learn from it."""
        probe = await c.breaker.admit(self.stop)
        if self.stop.is_set():
            if probe:
                c.breaker.abandon_probe()
            raise self.halt.stopping()
        estimate = sum(len(m.content) for m in request.messages) // 4 + request.max_tokens
        # a slot first, then the rate token: paced calls leave one by one, not in a burst
        await c.slots.acquire()
        try:
            await self._limited(c, estimate)
        except BaseException:
            await c.slots.release("cancelled")
            if probe:
                c.breaker.abandon_probe()
            raise
        outcome = "error"
        t0 = time.perf_counter()
        task: asyncio.Future[Completion] = asyncio.ensure_future(c.model.complete(request))
        self.calls.add(task)
        try:
            timeout = c.ref.timeout_s
            try:
                comp = await (asyncio.wait_for(task, timeout) if timeout else task)
            except TimeoutError:
                raise TransientModelError(f"no answer within {timeout:g} s") from None
            except asyncio.CancelledError:
                me = asyncio.current_task()
                if task.cancelled() and self.stop.is_set() and not (me and me.cancelling()):
                    outcome = "cancelled"  # the stop cut this call short (see the engine's go())
                    raise self.halt.stopping() from None
                raise
            outcome = "ok"
        except RateLimited as e:
            outcome = "overload"
            c.breaker.success()  # the provider answered: it is up
            if e.retry_after:
                c.limiter.pause(min(e.retry_after, 60.0))
            raise
        except TransientModelError as e:
            was_open = c.breaker.open
            c.breaker.failure(probe, str(e))
            if c.breaker.open:
                self._outage(c, opened=not was_open, probe=probe)
            raise
        except Stop:
            if probe:
                c.breaker.abandon_probe()
            raise
        except Exception:
            if probe:
                c.breaker.success()
            raise
        finally:
            self.calls.discard(task)
            await c.slots.release(outcome)
            stamp = getattr(c.model, "rate_limits_at", None)
            if stamp is None or stamp != c.headers_seen:  # only fresh headers
                c.headers_seen = stamp
                c.limiter.observe(getattr(c.model, "rate_limits", None))
        was_open = c.breaker.open
        c.breaker.success()
        if was_open:
            self.say(f"provider {c.model.id} answers again; resuming")
        c.limiter.settle(estimate, comp.usage.input_tokens + comp.usage.output_tokens)
        latency = time.perf_counter() - t0
        c.slots.observe(latency, c.limiter.per_second())
        return comp, latency

    async def _limited(self, c: Client, estimate: int) -> None:
        """The rate limiter's wait (a 429's retry-after can hold it for a minute), cut short by a
        stop."""
        if self.stop.is_set():
            raise self.halt.stopping()
        if c.limiter.requests is None and c.limiter.tokens is None and c.limiter.paused_until <= time.monotonic():
            await c.limiter.acquire(estimate)  # nothing to wait for: no extra task per call
            return
        if (peers := self.budget.peers) is not None:  # the account's limits, split between the workers
            k = self.counts
            b = self.budget
            held = (b.in_flight, b.tokens_reserved, b.cost_reserved) if b.active else None
            c.limiter.share(peers.refresh(k.made, k.input_tokens + k.output_tokens, k.cost, held=held))
        waiter = asyncio.ensure_future(c.limiter.acquire(estimate))
        stopper = asyncio.ensure_future(self.stop.wait())
        try:
            await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
        if not waiter.done():
            waiter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiter
        if waiter.cancelled() or self.stop.is_set():
            raise self.halt.stopping()
        waiter.result()  # an error inside the limiter is raised here, not lost

    def _outage(self, c: Client, opened: bool, probe: bool) -> None:
        """The provider looks down: say so (when it goes down and at each failed probe) and
        stop the run once it has been down for longer than the model's ``max_outage_s``."""
        down = c.breaker.down_for()
        limit = c.ref.max_outage_s
        if down >= limit:
            self.halt.fail(ProviderUnavailable(
                f"{c.breaker.last_error}; no answer for {_duration(down)} (max_outage_s "
                f"{limit:g}); start the server or correct base_url, then run again to resume"
            ))
            return
        if c.breaker.next_probe_in() > limit - down:  # the last probe goes at the deadline
            c.breaker.pause_s = max(0.0, c.breaker.pause_s - (c.breaker.next_probe_in() - (limit - down)))
        if opened or probe:
            self.say(
                f"provider unreachable ({c.breaker.last_error}); paused, next probe in "
                f"{c.breaker.next_probe_in():.0f} s, giving up after {_duration(limit)} without an answer"
            )


def _duration(seconds: float) -> str:
    """``45 s``, ``5 min``, ``1 h 10 min``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60} min" if minutes % 60 else f"{minutes // 60} h"
