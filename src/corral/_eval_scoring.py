"""Scoring for ``corral eval``: how an answer is matched to its gold value, and the figures
a scored step and run report. What is measured is described in :mod:`corral._eval`."""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from corral import _labels
from corral._export import accepted_events
from corral.store.base import TraceEvent
from corral.tasks.base import Task

#: tasks whose output is a label (scored by accuracy, macro-F1 and confusions)
LABEL_TASKS = ("classify", "filter")
BINS = 10
#: record state -> the group it is reported in
GROUP_OF = {
    "done": "written", "review": "held", "quarantined": "quarantined", "skipped": "skipped",
    "pending": "not final", "leased": "not final",
}
GROUPS = ("written", "held", "quarantined", "skipped", "not final", "not in run")


def _rate(k: int, n: int) -> float | None:
    return k / n if n else None


def _r(x: float | None, nd: int = 6) -> float | None:
    return None if x is None else round(x, nd)


# --- results ---------------------------------------------------------------------------------


@dataclass
class Confusion:
    """How many labeled rows with gold label ``gold`` were answered ``predicted``."""

    gold: str
    predicted: str
    count: int


@dataclass
class LabelScore:
    """A label step's column: accuracy over answered rows, macro-F1, confused pairs."""

    column: str
    rows: int  # labeled rows (gold not empty) in the run
    answered: int
    correct: int
    macro_f1: float | None
    per_label: list[dict[str, Any]] = field(default_factory=list)
    confusions: list[Confusion] = field(default_factory=list)

    @property
    def accuracy(self) -> float | None:
        return _rate(self.correct, self.answered)

    def to_json(self) -> dict[str, Any]:
        return {
            "column": self.column, "rows": self.rows, "answered": self.answered,
            "correct": self.correct, "accuracy": _r(self.accuracy), "macro_f1": _r(self.macro_f1),
            "per_label": self.per_label,
            "confusions": [{"gold": c.gold, "predicted": c.predicted, "count": c.count} for c in self.confusions],
        }


@dataclass
class FieldScore:
    """One output column of a field step (see the module docstring for the three rules)."""

    column: str
    answered: int = 0  # labeled rows with an answer for the step
    with_value: int = 0  # of them, gold not null
    exact: int = 0
    normalised: int = 0
    null_aware: int = 0
    missed: int = 0
    spurious: int = 0

    @property
    def exact_accuracy(self) -> float | None:
        return _rate(self.exact, self.with_value)

    @property
    def normalised_accuracy(self) -> float | None:
        return _rate(self.normalised, self.with_value)

    @property
    def null_aware_accuracy(self) -> float | None:
        return _rate(self.null_aware, self.answered)

    def to_json(self) -> dict[str, Any]:
        return {
            "column": self.column, "answered": self.answered, "with_value": self.with_value,
            "exact": self.exact, "exact_accuracy": _r(self.exact_accuracy),
            "normalised": self.normalised, "normalised_accuracy": _r(self.normalised_accuracy),
            "null_aware": self.null_aware, "null_aware_accuracy": _r(self.null_aware_accuracy),
            "missed": self.missed, "spurious": self.spurious,
        }


@dataclass
class Group:
    """Labeled rows of one final state, and how many of the answered ones are right."""

    name: str
    rows: int = 0
    answered: int = 0
    correct: int = 0

    @property
    def accuracy(self) -> float | None:
        return _rate(self.correct, self.answered)

    def to_json(self) -> dict[str, Any]:
        return {"group": self.name, "rows": self.rows, "answered": self.answered,
                "correct": self.correct, "accuracy": _r(self.accuracy)}


@dataclass
class Bin:
    """One confidence bin of the reliability table: its answers' mean confidence and accuracy."""

    lo: float
    hi: float
    count: int
    mean_confidence: float | None
    accuracy: float | None

    def to_json(self) -> dict[str, Any]:
        return {"bin": [self.lo, self.hi], "count": self.count,
                "mean_confidence": _r(self.mean_confidence), "accuracy": _r(self.accuracy)}


@dataclass
class Calibration:
    """How well the recorded confidences predict correctness."""

    with_confidence: int
    without_confidence: int
    ece: float | None
    bins: list[Bin]
    #: (coverage k/n, accuracy of the k most confident rows) for k = 1..n
    curve: list[tuple[float, float]]

    def at(self, coverage: float) -> float | None:
        """Accuracy of the most confident ``coverage`` share of the rows."""
        if not self.curve:
            return None
        k = max(1, round(coverage * len(self.curve)))
        return self.curve[k - 1][1]

    def to_json(self) -> dict[str, Any]:
        return {
            "with_confidence": self.with_confidence,
            "without_confidence": self.without_confidence,
            "ece": _r(self.ece),
            "reliability": [b.to_json() for b in self.bins],
            "coverage_accuracy": [
                {"coverage": q / 10, "accuracy": _r(self.at(q / 10))} for q in range(1, 11)
            ] if self.curve else [],
        }


@dataclass
class Spend:
    """Calls, tokens and cost of labeled rows (replays counted at the price first paid)."""

    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost: Decimal | None = Decimal(0)

    def add(self, calls: int, tin: int, tout: int, cost: Decimal | None) -> None:
        self.calls += calls
        self.input_tokens += tin
        self.output_tokens += tout
        self.cost = None if self.cost is None or cost is None else self.cost + cost

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def to_json(self) -> dict[str, Any]:
        return {"calls": self.calls, "tokens": {"input": self.input_tokens, "output": self.output_tokens},
                "cost_usd": None if self.cost is None else float(self.cost)}


@dataclass
class StepEval:
    """One step of a run, scored: its label or field scores, groups by state, calibration."""

    step: str
    task: str
    kind: str  # "labels" or "fields"
    columns: dict[str, str]  # step column -> gold column of the labels file
    rows: int = 0
    answered: int = 0
    correct: int = 0
    labels: LabelScore | None = None
    fields: list[FieldScore] = field(default_factory=list)
    groups: list[Group] = field(default_factory=list)
    calibration: Calibration | None = None
    spend: Spend = field(default_factory=Spend)
    #: label key -> whether the row is right for the step, as a row's correctness counts it (a
    #: row without a label, or one a filter's skip kept from the step, does not count against it)
    verdicts: dict[str, bool] = field(default_factory=dict, repr=False)

    @property
    def accuracy(self) -> float | None:
        return _rate(self.correct, self.answered)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "step": self.step, "task": self.task, "kind": self.kind, "columns": self.columns,
            "rows": self.rows, "answered": self.answered, "correct": self.correct,
            "accuracy": _r(self.accuracy),
        }
        if self.labels is not None:
            out["labels"] = self.labels.to_json()
        if self.kind == "fields":
            out["fields"] = [f.to_json() for f in self.fields]
        out["groups"] = [g.to_json() for g in self.groups]
        out["calibration"] = self.calibration.to_json() if self.calibration else None
        out.update(self.spend.to_json())
        return out


@dataclass
class RunEval:
    """One run, scored: its steps, the rows right on every step, and what they cost."""

    run: str
    job: str
    model: str | None
    status: str
    rows: int  # labeled rows in the run
    not_final: int
    not_in_run: int
    correct: int
    steps: list[StepEval]
    spend: Spend

    @property
    def accuracy(self) -> float | None:
        return _rate(self.correct, self.rows)

    def per_correct(self, what: str) -> float | None:
        """``cost``, ``calls`` or ``tokens`` per correct row (None when unknown or none correct)."""
        if not self.correct:
            return None
        if what == "cost":
            return None if self.spend.cost is None else float(self.spend.cost) / self.correct
        return (self.spend.calls if what == "calls" else self.spend.tokens) / self.correct

    def step(self, name: str) -> StepEval:
        return next(s for s in self.steps if s.step == name)

    def to_json(self) -> dict[str, Any]:
        return {
            "run": self.run, "job": self.job, "model": self.model, "status": self.status,
            "rows": self.rows, "not_final": self.not_final, "not_in_run": self.not_in_run,
            "correct": self.correct, "accuracy": _r(self.accuracy),
            **self.spend.to_json(),
            "cost_per_correct_row": _r(self.per_correct("cost"), 9),
            "calls_per_correct_row": _r(self.per_correct("calls"), 4),
            "tokens_per_correct_row": _r(self.per_correct("tokens"), 2),
            "steps": [s.to_json() for s in self.steps],
        }


@dataclass
class Evaluation:
    """What :func:`corral.evaluate` returns: every run scored against the same labels."""

    job: str
    labels: str
    key_column: str
    labeled: int  # rows of the labels file with a key
    runs: list[RunEval]
    unused_columns: list[str] = field(default_factory=list)  # labels columns no step writes
    unscored_steps: list[str] = field(default_factory=list)  # steps with no gold column
    notes: list[str] = field(default_factory=list)

    def run(self, run_id: str) -> RunEval:
        return next(r for r in self.runs if r.run == run_id)

    def to_json(self) -> dict[str, Any]:
        return {
            "job": self.job, "labels": self.labels, "key_column": self.key_column,
            "labeled_rows": self.labeled, "unused_columns": self.unused_columns,
            "unscored_steps": self.unscored_steps, "notes": self.notes,
            "runs": [r.to_json() for r in self.runs],
        }


# --- comparing values --------------------------------------------------------------------------

_NUMBER = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?$")
_THOUSANDS = re.compile(r"^[-+]?\d{1,3}(,\d{3})+(\.\d+)?$")
_CURRENCY = "$€£¥"


def as_number(text: str) -> float | None:
    """``349.00``, ``$1,234.5``, ``-2e3`` -> a float; anything else -> None."""
    s = text.strip().strip(_CURRENCY).strip()
    if _THOUSANDS.match(s):
        s = s.replace(",", "")
    if _NUMBER.match(s):
        return float(s)
    return None


def as_text(x: Any) -> str:
    """A value as the exact rule reads it."""
    if x is None:
        return ""
    if isinstance(x, bool):
        return "true" if x else "false"
    if isinstance(x, (int, float, str)):
        return str(x)
    return json.dumps(x, ensure_ascii=False, sort_keys=True)


def _is_null(x: Any) -> bool:
    return _labels.blank(x) or x == [] or x == {}


def _canon(x: Any) -> Any:
    """A value's normalised form (see the module docstring)."""
    if _is_null(x):
        return None
    if isinstance(x, bool):
        return "true" if x else "false"
    if isinstance(x, (int, float)):
        return float(x)
    if isinstance(x, (list, tuple)):
        return tuple(sorted((_canon(v) for v in x), key=repr))
    if isinstance(x, dict):
        return tuple(sorted((str(k), _canon(v)) for k, v in x.items()))
    n = as_number(str(x))
    if n is not None:
        return n
    s = unicodedata.normalize("NFKC", str(x)).casefold()
    s = "".join(c for c in s if not unicodedata.category(c).startswith("P"))
    return " ".join(s.split())


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    return bool(a == b)


def normalised_match(value: Any, gold: Any) -> bool:
    """Whether an answer equals a gold value by the normalised rule."""
    return _same(_canon(value), _canon(_labels.as_shape(gold, value)))


def _display(x: Any) -> str:
    if isinstance(x, bool):
        return "true" if x else "false"
    if isinstance(x, (list, tuple)):
        return ", ".join(_display(v) for v in x)
    return str(x).strip()


def _label_set(value: Any) -> set[Any]:
    if isinstance(value, (list, tuple)):
        return {_labels.norm(v) for v in value}
    return {_labels.norm(value)}


# --- scoring ---------------------------------------------------------------------------------


@dataclass
class LabeledRow:
    """A labeled row as its run left it."""

    store_key: str
    state: str
    outputs: dict[str, Any]
    calls: list[TraceEvent]


def confidence_of(calls: list[TraceEvent], step: str) -> float | None:
    """The confidence recorded for a step's answer in a record's trace (module docstring)."""
    accepted = [ev for ev in accepted_events(calls) if ev.step_name == step]
    if accepted:
        confs = [ev.info.get("confidence") for ev in accepted]
        if all(isinstance(c, (int, float)) for c in confs):
            return float(min(c for c in confs if c is not None))
        return None
    for ev in reversed(calls):
        data = ev.info
        c = data.get("confidence")
        if ev.step_name == step and "answer" in data and isinstance(c, (int, float)):
            return float(c)
    return None


def spend_of(calls: list[TraceEvent], step: str | None = None) -> tuple[int, int, int, Decimal | None]:
    """Calls, tokens and cost of a record's calls (of one step when given), replays counted at the
    price first paid (from the recorded response's usage), as :meth:`Store.run_spend` does."""
    n = tin = tout = 0
    cost: Decimal | None = Decimal(0)
    for ev in calls:
        if ev.replayed is None or ev.kind == "decision":
            continue  # not a call (no ledger row), or a decision pointing at a call's hash
        if step is not None and ev.step_name != step:
            continue
        n += 1
        usage = (ev.response or {}).get("usage")
        if usage is not None:
            tin += int(usage.get("input_tokens") or 0)
            tout += int(usage.get("output_tokens") or 0)
            price = usage.get("cost")
        else:  # a billed call that failed: the ledger row holds its usage
            tin += int(ev.input_tokens or 0)
            tout += int(ev.output_tokens or 0)
            price = ev.cost_usd
        if cost is not None:
            cost = None if price is None else cost + Decimal(str(price))
    return n, tin, tout, cost


def calibration(pairs: Sequence[tuple[float, bool]], without: int) -> Calibration:
    """Reliability bins, ECE and the coverage curve of (confidence, correct) pairs."""
    bins: list[list[tuple[float, bool]]] = [[] for _ in range(BINS)]
    for c, ok in pairs:
        c = min(1.0, max(0.0, c))
        bins[min(BINS - 1, int(c * BINS))].append((c, ok))
    n = len(pairs)
    out, ece = [], 0.0
    for i, b in enumerate(bins):
        mean: float | None = None
        acc: float | None = None
        if b:
            mean = sum(c for c, _ in b) / len(b)
            acc = sum(ok for _, ok in b) / len(b)
            ece += len(b) / n * abs(acc - mean)
        out.append(Bin(round(i / BINS, 2), round((i + 1) / BINS, 2), len(b), mean, acc))
    if not n:
        return Calibration(0, without, None, [], [])
    ranked = sorted(pairs, key=lambda p: -p[0])
    curve, right = [], 0
    for k, (_, ok) in enumerate(ranked, 1):
        right += ok
        curve.append((k / n, right / k))
    return Calibration(n, without, ece, out, curve)


def _macro_f1(
    golds: list[set[Any]], preds: list[set[Any]], shown: dict[Any, str]
) -> tuple[float | None, list[dict[str, Any]]]:
    """Macro-F1 over every label seen in gold or answers (a multi-label answer counts each of its
    labels), and each label's support (gold rows), predicted rows and F1."""
    classes: set[Any] = set().union(*golds, *preds) if golds else set()
    per: list[dict[str, Any]] = []
    for c in sorted(classes, key=str):
        tp = sum(c in g and c in p for g, p in zip(golds, preds))
        fp = sum(c in p and c not in g for g, p in zip(golds, preds))
        fn = sum(c in g and c not in p for g, p in zip(golds, preds))
        f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
        per.append({"label": shown.get(c, str(c)), "support": tp + fn,
                    "predicted": tp + fp, "f1": round(f1, 6)})
    macro = sum(p["f1"] for p in per) / len(per) if per else None
    return macro, per


def score_step(step: Task, pairs: list[tuple[str, str]], gold_cols: dict[str, str],
               rows: dict[str, LabeledRow], gold: dict[str, dict[str, Any]], missing: list[str]) -> StepEval:
    """Score one step's answers in ``rows`` against ``gold`` (see :mod:`corral._eval`);
    ``missing`` are labeled keys the run has no record of."""
    kind = "labels" if step.task in LABEL_TASKS else "fields"
    ev = StepEval(step.name, step.task, kind, dict(gold_cols))
    groups = {g: Group(g) for g in GROUPS}
    label_col = next(iter(gold_cols.items())) if kind == "labels" else None
    fields = {c: FieldScore(g) for c, g in gold_cols.items()}
    golds: list[set[Any]] = []
    preds: list[set[Any]] = []
    shown: dict[Any, str] = {}
    confused: Counter[tuple[str, str]] = Counter()
    pairs_conf: list[tuple[float, bool]] = []
    without = 0
    for k in missing:  # labeled keys the run never loaded
        if label_col is None or not _labels.blank(gold[k].get(label_col[1])):
            ev.rows += 1
            groups["not in run"].rows += 1
    for k, row in rows.items():
        g = gold[k]
        if label_col is not None and _labels.blank(g.get(label_col[1])):
            ev.verdicts[k] = True
            continue
        ev.rows += 1
        grp = groups[GROUP_OF.get(row.state, "not final")]
        grp.rows += 1
        value = row.outputs.get(step.name)
        if value is None:
            ev.verdicts[k] = row.state == "skipped"
            continue
        cols = step.to_columns(value)
        ev.answered += 1
        grp.answered += 1
        if label_col is not None:
            step_col, gcol = label_col
            v, lab = cols.get(step_col), g[gcol]
            shaped = _labels.as_shape(lab, v)
            ok = _labels.matches(v, lab)
            golds.append(_label_set(shaped))
            preds.append(_label_set(v) if v is not None else set())
            for x in (shaped, v):
                for item in (x if isinstance(x, (list, tuple)) else [x]):
                    if item is not None:
                        shown.setdefault(_labels.norm(item), _display(item))
            if not ok:
                confused[(_display(shaped), _display(v) if v is not None else "(none)")] += 1
        else:
            ok = True
            for step_col, fs in fields.items():
                pv, gv = cols.get(step_col), g.get(fs.column)
                fs.answered += 1
                if _is_null(gv):
                    right = _is_null(pv)
                    fs.spurious += not right
                else:
                    fs.with_value += 1
                    gtext = gv if isinstance(gv, str) else as_text(gv)
                    fs.exact += as_text(pv) == gtext
                    right = normalised_match(pv, gv)
                    fs.normalised += right
                    fs.missed += _is_null(pv)
                fs.null_aware += right
                ok = ok and right
        ev.correct += ok
        grp.correct += ok
        ev.verdicts[k] = ok
        conf = confidence_of(row.calls, step.name)
        if conf is None:
            without += 1
        else:
            pairs_conf.append((conf, ok))
    for row in rows.values():
        ev.spend.add(*spend_of(row.calls, step.name))
    if label_col is not None:
        macro, per = _macro_f1(golds, preds, shown)
        ev.labels = LabelScore(
            label_col[1], ev.rows, ev.answered, ev.correct, macro, per,
            [Confusion(a, b, n) for (a, b), n in sorted(confused.items(), key=lambda x: (-x[1], x[0]))],
        )
    ev.fields = list(fields.values()) if label_col is None else []
    ev.groups = [g for g in groups.values() if g.rows]
    ev.calibration = calibration(pairs_conf, without)
    return ev


