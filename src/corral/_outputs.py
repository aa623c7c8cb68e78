"""Outputs: how step outputs become sink columns, and the sinks written when a run is complete.

:func:`plan` is worked out before the store is touched (so a step that reads a column that does
not exist is one line naming the fix); :func:`write_outputs` writes the sink (done rows), the
quarantine file, and the skipped and review files when the job can have such rows. Sinks upsert
by key, so writing them again never duplicates a row.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from corral._registry import suggest
from corral.errors import SourceError, UserError
from corral.io import Column, Source, open_quarantine_sink, open_side_sink, open_sink, open_source
from corral.job import Job
from corral.store.base import RecordRow, RunInfo, Store
from corral.tasks.base import Task

Rows = Iterator[list[dict[str, Any]]]


@dataclass(slots=True)
class Plan:
    """How step outputs map to sink columns."""

    input_columns: list[Column]
    output_columns: list[Column]
    #: per step: (step column name, sink column name)
    step_columns: list[list[tuple[str, str]]]

    @property
    def columns(self) -> list[Column]:
        return self.input_columns + self.output_columns


def plan(job: Job, source: Source) -> Plan:
    """The sink's columns: the source's, then each step's (prefixed with the step's name where a
    name is taken). Raises the user's error for a key or a name a step reads that is not there."""
    cols = [c.name for c in source.columns]
    if job.key is not None and job.key not in cols:
        raise SourceError(
            f"key column `{job.key}` is not in {source.path.name}{suggest(job.key, cols) or '.'} "
            f"Columns: {', '.join(cols)}. Fix `key:` in the job file, or remove it to key rows by content."
        )
    steps: list[Task] = job.steps
    _check_names(steps, source, cols)
    used = set(cols)
    out: list[Column] = []
    mapping: list[list[tuple[str, str]]] = []
    for step in steps:
        pairs = []
        for col in step.columns():
            name = col.name
            if name in used:
                name = f"{step.name}_{col.name}"
            n = 2
            while name in used:
                name = f"{step.name}_{col.name}_{n}"
                n += 1
            used.add(name)
            out.append(replace(col, name=name))
            pairs.append((col.name, name))
        mapping.append(pairs)
    return Plan(list(source.columns), out, mapping)


def _check_names(steps: list[Task], source: Source, cols: list[str]) -> None:
    """Every name a step's prompt or ``when:`` reads is a source column or an earlier step."""
    known = set(cols)
    for i, step in enumerate(steps):
        earlier = [s.name for s in steps[:i]]
        later = [s.name for s in steps[i:]]
        # (name read, how the message begins, how the name is shown, what reads it); a `when:`
        # mistake is told as one, not as a placeholder
        reads: list[tuple[Sequence[str], str, str, str]] = [
            ((h,), f"step `{step.name}`: when: uses", "`{}`", "a condition") for h in step.when_names()]
        reads += [(n, f"step `{step.name}` uses", "{{{}}}", "a step") for n in step.names_used()]
        for e in step.routes():  # each expert's own `when:` and template
            who = f"step `{step.name}`: expert `{e.route}`"
            reads += [((h,), f"{who}: when: uses", "`{}`", "a condition") for h in sorted(e.condition.names)]
            reads += [(n, f"{who} uses", "{{{}}}", "a step") for n in e.step.names_used()]
        for name, lead, shown, subject in reads:
            head = name[0]
            if head in known or head in earlier:
                continue
            if head == step.name or head in later:
                what = "its own output" if head == step.name else "the output of a later step"
                raise UserError(
                    f"{lead} {shown.format(head)}, {what}; {subject} can only read source columns "
                    "and earlier steps"
                )
            raise SourceError(
                f"{lead} {shown.format('.'.join(name))}, which is not a column of "
                f"{source.path.name} or an earlier step{suggest(head, cols + earlier) or '.'} "
                f"Columns: {', '.join(cols)}."
            )


def prepare(job: Job) -> tuple[Source, Plan]:
    """The job's source and output plan, with every mistake the job can hold found before the
    store is touched: its steps bound (templates, files), its columns, sinks that can be written."""
    steps: list[Task] = job.steps
    for step in steps:
        for variant in step.variants():  # an expert may read its own files (a reference list)
            variant.bind(job.base_dir, job.source)
    source = open_source(job.source, job.base_dir)
    out = plan(job, source)
    open_sink(job.sink, job.base_dir)  # fail now, not after the work, if it cannot be written
    open_quarantine_sink(job.sink, job.base_dir)
    return source, out


def describe_preview(counts: dict[str, int], limit: int | None, total: int | None) -> str:
    """What the outputs of a ``--limit`` run cover (``total``: the source's rows, if known)."""
    n = sum(counts.values())
    if total is not None:
        return f"--limit {limit}: the first {n:,} of {total:,} rows"
    return f"--limit {limit}: the first {n:,} rows; the source has more"


def write_outputs(store: Store, run: RunInfo, job: Job, plan: Plan, limit: int | None) -> dict[str, str]:
    """Write the run's sinks from the store; return their paths by kind (sink, quarantine,
    skipped, review), as shown to the user."""
    steps: list[Task] = job.steps

    def answered(state: str, tail: Callable[[RecordRow], dict[str, Any]] | None = None) -> Rows:
        """Rows in ``state`` with their steps' columns (and the ``tail`` columns of each record)."""
        for chunk in store.iter_records(run.id, state, below_ordinal=limit):
            rows = []
            for r in chunk:
                row = dict(r.data or {})
                outs = r.outputs or {}
                for step, pairs in zip(steps, plan.step_columns):
                    value = outs.get(step.name)
                    vals = step.to_columns(value) if value is not None else {}
                    for col, sink_col in pairs:
                        row[sink_col] = vals.get(col)
                if tail is not None:
                    row.update(tail(r))
                rows.append(row)
            yield rows

    def why(r: RecordRow) -> dict[str, Any]:
        return {"_key": r.key, "_line": r.line, "_reason": r.reason}

    def set_aside(state: str) -> Rows:
        for chunk in store.iter_records(run.id, state, below_ordinal=limit):
            yield [{**(r.data or {}), **why(r)} for r in chunk]

    key_col = job.key or "_key"
    sink = open_sink(job.sink, job.base_dir)
    q = open_quarantine_sink(job.sink, job.base_dir)
    if job.key is None:  # key-less jobs: the sink's key column is the content key
        cols = plan.columns + [Column("_key", "string")]
        sink.write(cols, answered("done", lambda r: {"_key": r.key}), key_col)
    else:
        sink.write(plan.columns, answered("done"), key_col)
    names = {c.name for c in plan.input_columns}
    extra = [Column("_key", "string"), Column("_line", "integer"), Column("_reason", "string")]
    side_cols = plan.input_columns + [c for c in extra if c.name not in names]
    # quarantined rows keep the answers already paid for (earlier steps' columns), as review does
    with_answers = plan.columns + [c for c in extra if c.name not in {x.name for x in plan.columns}]
    q.write(with_answers, answered("quarantined", why), "_key")
    outputs = {"sink": show_path(sink.path), "quarantine": show_path(q.path)}
    counts = store.counts(run.id, limit)
    if any(v.can_skip or v.on_empty == "skip" for s in steps for v in s.variants()) or counts.get("skipped", 0):
        sk = open_side_sink(job.sink, job.base_dir, "skipped")
        sk.write(side_cols, set_aside("skipped"), "_key")
        outputs["skipped"] = show_path(sk.path)
    if job.can_review() or counts.get("review", 0):
        # rows held for a person: their input, the best answers reached, and why
        rv = open_side_sink(job.sink, job.base_dir, "review")
        rv.write(with_answers, answered("review", why), "_key")
        outputs["review"] = show_path(rv.path)
    return outputs


def show_path(p: Path) -> str:
    """``p`` relative to the current folder when it is below it, else as it is."""
    try:
        return str(p.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(p)
