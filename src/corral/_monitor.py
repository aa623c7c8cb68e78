"""Monitoring: does tonight's run look like last night's?

:func:`profile` sums up a run's answers: per step output field, its null rate and its label mix
(a text field with at most :data:`MAX_LABELS` distinct values) or its mean (a numeric field); per
run, the shares of rows held for review, quarantined and skipped, and the shares of calls cut
off (``truncated``) or refused. :func:`check` compares it with the last finished run of the same
job (:func:`previous_run`) against the job's ``monitor:`` thresholds and returns one readable line
per thing that moved. Label drift is the total variation distance between the two label mixes
(half the sum of the absolute differences of the shares: 0 for the same mix, 1 for disjoint
ones). Runs with fewer than ``min_rows`` answered rows are not compared (too few to tell noise
from drift).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from corral.store.base import RunInfo, Store

#: a text field with at most this many distinct values is a label field (its mix is compared)
MAX_LABELS = 50
#: the record states whose answers are profiled
ANSWERED = ("done", "review", "skipped")


class MonitorSpec(BaseModel):
    """The job's ``monitor:`` section: when a finished run is compared with the previous one."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(default=True, description="compare each finished run with the previous one")
    label_drift: float = Field(
        default=0.2, gt=0, le=1, description="warn when a label field's mix moves by more than this "
                                             "total variation distance")
    null_rate: float = Field(default=0.1, gt=0, le=1, description="warn when a field's share of nulls rises by more than this")
    review_rate: float = Field(default=0.1, gt=0, le=1, description="warn when the share of rows held for review rises by more than this")
    quarantine_rate: float = Field(default=0.05, gt=0, le=1, description="warn when the share of quarantined rows rises by more than this")
    call_problem_rate: float = Field(
        default=0.05, gt=0, le=1, description="warn when the share of truncated or refused calls rises by more than this")
    mean_shift: float = Field(
        default=0.25, gt=0, description="warn when a numeric field's mean moves by more than this share of the previous mean")
    min_rows: int = Field(default=30, ge=1, description="compare only runs with at least this many answered rows")


@dataclass(slots=True)
class FieldProfile:
    """One output field of one step: how many answered rows, how many null, its labels or mean."""

    values: int = 0
    nulls: int = 0
    labels: Counter[str] = field(default_factory=Counter)
    numbers: list[float] = field(default_factory=list)
    text: bool = False  # some value is text (a label field while distinct values stay few)
    free: bool = False  # more than MAX_LABELS distinct texts: free text, its values not counted

    @property
    def null_rate(self) -> float:
        return self.nulls / self.values if self.values else 0.0

    @property
    def is_label(self) -> bool:
        return self.text and not self.free and bool(self.labels)

    def mix(self) -> dict[str, float]:
        n = sum(self.labels.values())
        return {k: v / n for k, v in self.labels.most_common()} if n else {}

    @property
    def mean(self) -> float | None:
        return sum(self.numbers) / len(self.numbers) if self.numbers else None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"values": self.values, "null_rate": round(self.null_rate, 4)}
        if self.is_label:
            out["labels"] = {k: round(v, 4) for k, v in self.mix().items()}
        elif self.numbers and not self.text:
            out["mean"] = self.mean
        return out


@dataclass(slots=True)
class RunProfile:
    """A run's answers summed up (see the module's docstring)."""

    run: str
    rows: int  # rows in a final state
    answered: int  # rows with answers (done, review, skipped)
    rates: dict[str, float]  # review, quarantined, skipped (of rows); truncated, refused (of calls)
    fields: dict[str, FieldProfile]  # "step.field" (or "step" for a step with one value)

    def to_json(self) -> dict[str, Any]:
        return {
            "run": self.run, "rows": self.rows, "answered": self.answered,
            "rates": {k: round(v, 4) for k, v in self.rates.items()},
            "fields": {k: f.to_json() for k, f in self.fields.items()},
        }


def profile(store: Store, run: RunInfo) -> RunProfile:
    """The run's answers summed up: per step field, per run (see the module's docstring)."""
    counts = store.counts(run.id)
    final = sum(n for s, n in counts.items() if s not in ("pending", "leased"))
    fields: dict[str, FieldProfile] = {}
    answered = 0
    for state in ANSWERED:
        for chunk in store.iter_records(run.id, state):
            for rec in chunk:
                answered += 1
                for step, value in (rec.outputs or {}).items():
                    items = value.items() if isinstance(value, dict) else [(None, value)]
                    for name, v in items:
                        if isinstance(v, (dict, list)):
                            continue  # nested values are not profiled
                        _add(fields.setdefault(step if name is None else f"{step}.{name}", FieldProfile()), v)
    outcomes = store.outcome_counts(run.id)
    calls = sum(n for o, n in outcomes.items() if o in _CALLS) or 0
    rates = {s: (counts.get(k, 0) / final if final else 0.0)
             for s, k in (("review", "review"), ("quarantined", "quarantined"), ("skipped", "skipped"))}
    for o in ("truncated", "refused"):
        rates[o] = outcomes.get(o, 0) / calls if calls else 0.0
    return RunProfile(run.id, final, answered, rates, fields)


#: trace outcomes of a call that got an answer or a finish reason (what truncation and refusal
#: rates are shares of)
_CALLS = ("ok", "checks", "truncated", "refused", "invalid")


def _add(f: FieldProfile, v: Any) -> None:
    f.values += 1
    if v is None or v == "":
        f.nulls += 1
    elif isinstance(v, bool):
        f.text = True
        f.labels[str(v).lower()] += 1
    elif isinstance(v, (int, float)):
        f.numbers.append(float(v))
    else:
        f.text = True
        if f.free:
            return
        f.labels[str(v)] += 1
        if len(f.labels) > MAX_LABELS:  # free text, not a label field: stop counting values
            f.free = True
            f.labels.clear()


#: the key of a run's stored spec that keeps the warnings monitoring raised about it
WARNED = "monitor_warnings"


def previous_run(store: Store, run: RunInfo) -> RunInfo | None:
    """The job's baseline for ``run``: its last finished run before this one (another run id)
    that monitoring did not warn about, so a drifted night is not tomorrow's normal. None for
    the job's first run."""
    for other in store.find_runs(run.job_name):
        if other.id != run.id and other.job_name == run.job_name and other.status == "finished" \
                and other.updated_at <= run.updated_at and not (other.spec or {}).get(WARNED):
            return other
    return None


def distance(a: dict[str, float], b: dict[str, float]) -> float:
    """Total variation distance between two label mixes (shares summing to 1)."""
    return sum(abs(a.get(k, 0.0) - b.get(k, 0.0)) for k in set(a) | set(b)) / 2


def check(now: RunProfile, before: RunProfile, spec: MonitorSpec) -> list[str]:
    """One line per thing that moved beyond the thresholds, from ``before`` to ``now``; none
    when either run has fewer than ``spec.min_rows`` answered rows."""
    if now.answered < spec.min_rows or before.answered < spec.min_rows:
        return []
    out: list[str] = []
    for name, f in now.fields.items():
        prev = before.fields.get(name)
        if prev is None:
            continue
        if f.is_label and prev.is_label:
            d = distance(f.mix(), prev.mix())
            if d > spec.label_drift:
                out.append(f"label drift in `{name}`: distance {d:.2f} > {spec.label_drift:g} "
                           f"({_shares(prev.mix())} -> {_shares(f.mix())})")
        elif f.mean is not None and prev.mean is not None and not f.text and not prev.text:
            base = abs(prev.mean) or 1.0
            if abs(f.mean - prev.mean) / base > spec.mean_shift:
                out.append(f"mean of `{name}` moved from {prev.mean:.4g} to {f.mean:.4g} "
                           f"(more than {spec.mean_shift:.0%} of the previous mean)")
        rise = f.null_rate - prev.null_rate
        if rise > spec.null_rate:
            out.append(f"nulls in `{name}` rose from {prev.null_rate:.1%} to {f.null_rate:.1%} "
                       f"(more than {spec.null_rate:.0%} points)")
    for rate, limit in (("review", spec.review_rate), ("quarantined", spec.quarantine_rate),
                        ("truncated", spec.call_problem_rate), ("refused", spec.call_problem_rate)):
        a, b = before.rates.get(rate, 0.0), now.rates.get(rate, 0.0)
        if b - a > limit:
            what = "rows" if rate in ("review", "quarantined") else "calls"
            out.append(f"{rate} {what} rose from {a:.1%} to {b:.1%} (more than {limit:.0%} points)")
    return out


def _shares(mix: dict[str, float], n: int = 4) -> str:
    shown = [f"{k} {v:.0%}" for k, v in list(mix.items())[:n]]
    return ", ".join(shown) + (", ..." if len(mix) > n else "")


def monitor(store: Store, run: RunInfo, spec: MonitorSpec | None, record: bool = True) -> dict[str, Any]:
    """What the summary reports under ``monitor``: the run compared with, and the warnings.
    With ``record``, the warnings are kept with the run (a run warned about is no baseline)."""
    if spec is None or not spec.enabled:
        return {"compared_with": None, "warnings": []}
    before = previous_run(store, run)
    warnings = [] if before is None else check(profile(store, run), profile(store, before), spec)
    if record and bool(warnings) != bool((run.spec or {}).get(WARNED)):
        store.update_run(run.id, spec={**(run.spec or {}), WARNED: warnings})
    return {"compared_with": None if before is None else before.id, "warnings": warnings}


def spec_of(run: RunInfo) -> MonitorSpec:
    """The ``monitor:`` section the run's job was stored with (the defaults when it had none)."""
    raw = (run.spec or {}).get("monitor")
    try:
        return MonitorSpec.model_validate(raw or {})
    except ValueError:
        return MonitorSpec()
