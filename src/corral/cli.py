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
  130  interrupted (Ctrl-C); finished work is kept, run the same command again to resume
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shlex
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import click
import yaml
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from corral import _export
from corral._result import RunResult, summarize
from corral.engine import live_status, run_async, store_path_for
from corral.errors import CorralError, RunNotFoundError, StoreError, UserError
from corral.job import Job
from corral.models.local import BUNDLED_ID
from corral.store import STORE_ENV, Store, default_store_path, open_store
from corral.store.base import DECISIONS, RunInfo

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_STOPPED = 3
EXIT_AUTH = 4
EXIT_UNAVAILABLE = 5
EXIT_INTERRUPTED = 130

_store_option = click.option(
    "--store",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    envvar=STORE_ENV,
    show_envvar=True,
    help="Store file (default: the first .corral/corral.db found from the job file's folder upwards for run, calibrate and eval, from the working directory upwards for the other commands; see docs/cli.md).",
)
_json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")


def _err() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def _out() -> Console:
    console = Console(highlight=False, soft_wrap=True)
    if not console.is_terminal:  # piped or captured: do not cut lines at 80 columns
        console = Console(highlight=False, soft_wrap=True, width=200)
    return console


@contextlib.contextmanager
def _run_of(store: Path | None, run: str | None) -> Iterator[tuple[Store, RunInfo]]:
    """The store and the run a command names (one-line error and exit 2 when there is none, or
    when the store turns out damaged while the command reads it)."""
    st = _open(store)
    try:
        try:
            info = _resolve(st, run)
        except UserError as e:
            _fail(str(e))
        try:
            yield st, info
        except StoreError as e:  # met while iterating records (export): no traceback either
            _fail(str(e))
    finally:
        st.close()


def _fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    _err().print(f"[bold red]error:[/] {message}", markup=True, soft_wrap=True)
    sys.exit(code)


@click.group(help=__doc__, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="corral")
def main() -> None:
    pass


# --- corral run ---------------------------------------------------------------------------


@main.command("run")
@click.argument("job_file", metavar="JOB", type=click.Path(path_type=Path))
@click.option("--limit", type=click.IntRange(min=0), default=None, help="Process only the first N rows.")
@click.option("--model", "model_name", default=None, help="Use this model instead of the job's: a name (fake, local, local:/path/model.gguf) or a mapping such as '{name: fake, latency: 0.1}'.")
@_json_option
@_store_option
def run_cmd(job_file: Path, limit: int | None, model_name: str | None, as_json: bool, store: Path | None) -> None:
    """Run a job file, or resume it if it ran before on the same input.

    Rows already finished are not processed again and recorded model responses are
    replayed, never requested again. Progress goes to stderr; the summary to stdout.
    """
    err = _err()
    model = _model_option(model_name)
    view: _ProgressView | _PlainProgress = _ProgressView(err) if err.is_terminal else _PlainProgress(err)
    try:
        with view:
            result = asyncio.run(
                run_async(
                    job_file,
                    model=model,
                    limit=limit,
                    store=store,
                    progress=view.update,
                    handle_signals=True,
                )
            )
    except (UserError, StoreError) as e:
        _fail(str(e))
        return
    except CorralError as e:
        _fail(str(e), EXIT_INTERNAL)
        return
    if as_json:
        click.echo(json.dumps(result.to_json()))
    else:
        st = open_store(result.store, check=False) if result.store else None  # checked by the run
        try:
            _print_summary(_out(), result, st)
        finally:
            if st is not None:
                st.close()
    again = _again(job_file, model_name, limit, store)
    if result.status in ("finished", "preview"):
        if result.status == "preview":
            err.print(f"Preview: {result.stop_reason}. Run without --limit for every row.", markup=False)
        sys.exit(EXIT_OK)
    if result.cause == "elsewhere":
        err.print(
            f"This worker is done: {result.stop_reason}. "
            f"Watch with: corral status {result.run}{_store_flag(result.store)}", markup=False,
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
        sys.exit(EXIT_AUTH)
    err.print(
        f"Stopped: {result.stop_reason}. Raise the budget in the job file, then resume with: {again}",
        markup=False,
    )
    sys.exit(EXIT_STOPPED)


def _model_option(model_name: str | None) -> str | dict[str, Any] | None:
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


def _store_flag(store: str | None) -> str:
    """`` --store PATH`` when read-only commands run here would not find the run's store."""
    if not store or os.environ.get(STORE_ENV):
        return ""
    with contextlib.suppress(OSError):
        if Path(store).resolve() == default_store_path().resolve():
            return ""
    return " --store " + shlex.quote(_shown(store))


def _shown(path: str) -> str:
    """A path as the user would type it here: relative to the working directory when inside it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return path


def _again(job_file: Path, model: str | None, limit: int | None, store: Path | None) -> str:
    """The command that resumes this run (the same job, model, limit and store)."""
    parts = ["corral", "run", str(job_file)]
    if model:
        parts += ["--model", model]
    if limit is not None:
        parts += ["--limit", str(limit)]
    if store is not None and not os.environ.get(STORE_ENV):
        parts += ["--store", str(store)]
    return shlex.join(parts)


def _states(ev: dict[str, Any]) -> str:
    """What a progress event says beyond the row count: states, calls, spend."""
    parts = [f"written {ev['done']:,}"]
    for state in ("quarantined", "review", "skipped"):
        if ev[state]:
            parts.append(f"{state} {ev[state]:,}")
    calls = f"calls {ev['made']:,}"
    if ev["replayed"]:
        calls += f" (+{ev['replayed']:,} replayed)"
    parts.append(calls)
    if ev.get("cost") is not None:
        parts.append(f"${ev['cost']:.4f}")
    return " · ".join(parts)


def _eta(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class _Rate:
    """Rows per second since the first progress event that saw rows moving."""

    def __init__(self) -> None:
        self.first: int | None = None
        self.t0 = time.monotonic()

    def __call__(self, finished: int) -> float:
        if self.first is None:
            self.first, self.t0 = finished, time.monotonic()
        dt = time.monotonic() - self.t0
        return (finished - self.first) / dt if dt > 0.5 else 0.0


class _ProgressView:
    """Progress bar on stderr (a terminal): rows done of rows in, rows/s, ETA, states so far.
    Notices (a provider down, back again) are printed above the bar."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.bar = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[count]}"),
            TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[states]}"),
            console=console,
            transient=True,
        )
        self.task = self.bar.add_task("starting", total=None, rate="", states="", count="")
        self.rate = _Rate()

    def __enter__(self) -> _ProgressView:
        self.bar.start()
        return self

    def __exit__(self, *a: Any) -> None:
        self.bar.stop()

    def update(self, ev: dict[str, Any]) -> None:
        phase = ev.get("phase")
        if phase == "fingerprint":
            self.bar.update(self.task, description="reading input")
        elif phase == "ingest":
            self.bar.update(self.task, description=f"loading rows ({ev['rows']:,})")
        elif phase == "notice":
            self.bar.console.print(ev["message"], markup=False, highlight=False)
        elif phase in ("run", "batch"):
            finished = ev["done"] + ev["quarantined"] + ev["review"] + ev["skipped"]
            rate = self.rate(finished)
            self.bar.update(
                self.task, description="paused: provider unreachable" if ev.get("paused") else "rows",
                total=ev["in"], completed=finished, count=f"{finished:,}/{ev['in']:,}",
                rate=f"{rate:,.1f} rows/s" if rate else "", states=_states(ev),
            )


#: seconds between progress lines when stderr is not a terminal (cron, CI, nohup, a pipe)
PLAIN_PROGRESS_S = float(os.environ.get("CORRAL_PROGRESS_S", "10") or 10)


class _PlainProgress:
    """Progress as plain lines on stderr when it is not a terminal: one when the run starts, one
    every ``CORRAL_PROGRESS_S`` seconds (default 10) while it runs, and every notice at once, so
    a slow run and a hung one look different in a log."""

    def __init__(self, console: Console, every_s: float | None = None) -> None:
        self.console = console
        self.every_s = PLAIN_PROGRESS_S if every_s is None else every_s
        self.last = time.monotonic()
        self.rate = _Rate()
        self.latest: dict[str, Any] | None = None

    def __enter__(self) -> _PlainProgress:
        return self

    def __exit__(self, *a: Any) -> None:
        return None

    def _line(self, text: str) -> None:
        self.console.file.write(text.rstrip() + "\n")
        self.console.file.flush()

    def update(self, ev: dict[str, Any]) -> None:
        phase = ev.get("phase")
        if phase == "start":
            where = f" · store {ev['store']}" if ev.get("store") else ""
            self._line(f"corral: run {ev['run']} · job {ev['job']} · model {ev['model']}{where}")
        elif phase == "notice":
            self._line(f"corral: {ev['message']}")
        elif phase == "ingest":
            now = time.monotonic()
            if now - self.last >= self.every_s:
                self.last = now
                self._line(f"corral: loading rows ({ev['rows']:,} so far)")
        elif phase in ("run", "batch"):
            finished = ev["done"] + ev["quarantined"] + ev["review"] + ev["skipped"]
            rate = self.rate(finished)
            now = time.monotonic()
            if now - self.last < self.every_s:
                return
            self.last = now
            total = ev["in"]
            pct = f" ({finished / total:.1%})" if total else ""
            text = f"corral: {finished:,}/{total:,} rows{pct}"
            if rate:
                text += f" · {rate:,.1f} rows/s"
                left = total - finished
                if left > 0:
                    text += f" · ETA {_eta(left / rate)}"
            text += " · " + _states(ev)
            if ev.get("paused"):
                text += " · paused: provider unreachable"
            if phase == "batch":
                text += f" · {ev['open']:,} provider batches open"
            self._line(text)


def _money(cost: Any) -> str:
    if cost is None:
        return "unknown (a model without prices was used)"
    return f"${float(cost):,.4f}"


#: what the default model is, said plainly wherever it answers
_BUNDLED_NOTE = "the bundled SmolLM2-135M (a tiny offline model for trying Corral, not for quality)"


def _print_summary(console: Console, r: RunResult, store: Store | None) -> None:
    """The run's summary as aligned ``Label  value`` lines (no padding, no rules, so a log or a
    pipe gets exactly the text)."""
    lines: list[tuple[str, str]] = []
    head = f"run {r.run} · job {r.job} · {r.status}"
    if r.stop_reason and r.status != "finished":
        head += f" ({r.stop_reason})"
    lines.append(("Run", head))
    rows = (
        f"{r.rows_in:,} in = {r.written:,} written + {r.quarantined:,} quarantined + "
        f"{r.review:,} review + {r.skipped:,} skipped + {r.pending:,} pending"
    )
    lines.append(("Rows", rows + ("" if r.accounted else "  (does not add up)")))
    lines.append(("Calls", f"{r.calls_made:,} made, {r.calls_replayed:,} replayed from the store"))
    lines.append(("Tokens", f"{r.input_tokens:,} input, {r.output_tokens:,} output"))
    lines.append(("Cost", _money(r.cost_usd)))
    if r.model:
        lines.append(("Model", r.model + (f": {_BUNDLED_NOTE}" if r.model == BUNDLED_ID else "")))
    lines.append(("Elapsed", f"{r.elapsed_s:,.1f} s"))
    if r.store:
        lines.append(("Store", _shown(r.store)))
    if r.outputs:
        lines.append(("Output", r.outputs.get("sink", "")))
        lines.append(("Quarantine", r.outputs.get("quarantine", "") + f" ({_rows(r.quarantined)})"))
        if "review" in r.outputs:
            lines.append(("Review", r.outputs["review"] + f" ({_rows(r.review)})"))
        if "skipped" in r.outputs:
            lines.append(("Skipped", r.outputs["skipped"] + f" ({_rows(r.skipped)})"))
    elif r.pending:
        lines.append(("Output", "not written yet: rows are still pending"))
    width = max(len(k) for k, _ in lines)
    for k, v in lines:
        console.print(f"{k:<{width}}  {v}".rstrip(), markup=False, highlight=False)
    if store is None:
        return
    flag = _store_flag(r.store)
    for state, title, n_state in (("quarantined", "Quarantined", r.quarantined), ("review", "Held for review", r.review)):
        if not n_state:
            continue
        reasons: Counter[str] = Counter()
        example: dict[str, str] = {}
        for chunk in store.iter_records(r.run, state):
            for rec in chunk:
                reason = _reason_kind(rec["reason"] or "")
                reasons[reason] += 1
                example.setdefault(reason, rec["key"])
        console.print(f"{title}, by reason:", markup=False, highlight=False)
        for reason, n in reasons.most_common(5):
            console.print(
                f"  {n:>6,}  {reason}   e.g. corral show {r.run} {shlex.quote(example[reason])}{flag}",
                markup=False, highlight=False,
            )


def _rows(n: int) -> str:
    return f"{n:,} row" + ("" if n == 1 else "s")


def _reason_kind(reason: str) -> str:
    # group "line 17: expected 4 fields" style reasons by their text after the location
    if reason.startswith("malformed input: line"):
        return "malformed input row"
    # "confidence 0.61 < 0.70" and "confidence 0.54 < 0.70" are one reason: under min_confidence
    reason = _CONFIDENCE.sub(r"confidence under \1", reason)
    return reason.split(" (after")[0][:120]


_CONFIDENCE = re.compile(r"confidence (?:[0-9.]+|unknown) < ([0-9.]+)")


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
    reaches --target accuracy, with its measured accuracy and cost (exit 1 if none does).

    Candidates share the store, so a call two of them make is paid once; each candidate's cost
    counts its replayed calls at the price first paid. Progress goes to stderr.
    """
    from rich.text import Text

    from corral import _calibrate as cal

    err = _err()
    if labels is None:
        _fail("--labels FILE is required: a CSV, TSV or JSONL file with the key column and the expected answer")
    model: Any = _model_option(model_name)

    def progress(i: int, n: int, m: cal.Measured) -> None:
        per_k = "n/a" if m.cost_per_1000 is None else f"${float(m.cost_per_1000):,.4f}/1k rows"
        err.print(f"[{i}/{n}] {m.candidate.label}: {m.accuracy:.1%} correct, {m.calls_per_row:.2f} calls/row, "
                  f"{per_k} (run {m.run}{'' if m.status == 'finished' else ', ' + m.status})", markup=False)

    try:
        # the job's own store by default (beside the job file), as for `corral run`
        store = store or store_path_for(Job.load(job_file))
        plan = cal.prepare(job_file, labels=labels, target=target, step=step, sample=sample, seed=seed,
                           key_column=key_column, label_column=label_column, model=model,
                           candidates=candidates, store_path=store)
        err.print(f"Calibrating step `{plan.step.name}` of {plan.job.name}: {len(plan.candidates)} candidates "
                  f"on {len(plan.sample_rows):,} labeled rows (of {plan.overlap:,} labeled in the source)", markup=False)
        st = open_store(store)
        try:
            report = asyncio.run(cal.calibrate_async(plan, st, progress, handle_signals=True))
        finally:
            st.close()
    except cal.Interrupted as e:
        err.print(f"{e}; finished work is saved. Run the same command again to resume.", markup=False)
        sys.exit(EXIT_INTERRUPTED)
    except (UserError, StoreError) as e:
        _fail(str(e))
        return
    except CorralError as e:
        _fail(str(e), EXIT_INTERNAL)
        return
    chosen, best = report.chosen, report.most_accurate
    if as_json:
        click.echo(json.dumps(report.to_json()))
        sys.exit(EXIT_OK if chosen else EXIT_INTERNAL)
    out = _out()
    t = Table(title=f"step `{report.step}` · {report.rows:,} labeled rows · target {report.target:.1%}")
    for name in ("", "strategy", "accuracy", "95% interval", "calls/row", "tokens/row", "cost/1k rows", "held", "quarantined"):
        t.add_column(name, no_wrap=name != "strategy", justify="left" if name in ("", "strategy") else "right")
    for m in report.results:
        lo, hi = m.interval
        t.add_row(
            "✓" if m is chosen else "", Text(m.candidate.label + (" (current)" if m.candidate.current else "")),
            f"{m.accuracy:.1%}", f"{lo:.1%}–{hi:.1%}", f"{m.calls_per_row:.2f}", f"{m.tokens_per_row:,.0f}",
            "n/a" if m.cost_per_1000 is None else f"${float(m.cost_per_1000):,.4f}", f"{m.held:,}", f"{m.quarantined:,}",
        )
    out.print(t)
    if chosen is None:
        out.print(f"No candidate reaches {report.target:.1%} accuracy. The most accurate is {best.candidate.label if best else '-'}"
                  f" at {best.accuracy if best else 0:.1%}.", markup=False)
        sys.exit(EXIT_INTERNAL)
    per_k = "an unknown cost" if chosen.cost_per_1000 is None else f"${float(chosen.cost_per_1000):,.4f} per 1,000 rows"
    lo, hi = chosen.interval
    out.print(f"Cheapest reaching {report.target:.1%}: {chosen.candidate.label} — accuracy {chosen.accuracy:.1%} "
              f"({lo:.1%}–{hi:.1%}), {chosen.calls_per_row:.2f} calls/row, {per_k}.", markup=False)
    out.print(f"Paste into step `{report.step}`:\n", markup=False)
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
@_json_option
@_store_option
def eval_cmd(
    job_file: Path, labels: Path | None, runs: tuple[str, ...], model_name: str | None, key_column: str | None,
    no_run: bool, html: Path | None, as_json: bool, store: Path | None,
) -> None:
    """Score a run's answers against a labels file: accuracy, macro-F1 and confused pairs of
    label steps; exact, normalised and null-aware accuracy of fields; what review caught;
    calibration (ECE) of the recorded confidences; calls, tokens and cost per correct row.

    Recorded answers are reused. Labeled rows the current run has not finished are run first
    (the labeled rows alone, within the job's budget) unless --no-run. Notes go to stderr.
    """
    from corral import _eval

    err = _err()
    if labels is None:
        _fail("--labels FILE is required: a CSV, TSV or JSONL file with the key column and gold columns named like the sink's")
    model: Any = _model_option(model_name)

    def progress(ev: dict[str, Any]) -> None:
        if ev.get("phase") == "start":
            err.print(f"running the labeled rows: run {ev['run']} · model {ev['model']}", markup=False)

    try:
        job = Job.load(job_file)
        result = asyncio.run(_eval.evaluate_async(
            job, labels=labels, runs=runs, model=model, store=store, key_column=key_column,
            run_missing=not no_run, progress=progress, handle_signals=True))
    except _eval.Interrupted as e:
        err.print(f"{e}; finished work is saved. Run the same command again to resume.", markup=False)
        sys.exit(EXIT_INTERRUPTED)
    except (UserError, StoreError) as e:
        _fail(str(e))
    except CorralError as e:
        _fail(str(e), EXIT_INTERNAL)
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
    for i, t in enumerate([_eval.summary_table(result)] + [d for r in result.runs for d in _eval.detail_tables(r)]):
        if i:
            click.echo()
        _print_table(out, t)
    lines = _eval.missing_confidences(result)
    if result.unscored_steps:
        lines.append(f"not scored (no gold column in the labels file): {', '.join(result.unscored_steps)}")
    if result.unused_columns:
        lines.append(f"labels columns no step writes (ignored): {', '.join(result.unused_columns)}")
    if lines:
        click.echo()
        for line in lines:
            click.echo(line)


def _print_table(console: Console, t: Any) -> None:
    """A report table: a rich table on a terminal; aligned plain lines otherwise (piped output
    stays greppable, with no trailing spaces)."""
    if console.is_terminal:
        from rich.text import Text

        console.print(Text(t.title, style="bold"))  # above the table: a title in it wraps to its width
        table = Table()
        for i, h in enumerate(t.headers):
            table.add_column(h, justify="left" if i == 0 else "right")
        for row in t.rows:
            table.add_row(*(Text(c) for c in row))
        console.print(table)
        return
    widths = [max(len(r[i]) for r in [t.headers, *t.rows]) for i in range(len(t.headers))]
    click.echo(t.title)
    for row in [t.headers, *t.rows]:
        cells = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))]
        click.echo("  ".join(cells).rstrip())


# --- corral runs / status / show ---------------------------------------------------------


def _open(store: Path | None) -> Store:
    """The store a read-only command names. It must exist: a mistyped --store is reported, never
    created. Its methods end the command with the one-line error (exit 2) on a StoreError."""
    try:
        st = open_store(store, create=False)
    except StoreError as e:
        _fail(str(e))
    return _ExitOnStoreError(st)  # type: ignore[return-value]


class _ExitOnStoreError:
    """A store whose method calls end the command with the one-line error and exit 2 when they
    raise StoreError (a store damaged where the command reads it), as a failed open does."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._store, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return attr(*args, **kwargs)
            except StoreError as e:
                _fail(str(e))

        return call


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
    st = _open(store)
    try:
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
    finally:
        st.close()


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
        result = summarize(st, info, status=live_status(st, info))
        in_flight = st.open_batches(info.id)
        spend = st.breakdown(info.id)
        if as_json:
            obj = result.to_json()
            obj["by_step"] = [
                {**m, "cost": None if m["cost"] is None else float(m["cost"])} for m in spend
            ]
            if in_flight:
                obj["batches"] = [
                    {"id": b["id"], "state": b["detail"] or b["state"], "items": b["items"]} for b in in_flight
                ]
            click.echo(json.dumps(obj))
        else:
            console = _out()
            _print_summary(console, result, st)
            if spend:
                _print_spend(console, spend)
            for b in in_flight:
                console.print(
                    f"Batch       {b['id']}: {b['items']:,} requests, {b['detail'] or b['state']}"
                    f" — resume polling with `corral run` on the same job"
                )


def _print_spend(console: Console, spend: list[dict[str, Any]]) -> None:
    """Calls, tokens and cost by step, strategy (and stage) and model: what each extra call bought."""
    t = Table(title="By step, strategy and model", title_justify="left", box=None, pad_edge=False)
    for col in ("step", "strategy", "model", "calls", "replayed", "tokens in", "tokens out", "cost"):
        t.add_column(col, justify="right" if col not in ("step", "strategy", "model") else "left")
    for m in spend:
        t.add_row(
            m["step"], m["strategy"] or "", m["model"], f"{m['calls']:,}", f"{m['replayed']:,}",
            f"{m['input_tokens']:,}", f"{m['output_tokens']:,}", _money(m["cost"]),
        )
    console.print(t)


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
        calls = [c for c in trace if c["outcome"] not in DECISIONS]
        if as_json:
            click.echo(json.dumps({"run": info.id, **rec, "calls": calls, "trace": trace}, default=str))
            return
        _print_record(_out(), info, rec, trace, full=full)


def _rule(console: Console, title: str, style: str = "rule.line") -> None:
    """A titled rule across a terminal; off a terminal a short ``── title ──`` line, not 200
    columns of dashes."""
    if console.is_terminal:
        console.rule(title, style=style)
    else:
        console.print(f"── {title} ──", markup=False, highlight=False)


def _print_record(
    console: Console, info: RunInfo, rec: dict[str, Any], trace: list[dict[str, Any]], full: bool = False
) -> None:
    _rule(console, f"run {info.id} · record {rec['key']}")
    console.print(f"state: {rec['state']}" + (f"   reason: {rec['reason']}" if rec["reason"] else ""), markup=False)
    if rec["line"]:
        console.print(f"source line: {rec['line']}")
    console.print("input:", markup=False)
    for k, v in (rec["data"] or {}).items():
        console.print(f"  {k}: {v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)}", markup=False)
    if rec["outputs"]:
        console.print("outputs:", markup=False)
        for k, v in rec["outputs"].items():
            console.print(f"  {k}: {json.dumps(v, ensure_ascii=False)}", markup=False)
    prompts: dict[str, list[tuple[int, list[dict[str, Any]]]]] = {}  # step -> prompts printed in full
    for c in trace:
        if c["outcome"] in DECISIONS:
            for i, line in enumerate(_decision_lines(c)):
                console.print(("» " if i == 0 else "    ") + line, style="bold" if i == 0 else None, markup=False)
            continue
        _print_call(console, c, prompts.setdefault(c["step"], []), full)
        if (c["data"] or {}).get("accepted") is True:  # this call's answer was accepted as it is
            line = _decision_lines({**c, "outcome": "accepted"})[0]
            console.print("» " + line, style="bold", markup=False)


def _print_call(console: Console, c: dict[str, Any], seen: list[tuple[int, list[dict[str, Any]]]], full: bool) -> None:
    data = c["data"] or {}
    resp = c["response"]
    number = c["attempt"] + 1
    tag = "replayed" if c["replayed"] else "paid call" if c["replayed"] is False else "no response"
    head = [f"step {c['step']}", f"attempt {number}"]
    if data.get("role"):
        head.append(str(data["role"]))
    _rule(console, " · ".join([*head, c["outcome"], tag]), style="dim")
    about = []
    if data.get("strategy"):
        about.append(f"strategy {data['strategy']}")
    model = data.get("model") or (resp or {}).get("model")
    if model and c["request"]:
        about.append(f"model {model}")
    if data.get("confidence") is not None:
        about.append(f"confidence {_conf(data['confidence'])}")
    if about:
        console.print(" · ".join(about), markup=False)
    problems = [str(p) for p in data.get("problems") or []]
    if c["detail"] and c["detail"] != "; ".join(problems):
        console.print(f"detail: {c['detail']}", markup=False)
    req = c["request"]
    if req:
        messages = list(req["messages"])
        shown = same = 0
        if not full:
            for n, earlier in seen:
                if len(earlier) <= len(messages) and messages[: len(earlier)] == earlier and len(earlier) > shown:
                    shown, same = len(earlier), n
            if shown:
                rest = " (then:)" if shown < len(messages) else ""
                console.print(f"(same prompt as attempt {same}){rest}", style="dim", markup=False)
        if shown < len(messages):
            if shown == 0:
                seen.append((number, messages))
            for m in messages[shown:]:
                console.print(f"[{m['role']}]", markup=False)
                console.print(m["content"], markup=False)
    if resp:
        usage = resp["usage"]
        console.print(
            f"[response · finish {resp['finish_reason']} · {usage['input_tokens']} in / {usage['output_tokens']} out tokens]",
            markup=False,
        )
        console.print(resp["text"], markup=False)
        answer = data.get("answer")
        if answer is None and c["outcome"] == "ok":
            try:
                answer = json.loads(resp["text"], strict=False)
            except ValueError:
                pass
        if answer is not None:
            console.print("[parsed answer] " + json.dumps(answer, ensure_ascii=False), markup=False)
    reasoning = data.get("reasoning") or (resp or {}).get("reasoning")
    if reasoning:
        console.print("[reasoning]", markup=False)
        console.print(str(reasoning), markup=False)
    for line in _grounding_lines(data.get("grounding"), data.get("answer")):
        console.print(line, markup=False)
    if problems:
        console.print("[failed checks]", markup=False)
        for p in problems:
            console.print(f"- {p}", markup=False)


def _grounding_lines(g: Any, answer: Any) -> list[str]:
    """Where each grounded field's value was found in the call's rendered input (character
    offsets), or that it was not; and the values ``on_ungrounded: null`` set to null."""
    if not isinstance(g, dict):
        return []
    answer = answer if isinstance(answer, dict) else {}
    lines = []
    for name, where in (g.get("spans") or {}).items():
        value = answer.get(name)
        pairs = zip(where, value) if isinstance(where, list) and isinstance(value, list) else [(where, value)]
        for w, v in pairs:
            if isinstance(w, dict):
                s, e = w.get("span") or [0, 0]
                lines.append(f"[grounded] {name}: found `{w.get('found')}` at {s}-{e} of the input")
            elif v is not None:
                shown = v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)
                lines.append(f"[grounded] {name} `{shown}`: not found in the input")
    for name, v in (g.get("nulled") or {}).items():
        for item in v if isinstance(v, list) else [v]:
            shown = item if isinstance(item, str) else json.dumps(item, ensure_ascii=False)
            lines.append(f"[grounded] {name} `{shown}`: not found in the input; set to null")
    return lines


def _decision_lines(c: dict[str, Any]) -> list[str]:
    """A strategy's decision as one short line (and, for some, indented lines under it)."""
    d = c["data"] or {}
    kind = c["outcome"]
    detail = c["detail"] or ""
    if kind == "vote" and d.get("fields"):
        notes = [f"agreement {_conf(d.get('agreement'))}"]
        if d.get("failed"):
            notes.append(f"{d['failed']} sample{'s' * (d['failed'] > 1)} without an answer")
        if d.get("stopped"):
            notes.append(f"stopped: {d['stopped']}")
        tail = f"({'; '.join(notes)})"
        fields: dict[str, dict[str, int]] = d["fields"]
        if len(fields) == 1:
            (votes,) = fields.values()
            return [f"vote: {_tally(votes)} {tail}"]
        return [f"vote, {d.get('answers', '?')} answers {tail}:", *(f"{k}: {_tally(v)}" for k, v in fields.items())]
    if kind == "critique" and "problems" in d:
        problems = [str(p) for p in d["problems"] or []]
        if not problems:
            return [f"critique: {detail or 'no problems'}"]
        head = f"critique of answer {int(d.get('round', 0)) + 1}:"
        if len(problems) == 1:
            return [f"{head} {problems[0]}"]
        return [head, *(f"- {p}" for p in problems)]
    if kind == "best" and d.get("branches") is not None:
        parts = []
        for b in d["branches"]:
            s = f"branch {b.get('branch')} " + ("passed" if b.get("passed") else "failed")
            if b.get("judge") is not None:
                s += f", judge {b['judge']}/10"
            if b.get("problems"):
                n = len(b["problems"])
                s += f", {n} failed check{'s' * (n > 1)}"
            parts.append(s)
        return [f"best_of: {'; '.join(parts)} -> kept branch {d.get('kept')}"]
    if kind == "escalate" and "stage" in d:
        stage = d["stage"]
        conf, threshold = d.get("confidence"), d.get("threshold")
        bar = f"threshold {threshold:g}" if threshold is not None else "no threshold"
        if d.get("escalate"):
            why = str(d.get("why") or detail)
            if why.startswith("confidence ") and conf is not None:
                return [f"escalate: stage {stage} -> stage {stage + 1}: confidence {_conf(conf)} < {bar}"]
            return [f"escalate: stage {stage} -> stage {stage + 1}: {why} (confidence {_conf(conf)}, {bar})"]
        if conf is None:
            return [f"cascade: stage {stage} accepted (no confidence measure, {bar}; checks passed)"]
        return [f"cascade: stage {stage} accepted (confidence {_conf(conf)} >= {bar}; checks passed)"]
    if kind == "budget":
        best = d.get("answer")
        tail = f"; best answer so far {_compact(best)}" if best is not None else "; no answer yet"
        return [f"budget: {detail.removeprefix('budget: ')}{tail}"]
    if kind == "accepted" and "answer" in d:
        notes = []
        if d.get("confidence") is not None:
            notes.append(f"confidence {_conf(d['confidence'])}")
        if d.get("calls") is not None:
            notes.append(f"{d['calls']} call{'s' * (d['calls'] != 1)}")
        return [f"accepted: {_compact(d['answer'])}" + (f" ({', '.join(notes)})" if notes else "")]
    return [f"{kind}: {detail}" if detail else kind]


def _tally(votes: dict[str, int]) -> str:
    """``{'"billing"': 3, '"account"': 1}`` -> ``billing 3, account 1 -> billing`` (the leader first)."""
    ranked = sorted(votes.items(), key=lambda kv: -kv[1])  # stable: ties keep the vote's order
    shown = [f"{_value(v)} {n}" for v, n in ranked]
    return f"{', '.join(shown)} -> {_value(ranked[0][0])}" if ranked else "no votes"


def _value(canonical_json: str) -> str:
    try:
        v = json.loads(canonical_json)
    except ValueError:
        return canonical_json
    return v if isinstance(v, str) else _compact(v)


def _compact(v: Any) -> str:
    return json.dumps(v, ensure_ascii=False, separators=(", ", ": "))


def _conf(c: Any) -> str:
    if c is None:
        return "n/a"
    c = float(c)
    return f"{c:.2f}" if c == 0 or c >= 0.01 else f"{c:.1e}"


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
    line = f"wrote {_count(stats.examples, 'example')} from {_count(stats.records, 'record')} to {where}"
    notes = []
    if reasoning:
        notes.append(f"{stats.with_reasoning:,} with reasoning, {stats.examples - stats.with_reasoning:,} without")
    if stats.no_prompt:
        notes.append(f"{stats.no_prompt:,} left out: their prompt is not in the store")
    _err().print(line + (f" ({'; '.join(notes)})" if notes else ""), markup=False)


def _count(n: int, what: str) -> str:
    return f"{n:,} {what}" + ("" if n == 1 else "s")


if __name__ == "__main__":  # pragma: no cover
    main()
