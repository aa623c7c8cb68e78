"""The stores' review decisions (``corral review``): applying them to held records and
reading them back. The SQLite and Postgres stores call these inside
their own transaction or with their connection (their methods translate the database's errors)."""

from __future__ import annotations

import dataclasses
import json
import time

from corral.store._dialect import Conn
from corral.store.base import AttemptRecord, ReviewDecision

_COLS = "id, run_id, key, action, who, at, state, outputs, reason, note, prev_state, prev_reason"


def apply(
    db: Conn, decisions: list[ReviewDecision], trace: list[AttemptRecord]
) -> list[ReviewDecision]:
    """See :meth:`corral.store.base.Store.apply_decisions`; ``db`` is inside a transaction."""
    now = time.time()
    applied: list[ReviewDecision] = []
    for d in decisions:
        row = db.execute(
            "SELECT state, reason FROM records WHERE run_id=? AND key=?", (d.run_id, d.key)
        ).fetchone()
        if row is None or row[0] != "review":
            continue
        outputs = None if d.outputs is None else json.dumps(d.outputs, ensure_ascii=False)
        if not db.execute(
            "UPDATE records SET state=?, outputs=?, reason=?, updated_at=? "
            "WHERE run_id=? AND key=? AND state='review'",
            (d.state, outputs, d.reason, now, d.run_id, d.key),
        ).rowcount:
            continue  # another process decided it a moment ago (Postgres reads before it waits)
        (new_id,) = db.execute(
            f"INSERT INTO review_decisions ({_COLS.removeprefix('id, ')}) VALUES (?,?,?,?,?,?,?,?,?,?,?) "
            "RETURNING id",
            (d.run_id, d.key, d.action, d.who, d.at, d.state, outputs, d.reason, d.note, row[0], row[1]),
        ).fetchone()
        applied.append(dataclasses.replace(d, prev_state=row[0], prev_reason=row[1], id=new_id))
    done = {(d.run_id, d.key) for d in applied}
    events = [a for a in trace if (a.run_id, a.key) in done]
    if events:
        db.executemany(
            "INSERT INTO attempts (run_id, key, step, attempt, request_hash, outcome, detail, "
            "created_at, data) VALUES (?,?,?,?,?,?,?,?,?)",
            [(a.run_id, a.key, a.step, a.attempt, a.request_hash, a.outcome, a.detail, now, a.data)
             for a in events],
        )
    return applied


def decisions(db: Conn, run_id: str, key: str | None) -> list[ReviewDecision]:
    """See :meth:`corral.store.base.Store.decisions`."""
    if key is None:
        rows = db.execute(f"SELECT {_COLS} FROM review_decisions WHERE run_id=? ORDER BY id", (run_id,))
    else:
        rows = db.execute(
            f"SELECT {_COLS} FROM review_decisions WHERE run_id=? AND key=? ORDER BY id", (run_id, key)
        )
    return [
        ReviewDecision(
            run_id=r, key=k, action=action, who=who, at=at, state=state,
            outputs=json.loads(out) if out else None, reason=reason, note=note,
            prev_state=prev_state, prev_reason=prev_reason, id=i,
        )
        for i, r, k, action, who, at, state, out, reason, note, prev_state, prev_reason in rows
    ]
