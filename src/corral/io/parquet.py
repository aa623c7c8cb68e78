"""Parquet sources and sinks (pyarrow), streamed in record batches.

Reading converts values to JSON-friendly Python (dates and timestamps -> ISO text, decimals ->
str, binary -> base64, NaN -> None), because the engine stores rows as JSON.

Writing maps column types to Arrow types (string, int64, float64, bool, date32, list<...>) and
infers ``any`` columns from the values. Rows are buffered into row groups of
:attr:`ParquetSink.row_group_rows` rows, so memory stays flat. The schema is fixed when the first
row group is written; if a later value does not fit a column's type (an ``any`` column that was
all None, integers followed by a fraction, text in a column declared integer...), the column is
widened (null -> anything, integer -> float, anything -> text) and the row groups already written
are copied once into a new file with the wider schema. Text is the widest type: strings stay as
they are and other values become JSON text.
"""

from __future__ import annotations

import base64
import datetime as dt
import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from corral.errors import SourceError
from corral.io.base import (
    Column,
    Sink,
    Source,
    SourceRow,
    atomic_path,
    check_sink_columns,
    one_line,
    temp_path_for,
    to_json_value,
    to_text,
)

__all__ = ["ParquetSink", "ParquetSource", "arrow_column_type"]

_READ_BATCH = 2048


# ----------------------------------------------------------------------------- reading


def arrow_column_type(t: pa.DataType) -> str:
    """The Corral column type of values of Arrow type ``t`` after JSON-friendly conversion."""
    if pa.types.is_dictionary(t):
        return arrow_column_type(t.value_type)
    if pa.types.is_boolean(t):
        return "boolean"
    if pa.types.is_integer(t):
        return "integer"
    if pa.types.is_floating(t) or pa.types.is_duration(t):
        return "number"
    if pa.types.is_date(t):
        return "date"
    if (
        pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or pa.types.is_decimal(t)
        or pa.types.is_timestamp(t)
        or pa.types.is_time(t)
        or pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
        or pa.types.is_fixed_size_binary(t)
        or getattr(pa.types, "is_string_view", lambda _: False)(t)
    ):
        return "string"
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return "list"
    return "any"


def _nan_to_none(v: Any) -> Any:
    return None if isinstance(v, float) and math.isnan(v) else v


def _converter(t: pa.DataType) -> Callable[[Any], Any] | None:
    """A function making one value of Arrow type ``t`` JSON-friendly; None when no change is
    needed."""
    if pa.types.is_dictionary(t):
        return _converter(t.value_type)
    if (
        pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or pa.types.is_integer(t)
        or pa.types.is_boolean(t)
        or pa.types.is_null(t)
    ):
        return None
    if pa.types.is_floating(t):
        return _nan_to_none
    if pa.types.is_map(t):
        kconv = _converter(t.key_type) or (lambda k: k)
        vconv = _converter(t.item_type) or (lambda x: x)

        def conv_map(v: Any) -> Any:
            if v is None:
                return None
            pairs = [(kconv(k), vconv(x)) for k, x in v]
            if all(isinstance(k, str) for k, _ in pairs):
                return dict(pairs)
            return [[k, x] for k, x in pairs]

        return conv_map
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        item = _converter(t.value_type)
        if item is None:
            return None
        return lambda v: None if v is None else [item(x) for x in v]
    if pa.types.is_struct(t):
        convs = {t.field(i).name: _converter(t.field(i).type) for i in range(t.num_fields)}
        if all(c is None for c in convs.values()):
            return None

        def conv_struct(v: Any) -> Any:
            if v is None:
                return None
            out = {}
            for k, x in v.items():
                conv = convs.get(k)
                out[k] = x if conv is None else conv(x)
            return out

        return conv_struct
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        return lambda v: None if v is None else base64.b64encode(v).decode("ascii")
    return to_json_value


def _unreadable(path: Path, e: BaseException) -> SourceError:
    return SourceError(
        f"cannot read parquet file {path}: {one_line(e)} — check that it is a complete "
        f"Parquet file, or set `format:` under `source:` if it is in another format"
    )


class ParquetSource(Source):
    """Rows of a Parquet file, read with ``ParquetFile.iter_batches``. Pandas index columns
    (``__index_level_N__``) are left out."""

    format = "parquet"

    def __init__(self, path: Path) -> None:
        pf = self._open(path)
        try:
            schema = pf.schema_arrow
            self.num_rows = pf.metadata.num_rows
        finally:
            pf.close()
        columns: list[Column] = []
        self._types: dict[str, pa.DataType] = {}
        for field in schema:
            if field.name.startswith("__index_level_"):
                continue
            if field.name in self._types:
                raise SourceError(
                    f"duplicate column name {field.name!r} in parquet file {path} — rewrite the "
                    f"file with unique column names"
                )
            self._types[field.name] = field.type
            columns.append(Column(field.name, arrow_column_type(field.type)))
        super().__init__(path, columns)

    @staticmethod
    def _open(path: Path) -> pq.ParquetFile:
        try:
            return pq.ParquetFile(path)
        except (pa.ArrowException, OSError, ValueError) as e:
            raise _unreadable(path, e) from None

    def rows(self, start: int = 0) -> Iterator[SourceRow]:
        names = self.column_names
        convs = [_converter(self._types[n]) for n in names]
        pf = self._open(self.path)
        try:
            # Skip whole row groups that lie before `start`.
            ordinal = 0
            groups: list[int] = []
            for i in range(pf.metadata.num_row_groups):
                n = pf.metadata.row_group(i).num_rows
                if not groups and ordinal + n <= start:
                    ordinal += n
                    continue
                groups.append(i)
            if not groups:
                return
            batches = pf.iter_batches(batch_size=_READ_BATCH, row_groups=groups, columns=names)
            while True:
                try:
                    batch = next(batches)
                except StopIteration:
                    return
                except (pa.ArrowException, OSError, ValueError) as e:
                    raise _unreadable(self.path, e) from None
                size = batch.num_rows
                if ordinal + size <= start:
                    ordinal += size
                    continue
                cols: list[list[Any]] = []
                for i, conv in enumerate(convs):
                    values = batch.column(i).to_pylist()
                    cols.append(values if conv is None else [conv(v) for v in values])
                for j in range(max(0, start - ordinal), size):
                    yield SourceRow(
                        ordinal + j, None, {n: cols[k][j] for k, n in enumerate(names)}
                    )
                ordinal += size
        finally:
            pf.close()


# ----------------------------------------------------------------------------- writing
#
# A column's physical "kind": "null", "string", "int", "float", "bool", "date", or
# "list:<kind>" for lists of that kind. Widening only ever moves up:
# null -> anything, int -> float, list:a -> list:b (b wider than a), anything -> string.

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_FLOAT_MAX = 1.7976931348623157e308

_ARROW_KINDS: dict[str, pa.DataType] = {
    "null": pa.null(),
    "string": pa.string(),
    "int": pa.int64(),
    "float": pa.float64(),
    "bool": pa.bool_(),
    "date": pa.date32(),
}

_DECLARED_KINDS = {
    "string": "string",
    "integer": "int",
    "number": "float",
    "boolean": "bool",
    "date": "date",
    "list": "list:null",
    "any": "null",
}


def _arrow_type(kind: str) -> pa.DataType:
    if kind.startswith("list:"):
        return pa.list_(_arrow_type(kind[5:]))
    return _ARROW_KINDS[kind]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _parse_date(v: str) -> dt.date | None:
    try:
        return dt.date.fromisoformat(v)
    except ValueError:
        return None


def _fits(kind: str, v: Any) -> bool:
    if v is None or kind == "string":
        return True
    if kind == "int":
        if _is_int(v):
            return _INT64_MIN <= v <= _INT64_MAX
        return isinstance(v, float) and v.is_integer() and _INT64_MIN <= v <= _INT64_MAX
    if kind == "float":
        return isinstance(v, float) or (_is_int(v) and abs(v) <= _FLOAT_MAX)
    if kind == "bool":
        return isinstance(v, bool)
    if kind == "date":
        if isinstance(v, dt.date):
            return not isinstance(v, dt.datetime)
        return isinstance(v, str) and _parse_date(v) is not None
    if kind.startswith("list:"):
        item = kind[5:]
        return isinstance(v, (list, tuple)) and all(_fits(item, x) for x in v)
    return False  # "null" holds only None


def _infer(v: Any) -> str:
    if isinstance(v, bool):
        return "bool"
    if _is_int(v):
        return "int" if _INT64_MIN <= v <= _INT64_MAX else "string"
    if isinstance(v, float):
        return "float"
    if isinstance(v, dt.date) and not isinstance(v, dt.datetime):
        return "date"
    if isinstance(v, (list, tuple)):
        item = "null"
        for x in v:
            if not _fits(item, x):
                item = _widen(item, x)
        return "list:" + item
    return "string"


def _widen(kind: str, v: Any) -> str:
    """The narrowest kind wider than ``kind`` that holds ``v`` as well."""
    if kind == "null":
        return _infer(v)
    if kind == "int" and _fits("float", v):
        return "float"
    if kind.startswith("list:") and isinstance(v, (list, tuple)):
        item = kind[5:]
        for x in v:
            if not _fits(item, x):
                item = _widen(item, x)
        return "list:" + item
    return "string"


def _convert(kind: str, v: Any) -> Any:
    """``v`` (which fits ``kind``) as the Python value pyarrow expects for ``kind``."""
    if v is None:
        return None
    if kind == "string":
        return to_text(v)
    if kind == "int":
        return int(v)
    if kind == "float":
        return float(v)
    if kind == "date":
        return v if isinstance(v, dt.date) else _parse_date(v)
    if kind.startswith("list:"):
        item = kind[5:]
        return [_convert(item, x) for x in v]
    return v  # bool; "null" never reaches here


class ParquetSink(Sink):
    """Writes a Parquet file with ``ParquetWriter``, one row group per
    :attr:`row_group_rows` rows."""

    format = "parquet"
    row_group_rows = 10_000

    def write(
        self,
        columns: list[Column],
        batches: Iterable[list[dict[str, Any]]],
        key_column: str,
    ) -> int:
        names = check_sink_columns(columns)
        writer = _GrowingWriter(names, [_DECLARED_KINDS[c.type] for c in columns])
        count = 0
        with atomic_path(self.path) as tmp:
            writer.tmp = tmp
            try:
                pending: list[dict[str, Any]] = []
                for batch in batches:
                    pending.extend(batch)
                    count += len(batch)
                    while len(pending) >= self.row_group_rows:
                        writer.write_rows(pending[: self.row_group_rows])
                        del pending[: self.row_group_rows]
                if pending or not writer.opened:
                    writer.write_rows(pending)
                writer.close()
            except BaseException:
                writer.abort()
                raise
        return count


class _GrowingWriter:
    """A ParquetWriter whose column types can widen (by copying what was written so far)."""

    def __init__(self, names: list[str], kinds: list[str]) -> None:
        self.names = names
        self.kinds = kinds
        self.tmp: Path = Path()
        self.writer: pq.ParquetWriter | None = None
        self.opened = False
        self._spare: list[Path] = []

    def _schema(self) -> pa.Schema:
        return pa.schema([pa.field(n, _arrow_type(k)) for n, k in zip(self.names, self.kinds)])

    def write_rows(self, rows: list[dict[str, Any]]) -> None:
        cols = [[row.get(n) for row in rows] for n in self.names]
        kinds = list(self.kinds)
        for i, values in enumerate(cols):
            kind = kinds[i]
            for v in values:
                if not _fits(kind, v):
                    kind = _widen(kind, v)
            kinds[i] = kind
        if self.writer is None:
            # First row group: the schema is fixed now. Lists of nothing become lists of text.
            self.kinds = ["list:string" if k == "list:null" else k for k in kinds]
            self.writer = pq.ParquetWriter(self.tmp, self._schema())
            self.opened = True
        elif kinds != self.kinds:
            self._rewrite(kinds)
        schema = self._schema()
        arrays = [
            pa.array([_convert(k, v) for v in values], type=_arrow_type(k))
            for k, values in zip(self.kinds, cols)
        ]
        self.writer.write_table(pa.Table.from_arrays(arrays, schema=schema))

    def _rewrite(self, kinds: list[str]) -> None:
        """Copy the row groups written so far into a new file with the wider ``kinds``."""
        assert self.writer is not None
        self.writer.close()
        old_kinds, self.kinds = self.kinds, kinds
        old = temp_path_for(self.tmp)
        self.tmp.rename(old)
        self._spare.append(old)
        schema = self._schema()
        self.writer = pq.ParquetWriter(self.tmp, schema)
        pf = pq.ParquetFile(old)
        try:
            for g in range(pf.metadata.num_row_groups):
                table = pf.read_row_group(g)
                arrays = []
                for i, (was, now) in enumerate(zip(old_kinds, kinds)):
                    col = table.column(i)
                    if was == now:
                        arrays.append(col)
                    else:
                        values = col.to_pylist()
                        converted = [_convert(now, v) for v in values]
                        arrays.append(pa.array(converted, _arrow_type(now)))
                self.writer.write_table(pa.Table.from_arrays(arrays, schema=schema))
        finally:
            pf.close()
        old.unlink()
        self._spare.remove(old)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def abort(self) -> None:
        with suppress(Exception):
            self.close()
        for p in self._spare:
            with suppress(OSError):
                p.unlink()
