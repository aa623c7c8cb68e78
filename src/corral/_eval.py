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
import shutil
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypedDict, Unpack

from corral import _labels
from corral._eval_scoring import (
    GROUP_OF,
    Evaluation,
    LabeledRow,
    RunEval,
    Spend,
    score_step,
    spend_of,
)
from corral._ingest import job_spec
from corral._outputs import plan as _plan
from corral.engine import make_model, run_async, run_id_for, store_path_for
from corral.errors import RunNotFoundError, UserError
from corral.io import open_source
from corral.io.base import Column
from corral.job import Job
from corral.models.base import Model
from corral.store import Store, is_store_url, open_store, scratch_folder
from corral.store.base import FINAL_STATES, STATES, RecordRow, RunInfo

__all__ = ["EvalError", "EvalOptions", "Evaluation", "Interrupted", "evaluate", "evaluate_async", "resolve_run"]


class EvalError(UserError):
    """Bad input to ``corral eval`` (labels file, columns, runs)."""


class Interrupted(Exception):
    """The run of the labeled rows was interrupted (Ctrl-C): finished work is kept."""


def _job_of(info: RunInfo, job: Job) -> Job:
    """The job a run ran, from its stored spec (or the given job when the spec cannot load)."""
    spec = job_spec(info)
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
             keyed: bool) -> tuple[dict[str, LabeledRow], dict[str, Any] | None]:
    """The run's records of labeled keys (by label key), and one record's input row. A run
    ``keyed`` by the labels' key column has them looked up by key, not read whole."""
    found: Iterable[RecordRow]
    if keyed:
        found = sorted((r for k in gold if (r := st.record(info.id, k)) is not None),
                       key=lambda r: (STATES.index(r.state), r.ordinal))
    else:
        found = (r for state in STATES for chunk in st.iter_records(info.id, state) for r in chunk)
    rows: dict[str, LabeledRow] = {}
    sample: dict[str, Any] | None = None
    for r in found:
        data = r.data
        if data is None:
            continue
        if sample is None:
            sample = data
        k = str(data[key]) if key in data and not _labels.blank(data[key]) else r.key
        if k in gold and k not in rows:
            rows[k] = LabeledRow(r.key, r.state, r.outputs or {}, [])
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
        spend.add(*spend_of(row.calls))
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
    base = (scratch_folder(store_path, job.base_dir) if store_path is not None else job.base_dir / ".corral")
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
    if own and path is not None and not is_store_url(path) and not path.exists():
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


class EvalOptions(TypedDict, total=False):
    """The keyword options of :func:`evaluate`, as :func:`evaluate_async` takes them."""

    runs: Sequence[str]  # default ()
    model: Model | str | dict[str, Any] | None
    store: Store | str | Path | None
    key_column: str | None
    run_missing: bool  # default True


def evaluate(job: Job | str | Path, *, labels: str | Path, **options: Unpack[EvalOptions]) -> Evaluation:
    """Score a job's answers against labeled rows and return an :class:`Evaluation`.

    ``labels`` is a CSV, TSV or JSONL file keyed like the source (``key_column``, default the
    job's ``key:``) with gold columns named like the sink's output columns. Without ``runs``, the
    job's current run in ``store`` is scored (the run :func:`corral.run` would resume with
    ``model``); labeled rows not final there are run first, a copy of the job over those rows
    within the job's budget (recorded answers replayed), unless ``run_missing`` is false, when
    they count as not answered. ``runs`` names stored runs (ids, prefixes or job names) to score
    side by side as they are. Raises :class:`corral.UserError` on bad input.
    """
    return asyncio.run(evaluate_async(job, labels=labels, **options))


