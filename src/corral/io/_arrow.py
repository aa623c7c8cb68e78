"""Sources that stream Arrow record batches (a DuckDB result, a DataFrame in memory).

A subclass says how to read its batches, in a stable order (:meth:`ArrowSource.batches`); this
module turns them into :class:`~corral.io.base.SourceRow` objects with the Parquet source's JSON
codec (:func:`corral.io.parquet.encode_array`: timestamps as ISO text, decimals as digits...),
gives each column its Corral type and its Arrow type (so a Parquet or DuckDB sink writes it back
as it was), skips the first ``start`` rows for a resume, and fingerprints the content.

The fingerprint is a sha256 over the column names and types and the rows, cut into pieces of
:data:`_PIECE` rows whatever the batches' sizes, each piece written in Arrow's IPC format: the same
rows in the same order give the same fingerprint, whoever produced the batches.
"""

from __future__ import annotations

import hashlib
from abc import abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from corral.errors import SourceError
from corral.io.base import Column, Source, SourceRow
from corral.io.parquet import arrow_column_type, encode_array
from corral.io.spec import SourceSpec

__all__ = ["ArrowSource", "FrameSource", "arrow_columns", "to_arrow_table"]

_PIECE = 65536
_BATCH = 2048


def arrow_columns(schema: pa.Schema, where: str) -> list[Column]:
    """The columns of an Arrow schema; two columns with one name are an error naming ``where``."""
    seen: set[str] = set()
    out: list[Column] = []
    for f in schema:
        if f.name in seen:
            raise SourceError(
                f"two columns of {where} are both named {f.name!r} — give them distinct names "
                f"(in a query, with AS)"
            )
        seen.add(f.name)
        out.append(Column(f.name, arrow_column_type(f.type), f.type))
    return out


class ArrowSource(Source):
    """A source whose rows come as Arrow record batches in a stable order."""

    def __init__(self, path: Path, schema: pa.Schema, where: str) -> None:
        super().__init__(path, arrow_columns(schema, where))
        self.schema = schema

    @abstractmethod
    def batches(self) -> Iterator[pa.RecordBatch]:
        """Every row, in the same order each time, as record batches of the source's schema."""

    def rows(self, start: int = 0) -> Iterator[SourceRow]:
        names = self.column_names
        ordinal = 0
        start = max(start, 0)
        for batch in self.batches():
            size = batch.num_rows
            if ordinal + size <= start:
                ordinal += size
                continue
            skip = max(0, start - ordinal)
            part = batch.slice(skip) if skip else batch
            cols = [encode_array(part.column(i)) for i in range(len(names))]
            for j in range(part.num_rows):
                yield SourceRow(ordinal + skip + j, None, {n: c[j] for n, c in zip(names, cols)})
            ordinal += size

    def fingerprint(self) -> str:
        """Hex sha256 over the columns and rows (see the module docstring)."""
        h = hashlib.sha256()
        h.update(repr([(f.name, str(f.type)) for f in self.schema]).encode())
        schema = self.schema.remove_metadata()
        pending: list[pa.RecordBatch] = []
        held = 0

        def piece(rows: int) -> None:
            nonlocal pending, held
            table = pa.Table.from_batches(pending, schema=schema)
            head, rest = table.slice(0, rows).combine_chunks(), table.slice(rows)
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, schema) as w:
                w.write_table(head)
            h.update(sink.getvalue())
            pending, held = rest.to_batches(), rest.num_rows

        for batch in self.batches():
            pending.append(batch.replace_schema_metadata(None))
            held += batch.num_rows
            while held >= _PIECE:
                piece(_PIECE)
        if held:
            piece(held)
        return h.hexdigest()


class FrameSource(ArrowSource):
    """The rows of an Arrow table in memory, in its order (``corral.run(job, source=frame)``,
    see :mod:`corral.io.frames`); ``name`` stands for its path in messages."""

    format = "frame"

    @classmethod
    def from_spec(cls, spec: SourceSpec, path: Path, fmt: str) -> FrameSource:
        raise SourceError("a DataFrame source is passed to corral.run(job, source=...)")

    def __init__(self, table: pa.Table, name: str) -> None:
        super().__init__(Path(name), table.schema, f"the {name} passed as source=")
        self.table = table
        self.num_rows = table.num_rows

    def batches(self) -> Iterator[pa.RecordBatch]:
        yield from self.table.to_batches(max_chunksize=_BATCH)


def to_arrow_table(obj: Any) -> pa.Table:
    """``obj`` (a pandas or Polars DataFrame, an Arrow table or record batch, or anything that
    offers an Arrow stream) as an Arrow table; anything else is a SourceError saying what fits."""
    if isinstance(obj, pa.Table):
        table = obj
    elif isinstance(obj, pa.RecordBatch):
        table = pa.Table.from_batches([obj])
    else:
        module = type(obj).__module__.split(".")[0]
        kind = type(obj).__name__
        if module == "polars" and kind == "LazyFrame":
            raise SourceError(
                "source= got a Polars LazyFrame — pass frame.collect(), a DataFrame"
            )
        try:
            if module == "pandas" and kind == "DataFrame":
                table = pa.Table.from_pandas(obj)
            elif module == "polars" and kind == "DataFrame":
                table = obj.to_arrow()
            elif hasattr(obj, "__arrow_c_stream__"):
                table = pa.table(obj)
            else:
                raise SourceError(
                    f"source= takes a pandas or Polars DataFrame or a pyarrow Table, not "
                    f"{module}.{kind} — convert it to one of them (or omit source= to read the "
                    f"job's `source:`)"
                )
        except (pa.ArrowException, ValueError, TypeError) as e:
            raise SourceError(
                f"cannot read the {kind} passed as source= as Arrow: {' '.join(str(e).split())} — "
                f"give its columns one type each (e.g. df.astype(str) for mixed columns)"
            ) from None
    keep = [n for n in table.column_names if not n.startswith("__index_level_")]
    return table.select(keep) if len(keep) < table.num_columns else table
