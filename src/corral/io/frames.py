"""DataFrames from Python: a pandas or Polars DataFrame or an Arrow table as a run's source, and
a run's output back as one.

``corral.run(job, source=frame)`` replaces the job's ``source:`` with the frame (:func:`job_with`):
the frame is converted to an Arrow table once (pandas and Polars are imported only when such a
frame is passed) and read as a :class:`FrameSource`. Its fingerprint is a hash of its columns and
rows (:mod:`corral.io._arrow`), so running the same job on the same data again is the same run:
it resumes where it stopped, or, when it had finished, replays with no model call. Other data is a
new run.

:func:`read_output` reads what a finished run wrote back from its sink (the job's ``sink:``, as
stored with the run), as an Arrow table: what the run gave its users, in the types the sink keeps
(a CSV sink's values are text; Parquet and DuckDB keep their types).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import PrivateAttr

from corral.errors import SinkError, UserError
from corral.io.base import Source, open_source, resolve_path
from corral.io.spec import SourceSpec

if TYPE_CHECKING:
    import pyarrow as pa

    from corral._result import RunResult
    from corral.job import Job

__all__ = ["FrameSpec", "job_with", "read_output", "to_pandas", "to_polars"]

#: what a DataFrame source is called in the job's spec and in messages
FRAME_NAME = "DataFrame"
_INSTALL = "make install, or pip install -e '.[frames]' in the Corral checkout"


class FrameSpec(SourceSpec):
    """The job's ``source:`` when a frame is passed: :func:`corral.io.base.open_source` gives
    the frame's source (``given``); the spec itself, in the run's identity, says only
    ``DataFrame``."""

    _given: Any = PrivateAttr(default=None)

    @property
    def given(self) -> Source | None:
        """The frame's source (:class:`corral.io._arrow.FrameSource`)."""
        given: Source | None = self._given
        return given


def job_with(job: Job | str | Path, source: Any = None) -> Job:
    """``job`` (loaded if it is a path), its source replaced by ``source`` when one is given."""
    from corral.job import Job

    job = job if isinstance(job, Job) else Job.load(job)
    if source is None:
        return job
    from corral.io._arrow import FrameSource, to_arrow_table

    spec = FrameSpec(path=FRAME_NAME)
    spec._given = FrameSource(to_arrow_table(source), FRAME_NAME)
    return job.model_copy(update={"source": spec})


# ----------------------------------------------------------------------------- outputs


def read_output(result: RunResult) -> pa.Table:
    """The rows the run's sink holds, as an Arrow table (see the module docstring)."""
    sink = result.sink_spec
    if not result.outputs.get("sink") or not sink or result.job_dir is None:
        why = f": {result.stop_reason}" if result.stop_reason else ""
        raise UserError(
            f"run {result.run} has written no output ({result.status}{why}) — run the job to "
            f"the end, then read its output"
        )
    spec = SourceSpec(
        path=sink["path"], format=sink.get("format"), table=sink.get("table"),
        delimiter=sink.get("delimiter"),
    )
    base = Path(result.job_dir)
    try:
        source = open_source(spec, base)
    except UserError as e:
        raise SinkError(
            f"cannot read back the output of run {result.run} from "
            f"{resolve_path(spec.path, base)}: {e} — read that file yourself"
        ) from None
    return _table(source)


def _table(source: Source) -> pa.Table:
    import pyarrow as pa

    from corral.io._arrow import ArrowSource

    if isinstance(source, ArrowSource):
        return pa.Table.from_batches(list(source.batches()), schema=source.schema)
    if source.format == "parquet":
        import pyarrow.parquet as pq

        return pq.read_table(source.path, columns=source.column_names)
    rows = [r.data for r in source.rows() if r.data is not None]
    return pa.Table.from_pylist(rows) if rows else pa.table(
        {n: pa.array([], pa.string()) for n in source.column_names}
    )


def to_pandas(table: pa.Table) -> Any:
    """``table`` as a pandas DataFrame (pandas is needed)."""
    try:
        importlib.import_module("pandas")
    except ImportError:
        raise UserError(f"to_pandas() needs the pandas package, which is not installed — {_INSTALL}") from None
    return table.to_pandas()


def to_polars(table: pa.Table) -> Any:
    """``table`` as a Polars DataFrame (Polars is needed)."""
    try:
        polars = importlib.import_module("polars")
    except ImportError:
        raise UserError(f"to_polars() needs the polars package, which is not installed — {_INSTALL}") from None
    return polars.from_arrow(table)
