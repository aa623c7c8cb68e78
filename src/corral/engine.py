"""The engine: the only place that calls models.

A run reads the source into the store (keyed, resumable), leases pending records in chunks,
asks the model through the cache, records every response before using it, commits states in
groups, and writes the sinks when every row has reached a final state.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import json
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

from corral._expr import ConditionError
from corral._limits import AdaptiveConcurrency, CircuitBreaker, RateLimiter, backoff
from corral._registry import model_class, suggest
from corral._result import RunResult, summarize
from corral._solver import OutOfBudget, RecordUse, StepSolver, check_scoring, low_confidence
from corral.errors import (
    AuthenticationError,
    ModelNotFoundError,
    OutputError,
    PermanentModelError,
    ProviderUnavailable,
    QuotaExceeded,
    RateLimited,
    SourceError,
    StoreError,
    TransientModelError,
    UserError,
)
from corral.io import (
    Column,
    Source,
    SourceRow,
    open_quarantine_sink,
    open_side_sink,
    open_sink,
    open_source,
)
from corral.job import MAX_CONCURRENCY, Job, ModelRef
from corral.models.base import Completion, Model, Request, Usage
from corral.store import Store, open_store, store_path_near
from corral.store.base import (
    AttemptRecord,
    CallRecord,
    DuplicateKeyError,
    FinalRecord,
    LeasedRecord,
    NewRecord,
    RecordRow,
    RunInfo,
)
from corral.strategies.base import Outcome
from corral.tasks.base import Task

INGEST_CHUNK = 5000
LEASE_TTL_S = 300.0
#: on Ctrl-C or SIGTERM, how long calls in flight may take to bring their answers
STOP_GRACE_S = 2.0
#: a prompt longer than this (characters) is said to the user once per step: likely a mistake
PROMPT_WARN_CHARS = 1_000_000
_HOST = socket.gethostname()

Progress = Callable[[dict[str, Any]], None]


# --- models ---------------------------------------------------------------------------------


def make_model(ref: ModelRef | str | dict[str, Any], base_dir: Path | None = None) -> Model:
    """Build a model from its name (``local``, ``local:/m.gguf``, ``fake``) or mapping."""
    ref = ModelRef.parse(ref)
    cls = model_class(ref.name)
    arg = ref.arg
    if arg and base_dir is not None and arg.endswith(".gguf") and not os.path.isabs(arg):
        candidate = base_dir / arg
        if candidate.exists():
            arg = str(candidate.resolve())
    options = dict(ref.options)
    if base_dir is not None:  # file options of a model are relative to the job file's folder
        for key in getattr(cls, "path_options", ()):
            v = options.get(key)
            if isinstance(v, str) and v and not os.path.isabs(v):
                options[key] = str((base_dir / v).resolve())
    try:
        params = list(inspect.signature(cls).parameters.values())
    except (TypeError, ValueError):  # a class whose signature cannot be read: let it check
        params = []
    if params and not any(p.kind is p.VAR_KEYWORD for p in params):
        positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        takes = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                 and not (positional and p is positional[0])]  # the first one receives NAME:ARG
        unknown = [k for k in options if k not in takes]
        if unknown:
            shared = sorted(set(ModelRef.model_fields) - {"name", "arg", "options"})
            key = unknown[0]
            others = ", ".join(f"`{k}`" for k in unknown[1:])
            more = f" (and {len(unknown) - 1} more: {others})" if others else ""
            raise ModelNotFoundError(
                f"model `{ref}`: unknown option `{key}`{suggest(key, takes + shared) or '.'}{more} "
                f"Valid options: {', '.join(sorted(takes)) or 'none'}; and for every model: "
                f"{', '.join(shared)}."
            )
    try:
        return cls(arg, **options)
    except TypeError as e:
        raise ModelNotFoundError(f"model `{ref}`: {e}; check the options under `model:`") from None
    except ValueError as e:
        raise ModelNotFoundError(f"model `{ref}`: {e}") from None


# --- planning -------------------------------------------------------------------------------


@dataclass(slots=True)
class _Plan:
    """How step outputs map to sink columns."""

    input_columns: list[Column]
    output_columns: list[Column]
    # per step: (step column name, sink column name)
    step_columns: list[list[tuple[str, str]]]

    @property
    def columns(self) -> list[Column]:
        return self.input_columns + self.output_columns


def _plan(job: Job, source: Source) -> _Plan:
    cols = [c.name for c in source.columns]
    if job.key is not None and job.key not in cols:
        raise SourceError(
            f"key column `{job.key}` is not in {source.path.name}{suggest(job.key, cols) or '.'} "
            f"Columns: {', '.join(cols)}. Fix `key:` in the job file, or remove it to key rows by content."
        )
    known = set(cols)
    for i, step in enumerate(job.steps):
        earlier = [s.name for s in job.steps[:i]]
        later = [s.name for s in job.steps[i:]]
        names = ([(h,), f"step `{step.name}`: when: uses", "`{}`", "a condition"] for h in step.when_names())
        reads = ([n, f"step `{step.name}` uses", "{{{}}}", "a step"] for n in step.names_used())
        # a `when:` mistake is told as one, not as a placeholder
        for name, lead, shown, subject in (*names, *reads):
            head = name[0]
            if head in known or head in earlier:
                continue
            if head == step.name or head in later:
                what = "its own output" if head == step.name else "the output of a later step"
                raise UserError(
                    f"{lead} {shown.format(head)}, {what}; {subject} can only read source columns "
                    "and earlier steps"
                )
            raise SourceError(
                f"{lead} {shown.format('.'.join(name))}, which is not a column of "
                f"{source.path.name} or an earlier step{suggest(head, cols + earlier) or '.'} "
                f"Columns: {', '.join(cols)}."
            )
    used = set(cols)
    out: list[Column] = []
    mapping: list[list[tuple[str, str]]] = []
    for step in job.steps:
        pairs = []
        for col in step.columns():
            name = col.name
            if name in used:
                name = f"{step.name}_{col.name}"
            n = 2
            while name in used:
                name = f"{step.name}_{col.name}_{n}"
                n += 1
            used.add(name)
            out.append(Column(name, col.type))
            pairs.append((col.name, name))
        mapping.append(pairs)
    return _Plan(list(source.columns), out, mapping)


def run_id_for(job: Job, model: Model, fingerprint: str) -> str:
    blob = f"{job.spec_hash()}:{model.id}:{fingerprint}"
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


# --- ingestion ------------------------------------------------------------------------------


def _ingest(
    store: Store, run: RunInfo, job: Job, source: Source, limit: int | None,
    progress: Progress | None, stop: asyncio.Event | None = None,
) -> RunInfo:
    if run.ingest_done or (limit is not None and run.ingested_rows >= limit):
        return run
    cursor = run.ingested_rows
    occurrences = store.occurrences(run.id) if job.key is None and cursor else {}
    batch: list[NewRecord] = []
    done = True
    try:
        rows = source.rows(start=cursor)
        for row in rows:
            if limit is not None and row.ordinal >= limit:
                done = False
                break
            batch.append(_new_record(row, job.key, occurrences))
            cursor = row.ordinal + 1
            if len(batch) >= INGEST_CHUNK:
                store.ingest(run.id, batch, cursor)
                batch = []
                if progress:
                    progress({"phase": "ingest", "rows": cursor})
                if stop is not None and stop.is_set():
                    done = False
                    break
        if batch:
            store.ingest(run.id, batch, cursor)
    except DuplicateKeyError as e:
        lines = " and ".join(f"line {n}" for n in (e.first_line, e.second_line) if n is not None)
        err = SourceError(
            f"duplicate key `{e.key}` in column `{job.key}` of {source.path.name}"
            + (f" ({lines})" if lines else "")
            + "; keys must be unique: fix the data, or remove `key:` to key rows by content"
        )
        _abandon(store, run, str(err))
        raise err from None
    except UserError as e:
        _abandon(store, run, str(e))
        raise
    store.update_run(run.id, ingested_rows=max(cursor, run.ingested_rows), ingest_done=done, status="running")
    got = store.get_run(run.id)
    assert got is not None
    return got


def _dumps(value: Any) -> str:
    """Compact JSON text (UTF-8, not ASCII-escaped); anything odd becomes its str()."""
    return orjson.dumps(value, default=str).decode()


def _abandon(store: Store, run: RunInfo, reason: str) -> None:
    """Bad input found while loading: forget the run, unless calls were already paid for in it
    (an earlier --limit run), whose costs stay on record under a failed run."""
    if store.has_calls(run.id):
        store.update_run(run.id, status="failed", stop_reason=reason)
    else:
        store.delete_run(run.id)


def _new_record(row: SourceRow, key_col: str | None, occurrences: dict[str, int]) -> NewRecord:
    if row.data is None:
        return NewRecord(
            key=f"#{row.ordinal + 1}",
            ordinal=row.ordinal,
            line=row.line,
            data=None,
            state="quarantined",
            reason=f"malformed input: {row.error}",
        )
    data = _dumps(row.data)
    if key_col is not None:
        value = row.data.get(key_col)
        if value is None or value == "":
            where = f"line {row.line}" if row.line else f"row {row.ordinal + 1}"
            return NewRecord(
                key=f"#{row.ordinal + 1}",
                ordinal=row.ordinal,
                line=row.line,
                data=data,
                state="quarantined",
                reason=f"empty key in column `{key_col}` ({where})",
            )
        return NewRecord(key=str(value), ordinal=row.ordinal, line=row.line, data=data)
    digest = hashlib.sha256(
        orjson.dumps(row.data, option=orjson.OPT_SORT_KEYS, default=str)
    ).hexdigest()[:16]
    n = occurrences.get(digest, 0) + 1
    occurrences[digest] = n
    key = digest if n == 1 else f"{digest}~{n}"
    return NewRecord(key=key, ordinal=row.ordinal, line=row.line, data=data, content_hash=digest)


# --- committing -----------------------------------------------------------------------------


class _Committer:
    """Group commit: many workers' writes go to the store in one transaction.

    A paid call's response is awaited until durable before its answer is used.
    """

    def __init__(self, store: Store, run_id: str, owner: str) -> None:
        self.store = store
        self.run_id = run_id
        self.owner = owner
        self.calls: list[CallRecord] = []
        self.attempts: list[AttemptRecord] = []
        self.finals: list[FinalRecord] = []
        self.waiters: list[asyncio.Future[None]] = []
        self.wake = asyncio.Event()
        self.closed = False
        self.last_renew = time.monotonic()

    def add(
        self,
        call: CallRecord | None = None,
        attempt: AttemptRecord | None = None,
        final: FinalRecord | None = None,
    ) -> None:
        if call is not None:
            self.calls.append(call)
        if attempt is not None:
            self.attempts.append(attempt)
        if final is not None:
            self.finals.append(final)
        if len(self.calls) + len(self.finals) >= 512:
            self.wake.set()

    async def durable(self, call: CallRecord) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.calls.append(call)
        self.waiters.append(fut)
        self.wake.set()
        await fut

    def flush(self) -> None:
        if not (self.calls or self.attempts or self.finals):
            return
        calls, attempts, finals, waiters = self.calls, self.attempts, self.finals, self.waiters
        self.calls, self.attempts, self.finals, self.waiters = [], [], [], []
        try:
            self.store.commit(calls, attempts, finals)
        except BaseException as e:
            for w in waiters:
                if not w.done():
                    w.set_exception(e)
            raise
        for w in waiters:
            if not w.done():
                w.set_result(None)

    async def loop(self) -> None:
        while not self.closed:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout=0.2)
            self.wake.clear()
            await asyncio.sleep(0)  # let other ready workers add their writes to this group
            self.flush()
            if time.monotonic() - self.last_renew > LEASE_TTL_S / 4:
                self.store.renew(self.run_id, self.owner, LEASE_TTL_S)
                self.last_renew = time.monotonic()

    async def close(self) -> None:
        self.closed = True
        self.wake.set()
        self.flush()


# --- the run --------------------------------------------------------------------------------


class _Stop(Exception):
    """Raised inside a worker when the run must stop scheduling new calls."""


class _Deferred(Exception):
    """The record needs an answer that a provider batch will bring; it waits for the next pass."""


@dataclass
class _Counters:
    states: dict[str, int] = field(default_factory=dict)
    made: int = 0
    replayed: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost: Decimal | None = Decimal(0)


def default_concurrency(model: Model) -> int:
    """Records worked on at once without a job's ``concurrency``: as many as the model allows in
    flight (the calls in flight then find the provider's capacity on their own), or 2 for a
    model that answers one call at a time, so the next prompt is ready when it is free."""
    cap = model.capabilities.max_concurrency
    return min(cap, MAX_CONCURRENCY) if cap > 1 else 2


@dataclass(eq=False)
class _Client:
    """One model and its own request layer: rate limits, concurrency, circuit breaker."""

    model: Model
    ref: ModelRef
    limiter: RateLimiter
    gate: AdaptiveConcurrency
    breaker: CircuitBreaker
    headers_seen: float | None = None
    #: the most one paid call has cost (reserved for each call while a cost budget is set)
    cost_est: Decimal | None = None
    most_output: int | None = None
    #: a call is finding out this model's price (while a cost cap is set, others wait for it)
    probing: bool = False

    @classmethod
    def build(cls, model: Model, ref: ModelRef, concurrency: int) -> _Client:
        return cls(
            model, ref, RateLimiter(ref.rpm, ref.tpm),
            AdaptiveConcurrency(concurrency, start=min(concurrency, 8)), CircuitBreaker(),
        )


@dataclass(slots=True)
class _Hold:
    """A call's reservation in the run's budget."""

    cost: Decimal
    tokens: int
    probe: bool  # the call that finds out its model's price
    done: bool = False


class _Runner:
    def __init__(
        self,
        job: Job,
        model: Model,
        store: Store,
        run: RunInfo,
        plan: _Plan,
        limit: int | None,
        progress: Progress | None,
        stop: asyncio.Event,
        ref: ModelRef | None = None,
        extra: dict[str, tuple[Model, ModelRef]] | None = None,
    ) -> None:
        self.job = job
        self.model = model
        self.store = store
        self.run = run
        self.plan = plan
        self.limit = limit
        self.progress = progress
        self.stop = stop
        self.stop_reason: str | None = None
        self.owner = f"{_HOST}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.concurrency = job.concurrency or default_concurrency(model)
        totals = store.totals(run.id)
        self.c = _Counters(
            states=store.counts(run.id, limit),
            made=totals.made,
            replayed=totals.replayed,
            input_tokens=totals.input_tokens,
            output_tokens=totals.output_tokens,
            cost=totals.cost,
        )
        self.fatal: BaseException | None = None
        self.inflight: dict[str, asyncio.Future[None]] = {}
        self.reserved = 0  # paid calls in flight, counted against max_calls before they return
        self.ref = ref or ModelRef(name=model.id)
        self.main = _Client.build(model, self.ref, self.concurrency)
        self.clients: dict[str, _Client] = {}
        for name, (m, r) in (extra or {}).items():
            cap = m.capabilities.max_concurrency
            self.clients[name] = _Client.build(m, r, 1 if cap <= 1 else min(cap, job.concurrency or cap))
        b = job.budget
        self.budgeted = any(v is not None for v in (b.max_calls, b.max_tokens, b.max_cost_usd))
        self.record_budget = b.per_record if b.per_record.active() else None
        self.cost_reserved = Decimal(0)
        self.tokens_reserved = 0
        self.reserved_calls = 0  # calls holding a budget reservation
        self.unpriced: str | None = None  # the first model whose call came back without a price
        self.settled = asyncio.Event()  # set (and replaced) each time a reservation settles
        # provider batches: requests this pass needs, and requests that failed too often
        self.wanted: dict[str, tuple[str, str, int, Request]] = {}
        self.batch_failed: dict[str, str] = {}
        self.batch_paid: set[str] = set()
        #: model calls in flight (a stop cancels them after STOP_GRACE_S)
        self.calls: set[asyncio.Future[Completion]] = set()
        #: why the run ended early, for the exit code: auth, quota, outage
        self.cause: str | None = None
        self.warned: set[str] = set()  # steps whose oversized prompt was reported

    # budget ---------------------------------------------------------------------------

    def client(self, name: str | None) -> _Client:
        """The client of a model a strategy names (``None``: the job's model)."""
        if name is None:
            return self.main
        return self.clients[name]

    def _check_budget(self, cost: Decimal = Decimal(0), tokens: int = 0) -> None:
        """Stop if the run's budget has no room for one more call of the given estimate (on
        top of the calls in flight, which hold their own reservations)."""
        reason = self._over_budget(cost, tokens)
        if reason:
            self.stop_reason = self.stop_reason or reason
            self.stop.set()
            raise _Stop(reason)

    def _over_budget(self, cost: Decimal = Decimal(0), tokens: int = 0) -> str | None:
        b = self.job.budget
        reason = None
        used = self.c.input_tokens + self.c.output_tokens + self.tokens_reserved
        if b.max_calls is not None and self.c.made + self.reserved >= b.max_calls:
            reason = f"budget: max_calls {b.max_calls:,} reached"
        elif b.max_tokens is not None and (used >= b.max_tokens or used + tokens > b.max_tokens):
            reason = f"budget: max_tokens {b.max_tokens:,} reached"
        elif b.max_cost_usd is not None and self.c.cost is None:
            reason = (
                f"budget: max_cost_usd is set but model `{self.unpriced or self.model.id}` reports no price, "
                "so spending cannot be bounded; give the model a price or remove max_cost_usd"
            )
        elif b.max_cost_usd is not None and (
            self.c.cost >= b.max_cost_usd
            or self.c.cost + self.cost_reserved + cost > b.max_cost_usd
        ):
            reason = (
                f"budget: max_cost_usd {b.max_cost_usd} reached "
                f"(spent {self.c.cost}; the next call would pass it)"
            )
        return reason

    async def _reserve(self, client: _Client, request: Request) -> _Hold:
        """Hold room in the run's budget for one call before it is made: the most a call of this
        model has cost so far, and its prompt plus the largest answer so far. While a model's
        price is still unknown, its calls go one at a time until the first is settled."""
        b = self.job.budget
        tokens = 0
        if b.max_tokens is not None:
            out = client.most_output if client.most_output is not None else request.max_tokens
            tokens = sum(len(m.content) for m in request.messages) // 4 + out
        cost = Decimal(0)
        probe = False
        if b.max_cost_usd is not None:
            while client.cost_est is None and client.probing:
                await self.settled.wait()
            if client.cost_est is None:
                client.probing = probe = True
            else:
                cost = client.cost_est
        # no room: while other calls hold reservations, wait for them to settle (they may cost
        # less, or not happen); stop only when this call alone would pass the limit
        while self._over_budget(cost, tokens) and self.reserved_calls > 0 and not self.stop.is_set():
            await self.settled.wait()
        try:
            self._check_budget(cost, tokens)
        except _Stop:
            if probe:
                client.probing = False
                self._signal()
            raise
        self.reserved_calls += 1
        self.cost_reserved += cost
        self.tokens_reserved += tokens
        return _Hold(cost, tokens, probe)

    def _settle(self, client: _Client, hold: _Hold, comp: Completion | None) -> None:
        """Give a call's reservation back; with its answer, learn the model's price and size."""
        hold.done = True
        self.reserved_calls -= 1
        self.cost_reserved -= hold.cost
        self.tokens_reserved -= hold.tokens
        if comp is not None:
            u = comp.usage
            if u.cost is not None:
                client.cost_est = max(client.cost_est or Decimal(0), u.cost)
            client.most_output = max(client.most_output or 0, u.output_tokens)
        if hold.probe:
            client.probing = False
        self._signal()

    def _signal(self) -> None:
        """Wake every call waiting for room in the budget (the event is replaced, not cleared)."""
        self.settled.set()
        self.settled = asyncio.Event()

    # one call -------------------------------------------------------------------------

    async def _ask(
        self, committer: _Committer, rec: LeasedRecord, step: str, attempt: int, request: Request,
        batch: bool = False, client: _Client | None = None, strategy: str | None = None,
    ) -> tuple[str, Completion]:
        client = client or self.main
        h = request.cache_key(client.model.id)
        flying = self.inflight.get(h)
        if flying is not None:  # the same request is in flight for another record: wait for it
            with contextlib.suppress(Exception):
                await asyncio.shield(flying)
        hit = self.store.cached(h)
        if hit is not None:
            comp = Completion.from_dict(orjson.loads(hit))
            if batch and h in self.batch_paid:
                return h, comp  # paid in this run's batch, already in the ledger: not a replay
            self.c.replayed += 1
            committer.add(
                call=CallRecord(
                    self.run.id, rec.key, step, attempt, h, client.model.id, True,
                    comp.usage.input_tokens, comp.usage.output_tokens,
                    comp.usage.cached_input_tokens, comp.usage.reasoning_tokens, Decimal(0), 0.0,
                    strategy=strategy,
                )
            )
            return h, comp
        if self.stop.is_set():
            raise _Stop(self.stop_reason or "stopping")
        if batch:
            failed = self.batch_failed.get(h)
            if failed is not None:
                raise TransientModelError(failed)
            self.wanted.setdefault(h, (rec.key, step, attempt, request))
            raise _Deferred()
        size = sum(len(m.content) for m in request.messages)
        if size > PROMPT_WARN_CHARS and step not in self.warned:
            self.warned.add(step)
            self._say(
                f"warning: step `{step}` sends a {size / 1e6:.1f} MB prompt for record {rec.key} "
                f"(about {size // 4:,} tokens), more than most models take; check the input "
                "column, or split long documents with extract's `chunking:`"
            )
        held = await self._reserve(client, request) if self.budgeted else None
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.inflight[h] = done
        try:
            return h, await self._call(committer, rec, step, attempt, request, h, client, strategy, held)
        finally:
            if held is not None and not held.done:  # the call failed before it was counted
                self._settle(client, held, None)
            del self.inflight[h]
            done.set_result(None)

    async def _call(
        self, committer: _Committer, rec: LeasedRecord, step: str, attempt: int, request: Request,
        h: str, client: _Client, strategy: str | None, held: _Hold | None = None,
    ) -> Completion:
        """One paid call through the request layer, recorded before its answer is used."""
        self.reserved += 1  # counted against max_calls from the budget check on
        try:
            comp, latency = await self._retrying(committer, rec, step, attempt, request, client)
        except PermanentModelError as e:
            used = getattr(e, "usage", None)
            if used is not None:  # the provider billed a call that failed: it still costs
                self._count(used)
                committer.add(call=CallRecord(
                    self.run.id, rec.key, step, attempt, h, client.model.id, False,
                    used.input_tokens, used.output_tokens, used.cached_input_tokens,
                    used.reasoning_tokens, used.cost, 0.0, strategy=strategy))
            raise
        finally:
            self.reserved -= 1
        u = comp.usage
        self._count(u)
        if u.cost is None:
            self.unpriced = self.unpriced or client.model.id
        if held is not None:  # counted: the reservation gives way to the real usage at once
            self._settle(client, held, comp)
        await committer.durable(
            CallRecord(
                self.run.id, rec.key, step, attempt, h, client.model.id, False,
                u.input_tokens, u.output_tokens, u.cached_input_tokens, u.reasoning_tokens,
                u.cost, latency,
                request_json=_dumps(request.to_dict()),
                response_json=_dumps(comp.to_dict()),
                strategy=strategy,
            )
        )
        return comp

    def _count(self, u: Usage) -> None:
        self.c.made += 1
        self.c.input_tokens += u.input_tokens
        self.c.output_tokens += u.output_tokens
        if self.c.cost is not None:
            self.c.cost = None if u.cost is None else self.c.cost + u.cost

    async def _retrying(
        self, committer: _Committer, rec: LeasedRecord, step: str, attempt: int, request: Request,
        client: _Client,
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
                raise self._fatal(e) from None
            except TransientModelError as e:
                if self.stop.is_set():
                    raise _Stop(self.stop_reason or "stopping") from None
                if client.breaker.open and not isinstance(e, RateLimited):
                    continue  # an outage: wait for the provider, not for this record's retries
                if retry >= client.ref.max_retries:
                    raise TransientModelError(f"{e} (after {retry + 1} tries)") from None
                committer.add(attempt=AttemptRecord(
                    self.run.id, rec.key, step, attempt, None, "retry", f"try {retry + 1}: {e}"))
                await self._pause(backoff(retry, getattr(e, "retry_after", None)))
                retry += 1

    async def _pause(self, seconds: float) -> None:
        """Sleep, but end at once (raising ``_Stop``) when the run is told to stop."""
        if seconds > 0:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stop.wait(), timeout=seconds)
        if self.stop.is_set():
            raise _Stop(self.stop_reason or "stopping")

    async def _once(self, request: Request, c: _Client) -> tuple[Completion, float]:
        probe = await c.breaker.admit(self.stop)
        if self.stop.is_set():
            if probe:
                c.breaker.abandon_probe()
            raise _Stop(self.stop_reason or "stopping")
        estimate = sum(len(m.content) for m in request.messages) // 4 + request.max_tokens
        # a slot first, then the rate token: paced calls leave one by one, not in a burst
        await c.gate.acquire()
        try:
            await self._limited(c, estimate)
        except BaseException:
            await c.gate.release("cancelled")
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
                    outcome = "cancelled"  # the stop cut this call short (see go())
                    raise _Stop(self.stop_reason or "stopping") from None
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
        except _Stop:
            if probe:
                c.breaker.abandon_probe()
            raise
        except Exception:
            if probe:
                c.breaker.success()
            raise
        finally:
            self.calls.discard(task)
            await c.gate.release(outcome)
            stamp = getattr(c.model, "rate_limits_at", None)
            if stamp is None or stamp != c.headers_seen:  # only fresh headers
                c.headers_seen = stamp
                c.limiter.observe(getattr(c.model, "rate_limits", None))
        was_open = c.breaker.open
        c.breaker.success()
        if was_open:
            self._recovered(c)
        c.limiter.settle(estimate, comp.usage.input_tokens + comp.usage.output_tokens)
        latency = time.perf_counter() - t0
        c.gate.observe(latency, c.limiter.per_second())
        return comp, latency

    async def _limited(self, c: _Client, estimate: int) -> None:
        """The rate limiter's wait (a 429's retry-after can hold it for a minute), cut short by a
        stop."""
        if self.stop.is_set():
            raise _Stop(self.stop_reason or "stopping")
        if c.limiter.requests is None and c.limiter.tokens is None and c.limiter.paused_until <= time.monotonic():
            await c.limiter.acquire(estimate)  # nothing to wait for: no extra task per call
            return
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
            raise _Stop(self.stop_reason or "stopping")
        waiter.result()  # an error inside the limiter is raised here, not lost

    # outages --------------------------------------------------------------------------

    def _outage(self, c: _Client, opened: bool, probe: bool) -> None:
        """The provider looks down: say so (when it goes down and at each failed probe) and
        stop the run once it has been down for longer than the model's ``max_outage_s``."""
        down = c.breaker.down_for()
        limit = c.ref.max_outage_s
        if down >= limit:
            self._fatal(ProviderUnavailable(
                f"{c.breaker.last_error}; no answer for {_duration(down)} (max_outage_s "
                f"{limit:g}); start the server or correct base_url, then run again to resume"
            ))
            return
        if c.breaker.next_probe_in() > limit - down:  # the last probe goes at the deadline
            c.breaker.pause_s = max(0.0, c.breaker.pause_s - (c.breaker.next_probe_in() - (limit - down)))
        if opened or probe:
            self._say(
                f"provider unreachable ({c.breaker.last_error}); paused, next probe in "
                f"{c.breaker.next_probe_in():.0f} s, giving up after {_duration(limit)} without an answer"
            )

    def _recovered(self, c: _Client) -> None:
        self._say(f"provider {c.model.id} answers again; resuming")

    def _say(self, message: str) -> None:
        """A line for the person watching: on the progress display (or stderr), never lost."""
        if self.progress:
            self.progress({"phase": "notice", "message": message})

    # one record -----------------------------------------------------------------------

    async def _process(self, committer: _Committer, rec: LeasedRecord) -> None:
        context: dict[str, Any] = dict(rec.data)
        outputs: dict[str, Any] = {}
        tries = 0
        use = RecordUse()
        absent: set[str] = set()  # steps that gave this row no answer: a `when:` over one is false
        # why the row is held for review although its later steps still run: an answer under its
        # step's min_confidence is used by the steps after it, so the reviewer sees a whole row
        unsure: list[str] = []

        def held_because(reason: str) -> str:
            return "; ".join([*unsure, reason])

        def so_far() -> str | None:  # the answers already paid for, kept with a quarantined row
            return _dumps(outputs) if outputs else None

        for step in self.job.steps:
            try:
                runs = step.applies(context, absent)
            except ConditionError as e:
                self._final(committer, rec, "quarantined", so_far(), f"step `{step.name}`: when {e}", tries)
                return
            if not runs:
                context[step.name] = outputs[step.name] = None
                gone = [n for n in step.when_names() if n in absent]
                detail = (f"when: {step.when} reads {', '.join(f'`{n}`' for n in gone)}, which did not run"
                          if gone else f"when: {step.when} is false")
                absent.add(step.name)
                committer.add(attempt=AttemptRecord(
                    self.run.id, rec.key, step.name, 0, None, "not run", detail))
                continue
            short = None
            if step.on_empty != "ask":
                empty = step.empty_input(context)
                if empty is not None:
                    why = f"empty input ({empty})"
                    if step.on_empty != "null":
                        committer.add(attempt=AttemptRecord(
                            self.run.id, rec.key, step.name, 0, None, "empty", f"{why}; no call"))
                        state = "skipped" if step.on_empty == "skip" else "quarantined"
                        self._final(committer, rec, state, so_far(), f"step `{step.name}`: {why}", tries)
                        return
                    empty_answer = step.empty_answer()
                    if empty_answer is None:
                        context[step.name] = outputs[step.name] = None
                        absent.add(step.name)
                        committer.add(attempt=AttemptRecord(
                            self.run.id, rec.key, step.name, 0, None, "empty",
                            f"{why}; no call, the step's output is null"))
                        continue
                    short = (empty_answer, why)
            if short is None:
                short = step.shortcut(context)
            if short is not None:
                answer, why = short
                committer.add(attempt=AttemptRecord(
                    self.run.id, rec.key, step.name, 0, None, "shortcut",
                    f"{why}; answer {json.dumps(answer, ensure_ascii=False)}"))
            else:
                parts = step.split(context)
                n = len(parts)
                solvers = [
                    StepSolver(self, committer, rec, step, part,
                               step.name if n == 1 else f"{step.name}[{i + 1}/{n}]", use)
                    for i, part in enumerate(parts)
                ]
                results: list[Outcome | OutOfBudget | BaseException] = []
                if n > 1 and self.record_budget is None:
                    # the chunks of a long document are independent (each has its own sample
                    # numbers): ask them at once; with a per-record budget they go in order so
                    # a resumed record spends the same way
                    results = list(await asyncio.gather(
                        *(self._strategy(step, sv) for sv in solvers), return_exceptions=True))
                else:
                    for sv in solvers:
                        got = await self._strategy(step, sv)
                        results.append(got)
                        if isinstance(got, OutOfBudget) or got.answer is None or got.problems:
                            break
                failed = next((r for r in results if isinstance(r, BaseException)
                               and not isinstance(r, OutOfBudget)), None)
                if failed is not None:  # a stop, a deferral to a provider batch, or a bug
                    for sv in solvers:
                        sv.flush()  # what was learned before it is kept in the trace
                    raise failed
                tries += sum(sv.seq for sv in solvers)
                answers = []
                for sv, part, got in zip(solvers, parts, results):
                    label = sv.label
                    if isinstance(got, OutOfBudget):
                        best = sv.best
                        sv.note("budget", str(got), answer=best[0] if best else None)
                        held = _with_best(outputs, step, best[0] if best else None, part)
                        self._final(committer, rec, "review", held, held_because(f"step `{label}`: {got}"), tries)
                        return
                    assert isinstance(got, Outcome)
                    if got.answer is None or got.problems:
                        for other in solvers:
                            other.flush()
                    if got.answer is None:
                        self._final(committer, rec, "quarantined", so_far(),
                                    f"step `{label}`: {got.error}", tries)
                        return
                    if got.problems:
                        held = _with_best(outputs, step, got.answer, part)
                        self._final(committer, rec, "review", held,
                                    held_because(f"step `{label}`: {'; '.join(got.problems)}"), tries)
                        return
                    doubt = low_confidence(step, got.confidence)
                    if doubt is not None:  # held for a person, never written to the sink
                        sv.note("review", doubt, answer=got.answer, confidence=got.confidence,
                                threshold=step.min_confidence)
                        unsure.append(f"step `{label}`: {doubt}")
                        answers.append(got.answer)
                        continue
                    sv.accepted(got)
                    answers.append(got.answer)
                try:
                    answer = step.combine(answers, parts)
                except OutputError as e:
                    self._final(committer, rec, "quarantined", so_far(), f"step `{step.name}`: {e}", tries)
                    return
            value = step.value(answer)
            context[step.name] = value
            outputs[step.name] = value
            skip = step.skip(value)
            if skip:  # held rows go to the reviewer even when an unsure answer filtered them out
                self._final(committer, rec, "review" if unsure else "skipped", _dumps(outputs),
                            held_because(f"step `{step.name}`: {skip}"), tries)
                return
        if unsure:
            self._final(committer, rec, "review", _dumps(outputs), "; ".join(unsure), tries)
            return
        self._final(committer, rec, "done", _dumps(outputs), None, tries)

    @staticmethod
    async def _strategy(step: Task, solver: StepSolver) -> Outcome | OutOfBudget:
        """The step's strategy on one part: its outcome, or the budget stop that ended it."""
        try:
            return await step.strategy.solve(solver)
        except OutOfBudget as e:
            return e
        except BaseException:
            solver.flush()  # what was learned before a stop is kept in the trace
            raise

    def _final(
        self, committer: _Committer, rec: LeasedRecord, state: str, outputs: str | None,
        reason: str | None, tries: int,
    ) -> None:
        committer.add(final=FinalRecord(self.run.id, rec.key, state, outputs, reason, tries))
        self.c.states["leased"] = self.c.states.get("leased", 0) - 1
        self.c.states[state] = self.c.states.get(state, 0) + 1

    # the loop -------------------------------------------------------------------------

    async def go(self) -> None:
        committer = _Committer(self.store, self.run.id, self.owner)
        commit_task = asyncio.create_task(committer.loop())
        queue: asyncio.Queue[LeasedRecord | None] = asyncio.Queue(maxsize=self.concurrency * 2)
        chunk = max(64, self.concurrency * 4)

        async def produce() -> None:
            try:
                while not self.stop.is_set():
                    recs = self.store.lease(self.run.id, self.owner, chunk, LEASE_TTL_S, self.limit)
                    if not recs:
                        break
                    n = len(recs)
                    self.c.states["pending"] = self.c.states.get("pending", 0) - n
                    self.c.states["leased"] = self.c.states.get("leased", 0) + n
                    for r in recs:
                        await queue.put(r)
            finally:
                for _ in range(self.concurrency):
                    await queue.put(None)

        async def work() -> None:
            while True:
                rec = await queue.get()
                if rec is None:
                    return
                if self.stop.is_set() and self.fatal is None:
                    continue  # left leased; released below
                try:
                    await self._process(committer, rec)
                except (_Stop, _Deferred):
                    continue  # left leased; released when the pass ends
                except StoreError:
                    self.stop.set()  # the store is damaged, locked or full: nothing can be kept
                    raise
                except Exception as e:  # a bug or an unexpected model failure: never stop the run
                    self._final(committer, rec, "quarantined", None, f"internal error: {type(e).__name__}: {e}", 1)

        async def report() -> None:
            if not self.progress:
                return
            while True:
                self.progress({"phase": "run", **self.snapshot()})
                await asyncio.sleep(0.25)

        async def cut_short() -> None:
            """On a stop, calls in flight get STOP_GRACE_S to bring their answers (which are
            then recorded); the rest are cancelled so that nothing waits on a slow provider."""
            await self.stop.wait()
            deadline = time.monotonic() + STOP_GRACE_S
            while self.calls and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            for call in list(self.calls):
                call.cancel()

        reporter = asyncio.create_task(report())
        cutter = asyncio.create_task(cut_short())
        try:
            workers = [asyncio.create_task(work()) for _ in range(self.concurrency)]
            await asyncio.gather(produce(), *workers)
        finally:
            reporter.cancel()
            cutter.cancel()
            await committer.close()
            commit_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await commit_task
            released = self.store.release(self.run.id, self.owner)
            if released:
                self.c.states["leased"] = self.c.states.get("leased", 0) - released
                self.c.states["pending"] = self.c.states.get("pending", 0) + released
            if self.progress:
                self.progress({"phase": "run", **self.snapshot()})

    # provider batches ---------------------------------------------------------------

    def load_batch_failures(self) -> None:
        self.batch_paid = self.store.batch_answered(self.run.id)
        limit = self.ref.batch_resubmits + 1
        self.batch_failed = {
            h: f"batch request failed {n} times (last: {last})"
            for h, (n, last) in self.store.batch_failures(self.run.id).items()
            if n >= limit
        }

    async def batches(self) -> None:
        """Submit what the last pass needed, then poll every open batch of the run until it
        ends, and record its answers. Batches are persisted before polling, so a killed run
        resumes polling them instead of submitting again."""
        api: Any = self.model
        wanted, self.wanted = self.wanted, {}
        if wanted and not self.stop.is_set():
            self._check_budget_quietly()
            max_n, max_bytes = api.batch_limits
            chunk: list[tuple[str, tuple[str, str, int, Request], str]] = []
            size = 0
            for h, item in wanted.items():
                body = _dumps(item[3].to_dict())
                if chunk and (len(chunk) >= max_n or size + len(body) > max_bytes * 0.9):
                    await self._submit(api, chunk)
                    chunk, size = [], 0
                chunk.append((h, item, body))
                size += len(body)
            if chunk:
                await self._submit(api, chunk)
        poll = 0
        while not self.stop.is_set():
            open_ = self.store.open_batches(self.run.id)
            if not open_:
                break
            for b in open_:
                status = await self._batch_call(api.poll_batch, b.id)
                if status.state == "ended":
                    await self._fetch(api, b.id, status)
                else:
                    self.store.set_batch_state(b.id, "submitted", status.detail)
            if self.progress:
                self.progress({"phase": "batch", "open": len(self.store.open_batches(self.run.id)), **self.snapshot()})
            if self.store.open_batches(self.run.id):
                poll += 1
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), timeout=self.ref.batch_poll_s)
        self.load_batch_failures()

    def _check_budget_quietly(self) -> None:
        with contextlib.suppress(_Stop):
            self._check_budget()

    async def _submit(self, api: Any, chunk: list[tuple[str, tuple[str, str, int, Request], str]]) -> None:
        if self.stop.is_set():
            return
        batch_id = await self._batch_call(api.submit_batch, [(h, item[3]) for h, item, _ in chunk])
        self.store.add_batch(
            self.run.id, batch_id, self.model.id,
            [(h, key, label, attempt, body) for h, (key, label, attempt, _), body in chunk],
        )

    async def _fetch(self, api: Any, batch_id: str, status: Any) -> None:
        results = {item.custom_id: item for item in await self._batch_call(api.fetch_batch, batch_id)}
        calls: list[CallRecord] = []
        outcomes: dict[str, str] = {}
        for it in self.store.batch_items(batch_id):
            h = it.custom_id
            got = results.get(h)
            comp = got.completion if got is not None else None
            if comp is None:
                outcomes[h] = (got.error if got is not None else None) or f"no result ({status.detail or 'ended'})"
                continue
            outcomes[h] = "ok"
            u = comp.usage
            self._count(u)
            calls.append(CallRecord(
                self.run.id, it.key, it.step, it.attempt, h, self.model.id, False,
                u.input_tokens, u.output_tokens, u.cached_input_tokens, u.reasoning_tokens,
                u.cost, comp.latency_s, request_json=it.request, response_json=_dumps(comp.to_dict()),
            ))
        self.store.finish_batch(batch_id, calls, outcomes, status.detail)

    def _fatal(self, e: Exception) -> _Stop:
        """The provider refused the credentials or the account, or stayed down: every row would
        fail, so the run stops."""
        if self.fatal is None:
            self.fatal = e
        if isinstance(e, QuotaExceeded):
            what, self.cause = "account out of quota", self.cause or "quota"
        elif isinstance(e, ProviderUnavailable):
            what, self.cause = "provider unreachable", self.cause or "outage"
        else:
            what, self.cause = "authentication failed", self.cause or "auth"
        self.stop_reason = self.stop_reason or f"{what}: {e}"
        self.stop.set()
        return _Stop(str(e))

    async def _batch_call(self, fn: Any, *args: Any) -> Any:
        retry = 0
        while True:
            try:
                return await fn(*args)
            except (AuthenticationError, QuotaExceeded) as e:
                raise self._fatal(e) from None
            except TransientModelError as e:
                if retry >= self.ref.max_retries or self.stop.is_set():
                    raise
                await self._pause(backoff(retry, getattr(e, "retry_after", None)))
                retry += 1

    def snapshot(self) -> dict[str, Any]:
        s = self.c.states
        return {
            "in": sum(s.values()),
            "done": s.get("done", 0),
            "quarantined": s.get("quarantined", 0),
            "review": s.get("review", 0),
            "skipped": s.get("skipped", 0),
            "pending": s.get("pending", 0) + s.get("leased", 0),
            "made": self.c.made,
            "replayed": self.c.replayed,
            "cost": None if self.c.cost is None or not self.c.cost else float(self.c.cost),
            "paused": self.main.breaker.open or any(c.breaker.open for c in self.clients.values()),
        }


def _duration(seconds: float) -> str:
    """``45 s``, ``5 min``, ``1 h 10 min``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60} min" if minutes % 60 else f"{minutes // 60} h"


def _with_best(
    outputs: dict[str, Any], step: Task, answer: dict[str, Any] | None, part: dict[str, Any]
) -> str:
    """Step outputs so far plus the best answer of the step a record is held at, for review."""
    held = dict(outputs)
    if answer is not None:
        with contextlib.suppress(Exception):  # a chunk's answer may not stand for the whole
            held[step.name] = step.value(step.combine([answer], [part]))
    return _dumps(held)


# --- sinks ----------------------------------------------------------------------------------


def _write_outputs(
    store: Store, run: RunInfo, job: Job, plan: _Plan, limit: int | None
) -> dict[str, str]:
    steps = job.steps

    def answered(state: str, tail: Callable[[RecordRow], dict[str, Any]] | None = None) -> Any:
        """Rows in ``state`` with their steps' columns (and the ``tail`` columns of each record)."""
        for chunk in store.iter_records(run.id, state, below_ordinal=limit):
            rows = []
            for r in chunk:
                row = dict(r.data or {})
                outs = r.outputs or {}
                for step, pairs in zip(steps, plan.step_columns):
                    value = outs.get(step.name)
                    vals = step.to_columns(value) if value is not None else {}
                    for col, sink_col in pairs:
                        row[sink_col] = vals.get(col)
                if tail is not None:
                    row.update(tail(r))
                rows.append(row)
            yield rows

    def why(r: RecordRow) -> dict[str, Any]:
        return {"_key": r.key, "_line": r.line, "_reason": r.reason}

    def set_aside(state: str) -> Any:
        for chunk in store.iter_records(run.id, state, below_ordinal=limit):
            yield [{**(r.data or {}), **why(r)} for r in chunk]

    key_col = job.key or "_key"
    sink = open_sink(job.sink, job.base_dir)
    q = open_quarantine_sink(job.sink, job.base_dir)
    if job.key is None:  # key-less jobs: the sink's key column is the content key
        cols = plan.columns + [Column("_key", "string")]
        sink.write(cols, answered("done", lambda r: {"_key": r.key}), key_col)
    else:
        sink.write(plan.columns, answered("done"), key_col)
    names = {c.name for c in plan.input_columns}
    extra = [Column("_key", "string"), Column("_line", "integer"), Column("_reason", "string")]
    side_cols = plan.input_columns + [c for c in extra if c.name not in names]
    # quarantined rows keep the answers already paid for (earlier steps' columns), as review does
    with_answers = plan.columns + [c for c in extra if c.name not in {x.name for x in plan.columns}]
    q.write(with_answers, answered("quarantined", why), "_key")
    outputs = {"sink": _show_path(sink.path), "quarantine": _show_path(q.path)}
    counts = store.counts(run.id, limit)
    if any(s.can_skip or s.on_empty == "skip" for s in steps) or counts.get("skipped", 0):
        sk = open_side_sink(job.sink, job.base_dir, "skipped")
        sk.write(side_cols, set_aside("skipped"), "_key")
        outputs["skipped"] = _show_path(sk.path)
    if job.can_review() or counts.get("review", 0):
        # rows held for a person: their input, the best answers reached, and why
        rv = open_side_sink(job.sink, job.base_dir, "review")
        rv.write(with_answers, answered("review", why), "_key")
        outputs["review"] = _show_path(rv.path)
    return outputs


def _show_path(p: Path) -> str:
    try:
        return str(p.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(p)


# --- entry points ---------------------------------------------------------------------------


def _owner_dead(owner: str) -> bool:
    host, _, rest = owner.partition(":")
    pid_s, _, _ = rest.partition(":")
    if host != _HOST or not pid_s.isdigit():
        return False
    pid = int(pid_s)
    if pid == os.getpid():
        return True  # an earlier run in this process that did not finish
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


_SECRET = ("key", "token", "secret", "password")


def _redacted(spec: dict[str, Any]) -> dict[str, Any]:
    """The job as stored with the run: model options that look like credentials are dropped."""

    def clean(ref: dict[str, Any]) -> dict[str, Any]:
        return {k: ("<redacted>" if any(w in k.lower() for w in _SECRET) else v) for k, v in ref.items()}

    models = {name: clean(ref or {}) for name, ref in (spec.get("models") or {}).items()}
    return {**spec, "model": clean(spec.get("model") or {}), "models": models}


def live_status(store: Store, run: RunInfo) -> str:
    """The run's status, with a run whose process died (kill -9, crash) shown as interrupted."""
    if run.status not in ("created", "ingesting", "running"):
        return run.status
    owners = store.lease_owners(run.id)
    if owners and not all(_owner_dead(o) for o in owners):
        return "running"
    if run.status in ("created", "ingesting") and time.time() - run.updated_at < 60:
        return "running"  # still loading rows (each loaded chunk touches the run)
    return "interrupted"


def _strategy_models(job: Job) -> dict[str, tuple[Model, ModelRef]]:
    """The models the steps' strategies name, built once per run."""
    out: dict[str, tuple[Model, ModelRef]] = {}
    for step in job.steps:
        for name in step.strategy.models():
            if name not in out:
                ref = job.model_ref(name)
                out[name] = (make_model(ref, job.base_dir), ref)
    return out


def _load(job: Job | str | Path) -> Job:
    return job if isinstance(job, Job) else Job.load(job)


def store_path_for(job: Job) -> Path:
    """Where a job's store is by default (see :func:`corral.store.store_path_near`): found from
    the job file's folder, so the same job run from any folder finds the answers it paid for."""
    return store_path_near(job.base_dir)


async def run_async(
    job: Job | str | Path,
    *,
    model: Model | str | dict[str, Any] | None = None,
    limit: int | None = None,
    store: Store | str | Path | None = None,
    progress: Progress | None = None,
    stop: asyncio.Event | None = None,
    handle_signals: bool = False,
) -> RunResult:
    """Run (or resume) a job; see :func:`corral.run`."""
    job = _load(job)
    started = time.monotonic()
    if limit is not None and limit < 0:
        raise UserError("--limit must be 0 or more")
    m = model if isinstance(model, Model) else make_model(model or job.model, job.base_dir)
    stop = stop or asyncio.Event()
    restore = _install_signals(stop) if handle_signals else None
    own_store = not isinstance(store, Store)
    path = None if isinstance(store, Store) else Path(store) if store is not None else store_path_for(job)
    fresh = path is not None and not path.exists()
    st: Store | None = store if isinstance(store, Store) else None
    try:
        # everything that can be wrong with the job is found before the store is touched
        for step in job.steps:
            step.bind(job.base_dir, job.source)
        source = open_source(job.source, job.base_dir)
        plan = _plan(job, source)
        open_sink(job.sink, job.base_dir)  # fail now, not after the work, if it cannot be written
        open_quarantine_sink(job.sink, job.base_dir)
        if st is None:
            st = open_store(path)
        if progress:
            progress({"phase": "fingerprint"})
        fingerprint = await asyncio.to_thread(source.fingerprint)
        rid = run_id_for(job, m, fingerprint)
        now = time.time()
        run = st.create_run(
            RunInfo(
                id=rid, job_name=job.name, spec_hash=job.spec_hash(), fingerprint=fingerprint,
                spec={**_redacted(job.model_dump(mode="json")), "model_id": m.id}, status="created",
                stop_reason=None, created_at=now, updated_at=now, ingested_rows=0,
                ingest_done=False, tags=job.tags,
            )
        )
        before = run  # what the run had written before this invocation
        if not run.ingest_done:
            st.update_run(run.id, status="ingesting")
        # reading the input runs on a thread so Ctrl-C is heard between chunks
        run = await asyncio.to_thread(_ingest, st, run, job, source, limit, progress, stop)
        if progress:
            progress({"phase": "start", "run": run.id, "job": job.name, "model": m.id,
                      "store": _show_path(path) if path is not None else None})
            if run.ingest_done and run.ingested_rows == 0:
                progress({"phase": "notice", "message": (
                    f"warning: {source.path.name} has no rows (only a header, or empty): nothing "
                    "to do; check the file `source:` points at")})
        st.reclaim(run.id, _owner_dead)
        ref = job.model if model is None else (None if isinstance(model, Model) else ModelRef.parse(model))
        extra = _strategy_models(job)
        runner = _Runner(job, m, st, run, plan, limit, progress, stop, ref, extra)
        st.update_run(run.id, status="running", stop_reason=None, tags=job.tags)
        uses_batch = any(s.mode == "batch" for s in job.steps)
        if uses_batch and not (m.capabilities.supports_batch and hasattr(m, "submit_batch")):
            raise UserError(
                f"a step has `mode: batch` but model `{m.id}` has no batch API; use an openai: "
                "or anthropic: model, or remove `mode: batch`"
            )
        check_scoring(job, m, extra)
        try:
            if uses_batch:
                runner.load_batch_failures()
                await runner.batches()  # batches a killed run left open: poll, never resubmit
            while True:
                await runner.go()
                if not runner.wanted or runner.stop.is_set():
                    break
                await runner.batches()
        except _Stop:
            pass
        finally:
            await m.aclose()
            for other, _ in extra.values():
                await other.aclose()
        counts = st.counts(run.id, limit)
        unfinished = counts.get("pending", 0) + counts.get("leased", 0)
        outputs: dict[str, str] = {}
        complete = not unfinished and (
            run.ingest_done or (limit is not None and run.ingested_rows >= limit)
        )
        # a run over the first rows only: more rows exist beyond the limit
        partial = limit is not None and not (run.ingest_done and limit >= run.ingested_rows)
        total = run.ingested_rows if run.ingest_done else None
        elapsed = time.monotonic() - started
        cause = runner.cause
        result_status: str | None = None
        if complete and partial:
            cause = "preview"
            covered = _covered(counts, limit, total)
            if before.status == "finished" and before.outputs:
                # a preview never replaces a complete output: the full run's files stay
                outputs = dict(before.outputs) if isinstance(before.outputs, dict) else {}
                status, reason = "finished", before.stop_reason
                result_status = "preview"
                note = f"{covered}; the complete output of the earlier run is kept, not rewritten"
            else:
                outputs = _write_outputs(st, run, job, plan, limit)
                status, reason = "preview", covered
                note = covered
        elif complete:
            outputs = _write_outputs(st, run, job, plan, limit)
            status, reason = "finished", None
        elif runner.fatal is not None:
            status, reason = "failed", runner.stop_reason
        elif runner.stop_reason:
            status, reason = "stopped", runner.stop_reason
            cause = cause or "budget"
        elif not stop.is_set() and (owners := _others(st, run.id, runner.owner)):
            # another worker holds the rows still to do: it finishes them and writes the outputs
            status, reason = "running", (
                f"{unfinished:,} rows are being finished by "
                f"{'worker' if len(owners) == 1 else 'workers'} {', '.join(owners)}, "
                "which will write the outputs"
            )
            cause = "elsewhere"
        else:
            status, reason = "interrupted", runner.stop_reason or _signal_name(stop)
            cause = "interrupted"
        if result_status == "preview":  # the stored run goes back to its finished state and outputs
            st.update_run(run.id, status=status, stop_reason=reason, outputs=outputs,
                          elapsed_s=run.elapsed_s + elapsed)
            reason = note
        elif status == "running":  # the other worker's run: only this worker's time is added
            st.update_run(run.id, elapsed_s=run.elapsed_s + elapsed)
        else:
            st.update_run(
                run.id, status=status, stop_reason=reason, outputs=outputs,
                elapsed_s=run.elapsed_s + elapsed,
            )
        final = st.get_run(run.id)
        assert final is not None
        result = summarize(st, final, limit=limit, outputs=outputs, elapsed_s=elapsed,
                           status=result_status or status)
        result.stop_reason = reason
        result.cause = cause
        result.store = None if path is None else str(path)
        result.model = m.id
        result.total_rows = total
        return result
    finally:
        if restore:
            restore()
        if own_store and st is not None:
            st.close()
        if fresh and path is not None and path.exists() and not _has_runs(path):
            _remove_store(path)  # a run that failed before it began leaves no empty store behind


def _covered(counts: dict[str, int], limit: int | None, total: int | None) -> str:
    n = sum(counts.values())
    if total is not None:
        return f"--limit {limit}: the first {n:,} of {total:,} rows"
    return f"--limit {limit}: the first {n:,} rows; the source has more"


def _others(store: Store, run_id: str, me: str) -> list[str]:
    """Live workers other than this one that hold leases on the run."""
    return sorted(o for o in store.lease_owners(run_id) if o != me and not _owner_dead(o))


def _signal_name(stop: asyncio.Event) -> str | None:
    return getattr(stop, "signal_name", None)


def _has_runs(path: Path) -> bool:
    try:
        st = open_store(path, create=False, check=False)
    except Exception:
        return True  # not ours to judge: leave the file alone
    try:
        return bool(st.list_runs(limit=1))
    except Exception:
        return True
    finally:
        st.close()


def _remove_store(path: Path) -> None:
    for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        with contextlib.suppress(OSError):
            p.unlink()
    with contextlib.suppress(OSError):
        path.parent.rmdir()  # the .corral folder, if it was made for this store and is empty


def run(
    job: Job | str | Path,
    *,
    model: Model | str | dict[str, Any] | None = None,
    limit: int | None = None,
    store: Store | str | Path | None = None,
    progress: Progress | None = None,
) -> RunResult:
    """Run a job, or resume it if it ran before on the same input.

    ``job`` is a :class:`Job` or the path of a YAML job file. ``model`` overrides the job's model
    (a name such as ``"fake"`` or a :class:`Model` instance). ``limit`` processes only the first
    N rows. ``store`` is a path (default: :func:`store_path_for`, the store found from the job
    file's folder) or a :class:`Store`. Returns a :class:`RunResult`.
    """
    return asyncio.run(
        run_async(job, model=model, limit=limit, store=store, progress=progress,
                  handle_signals=threading.current_thread() is threading.main_thread())
    )


def _install_signals(stop: asyncio.Event) -> Callable[[], None] | None:
    loop = asyncio.get_running_loop()
    count = {"n": 0}

    def on_signal(name: str) -> None:
        count["n"] += 1
        if count["n"] == 1:
            stop.signal_name = name  # type: ignore[attr-defined]  # the summary says which
            stop.set()
        else:
            os._exit(130)  # second Ctrl-C: leave now; leases return to the queue on the next run

    try:
        loop.add_signal_handler(signal.SIGINT, on_signal, "Ctrl-C")
        loop.add_signal_handler(signal.SIGTERM, on_signal, "SIGTERM")
    except (NotImplementedError, RuntimeError, ValueError):
        return None

    def restore() -> None:
        loop.remove_signal_handler(signal.SIGINT)
        loop.remove_signal_handler(signal.SIGTERM)

    return restore
