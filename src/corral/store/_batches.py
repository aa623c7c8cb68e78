"""The provider batches a run submitted (tables ``batches`` and ``batch_items``): the SQL of the
SQLite and Postgres stores for them, so that their classes keep one line per method. Each function
takes the connection; a writer is called inside the store's transaction."""

from __future__ import annotations

import json
import time

from corral.store._dialect import Conn
from corral.store.base import BatchItem, BatchRow


def add(db: Conn, run_id: str, batch_id: str, model: str,
        items: list[tuple[str, str, str, int, str]]) -> None:
    """A submitted batch and its items ``(custom_id, key, step, attempt, request)``."""
    now = time.time()
    db.execute(
        "INSERT INTO batches (id, run_id, model, state, detail, n_items, created_at, updated_at) "
        "VALUES (?,?,?,?,?,?,?,?)",
        (batch_id, run_id, model, "submitted", None, len(items), now, now),
    )
    db.executemany(
        "INSERT INTO batch_items (batch_id, custom_id, run_id, key, step, attempt, request) "
        "VALUES (?,?,?,?,?,?,?)",
        [(batch_id, c, run_id, k, st, a, r) for c, k, st, a, r in items],
    )


def open_batches(db: Conn, run_id: str) -> list[BatchRow]:
    """The run's batches not fetched yet, oldest first."""
    rows = db.execute(
        "SELECT id, model, state, detail, n_items, created_at FROM batches "
        "WHERE run_id=? AND state != 'fetched' ORDER BY created_at",
        (run_id,),
    ).fetchall()
    return [BatchRow(*row) for row in rows]


def set_state(db: Conn, batch_id: str, state: str, detail: str | None) -> None:
    db.execute("UPDATE batches SET state=?, detail=?, updated_at=? WHERE id=?",
               (state, detail, time.time(), batch_id))


def items(db: Conn, batch_id: str) -> list[BatchItem]:
    rows = db.execute(
        "SELECT custom_id, key, step, attempt, request FROM batch_items WHERE batch_id=?", (batch_id,)
    ).fetchall()
    return [BatchItem(*row) for row in rows]


def failures(db: Conn, run_id: str) -> dict[str, tuple[int, str]]:
    """Per custom id: how many times its batch item failed, and the last outcome."""
    out: dict[str, tuple[int, str]] = {}
    rows = db.execute(
        "SELECT custom_id, outcome FROM batch_items WHERE run_id=? AND outcome IS NOT NULL "
        "AND outcome != 'ok' ORDER BY rowid",
        (run_id,),
    )
    for c, outcome in rows:
        out[c] = (out.get(c, (0, ""))[0] + 1, outcome)
    return out


def answered(db: Conn, run_id: str) -> set[str]:
    """The request hashes the run's batches answered: each item's, and the rows' of a packed
    item (``pack:``, listed in its stored body's ``pack_rows``)."""
    out = {c for (c,) in db.execute("SELECT custom_id FROM batch_items WHERE run_id=? AND outcome='ok'", (run_id,))}
    for (body,) in db.execute("SELECT request FROM batch_items WHERE run_id=? AND outcome='ok' "
                              "AND request LIKE '%\"pack_rows\"%'", (run_id,)):
        out.update(row[3] for row in json.loads(body).get("pack_rows", ()))
    return out


def finish(db: Conn, batch_id: str, outcomes: dict[str, str], detail: str | None) -> None:
    """The items' outcomes and the batch marked fetched (in the caller's transaction, with the
    batch's calls)."""
    db.executemany("UPDATE batch_items SET outcome=? WHERE batch_id=? AND custom_id=?",
                   [(o, batch_id, c) for c, o in outcomes.items()])
    db.execute("UPDATE batches SET state='fetched', detail=?, updated_at=? WHERE id=?",
               (detail, time.time(), batch_id))
