"""``corral routes``: how a run's rows were routed, and what each route cost and got right.

A route is the variant of a step that took a row (:mod:`corral._router`): an expert of the step,
``default`` (the step as written), or System 1's ``system1`` (answered without a call) and
``audit`` (answered, and sent to the model all the same). Per step that has routes, per route:
the rows it took (its latest ``route`` event at the step, :meth:`Store.routes`), the calls those
rows made at the step (paid and replayed), the paid calls' cost (unknown when some price is, never
counted as zero), and with a labels file the accuracy: the route's labeled rows the step got
right, by ``corral eval``'s rule (:func:`corral._eval_scoring.score_step`, over the same labels
file format and columns), over the route's labeled rows.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from rich.console import Console

from corral import _labels
from corral._eval import _gold_columns, _sink_pairs
from corral._eval_scoring import LabeledRow, score_step
from corral._eval_tables import ReportTable, money, pct
from corral._ingest import job_spec
from corral.errors import UserError
from corral.job import Job
from corral.report import print_table
from corral.store.base import STATES, RecordRow, RunInfo, Store

__all__ = ["RouteStats", "RoutesError", "RoutesReport", "StepRoutes", "print_routes", "routes_report"]

#: the routes after a step's experts, in this order (any other after them, as first seen)
_LAST = ("system1", "audit", "default")


class RoutesError(UserError):
    """Bad input to ``corral routes`` (labels file, key column)."""


@dataclass
class RouteStats:
    """One route of one step: its rows, their calls at the step and cost, and accuracy."""

    route: str
    rows: int = 0
    calls: int = 0
    replayed: int = 0
    cost: Decimal | None = Decimal(0)  # None: some paid call's price is unknown
    labeled: int | None = None  # None: no labels given, or none for this step
    correct: int | None = None

    @property
    def accuracy(self) -> float | None:
        """Correct over labeled rows of the route (None when none is labeled)."""
        return self.correct / self.labeled if self.labeled and self.correct is not None else None

    def to_json(self, total: int) -> dict[str, Any]:
        return {
            "route": self.route, "rows": self.rows, "share": self.rows / total if total else None,
            "calls": self.calls, "replayed": self.replayed,
            "cost": None if self.cost is None else float(self.cost),
            "labeled": self.labeled, "correct": self.correct, "accuracy": self.accuracy,
        }


@dataclass
class StepRoutes:
    """A step's routes, in order: its experts, then System 1's, then ``default``."""

    step: str
    routes: list[RouteStats]
    scored: bool = False  # the labels file has a column for the step

    @property
    def rows(self) -> int:
        return sum(r.rows for r in self.routes)

    @property
    def system1_rows(self) -> int:
        """Rows System 1 answered without a call."""
        return sum(r.rows for r in self.routes if r.route == "system1")

    def to_json(self) -> dict[str, Any]:
        n = self.rows
        return {
            "step": self.step, "rows": n, "system1_rows": self.system1_rows,
            "system1_share": self.system1_rows / n if n else None, "scored": self.scored,
            "routes": [r.to_json(n) for r in self.routes],
        }


@dataclass
class RoutesReport:
    """A run's routes, step by step (empty when no step of it routes rows)."""

    run: str
    job: str
    steps: list[StepRoutes]
    labels: str | None = None
    #: steps with routes that the labels file has no column for
    unscored: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"run": self.run, "job": self.job, "labels": self.labels,
                "steps": [s.to_json() for s in self.steps], "unscored": self.unscored}


def routes_report(st: Store, info: RunInfo, labels: Path | None = None,
                  key_column: str | None = None) -> RoutesReport:
    """The run's routes (see the module's docstring); with ``labels``, each route's accuracy."""
    spec_steps = [s for s in info.spec.get("steps") or [] if isinstance(s, dict)]
    order = [str(s.get("name")) for s in spec_steps]
    experts = {str(s.get("name")): [str(e.get("name")) for e in s.get("experts") or [] if isinstance(e, dict)]
               for s in spec_steps}
    by_step: dict[str, dict[str, RouteStats]] = {}
    route_of: dict[tuple[str, str], str] = {}
    for r in st.routes(info.id):
        by_step.setdefault(r.step, {}).setdefault(r.route, RouteStats(r.route)).rows += 1
        route_of[(r.key, r.step)] = r.route
    rep = RoutesReport(info.id, info.job_name, [], None if labels is None else str(labels))
    if not by_step:
        return rep
    for sp in st.record_spend(info.id, list(by_step)):
        route = route_of.get((sp.key, sp.step))
        if route is None:  # calls of a record the step did not route (none in a run of one job)
            continue
        stats = by_step[sp.step][route]
        stats.calls += sp.calls
        stats.replayed += sp.replayed
        stats.cost = None if sp.cost is None or stats.cost is None else stats.cost + sp.cost
    rank = {n: i for i, n in enumerate(order)}
    for name in sorted(by_step, key=lambda n: (rank.get(n, len(rank)), n)):
        known = [*experts.get(name, []), *_LAST]
        found = by_step[name]
        ranked = [found[r] for r in known if r in found] + [s for r, s in found.items() if r not in known]
        rep.steps.append(StepRoutes(name, ranked))
    if labels is not None:
        _score(st, info, rep, labels, key_column, route_of)
    return rep


def _score(st: Store, info: RunInfo, rep: RoutesReport, labels: Path, key_column: str | None,
           route_of: dict[tuple[str, str], str]) -> None:
    """Each route's labeled and correct rows, by ``corral eval``'s rule."""
    spec = job_spec(info)
    try:
        job = Job.from_dict(spec, origin=f"run {info.id}")
    except (UserError, ValueError):
        raise RoutesError(f"run {info.id} (job `{info.job_name}`): its stored job cannot be read, "
                          "so its answers cannot be scored; run `corral routes` without --labels") from None
    key = key_column or job.key
    if key is None:
        raise RoutesError(f"run {info.id}'s job has no `key:`; give --key-column, the labels' key "
                          "column (also a column of the source)")
    cols, gold = _labels.read_labels(labels, key, RoutesError)
    rows, sample = _labeled(st, info, key, gold, keyed=job.key == key)
    if not rows:
        some = ", ".join(list(gold)[:3])
        raise RoutesError(f"run {info.id} has none of the labeled keys (e.g. {some}); check "
                          "--key-column and that the labels belong to this job's source")
    steps = {s.name: (s, pairs) for s, pairs in zip(job.steps, _sink_pairs(job, sample))}
    for sr in rep.steps:
        if sr.step not in steps:
            rep.unscored.append(sr.step)
            continue
        step, pairs = steps[sr.step]
        gcols = _gold_columns(pairs, cols, key)
        if not gcols:
            rep.unscored.append(sr.step)
            continue
        sr.scored = True
        for stats in sr.routes:
            mine = {k: r for k, r in rows.items() if route_of.get((r.store_key, sr.step)) == stats.route}
            ev = score_step(step, pairs, gcols, mine, gold, [])
            stats.labeled, stats.correct = ev.rows, ev.correct


def _labeled(st: Store, info: RunInfo, key: str, gold: dict[str, dict[str, Any]],
             keyed: bool) -> tuple[dict[str, LabeledRow], dict[str, Any] | None]:
    """The run's records of labeled keys (by label key), and one record's input row. A run keyed
    by the labels' key column has them looked up by key, not read whole."""
    if keyed:
        found: Iterable[RecordRow] = (r for k in gold if (r := st.record(info.id, k)) is not None)
    else:
        found = (r for state in STATES for chunk in st.iter_records(info.id, state) for r in chunk)
    out: dict[str, LabeledRow] = {}
    sample: dict[str, Any] | None = None
    for r in found:
        if r.data is None:
            continue
        sample = sample or r.data
        v = r.data.get(key)
        k = r.key if _labels.blank(v) else str(v)
        if k in gold and k not in out:
            out[k] = LabeledRow(r.key, r.state, r.outputs or {}, [])
    return out, sample


def print_routes(console: Console, rep: RoutesReport) -> None:
    """The report as a table per step (one line when the run has no routes)."""
    if not rep.steps:
        console.print(f"run {rep.run} (job {rep.job}) has no routes: none of its steps has "
                      "`experts:` or System 1 (see docs/jobs.md)", markup=False, highlight=False)
        return
    console.print(f"Routes of run {rep.run} · job {rep.job}" + (f" · labels {rep.labels}" if rep.labels else ""),
                  markup=False, highlight=False)
    for s in rep.steps:
        n = s.rows
        headers = ["route", "rows", "share", "calls", "replayed", "cost"]
        if s.scored:
            headers += ["labeled", "correct", "accuracy"]
        cells = []
        for r in s.routes:
            row = [r.route, f"{r.rows:,}", pct(r.rows / n if n else None), f"{r.calls:,}",
                   f"{r.replayed:,}", money(r.cost)]
            if s.scored:
                row += [f"{r.labeled or 0:,}", f"{r.correct or 0:,}", pct(r.accuracy)]
            cells.append(row)
        title = f"step {s.step}: {n:,} rows routed"
        if any(r.route in ("system1", "audit") for r in s.routes):
            title += f"; System 1 took {s.system1_rows:,} ({pct(s.system1_rows / n if n else None)}) without a call"
        console.print()
        print_table(console, ReportTable(title, headers, cells))
    for name in rep.unscored:
        console.print(f"step {name}: the labels file has no column for it, so no accuracy "
                      "(name a column like the step's output column)", markup=False, highlight=False)
