"""The stores' read for ``corral cost``: the ledger of some runs grouped by run, step,
model, strategy, kind and replayed, and the rows each run wrote.
The SQLite and Postgres stores call it with their connection (their method
translates the database's errors)."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from corral._kinds import derive_kind
from corral.store._dialect import Conn
from corral.store.base import LedgerGroup, LedgerRollup, split_label

_NANO = Decimal(1_000_000_000)


def ledger_rollup(db: Conn, run_ids: list[str] | None, since: float | None) -> LedgerRollup:
    """See :meth:`corral.store.base.Store.ledger_rollup`."""
    where, args = _where(run_ids, since, "l.")
    rows = db.execute(
        "SELECT l.id, l.run_id, l.key, l.step, l.attempt, l.request_hash, l.model, l.strategy, l.kind, "
        "l.replayed, l.input_tokens, l.output_tokens, l.cost_nanos, "
        "CASE WHEN l.replayed=1 THEN r.response END, l.calls "
        "FROM ledger l LEFT JOIN responses r ON l.replayed=1 AND r.request_hash = l.request_hash "
        f"WHERE {where} ORDER BY l.id",
        args,
    )
    groups: dict[tuple[Any, ...], LedgerGroup] = {}
    guesses: dict[str, _Trace] = {}  # run id -> what its trace says, read for rows without a kind
    for (id_, run, key, label, attempt, h, model, strategy, kind, replayed, tin, tout, nanos,
         response, calls) in rows:
        step = split_label(label)[0]  # `details[2/3]`: a part of step `details`
        if kind is None:
            trace = guesses.get(run)
            if trace is None:
                trace = guesses[run] = _Trace(db, run)
            kind = derive_kind(trace.roles.get((key, label, attempt, h)), strategy, attempt,
                               (key, step) in trace.audited)
        if replayed:  # what it cost when first paid for, from its recorded response
            price = (json.loads(response).get("usage") or {}).get("cost") if response else None
            cost = None if price is None else Decimal(str(price))
        else:
            cost = None if nanos is None else Decimal(nanos) / _NANO
        g = groups.get((run, step, model, strategy, kind, bool(replayed)))
        if g is None:
            g = groups[(run, step, model, strategy, kind, bool(replayed))] = LedgerGroup(
                run, step, model, strategy, kind, bool(replayed), 0, 0, 0, Decimal(0), 0, id_)
        g.calls += calls  # a packed call's rows after its first count 0 (pack:)
        g.input_tokens += tin
        g.output_tokens += tout
        if cost is None:
            g.unpriced += calls
            g.cost = None
        elif g.cost is not None:
            g.cost += cost
    where, args = _where(run_ids, since, "", "updated_at")
    written = {run: n for run, n in db.execute(
        f"SELECT run_id, COUNT(*) FROM records WHERE state='done' AND {where} GROUP BY run_id", args)}
    return LedgerRollup(list(groups.values()), written)


def _where(
    run_ids: list[str] | None, since: float | None, prefix: str, time_col: str = "created_at"
) -> tuple[str, list[Any]]:
    parts: list[str] = ["1=1"]
    args: list[Any] = []
    if run_ids is not None:
        parts.append(f"{prefix}run_id IN ({','.join('?' * len(run_ids))})" if run_ids else "0=1")
        args += run_ids
    if since is not None:
        parts.append(f"{prefix}{time_col} >= ?")
        args.append(since)
    return " AND ".join(parts), args


class _Trace:
    """What a run's trace says about calls whose ledger rows have no kind: each call's role
    (by record, step label, sample index and request hash) and the (record, step) pairs whose
    route was a System 1 audit."""

    def __init__(self, db: Conn, run_id: str) -> None:
        self.roles: dict[tuple[str, str, int, str], str] = {}
        self.audited: set[tuple[str, str]] = set()
        rows = db.execute(
            "SELECT key, step, attempt, request_hash, outcome, data FROM attempts "
            "WHERE run_id=? AND data IS NOT NULL AND (request_hash IS NOT NULL OR outcome='route') "
            "ORDER BY id",
            (run_id,),
        )
        for key, label, attempt, h, outcome, data in rows:
            try:
                d = json.loads(data)
            except ValueError:
                continue
            if not isinstance(d, dict):
                continue
            if outcome == "route":
                name = split_label(label)[0]
                if d.get("route") == "audit":
                    self.audited.add((key, name))
                else:  # the latest route counts (a record worked again routes again)
                    self.audited.discard((key, name))
            elif isinstance(d.get("role"), str):
                self.roles.setdefault((key, label, attempt, h), d["role"])
