"""The stores' reads for ``corral routes``: each (record, step)'s route from the trace,
and the ledger summed per (record, step). The SQLite and Postgres stores call them with their
connection (their methods translate the database's errors)."""

from __future__ import annotations

import json
from decimal import Decimal

from corral.store._dialect import PAID, REPLAYED, UNPRICED, Conn
from corral.store.base import RecordSpend, RouteRow, split_label

_NANO = Decimal(1_000_000_000)


def routes(db: Conn, run_id: str) -> list[RouteRow]:
    """See :meth:`corral.store.base.Store.routes`."""
    rows = db.execute(
        "SELECT key, step, data FROM attempts WHERE run_id=? AND outcome='route' ORDER BY id",
        (run_id,),
    )
    out: dict[tuple[str, str], RouteRow] = {}  # in the order first routed, the latest event kept
    for key, label, data in rows:
        try:
            d = json.loads(data) if data else {}
        except ValueError:
            d = {}
        d = d if isinstance(d, dict) else {}
        name = split_label(label)[0]
        out[(key, name)] = RouteRow(key, name, str(d.get("route") or "unknown"), d)
    return list(out.values())


def record_spend(db: Conn, run_id: str, steps: list[str] | None) -> list[RecordSpend]:
    """See :meth:`corral.store.base.Store.record_spend`."""
    rows = db.execute(
        f"SELECT key, step, {PAID}, {REPLAYED}, COALESCE(SUM(cost_nanos),0), "
        f"{UNPRICED} FROM ledger WHERE run_id=? GROUP BY key, step "
        "ORDER BY MIN(id)",
        (run_id,),
    )
    wanted = None if steps is None else set(steps)
    out: dict[tuple[str, str], RecordSpend] = {}
    for key, label, paid, replayed, nanos, unknown in rows:
        name = split_label(label)[0]  # `details[2/3]`: a chunk of step `details`
        if wanted is not None and name not in wanted:
            continue
        r = out.get((key, name))
        if r is None:
            r = out[(key, name)] = RecordSpend(key, name, 0, 0, Decimal(0))
        r.calls += paid or 0
        r.replayed += replayed or 0
        r.cost = None if unknown or r.cost is None else r.cost + Decimal(nanos) / _NANO
    return list(out.values())
