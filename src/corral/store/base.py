"""The Store interface: everything durable about runs goes through it.

The engine and the CLI only use these methods, so a Postgres store can implement the same
interface without changing callers. All methods are synchronous and each one is one transaction.

A store that cannot do what a method asks — a damaged file, a lock held too long by another
process, a full disk — raises :class:`corral.errors.StoreError` with a one-line message that says
what to do; the store's own exceptions (``sqlite3.OperationalError``...) do not reach callers,
except for a violated constraint, which is a bug of the caller.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

#: attempt outcomes that are a strategy's decisions rather than a model call
DECISIONS = frozenset({"vote", "critique", "best", "escalate", "accepted", "budget"})

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


@dataclass(slots=True)
class AttemptRecord:
    run_id: str
    key: str
    step: str
    attempt: int
    request_hash: str | None
    #: a call's outcome (ok, checks, truncated, refused, invalid, error, retry) or a strategy's
    #: decision (vote, critique, best, escalate, accepted, budget)
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


class DuplicateKeyError(Exception):
    def __init__(self, key: str, first_line: int | None, second_line: int | None) -> None:
        super().__init__(key)
        self.key = key
        self.first_line = first_line
        self.second_line = second_line


class Store(ABC):
    # runs
    @abstractmethod
    def create_run(self, run: RunInfo) -> RunInfo: ...
    @abstractmethod
    def get_run(self, run_id: str) -> RunInfo | None: ...
    @abstractmethod
    def find_runs(self, prefix: str) -> list[RunInfo]: ...
    @abstractmethod
    def list_runs(self, limit: int = 50) -> list[RunInfo]: ...
    @abstractmethod
    def update_run(self, run_id: str, **fields: Any) -> None: ...
    @abstractmethod
    def delete_run(self, run_id: str) -> None: ...
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
    def reclaim(self, run_id: str, is_dead: Any) -> int:
        """Return leased records whose lease expired or whose owner ``is_dead(owner)`` to pending."""

    @abstractmethod
    def lease(
        self, run_id: str, owner: str, n: int, ttl_s: float, below_ordinal: int | None = None
    ) -> list[LeasedRecord]: ...
    @abstractmethod
    def lease_owners(self, run_id: str) -> list[str]:
        """Owners holding leases in the run now."""

    @abstractmethod
    def renew(self, run_id: str, owner: str, ttl_s: float) -> None: ...
    @abstractmethod
    def release(self, run_id: str, owner: str) -> int: ...

    # calls
    @abstractmethod
    def cached(self, request_hash: str) -> str | None:
        """The recorded response JSON for a request hash, if any."""

    @abstractmethod
    def commit(
        self,
        calls: list[CallRecord],
        attempts: list[AttemptRecord],
        finals: list[FinalRecord],
    ) -> None:
        """Write calls (cache + ledger), attempts and final states in one transaction."""

    # reading
    @abstractmethod
    def counts(self, run_id: str, below_ordinal: int | None = None) -> dict[str, int]: ...
    @abstractmethod
    def totals(self, run_id: str) -> LedgerTotals: ...
    @abstractmethod
    def breakdown(self, run_id: str) -> list[dict[str, Any]]:
        """The run's ledger grouped by step (chunks of a step together), strategy and model:
        ``step, strategy, model, calls, replayed, input_tokens, output_tokens, cost`` (paid calls'
        tokens and cost; cost ``None`` when a price is unknown)."""
    @abstractmethod
    def run_spend(self, run_id: str) -> dict[str, Any]:
        """What the run's calls cost in all, replays counted at the price first paid for them:
        ``{calls, input_tokens, output_tokens, cost}`` summed over the run's ledger rows, each
        read from its recorded response's usage; ``cost`` is a Decimal, or None when some
        call's price is unknown."""

    @abstractmethod
    def iter_records(
        self, run_id: str, state: str, chunk: int = 2000, below_ordinal: int | None = None
    ) -> Iterator[list[dict[str, Any]]]: ...
    @abstractmethod
    def record(self, run_id: str, key: str) -> dict[str, Any] | None: ...
    @abstractmethod
    def record_calls(self, run_id: str, key: str) -> list[dict[str, Any]]: ...

    # provider batches
    @abstractmethod
    def add_batch(
        self, run_id: str, batch_id: str, model: str, items: list[tuple[str, str, str, int, str]]
    ) -> None:
        """Persist a submitted batch and its items (custom_id, key, step, attempt, request)."""

    @abstractmethod
    def open_batches(self, run_id: str) -> list[dict[str, Any]]: ...
    @abstractmethod
    def set_batch_state(self, batch_id: str, state: str, detail: str | None = None) -> None: ...
    @abstractmethod
    def batch_items(self, batch_id: str) -> list[dict[str, Any]]: ...
    @abstractmethod
    def batch_failures(self, run_id: str) -> dict[str, tuple[int, str]]: ...
    @abstractmethod
    def batch_answered(self, run_id: str) -> set[str]:
        """Request hashes the run's batches answered (paid and in the ledger already)."""

    @abstractmethod
    def finish_batch(
        self, batch_id: str, calls: list[CallRecord], outcomes: dict[str, str], detail: str | None
    ) -> None: ...

    @abstractmethod
    def close(self) -> None: ...
