"""The Store interface: everything durable about runs goes through it.

The engine and the CLI only use these methods, so a Postgres store can implement the same
interface without changing callers. All methods are synchronous and each one is one transaction.

A store that cannot do what a method asks — a damaged file, a lock held too long by another
process, a full disk — raises :class:`corral.errors.StoreError` with a one-line message that says
what to do; the store's own exceptions (``sqlite3.OperationalError``...) do not reach callers,
except for a violated constraint, which is a bug of the caller.
"""

from __future__ import annotations

import dataclasses
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from corral._outcomes import CALL_OUTCOMES

STATES = ("pending", "leased", "done", "quarantined", "review", "skipped")
FINAL_STATES = ("done", "quarantined", "review", "skipped")


@dataclass(slots=True)
class RunInfo:
    id: str
    job_name: str
    spec_hash: str
    fingerprint: str
    spec: dict[str, Any]
    status: str  # created | running | interrupted | stopped | finished | failed
    stop_reason: str | None
    created_at: float
    updated_at: float
    ingested_rows: int
    ingest_done: bool
    tags: dict[str, str]
    #: what the run wrote last: {sink, quarantine, skipped?, review?} -> path
    outputs: dict[str, str] | list[str] = field(default_factory=dict)
    elapsed_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Claim:
    """What :meth:`Store.claim_calls` found for a request: its response is recorded (``cached``:
    replay it), or another live worker is asking it (``holder``: wait for its answer), or
    neither (the claim is the caller's now: make the call)."""

    holder: str | None = None
    cached: bool = False


@dataclass(slots=True)
class NewRecord:
    key: str
    ordinal: int
    line: int | None
    data: str | None  # JSON text of the row, None for a malformed row
    content_hash: str | None = None
    state: str = "pending"
    reason: str | None = None


@dataclass(slots=True)
class LeasedRecord:
    key: str
    ordinal: int
    line: int | None
    data: dict[str, Any]


@dataclass(slots=True)
class CallRecord:
    """One model call: a paid one (with its response to cache) or a replay from the cache."""

    run_id: str
    key: str
    step: str
    attempt: int
    request_hash: str
    model: str
    replayed: bool
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int
    reasoning_tokens: int
    cost: Decimal | None
    latency_s: float
    request_json: str | None = None  # set for paid calls: cached with the response
    response_json: str | None = None
    strategy: str | None = None  # which strategy (and stage) made the call
    #: what the call was for: one of :data:`corral._kinds.CALL_KINDS` (not ``replay``: that is
    #: ``replayed``); None when the writer could not tell (read back by a best guess)
    kind: str | None = None
    #: of ``input_tokens``, those written to the provider's prompt cache
    cache_write_tokens: int = 0
    #: the provider calls this row stands for: 1, or 0 on every row after the first of a call
    #: that answered several rows (``pack:``), whose tokens and cost are split over its rows
    calls: int = 1


@dataclass(slots=True)
class AttemptRecord:
    run_id: str
    key: str
    step: str
    attempt: int
    request_hash: str | None
    #: a call's outcome (one of :data:`corral._outcomes.CALL_OUTCOMES`) or a decision (a
    #: strategy's: vote, critique, best, escalate...; the engine's: accepted, budget)
    outcome: str
    detail: str | None = None
    data: str | None = None  # JSON: answer, confidence, votes, critique... (the trace)


@dataclass(slots=True)
class FinalRecord:
    run_id: str
    key: str
    state: str
    outputs: str | None  # JSON of step outputs
    reason: str | None
    attempts: int


@dataclass(slots=True)
class LedgerTotals:
    made: int = 0
    replayed: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost: Decimal | None = Decimal(0)
    #: of the paid input tokens, those the provider served from its prompt cache
    cached_input_tokens: int = 0
    #: of the paid input tokens, those written to the provider's prompt cache
    cache_write_tokens: int = 0


# --- what is read ---------------------------------------------------------------------------

_PART = re.compile(r"^(?P<step>.*)\[(?P<part>\d+/\d+)\]$")


def split_label(label: str) -> tuple[str, str | None]:
    """A trace's step label -> (step name, chunk ``i/n`` or None): ``facts[2/3]`` -> (facts, 2/3).
    A step that splits a long input into parts records each part under such a label."""
    m = _PART.match(label)
    return (m.group("step"), m.group("part")) if m else (label, None)


def _as_json(row: Any, money: Callable[[Decimal], Any]) -> dict[str, Any]:
    """A read row as a JSON-ready mapping, its Decimal amounts as ``money`` writes them (as the
    CLI's ``--json`` has printed each of them so far)."""
    return {
        k: money(v) if isinstance(v, Decimal) else v for k, v in dataclasses.asdict(row).items()
    }


@dataclass(slots=True)
class RecordRow:
    """One record of a run as the store holds it: its input row, state and step outputs."""

    key: str
    ordinal: int
    line: int | None  # the source line, when the source has lines
    data: dict[str, Any] | None  # the input row; None for a malformed one
    state: str  # one of STATES
    reason: str | None  # why it is quarantined, held or skipped
    outputs: dict[str, Any] | None  # step name -> the step's output, once final
    attempts: int

    def to_json(self) -> dict[str, Any]:
        return _as_json(self, str)


@dataclass(slots=True)
class TraceEvent:
    """One event of a record's trace: a model call (``kind == "call"``, with its recorded
    request, response and ledger row) or a decision (a strategy's, such as a vote, or the
    engine's: the accepted answer, a budget stop), which carries no call of its own."""

    step: str  # the step's label: its name, or ``name[i/n]`` for one part of a split input
    attempt: int
    outcome: str
    detail: str | None
    request_hash: str | None
    request: dict[str, Any] | None
    response: dict[str, Any] | None
    replayed: bool | None  # None: no ledger row (a decision, or a call that got no answer)
    input_tokens: int | None
    output_tokens: int | None
    cost_usd: Decimal | None
    data: dict[str, Any] | None  # answer, confidence, votes, critique... as the writer put them

    @property
    def kind(self) -> Literal["call", "decision"]:
        return "call" if self.outcome in CALL_OUTCOMES else "decision"

    @property
    def step_name(self) -> str:
        """The step's name, without the part of a split input."""
        return split_label(self.step)[0]

    @property
    def part(self) -> str | None:
        """``i/n`` for one part of a split input, else None."""
        return split_label(self.step)[1]

    @property
    def info(self) -> dict[str, Any]:
        """``data``, or an empty mapping when the event has none."""
        return self.data or {}

    def to_json(self) -> dict[str, Any]:
        """The event as ``corral show --json`` prints it (``cost_usd`` as a decimal string)."""
        return _as_json(self, str)


@dataclass(slots=True)
class BatchRow:
    """A provider batch the run submitted and has not fetched yet."""

    id: str
    model: str
    state: str  # submitted | fetched
    detail: str | None  # the provider's last word on it
    items: int
    created_at: float


@dataclass(slots=True)
class BatchItem:
    """One request of a provider batch, and where its answer goes."""

    custom_id: str  # the request's hash
    key: str
    step: str
    attempt: int
    request: str  # the request's JSON


@dataclass(slots=True)
class StepSpend:
    """A run's paid calls of one step, strategy (and stage) and model: what each extra call
    bought. ``cost`` is None when some call's price is unknown."""

    step: str
    strategy: str | None
    model: str
    calls: int
    replayed: int
    input_tokens: int
    output_tokens: int
    cost: Decimal | None

    def to_json(self) -> dict[str, Any]:
        """The row as ``corral status --json`` prints it under ``by_step`` (``cost`` a float)."""
        return _as_json(self, float)


@dataclass(slots=True)
class RunSpend:
    """What a run's calls cost in all, replays counted at the price first paid for them."""

    calls: int
    input_tokens: int
    output_tokens: int
    cost: Decimal | None  # None when some call's price is unknown


@dataclass(slots=True)
class RouteRow:
    """A record's route at one step (its latest ``route`` trace event there): the expert that
    took it, ``default`` (the step as written), or System 1's ``system1`` (answered without a
    call) or ``audit`` (answered, and asked all the same); ``data`` is the event's data
    (``route``, and what the router adds: ``p``, ``threshold``, ``answer``)."""

    key: str
    step: str
    route: str
    data: dict[str, Any]


@dataclass(slots=True)
class RecordSpend:
    """One record's calls at one step (the parts of a split input together): paid calls,
    replays, and the paid calls' cost (None when some paid call's price is unknown)."""

    key: str
    step: str
    calls: int
    replayed: int
    cost: Decimal | None


@dataclass(slots=True)
class AnswerConfidence:
    """The confidence of a record's answer at one step, as ``corral eval`` reads it: the
    accepted answer's (the lowest of its parts' for a split input; None when the strategy
    measured none), or, for a record with no accepted answer there (held for review, say), the
    latest answer's that has one (``accepted`` False)."""

    key: str
    step: str
    confidence: float | None
    accepted: bool = True


@dataclass(slots=True)
class ActivityBin:
    """What a run did in one slice of time: paid and replayed calls, and answers accepted."""

    start: float  # the slice's start (seconds since the epoch)
    width_s: float
    calls: int
    replayed: int
    answers: int


@dataclass(slots=True)
class ReviewDecision:
    """A person's decision on a record held for review (``corral review``), kept for good: what
    was decided, by whom and when, what the record became, and what it was before."""

    run_id: str
    key: str
    action: str  # accept | edit | reject
    who: str
    at: float  # when, in seconds since the epoch
    state: str  # the record's state after it: done (accept, edit) or quarantined (reject)
    outputs: dict[str, Any] | None  # the step outputs written: the held ones, or the edited ones
    reason: str | None  # the record's reason after it (None once written; reject: who rejected it)
    note: str | None = None  # the person's note
    prev_state: str = "review"  # the record's state before it (set by the store)
    prev_reason: str | None = None  # why the record was held (set by the store)
    id: int | None = None  # the decision's number in the store (set by the store)

    def to_json(self) -> dict[str, Any]:
        return _as_json(self, str)


@dataclass(slots=True)
class LedgerGroup:
    """A run's ledger rows of one step name (the parts of a split input together), model,
    strategy path, call kind (:data:`corral._kinds.CALL_KINDS` but ``replay``) and ``replayed``,
    summed. Paid rows (``replayed`` false): their tokens and cost, None when some row's price is
    unknown (``unpriced`` of them). Replays: their recorded tokens and what they cost when they
    were first paid for (None when that price is unknown), spent again by nobody."""

    run_id: str
    step: str
    model: str
    strategy: str | None
    kind: str
    replayed: bool
    calls: int
    input_tokens: int
    output_tokens: int
    cost: Decimal | None
    unpriced: int
    first_id: int  # the group's first ledger row: groups come in the order they first called


@dataclass(slots=True)
class LedgerRollup:
    """The ledger of some runs, grouped (:class:`LedgerGroup`), and the rows each run wrote."""

    groups: list[LedgerGroup]
    #: run id -> its records in state ``done`` (those finished since ``since``, when given)
    written: dict[str, int]


class DuplicateKeyError(Exception):
    def __init__(self, key: str, first_line: int | None, second_line: int | None) -> None:
        super().__init__(key)
        self.key = key
        self.first_line = first_line
        self.second_line = second_line


class Store(ABC):
    """Everything durable about runs: the contract a store (SQLite, a future Postgres) implements.

    Each method is one transaction. Reads return the typed rows above; writes take the records
    above. Keys are a run's record keys; request hashes are :meth:`Request.cache_key` values.
    """

    # runs
    @abstractmethod
    def create_run(self, run: RunInfo) -> RunInfo:
        """Insert a run unless one with its id exists; return the run as stored (the existing
        one, when another process created it first)."""

    @abstractmethod
    def get_run(self, run_id: str) -> RunInfo | None:
        """The run with this exact id, or None."""

    @abstractmethod
    def find_runs(self, prefix: str) -> list[RunInfo]:
        """Runs whose id starts with ``prefix`` or whose job is named ``prefix``, latest
        updated first."""

    @abstractmethod
    def list_runs(self, limit: int = 50) -> list[RunInfo]:
        """The ``limit`` runs updated last, latest first."""

    @abstractmethod
    def update_run(self, run_id: str, **fields: Any) -> None:
        """Set some of a run's fields (status, stop_reason, ingested_rows, ingest_done, tags,
        outputs, spec, elapsed_s) and its updated_at; ValueError for any other field."""

    @abstractmethod
    def delete_run(self, run_id: str) -> None:
        """Delete a run and everything of it: records, ledger, trace and provider batches (the
        response cache stays: other runs may replay it)."""

    @abstractmethod
    def has_calls(self, run_id: str) -> bool:
        """Whether the ledger holds any call of the run."""

    # ingestion
    @abstractmethod
    def ingest(self, run_id: str, records: list[NewRecord], cursor: int) -> None:
        """Insert records and advance the run's ingestion cursor; raise DuplicateKeyError."""

    @abstractmethod
    def occurrences(self, run_id: str) -> dict[str, int]:
        """content_hash -> count of records, to resume key-less ingestion."""

    # queue
    @abstractmethod
    def reclaim(self, run_id: str, is_dead: Callable[[str], bool]) -> int:
        """Return leased records whose lease expired or whose owner ``is_dead(owner)`` to pending;
        how many were returned."""

    @abstractmethod
    def lease(
        self, run_id: str, owner: str, n: int, ttl_s: float, below_ordinal: int | None = None
    ) -> list[LeasedRecord]:
        """Lease up to ``n`` pending records (lowest ordinals first, below ``below_ordinal`` when
        given) to ``owner`` for ``ttl_s`` seconds, in ordinal order."""

    @abstractmethod
    def lease_owners(self, run_id: str) -> list[str]:
        """Owners holding leases in the run now."""

    @abstractmethod
    def renew(self, run_id: str, owner: str, ttl_s: float) -> None:
        """Extend every lease ``owner`` holds in the run, and every call it claims
        (:meth:`claim_calls`), to ``ttl_s`` seconds from now."""

    @abstractmethod
    def release(self, run_id: str, owner: str) -> int:
        """Return the records ``owner`` still leases to pending; how many."""

    # calls
    @abstractmethod
    def cached_many(self, request_hashes: list[str]) -> dict[str, str]:
        """The recorded response JSON of each of ``request_hashes`` that has one, in one look
        at the store (the request layer gathers a turn of the event loop's look-ups into one:
        corral._per_turn)."""

    def cached(self, request_hash: str) -> str | None:
        """The recorded response JSON for a request hash, if any."""
        return self.cached_many([request_hash]).get(request_hash)

    @abstractmethod
    def claim_calls(
        self, request_hashes: list[str], owner: str, ttl_s: float, is_dead: Callable[[str], bool]
    ) -> list[Claim]:
        """Claim the paid calls of ``request_hashes`` for ``owner`` for ``ttl_s`` seconds, so
        that workers asking the same request at once pay it once; one :class:`Claim` per hash,
        in one transaction. A hash whose response is recorded, or that another owner claims
        (unexpired, its process not ``is_dead``), is not claimed. A claim ends when
        :meth:`commit` records the call's response, at :meth:`release_call`, or when it
        expires unrenewed."""

    @abstractmethod
    def share_budget(
        self, run_id: str, owner: str, held: tuple[int, int, Decimal], is_dead: Callable[[str], bool]
    ) -> tuple[LedgerTotals, tuple[int, int, Decimal]]:
        """Record what ``owner``'s calls in flight hold of the run's budget (calls, tokens,
        cost) and return, in one transaction, the run's ledger totals (as :meth:`totals`) and
        what the other workers' calls in flight hold (those recorded in the last
        ``LEASE_TTL_S`` whose process is not ``is_dead``), so that workers sharing a budget see
        each other's reservations. :meth:`release` forgets ``owner``'s."""

    @abstractmethod
    def release_call(self, request_hash: str, owner: str) -> None:
        """End ``owner``'s claim of a call that brought no response (it failed)."""

    # learned models
    @abstractmethod
    def save_learned(self, name: str, blob: bytes, meta: dict[str, Any]) -> None:
        """Keep a learned model (System 1, the expert router) under ``name``, replacing the last."""

    @abstractmethod
    def load_learned(self, name: str) -> bytes | None:
        """The learned model kept under ``name``, if any."""

    @abstractmethod
    def commit(
        self,
        calls: list[CallRecord],
        attempts: list[AttemptRecord],
        finals: list[FinalRecord],
    ) -> None:
        """Write calls (cache + ledger), attempts and final states in one transaction; a paid
        call's claim (:meth:`claim_calls`) ends with it."""

    # reading
    @abstractmethod
    def counts(self, run_id: str, below_ordinal: int | None = None) -> dict[str, int]:
        """State -> number of the run's records in it (below ``below_ordinal`` when given);
        states without records are left out."""

    @abstractmethod
    def outcome_counts(self, run_id: str) -> dict[str, int]:
        """Trace outcome (a call's: ok, truncated, refused...; or a decision) -> how many of the
        run's trace events have it."""

    @abstractmethod
    def totals(self, run_id: str) -> LedgerTotals:
        """The run's ledger summed: calls made and replayed, paid tokens, cost (None when some
        paid call's price is unknown)."""

    @abstractmethod
    def breakdown(self, run_id: str) -> list[StepSpend]:
        """The run's ledger grouped by step (chunks of a step together), strategy and model, in
        the order each group first called: paid calls' tokens and cost, and replays."""

    @abstractmethod
    def run_spend(self, run_id: str) -> RunSpend:
        """What the run's calls cost in all, replays counted at the price first paid for them:
        summed over the run's ledger rows, each read from its recorded response's usage."""

    @abstractmethod
    def routes(self, run_id: str) -> list[RouteRow]:
        """Each (record, step)'s route: the latest ``route`` event of the step in the record's
        trace (a record worked again after a crash, or after a provider batch, routes again),
        in the order the pairs were first routed. Records of steps without routes have none."""

    @abstractmethod
    def record_spend(self, run_id: str, steps: list[str] | None = None) -> list[RecordSpend]:
        """The run's ledger summed per (record, step name), of the named ``steps`` only when
        given: paid calls, replays and the paid calls' cost, as :meth:`breakdown` counts them.
        A record with no call at a step has no row for it."""

    @abstractmethod
    def answer_confidences(self, run_id: str) -> list[AnswerConfidence]:
        """Each (record, step name)'s answer's confidence from the trace (see
        :class:`AnswerConfidence`): the latest ``accepted`` event of each step label, else the
        latest answer with a confidence; in the order first answered."""

    @abstractmethod
    def activity(self, run_id: str, bins: int = 48) -> list[ActivityBin]:
        """The run's calls (from the ledger) and accepted answers (from the trace) counted in
        ``bins`` equal slices of time from its first to its last event (fewer, of one second,
        for a run shorter than ``bins`` seconds); [] before any event."""

    @abstractmethod
    def ledger_rollup(self, run_ids: list[str] | None = None, since: float | None = None) -> LedgerRollup:
        """The ledger of the runs ``run_ids`` (every run when None) grouped by run, step name,
        model, strategy, kind and replayed, in the order each group first called, with the
        records each run wrote; only calls (and rows written) at or after ``since`` (a Unix
        time) when given. A row written without a kind gets :func:`corral._kinds.derive_kind`'s."""

    @abstractmethod
    def iter_records(
        self, run_id: str, state: str, chunk: int = 2000, below_ordinal: int | None = None
    ) -> Iterator[list[RecordRow]]:
        """The run's records in ``state`` (below ``below_ordinal`` when given), in ordinal
        order, ``chunk`` at a time: each chunk is read when the previous one is consumed."""

    @abstractmethod
    def record(self, run_id: str, key: str) -> RecordRow | None:
        """The run's record with this key, or None."""

    @abstractmethod
    def record_calls(self, run_id: str, key: str) -> list[TraceEvent]:
        """The record's trace in the order it was written: every call with its recorded request
        and response and its ledger row, and every decision."""

    # review decisions
    @abstractmethod
    def apply_decisions(
        self, decisions: list[ReviewDecision], trace: list[AttemptRecord]
    ) -> list[ReviewDecision]:
        """Apply decisions in one transaction: each record still in ``review`` takes its
        decision's state, outputs and reason, the decision is kept (with the record's state and
        reason before it, and its id), and the ``trace`` events of its key are added. Returns
        the decisions applied, in order; one whose record is not in review (any more) is left
        out, and nothing of it is written."""

    @abstractmethod
    def decisions(self, run_id: str, key: str | None = None) -> list[ReviewDecision]:
        """The run's review decisions (of one key when given), in the order they were made."""

    # provider batches
    @abstractmethod
    def add_batch(
        self, run_id: str, batch_id: str, model: str, items: list[tuple[str, str, str, int, str]]
    ) -> None:
        """Persist a submitted batch and its items (custom_id, key, step, attempt, request)."""

    @abstractmethod
    def open_batches(self, run_id: str) -> list[BatchRow]:
        """The run's batches not fetched yet, oldest first."""

    @abstractmethod
    def set_batch_state(self, batch_id: str, state: str, detail: str | None = None) -> None:
        """Record a batch's state and the provider's last word on it."""

    @abstractmethod
    def batch_items(self, batch_id: str) -> list[BatchItem]:
        """The requests a batch was submitted with."""

    @abstractmethod
    def batch_failures(self, run_id: str) -> dict[str, tuple[int, str]]:
        """Request hash -> (how many batch submissions of it failed, the last reason)."""

    @abstractmethod
    def batch_answered(self, run_id: str) -> set[str]:
        """Request hashes the run's batches answered (paid and in the ledger already)."""

    @abstractmethod
    def finish_batch(
        self, batch_id: str, calls: list[CallRecord], outcomes: dict[str, str], detail: str | None
    ) -> None:
        """Record a fetched batch in one transaction: its answers (cache + ledger) and each
        item's outcome (custom_id -> ok or the reason), and mark it fetched."""

    @abstractmethod
    def close(self) -> None:
        """Close the store; later method calls fail."""
