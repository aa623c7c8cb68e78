"""The text of ``corral eval``'s report: tables of figures that the terminal, plain text and
the HTML report (:mod:`corral._report_html`) all print."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from corral._eval_scoring import Evaluation, RunEval, StepEval

# --- the report's tables (terminal, plain text and HTML share them) ----------------------------


@dataclass
class ReportTable:
    """A titled table of text cells: the first column left-aligned, the others right-aligned."""

    title: str
    headers: list[str]
    rows: list[list[str]]


def pct(x: float | None) -> str:
    """A share as a percentage (``–`` when there is nothing to measure)."""
    return "–" if x is None else f"{x:.1%}"


def money(x: Decimal | float | None, places: int = 4) -> str:
    """A cost in dollars (``unknown`` when some price is)."""
    return "unknown" if x is None else f"${float(x):,.{places}f}"


def run_title(r: RunEval) -> str:
    """A run's column heading: its id, job and model."""
    return f"{r.run} · {r.job}" + (f" · {r.model}" if r.model else "")


def summary_table(ev: Evaluation) -> ReportTable:
    """Every run side by side: one column a run, one row a figure."""
    rows: list[list[str]] = []

    def line(name: str, cell: Callable[[RunEval], str]) -> None:
        rows.append([name, *(cell(r) for r in ev.runs)])

    def of(step: str, fn: Callable[[StepEval], str]) -> Callable[[RunEval], str]:
        def cell(r: RunEval) -> str:
            s = next((x for x in r.steps if x.step == step), None)
            return "–" if s is None else fn(s)
        return cell

    line("status", lambda r: r.status)
    line("labeled rows", lambda r: f"{r.rows:,}" + (f" ({r.not_final + r.not_in_run:,} not final)" if r.not_final + r.not_in_run else ""))
    line("correct rows (every step)", lambda r: f"{r.correct:,} ({pct(r.accuracy)})")
    names = list(dict.fromkeys(s.step for r in ev.runs for s in r.steps))
    for name in names:
        kind = next(s.kind for r in ev.runs for s in r.steps if s.step == name)
        if kind == "labels":
            line(f"{name}: accuracy", of(name, lambda s: f"{pct(s.accuracy)} of {s.answered:,}"))
            line(f"{name}: macro-F1", of(name, lambda s: "–" if s.labels is None or s.labels.macro_f1 is None else f"{s.labels.macro_f1:.3f}"))
        else:
            line(f"{name}: rows right (every field)", of(name, lambda s: f"{pct(s.accuracy)} of {s.answered:,}"))
            cols = list(dict.fromkeys(f.column for r in ev.runs for s in r.steps if s.step == name for f in s.fields))
            for col in cols:
                def fcell(s: StepEval, col: str = col) -> str:
                    f = next((x for x in s.fields if x.column == col), None)
                    if f is None:
                        return "–"
                    return f"{pct(f.exact_accuracy)} / {pct(f.normalised_accuracy)} / {pct(f.null_aware_accuracy)}"
                line(f"{name}.{col}: exact / normalised / null-aware", of(name, fcell))
        line(f"{name}: written / held / quarantined", of(name, _groups_cell))
        line(f"{name}: ECE (10 bins)", of(name, _ece_cell))
        line(f"{name}: accuracy of the most confident 50% / 80%", of(name, _coverage_cell))
    line("calls", lambda r: f"{r.spend.calls:,}")
    line("tokens", lambda r: f"{r.spend.tokens:,}")
    line("cost", lambda r: money(r.spend.cost))
    line("cost per correct row", lambda r: "–" if r.per_correct("cost") is None and r.spend.cost is not None else money(r.per_correct("cost"), 6))
    line("calls per correct row", lambda r: "–" if r.per_correct("calls") is None else f"{r.per_correct('calls'):.2f}")
    line("tokens per correct row", lambda r: "–" if r.per_correct("tokens") is None else f"{r.per_correct('tokens'):,.0f}")
    return ReportTable(f"eval · job {ev.job} · labels {Path(ev.labels).name} ({ev.labeled:,} rows)",
                       ["", *(run_title(r) for r in ev.runs)], rows)


def _groups_cell(s: StepEval) -> str:
    by = {g.name: g for g in s.groups}
    parts = []
    for name in ("written", "held", "quarantined"):
        g = by.get(name)
        parts.append("0" if g is None else f"{g.rows:,}" + (f" ({pct(g.accuracy)})" if g.answered else ""))
    return " / ".join(parts)


def _ece_cell(s: StepEval) -> str:
    c = s.calibration
    if c is None or c.ece is None:
        return "no confidences"
    more = f", {c.without_confidence:,} without" if c.without_confidence else ""
    return f"{c.ece:.3f} ({c.with_confidence:,} answers{more})"


def _coverage_cell(s: StepEval) -> str:
    c = s.calibration
    if c is None or not c.curve:
        return "–"
    return f"{pct(c.at(0.5))} / {pct(c.at(0.8))}"


def detail_tables(r: RunEval, top: int = 10) -> list[ReportTable]:
    """One run's details: confused pairs, fields, states and the reliability tables."""
    out = []
    head = f"run {r.run}"
    for s in r.steps:
        if s.labels is not None and s.labels.confusions:
            out.append(ReportTable(
                f"{head} · step {s.step}: most confused (gold → answered)", ["gold", "answered", "rows"],
                [[c.gold, c.predicted, f"{c.count:,}"] for c in s.labels.confusions[:top]]))
        if s.fields:
            out.append(ReportTable(
                f"{head} · step {s.step}: fields", ["column", "answered", "with a value", "exact", "normalised",
                                                     "null-aware", "missed", "spurious"],
                [[f.column, f"{f.answered:,}", f"{f.with_value:,}", pct(f.exact_accuracy), pct(f.normalised_accuracy),
                  pct(f.null_aware_accuracy), f"{f.missed:,}", f"{f.spurious:,}"] for f in s.fields]))
    out.append(ReportTable(
        f"{head}: labeled rows by state, and how many of each group are right",
        ["step", "group", "rows", "answered", "right", "accuracy"],
        [[s.step, g.name, f"{g.rows:,}", f"{g.answered:,}", f"{g.correct:,}", pct(g.accuracy)]
         for s in r.steps for g in s.groups]))
    for s in r.steps:
        c = s.calibration
        if c is None or not c.with_confidence:
            continue
        out.append(ReportTable(
            f"{head} · step {s.step}: reliability (ECE {c.ece:.3f} over {c.with_confidence:,} answers)",
            ["confidence", "rows", "mean confidence", "accuracy"],
            [[f"{b.lo:.1f}–{b.hi:.1f}", f"{b.count:,}", pct(b.mean_confidence), pct(b.accuracy)] for b in c.bins]))
    return out


def missing_confidences(ev: Evaluation) -> list[str]:
    """Lines saying which steps' answers carry no confidence."""
    out = []
    for r in ev.runs:
        for s in r.steps:
            c = s.calibration
            if c is not None and c.without_confidence and s.answered:
                if c.with_confidence:
                    out.append(f"run {r.run} · step {s.step}: {c.without_confidence:,} of {s.answered:,} answers "
                               "have no recorded confidence and are left out of the ECE")
                else:
                    out.append(f"run {r.run} · step {s.step}: no recorded confidences (the model returned no "
                               "log-probabilities and the strategy measured none): no ECE")
    return out
