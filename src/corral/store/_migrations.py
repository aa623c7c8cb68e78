"""The stores' schema, as migrations: append only; each runs once, in order, inside a
transaction, and the store counts those that ran (SQLite: ``PRAGMA user_version``; Postgres:
table ``corral_schema``). A store whose version is higher than :data:`MIGRATIONS` knows was
written by a newer Corral and is refused, never changed.

The migrations are written in SQLite's SQL; on Postgres, :func:`_script` names the same types in
Postgres's words (:func:`pg_types`), so both stores have one schema history."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable
from pathlib import Path

from corral.errors import StoreError
from corral.store._dialect import Conn, postgres

MIGRATIONS: list[Callable[[Conn], None]] = []


def migration(fn: Callable[[Conn], None]) -> Callable[[Conn], None]:
    """Append ``fn`` to the schema's migrations (decorator)."""
    MIGRATIONS.append(fn)
    return fn


def _script(db: Conn, sql: str) -> None:
    # executescript() would COMMIT the migration's transaction; run statement by statement
    for stmt in sql.split(";"):
        if stmt.strip():
            db.execute(pg_types(stmt) if postgres(db) else stmt)


def pg_types(stmt: str) -> str:
    """An SQLite schema statement in Postgres's words: an ``INTEGER PRIMARY KEY`` counts by
    itself (BIGSERIAL), REAL is a double, BLOB is BYTEA, an amount in nanodollars is BIGINT, and
    a table without an integer key gets SQLite's implicit ``rowid`` as a column of its own."""
    if re.match(r"\s*CREATE TABLE", stmt) and "INTEGER PRIMARY KEY" not in stmt:
        stmt = re.sub(r"(CREATE TABLE \w+ \()", r"\1 rowid BIGSERIAL,", stmt, count=1)
    stmt = stmt.replace("INTEGER PRIMARY KEY", "BIGSERIAL PRIMARY KEY")
    stmt = re.sub(r"\bREAL\b", "DOUBLE PRECISION", stmt)
    stmt = re.sub(r"\bBLOB\b", "BYTEA", stmt)
    return re.sub(r"\bcost_nanos INTEGER\b", "cost_nanos BIGINT", stmt)


@migration
def m001_initial(db: Conn) -> None:
    """Runs, records, the response cache, the ledger and the attempts (the trace)."""
    _script(
        db,
        """
        CREATE TABLE runs (
            id TEXT PRIMARY KEY,
            job_name TEXT NOT NULL,
            spec_hash TEXT NOT NULL,
            fingerprint TEXT NOT NULL,
            spec TEXT NOT NULL,
            status TEXT NOT NULL,
            stop_reason TEXT,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            ingested_rows INTEGER NOT NULL DEFAULT 0,
            ingest_done INTEGER NOT NULL DEFAULT 0,
            tags TEXT NOT NULL DEFAULT '{}',
            outputs TEXT NOT NULL DEFAULT '[]',
            elapsed_s REAL NOT NULL DEFAULT 0
        );
        CREATE TABLE records (
            run_id TEXT NOT NULL,
            key TEXT NOT NULL,
            ordinal INTEGER NOT NULL,
            line INTEGER,
            content_hash TEXT,
            data TEXT,
            state TEXT NOT NULL,
            reason TEXT,
            outputs TEXT,
            attempts INTEGER NOT NULL DEFAULT 0,
            lease_owner TEXT,
            lease_expires REAL,
            updated_at REAL NOT NULL,
            UNIQUE (run_id, key)
        );
        CREATE INDEX records_state ON records (run_id, state, ordinal);
        CREATE TABLE responses (
            id INTEGER PRIMARY KEY,
            request_hash TEXT NOT NULL UNIQUE,
            model TEXT NOT NULL,
            request TEXT NOT NULL,
            response TEXT NOT NULL,
            created_at REAL NOT NULL
        );
        CREATE TABLE ledger (
            id INTEGER PRIMARY KEY,
            run_id TEXT NOT NULL,
            key TEXT NOT NULL,
            step TEXT NOT NULL,
            attempt INTEGER NOT NULL,
            request_hash TEXT NOT NULL,
            model TEXT NOT NULL,
            replayed INTEGER NOT NULL,
            input_tokens INTEGER NOT NULL,
            output_tokens INTEGER NOT NULL,
            cached_input_tokens INTEGER NOT NULL,
            reasoning_tokens INTEGER NOT NULL,
            cost_nanos INTEGER,
            latency_s REAL NOT NULL,
            created_at REAL NOT NULL
        );
        CREATE INDEX ledger_run ON ledger (run_id, key);
        CREATE TABLE attempts (
            id INTEGER PRIMARY KEY,
            run_id TEXT NOT NULL,
            key TEXT NOT NULL,
            step TEXT NOT NULL,
            attempt INTEGER NOT NULL,
            request_hash TEXT,
            outcome TEXT NOT NULL,
            detail TEXT,
            created_at REAL NOT NULL
        );
        CREATE INDEX attempts_record ON attempts (run_id, key);
        """
    )


@migration
def m002_batches(db: Conn) -> None:
    """Provider batches and their items, so a submitted batch is polled again after a crash."""
    _script(
        db,
        """
        CREATE TABLE batches (
            id TEXT PRIMARY KEY,
            run_id TEXT NOT NULL,
            model TEXT NOT NULL,
            state TEXT NOT NULL,
            detail TEXT,
            n_items INTEGER NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        );
        CREATE INDEX batches_run ON batches (run_id, state);
        CREATE TABLE batch_items (
            batch_id TEXT NOT NULL,
            custom_id TEXT NOT NULL,
            run_id TEXT NOT NULL,
            key TEXT NOT NULL,
            step TEXT NOT NULL,
            attempt INTEGER NOT NULL,
            request TEXT NOT NULL,
            outcome TEXT,
            UNIQUE (batch_id, custom_id)
        );
        CREATE INDEX batch_items_hash ON batch_items (run_id, custom_id);
        """,
    )


@migration
def m003_traces(db: Conn) -> None:
    """Strategy traces: attempts carry structured data (answers, votes, critiques, escalations),
    and the ledger attributes each call to the strategy that made it."""
    _script(
        db,
        """
        ALTER TABLE attempts ADD COLUMN data TEXT;
        ALTER TABLE ledger ADD COLUMN strategy TEXT
        """,
    )


@migration
def m004_learned(db: Conn) -> None:
    """Learned models (System 1, the expert router) by name, reused by later runs of a job."""
    _script(
        db,
        """
        CREATE TABLE learned (
            name TEXT PRIMARY KEY,
            blob BLOB NOT NULL,
            meta TEXT NOT NULL,
            updated_at REAL NOT NULL
        )
        """,
    )


@migration
def m005_review_decisions(db: Conn) -> None:
    """Review decisions: who accepted, edited or rejected a held record, when, what was written,
    and the record's state and reason before (``corral review``)."""
    _script(
        db,
        """
        CREATE TABLE review_decisions (
            id INTEGER PRIMARY KEY,
            run_id TEXT NOT NULL,
            key TEXT NOT NULL,
            action TEXT NOT NULL,
            who TEXT NOT NULL,
            at REAL NOT NULL,
            state TEXT NOT NULL,
            outputs TEXT,
            reason TEXT,
            note TEXT,
            prev_state TEXT NOT NULL,
            prev_reason TEXT
        );
        CREATE INDEX review_decisions_record ON review_decisions (run_id, key)
        """,
    )


@migration
def m006_ledger_kind(db: Conn) -> None:
    """The ledger says what each call was for (first try, retry, vote sample, critique...: see
    corral._kinds), so ``corral cost`` can show what the extra thinking cost. Older rows keep
    NULL and are read back by a best guess from the trace."""
    _script(db, "ALTER TABLE ledger ADD COLUMN kind TEXT")


@migration
def m007_call_claims(db: Conn) -> None:
    """Workers asking the same request at once pay it once: the first claims the call, the
    others wait for its recorded response (see Store.claim_call)."""
    _script(db, """
        CREATE TABLE call_claims (
            request_hash TEXT PRIMARY KEY,
            owner TEXT NOT NULL,
            expires_at REAL NOT NULL
        );
        CREATE INDEX call_claims_owner ON call_claims (owner);
    """)


@migration
def m008_budget_holds(db: Conn) -> None:
    """Workers sharing a run's budget see what each other's calls in flight reserve of it
    (see Store.share_budget)."""
    _script(db, """
        CREATE TABLE budget_holds (
            run_id TEXT NOT NULL,
            owner TEXT NOT NULL,
            calls INTEGER NOT NULL,
            tokens INTEGER NOT NULL,
            cost_nanos INTEGER NOT NULL,
            updated_at REAL NOT NULL,
            PRIMARY KEY (run_id, owner)
        )
    """)


@migration
def m009_ledger_cache_writes(db: Conn) -> None:
    """The ledger keeps the input tokens a call wrote to the provider's prompt cache (priced at
    the cache-write price; the reads were kept already)."""
    _script(db, "ALTER TABLE ledger ADD COLUMN cache_write_tokens INTEGER NOT NULL DEFAULT 0")


@migration
def m010_ledger_shared_calls(db: Conn) -> None:
    """A call that answers several rows (``pack:``) has one ledger row per row, each with its
    share of the tokens and cost; ``calls`` says how many provider calls a row stands for (1 on
    the first row of such a call, 0 on the others), so counts of calls stay exact."""
    _script(db, "ALTER TABLE ledger ADD COLUMN calls INTEGER NOT NULL DEFAULT 1")


def migrate(db: sqlite3.Connection, path: Path) -> None:
    """Bring the store at ``path`` (open as ``db``) to the latest schema; StoreError when it was
    written by a newer Corral."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version == len(MIGRATIONS):
        return
    _refuse_newer(version, path)
    # Several processes may open a fresh (or older) store at once: the first to take the
    # write lock migrates; the others wait for it (busy timeout), then read the new version.
    db.execute("BEGIN IMMEDIATE")
    try:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        _refuse_newer(version, path)
        for i, fn in enumerate(MIGRATIONS[version:], start=version + 1):
            fn(db)
            db.execute(f"PRAGMA user_version={i}")
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


#: the advisory lock Postgres stores migrate under (any fixed number; "corral" in ASCII)
PG_LOCK = 0x636F7272616C


def migrate_pg(db: Conn, where: str, create: bool) -> bool:
    """Bring the Postgres store ``db`` (the Postgres store's connection, in autocommit) to the
    latest schema, in one transaction under an advisory lock, so that workers starting at once
    migrate it once; StoreError when a newer Corral wrote it. ``create=False``: change nothing,
    and return False when the database holds no Corral store yet."""
    exists = db.execute("SELECT to_regclass('corral_schema') IS NOT NULL").fetchone()[0]
    if exists:
        (version,) = db.execute("SELECT MAX(version) FROM corral_schema").fetchone()
        if version == len(MIGRATIONS):
            return True
        _refuse_newer(version or 0, where)
    if not create and not exists:
        return False
    with db.transaction():
        db.execute("SELECT pg_advisory_xact_lock(?)", (PG_LOCK,))
        db.execute("CREATE TABLE IF NOT EXISTS corral_schema (version INTEGER NOT NULL)")
        (version,) = db.execute("SELECT COALESCE(MAX(version), 0) FROM corral_schema").fetchone()
        _refuse_newer(version, where)
        for fn in MIGRATIONS[version:]:
            fn(db)
        db.execute("DELETE FROM corral_schema")
        db.execute("INSERT INTO corral_schema (version) VALUES (?)", (len(MIGRATIONS),))
    return True


def _refuse_newer(version: int, path: Path | str) -> None:
    if version > len(MIGRATIONS):
        raise StoreError(
            f"the store at {path} was written by a newer Corral (schema {version}); "
            "upgrade Corral or use another --store"
        )
