"""``corral calibrate``: measure strategies on a labeled sample and pick the cheapest one that is
accurate enough.

A sample of labeled rows becomes the source of a temporary copy of the job (in a folder beside
the store). Each candidate strategy replaces the calibrated step's strategy in that copy and runs
through the engine with the same store, so a call two candidates share is paid once and replayed
after. Accuracy is the share of sampled rows whose step value equals the label; cost is what the
candidate's calls cost, replays counted at the price first paid (:meth:`Store.run_spend`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

from corral import _labels
from corral._labels import matches
from corral._registry import suggest
from corral.engine import run_async
from corral.errors import UserError
from corral.job import Job, ModelRef
from corral.store import Store, scratch_folder
from corral.strategies import parse_strategy
from corral.strategies.base import Strategy
from corral.strategies.cascade import Cascade
from corral.strategies.single import Single
from corral.strategies.vote import Vote
from corral.tasks.base import Task

THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
_MODEL_KEYS = ("model", "critic_model", "judge_model")


class CalibrationError(UserError):
    """Bad input to ``corral calibrate`` (labels, columns, step, target, candidates)."""


class Interrupted(Exception):
    """A candidate's run was interrupted (Ctrl-C): calibration stops, finished work is kept."""


# --- results ---------------------------------------------------------------------------------


@dataclass
class Candidate:
    strategy: Strategy
    label: str
    current: bool = False


@dataclass
class Measured:
    candidate: Candidate
    run: str
    status: str
    rows: int
    correct: int
    held: int
    quarantined: int
    not_written: int
    calls: int
    input_tokens: int
    output_tokens: int
    cost: Decimal | None
    target: float

    @property
    def accuracy(self) -> float:
        return self.correct / self.rows if self.rows else 0.0

    @property
    def interval(self) -> tuple[float, float]:
        return wilson(self.correct, self.rows)

    @property
    def meets_target(self) -> bool:
        return self.accuracy >= self.target

    @property
    def calls_per_row(self) -> float:
        return self.calls / self.rows if self.rows else 0.0

    @property
    def tokens_per_row(self) -> float:
        return (self.input_tokens + self.output_tokens) / self.rows if self.rows else 0.0

    @property
    def cost_per_1000(self) -> Decimal | None:
        if self.cost is None or not self.rows:
            return None
        return self.cost * 1000 / self.rows

    def sort_key(self) -> tuple[float, float, float]:
        """Cheapest first: priced candidates by cost, unpriced ones after, then by calls."""
        cost = math.inf if self.cost is None else float(self.cost)
        return (cost, self.calls_per_row, self.tokens_per_row)

    def to_json(self) -> dict[str, Any]:
        lo, hi = self.interval
        per_k = self.cost_per_1000
        return {
            "strategy": self.candidate.label,
            "spec": strategy_spec(self.candidate.strategy),
            "current": self.candidate.current,
            "run": self.run,
            "status": self.status,
            "rows": self.rows,
            "correct": self.correct,
            "accuracy": round(self.accuracy, 6),
            "interval": [round(lo, 6), round(hi, 6)],
            "held": self.held,
            "quarantined": self.quarantined,
            "not_written": self.not_written,
            "calls": self.calls,
            "calls_per_row": round(self.calls_per_row, 4),
            "tokens": {"input": self.input_tokens, "output": self.output_tokens},
            "tokens_per_row": round(self.tokens_per_row, 2),
            "cost_usd": None if self.cost is None else float(self.cost),
            "cost_per_1000_rows": None if per_k is None else float(per_k),
            "meets_target": self.meets_target,
        }


@dataclass
class Report:
    job: str
    step: str
    target: float
    labels: str
    label_column: str
    key_column: str
    labeled: int
    overlap: int
    rows: int
    seed: int
    results: list[Measured] = field(default_factory=list)

    @property
    def chosen(self) -> Measured | None:
        return next((m for m in self.results if m.meets_target), None)

    @property
    def most_accurate(self) -> Measured | None:
        if not self.results:
            return None
        return max(self.results, key=lambda m: (m.accuracy, -m.sort_key()[0], -m.calls_per_row))

    def to_json(self) -> dict[str, Any]:
        chosen, best = self.chosen, self.most_accurate
        return {
            "job": self.job,
            "step": self.step,
            "target": self.target,
            "labels": self.labels,
            "key_column": self.key_column,
            "label_column": self.label_column,
            "labeled_rows": self.labeled,
            "labeled_in_source": self.overlap,
            "sample": self.rows,
            "seed": self.seed,
            "candidates": [m.to_json() for m in self.results],
            "chosen": None if chosen is None else chosen.to_json(),
            "most_accurate": None if best is None else best.to_json(),
            "snippet": None if chosen is None else snippet(chosen.candidate.strategy),
        }


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of a proportion k/n."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, mid - half), min(1.0, mid + half))


# --- strategies: describe, write, deduplicate --------------------------------------------------


def strategy_spec(s: Strategy) -> dict[str, Any] | str:
    """The strategy as written in a job: its name and the keys that differ from the defaults."""
    out: dict[str, Any] = {"name": s.name}
    for name, f in type(s).model_fields.items():
        v = getattr(s, name)
        if name not in ("name", "model", "stages") and v != f.get_default(call_default_factory=True):
            out[name] = v
    if s.model is not None:
        out["model"] = s.model
    if isinstance(s, Cascade):
        out["stages"] = [strategy_spec(x) for x in s.stages]
    return out


def snippet(s: Strategy) -> str:
    """YAML to paste under the step in the job file."""
    spec = strategy_spec(s)
    if list(spec) == ["name"]:
        return f"strategy: {s.name}\n"
    return yaml.safe_dump({"strategy": spec}, sort_keys=False, default_flow_style=None, width=100)


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v if len(v) <= 24 else v[:21] + "...")
    return repr(v)


def describe(s: Strategy, model_label: Callable[[str | None], str], inherit: str | None = None) -> str:
    """Compact form, e.g. ``vote(samples=5, agreement=0.6) @cheap``."""
    always = {"vote": ("samples", "agreement"), "cascade": ("threshold",)}.get(s.name, ())
    params: list[str] = []
    for name, f in type(s).model_fields.items():
        if name in ("name", "model", "stages"):
            continue
        v = getattr(s, name)
        if name in always or v != f.get_default(call_default_factory=True):
            params.append(f"{name}={_value(v)}")
    text = s.name + (f"({', '.join(params)})" if params else "")
    if isinstance(s, Cascade):
        stages = " → ".join(describe(x, model_label, s.model or inherit) for x in s.stages)
        return f"{text}[{stages}]"
    return f"{text} @{model_label(s.model or inherit)}"


def _identity(s: Strategy, job: Job, main: ModelRef) -> str:
    """What a strategy computes: its keys with model names resolved to the models they name."""

    def resolve(d: Any) -> Any:
        if isinstance(d, list):
            return [resolve(x) for x in d]
        if not isinstance(d, dict):
            return d
        out = {}
        for k, v in d.items():
            if k in _MODEL_KEYS and (v is not None or k == "model"):
                ref = main if v is None else job.model_ref(v)
                v = json.dumps(ref.model_dump(mode="json"), sort_keys=True)
            out[k] = resolve(v)
        return out

    return json.dumps(resolve(s.model_dump(mode="json")), sort_keys=True)


def default_grid(job: Job, step: Task) -> list[Strategy]:
    """The step's own strategy; single and vote (3 and 5 samples, agreement 1.0 and 0.6) on the
    job's model and on each of `models:`; a cascade's thresholds from 0.5 to 1.0."""
    out: list[Strategy] = [step.strategy]
    models: list[str | None] = [None, *job.models]
    out += [Single(model=m) for m in models]
    for m in models:
        for samples in (3, 5):
            for agreement in (1.0, 0.6):
                out.append(Vote(model=m, samples=samples, agreement=agreement, adaptive=True))
    if isinstance(step.strategy, Cascade):
        out += [step.strategy.model_copy(update={"threshold": t}) for t in THRESHOLDS]
    return out


def read_candidates(value: str) -> list[Strategy]:
    """Strategies from ``--candidates``: a YAML/JSON file holding a list, or such a list inline."""
    p = Path(value)
    if p.is_file():
        text, where = p.read_text(encoding="utf-8"), str(p)
    elif value.lstrip().startswith(("[", "-")):
        text, where = value, "--candidates"
    else:
        raise CalibrationError(
            f"--candidates: no file {value}; give a YAML/JSON file with a list of strategies, "
            "or the list itself, e.g. '[single, {name: vote, samples: 3}]'"
        )
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise CalibrationError(f"{where}: not valid YAML/JSON ({str(e).splitlines()[0]})") from None
    if isinstance(data, dict) and isinstance(data.get("candidates"), list):
        data = data["candidates"]
    if not isinstance(data, list) or not data:
        raise CalibrationError(
            f"{where}: expected a non-empty list of strategies, e.g. [single, {{name: vote, samples: 3}}]"
        )
    out = []
    for i, item in enumerate(data):
        try:
            out.append(parse_strategy(item))
        except ValueError as e:
            raise CalibrationError(f"{where}: candidate {i + 1}: {e}") from None
    return out


# --- the calibration ---------------------------------------------------------------------------


@dataclass
class Plan:
    """What a calibration runs: validated before any call is made."""

    job: Job
    step: Task
    key_column: str
    label_column: str
    labels_path: Path
    labels: dict[str, Any]
    labeled: int
    overlap: int
    sample_rows: list[dict[str, Any]]
    columns: list[str]
    candidates: list[Candidate]
    target: float
    seed: int
    model: Any = None
    folder: Path = Path(".")
    jobs: list[Job] = field(default_factory=list)


def _model_label(job: Job, main: ModelRef) -> Callable[[str | None], str]:
    def label(name: str | None) -> str:
        if name is not None:
            return name
        for key, ref in job.models.items():
            if ref == main:
                return key
        return str(main)

    return label


def prepare(
    job_path: Path,
    *,
    labels: Path,
    target: float,
    step: str | None,
    sample: int,
    seed: int,
    key_column: str | None,
    label_column: str | None,
    model: Any,
    candidates: str | None,
    store_path: Path,
) -> Plan:
    """Check every input and build the candidates' jobs; raise :class:`UserError` on a problem."""
    if not 0.0 <= target <= 1.0:
        raise CalibrationError(f"--target must be between 0 and 1 (e.g. 0.95), got {target:g}")
    if sample < 1:
        raise CalibrationError(f"--sample must be at least 1, got {sample}")
    job = Job.load(job_path)
    names = [s.name for s in job.steps]
    if step is None:
        the_step = job.steps[-1]
    else:
        found = [s for s in job.steps if s.name == step]
        if not found:
            raise CalibrationError(
                f"--step: job `{job.name}` has no step `{step}`{suggest(step, names) or '.'} "
                f"Steps: {', '.join(names)}."
            )
        the_step = found[0]
    key = key_column or job.key
    if key is None:
        raise CalibrationError(
            f"job `{job.name}` has no `key:` column to match labels to rows; give --key-column"
        )
    main = ModelRef.parse(model) if model is not None else job.model

    cols, rows = _labels.read_labels(labels, key, CalibrationError)
    lab = label_column or (the_step.name if the_step.name in cols else "label")
    if lab not in cols:
        wanted = f"`{lab}`" if label_column else f"`{the_step.name}` or `label`"
        raise CalibrationError(
            f"labels file {labels.name} has no label column {wanted}{suggest(lab, cols) or '.'} "
            f"Its columns: {', '.join(cols)}; give --label-column"
        )
    truth: dict[str, Any] = {k: r[lab] for k, r in rows.items() if not _labels.blank(r.get(lab))}
    if not truth:
        raise CalibrationError(f"labels file {labels.name} has no row with both `{key}` and `{lab}`")

    columns, by_key = _labels.source_rows(job, key, truth, labels.name, CalibrationError)
    order = list(by_key)
    chosen = set(random.Random(seed).sample(order, min(sample, len(order))))
    sample_rows = [by_key[k] for k in order if k in chosen]

    strategies = read_candidates(candidates) if candidates else default_grid(job, the_step)
    label = _model_label(job, main)
    seen: set[str] = set()
    cands: list[Candidate] = []
    own = _identity(the_step.strategy, job, main)
    for s in strategies:
        ident = _identity(s, job, main)
        if ident in seen:
            continue
        seen.add(ident)
        cands.append(Candidate(s, describe(s, label), current=ident == own))

    digest = hashlib.sha256(
        json.dumps([job.name, the_step.name, key, sorted(chosen)]).encode()
    ).hexdigest()[:12]
    folder = scratch_folder(store_path, job.base_dir) / "calibrate" / f"{job.name}-{digest}"
    plan = Plan(
        job=job, step=the_step, key_column=key, label_column=lab, labels_path=labels,
        labels={k: truth[k] for k in chosen}, labeled=len(truth), overlap=len(order), sample_rows=sample_rows,
        columns=columns, candidates=cands, target=target, seed=seed, model=model,
        folder=folder,
    )
    plan.jobs = [_candidate_job(plan, c.strategy, i) for i, c in enumerate(cands)]
    return plan


def _candidate_job(plan: Plan, strategy: Strategy, i: int) -> Job:
    """The job with the step's strategy replaced, the sample as source and a sink in the folder."""
    data = plan.job.model_dump(mode="json")
    data["name"] = f"{plan.job.name}.calibrate"
    data["key"] = plan.key_column
    data["source"] = {"path": str(plan.folder / "sample.jsonl")}
    data["sink"] = {"path": str(plan.folder / f"candidate-{i + 1:02d}.jsonl")}
    for s in data["steps"]:
        if s["name"] == plan.step.name:
            s["strategy"] = strategy.model_dump(mode="json")
    try:
        return Job.from_dict(data, base_dir=plan.job.base_dir, origin=f"candidate {describe_plain(strategy)}")
    except UserError as e:
        raise CalibrationError(str(e)) from None


def describe_plain(s: Strategy) -> str:
    return json.dumps(strategy_spec(s))


def _write_sample(plan: Plan) -> None:
    plan.folder.mkdir(parents=True, exist_ok=True)
    path = plan.folder / "sample.jsonl"
    text = "".join(
        json.dumps({c: r.get(c) for c in plan.columns}, ensure_ascii=False, default=str) + "\n"
        for r in plan.sample_rows
    )
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")


def measure(store: Store, plan: Plan, run_id: str, status: str, c: Candidate) -> Measured:
    """Accuracy of one candidate's run against the labels, and what its calls cost."""
    step = plan.step
    counts = store.counts(run_id)
    correct = 0
    for state in ("done", "skipped"):  # a filter step's answer stands in a skipped row too
        for chunk in store.iter_records(run_id, state):
            for r in chunk:
                outs = r.outputs or {}
                if r.key not in plan.labels or outs.get(step.name) is None:
                    continue
                cols = step.to_columns(outs[step.name])
                value = next(iter(cols.values())) if len(cols) == 1 else cols
                correct += matches(value, plan.labels[r.key])
    spend = store.run_spend(run_id)
    rows = len(plan.labels)
    return Measured(
        candidate=c, run=run_id, status=status, rows=rows, correct=correct,
        held=counts.get("review", 0), quarantined=counts.get("quarantined", 0),
        not_written=rows - counts.get("done", 0), calls=spend.calls,
        input_tokens=spend.input_tokens, output_tokens=spend.output_tokens,
        cost=spend.cost, target=plan.target,
    )


async def calibrate_async(
    plan: Plan, store: Store, progress: Callable[[int, int, Measured], None] | None = None,
    handle_signals: bool = False,
) -> Report:
    """Run every candidate on the sample and measure it; the report's results are cheapest first."""
    _write_sample(plan)
    report = Report(
        job=plan.job.name, step=plan.step.name, target=plan.target, labels=str(plan.labels_path),
        label_column=plan.label_column, key_column=plan.key_column, labeled=plan.labeled,
        overlap=plan.overlap, rows=len(plan.sample_rows), seed=plan.seed,
    )
    try:
        for i, (c, job) in enumerate(zip(plan.candidates, plan.jobs)):
            result = await run_async(job, model=plan.model, store=store, handle_signals=handle_signals)
            if result.status == "interrupted":
                raise Interrupted(f"interrupted while measuring {c.label}")
            if result.status == "failed":
                raise UserError(f"{c.label}: {result.stop_reason}")
            m = measure(store, plan, result.run, result.status, c)
            report.results.append(m)
            if progress:
                progress(i + 1, len(plan.candidates), m)
    finally:
        shutil.rmtree(plan.folder, ignore_errors=True)
        with contextlib.suppress(OSError):
            plan.folder.parent.rmdir()  # only when no other calibration is using it
    report.results.sort(key=Measured.sort_key)
    return report
