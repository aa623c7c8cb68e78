"""Corral runs LLM batch jobs over tables: durable, resumable, budgeted.

Exit codes:

\b
  0    the run finished: every row is written, quarantined, held for review or skipped
  1    an unexpected internal error (a bug: please report it with the message)
  2    a usage or input problem (bad job file, missing file or column, unknown model...)
  3    the run stopped before finishing (a budget was reached); run again to resume
  4    the provider refused the credentials (HTTP 401) or the account (out of quota); fix
       the key or add credit, then run again
  5    the provider stayed unreachable for longer than the model's max_outage_s (default
       300 s); start the server or correct base_url, then run again to resume
  6    calibrate: no candidate reached --target (the report names the most accurate)
  7    the run finished, and monitoring warned: it does not look like the job's previous
       finished run (label drift, more nulls, reviews or quarantines; see the summary)
  130  interrupted (Ctrl-C); finished work is kept, run the same command again to resume
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import shlex
import sys
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
import yaml
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from corral import _export, report
from corral._cli_cost import cost_cmd
from corral._cli_review import review
from corral._cli_store import store_option
from corral._result import summarize
from corral.engine import run_async, store_path_for
from corral.errors import CorralError, RunNotFoundError, StoreError, UserError
from corral.job import Job
from corral.store import STORE_ENV, Store, open_store, shown_store
from corral.store.base import RunInfo
from corral.store.leases import live_status

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_STOPPED = 3
#: the provider refused the run: the credentials (HTTP 401) or the account (out of quota)
EXIT_REFUSED = 4
EXIT_AUTH = EXIT_REFUSED  # its earlier name
EXIT_UNAVAILABLE = 5
#: calibrate measured every candidate and none reached --target
EXIT_TARGET_MISSED = 6
#: the run finished and monitoring warned (the job's `monitor:` thresholds)
EXIT_DRIFT = 7
EXIT_INTERRUPTED = 130

_store_option = store_option(
    "the first .corral/corral.db found from the job file's folder upwards for run, calibrate and eval, "
    "from the working directory upwards for the other commands")
_json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")


T = TypeVar("T")
#: the environment variable that picks the event loop of the batch commands (`asyncio`: asyncio's)
EVENT_LOOP_ENV = "CORRAL_EVENT_LOOP"


def _arun(main: Coroutine[Any, Any, T]) -> T:
    """Run a batch command's coroutine on uvloop where it is installed (a libuv event loop: at
    200 ms latency ``corral run`` answered 11% more rows per second on it, bench/RESULTS.md),
    else on asyncio's own loop; ``CORRAL_EVENT_LOOP=asyncio`` asks for asyncio's."""
    if os.environ.get(EVENT_LOOP_ENV, "").strip().lower() != "asyncio":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                return runner.run(main)
    return asyncio.run(main)


def _batch_gc() -> None:
    """Tune the garbage collector for a long batch command: what start-up built (modules,
    the job, the SDKs' classes) is frozen out of every collection, and collections come after
    20,000 allocations, not 700. With Python's defaults a 2,000-row run spent half a second
    in some 680 collections; tuned, 0.07 s (bench/RESULTS.md, issue 11)."""
    gc.freeze()
    gc.set_threshold(20_000, 20, 100)


def _err() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def _out() -> Console:
    console = Console(highlight=False, soft_wrap=True)
    if not console.is_terminal:  # piped or captured: do not cut lines at 80 columns
        console = Console(highlight=False, soft_wrap=True, width=200)
    return console


@contextlib.contextmanager
def _reading(store: Path | None) -> Iterator[Store]:
    """The store a read-only command names, closed at the end. It must exist: a mistyped
    --store is reported, never created. A StoreError (a missing store, or one found damaged
    while the command reads it) or a UserError (no such run) ends the command with the one-line
    error and exit 2, never a traceback."""
    with _exit_codes():
        st = open_store(store, create=False)
        try:
            yield st
        finally:
            st.close()


@contextlib.contextmanager
def _run_of(store: Path | None, run: str | None) -> Iterator[tuple[Store, RunInfo]]:
    """The store and the run a command names, as :func:`_reading` reads them."""
    with _reading(store) as st:
        yield st, _resolve(st, run)


def _fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    _err().print(f"[bold red]error:[/] {escape(message)}", markup=True, soft_wrap=True)  # [x] kept as written
    sys.exit(code)


@contextlib.contextmanager
def _exit_codes(interrupted: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
    """End a command that runs a job on what its run raised, with the one-line error and the
    documented exit code: a UserError or StoreError is a usage or input problem (2), any other
    CorralError a bug (1); an ``interrupted`` exception (Ctrl-C in calibrate or eval) says how
    to resume (130)."""
    try:
        yield
    except interrupted as e:
        _err().print(f"{e}; finished work is saved. Run the same command again to resume.", markup=False)
        sys.exit(EXIT_INTERRUPTED)
    except (UserError, StoreError) as e:
        _fail(str(e))
    except CorralError as e:
        _fail(str(e), EXIT_INTERNAL)


@click.group(help=__doc__, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="corral")
def main() -> None:
    pass


# --- corral run ---------------------------------------------------------------------------


@main.command("run")
@click.argument("job_file", metavar="JOB", type=click.Path(path_type=Path))
@click.option("--limit", type=click.IntRange(min=0), default=None, help="Process only the first N rows.")
@click.option("--model", "model_name", default=None, help="Use this model instead of the job's: a name (fake, local, local:/path/model.gguf) or a mapping such as '{name: fake, latency: 0.1}'.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True, help="Where the rows are worked on: in this process, or spread over a Ray cluster (the store, reachable from every node, keeps leases, cache and ledger; docs/ray.md).")
@click.option("--address", metavar="HOST:PORT", default=None, help="With --engine ray: the Ray cluster's address, as `ray start --head` printed it (default: $RAY_ADDRESS, else a cluster running on this machine, else a Ray instance started for the run).")
@click.option("--ray-workers", type=click.IntRange(min=1), default=None, metavar="N", help="With --engine ray: how many Ray workers, one CPU each (default: the cluster's CPUs, at most 64).")
@_json_option
@_store_option
def run_cmd(job_file: Path, limit: int | None, model_name: str | None, engine: str, address: str | None,
            ray_workers: int | None, as_json: bool, store: Path | None) -> None:
    """Run a job file, or resume it if it ran before on the same input.

    Rows already finished are not processed again and recorded model responses are
    replayed, never requested again. Progress goes to stderr; the summary to stdout.
    """
    err = _err()
    model = _parse_model_option(model_name)
    if engine != "ray" and (address or ray_workers):
        _fail("--address and --ray-workers go with --engine ray: corral run JOB --engine ray --address HOST:PORT")
    view = report.ProgressView(err) if err.is_terminal else report.PlainProgress(err)
    _batch_gc()
    with _exit_codes(), view:
        if engine == "ray":
            from corral._ray import run_on_ray

            result = _arun(run_on_ray(job_file, model=model, limit=limit, store=store, address=address,
                                      workers=ray_workers, progress=view.update))
        else:
            result = _arun(run_async(job_file, model=model, limit=limit, store=store, progress=view.update,
                                     handle_signals=True))
    if as_json:
        click.echo(json.dumps(result.to_json()))
    else:
        st = open_store(result.store, check=False) if result.store else None  # checked by the run
        try:
            report.print_summary(_out(), result, st)
        finally:
            if st is not None:
                st.close()
    again = _again(job_file, model_name, limit, store) + (
        " --engine ray" + (f" --address {shlex.quote(address)}" if address else "") if engine == "ray" else "")
    if result.drifted:
        err.print(f"Monitoring: {report.count(len(result.monitor['warnings']), 'warning')} against run "
                  f"{result.monitor['compared_with']} (exit {EXIT_DRIFT}; thresholds in the job's monitor:)",
                  markup=False)
        sys.exit(EXIT_DRIFT)
    if result.status in ("finished", "preview"):
        if result.status == "preview":
            err.print(f"Preview: {result.stop_reason}. Run without --limit for every row.", markup=False)
        sys.exit(EXIT_OK)
    if result.cause == "elsewhere":
        err.print(
            f"This worker is done: {result.stop_reason}. "
            f"Watch with: corral status {result.run}{report.store_flag(result.store)}", markup=False,
        )
        sys.exit(EXIT_OK)
    if result.status == "interrupted":
        err.print(
            f"Interrupted with {result.pending:,} rows pending; finished work is saved. "
            f"Resume with: {again}", markup=False,
        )
        sys.exit(EXIT_INTERRUPTED)
    if result.cause == "outage":
        err.print(f"Stopped: {result.stop_reason}. Resume with: {again}", markup=False)
        sys.exit(EXIT_UNAVAILABLE)
    if result.status == "failed":
        err.print(f"Failed: {result.stop_reason}. Resume with: {again}", markup=False)
        sys.exit(EXIT_REFUSED)
    err.print(
        f"Stopped: {result.stop_reason}. Raise the budget in the job file, then resume with: {again}",
        markup=False,
    )
    sys.exit(EXIT_STOPPED)


def _parse_model_option(model_name: str | None) -> str | dict[str, Any] | None:
    """``--model``: a name, or a YAML mapping such as ``'{name: fake, latency: 0.1}'``."""
    if model_name and model_name.lstrip().startswith("{"):
        try:
            value = yaml.safe_load(model_name)
        except yaml.YAMLError:
            _fail(f"--model {model_name!r} is not a valid mapping; write it like '{{name: fake, latency: 0.1}}'")
        if isinstance(value, dict):
            return value
        _fail(f"--model {model_name!r} is not a mapping; write it like '{{name: fake, latency: 0.1}}'")
    return model_name


def _again(job_file: Path, model: str | None, limit: int | None, store: Path | None) -> str:
    """The command that resumes this run (the same job, model, limit and store)."""
    parts = ["corral", "run", str(job_file)]
    if model:
        parts += ["--model", model]
    if limit is not None:
        parts += ["--limit", str(limit)]
    if store is not None and not os.environ.get(STORE_ENV):
        parts += ["--store", shown_store(store)]  # a URL's password masked
    return shlex.join(parts)


# --- corral calibrate ----------------------------------------------------------------------


@main.command("calibrate")
@click.argument("job_file", metavar="JOB", type=click.Path(path_type=Path))
@click.option("--labels", "labels", metavar="FILE", type=click.Path(path_type=Path), default=None, help="Required. Labeled rows (CSV, TSV or JSONL): the key column and the expected answer.")
@click.option("--target", type=float, default=0.95, show_default=True, help="Accuracy to reach, from 0 to 1.")
@click.option("--step", "step", metavar="NAME", default=None, help="Step to calibrate (default: the job's last step; earlier steps run as written).")
@click.option("--sample", metavar="N", type=int, default=200, show_default=True, help="Labeled rows to measure on, sampled from the labeled keys in the source.")
@click.option("--seed", metavar="N", type=int, default=0, show_default=True, help="Seed of the sample.")
@click.option("--key-column", metavar="NAME", default=None, help="Key column of the labels and the source (default: the job's `key:`).")
@click.option("--label-column", metavar="NAME", default=None, help="Column of the labels file with the expected answer (default: the step's name, else `label`).")
@click.option("--candidates", metavar="FILE", default=None, help="YAML/JSON file (or inline list) of strategies to try instead of the default grid.")
@click.option("--model", "model_name", metavar="NAME", default=None, help="Use this model instead of the job's, as in `corral run`.")
@_json_option
@_store_option
def calibrate_cmd(
    job_file: Path, labels: Path | None, target: float, step: str | None, sample: int, seed: int,
    key_column: str | None, label_column: str | None, candidates: str | None, model_name: str | None,
    as_json: bool, store: Path | None,
) -> None:
    """Measure strategies for a step on a labeled sample and report the cheapest one that
    reaches --target accuracy, with its measured accuracy and cost (exit 6 if none does).

    Candidates share the store, so a call two of them make is paid once; each candidate's cost
    counts its replayed calls at the price first paid. Progress goes to stderr.
    """
    from rich.text import Text

    from corral import _calibrate as cal

    err = _err()
    if labels is None:
        _fail("--labels FILE is required: a CSV, TSV or JSONL file with the key column and the expected answer")
    model: Any = _parse_model_option(model_name)

    def progress(i: int, n: int, m: cal.Measured) -> None:
        per_k = "n/a" if m.cost_per_1000 is None else f"${float(m.cost_per_1000):,.4f}/1k rows"
        err.print(f"[{i}/{n}] {m.candidate.label}: {m.accuracy:.1%} correct, {m.calls_per_row:.2f} calls/row, "
                  f"{per_k} (run {m.run}{'' if m.status == 'finished' else ', ' + m.status})", markup=False)

    with _exit_codes(interrupted=(cal.Interrupted,)):
        # the job's own store by default (beside the job file), as for `corral run`
        store = store or store_path_for(Job.load(job_file))
        plan = cal.prepare(job_file, labels=labels, target=target, step=step, sample=sample, seed=seed,
                           key_column=key_column, label_column=label_column, model=model,
                           candidates=candidates, store_path=store)
        err.print(f"Calibrating step `{plan.step.name}` of {plan.job.name}: {len(plan.candidates)} candidates "
                  f"on {len(plan.sample_rows):,} labeled rows (of {plan.overlap:,} labeled in the source)", markup=False)
        st = open_store(store)
        _batch_gc()
        try:
            found = _arun(cal.calibrate_async(plan, st, progress, handle_signals=True))
        finally:
            st.close()
    chosen, best = found.chosen, found.most_accurate
    if as_json:
        click.echo(json.dumps(found.to_json()))
        sys.exit(EXIT_OK if chosen else EXIT_TARGET_MISSED)
    out = _out()
    t = Table(title=f"step `{found.step}` · {found.rows:,} labeled rows · target {found.target:.1%}")
    for name in ("", "strategy", "accuracy", "95% interval", "calls/row", "tokens/row", "cost/1k rows", "held", "quarantined"):
        t.add_column(name, no_wrap=name != "strategy", justify="left" if name in ("", "strategy") else "right")
    for m in found.results:
        lo, hi = m.interval
        t.add_row(
            "✓" if m is chosen else "", Text(m.candidate.label + (" (current)" if m.candidate.current else "")),
            f"{m.accuracy:.1%}", f"{lo:.1%}–{hi:.1%}", f"{m.calls_per_row:.2f}", f"{m.tokens_per_row:,.0f}",
            "n/a" if m.cost_per_1000 is None else f"${float(m.cost_per_1000):,.4f}", f"{m.held:,}", f"{m.quarantined:,}",
        )
    out.print(t)
    if chosen is None:
        out.print(f"No candidate reaches {found.target:.1%} accuracy. The most accurate is {best.candidate.label if best else '-'}"
                  f" at {best.accuracy if best else 0:.1%}.", markup=False)
        sys.exit(EXIT_TARGET_MISSED)
    per_k = "an unknown cost" if chosen.cost_per_1000 is None else f"${float(chosen.cost_per_1000):,.4f} per 1,000 rows"
    lo, hi = chosen.interval
    out.print(f"Cheapest reaching {found.target:.1%}: {chosen.candidate.label} — accuracy {chosen.accuracy:.1%} "
              f"({lo:.1%}–{hi:.1%}), {chosen.calls_per_row:.2f} calls/row, {per_k}.", markup=False)
    out.print(f"Paste into step `{found.step}`:\n", markup=False)
    out.print(cal.snippet(chosen.candidate.strategy).rstrip(), markup=False)


# --- corral eval ----------------------------------------------------------------------------


@main.command("eval")
@click.argument("job_file", metavar="JOB", type=click.Path(path_type=Path))
@click.option("--labels", "labels", metavar="FILE", type=click.Path(path_type=Path), default=None, help="Required. Labeled rows (CSV, TSV or JSONL): the key column and gold columns named like the sink's output columns.")
@click.option("--run", "runs", metavar="RUN", multiple=True, help="Score this stored run (id, id prefix or job name) as it is; repeat to compare runs side by side. Default: the job's current run.")
@click.option("--model", "model_name", metavar="NAME", default=None, help="The current run is the one with this model, as in `corral run`.")
@click.option("--key-column", metavar="NAME", default=None, help="Key column of the labels and the source (default: the job's `key:`).")
@click.option("--no-run", "no_run", is_flag=True, help="Never run the job: labeled rows without a final state count as not answered.")
@click.option("--html", "html", metavar="FILE", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Also write a self-contained HTML report (tables, reliability diagram, coverage-vs-accuracy plot).")
@click.option("--best-experts", "best", metavar="FILE", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Instead: run the labeled rows through each route of the step with experts: and write FILE, the rows with the expert that answered each right with the fewest calls (what route_by: learns from).")
@_json_option
@_store_option
def eval_cmd(
    job_file: Path, labels: Path | None, runs: tuple[str, ...], model_name: str | None, key_column: str | None,
    no_run: bool, html: Path | None, best: Path | None, as_json: bool, store: Path | None,
) -> None:
    """Score a run's answers against a labels file: accuracy, macro-F1 and confused pairs of
    label steps; exact, normalised and null-aware accuracy of fields; what review caught;
    calibration (ECE) of the recorded confidences; calls, tokens and cost per correct row.

    Recorded answers are reused. Labeled rows the current run has not finished are run first
    (the labeled rows alone, within the job's budget) unless --no-run. Notes go to stderr.
    """
    from corral import _eval
    from corral import _eval_tables as tables

    err = _err()
    if labels is None:
        _fail("--labels FILE is required: a CSV, TSV or JSONL file with the key column and gold columns named like the sink's")
    model: Any = _parse_model_option(model_name)

    def progress(ev: dict[str, Any]) -> None:
        if ev.get("phase") == "start":
            err.print(f"running the labeled rows: run {ev['run']} · model {ev['model']}", markup=False)

    with _exit_codes(interrupted=(_eval.Interrupted,)):
        job = Job.load(job_file)
        _batch_gc()
        if best is not None:
            from corral._best_experts import best_experts_for, best_experts_text

            found = _arun(best_experts_for(job, labels=labels, out=best, model=model, store=store,
                                           key_column=key_column))
            click.echo(json.dumps(found) if as_json else best_experts_text(found))
            return
        result = _arun(_eval.evaluate_async(
            job, labels=labels, runs=runs, model=model, store=store, key_column=key_column,
            run_missing=not no_run, progress=progress, handle_signals=True))
    for note in result.notes:
        err.print(note, markup=False)
    if html is not None:
        from corral import _report_html

        try:
            _report_html.write(result, html)
        except OSError as e:
            _fail(f"cannot write {html}: {e.strerror or e}; give --html a writable path")
        err.print(f"HTML report: {html}", markup=False)
    if as_json:
        click.echo(json.dumps(result.to_json()))
        return
    out = _out()
    for i, t in enumerate([tables.summary_table(result)] + [d for r in result.runs for d in tables.detail_tables(r)]):
        if i:
            click.echo()
        report.print_table(out, t)
    lines = tables.missing_confidences(result)
    if result.unscored_steps:
        lines.append(f"not scored (no gold column in the labels file): {', '.join(result.unscored_steps)}")
    if result.unused_columns:
        lines.append(f"labels columns no step writes (ignored): {', '.join(result.unused_columns)}")
    if lines:
        click.echo()
        for line in lines:
            click.echo(line)


# --- corral runs / status / show ---------------------------------------------------------


def _resolve(st: Store, run: str | None) -> RunInfo:
    if run is None:
        runs = st.list_runs(1)
        if not runs:
            raise RunNotFoundError("no runs in this store yet — start one with `corral run JOB.yaml`")
        return runs[0]
    from corral._eval import resolve_run

    return resolve_run(st, run)


@main.command("runs")
@click.option("--limit", "n", type=click.IntRange(min=1), default=20, show_default=True, help="How many runs to list.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of run summaries on stdout.")
@_store_option
def runs_cmd(n: int, as_json: bool, store: Path | None) -> None:
    """List runs, newest first."""
    with _reading(store) as st:
        results = [summarize(st, r, status=live_status(st, r)) for r in st.list_runs(n)]
        if as_json:
            click.echo(json.dumps([r.to_json() for r in results]))
            return
        if not results:
            _out().print("No runs yet. Start one with: corral run JOB.yaml")
            return
        t = Table()
        for name in ("run", "job", "status", "in", "written", "quarantined", "review", "skipped", "pending",
                     "calls", "cost"):
            t.add_column(name, no_wrap=True)
        for r in results:  # in = written + quarantined + review + skipped + pending
            t.add_row(
                r.run, r.job, r.status, f"{r.rows_in:,}", f"{r.written:,}", f"{r.quarantined:,}",
                f"{r.review:,}", f"{r.skipped:,}", f"{r.pending:,}", f"{r.calls_made:,}",
                "?" if r.cost_usd is None else f"${float(r.cost_usd):.4f}",
            )
        _out().print(t)


@main.command("status")
@click.argument("run", required=False)
@_json_option
@_store_option
def status_cmd(run: str | None, as_json: bool, store: Path | None) -> None:
    """Show a run's summary (RUN: an id, a prefix of one, or a job name; default: the latest run).

    With --json, prints the same object as `corral run --json`; there, elapsed_s is summed over
    all the run's resumptions, and provider batches still in flight are listed under "batches".
    """
    with _run_of(store, run) as (st, info):
        from corral._monitor import monitor, spec_of

        result = summarize(st, info, status=live_status(st, info))
        if result.status == "finished":
            result.monitor = monitor(st, info, spec_of(info), record=False)
        in_flight = st.open_batches(info.id)
        spend = st.breakdown(info.id)
        if as_json:
            obj = result.to_json()
            obj["by_step"] = [m.to_json() for m in spend]
            if in_flight:
                obj["batches"] = [{"id": b.id, "state": b.detail or b.state, "items": b.items} for b in in_flight]
            click.echo(json.dumps(obj))
        else:
            console = _out()
            report.print_summary(console, result, st)
            if spend:
                report.print_spend(console, spend)
            for b in in_flight:
                console.print(
                    f"Batch       {b.id}: {b.items:,} requests, {b.detail or b.state}"
                    f" — resume polling with `corral run` on the same job"
                )


@main.command("show")
@click.argument("run")
@click.argument("key")
@click.option("--full", is_flag=True, help="Print every call's prompt in full, even when an earlier attempt had the same one.")
@_json_option
@_store_option
def show_cmd(run: str, key: str, full: bool, as_json: bool, store: Path | None) -> None:
    """Show one record and how its answer was reached: its input, state and reason, every call
    (role, strategy, model, prompt, raw response, parsed answer, confidence, reasoning, failed
    checks) and the strategy's decisions (votes, critiques, best-of scores, escalations, budget
    stops, the accepted answer)."""
    with _run_of(store, run) as (st, info):
        rec = st.record(info.id, key)
        if rec is None:
            _fail(f"run {info.id} has no record with key `{key}` — keys are the job's `key:` column values (see the sink's columns)")
            return
        trace = st.record_calls(info.id, key)
        events = [ev.to_json() for ev in trace]
        calls = [ev for ev, e in zip(events, trace) if e.kind == "call"]
        if as_json:
            click.echo(json.dumps({"run": info.id, **rec.to_json(), "calls": calls, "trace": events}, default=str))
            return
        report.print_record(_out(), info, rec, trace, full=full)


@main.command("routes")
@click.argument("run")
@click.option("--labels", "labels", metavar="FILE", type=click.Path(path_type=Path), default=None, help="Labeled rows (CSV, TSV or JSONL, as for `corral eval`): adds each route's accuracy.")
@click.option("--key-column", metavar="NAME", default=None, help="Key column of the labels (default: the run's job `key:`).")
@_json_option
@_store_option
def routes_cmd(run: str, labels: Path | None, key_column: str | None, as_json: bool, store: Path | None) -> None:
    """Show how a run's rows were routed (RUN: an id, a prefix of one, or a job name): per step
    with `experts:` (or System 1), per route, the rows it took, their calls (paid and replayed)
    and cost, the share System 1 answered without a call, and with --labels each route's
    accuracy."""
    from corral._routes_report import print_routes, routes_report

    with _run_of(store, run) as (st, info):
        rep = routes_report(st, info, labels=labels, key_column=key_column)
        if as_json:
            click.echo(json.dumps(rep.to_json()))
            return
        print_routes(_out(), rep)


# --- corral export ---------------------------------------------------------------------------


@main.group("export")
def export_group() -> None:
    """Export a run's data for other tools.

    \b
      traces   accepted answers with their prompts, as chat-format JSONL for fine-tuning
    """


@export_group.command("traces", short_help="Accepted answers with their prompts, as chat-format JSONL.")
@click.argument("run")
@click.option("--format", "fmt", type=click.Choice(_export.FORMATS), default="sft", show_default=True,
              help="Output format: sft = one chat example a line, {messages: [system, user, assistant], metadata}.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write to this file (atomically: a temporary file renamed when complete). Default: stdout.")
@click.option("--reasoning", is_flag=True, help="Put the model's reasoning first in the assistant's answer, as a \"reasoning\" key, where the trace has it.")
@click.option("--step", "step", metavar="NAME", default=None, help="Export this step's answers only (default: every step's).")
@_store_option
def export_traces_cmd(run: str, fmt: str, output: Path | None, reasoning: bool, step: str | None, store: Path | None) -> None:
    """Write a run's accepted answers as worked examples (RUN: an id, a prefix of one, or a job
    name): one JSON line per step answer of every written (`done`) record, then of every record
    a filter skipped (its "no" is an accepted answer too), with the step's system and user prompt
    and the answer as the assistant's message. Rows in review or quarantine are left out. A
    one-line summary goes to stderr."""
    with _run_of(store, run) as (st, info):
        steps = _export.step_names(info)
        if step is not None and step not in steps:
            _fail(f"run {info.id} has no step `{step}` — its steps are: {', '.join(steps)}")
            return
        stats = _export.ExportStats()
        examples = _export.sft_examples(st, info, step=step, reasoning=reasoning, stats=stats)
        try:
            _export.write_jsonl(examples, output if output is not None else sys.stdout)
        except BrokenPipeError:  # `| head`: the reader has what it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
            sys.exit(EXIT_OK)
        except OSError as e:
            _fail(f"cannot write {output}: {e.strerror or e}")
            return
    where = str(output) if output is not None else "stdout"
    line = f"wrote {report.count(stats.examples, 'example')} from {report.count(stats.records, 'record')} to {where}"
    notes = []
    if reasoning:
        notes.append(f"{stats.with_reasoning:,} with reasoning, {stats.examples - stats.with_reasoning:,} without")
    if stats.no_prompt:
        notes.append(f"{stats.no_prompt:,} left out: their prompt is not in the store")
    _err().print(line + (f" ({'; '.join(notes)})" if notes else ""), markup=False)


from corral._cli_estimate import estimate_cmd  # noqa: E402  (it imports this module's helpers)

main.add_command(estimate_cmd)
from corral._cli_pages import report_cmd, serve_cmd  # noqa: E402 (commands of their own module)

main.add_command(report_cmd)
main.add_command(serve_cmd)
main.add_command(review)
main.add_command(cost_cmd)
from corral._cli_worker import worker_cmd  # noqa: E402 (a command of its own module)

main.add_command(worker_cmd)

if __name__ == "__main__":  # pragma: no cover
    main()
