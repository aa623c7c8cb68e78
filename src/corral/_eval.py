"""``corral eval``: score a run's answers against labeled rows.

The labels file is keyed like the source (the job's ``key:`` column) and names its gold columns
like the sink's output columns: a classify step ``category`` is the column ``category``, an
extract step's fields are their own column names (as the sink writes them). Recorded answers are
scored as they are; by default the job's current run (the run ``corral run`` would resume) is
scored, and when some labeled rows have no final state there, the job runs on the labeled rows
alone (a copy of the job whose source is those rows, in a folder beside the store), within the
job's budget: an answer the current run already paid for is replayed from the store, not asked
again.

What is measured, per step:

* label steps (``classify``, ``filter``): accuracy (the answer equals the label by the rule of
  ``corral calibrate``: :func:`corral._labels.matches`), macro-F1 over the labels seen in gold or
  answers, and the confused pairs (gold → answered, count). Rows whose gold cell is empty are not
  labeled for the step.
* field steps (every other task), per column; an empty gold cell means null:
  - *exact*: the answer as text (numbers as Python writes them, ``349.0``; booleans
    ``true``/``false``; lists and objects as JSON) is the gold text, character for character;
    over answered rows whose gold has a value.
  - *normalised*: both sides compared after Unicode NFKC, casefold, punctuation removed and runs of
    whitespace made one space; a value that reads as a number (``$1,234.50``, ``349.00``) is
    compared as a number; lists as sorted sets; same rows as exact.
  - *null-aware*: over all answered rows: a null gold is right only when the answer is null (or
    empty), a gold value is right when it matches normalised. ``missed`` counts gold values
    answered null, ``spurious`` null golds answered with a value.
  A row is correct for a field step when every labeled column is right null-aware.
* every step: labeled rows by final state of their record (written, held for review,
  quarantined, skipped, not final, not in the run), and the accuracy of the answered ones in each
  group (a held row is scored on the best answer it was held with); the expected calibration
  error (ECE: 10 equal-width bins over [0, 1]; the sum over bins of count / answered rows with a
  confidence × |accuracy − mean confidence|) of the confidences recorded in the trace (the
  accepted answer's, the lowest over a long document's chunks; for a held row the one recorded
  with the step's last answer), with the reliability table and the coverage-vs-accuracy curve
  (rows sorted by confidence, highest first; the accuracy of the top k as a share k of them);
  and the calls, tokens and cost of the labeled rows (replays counted at the price first paid).

A labeled row is correct when it is correct for every scored step it reached (a row a filter
skipped is judged on the steps up to the filter); cost per correct row is the labeled rows' cost
over that count.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import re
import shutil
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from corral import _labels
from corral._export import accepted_events
from corral.engine import _plan, make_model, run_async, run_id_for, store_path_for
from corral.errors import RunNotFoundError, UserError
from corral.io import open_source
from corral.io.base import Column
from corral.job import Job
from corral.models.base import Model
from corral.store import Store, open_store
from corral.store.base import FINAL_STATES, STATES, RecordRow, RunInfo, TraceEvent
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


class EvalError(UserError):
    """Bad input to ``corral eval`` (labels file, columns, runs)."""


class Interrupted(Exception):
    """The run of the labeled rows was interrupted (Ctrl-C): finished work is kept."""


def _rate(k: int, n: int) -> float | None:
    return k / n if n else None


def _r(x: float | None, nd: int = 6) -> float | None:
    return None if x is None else round(x, nd)


# --- results ---------------------------------------------------------------------------------


@dataclass
class Confusion:
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
class _Row:
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


def _spend_of(calls: list[TraceEvent], step: str | None = None) -> tuple[int, int, int, Decimal | None]:
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
        mean = sum(c for c, _ in b) / len(b) if b else None
        acc = sum(ok for _, ok in b) / len(b) if b else None
        if b:
            ece += len(b) / n * abs(acc - mean)  # type: ignore[operator]
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
    per = []
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
               rows: dict[str, _Row], gold: dict[str, dict[str, Any]], missing: list[str]) -> StepEval:
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
        ev.spend.add(*_spend_of(row.calls, step.name))
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


def _job_of(info: RunInfo, job: Job) -> Job:
    """The job a run ran, from its stored spec (or the given job when the spec cannot load)."""
    spec = {k: v for k, v in info.spec.items() if k != "model_id"}
    try:
        return Job.from_dict(spec, base_dir=job.base_dir, origin=f"run {info.id}")
    except (UserError, ValueError):
        if info.job_name in (job.name, f"{job.name}.eval"):
            return job
        raise EvalError(
            f"run {info.id} (job `{info.job_name}`): its stored job cannot be read; evaluate it "
            "with its own job file"
        ) from None


def _sink_pairs(run_job: Job, data: dict[str, Any] | None) -> list[list[tuple[str, str]]]:
    """Per step, (step column, sink column): the names the run's sink gives the outputs."""
    if data is not None:
        stand_in = SimpleNamespace(columns=[Column(c, "any") for c in data], path=Path("source"))
        with contextlib.suppress(UserError):
            return _plan(run_job, stand_in).step_columns  # type: ignore[arg-type]
    return [[(c.name, c.name) for c in s.columns()] for s in run_job.steps]


def _gold_columns(pairs: list[tuple[str, str]], cols: list[str], key: str) -> dict[str, str]:
    out = {}
    for step_col, sink_col in pairs:
        if sink_col in cols:
            out[step_col] = sink_col
        elif step_col in cols and step_col != key:
            out[step_col] = step_col
    return out


def _records(st: Store, info: RunInfo, key: str, gold: dict[str, Any],
             keyed: bool) -> tuple[dict[str, _Row], dict[str, Any] | None]:
    """The run's records of labeled keys (by label key), and one record's input row. A run
    ``keyed`` by the labels' key column has them looked up by key, not read whole."""
    found: Iterable[RecordRow]
    if keyed:
        found = sorted((r for k in gold if (r := st.record(info.id, k)) is not None),
                       key=lambda r: (STATES.index(r.state), r.ordinal))
    else:
        found = (r for state in STATES for chunk in st.iter_records(info.id, state) for r in chunk)
    rows: dict[str, _Row] = {}
    sample: dict[str, Any] | None = None
    for r in found:
        data = r.data
        if data is None:
            continue
        if sample is None:
            sample = data
        k = str(data[key]) if key in data and not _labels.blank(data[key]) else r.key
        if k in gold and k not in rows:
            rows[k] = _Row(r.key, r.state, r.outputs or {}, [])
    for row in rows.values():
        row.calls = st.record_calls(info.id, row.store_key)
    return rows, sample


def score_run(st: Store, info: RunInfo, job: Job, gold: dict[str, dict[str, Any]], cols: list[str],
              key: str, expected: set[str] | None = None) -> tuple[RunEval, set[str], list[str]]:
    """Score one run; also the labels columns it used and the steps it could not score."""
    run_job = _job_of(info, job)
    rows, sample = _records(st, info, key, gold, run_job.key == key)
    if not rows:
        some = ", ".join(list(gold)[:3])
        raise EvalError(
            f"run {info.id} (job `{info.job_name}`) has none of the labeled keys (e.g. {some}); "
            "check --key-column and that the labels belong to this job's source"
        )
    missing = sorted((expected or set()) - set(rows))
    used: set[str] = set()
    unscored: list[str] = []
    steps = []
    for step, pairs in zip(run_job.steps, _sink_pairs(run_job, sample)):
        gcols = _gold_columns(pairs, cols, key)
        if not gcols:
            unscored.append(step.name)
            continue
        used.update(gcols.values())
        steps.append(score_step(step, pairs, gcols, rows, gold, missing))
    spend = Spend()
    correct = 0
    for k, row in rows.items():
        spend.add(*_spend_of(row.calls))
        correct += bool(steps) and all(e.verdicts[k] for e in steps)
    not_final = sum(GROUP_OF.get(r.state) == "not final" for r in rows.values())
    spec_model = info.spec.get("model_id")
    ev = RunEval(info.id, info.job_name, spec_model, info.status, len(rows) + len(missing),
                 not_final, len(missing), correct, steps, spend)
    return ev, used, unscored


def _no_gold(pairs: list[list[tuple[str, str]]], cols: list[str], labels: Path) -> None:
    names = ", ".join(dict.fromkeys(sink for p in pairs for _, sink in p))
    raise EvalError(
        f"labels file {labels.name} has none of the output columns ({names}); name its gold "
        f"columns like the sink's. Its columns: {', '.join(cols)}"
    )


# --- which runs ------------------------------------------------------------------------------


def resolve_run(st: Store, run: str) -> RunInfo:
    """A run by id, id prefix or job name (the latest run of that job)."""
    found = st.find_runs(run)
    if not found:
        raise RunNotFoundError(f"no run matches `{run}` — list runs with `corral runs`")
    exact = [r for r in found if r.id == run]
    if exact:
        return exact[0]
    ids = {r.id for r in found}
    if len(ids) > 1 and not all(r.job_name == run for r in found):
        raise RunNotFoundError(f"`{run}` matches {len(ids)} runs ({', '.join(sorted(ids)[:5])}); give more of the id")
    return found[0]


def _state(st: Store, run_id: str, key: str) -> str | None:
    """A record's state in a run (None when the run has no record of the key)."""
    r = st.record(run_id, key)
    return None if r is None else r.state


async def _labeled_run(
    job: Job, st: Store, store_path: Path | None, key: str, rows: dict[str, dict[str, Any]],
    columns: list[str], model: Any, model_id: Model, progress: Callable[[dict[str, Any]], None] | None,
    handle_signals: bool,
) -> tuple[RunInfo, str]:
    """Run a copy of the job on the labeled rows alone (answers the store holds are replayed)."""
    base = (store_path.resolve().parent if store_path is not None else job.base_dir / ".corral")
    digest = hashlib.sha256(json.dumps([job.name, key, sorted(rows)]).encode()).hexdigest()[:12]
    folder = base / "eval" / f"{job.name}-{digest}"
    folder.mkdir(parents=True, exist_ok=True)
    try:
        (folder / "labeled.jsonl").write_text("".join(
            json.dumps({c: r.get(c) for c in columns}, ensure_ascii=False, default=str) + "\n"
            for r in rows.values()), encoding="utf-8")
        data = job.model_dump(mode="json")
        data["name"] = f"{job.name}.eval"
        data["key"] = key
        data["source"] = {"path": str(folder / "labeled.jsonl")}
        data["sink"] = {"path": str(folder / "answers.jsonl")}
        try:
            copy = Job.from_dict(data, base_dir=job.base_dir, origin="the labeled rows' copy of the job")
        except UserError as e:
            raise EvalError(str(e)) from None
        fingerprint = open_source(copy.source, copy.base_dir).fingerprint()
        rid = run_id_for(copy, model_id, fingerprint)
        earlier = st.get_run(rid)
        if earlier is not None:
            counts = st.counts(rid)
            if sum(counts.values()) == len(rows) and all(v in FINAL_STATES for v in counts):
                return earlier, (f"scored run {rid}: the {len(rows):,} labeled rows, run by an earlier "
                                 "corral eval (no call made)")
        before = st.totals(rid)
        result = await run_async(copy, model=model, store=st, progress=progress, handle_signals=handle_signals)
        after = st.totals(result.run)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        with contextlib.suppress(OSError):
            folder.parent.rmdir()
    if result.status == "interrupted":
        raise Interrupted(f"interrupted while running the {len(rows):,} labeled rows (run {result.run})")
    if result.status == "failed":
        raise EvalError(f"the run of the labeled rows failed: {result.stop_reason}")
    info = st.get_run(result.run)
    assert info is not None
    made, replayed = after.made - before.made, after.replayed - before.replayed
    note = (f"ran the {len(rows):,} labeled rows as run {result.run} ({made:,} calls made, "
            f"{replayed:,} replayed from the store)")
    if result.status not in ("finished", "preview"):
        note += f"; it {result.status}: {result.stop_reason}" if result.stop_reason else f"; it {result.status}"
    return info, note


async def evaluate_async(
    job: Job | str | Path,
    *,
    labels: str | Path,
    runs: Sequence[str] = (),
    model: Model | str | dict[str, Any] | None = None,
    store: Store | str | Path | None = None,
    key_column: str | None = None,
    run_missing: bool = True,
    progress: Callable[[dict[str, Any]], None] | None = None,
    handle_signals: bool = False,
) -> Evaluation:
    """Score runs against a labels file; see :func:`corral.evaluate`."""
    job = job if isinstance(job, Job) else Job.load(job)
    key = key_column or job.key
    if key is None:
        raise EvalError(f"job `{job.name}` has no `key:` column to match labels to rows; give --key-column")
    labels = Path(labels)
    cols, gold = _labels.read_labels(labels, key, EvalError)
    if not gold:
        raise EvalError(f"labels file {labels.name} has no row with a `{key}` value")
    if set(cols) <= {key}:
        raise EvalError(f"labels file {labels.name} has only the key column `{key}`; add gold columns named like the sink's")
    own = not isinstance(store, Store)
    path = None if isinstance(store, Store) else Path(store) if store is not None else store_path_for(job)
    if own and path is not None and not path.exists():
        if runs:
            raise EvalError(f"no store at {path}; give --store, or run the job first")
        if not run_missing:
            raise EvalError(f"no store at {path}, so no run of job `{job.name}` to score: run `corral run` "
                            "on the job first, or leave out --no-run to let eval run the labeled rows")
    st: Store = store if isinstance(store, Store) else open_store(path)
    notes: list[str] = []
    try:
        expected: set[str] | None = None
        infos: list[RunInfo] = []
        if runs:
            try:
                infos = [resolve_run(st, r) for r in runs]
            except RunNotFoundError as e:
                raise EvalError(str(e)) from None
        else:
            columns, in_source = _labels.source_rows(job, key, gold, labels.name, EvalError)
            expected = set(in_source)
            pairs = _sink_pairs(job, next(iter(in_source.values())))
            if not any(_gold_columns(p, cols, key) for p in pairs):
                _no_gold(pairs, cols, labels)  # said before anything runs
            m = model if isinstance(model, Model) else make_model(model or job.model, job.base_dir)
            source = open_source(job.source, job.base_dir)
            rid = run_id_for(job, m, await asyncio.to_thread(source.fingerprint))
            if not isinstance(model, Model):
                await m.aclose()
            info = st.get_run(rid)
            todo = [k for k in in_source if info is None or _state(st, rid, k) not in FINAL_STATES]
            if info is not None and job.key == key and not todo:
                infos = [info]
            elif not run_missing:
                if info is None:
                    raise EvalError(
                        f"no run of job `{job.name}` with model `{m.id}` in the store: run `corral run` "
                        "on the job first, or leave out --no-run to let eval run the labeled rows"
                    )
                infos = [info]
                if todo:
                    notes.append(f"{len(todo):,} labeled rows have no final state in run {rid} "
                                 "(--no-run): they count as not answered")
            else:
                info, note = await _labeled_run(job, st, path, key, in_source, columns, model, m, progress,
                                               handle_signals)
                notes.append(note)
                infos = [info]
        seen: set[str] = set()
        results: list[RunEval] = []
        used: set[str] = set()
        unscored: list[str] = []
        for info in infos:
            if info.id in seen:
                continue
            seen.add(info.id)
            ev, u, un = score_run(st, info, job, gold, cols, key, expected)
            results.append(ev)
            used |= u
            unscored += [s for s in un if s not in unscored]
        if not used:
            _no_gold([p for r in infos for p in _sink_pairs(_job_of(r, job), None)], cols, labels)
        return Evaluation(
            job=job.name, labels=str(labels), key_column=key, labeled=len(gold), runs=results,
            unused_columns=[c for c in cols if c != key and c not in used],
            unscored_steps=unscored, notes=notes,
        )
    finally:
        if own:
            st.close()


def evaluate(
    job: Job | str | Path,
    *,
    labels: str | Path,
    runs: Sequence[str] = (),
    model: Model | str | dict[str, Any] | None = None,
    store: Store | str | Path | None = None,
    key_column: str | None = None,
    run_missing: bool = True,
) -> Evaluation:
    """Score a job's answers against labeled rows and return an :class:`Evaluation`.

    ``labels`` is a CSV, TSV or JSONL file keyed like the source (``key_column``, default the
    job's ``key:``) with gold columns named like the sink's output columns. Without ``runs``, the
    job's current run in ``store`` is scored (the run :func:`corral.run` would resume with
    ``model``); labeled rows not final there are run first, a copy of the job over those rows
    within the job's budget (recorded answers replayed), unless ``run_missing`` is false, when
    they count as not answered. ``runs`` names stored runs (ids, prefixes or job names) to score
    side by side as they are. Raises :class:`corral.UserError` on bad input.
    """
    return asyncio.run(evaluate_async(
        job, labels=labels, runs=runs, model=model, store=store, key_column=key_column,
        run_missing=run_missing,
    ))


# --- the report's tables (terminal, plain text and HTML share them) ----------------------------


@dataclass
class ReportTable:
    title: str
    headers: list[str]
    rows: list[list[str]]


def pct(x: float | None) -> str:
    return "–" if x is None else f"{x:.1%}"


def money(x: Decimal | float | None, places: int = 4) -> str:
    return "unknown" if x is None else f"${float(x):,.{places}f}"


def run_title(r: RunEval) -> str:
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
