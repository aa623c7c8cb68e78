"""``corral cost``: the ledger rolled up across runs, by step, tag, model, strategy and kind.

:func:`cost_report` reads the ledger of some runs (every run in the store by default) through
:meth:`Store.ledger_rollup`, and sums it by the dimensions asked for: the step, the run's tags
(one line per ``key=value``: a run with two tags counts in two lines), the model, the strategy
path and the call's kind (:data:`corral._kinds.CALL_KINDS`: first try, retry, vote sample,
critique, judge, escalation, System 1, calibration, replay). Every report also has the total,
the cost per written row, and the kinds on their own lines, with what everything beyond the
first try cost ("what the extra thinking cost").

Money is never guessed: a line with a paid call whose price is unknown has cost ``None`` (shown
``?``), never zero; replays cost nothing new and are counted apart, with what they cost when
first paid for.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from corral._kinds import CALL_KINDS, DELIBERATION, FIRST_TRY, REPLAY, RETRY
from corral.errors import RunNotFoundError, UserError
from corral.store.base import LedgerGroup, RunInfo, Store

__all__ = [
    "DIMENSIONS", "NO_TAGS", "CostError", "CostLine", "CostReport", "RunCost", "cost_report",
    "parse_by", "parse_since", "resolve_runs",
]

#: what ``--by`` may group by
DIMENSIONS = ("step", "tag", "model", "strategy", "kind")
#: the tag line of runs that have no tags
NO_TAGS = "(no tags)"


class CostError(UserError):
    """Bad input to ``corral cost`` (a ``--by`` field, a ``--since`` date)."""


@dataclass
class CostLine:
    """Calls summed over some ledger groups: paid calls with their tokens and cost (None when
    some price is unknown, ``unpriced`` of them), and replays with what they cost when first
    paid for (``replay_value``, None when unknown). ``written`` is the rows the runs of the line
    wrote, and ``per_row`` the cost over them (None when unknown or when no row was written)."""

    group: dict[str, str] = field(default_factory=dict)
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost: Decimal | None = Decimal(0)
    unpriced: int = 0
    replayed: int = 0
    replay_input_tokens: int = 0
    replay_output_tokens: int = 0
    replay_value: Decimal | None = Decimal(0)
    runs: set[str] = field(default_factory=set)
    written: int = 0

    @property
    def per_row(self) -> Decimal | None:
        """The cost per written row of the line's runs (None: unknown, or no row written)."""
        if self.cost is None or not self.written:
            return None
        return self.cost / self.written

    def add(self, g: LedgerGroup) -> None:
        self.runs.add(g.run_id)
        if g.replayed:
            self.replayed += g.calls
            self.replay_input_tokens += g.input_tokens
            self.replay_output_tokens += g.output_tokens
            self.replay_value = _plus(self.replay_value, g.cost)
            return
        self.calls += g.calls
        self.input_tokens += g.input_tokens
        self.output_tokens += g.output_tokens
        self.unpriced += g.unpriced
        self.cost = _plus(self.cost, g.cost)

    def to_json(self) -> dict[str, Any]:
        """The line as ``corral cost --json`` prints it (amounts as exact decimal strings, null
        when unknown)."""
        return {
            **self.group, "calls": self.calls, "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens, "cost": _money(self.cost), "unpriced": self.unpriced,
            "replayed": self.replayed, "replay_input_tokens": self.replay_input_tokens,
            "replay_output_tokens": self.replay_output_tokens, "replay_value": _money(self.replay_value),
            "runs": len(self.runs), "written": self.written, "per_row": _money(self.per_row),
        }


@dataclass
class RunCost:
    """One run of the report: what it is, and its line."""

    run: str
    job: str
    status: str
    tags: dict[str, str]
    created_at: float
    line: CostLine

    def to_json(self) -> dict[str, Any]:
        return {"run": self.run, "job": self.job, "status": self.status, "tags": self.tags,
                "created_at": self.created_at, **self.line.to_json()}


@dataclass
class CostReport:
    """What some runs' calls cost: by the dimensions asked for, by kind, and in all."""

    by: tuple[str, ...]
    since: float | None
    runs: list[RunCost]
    lines: list[CostLine]  # grouped by ``by``, in the order the groups first called (kinds in order)
    kinds: list[CostLine]  # by kind, every kind that occurs, in CALL_KINDS order
    total: CostLine

    def kind(self, name: str) -> CostLine:
        """The line of one kind (an empty one when no call was of it)."""
        return next((k for k in self.kinds if k.group.get("kind") == name), self._empty({"kind": name}))

    @property
    def first_try(self) -> CostLine:
        return self.kind(FIRST_TRY)

    @property
    def retries(self) -> CostLine:
        return self.kind(RETRY)

    @property
    def deliberation(self) -> CostLine:
        """Vote samples, critiques, judges and escalations together."""
        return self._sum("deliberation", [k for k in self.kinds if k.group["kind"] in DELIBERATION])

    @property
    def extra(self) -> CostLine:
        """Every paid call beyond the first try: what the extra thinking cost."""
        return self._sum("beyond the first try",
                         [k for k in self.kinds if k.group["kind"] not in (FIRST_TRY, REPLAY)])

    def _sum(self, name: str, lines: Iterable[CostLine]) -> CostLine:
        out = self._empty({"kind": name})
        for k in lines:
            out.calls += k.calls
            out.input_tokens += k.input_tokens
            out.output_tokens += k.output_tokens
            out.unpriced += k.unpriced
            out.cost = _plus(out.cost, k.cost)
            out.runs |= k.runs
        out.written = self.total.written
        return out

    def _empty(self, group: dict[str, str]) -> CostLine:
        return CostLine(group, written=self.total.written)

    def to_json(self) -> dict[str, Any]:
        """The report as ``corral cost --json`` prints it (docs/cli.md)."""
        return {
            "by": list(self.by), "since": self.since, "total": self.total.to_json(),
            "lines": [x.to_json() for x in self.lines], "kinds": [x.to_json() for x in self.kinds],
            "first_try": self.first_try.to_json(), "retries": self.retries.to_json(),
            "deliberation": self.deliberation.to_json(), "extra": self.extra.to_json(),
            "runs": [r.to_json() for r in self.runs],
        }


def cost_report(
    store: Store, runs: Sequence[RunInfo] | None = None, *, by: Sequence[str] = ("step",),
    since: float | dt.datetime | None = None,
) -> CostReport:
    """What the calls of ``runs`` (every run in the store when None) cost, grouped ``by`` some of
    :data:`DIMENSIONS` (none: the total and the kinds only), counting only calls made (and rows
    written) at or after ``since`` (a Unix time or a datetime) when given. CostError for a
    dimension that is not one."""
    dims = parse_by(by)
    when = since.timestamp() if isinstance(since, dt.datetime) else since
    infos = list(runs) if runs is not None else store.list_runs(1 << 31)
    by_id = {r.id: r for r in infos}
    rolled = store.ledger_rollup(None if runs is None else list(by_id), when)
    total = CostLine()
    lines: dict[tuple[str, ...], CostLine] = {}
    kinds: dict[str, CostLine] = {}
    per_run: dict[str, CostLine] = {r.id: CostLine() for r in infos}
    for g in rolled.groups:
        info = by_id.get(g.run_id)
        if info is None:  # a run deleted while this was read: its calls are gone too
            continue
        total.add(g)
        per_run[g.run_id].add(g)
        kind = REPLAY if g.replayed else g.kind
        kinds.setdefault(kind, CostLine({"kind": kind})).add(g)
        if dims:
            for values in _values(dims, g, kind, info):
                lines.setdefault(values, CostLine(dict(zip(dims, values)))).add(g)
    # per row: a line of the groups asked for over the rows its runs wrote; a kind over them all
    total.written = sum(rolled.written.get(r.id, 0) for r in infos)
    for line in lines.values():
        line.written = sum(rolled.written.get(r, 0) for r in line.runs)
    for line in kinds.values():
        line.written = total.written
    for rid, line in per_run.items():
        line.written = rolled.written.get(rid, 0)
    ordered = sorted(lines.values(), key=lambda x: _kind_order(x.group)) if "kind" in dims else list(lines.values())
    return CostReport(
        dims, when,
        [RunCost(r.id, r.job_name, r.status, dict(r.tags), r.created_at, per_run[r.id]) for r in infos],
        ordered, [kinds[k] for k in CALL_KINDS if k in kinds] + [v for k, v in kinds.items() if k not in CALL_KINDS],
        total,
    )


def _values(dims: tuple[str, ...], g: LedgerGroup, kind: str, info: RunInfo) -> list[tuple[str, ...]]:
    """The line keys a group counts in: one, or one per tag of its run when grouped by tag."""
    out: list[tuple[str, ...]] = [()]
    for d in dims:
        if d == "tag":
            tags = [f"{k}={v}" for k, v in sorted(info.tags.items())] or [NO_TAGS]
            out = [o + (t,) for o in out for t in tags]
            continue
        v = {"step": g.step, "model": g.model, "strategy": g.strategy or "", "kind": kind}[d]
        out = [o + (v,) for o in out]
    return out


def _kind_order(group: dict[str, str]) -> int:
    k = group.get("kind", "")
    return CALL_KINDS.index(k) if k in CALL_KINDS else len(CALL_KINDS)


def _plus(a: Decimal | None, b: Decimal | None) -> Decimal | None:
    return None if a is None or b is None else a + b


def _money(v: Decimal | None) -> str | None:
    return None if v is None else str(v)


# --- the command line's input ----------------------------------------------------------------


def parse_by(by: str | Sequence[str] | None) -> tuple[str, ...]:
    """``step,kind`` (or a list of names) -> the dimensions, in order, each once; CostError
    naming the valid ones for any other."""
    if by is None:
        return ()
    names = [p.strip() for p in (by.split(",") if isinstance(by, str) else by)]
    out: list[str] = []
    for name in (n for n in names if n):
        if name not in DIMENSIONS:
            raise CostError(f"--by: `{name}` is not a field to group by; use a comma-separated list of: "
                            f"{', '.join(DIMENSIONS)}")
        if name not in out:
            out.append(name)
    return tuple(out)


def parse_since(text: str) -> float:
    """``2024-06-01``, ``2024-06-01T18:30`` or ``2024-06-01 18:30:00+02:00`` -> a Unix time
    (a date or time without a zone is local time); CostError for anything else."""
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise CostError(f"--since: `{text}` is not a date; write it like 2024-06-01 or 2024-06-01T18:30") from None
    return when.timestamp() if when.tzinfo else when.astimezone().timestamp()


def resolve_runs(store: Store, names: Sequence[str]) -> list[RunInfo] | None:
    """The runs ``corral cost RUN ...`` names (None: no name, every run). A name is a run id, a
    prefix of one that matches one run, or a job name: every run of that job (a cost report rolls
    up across runs). RunNotFoundError for a name that matches none, or several runs by prefix."""
    if not names:
        return None
    from corral._eval import resolve_run

    out: dict[str, RunInfo] = {}
    for name in names:
        found = store.find_runs(name)
        jobs = [r for r in found if r.job_name == name and r.id != name]
        if jobs and not any(r.id == name for r in found):
            out.update((r.id, r) for r in jobs)
            continue
        try:
            r = resolve_run(store, name)
        except RunNotFoundError as e:
            raise RunNotFoundError(f"{e}; `corral cost` takes run ids, id prefixes or job names") from None
        out[r.id] = r
    return list(out.values())
