"""The engine: runs a job, and schedules its records; the only place that calls models.

A run reads the source into the store (keyed, resumable: :mod:`corral._ingest`), leases pending
records in chunks (:mod:`corral.store.leases`), works each record through its steps
(:mod:`corral._record`), asking the models through the request layer — cache, budget, limiter,
retry, model, every response recorded before it is used (:mod:`corral._client`) — commits states
in groups (:mod:`corral._commit`), buys ``mode: batch`` answers from provider batches
(:mod:`corral.batchapi`), and writes the sinks when every row has reached a final state
(:mod:`corral._outputs`). This module holds the entry points and the scheduler that ties them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from corral._build_models import make_model, strategy_models
from corral._client import (
    Counts,
    Deferred,
    Halt,
    RequestLayer,
    Stop,
    default_concurrency,
)
from corral._commit import GroupCommitter
from corral._ingest import ingest, new_run
from corral._outputs import describe_preview, prepare, show_path, write_outputs
from corral._record import RecordProcessor
from corral._result import RunResult, summarize
from corral._solver import check_scoring
from corral.batchapi import BatchCoordinator
from corral.errors import StoreError, UserError
from corral.io.frames import job_with
from corral.job import Job, ModelRef
from corral.models.base import Model
from corral.store import Store, open_store, store_path_near
from corral.store.base import LeasedRecord, RunInfo
from corral.store.leases import LEASE_TTL_S, live_status, new_owner_id, other_owners, owner_dead

__all__ = ["run", "run_async", "run_id_for", "store_path_for", "make_model", "live_status",
           "default_concurrency"]

#: on Ctrl-C or SIGTERM, how long calls in flight may take to bring their answers
STOP_GRACE_S = 2.0

Progress = Callable[[dict[str, Any]], None]


def run_id_for(job: Job, model: Model, fingerprint: str) -> str:
    """The run's id: the same job on the same model and input is the same run (and resumes)."""
    blob = f"{job.spec_hash()}:{model.id}:{fingerprint}"
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


class _Runner:
    """The scheduler of one run: a producer leases records in chunks, workers (as many as the
    calls allowed in flight keep busy, up to ``concurrency``) take each to its final state, a
    reporter shows progress, a stop cuts calls short after :data:`STOP_GRACE_S`."""

    def __init__(
        self, job: Job, model: Model, store: Store, run: RunInfo, limit: int | None,
        progress: Progress | None, stop: asyncio.Event, ref: ModelRef | None,
        extra: dict[str, tuple[Model, ModelRef]],
    ) -> None:
        self.store = store
        self.run_id = run.id
        self.limit = limit
        self.progress = progress
        self.stop = stop
        self.halt = Halt(stop)
        self.owner = new_owner_id()
        self.concurrency = job.concurrency or default_concurrency(model)
        self.counts = Counts.of_run(store, run.id, limit)
        self.layer = layer = RequestLayer.for_run(
            store, run.id, self.counts, self.halt, job, self.concurrency, (model, ref), extra, self._say, self.owner)
        self.records = RecordProcessor(job, self.layer, self.counts)
        self.pack = max((v.pack for s in job.steps for v in s.variants()), default=1)  # rows a call carries
        self.batches: BatchCoordinator | None = None
        if any(s.mode == "batch" for s in self.records.steps):
            self.batches = layer.batches = BatchCoordinator(store, run.id, layer, progress, self.snapshot, job.steps)

    def _say(self, message: str) -> None:  # a line for the person watching, on the progress display
        if self.progress:
            self.progress({"phase": "notice", "message": message})

    async def go(self) -> None:
        """One pass over the records the run can lease now."""
        committer = GroupCommitter(self.store, self.run_id, self.owner)
        commit_task = asyncio.create_task(committer.loop())
        width = self.concurrency * self.pack  # records at once: each call in flight carries `pack:` rows
        queue: asyncio.Queue[LeasedRecord | None] = asyncio.Queue(maxsize=width * 2)
        chunk = max(64, width * 4)
        stop, counts, records = self.stop, self.counts, self.records

        async def produce() -> None:
            try:
                while not stop.is_set():
                    recs = self.store.lease(self.run_id, self.owner, chunk, LEASE_TTL_S, self.limit)
                    if not recs:
                        break
                    counts.move("pending", "leased", len(recs))
                    for r in recs:
                        await queue.put(r)
            finally:
                for _ in range(width):
                    await queue.put(None)

        workers: list[asyncio.Task[None]] = []

        def grow() -> None:  # as many workers as the calls allowed in flight keep busy, and a few
            while len(workers) < min(width, (self.layer.calls_allowed() * 5 // 4 + 8) * self.pack):
                workers.append(asyncio.create_task(work()))

        async def work() -> None:
            while True:
                grow()
                rec = await queue.get()
                if rec is None:
                    return
                if stop.is_set() and self.halt.fatal is None:
                    continue  # left leased; released below
                try:
                    await records.process(committer, rec)
                except (Stop, Deferred):
                    continue  # left leased; released when the pass ends
                except StoreError:
                    stop.set()  # the store is damaged, locked or full: nothing can be kept
                    raise
                except Exception as e:  # a bug or an unexpected model failure: never stop the run
                    records.final(committer, rec, "quarantined", None,
                                  f"internal error: {type(e).__name__}: {e}", 1)

        async def report() -> None:
            if not self.progress:
                return
            while True:
                self.progress({"phase": "run", **self.snapshot()})
                await asyncio.sleep(0.25)

        reporter = asyncio.create_task(report())
        cutter = asyncio.create_task(self.layer.cut_short(STOP_GRACE_S))
        try:
            grow()
            await asyncio.gather(produce(), *workers)
            while not all(w.done() for w in workers):  # and those started since
                await asyncio.gather(*workers)
        finally:
            reporter.cancel()
            cutter.cancel()
            await committer.close()
            commit_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await commit_task
            released = self.store.release(self.run_id, self.owner)
            if released:
                counts.move("leased", "pending", released)
            if self.progress:
                self.progress({"phase": "run", **self.snapshot()})

    async def passes(self) -> None:
        """Passes until no record waits for a provider batch (or the run stops): between two
        passes, the batches bring what the last one wanted."""
        batches = self.batches
        await self.records.prepare()  # System 1 learned from its labels before any row is taken
        try:
            if batches is not None:
                batches.load()
                await batches.run()  # batches a killed run left open: poll, never resubmit
            while True:
                await self.go()
                if batches is None or not batches.wanted or self.stop.is_set():
                    break
                await batches.run()
        except Stop:
            pass

    def snapshot(self) -> dict[str, Any]:
        """The run's counters as the progress display shows them."""
        s, c = self.counts.states, self.counts
        return {
            "in": sum(s.values()), "done": s.get("done", 0), "quarantined": s.get("quarantined", 0),
            "review": s.get("review", 0), "skipped": s.get("skipped", 0),
            "pending": s.get("pending", 0) + s.get("leased", 0),
            "made": c.made, "replayed": c.replayed,
            "cost": None if c.cost is None or not c.cost else float(c.cost), "paused": self.layer.paused(),
        }


def store_path_for(job: Job) -> Path:
    """Where a job's store is by default (see :func:`corral.store.store_path_near`): found from
    the job file's folder, so the same job run from any folder finds the answers it paid for."""
    return store_path_near(job.base_dir)


async def run_async(
    job: Job | str | Path,
    *,
    model: Model | str | dict[str, Any] | None = None,
    limit: int | None = None,
    store: Store | str | Path | None = None,
    source: Any = None,
    progress: Progress | None = None,
    stop: asyncio.Event | None = None,
    handle_signals: bool = False,
) -> RunResult:
    """Run (or resume) a job; see :func:`corral.run`."""
    job, started = job_with(job, source), time.monotonic()
    if limit is not None and limit < 0:
        raise UserError("--limit must be 0 or more")
    m = model if isinstance(model, Model) else make_model(model or job.model, job.base_dir)
    stop = stop or asyncio.Event()
    heard: list[str] = []  # the signal that stopped the run: the summary says which
    restore = _install_signals(stop, heard) if handle_signals else None
    own_store = not isinstance(store, Store)
    path = None if isinstance(store, Store) else Path(store) if store is not None else store_path_for(job)
    fresh = path is not None and not path.exists()
    st: Store | None = store if isinstance(store, Store) else None
    try:
        source, plan = prepare(job)  # what can be wrong with the job is found before the store is touched
        if st is None:
            st = open_store(path)
        if progress:
            progress({"phase": "fingerprint"})
        fingerprint = await asyncio.to_thread(source.fingerprint)
        rid = run_id_for(job, m, fingerprint)
        run = st.create_run(new_run(job, rid, m.id, fingerprint))
        before = run  # what the run had written before this invocation
        if not run.ingest_done:
            st.update_run(run.id, status="ingesting")
        # reading the input runs on a thread so Ctrl-C is heard between chunks
        run = await asyncio.to_thread(ingest, st, run, job, source, limit, progress, stop)
        if progress:
            progress({"phase": "start", "run": run.id, "job": job.name, "model": m.id,
                      "store": show_path(path) if path is not None else None})
            if run.ingest_done and run.ingested_rows == 0:
                progress({"phase": "notice", "message": (
                    f"warning: {source.path.name} has no rows (only a header, or empty): nothing "
                    "to do; check the file `source:` points at")})
        st.reclaim(run.id, owner_dead)
        ref = job.model if model is None else (None if isinstance(model, Model) else ModelRef.parse(model))
        extra = strategy_models(job, make_model)  # (looked up here: tests replace it)
        runner = _Runner(job, m, st, run, limit, progress, stop, ref, extra)
        st.update_run(run.id, status="running", stop_reason=None, tags=job.tags)
        if runner.batches is not None:
            runner.batches.check()
        check_scoring(job, m, extra)
        try:
            await runner.passes()
        finally:
            await runner.records.close(stop.is_set())
            await m.aclose()
            for other, _ in extra.values():
                await other.aclose()
        counts = st.counts(run.id, limit)
        unfinished = counts.get("pending", 0) + counts.get("leased", 0)
        outputs: dict[str, str] = {}
        complete = not unfinished and (
            run.ingest_done or (limit is not None and run.ingested_rows >= limit)
        )
        # a run over the first rows only: more rows exist beyond the limit
        partial = limit is not None and not (run.ingest_done and limit >= run.ingested_rows)
        total = run.ingested_rows if run.ingest_done else None
        elapsed = time.monotonic() - started
        cause = runner.halt.cause
        result_status: str | None = None
        if complete and partial:
            cause = "preview"
            covered = describe_preview(counts, limit, total)
            if before.status == "finished" and before.outputs:
                # a preview never replaces a complete output: the full run's files stay
                outputs = dict(before.outputs) if isinstance(before.outputs, dict) else {}
                status, reason = "finished", before.stop_reason
                result_status = "preview"
                note = f"{covered}; the complete output of the earlier run is kept, not rewritten"
            else:
                outputs = write_outputs(st, run, job, plan, limit)
                status, reason = "preview", covered
                note = covered
        elif complete:
            outputs = write_outputs(st, run, job, plan, limit)
            status, reason = "finished", None
        elif runner.halt.fatal is not None:
            status, reason = "failed", runner.halt.reason
        elif runner.halt.reason:
            status, reason = "stopped", runner.halt.reason
            cause = cause or "budget"
        elif not stop.is_set() and (owners := other_owners(st, run.id, runner.owner)):
            # another worker holds the rows still to do: it finishes them and writes the outputs
            status, reason = "running", (
                f"{unfinished:,} rows are being finished by "
                f"{'worker' if len(owners) == 1 else 'workers'} {', '.join(owners)}, "
                "which will write the outputs"
            )
            cause = "elsewhere"
        else:
            status, reason = "interrupted", runner.halt.reason or (heard[0] if heard else None)
            cause = "interrupted"
        if result_status == "preview":  # the stored run goes back to its finished state and outputs
            st.update_run(run.id, status=status, stop_reason=reason, outputs=outputs,
                          elapsed_s=run.elapsed_s + elapsed)
            reason = note
        elif status == "running":  # the other worker's run: only this worker's time is added
            st.update_run(run.id, elapsed_s=run.elapsed_s + elapsed)
        else:
            st.update_run(
                run.id, status=status, stop_reason=reason, outputs=outputs,
                elapsed_s=run.elapsed_s + elapsed,
            )
        final = st.get_run(run.id)
        assert final is not None
        result = summarize(st, final, limit=limit, outputs=outputs, elapsed_s=elapsed,
                           status=result_status or status, monitor=job.monitor, job=job)
        result.stop_reason, result.cause, result.model, result.total_rows = reason, cause, m.id, total
        result.store = None if path is None else str(path)
        result.system1, result.routers = runner.records.reports()
        return result
    finally:
        if restore:
            restore()
        if own_store and st is not None:
            st.close()
        if fresh and path is not None and path.exists() and not _has_runs(path):
            _remove_store(path)  # a run that failed before it began leaves no empty store behind


def _has_runs(path: Path) -> bool:
    try:
        st = open_store(path, create=False, check=False)
    except Exception:
        return True  # not ours to judge: leave the file alone
    try:
        return bool(st.list_runs(limit=1))
    except Exception:
        return True
    finally:
        st.close()


def _remove_store(path: Path) -> None:
    for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        with contextlib.suppress(OSError):
            p.unlink()
    with contextlib.suppress(OSError):
        path.parent.rmdir()  # the .corral folder, if it was made for this store and is empty


def run(
    job: Job | str | Path,
    *,
    model: Model | str | dict[str, Any] | None = None,
    limit: int | None = None,
    store: Store | str | Path | None = None,
    source: Any = None,
    progress: Progress | None = None,
) -> RunResult:
    """Run a job, or resume it if it ran before on the same input.

    ``job`` is a :class:`Job` or a YAML job file's path; ``model`` overrides its model (a name such
    as ``"fake"`` or a :class:`Model`); ``limit`` takes the first N rows only; ``store`` is a path
    (default: :func:`store_path_for`, found from the job file's folder) or a :class:`Store`;
    ``source``, a DataFrame or Arrow table, replaces the job's source (:mod:`corral.io.frames`).
    """
    return asyncio.run(
        run_async(job, model=model, limit=limit, store=store, source=source, progress=progress,
                  handle_signals=threading.current_thread() is threading.main_thread())
    )


def _install_signals(stop: asyncio.Event, heard: list[str]) -> Callable[[], None] | None:
    """Ctrl-C or SIGTERM stops the run (its name is put in ``heard``); a second one leaves at
    once. Returns how to put the handlers back, or ``None`` where signals cannot be handled."""
    loop = asyncio.get_running_loop()

    def on_signal(name: str) -> None:
        heard.append(name)
        if len(heard) == 1:
            stop.set()
        else:
            os._exit(130)  # second Ctrl-C: leave now; leases return to the queue on the next run

    try:
        loop.add_signal_handler(signal.SIGINT, on_signal, "Ctrl-C")
        loop.add_signal_handler(signal.SIGTERM, on_signal, "SIGTERM")
    except (NotImplementedError, RuntimeError, ValueError):
        return None

    def restore() -> None:
        loop.remove_signal_handler(signal.SIGINT)
        loop.remove_signal_handler(signal.SIGTERM)

    return restore
