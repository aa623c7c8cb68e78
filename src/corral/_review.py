"""The review queue: the rows a run held for a person, and the person's decisions on them.

A row is held (state ``review``) with a reason and the best answers reached. A person decides:

- ``accept``: the held answers are written; the record becomes ``done``;
- ``edit``: corrected answers, checked as a model's answer is (the step's output schema, its
  field rules and its ``checks:``), are written; the record becomes ``done``;
- ``reject``: the record is quarantined, its reason ``rejected in review by NAME``.

Each decision is kept in the store (:class:`~corral.store.base.ReviewDecision`: who, when, what
was written, the record's state and reason before) and in the record's trace (a ``reviewed``
event), and the run's sinks are written again from the store -- once for a batch of decisions
(:func:`decide_many`). The run's counts stay whole (a record moves from one state to another), and a
later ``corral run`` of the job resumes the run without touching a decided record, which is
final. The job is built again from the run's stored spec and folder, or from ``job=``.

This is the API ``corral review`` and ``corral serve``'s review page call; its signatures are
kept stable.
"""

from __future__ import annotations

import getpass
import json
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker

from corral._ingest import job_spec
from corral._outputs import Plan, plan, prepare, write_outputs
from corral._registry import suggest
from corral.errors import InvalidEditError, NotHeldError, ReviewError, UserError
from corral.io import Column, SinkSpec, open_sink, open_source
from corral.job import Job
from corral.store.base import AttemptRecord, RecordRow, ReviewDecision, RunInfo, Store
from corral.tasks.base import Step

__all__ = [
    "ACTIONS", "LABEL_FORMATS", "REVIEWER_ENV", "Decision", "HeldRow", "decide", "decide_many",
    "decisions", "export_labels", "held", "held_row", "labels", "load_job", "reviewer", "rewrite",
]

#: what a person can decide about a held row
ACTIONS = ("accept", "edit", "reject")
#: the environment variable naming the reviewer when ``who`` is not given
REVIEWER_ENV = "CORRAL_REVIEWER"

#: a decision as the store keeps it
Decision = ReviewDecision

_DONE = {"accept": "accepted", "edit": "edited", "reject": "rejected"}


@dataclass(slots=True)
class HeldRow:
    """A record held for review (or one decided since): its input, why it was held, the answers
    it was held with, and the decision on it."""

    key: str
    ordinal: int
    line: int | None  # the source line, when the source has lines
    state: str  # ``review`` while held; ``done`` or ``quarantined`` once decided
    reason: str | None  # why it was held (kept after a decision)
    data: dict[str, Any] | None  # the input row
    #: step name -> the step's output the row holds (the held answers; the written ones once decided)
    answers: dict[str, Any]
    #: steps the row has no answer for (held before they ran): accept refuses, edit must give them
    missing: list[str] = field(default_factory=list)
    decision: Decision | None = None  # the latest decision on it

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key, "ordinal": self.ordinal, "line": self.line, "state": self.state,
            "reason": self.reason, "input": self.data, "answers": self.answers, "missing": self.missing,
            "decision": None if self.decision is None else decision_json(self.decision),
        }


def decision_json(d: Decision) -> dict[str, Any]:
    """A decision as ``--json`` prints it: the stored fields, and ``when`` (ISO 8601, local)."""
    return {**d.to_json(), "when": when(d.at)}


def when(at: float) -> str:
    """A time as a person reads it: ISO 8601 to the second, with the local offset
    (``2025-06-01 13:45:01+02:00``)."""
    import datetime as dt

    return dt.datetime.fromtimestamp(at).astimezone().isoformat(sep=" ", timespec="seconds")


def reviewer(who: str | None = None) -> str:
    """Who decides: ``who``, else ``$CORRAL_REVIEWER``, else the OS user."""
    for name in (who, os.environ.get(REVIEWER_ENV)):
        if name and name.strip():
            return name.strip()
    try:
        return getpass.getuser()
    except Exception:  # no user name in the environment or the password database
        return "unknown"


# --- reading the queue -------------------------------------------------------------------------


def _run(store: Store, run: RunInfo | str) -> RunInfo:
    if isinstance(run, RunInfo):
        return run
    from corral._eval import resolve_run

    return resolve_run(store, run)


def _steps(info: RunInfo) -> list[str]:
    return [str(s.get("name")) for s in (info.spec.get("steps") or []) if isinstance(s, dict)]


def _row(info: RunInfo, rec: RecordRow, decision: Decision | None) -> HeldRow:
    answers = dict(rec.outputs or {})
    reason = rec.reason if decision is None else decision.prev_reason
    return HeldRow(rec.key, rec.ordinal, rec.line, rec.state, reason, rec.data, answers,
                   [s for s in _steps(info) if s not in answers], decision)


def held(store: Store, run: RunInfo | str, *, decided: bool = False) -> list[HeldRow]:
    """The rows ``run`` holds for review, in source order; with ``decided``, the rows decided
    since too (in their state now, with their decision)."""
    info = _run(store, run)
    last: dict[str, Decision] = {}
    for d in store.decisions(info.id):
        last[d.key] = d
    rows = [_row(info, r, last.get(r.key)) for chunk in store.iter_records(info.id, "review") for r in chunk]
    if decided:
        keys = {r.key for r in rows}
        for key, d in last.items():
            rec = store.record(info.id, key)
            if rec is not None and key not in keys:
                rows.append(_row(info, rec, d))
        rows.sort(key=lambda r: r.ordinal)
    return rows


def held_row(store: Store, run: RunInfo | str, key: str) -> HeldRow:
    """One record held for review, or decided: NotHeldError when the run has no such record or
    it was never held."""
    info = _run(store, run)
    rec = store.record(info.id, key)
    if rec is None:
        raise _no_record(info, key)
    made = store.decisions(info.id, key)
    if rec.state != "review" and not made:
        raise NotHeldError(f"record `{key}` of run {info.id} is {rec.state}, not held for review; "
                           f"`corral review list {info.id}` lists the held rows")
    return _row(info, rec, made[-1] if made else None)


def decisions(store: Store, run: RunInfo | str, key: str | None = None) -> list[Decision]:
    """The decisions made on ``run``'s held rows (on ``key``'s when given), in order."""
    return store.decisions(_run(store, run).id, key)


def _no_record(info: RunInfo, key: str) -> NotHeldError:
    return NotHeldError(f"run {info.id} has no record with key `{key}` — keys are the job's `key:` "
                        f"column values; `corral review list {info.id}` lists the held rows")


# --- the job, for checking edits and writing the sinks ---------------------------------------------


def load_job(run: RunInfo, job: Job | str | Path | None = None) -> Job:
    """The job ``run`` ran, its steps bound: ``job`` (a :class:`Job`, taken as it is, or a job
    file, which must be that run's job), else the job the run keeps in the store, read from the folder it was run
    from. ReviewError, with the fix, when neither can be had."""
    if isinstance(job, Job):  # the caller's, taken as it is (bound again: binding is idempotent)
        _bind(job, run)
        return job
    if job is not None:
        j = Job.load(job)
        _bind(j, run)
        if j.spec_hash() != run.spec_hash:
            raise ReviewError(
                f"{job} is not the job run {run.id} ran (its name, key, source or steps "
                "differ); give the job file that run ran")
        return j
    folder = run.spec.get("job_dir")
    if not folder:
        raise ReviewError(f"run {run.id} was stored before runs kept their job's folder; give its "
                          "job file with --job JOB.yaml")
    try:
        j = Job.from_dict(job_spec(run), base_dir=Path(str(folder)), origin=f"run {run.id}")
    except UserError as e:
        raise ReviewError(f"run {run.id}'s stored job cannot be read ({e}); give its job file with "
                          "--job JOB.yaml") from None
    _bind(j, run)
    return j


def _bind(job: Job, run: RunInfo) -> None:
    try:
        for step in job.steps:
            for variant in step.variants():
                variant.bind(job.base_dir, job.source)
    except UserError as e:
        raise ReviewError(f"the job of run {run.id} cannot be set up from {job.base_dir} ({e}); "
                          "give its job file with --job JOB.yaml") from None


def _prepared(run: RunInfo, job: Job) -> Plan:
    try:
        return prepare(job)[1]
    except UserError as e:
        raise ReviewError(
            f"cannot write the outputs of run {run.id} ({e}); put the source back where the job "
            f"reads it, or give the job file with --job JOB.yaml") from None


def rewrite(store: Store, run: RunInfo | str, job: Job | str | Path | None = None) -> dict[str, str] | None:
    """Write ``run``'s sinks again from the store (the sink, quarantine, review and skipped
    files); return their paths by kind. None when the run is not finished: its sinks are
    written when ``corral run`` finishes it."""
    return _writer(store, _run(store, run), job)()


def _writer(store: Store, info: RunInfo, job: Job | str | Path | None) -> Callable[[], dict[str, str] | None]:
    """What writes the run's sinks, set up now: the job built, its source opened and its sinks
    found writable before any decision is applied (ReviewError, with the fix, when not)."""
    if info.status not in ("finished", "preview"):
        return lambda: None
    j = load_job(info, job)
    the_plan = _prepared(info, j)

    def write() -> dict[str, str]:
        outputs = write_outputs(store, info, j, the_plan, None)
        if outputs != info.outputs:
            store.update_run(info.id, outputs=outputs)
        return outputs

    return write


# --- deciding ------------------------------------------------------------------------------------


def decide(
    store: Store, run: RunInfo | str, key: str, action: str, *, who: str | None = None,
    answer: Mapping[str, Any] | None = None, note: str | None = None,
    job: Job | str | Path | None = None, write: bool = True,
) -> Decision:
    """Decide about one held row (``action``: accept, edit or reject) and, with ``write``, write
    the run's sinks again. ``who`` defaults to :func:`reviewer`'s.

    ``answer`` (edit only) says what to change, by name: ``STEP.FIELD`` (a field of the step's
    answer), ``FIELD`` (a field only one step's answer has), or ``STEP`` (its whole answer as a
    mapping, or the value of an answer with one field, such as a classify step's label). A text
    value for a field that is not text is read as JSON (``12.5``, ``true``, ``null``, ``["a"]``).
    Raises NotHeldError (no such record, or not held), InvalidEditError (the edited answer breaks
    the step's schema or checks), ReviewError (anything else the decision needs)."""
    info = _run(store, run)
    if action not in ACTIONS:
        raise ReviewError(f"unknown review action `{action}`; choose one of {', '.join(ACTIONS)}")
    if (answer is not None) != (action == "edit"):
        raise ReviewError("an edit needs the corrected answer (--set FIELD=VALUE or --answer JSON)"
                          if action == "edit" else f"{action} takes no answer; to change the answer, edit the row")
    rec = store.record(info.id, key)
    if rec is None:
        raise _no_record(info, key)
    if rec.state != "review":
        raise _not_held(store, info, rec)
    j = load_job(info, job) if action == "edit" or write else None
    d = _decision(info, rec, action, reviewer(who), note, answer, j)
    writer = _writer(store, info, j) if write else None
    applied = store.apply_decisions([d], [_event(d)])
    if not applied:  # decided by someone else meanwhile
        raise _not_held(store, info, store.record(info.id, key) or rec)
    if writer is not None:
        writer()
    return applied[0]


def decide_many(
    store: Store, run: RunInfo | str, keys: Iterable[str] | None, action: str, *,
    who: str | None = None, note: str | None = None, job: Job | str | Path | None = None,
    write: bool = True,
) -> tuple[list[Decision], list[HeldRow]]:
    """Accept or reject several held rows at once (``keys``; None: every held row), then write
    the sinks once. Named keys are checked before anything is decided (NotHeldError, ReviewError);
    with ``keys=None``, accept leaves the rows it cannot accept (held before some step answered)
    held. Returns the decisions made and the rows left held."""
    info = _run(store, run)
    if action not in ("accept", "reject"):
        raise ReviewError(f"{action} decides one row at a time; several rows can be accepted or rejected")
    everyone = keys is None
    if keys is None:
        recs = [r for chunk in store.iter_records(info.id, "review") for r in chunk]
    else:
        recs = []
        for key in dict.fromkeys(keys):
            rec = store.record(info.id, key)
            if rec is None:
                raise _no_record(info, key)
            if rec.state != "review":
                raise _not_held(store, info, rec)
            recs.append(rec)
    name = reviewer(who)
    todo: list[Decision] = []
    left: list[HeldRow] = []
    for rec in recs:
        try:
            todo.append(_decision(info, rec, action, name, note, None, None))
        except ReviewError:
            if not everyone:
                raise
            left.append(_row(info, rec, None))
    writer = _writer(store, info, job) if write and todo else None
    applied = store.apply_decisions(todo, [_event(d) for d in todo]) if todo else []
    if writer is not None and applied:
        writer()
    return applied, left


def _not_held(store: Store, info: RunInfo, rec: RecordRow) -> NotHeldError:
    made = store.decisions(info.id, rec.key)
    if made:
        d = made[-1]
        return NotHeldError(f"record `{rec.key}` of run {info.id} was {_DONE[d.action]} by {d.who} at "
                            f"{when(d.at)}; it is {rec.state}, no longer held for review")
    return NotHeldError(f"record `{rec.key}` of run {info.id} is {rec.state}, not held for review; "
                        f"`corral review list {info.id}` lists the held rows")


def _decision(
    info: RunInfo, rec: RecordRow, action: str, who: str, note: str | None,
    answer: Mapping[str, Any] | None, job: Job | None,
) -> Decision:
    """The decision about one held record (not yet applied)."""
    now = time.time()
    note = note.strip() if note and note.strip() else None
    outputs = dict(rec.outputs or {})

    def made(state: str, written: dict[str, Any] | None, reason: str | None) -> Decision:
        return Decision(info.id, rec.key, action, who, now, state, written, reason, note,
                        rec.state, rec.reason)

    if action == "reject":
        reason = f"rejected in review by {who}" + (f": {note}" if note else "")
        if rec.reason:
            reason += f" (held: {rec.reason})"
        return made("quarantined", outputs or None, reason)
    if action == "edit":
        assert job is not None and answer is not None
        outputs = _edited(job, rec, outputs, answer)
    missing = [s for s in _steps(info) if s not in outputs]
    if missing:
        names = ", ".join(f"`{s}`" for s in missing)
        if action == "edit":
            raise InvalidEditError(f"record `{rec.key}`: step {names} still has no answer; set it "
                                   f"too (--set {missing[0]}.FIELD=VALUE)")
        raise ReviewError(f"record `{rec.key}` was held before step {names} answered: accepting it "
                          f"would write it without; give the answer with `corral review edit {info.id} "
                          f"{rec.key} --set {missing[0]}.FIELD=VALUE`, or reject it")
    return made("done", outputs, None)


def _event(d: Decision) -> AttemptRecord:
    """The decision as a ``reviewed`` event of the record's trace (``corral show`` prints it)."""
    detail = f"{_DONE[d.action]} by {d.who} at {when(d.at)}" + (f": {d.note}" if d.note else "")
    data: dict[str, Any] = {"action": d.action, "who": d.who, "at": d.at, "note": d.note}
    if d.action == "edit":
        data["written"] = d.outputs
    return AttemptRecord(d.run_id, d.key, "review", 0, None, "reviewed", detail,
                         json.dumps(data, ensure_ascii=False, default=str))


# --- edits -----------------------------------------------------------------------------------------


def _edited(job: Job, rec: RecordRow, outputs: dict[str, Any], answer: Mapping[str, Any]) -> dict[str, Any]:
    """The record's step outputs with the edited answers in them, each checked as a model's
    answer is: InvalidEditError for a name no step has, or an answer that breaks its step's
    schema, field rules or checks."""
    steps: list[Step] = job.steps
    if not answer:
        raise InvalidEditError("the edit changes nothing: give at least one --set FIELD=VALUE")
    changes: dict[str, dict[str, Any]] = {}  # step -> field -> value
    whole: dict[str, dict[str, Any]] = {}  # step -> its whole answer
    for name, value in answer.items():
        step, fld = _target(steps, str(name), value)
        if fld is None:
            whole[step.name] = dict(value)
        else:
            changes.setdefault(step.name, {})[fld] = value
    context: dict[str, Any] = dict(rec.data or {})
    out = dict(outputs)
    for step in steps:
        if step.name in changes or step.name in whole:
            ans = whole.get(step.name) or _answer_of(step, out.get(step.name))
            schema = _schema(step, context)
            props = schema.get("properties") or {}
            for fld, value in changes.get(step.name, {}).items():
                ans[fld] = _coerce(value, props.get(fld) or {})
            _check(step, rec.key, ans, schema, context)
            out[step.name] = step.value(ans)
        if step.name in out:
            context[step.name] = out[step.name]
    return out


def _target(steps: list[Step], name: str, value: Any) -> tuple[Step, str | None]:
    """Which step (and field of its answer; None: the whole answer) ``name`` means."""
    by_name = {s.name: s for s in steps}
    head, dot, tail = name.partition(".")
    if dot and head in by_name:
        fields = _fields(by_name[head])
        if fields and tail not in fields:
            raise InvalidEditError(f"step `{head}` has no answer field `{tail}`{suggest(tail, fields) or '.'} "
                                   f"Its fields: {', '.join(fields)}")
        return by_name[head], tail
    if name in by_name:
        step = by_name[name]
        if isinstance(value, Mapping):
            return step, None
        fields = _fields(step)
        if len(fields) == 1:
            return step, fields[0]
        raise InvalidEditError(f"step `{name}`'s answer has the fields {', '.join(fields)}; set one "
                               f"of them, e.g. --set {name}.{fields[0]}=VALUE")
    owners = [s for s in steps if name in _fields(s)]
    if len(owners) == 1:
        return owners[0], name
    if len(owners) > 1:
        raise InvalidEditError(f"`{name}` is a field of steps {', '.join(f'`{s.name}`' for s in owners)}; "
                               f"say which, e.g. --set {owners[0].name}.{name}=VALUE")
    known = [s.name for s in steps] + [f for s in steps for f in _fields(s)]
    raise InvalidEditError(f"no step or answer field is named `{name}`{suggest(name, known) or '.'} "
                           f"Steps: {', '.join(s.name for s in steps)}; fields: "
                           f"{', '.join(f'{s.name}.{f}' for s in steps for f in _fields(s))}")


def _fields(step: Step) -> list[str]:
    return list((step.output_schema().get("properties") or {}).keys())


def _answer_of(step: Step, value: Any) -> dict[str, Any]:
    """A step's answer from its stored output (the answer itself, or the one field it keeps)."""
    if value is None:
        return {}
    if isinstance(value, dict):
        return dict(value)
    fields = _fields(step)
    return {fields[0]: value} if len(fields) == 1 else {}


def _schema(step: Step, context: dict[str, Any]) -> dict[str, Any]:
    """The schema the row's answer is checked against: the one the step asks this row with (a
    reference list's candidates, say), else the step's own."""
    schema = step.output_schema()
    try:
        parts = step.split(context)
        if len(parts) == 1:
            schema = step.render(parts[0]).schema or schema
    except Exception:  # a row the step cannot render on its own: its general schema
        pass
    return step.validation_schema(schema)


def _coerce(value: Any, prop: dict[str, Any]) -> Any:
    """A value given as text, read as JSON where its field does not take text."""
    if not isinstance(value, str):
        return value
    kinds = prop.get("type")
    kinds = [kinds] if isinstance(kinds, str) else list(kinds or [])
    enum = prop.get("enum")
    if "string" in kinds or (enum is not None and value in enum) or (not kinds and enum is None):
        return value
    if value.strip() == "" and ("null" in kinds or (enum is not None and None in enum)):
        return None
    try:
        return json.loads(value)
    except ValueError:
        return value  # the schema says what is wrong with it


def _check(step: Step, key: str, answer: dict[str, Any], schema: dict[str, Any], context: dict[str, Any]) -> None:
    validator = Draft202012Validator(schema, format_checker=FormatChecker())
    errors = sorted(validator.iter_errors(answer), key=lambda e: list(e.path))
    if errors:
        err = errors[0]
        where = "/".join(str(p) for p in err.path) or "answer"
        raise InvalidEditError(f"record `{key}`, step `{step.name}`: the edited answer breaks the schema "
                               f"at {where}: {err.message}; give a value the step allows")
    problems = step.failed_checks(answer, context)
    if problems:
        raise InvalidEditError(f"record `{key}`, step `{step.name}`: the edited answer does not pass "
                               f"the step's checks ({'; '.join(problems)}); give an answer that does")


# --- labels: what people accepted or corrected, for corral eval and System 1 -------------------------

#: the formats :func:`export_labels` writes (those ``corral eval --labels`` and ``system1: labels:`` read)
LABEL_FORMATS = (".csv", ".tsv", ".jsonl")
#: the columns a labels row ends with: the decision, who made it, and when
DECISION_COLUMNS = ("_decision", "_by", "_when")


def labels(
    store: Store, run: RunInfo | str, job: Job | str | Path | None = None
) -> tuple[list[Column], list[dict[str, Any]]]:
    """The rows people accepted or edited (and that are written now), as labeled rows: the key
    column (the job's ``key:``, else ``_key``), the input columns, the gold columns named as
    the sink's output columns (a classify step ``category``: the column ``category``), then
    :data:`DECISION_COLUMNS`. In source order."""
    info = _run(store, run)
    j = load_job(info, job)
    try:
        the_plan = plan(j, open_source(j.source, j.base_dir))
    except UserError as e:
        raise ReviewError(f"cannot read the source of run {info.id} ({e}); put it back where the job "
                          "reads it, or give the job file with --job JOB.yaml") from None
    last: dict[str, Decision] = {}
    for d in store.decisions(info.id):
        last[d.key] = d
    steps: list[Step] = j.steps
    key_col = j.key or "_key"
    cols = list(the_plan.input_columns)
    if j.key is None:
        cols.append(Column("_key", "string"))
    cols += the_plan.output_columns + [Column(c, "string") for c in DECISION_COLUMNS]
    rows: list[tuple[int, dict[str, Any]]] = []
    for key, d in last.items():
        rec = store.record(info.id, key)
        if d.action not in ("accept", "edit") or rec is None or rec.state != "done":
            continue
        row: dict[str, Any] = dict(rec.data or {})
        row.setdefault(key_col, key)
        outs = rec.outputs or {}
        for step, pairs in zip(steps, the_plan.step_columns):
            value = outs.get(step.name)
            vals = step.to_columns(value) if value is not None else {}
            for col, sink_col in pairs:
                row[sink_col] = vals.get(col)
        row.update({"_decision": d.action, "_by": d.who, "_when": when(d.at)})
        rows.append((rec.ordinal, row))
    rows.sort(key=lambda r: r[0])
    return cols, [r for _, r in rows]


def export_labels(
    store: Store, run: RunInfo | str, path: str | Path, job: Job | str | Path | None = None
) -> int:
    """Write :func:`labels` to ``path`` (``.csv``, ``.tsv`` or ``.jsonl``, replaced whole);
    return how many rows were written."""
    out = Path(path)
    if out.suffix.lower() not in LABEL_FORMATS:
        raise ReviewError(f"labels file {out} must end in {', '.join(LABEL_FORMATS)} (what corral eval "
                          "and System 1 read); rename it")
    info = _run(store, run)
    j = load_job(info, job)
    cols, rows = labels(store, info, j)
    try:
        return open_sink(SinkSpec(path=str(out)), Path.cwd()).write(cols, iter([rows]), j.key or "_key")
    except UserError as e:
        raise ReviewError(str(e)) from None
    except OSError as e:
        raise ReviewError(f"cannot write {out}: {e.strerror or e}; give -o a path you can write") from None
