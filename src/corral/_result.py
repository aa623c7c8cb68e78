"""What a run reports: the summary object shared by ``corral run`` and ``corral status``."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from corral import _monitor
from corral._monitor import MonitorSpec
from corral.store import shown_store
from corral.store.base import RunInfo, Store

if TYPE_CHECKING:
    from corral.job import Job


@dataclass(slots=True)
class RunResult:
    """Summary of a run. ``rows_in == written + quarantined + review + skipped + pending``."""

    run: str
    job: str
    status: str
    stop_reason: str | None
    rows_in: int
    written: int
    quarantined: int
    review: int
    skipped: int
    pending: int
    calls_made: int
    calls_replayed: int
    input_tokens: int
    output_tokens: int
    cost_usd: Decimal | None
    elapsed_s: float
    outputs: dict[str, str] = field(default_factory=dict)
    #: of the input tokens, those the provider served from its prompt cache (at its cache price)
    cached_input_tokens: int = 0
    #: of the input tokens, those written to the provider's prompt cache (at its cache-write price)
    cache_write_tokens: int = 0
    #: why a run ended before finishing, for the exit code: budget, auth, quota, outage,
    #: interrupted, elsewhere (another worker finishes the rows), preview (a --limit run)
    cause: str | None = None
    #: the store file the run used (None for a Store object passed in)
    store: str | None = None
    #: the model's id
    model: str | None = None
    #: rows in the whole source, when known
    total_rows: int | None = None
    #: each System 1 step's report (see :meth:`corral._system1.System1.report`)
    system1: list[dict[str, Any]] = field(default_factory=list)
    #: each learned expert router's report (see :meth:`corral._route_model.LearnedRouter.report`)
    routers: list[dict[str, Any]] = field(default_factory=list)
    #: the finished run compared with the job's previous finished run: ``compared_with`` (its
    #: id, or None) and ``warnings`` (one line each; see :mod:`corral._monitor`)
    monitor: dict[str, Any] = field(default_factory=lambda: {"compared_with": None, "warnings": []})
    #: the job's ``sink:`` and folder, as stored with the run: where :meth:`to_arrow` reads
    sink_spec: dict[str, Any] | None = field(default=None, repr=False)
    job_dir: str | None = field(default=None, repr=False)

    def to_arrow(self) -> Any:
        """What the run wrote to its sink, read back as a ``pyarrow.Table`` (see
        :func:`corral.io.frames.read_output`); a run that wrote nothing yet is a UserError."""
        from corral.io.frames import read_output

        return read_output(self)

    def to_pandas(self) -> Any:
        """:meth:`to_arrow` as a pandas DataFrame (needs pandas)."""
        from corral.io.frames import to_pandas

        return to_pandas(self.to_arrow())

    def to_polars(self) -> Any:
        """:meth:`to_arrow` as a Polars DataFrame (needs Polars)."""
        from corral.io.frames import to_polars

        return to_polars(self.to_arrow())

    @property
    def drifted(self) -> bool:
        """Whether monitoring warned about this finished run."""
        return self.status == "finished" and bool(self.monitor.get("warnings"))

    @property
    def accounted(self) -> bool:
        return self.rows_in == (
            self.written + self.quarantined + self.review + self.skipped + self.pending
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "run": self.run,
            "job": self.job,
            "status": self.status,
            "stop_reason": self.stop_reason,
            "rows": {
                "in": self.rows_in,
                "written": self.written,
                "quarantined": self.quarantined,
                "review": self.review,
                "skipped": self.skipped,
                "pending": self.pending,
            },
            "calls": {"made": self.calls_made, "replayed": self.calls_replayed},
            "tokens": {"input": self.input_tokens, "output": self.output_tokens,
                       "cached_input": self.cached_input_tokens, "cache_write": self.cache_write_tokens},
            "cost_usd": None if self.cost_usd is None else float(self.cost_usd),
            "elapsed_s": round(self.elapsed_s, 3),
            "outputs": self.outputs,
            "cause": self.cause,
            "model": self.model,
            "store": None if self.store is None else shown_store(self.store),
            "total_rows": self.total_rows,
            "system1": self.system1,
            "routers": self.routers,
            "monitor": self.monitor,
        }


def summarize(
    store: Store,
    run: RunInfo,
    *,
    limit: int | None = None,
    outputs: dict[str, str] | None = None,
    elapsed_s: float | None = None,
    status: str | None = None,
    monitor: MonitorSpec | None = None,
    job: Job | None = None,
) -> RunResult:
    """The run's summary; with ``monitor``, a finished run is compared with the job's previous
    finished run (``RunResult.monitor``). The job, when given, says where the sink is (else the
    job as stored with the run does)."""
    counts = store.counts(run.id, limit)
    totals = store.totals(run.id)
    if outputs is None:
        outputs = (
            dict(run.outputs) if isinstance(run.outputs, dict)
            else dict(zip(("sink", "quarantine", "skipped"), run.outputs))
        )
    return RunResult(
        run=run.id,
        job=run.job_name,
        status=status or run.status,
        stop_reason=run.stop_reason,
        rows_in=sum(counts.values()),
        written=counts.get("done", 0),
        quarantined=counts.get("quarantined", 0),
        review=counts.get("review", 0),
        skipped=counts.get("skipped", 0),
        pending=counts.get("pending", 0) + counts.get("leased", 0),
        calls_made=totals.made,
        calls_replayed=totals.replayed,
        input_tokens=totals.input_tokens,
        output_tokens=totals.output_tokens,
        cost_usd=totals.cost,
        cached_input_tokens=totals.cached_input_tokens,
        cache_write_tokens=totals.cache_write_tokens,
        elapsed_s=run.elapsed_s if elapsed_s is None else elapsed_s,
        outputs=outputs,
        sink_spec=run.spec.get("sink") if job is None else job.sink.model_dump(mode="json"),
        job_dir=run.spec.get("job_dir") if job is None else str(job.base_dir),
        monitor=_monitor.monitor(store, run, monitor) if (status or run.status) == "finished"
        else {"compared_with": None, "warnings": []},
    )

