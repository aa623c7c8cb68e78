"""The stores' reads for the run pages (``corral report``, ``corral serve``): accepted
answers' confidences from the trace, and the run's activity over time from the ledger and the
trace. The SQLite and Postgres stores call them with their connection (their
methods translate the database's errors)."""

from __future__ import annotations

import json
import math

from corral.store._dialect import PAID, REPLAYED, Conn, floor_int, json_number, json_true
from corral.store.base import ActivityBin, AnswerConfidence, split_label

#: the narrowest slice of time :func:`activity` counts in (a short run has fewer slices)
MIN_WIDTH_S = 1.0


def _accepted(db: Conn) -> str:
    """SQL: an accepted answer in the trace: an ``accepted`` event, or a call's row marked so."""
    return f"(outcome='accepted' OR (data IS NOT NULL AND {json_true(db, 'data', 'accepted')}))"


def answer_confidences(db: Conn, run_id: str) -> list[AnswerConfidence]:
    """See :meth:`corral.store.base.Store.answer_confidences`."""
    accepted_sql = _accepted(db)
    rows = db.execute(
        f"SELECT key, step, {accepted_sql}, data FROM attempts WHERE run_id=? AND data IS NOT NULL "
        f"AND ({accepted_sql} OR {json_number(db, 'data', 'confidence')}) ORDER BY id",
        (run_id,),
    )
    order: dict[tuple[str, str], None] = {}  # (key, step label), in the order first answered
    accepted: dict[tuple[str, str], float | None] = {}  # (key, step label) -> confidence
    latest: dict[tuple[str, str], float] = {}  # the latest answer's, where none is accepted
    for key, label, is_accepted, data in rows:
        try:
            c = (json.loads(data) or {}).get("confidence")
        except (ValueError, AttributeError):
            c = None
        c = float(c) if isinstance(c, (int, float)) else None
        order[(key, label)] = None
        if is_accepted:
            accepted[(key, label)] = c
        elif c is not None:
            latest[(key, label)] = c
    out: dict[tuple[str, str], AnswerConfidence] = {}
    for pair in order:
        if pair not in accepted and pair not in latest:
            continue
        ok = pair in accepted
        c = accepted[pair] if ok else latest[pair]
        name = split_label(pair[1])[0]
        a = out.get((pair[0], name))
        if a is None:
            out[(pair[0], name)] = AnswerConfidence(pair[0], name, c, ok)
            continue
        a.accepted = a.accepted and ok
        if a.confidence is not None:  # parts of a split input: the lowest, None if any is
            a.confidence = None if c is None else min(a.confidence, c)
    return list(out.values())


def activity(db: Conn, run_id: str, bins: int) -> list[ActivityBin]:
    """See :meth:`corral.store.base.Store.activity`."""
    bins = max(1, bins)
    accepted, slice_of = _accepted(db), floor_int(db, "(created_at - ?) / ?")
    lo, hi = db.execute(
        "SELECT MIN(t), MAX(t) FROM (SELECT MIN(created_at) t FROM ledger WHERE run_id=? "
        "UNION ALL SELECT MAX(created_at) FROM ledger WHERE run_id=? "
        f"UNION ALL SELECT MIN(created_at) FROM attempts WHERE run_id=? AND {accepted} "
        f"UNION ALL SELECT MAX(created_at) FROM attempts WHERE run_id=? AND {accepted}) AS ends",
        (run_id,) * 4,
    ).fetchone()
    if lo is None:
        return []
    width = max((hi - lo) / bins, MIN_WIDTH_S)
    bins = max(1, min(bins, math.ceil((hi - lo) / width)))
    out = [ActivityBin(lo + i * width, width, 0, 0, 0) for i in range(bins)]

    def slot(t: float) -> ActivityBin:
        return out[min(bins - 1, int((t - lo) / width))]

    for i, paid, replayed in db.execute(
        f"SELECT {slice_of} b, {PAID}, {REPLAYED} "
        "FROM ledger WHERE run_id=? GROUP BY b", (lo, width, run_id),
    ):
        b = slot(lo + i * width)
        b.calls += paid or 0
        b.replayed += replayed or 0
    for i, n in db.execute(
        f"SELECT {slice_of} b, COUNT(*) FROM attempts "
        f"WHERE run_id=? AND {accepted} GROUP BY b", (lo, width, run_id),
    ):
        slot(lo + i * width).answers += n
    return out
