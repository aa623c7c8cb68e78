"""Corral runs LLM batch jobs over tables: durable, resumable, budgeted.

Exit codes:

\b
  0    the run finished: every row is written, quarantined, held for review or skipped
  1    an unexpected internal error (a bug: please report it with the message)
  2    a usage or input problem (bad job file, missing file or column, unknown model...)
  3    the run stopped before finishing (a budget was reached); run again to resume
  4    the provider refused the credentials (HTTP 401); fix the API key and run again
  130  interrupted (Ctrl-C); finished work is kept, run the same command again to resume
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import click
import yaml
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskProgressColumn, TextColumn, TimeRemainingColumn
from rich.table import Table

from corral._result import RunResult, summarize
from corral.engine import live_status, run_async
from corral.errors import CorralError, RunNotFoundError, StoreError, UserError
from corral.store import STORE_ENV, Store, open_store
from corral.store.base import DECISIONS, RunInfo

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_STOPPED = 3
EXIT_AUTH = 4
EXIT_INTERRUPTED = 130

_store_option = click.option(
    "--store",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    envvar=STORE_ENV,
    show_envvar=True,
    help="Store file (default: .corral/corral.db in the working directory).",
)
_json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")


def _err() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def _out() -> Console:
    console = Console(highlight=False, soft_wrap=True)
    if not console.is_terminal:  # piped or captured: do not cut lines at 80 columns
        console = Console(highlight=False, soft_wrap=True, width=200)
    return console


def _fail(message: str, code: int = EXIT_USAGE) -> None:
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
    model: str | dict[str, Any] | None = model_name
    if model_name and model_name.lstrip().startswith("{"):
        try:
            model = yaml.safe_load(model_name)
        except yaml.YAMLError:
            _fail(f"--model {model_name!r} is not a valid mapping; write it like '{{name: fake, latency: 0.1}}'")
    progress = _ProgressView(err) if err.is_terminal else None
    try:
        with progress or _Null():
            result = asyncio.run(
                run_async(
                    job_file,
                    model=model,
                    limit=limit,
                    store=store,
                    progress=progress.update if progress else None,
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
        st = open_store(store)
        try:
            _print_summary(_out(), result, st)
        finally:
            st.close()
    if result.status == "finished":
        sys.exit(EXIT_OK)
    if result.status == "interrupted":
        err.print(
            f"Interrupted with {result.pending} rows pending; finished work is saved. "
            f"Resume with: {_again(job_file, model_name, limit, store)}"
        )
        sys.exit(EXIT_INTERRUPTED)
    if result.status == "failed":
        err.print(f"Failed: {result.stop_reason}. Resume with: {_again(job_file, model_name, limit, store)}")
        sys.exit(EXIT_AUTH)
    err.print(
        f"Stopped: {result.stop_reason}. Raise the budget in the job file, then resume with: "
        f"{_again(job_file, model_name, limit, store)}"
    )
    sys.exit(EXIT_STOPPED)


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


class _Null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *a: Any) -> None:
        return None


class _ProgressView:
    """Progress bar on stderr: rows done of rows in, rows/s, ETA, states so far."""

    def __init__(self, console: Console) -> None:
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
        self.t0 = time.monotonic()
        self.first: int | None = None

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
        elif phase == "run":
            finished = ev["done"] + ev["quarantined"] + ev["review"] + ev["skipped"]
            if self.first is None:
                self.first, self.t0 = finished, time.monotonic()
            dt = time.monotonic() - self.t0
            rate = (finished - self.first) / dt if dt > 0.5 else 0.0
            states = f"✓{ev['done']:,}"
            if ev["quarantined"]:
                states += f" ✗{ev['quarantined']:,}"
            states += f" calls {ev['made']:,}"
            if ev["replayed"]:
                states += f" (+{ev['replayed']:,} replayed)"
            self.bar.update(
                self.task, description="rows", total=ev["in"], completed=finished,
                count=f"{finished:,}/{ev['in']:,}",
                rate=f"{rate:,.1f} rows/s" if rate else "", states=states,
            )


def _money(cost: Any) -> str:
    if cost is None:
        return "unknown (a model without prices was used)"
    return f"${float(cost):,.4f}"


def _print_summary(console: Console, r: RunResult, store: Store) -> None:
    t = Table.grid(padding=(0, 2))
    t.add_column(style="bold")
    t.add_column()
    head = f"run {r.run} · job {r.job} · {r.status}"
    if r.stop_reason and r.status != "finished":
        head += f" ({r.stop_reason})"
    t.add_row("Run", head)
    rows = (
        f"{r.rows_in:,} in = {r.written:,} written + {r.quarantined:,} quarantined + "
        f"{r.review:,} review + {r.skipped:,} skipped + {r.pending:,} pending"
    )
    t.add_row("Rows", rows + ("" if r.accounted else "  [bold red](does not add up)[/]"))
    t.add_row("Calls", f"{r.calls_made:,} made, {r.calls_replayed:,} replayed from the store")
    t.add_row("Tokens", f"{r.input_tokens:,} input, {r.output_tokens:,} output")
    t.add_row("Cost", _money(r.cost_usd))
    t.add_row("Elapsed", f"{r.elapsed_s:,.1f} s")
    if r.outputs:
        t.add_row("Output", r.outputs.get("sink", ""))
        t.add_row("Quarantine", r.outputs.get("quarantine", "") + f" ({_rows(r.quarantined)})")
        if "review" in r.outputs:
            t.add_row("Review", r.outputs["review"] + f" ({_rows(r.review)})")
        if "skipped" in r.outputs:
            t.add_row("Skipped", r.outputs["skipped"] + f" ({_rows(r.skipped)})")
    elif r.pending:
        t.add_row("Output", "not written yet: rows are still pending")
    console.print(t)
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
        console.print(f"{title}, by reason:")
        for reason, n in reasons.most_common(5):
            console.print(f"  {n:>6,}  {reason}   e.g. corral show {r.run} {shlex.quote(example[reason])}")


def _rows(n: int) -> str:
    return f"{n:,} row" + ("" if n == 1 else "s")


def _reason_kind(reason: str) -> str:
    # group "line 17: expected 4 fields" style reasons by their text after the location
    if reason.startswith("malformed input: line"):
        return "malformed input row"
    return reason.split(" (after")[0][:120]


# --- corral runs / status / show ---------------------------------------------------------


def _open(store: Path | None) -> Store:
    try:
        return open_store(store)
    except StoreError as e:
        _fail(str(e))
        raise


def _resolve(st: Store, run: str | None) -> RunInfo:
    if run is None:
        runs = st.list_runs(1)
        if not runs:
            raise RunNotFoundError("no runs in this store yet — start one with `corral run JOB.yaml`")
        return runs[0]
    found = st.find_runs(run)
    if not found:
        raise RunNotFoundError(f"no run matches `{run}` — list runs with `corral runs`")
    ids = {r.id for r in found}
    exact = [r for r in found if r.id == run]
    if exact:
        return exact[0]
    if len(ids) > 1 and not all(r.job_name == run for r in found):
        raise RunNotFoundError(
            f"`{run}` matches {len(ids)} runs ({', '.join(sorted(ids)[:5])}); give more of the id"
        )
    return found[0]


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
        for name in ("run", "job", "status", "in", "written", "quarantined", "pending", "calls", "cost"):
            t.add_column(name, no_wrap=True)
        for r in results:
            t.add_row(
                r.run, r.job, r.status, f"{r.rows_in:,}", f"{r.written:,}", f"{r.quarantined:,}",
                f"{r.pending:,}", f"{r.calls_made:,}", "?" if r.cost_usd is None else f"${float(r.cost_usd):.4f}",
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
    st = _open(store)
    try:
        try:
            info = _resolve(st, run)
        except UserError as e:
            _fail(str(e))
            return
        result = summarize(st, info, status=live_status(st, info))
        in_flight = st.open_batches(info.id)
        if as_json:
            obj = result.to_json()
            if in_flight:
                obj["batches"] = [
                    {"id": b["id"], "state": b["detail"] or b["state"], "items": b["items"]} for b in in_flight
                ]
            click.echo(json.dumps(obj))
        else:
            console = _out()
            _print_summary(console, result, st)
            for b in in_flight:
                console.print(
                    f"Batch       {b['id']}: {b['items']:,} requests, {b['detail'] or b['state']}"
                    f" — resume polling with `corral run` on the same job"
                )
    finally:
        st.close()


@main.command("show")
@click.argument("run")
@click.argument("key")
@_json_option
@_store_option
def show_cmd(run: str, key: str, as_json: bool, store: Path | None) -> None:
    """Show one record: its input, state and reason, and every attempt with the rendered
    prompt, the raw response and the parsed answer."""
    st = _open(store)
    try:
        try:
            info = _resolve(st, run)
        except UserError as e:
            _fail(str(e))
            return
        rec = st.record(info.id, key)
        if rec is None:
            _fail(f"run {info.id} has no record with key `{key}` — keys are the job's `key:` column values (see the sink's columns)")
            return
        trace = st.record_calls(info.id, key)
        calls = [c for c in trace if c["outcome"] not in DECISIONS]
        if as_json:
            click.echo(json.dumps({"run": info.id, **rec, "calls": calls, "trace": trace}, default=str))
            return
        _print_record(_out(), info, rec, trace)
    finally:
        st.close()


def _print_record(console: Console, info: RunInfo, rec: dict[str, Any], calls: list[dict[str, Any]]) -> None:
    console.rule(f"run {info.id} · record {rec['key']}")
    console.print(f"state: {rec['state']}" + (f"   reason: {rec['reason']}" if rec["reason"] else ""))
    if rec["line"]:
        console.print(f"source line: {rec['line']}")
    console.print("input:", markup=False)
    for k, v in (rec["data"] or {}).items():
        console.print(f"  {k}: {v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)}", markup=False)
    if rec["outputs"]:
        console.print("outputs:", markup=False)
        for k, v in rec["outputs"].items():
            console.print(f"  {k}: {json.dumps(v, ensure_ascii=False)}", markup=False)
    for c in calls:
        tag = "replayed" if c["replayed"] else "paid call" if c["replayed"] is False else "no response"
        console.rule(f"step {c['step']} · attempt {c['attempt'] + 1} · {c['outcome']} · {tag}", style="dim")
        if c["detail"]:
            console.print(f"detail: {c['detail']}", markup=False)
        req = c["request"]
        if req:
            for m in req["messages"]:
                console.print(f"[{m['role']}]", markup=False)
                console.print(m["content"], markup=False)
        resp = c["response"]
        if resp:
            console.print(f"[response · finish {resp['finish_reason']} · {resp['usage']['input_tokens']} in / {resp['usage']['output_tokens']} out tokens]", markup=False)
            console.print(resp["text"], markup=False)
            if c["outcome"] == "ok":
                try:
                    parsed = json.loads(resp["text"], strict=False)
                    console.print("[parsed answer] " + json.dumps(parsed, ensure_ascii=False), markup=False)
                except ValueError:
                    pass


if __name__ == "__main__":  # pragma: no cover
    main()
