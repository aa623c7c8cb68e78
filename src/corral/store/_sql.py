"""What the SQLite and Postgres stores share: every Store method whose SQL both databases take
(written with ``?`` placeholders; the Postgres store's connection turns them into psycopg's).
A subclass provides the connection (:attr:`SQLStore.db`), its transactions (:meth:`SQLStore._tx`)
and the translation of its database's errors; the few expressions that differ are in
store/_dialect.py."""

from __future__ import annotations

import contextlib
import json
import time
from abc import abstractmethod
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

from corral.store import _batches, _claims, _ledger, _pages, _reviews, _routes
from corral.store._dialect import PAID, REPLAYED, UNPRICED, Conn
from corral.store.base import (
    ActivityBin,
    AnswerConfidence,
    AttemptRecord,
    BatchItem,
    BatchRow,
    CallRecord,
    Claim,
    DuplicateKeyError,
    FinalRecord,
    LeasedRecord,
    LedgerRollup,
    LedgerTotals,
    NewRecord,
    RecordRow,
    RecordSpend,
    ReviewDecision,
    RouteRow,
    RunInfo,
    RunSpend,
    StepSpend,
    Store,
    TraceEvent,
    split_label,
)
from corral.store.leases import LEASE_TTL_S

__all__ = ["SQLStore"]

_NANO = Decimal(1_000_000_000)
#: values per ``IN (...)`` of a look-up statement, under SQLite's limit on variables
_IN_PART = 500


def _rows_in(db: Conn, select: str, values: list[Any], *before: Any) -> Iterator[tuple[Any, ...]]:
    """The rows of ``select`` (ending in ``IN``, its other placeholders filled by ``before``) for
    ``values``, :data:`_IN_PART` at a time: one statement per part, not one per value."""
    for i in range(0, len(values), _IN_PART):
        part = values[i:i + _IN_PART]
        yield from db.execute(f"{select} ({','.join('?' * len(part))})", [*before, *part]).fetchall()


def _to_nanos(cost: Decimal | None) -> int | None:
    return None if cost is None else int((cost * _NANO).to_integral_value())


class SQLStore(Store):
    """The Store methods in SQL that SQLite and Postgres both run."""

    #: how the lease's UPDATE names the rows its inner SELECT (``{pick}``) picked. Postgres's
    #: picks with ``FOR UPDATE SKIP LOCKED`` (rows no other transaction is taking), once, as an
    #: array; SQLite has one writer at a time
    _LEASED_ROWS = "key IN ({pick})"

    @property
    @abstractmethod
    def db(self) -> Conn:
        """The connection (for reads outside a transaction)."""

    @abstractmethod
    def _tx(self) -> contextlib.AbstractContextManager[Conn]:
        """A transaction: the connection inside it, committed at the end, rolled back on any
        exception."""

    # --- runs --------------------------------------------------------------------------

    @staticmethod
    def _run(row: tuple[Any, ...]) -> RunInfo:
        return RunInfo(
            id=row[0],
            job_name=row[1],
            spec_hash=row[2],
            fingerprint=row[3],
            spec=json.loads(row[4]),
            status=row[5],
            stop_reason=row[6],
            created_at=row[7],
            updated_at=row[8],
            ingested_rows=row[9],
            ingest_done=bool(row[10]),
            tags=json.loads(row[11]),
            outputs=json.loads(row[12]),
            elapsed_s=row[13],
        )

    _RUN_COLS = (
        "id, job_name, spec_hash, fingerprint, spec, status, stop_reason, created_at, "
        "updated_at, ingested_rows, ingest_done, tags, outputs, elapsed_s"
    )

    def create_run(self, run: RunInfo) -> RunInfo:
        with self._tx() as db:
            db.execute(
                f"INSERT INTO runs ({self._RUN_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?) "
                "ON CONFLICT DO NOTHING",
                (
                    run.id,
                    run.job_name,
                    run.spec_hash,
                    run.fingerprint,
                    json.dumps(run.spec),
                    run.status,
                    run.stop_reason,
                    run.created_at,
                    run.updated_at,
                    run.ingested_rows,
                    int(run.ingest_done),
                    json.dumps(run.tags),
                    json.dumps(run.outputs),
                    run.elapsed_s,
                ),
            )
        got = self.get_run(run.id)
        assert got is not None
        return got

    def get_run(self, run_id: str) -> RunInfo | None:
        row = self.db.execute(f"SELECT {self._RUN_COLS} FROM runs WHERE id=?", (run_id,)).fetchone()
        return self._run(row) if row else None

    def find_runs(self, prefix: str) -> list[RunInfo]:
        rows = self.db.execute(
            f"SELECT {self._RUN_COLS} FROM runs WHERE id LIKE ? || '%' OR job_name=? "
            "ORDER BY updated_at DESC",
            (prefix, prefix),
        ).fetchall()
        return [self._run(r) for r in rows]

    def list_runs(self, limit: int = 50) -> list[RunInfo]:
        rows = self.db.execute(
            f"SELECT {self._RUN_COLS} FROM runs ORDER BY updated_at DESC LIMIT ?", (limit,)
        ).fetchall()
        return [self._run(r) for r in rows]

    def update_run(self, run_id: str, **fields: Any) -> None:
        allowed = {
            "status", "stop_reason", "ingested_rows", "ingest_done", "tags", "outputs", "spec",
            "elapsed_s",
        }
        sets, vals = [], []
        for k, v in fields.items():
            if k not in allowed:
                raise ValueError(k)
            if k in ("tags", "outputs", "spec"):
                v = json.dumps(v)
            elif k == "ingest_done":
                v = int(v)
            sets.append(f"{k}=?")
            vals.append(v)
        sets.append("updated_at=?")
        vals.append(time.time())
        with self._tx() as db:
            db.execute(f"UPDATE runs SET {', '.join(sets)} WHERE id=?", (*vals, run_id))

    def has_calls(self, run_id: str) -> bool:
        return self.db.execute("SELECT 1 FROM ledger WHERE run_id=? LIMIT 1", (run_id,)).fetchone() is not None

    def delete_run(self, run_id: str) -> None:
        with self._tx() as db:
            for table in ("records", "ledger", "attempts", "batch_items", "batches", "review_decisions"):
                db.execute(f"DELETE FROM {table} WHERE run_id=?", (run_id,))
            db.execute("DELETE FROM runs WHERE id=?", (run_id,))

    # --- ingestion ---------------------------------------------------------------------

    def ingest(self, run_id: str, records: list[NewRecord], cursor: int) -> None:
        now = time.time()
        with self._tx() as db:
            inserted = db.executemany(
                "INSERT INTO records (run_id, key, ordinal, line, content_hash, data, state, "
                "reason, updated_at) VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT DO NOTHING",
                [
                    (run_id, r.key, r.ordinal, r.line, r.content_hash, r.data, r.state, r.reason, now)
                    for r in records
                ],
            ).rowcount
            if inserted != len(records):
                # rows already there with the same ordinal were loaded by another worker
                self._raise_duplicate(db, run_id, records)
            db.execute(
                "UPDATE runs SET ingested_rows=CASE WHEN ingested_rows > ? THEN ingested_rows "
                "ELSE ? END, updated_at=? WHERE id=?",
                (cursor, cursor, now, run_id),
            )

    @staticmethod
    def _raise_duplicate(db: Conn, run_id: str, records: list[NewRecord]) -> None:
        seen: dict[str, NewRecord] = {}
        for r in records:
            if r.key in seen:
                raise DuplicateKeyError(r.key, seen[r.key].line, r.line)
            seen[r.key] = r
        stored = {k: (o, line) for k, o, line in _rows_in(
            db, "SELECT key, ordinal, line FROM records WHERE run_id=? AND key IN", list(seen), run_id)}
        for k, r in seen.items():  # in the rows' order: the first clash is the one reported
            if k in stored and stored[k][0] != r.ordinal:
                raise DuplicateKeyError(k, stored[k][1], r.line)

    def occurrences(self, run_id: str) -> dict[str, int]:
        rows = self.db.execute(
            "SELECT content_hash, COUNT(*) FROM records WHERE run_id=? AND content_hash IS NOT NULL "
            "GROUP BY content_hash",
            (run_id,),
        )
        return {h: n for h, n in rows}

    # --- queue -------------------------------------------------------------------------

    def _clock(self, db: Conn) -> float:
        """Now, by the clock leases are timed by (seconds since the epoch). Here this process's;
        a store shared by machines reads its server's, so that one machine's clock running
        ahead never expires the leases of workers on the others."""
        return time.time()

    def reclaim(self, run_id: str, is_dead: Callable[[str], bool]) -> int:
        dead = [o for o in self.lease_owners(run_id) if is_dead(o)]
        with self._tx() as db:
            now = self._clock(db)
            n = db.execute(
                "UPDATE records SET state='pending', lease_owner=NULL, lease_expires=NULL "
                "WHERE run_id=? AND state='leased' AND lease_expires < ?",
                (run_id, now),
            ).rowcount
            for o in dead:
                n += db.execute(
                    "UPDATE records SET state='pending', lease_owner=NULL, lease_expires=NULL "
                    "WHERE run_id=? AND state='leased' AND lease_owner=?",
                    (run_id, o),
                ).rowcount
        return n

    def lease(
        self, run_id: str, owner: str, n: int, ttl_s: float, below_ordinal: int | None = None
    ) -> list[LeasedRecord]:
        limit_ord = below_ordinal if below_ordinal is not None else 1 << 62
        with self._tx() as db:
            pick = ("SELECT key FROM records WHERE run_id=? AND state='pending' AND ordinal < ? "
                    "ORDER BY ordinal LIMIT ?")
            rows = db.execute(
                "UPDATE records SET state='leased', lease_owner=?, lease_expires=? "
                f"WHERE run_id=? AND state='pending' AND {self._LEASED_ROWS.format(pick=pick)} "
                "RETURNING key, ordinal, line, data",
                (owner, self._clock(db) + ttl_s, run_id, run_id, limit_ord, n),
            ).fetchall()
        rows.sort(key=lambda r: r[1])
        return [LeasedRecord(k, o, ln, json.loads(d)) for k, o, ln, d in rows]

    def lease_owners(self, run_id: str) -> list[str]:
        rows = self.db.execute(
            "SELECT DISTINCT lease_owner FROM records WHERE run_id=? AND state='leased' "
            "AND lease_expires >= ?",
            (run_id, self._clock(self.db)),
        )
        return [o for (o,) in rows if o is not None]

    def renew(self, run_id: str, owner: str, ttl_s: float) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE records SET lease_expires=? WHERE run_id=? AND state='leased' "
                "AND lease_owner=?",
                (self._clock(db) + ttl_s, run_id, owner),
            )
            _claims.renew(db, owner, ttl_s, self._clock(db))

    def release(self, run_id: str, owner: str) -> int:
        with self._tx() as db:
            _claims.forget_holds(db, run_id, owner)
            return db.execute(
                "UPDATE records SET state='pending', lease_owner=NULL, lease_expires=NULL "
                "WHERE run_id=? AND state='leased' AND lease_owner=?",
                (run_id, owner),
            ).rowcount

    # --- calls -------------------------------------------------------------------------

    def cached_many(self, request_hashes: list[str]) -> dict[str, str]:
        return dict(_rows_in(self.db, "SELECT request_hash, response FROM responses WHERE request_hash IN",
                             list(dict.fromkeys(request_hashes))))

    def claim_calls(
        self, request_hashes: list[str], owner: str, ttl_s: float, is_dead: Callable[[str], bool]
    ) -> list[Claim]:
        with self._tx() as db:
            return _claims.claim(db, request_hashes, owner, ttl_s, is_dead, self._clock(db))

    def share_budget(
        self, run_id: str, owner: str, held: tuple[int, int, Decimal], is_dead: Callable[[str], bool]
    ) -> tuple[LedgerTotals, tuple[int, int, Decimal]]:
        calls, tokens, cost = held
        with self._tx() as db:
            theirs = _claims.share_budget(db, run_id, owner, (calls, tokens, _to_nanos(cost) or 0), is_dead,
                                          LEASE_TTL_S, self._clock(db))
        c, t, n = theirs
        return self.totals(run_id), (c, t, Decimal(n) / _NANO)

    def release_call(self, request_hash: str, owner: str) -> None:
        with self._tx() as db:
            _claims.release(db, request_hash, owner)

    def save_learned(self, name: str, blob: bytes, meta: dict[str, Any]) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO learned (name, blob, meta, updated_at) VALUES (?, ?, ?, ?) ON CONFLICT (name) "
                "DO UPDATE SET blob=excluded.blob, meta=excluded.meta, updated_at=excluded.updated_at",
                (name, blob, json.dumps(meta, default=str), time.time()),
            )

    def load_learned(self, name: str) -> bytes | None:
        row = self.db.execute("SELECT blob FROM learned WHERE name=?", (name,)).fetchone()
        return bytes(row[0]) if row else None

    def commit(
        self, calls: list[CallRecord], attempts: list[AttemptRecord], finals: list[FinalRecord]
    ) -> None:
        with self._tx() as db:
            self._write(db, calls, attempts, finals)

    @staticmethod
    def _write(
        db: Conn,
        calls: list[CallRecord],
        attempts: list[AttemptRecord],
        finals: list[FinalRecord],
    ) -> None:
        now = time.time()
        # in the order of their hashes: two workers caching the same two answers at once take
        # the cache's row locks in the same order (Postgres), so neither waits on the other
        paid = sorted((c for c in calls if not c.replayed and c.response_json is not None),
                      key=lambda c: c.request_hash)
        if paid:  # an answer cached already (by another worker, say) stays as it was
            db.executemany(
                "INSERT INTO responses (request_hash, model, request, response, "
                "created_at) VALUES (?,?,?,?,?) ON CONFLICT DO NOTHING",
                [(c.request_hash, c.model, c.request_json, c.response_json, now) for c in paid],
            )
            _claims.recorded(db, [c.request_hash for c in paid])
        if calls:
            db.executemany(
                "INSERT INTO ledger (run_id, key, step, attempt, request_hash, model, replayed, "
                "input_tokens, output_tokens, cached_input_tokens, reasoning_tokens, "
                "cost_nanos, latency_s, created_at, strategy, kind, cache_write_tokens, calls) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                [
                    (
                        c.run_id,
                        c.key,
                        c.step,
                        c.attempt,
                        c.request_hash,
                        c.model,
                        int(c.replayed),
                        c.input_tokens,
                        c.output_tokens,
                        c.cached_input_tokens,
                        c.reasoning_tokens,
                        0 if c.replayed else _to_nanos(c.cost),
                        c.latency_s,
                        now,
                        c.strategy,
                        c.kind,
                        0 if c.replayed else c.cache_write_tokens,
                        c.calls,
                    )
                    for c in calls
                ],
            )
        if attempts:
            db.executemany(
                "INSERT INTO attempts (run_id, key, step, attempt, request_hash, outcome, "
                "detail, created_at, data) VALUES (?,?,?,?,?,?,?,?,?)",
                [
                    (a.run_id, a.key, a.step, a.attempt, a.request_hash, a.outcome, a.detail, now,
                     a.data)
                    for a in attempts
                ],
            )
        # by key, as the cache above: two writers of one record lock it in one order; a record
        # another worker finished (it took the rows of one that stalled past its lease) keeps
        # its state: the late worker's answer is in the ledger, never a second row
        if finals:
            db.executemany(
                "UPDATE records SET state=?, outputs=?, reason=?, attempts=?, lease_owner=NULL, "
                "lease_expires=NULL, updated_at=? WHERE run_id=? AND key=? AND state IN ('pending', 'leased')",
                [(f.state, f.outputs, f.reason, f.attempts, now, f.run_id, f.key)
                 for f in sorted(finals, key=lambda f: (f.run_id, f.key))],
            )

    # --- review decisions ---------------------------------------------------------------

    def apply_decisions(self, decisions: list[ReviewDecision], trace: list[AttemptRecord]) -> list[ReviewDecision]:
        with self._tx() as db:
            return _reviews.apply(db, decisions, trace)

    def decisions(self, run_id: str, key: str | None = None) -> list[ReviewDecision]:
        return _reviews.decisions(self.db, run_id, key)

    # --- provider batches --------------------------------------------------------------

    def add_batch(self, run_id: str, batch_id: str, model: str, items: list[tuple[str, str, str, int, str]]) -> None:
        with self._tx() as db:
            _batches.add(db, run_id, batch_id, model, items)

    def open_batches(self, run_id: str) -> list[BatchRow]:
        return _batches.open_batches(self.db, run_id)

    def set_batch_state(self, batch_id: str, state: str, detail: str | None = None) -> None:
        with self._tx() as db:
            _batches.set_state(db, batch_id, state, detail)

    def batch_items(self, batch_id: str) -> list[BatchItem]:
        return _batches.items(self.db, batch_id)

    def batch_failures(self, run_id: str) -> dict[str, tuple[int, str]]:
        return _batches.failures(self.db, run_id)

    def batch_answered(self, run_id: str) -> set[str]:
        return _batches.answered(self.db, run_id)

    def finish_batch(
        self, batch_id: str, calls: list[CallRecord], outcomes: dict[str, str], detail: str | None
    ) -> None:
        # one transaction, so a crash never fetches half a batch twice
        with self._tx() as db:
            self._write(db, calls, [], [])
            _batches.finish(db, batch_id, outcomes, detail)

    # --- reading -----------------------------------------------------------------------

    def counts(self, run_id: str, below_ordinal: int | None = None) -> dict[str, int]:
        if below_ordinal is None:
            rows = self.db.execute(
                "SELECT state, COUNT(*) FROM records WHERE run_id=? GROUP BY state", (run_id,)
            )
        else:
            rows = self.db.execute(
                "SELECT state, COUNT(*) FROM records WHERE run_id=? AND ordinal < ? GROUP BY state",
                (run_id, below_ordinal),
            )
        return {s: n for s, n in rows}

    def outcome_counts(self, run_id: str) -> dict[str, int]:
        rows = self.db.execute(
            "SELECT outcome, COUNT(*) FROM attempts WHERE run_id=? GROUP BY outcome", (run_id,)
        )
        return {o: n for o, n in rows}

    def totals(self, run_id: str) -> LedgerTotals:
        row = self.db.execute(
f"SELECT COALESCE({PAID},0), COALESCE({REPLAYED},0), "
            "COALESCE(SUM(CASE WHEN replayed=0 THEN input_tokens END),0), "
            "COALESCE(SUM(CASE WHEN replayed=0 THEN output_tokens END),0), "
            f"COALESCE(SUM(cost_nanos),0), {UNPRICED}, "
            "COALESCE(SUM(CASE WHEN replayed=0 THEN cached_input_tokens END),0), "
            "COALESCE(SUM(CASE WHEN replayed=0 THEN cache_write_tokens END),0) "
            "FROM ledger WHERE run_id=?",
            (run_id,),
        ).fetchone()
        unknown = row[5] or 0
        cost = None if unknown else Decimal(row[4]) / _NANO
        return LedgerTotals(row[0], row[1], row[2], row[3], cost, int(row[6]), int(row[7]))

    def breakdown(self, run_id: str) -> list[StepSpend]:
        rows = self.db.execute(
f"SELECT step, strategy, model, {PAID}, {REPLAYED}, "
            "COALESCE(SUM(CASE WHEN replayed=0 THEN input_tokens END),0), "
            "COALESCE(SUM(CASE WHEN replayed=0 THEN output_tokens END),0), "
f"COALESCE(SUM(cost_nanos),0), {UNPRICED}, MIN(id) "
            "FROM ledger WHERE run_id=? GROUP BY step, strategy, model ORDER BY MIN(id)",
            (run_id,),
        ).fetchall()
        merged: dict[tuple[str, str | None, str], StepSpend] = {}  # in order of first call
        for step, strategy, model, paid, replayed, tin, tout, nanos, unknown, _first in rows:
            name = split_label(step)[0]  # `details[2/3]`: a chunk of step `details`
            m = merged.setdefault(
                (name, strategy, model), StepSpend(name, strategy, model, 0, 0, 0, 0, Decimal(0))
            )
            m.calls += paid or 0
            m.replayed += replayed or 0
            m.input_tokens += tin
            m.output_tokens += tout
            m.cost = None if unknown or m.cost is None else m.cost + Decimal(nanos) / _NANO
        return list(merged.values())

    def run_spend(self, run_id: str) -> RunSpend:
        rows = self.db.execute(
            "SELECT l.input_tokens, l.output_tokens, l.cost_nanos, r.response "
            "FROM ledger l LEFT JOIN responses r ON r.request_hash = l.request_hash "
            "WHERE l.run_id=?",
            (run_id,),
        )
        spend = RunSpend(0, 0, 0, Decimal(0))
        for tin, tout, nanos, response in rows:
            spend.calls += 1
            if response is not None:
                usage = json.loads(response).get("usage") or {}
                spend.input_tokens += int(usage.get("input_tokens") or 0)
                spend.output_tokens += int(usage.get("output_tokens") or 0)
                price = usage.get("cost")
                paid = None if price is None else Decimal(str(price))
            else:  # a billed call that failed: no response, the ledger row holds its usage
                spend.input_tokens += tin
                spend.output_tokens += tout
                paid = None if nanos is None else Decimal(nanos) / _NANO
            if spend.cost is not None:
                spend.cost = None if paid is None else spend.cost + paid
        return spend

    def routes(self, run_id: str) -> list[RouteRow]:
        return _routes.routes(self.db, run_id)

    def record_spend(self, run_id: str, steps: list[str] | None = None) -> list[RecordSpend]:
        return _routes.record_spend(self.db, run_id, steps)

    def answer_confidences(self, run_id: str) -> list[AnswerConfidence]:
        return _pages.answer_confidences(self.db, run_id)

    def activity(self, run_id: str, bins: int = 48) -> list[ActivityBin]:
        return _pages.activity(self.db, run_id, bins)

    def ledger_rollup(self, run_ids: list[str] | None = None, since: float | None = None) -> LedgerRollup:
        return _ledger.ledger_rollup(self.db, run_ids, since)

    _RECORD_COLS = "key, ordinal, line, data, state, reason, outputs, attempts"

    @staticmethod
    def _record(row: tuple[Any, ...]) -> RecordRow:
        k, o, ln, d, state, reason, out, attempts = row
        return RecordRow(
            k, o, ln, json.loads(d) if d else None, state, reason,
            json.loads(out) if out else None, attempts,
        )

    def iter_records(
        self, run_id: str, state: str, chunk: int = 2000, below_ordinal: int | None = None
    ) -> Iterator[list[RecordRow]]:
        last = -1
        end = below_ordinal if below_ordinal is not None else 1 << 62
        while True:
            rows = self.db.execute(
                f"SELECT {self._RECORD_COLS} FROM records WHERE run_id=? AND state=? AND ordinal > ? "
                "AND ordinal < ? ORDER BY ordinal LIMIT ?",
                (run_id, state, last, end, chunk),
            ).fetchall()
            if not rows:
                return
            last = rows[-1][1]
            yield [self._record(r) for r in rows]

    def record(self, run_id: str, key: str) -> RecordRow | None:
        row = self.db.execute(
            f"SELECT {self._RECORD_COLS} FROM records WHERE run_id=? AND key=?", (run_id, key)
        ).fetchone()
        return None if row is None else self._record(row)

    def record_calls(self, run_id: str, key: str) -> list[TraceEvent]:
        rows = self.db.execute(
            "SELECT a.step, a.attempt, a.outcome, a.detail, a.request_hash, r.request, r.response, "
            "l.replayed, l.input_tokens, l.output_tokens, l.cost_nanos, a.data "
            "FROM attempts a LEFT JOIN responses r ON r.request_hash = a.request_hash "
            "LEFT JOIN ledger l ON l.run_id = a.run_id AND l.key = a.key "
            "AND l.request_hash = a.request_hash "
            "WHERE a.run_id=? AND a.key=? ORDER BY a.id",
            (run_id, key),
        ).fetchall()
        out = []
        seen: set[tuple[str, int, str | None]] = set()
        for step, att, outcome, detail, h, req, resp, replayed, tin, tout, nanos, data in rows:
            if h is not None and (step, att, h) in seen:
                continue
            seen.add((step, att, h))
            out.append(TraceEvent(
                step, att, outcome, detail, h,
                json.loads(req) if req else None,
                json.loads(resp) if resp else None,
                bool(replayed) if replayed is not None else None,
                tin, tout,
                None if nanos is None else Decimal(nanos) / _NANO,
                json.loads(data) if data else None,
            ))
        return out
