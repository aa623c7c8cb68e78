"""``corral worker``: one of any number of processes that work on the same runs of a store.

A worker leases chunks of a run's pending records like ``corral run`` does (the store keeps the
leases, the response cache, the call claims and the ledger: see :mod:`corral.store.leases` and
:mod:`corral._call_claims`), so workers started on one store share the rows between them; each
row is written once and each completed call is paid once. The last worker to finish a run writes
its outputs.

Given job files, a worker works on those jobs' runs (creating them, like ``corral run``, if they do
not exist yet). Given none, it works on every unfinished run in the store whose job it can read
back (runs keep their job and the folder it was run from), oldest first. When no run has rows
left to take, it waits for new ones up to ``idle_s`` seconds (polling the store), then ends.
A stop (Ctrl-C, SIGTERM) ends the run in hand as ``corral run`` does and ends the worker.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corral._build_models import make_model
from corral._result import RunResult
from corral._review import load_job
from corral.engine import Progress, run_async
from corral.errors import UserError
from corral.job import Job
from corral.store.base import RunInfo, Store
from corral.store.leases import owner_dead

#: run statuses a worker takes up (``stopped``: a budget stopped it on purpose; not resumed)
OPEN_STATUSES = ("created", "ingesting", "running", "interrupted")
#: the longest pause between two looks at the store for new work
POLL_S = 2.0


@dataclass
class WorkerReport:
    """What a worker did: the summary of each run it worked on (as it left it), the runs it
    could not take up and why, and whether a stop ended it."""

    results: list[RunResult] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # run id -> why
    stopped: bool = False


def open_work(st: Store) -> list[RunInfo]:
    """The store's runs with rows a worker can take now, oldest first: pending rows (leases that
    expired or whose process died are given back to the queue first), or rows still to load."""
    out = []
    for info in st.list_runs(limit=10_000):
        if info.status not in OPEN_STATUSES:
            continue
        counts = st.counts(info.id)
        if counts.get("leased") and not counts.get("pending"):
            st.reclaim(info.id, owner_dead)
            counts = st.counts(info.id)
        if counts.get("pending", 0) or not info.ingest_done:
            out.append(info)
    return sorted(out, key=lambda r: r.created_at)


def job_of(info: RunInfo) -> Job:
    """The job a stored run ran, read back from the store and its folder; UserError (with the
    fix) when it cannot be, or when the run ran on another model than its job names."""
    job = load_job(info)
    model_id = str(info.spec.get("model_id") or "")
    if model_id and (named := make_model(job.model, job.base_dir).id) != model_id:
        raise UserError(
            f"run {info.id} ran on model {model_id}, not its job's ({named}); start the "
            "worker with the job file and the model it ran with: corral worker JOB.yaml --model ...")
    return job


async def work(
    st: Store, jobs: list[Path], *, model: str | dict[str, Any] | None = None, idle_s: float = 0.0,
    stop: asyncio.Event | None = None, say: Callable[[str], None] = lambda line: None,
    progress: Callable[[], Progress | None] = lambda: None,
) -> WorkerReport:
    """Work on ``jobs``' runs (job files), or on every open run of ``st`` when none are given,
    until no rows are left to take and ``idle_s`` seconds passed without new ones, or ``stop``."""
    stop = stop or asyncio.Event()
    report = WorkerReport()
    ran: dict[Path, str] = {}  # job file -> its run
    known: dict[str, Job] = {}  # run id -> its job, read back once (building its model to check it)
    last_work = time.monotonic()
    while not stop.is_set():
        todo = _todo(st, jobs, ran, report, say, known)
        for job in todo:
            if stop.is_set():
                break
            result = await _one_run(job, model, st, stop, progress())
            if isinstance(job, Path):
                ran[job] = result.run
            report.results = [r for r in report.results if r.run != result.run] + [result]
            say(f"run {result.run} (job {result.job}): {result.status} · {result.written:,} written, "
                f"{result.pending:,} pending · {result.calls_made:,} calls paid in all")
        if todo:
            last_work = time.monotonic()
            continue
        left = idle_s - (time.monotonic() - last_work)
        if left <= 0:
            break
        say(f"waiting for work in the store ({left:.0f} s more; Ctrl-C to stop)")
        try:
            await asyncio.wait_for(stop.wait(), min(POLL_S, left))
        except TimeoutError:
            pass
    report.stopped = stop.is_set()
    return report


async def _one_run(job: Job | Path, model: str | dict[str, Any] | None, st: Store, stop: asyncio.Event,
                   progress: Progress | None) -> RunResult:
    """One run's pass, stopped when the worker is; its own stop event, so that a run its
    budget stops does not stop the worker."""
    mine = asyncio.Event()

    async def relay() -> None:
        await stop.wait()
        mine.set()

    relay_task = asyncio.create_task(relay())
    try:
        return await run_async(job, model=model, store=st, stop=mine, progress=progress)
    finally:
        relay_task.cancel()


def _todo(st: Store, jobs: list[Path], ran: dict[Path, str], report: WorkerReport,
          say: Callable[[str], None], known: dict[str, Job]) -> list[Job | Path]:
    """What to work on next: each job file once, then those whose run is still open; with no
    job files, the store's open runs (less those whose job cannot be read back)."""
    if jobs:
        if len(ran) < len(jobs):
            return [j for j in jobs if j not in ran]
        open_ids = {r.id for r in open_work(st)}
        return [j for j in jobs if ran[j] in open_ids]
    todo: list[Job | Path] = []
    for info in open_work(st):
        if info.id in report.skipped:
            continue
        try:
            if info.id not in known:
                known[info.id] = job_of(info)
            todo.append(known[info.id])
        except UserError as e:
            report.skipped[info.id] = str(e)
            say(f"skipped run {info.id}: {e}")
    return todo
