"""``corral worker``: work on a store's runs alongside any number of other workers (see
:mod:`corral._worker`). Registered in :mod:`corral.cli`."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

import click

from corral._cli_store import store_option


@click.command("worker")
@click.argument("jobs", nargs=-1, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@store_option()
@click.option("--model", "model_name", default=None,
              help="With job files: the model they run on, as corral run --model takes it.")
@click.option("--idle", "idle_s", type=click.FloatRange(min=0), default=0.0, show_default=True, metavar="SECONDS",
              help="When no row is left to take, wait this long for new work (polling the store every 2 s) before ending.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary of each run worked on as one JSON object on stdout.")
def worker_cmd(jobs: tuple[Path, ...], store: Path | None, model_name: str | None, idle_s: float, as_json: bool) -> None:
    """Work on the runs of a store alongside other workers: each leases chunks of the same runs'
    pending rows, so any number of workers (on this machine or others sharing the store) finish
    them together, every row written once and every completed call paid once. With JOB files,
    the workers work on those jobs (their runs are created if need be); without, on every
    unfinished run in the store whose job folder is readable here. The worker ends when no row is
    left to take (after --idle seconds without new work); Ctrl-C or SIGTERM ends it at once,
    its leased rows going back to the queue for the others."""
    from corral import _worker, report
    from corral.cli import (
        EXIT_INTERRUPTED,
        EXIT_OK,
        EXIT_STOPPED,
        _arun,
        _err,
        _exit_codes,
        _fail,
        _out,
        _parse_model_option,
    )
    from corral.store import default_store_path, open_store

    err = _err()
    model = _parse_model_option(model_name)
    if model is not None and not jobs:
        _fail("--model needs job files: corral worker JOB.yaml --model NAME (a stored run keeps its model)")
    where = str(store) if store else str(default_store_path())

    def say(line: str) -> None:
        err.print(f"worker: {line}", markup=False)

    def progress() -> Any:
        return None  # each run's line is said when the worker leaves it; the store has the rest

    async def main() -> _worker.WorkerReport:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        heard: list[int] = []

        def on_signal(sig: int) -> None:
            heard.append(sig)
            stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal, sig)
        st = open_store(where, create=bool(jobs))
        try:
            say(f"working on {'the runs of ' + ', '.join(map(str, jobs)) if jobs else 'every open run'} "
                f"in the store {report.shown(where)}")
            return await _worker.work(st, list(jobs), model=model, idle_s=idle_s, stop=stop, say=say,
                                      progress=progress)
        finally:
            st.close()

    with _exit_codes():
        rep = _arun(main())
    if as_json:
        click.echo(json.dumps({"runs": [r.to_json() for r in rep.results], "skipped": rep.skipped,
                               "stopped": rep.stopped}))
    else:
        out = _out()
        if not rep.results:
            out.print("No open run in the store had rows to take.", markup=False)
        for r in rep.results:
            out.print(f"run {r.run} · job {r.job} · {r.status} · {r.rows_in:,} in = {r.written:,} written + "
                      f"{r.quarantined:,} quarantined + {r.review:,} review + {r.skipped:,} skipped + "
                      f"{r.pending:,} pending · {r.calls_made:,} calls made, {r.calls_replayed:,} replayed",
                      markup=False)
    if rep.stopped:
        err.print("Stopped: rows this worker held went back to the queue. Start it again to go on: "
                  + " ".join(["corral worker", *map(str, jobs), *(["--store", report.shown(str(store))] if store else [])]),
                  markup=False)
        sys.exit(EXIT_INTERRUPTED)
    if any(r.status == "stopped" for r in rep.results):
        sys.exit(EXIT_STOPPED)
    sys.exit(EXIT_OK)
