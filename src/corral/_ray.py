"""``corral run --engine ray``: one run spread over a Ray cluster, the store its source of truth.

The driver (the ``corral run`` process) loads the source into the store as any run does, then
starts Ray workers (actors, one CPU each) that each work on that same run as a ``corral worker``
would: they lease chunks of its pending rows from the store, ask the models through their own
request layer, and commit what they finish. The store keeps the leases, the response cache, the
call claims and the ledger (:mod:`corral.store.leases`, :mod:`corral._call_claims`), so the
workers share the rows, each row is written once and each completed call is paid once; budgets
and rate limits are shared through it too (:mod:`corral._peers`). Ray only places the workers.

Every node opens the same store and the same job: the store must be reachable from each (a
Postgres URL; an SQLite file serves the nodes of one machine, or a disk they all mount), and the
job's folder (its file, source, prompts) must be readable at the same path on each, with Corral
installed there. A Ray worker that dies (its process killed, its node lost) is reported by Ray;
the driver gives its leased rows back to the queue at once and the other workers take them.
When every worker has ended, the driver makes one last pass itself, which takes any row still
pending, writes the outputs and gives the usual summary. Ctrl-C asks the workers to stop (their
leased rows go back), waits for them a few seconds, then ends them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from corral._build_models import make_model
from corral._ingest import ingest, new_run
from corral._outputs import prepare
from corral._result import RunResult
from corral.engine import STOP_GRACE_S, Progress, _install_signals, run_async, run_id_for
from corral.errors import UserError
from corral.io.frames import job_with
from corral.job import Job
from corral.store import is_store_url, open_store, shown_store, store_path_near
from corral.store.base import RunInfo, Store
from corral.store.leases import HOST

#: how to get Ray where it is missing
RAY_HINT = "make install, or pip install -e '.[ray]' in the Corral checkout"
#: the most Ray workers started by default (one per CPU of the cluster, up to this)
MAX_WORKERS = 64
#: how long the Ray workers may take to start before the run goes on without those still waiting
START_S = 60.0
#: how long a Ray cluster's address may take to answer
CONNECT_S = 5.0
#: after a stop, how long the Ray workers may take to give their rows back before they are ended
HALT_S = STOP_GRACE_S + 10.0
#: seconds between two looks at the Ray workers and the store while they work
TICK_S = 0.25


def ray_module() -> Any:
    """The ``ray`` package, or UserError with how to install it."""
    try:
        import ray
    except ImportError:
        raise UserError(f"--engine ray needs Ray, which is not installed here: {RAY_HINT}") from None
    return ray


class _Worker:
    """A Ray actor working on one run of the store, as a ``corral worker`` does."""

    def __init__(self) -> None:
        self.stop = asyncio.Event()

    async def owner_prefix(self) -> str:
        """The start of the lease owner ids this worker takes (see :func:`new_owner_id`)."""
        return f"{HOST}:{os.getpid()}:"

    async def work(self, job_file: str, model: str | dict[str, Any] | None, limit: int | None,
                   store: str, run_id: str) -> str:
        """One pass over the driver's run; refused (UserError) where this node would not work on
        that very run: another store, or another job or source at the job's path."""
        job = job_with(job_file)
        _, _, _, rid = await _identity(job, model)
        st = open_store(store, create=False)  # never a store of this node's own
        try:
            if rid != run_id:
                raise UserError(f"on {HOST} the job or its source differs from the driver's (run {rid}, not "
                                f"{run_id}); give every node the same job folder at the same path")
            if st.get_run(run_id) is None:
                raise UserError(f"the store {shown_store(store)} on {HOST} does not hold run {run_id}; the "
                                "nodes must share one store: a Postgres URL, or a disk they all mount")
            result = await run_async(job, model=model, limit=limit, store=st, stop=self.stop)
        finally:
            st.close()
        return result.status

    async def halt(self) -> None:
        self.stop.set()


async def run_on_ray(
    job_file: str | Path, *, model: str | dict[str, Any] | None = None, limit: int | None = None,
    store: str | Path | None = None, address: str | None = None, workers: int | None = None,
    progress: Progress | None = None,
) -> RunResult:
    """Run (or resume) the job in ``job_file`` on the Ray cluster at ``address`` (default: Ray's:
    ``$RAY_ADDRESS``, else the cluster last started on this machine, else a Ray instance started
    here for the run) with ``workers`` Ray workers (default: one per CPU of the cluster, at most
    :data:`MAX_WORKERS`); the summary is the driver's last pass's, as :func:`run_async` gives it."""
    ray, started = ray_module(), time.monotonic()
    job_path = str(Path(job_file).resolve())
    job = job_with(job_path)
    where = Path(store) if store is not None else store_path_near(job.base_dir)
    where_s = str(where) if is_store_url(where) else str(where.resolve())
    say = _sayer(progress)
    stop = asyncio.Event()
    heard: list[str] = []
    restore = _install_signals(stop, heard)
    try:
        if progress:
            progress({"phase": "fingerprint"})
        # a mistake in the job is found before the store or Ray is touched
        source, model_id, fingerprint, rid = await _identity(job, model)
        st = open_store(where_s)
        try:
            run = await _load(st, job, source, new_run(job, rid, model_id, fingerprint), limit, progress, stop)
            if not stop.is_set() and not _finished(st, run, limit):
                # Ray prints what its nodes report (a worker that died...) on stdout: stderr here,
                # so that stdout keeps the summary alone (--json)
                with contextlib.redirect_stdout(sys.stderr):
                    _connect(ray, address)
                    try:
                        await _spread(ray, st, run, (job_path, model, limit, where_s, rid), workers, say,
                                      progress, stop)
                    finally:
                        ray.shutdown()
                say("the Ray workers have ended; finishing the run here")
        finally:
            st.close()
        result = await run_async(job_path, model=model, limit=limit, store=where_s, progress=progress, stop=stop)
        if heard and result.status == "interrupted" and not result.stop_reason:
            result.stop_reason = heard[0]
        result.elapsed_s = time.monotonic() - started  # the whole run's, not the last pass's
        return result
    finally:
        if restore:
            restore()


def _sayer(progress: Progress | None) -> Callable[[str], None]:
    def say(line: str) -> None:
        if progress:
            progress({"phase": "notice", "message": f"ray: {line}"})
    return say


async def _identity(job: Job, model: str | dict[str, Any] | None) -> tuple[Any, str, str, str]:
    """What makes the job's run, as :func:`run_async` finds it: the job's source (its mistakes
    found first), the model's id, the input's fingerprint, the run's id."""
    source, _ = prepare(job)
    m = make_model(model or job.model, job.base_dir)
    try:
        fingerprint = await asyncio.to_thread(source.fingerprint)
    finally:
        await m.aclose()
    return source, m.id, fingerprint, run_id_for(job, m, fingerprint)


async def _load(st: Store, job: Job, source: Any, new: RunInfo, limit: int | None, progress: Progress | None,
                stop: asyncio.Event) -> RunInfo:
    """The run in the store with its rows loaded, as :func:`run_async` creates and loads it, so
    that the Ray workers find it ready (and never load the source at the same time)."""
    run = st.create_run(new)
    if not run.ingest_done:
        st.update_run(run.id, status="ingesting")
    return await asyncio.to_thread(ingest, st, run, job, source, limit, progress, stop)


def _finished(st: Store, run: RunInfo, limit: int | None) -> bool:
    """Whether no row of the run is left to work on (the last pass alone writes the outputs)."""
    counts = st.counts(run.id, limit)
    return not counts.get("pending", 0) and not counts.get("leased", 0)


def _connect(ray: Any, address: str | None) -> None:
    """Join the Ray cluster at ``address`` (UserError with the fix when nothing answers there),
    or Ray's default one."""
    target = address or os.environ.get("RAY_ADDRESS") or None
    if target and target not in ("auto", "local"):
        host, sep, port = target.removeprefix("ray://").rpartition(":")
        if not sep or not host or not port.isdigit():
            raise UserError(f"--address {target!r} is not a Ray cluster's address; give it as HOST:PORT, "
                            "the address `ray start --head` printed (e.g. 10.0.0.5:6379)")
        try:
            socket.create_connection((host, int(port)), timeout=CONNECT_S).close()
        except OSError as e:
            raise UserError(
                f"no Ray cluster answers at --address {target} ({e.strerror or e}); start one with "
                "`ray start --head` on that machine, or give the address it printed (HOST:PORT)") from None
    try:
        ray.init(address=target, logging_level=logging.WARNING, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise UserError(f"cannot join the Ray cluster at {target or 'this machine'}: {_first_line(e)}; "
                        "check it with `ray status`, or give its address with --address HOST:PORT") from None


async def _spread(ray: Any, st: Store, run: RunInfo, args: tuple[Any, ...], workers: int | None,
                  say: Callable[[str], None], progress: Progress | None, stop: asyncio.Event) -> None:
    """Start the Ray workers on ``run``, wait for them all (a lost one's rows go back to the queue
    at once), and end them."""
    n = workers or min(MAX_WORKERS, max(1, int(ray.cluster_resources().get("CPU", 1))))
    actor = ray.remote(num_cpus=1, max_restarts=0)(_Worker)
    actors = [actor.remote() for _ in range(n)]
    say(f"starting {n} Ray workers on run {run.id} (up to {START_S:.0f} s; Ctrl-C to stop)")
    try:
        started = await _started(ray, actors, stop)
        if not stop.is_set():
            if not started:
                raise UserError(
                    f"no Ray worker started within {START_S:.0f} s: the cluster has no free CPU "
                    "for them (see `ray status`); add nodes, or ask for fewer with --ray-workers N")
            if len(started) < n:
                say(f"{len(started)} of {n} Ray workers started within {START_S:.0f} s; going on with those")
            await _watch(ray, st, run, args, started, say, progress, stop)
    finally:
        for a in actors:
            ray.kill(a)


async def _started(ray: Any, actors: list[Any], stop: asyncio.Event) -> dict[Any, str]:
    """The actors that started within :data:`START_S`, each with its lease owner prefix."""
    asked = {a.owner_prefix.remote(): a for a in actors}
    pending, until = list(asked), time.monotonic() + START_S
    out: dict[Any, str] = {}
    while pending and not stop.is_set() and time.monotonic() < until:
        ready, pending = ray.wait(pending, num_returns=len(pending), timeout=0)
        for ref in ready:
            try:
                out[asked[ref]] = ray.get(ref)
            except ray.exceptions.RayError:
                pass  # it died starting: the others go on
        if pending:
            await asyncio.sleep(TICK_S)
    return out


async def _watch(ray: Any, st: Store, run: RunInfo, args: tuple[Any, ...], started: dict[Any, str],
                 say: Callable[[str], None], progress: Progress | None, stop: asyncio.Event) -> None:
    """Wait for the Ray workers to end their passes over the run, with progress; give the rows of
    a lost one back at once; on a stop, ask them to stop and end those that outstay
    :data:`HALT_S`."""
    limit = args[2]
    calls = {a.work.remote(*args): (a, prefix) for a, prefix in started.items()}
    pending = list(calls)
    halt_until: float | None = None
    while pending:
        if stop.is_set() and halt_until is None:
            say(f"stopping the Ray workers (up to {HALT_S:.0f} s): their rows go back to the queue")
            for a, _ in calls.values():
                a.halt.remote()
            halt_until = time.monotonic() + HALT_S
        if halt_until is not None and time.monotonic() > halt_until:
            for ref in pending:
                a, prefix = calls[ref]
                ray.kill(a)
                _give_back(st, run.id, prefix)
            break
        ready, pending = ray.wait(pending, num_returns=len(pending), timeout=0)
        for ref in ready:
            _, prefix = calls[ref]
            try:
                ray.get(ref)
            except ray.exceptions.RayError as e:
                back = _give_back(st, run.id, prefix)
                why = "was lost" if isinstance(e, ray.exceptions.RayActorError) else f"failed ({_first_line(e)})"
                say(f"the Ray worker {prefix.rstrip(':')} {why}; {back:,} rows it held went back to the queue")
        if progress:
            progress({"phase": "run", **_snapshot(st, run.id, limit)})
        if pending:
            await asyncio.sleep(TICK_S)


def _give_back(st: Store, run_id: str, prefix: str) -> int:
    """Return to the queue the rows a lost Ray worker (lease owners starting with ``prefix``)
    held, and any lease that expired; how many."""
    return st.reclaim(run_id, lambda owner: owner.startswith(prefix))


def _first_line(e: BaseException) -> str:
    cause = getattr(e, "cause", None) or e
    return (str(cause).strip().splitlines() or [type(cause).__name__])[-1]


def _snapshot(st: Store, run_id: str, limit: int | None) -> dict[str, Any]:
    """The run's counters as the store has them, for the progress display."""
    s, t = st.counts(run_id, limit), st.totals(run_id)
    return {
        "in": sum(s.values()), "done": s.get("done", 0), "quarantined": s.get("quarantined", 0),
        "review": s.get("review", 0), "skipped": s.get("skipped", 0),
        "pending": s.get("pending", 0) + s.get("leased", 0), "made": t.made, "replayed": t.replayed,
        "cost": None if t.cost is None or not t.cost else float(t.cost), "paused": False,
    }
