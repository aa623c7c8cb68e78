"""Parquet sources and sinks (pyarrow), streamed in record batches.

Reading encodes values as JSON-friendly Python (timestamps and dates -> ISO 8601 text, decimals ->
their digits, binary -> base64, NaN -> None; see "JSON codec" below), because the engine stores
rows as JSON. Each source column keeps its Arrow type (``Column.arrow_type``), and the Parquet sink
decodes such a column back to that type, so Parquet in, Parquet out keeps the source's columns as
they were.

Writing maps the other column types to Arrow types (string, int64, float64, bool, date32,
list<...>; a ``vector`` column to fixed_size_list<float32>[n]) and infers ``any`` columns from
the values. Rows are buffered into row groups of
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
import decimal
import math
import re
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from corral.errors import SourceError
from corral.io._atomic import atomic_path, temp_path_for
from corral.io._text import one_line
from corral.io._values import to_json_value, to_text
from corral.io.base import Batches, Column, Sink, Source, SourceRow
from corral.io.spec import SourceSpec

__all__ = ["ParquetSink", "ParquetSource", "arrow_column_type", "decode_values", "encode_array"]

_READ_BATCH = 2048


# ----------------------------------------------------------------------------- JSON codec
#
# The engine keeps each row as JSON, so a value read from Parquet is encoded as JSON-friendly
# Python by `encode_array`, and the Parquet sink turns it back into the column's Arrow type with
# `decode_values`. The encoding is meant for both people and the way back: what a prompt template
# sees is ordinary text (ISO 8601 times, decimal digits, base64), and that text, read with the
# column's Arrow type in hand, gives the original value again:
#
#   timestamp        ISO 8601 text, "T" between date and time, as many fraction digits as needed
#                    (up to nanoseconds); with a time zone, the local time and its offset
#                    ("2024-03-01T09:30:00+01:00"). Encoded by Arrow, so nanoseconds survive.
#   time             "HH:MM:SS[.fraction]"
#   date             "YYYY-MM-DD"
#   duration         a number of seconds (an integer when whole)
#   decimal          its digits as text ("12.50")
#   binary           base64 text
#   float            a number; NaN -> null, +-inf -> "Infinity" / "-Infinity" (JSON has neither)
#   struct           an object keyed by field name
#   list (all kinds) a list
#   map              an object when its keys are distinct strings, else a list of [key, value]
#   dictionary       its values
#
# Integers, strings and booleans are themselves.

_UNIT_DIGITS = {"s": 0, "ms": 3, "us": 6, "ns": 9}
_EPOCH_ORDINAL = dt.date(1970, 1, 1).toordinal()
_ARROW_TIME = re.compile(
    r"(?P<date>[+-]?\d{4,})-(?P<mon>\d\d)-(?P<day>\d\d)[T ]"
    r"(?P<h>\d\d):(?P<m>\d\d)(?::(?P<s>\d\d)(?:[.,](?P<frac>\d+))?)?"
    r" ?(?P<tz>Z|[+-]\d\d(?::?\d\d)?)?"
)
_OFFSET = re.compile(r"([+-]\d\d):?(\d\d)$")
_CLOCK = re.compile(r"(?P<h>\d\d):(?P<m>\d\d)(?::(?P<s>\d\d)(?:[.,](?P<frac>\d+))?)?")


def _chunks(arr: pa.Array | pa.ChunkedArray) -> list[pa.Array]:
    return list(arr.chunks) if isinstance(arr, pa.ChunkedArray) else [arr]


def _type_test(*kinds: str) -> Callable[[pa.DataType], bool]:
    """Whether a type is one of ``kinds`` (``pa.types.is_<kind>``); a kind this pyarrow does not
    have (the ``*_view`` types are newer) is left out."""
    tests = [f for k in kinds if (f := getattr(pa.types, f"is_{k}", None)) is not None]
    return lambda t: any(f(t) for f in tests)


_is_binary = _type_test("binary", "large_binary", "fixed_size_binary", "binary_view")
_is_list = _type_test("list", "large_list", "fixed_size_list", "list_view", "large_list_view")
_is_string = _type_test("string", "large_string", "string_view")


def _iso_text(s: str | None) -> str | None:
    """Arrow's text for a timestamp or time ("2024-03-01 09:30:00.500000000+0100") as ISO 8601
    ("2024-03-01T09:30:00.5+01:00")."""
    if s is None:
        return None
    tz = ""
    if s.endswith("Z"):
        s, tz = s[:-1], "+00:00"
    elif m := _OFFSET.search(s):
        s, tz = s[: m.start()], f"{m[1]}:{m[2]}"
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    return s.replace(" ", "T", 1) + tz


def _float_value(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")
    return v


def encode_array(arr: pa.Array | pa.ChunkedArray) -> list[Any]:
    """The values of an Arrow array as JSON-friendly Python (see the table above)."""
    if isinstance(arr, pa.ChunkedArray):
        out: list[Any] = []
        for chunk in arr.chunks:
            out.extend(encode_array(chunk))
        return out
    t = arr.type
    if isinstance(arr, pa.ExtensionArray):
        return encode_array(arr.storage)
    if pa.types.is_dictionary(t):
        return encode_array(arr.dictionary_decode())
    if pa.types.is_timestamp(t) or pa.types.is_time(t):
        return [_iso_text(s) for s in arr.cast(pa.string()).to_pylist()]
    if pa.types.is_duration(t):
        scale = 10 ** _UNIT_DIGITS[t.unit]
        return [
            None if n is None else (n // scale if n % scale == 0 else n / scale)
            for n in arr.cast(pa.int64()).to_pylist()
        ]
    if pa.types.is_date(t):
        return [None if d is None else d.isoformat() for d in arr.to_pylist()]
    if pa.types.is_floating(t):
        return [_float_value(v) for v in arr.to_pylist()]
    if pa.types.is_decimal(t):
        return [None if d is None else str(d) for d in arr.to_pylist()]
    if _is_binary(t):
        return [None if b is None else base64.b64encode(b).decode("ascii") for b in arr.to_pylist()]
    if pa.types.is_map(t):
        entries = pa.struct([t.key_field, t.item_field])
        as_list = encode_array(arr.cast(pa.list_(pa.field("entries", entries, nullable=False))))
        key, item = t.key_field.name, t.item_field.name
        maps: list[Any] = []
        for entry in as_list:
            if entry is None:
                maps.append(None)
                continue
            pairs = [(e[key], e[item]) for e in entry]
            keys = [k for k, _ in pairs]
            if all(isinstance(k, str) for k in keys) and len(set(keys)) == len(keys):
                maps.append(dict(pairs))
            else:
                maps.append([[k, x] for k, x in pairs])
        return maps
    if pa.types.is_struct(t):
        names = [t.field(i).name for i in range(t.num_fields)]
        children = [encode_array(child) for child in arr.flatten()]
        nulls = arr.is_null().to_pylist()
        return [
            None if nulls[j] else {n: children[i][j] for i, n in enumerate(names)}
            for j in range(len(arr))
        ]
    if _is_list(t):
        flat = encode_array(arr.flatten())
        out, pos = [], 0
        for n in pc.list_value_length(arr).to_pylist():
            if n is None:
                out.append(None)
            else:
                out.append(flat[pos : pos + n])
                pos += n
        return out
    if (
        pa.types.is_integer(t)
        or pa.types.is_boolean(t)
        or pa.types.is_null(t)
        or _is_string(t)
    ):
        return arr.to_pylist()
    return [to_json_value(v) for v in arr.to_pylist()]


def _frac_units(frac: str | None, digits: int) -> int:
    """A fraction of a second ("5", "000000001") in units of 10**-digits; ValueError if it has
    more precision than that."""
    if not frac:
        return 0
    extra = frac[digits:]
    if extra.strip("0"):
        raise ValueError(f"fraction .{frac} is finer than the column's unit")
    return int(frac[:digits].ljust(digits, "0")) if digits else 0


def _parse_timestamp(text: str, unit: str, zoned: bool) -> int:
    """ISO 8601 text as a count of ``unit`` since the epoch (UTC when the text has an offset)."""
    m = _ARROW_TIME.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"not an ISO 8601 timestamp: {text!r}")
    days = dt.date(int(m["date"]), int(m["mon"]), int(m["day"])).toordinal() - _EPOCH_ORDINAL
    secs = days * 86400 + int(m["h"]) * 3600 + int(m["m"]) * 60 + int(m["s"] or 0)
    tz = m["tz"]
    if zoned != (tz is not None):
        raise ValueError(f"timestamp {text!r} {'lacks' if zoned else 'has'} a UTC offset")
    if tz and tz != "Z":
        digits = tz[1:].replace(":", "")
        offset = int(digits[:2]) * 3600 + int(digits[2:4] or 0) * 60
        secs -= offset if tz[0] == "+" else -offset
    d = _UNIT_DIGITS[unit]
    return secs * 10**d + _frac_units(m["frac"], d)


def _parse_time(text: str, unit: str) -> int:
    m = _CLOCK.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"not a time of day: {text!r}")
    d = _UNIT_DIGITS[unit]
    secs = int(m["h"]) * 3600 + int(m["m"]) * 60 + int(m["s"] or 0)
    return secs * 10**d + _frac_units(m["frac"], d)


def _seconds_to_units(v: Any, unit: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise TypeError(f"not a number of seconds: {v!r}")
    scaled = decimal.Decimal(str(v)).scaleb(_UNIT_DIGITS[unit])
    if scaled != scaled.to_integral_value():
        raise ValueError(f"{v!r} seconds is finer than the column's unit")
    return int(scaled)


def _decoder(t: pa.DataType) -> Callable[[Any], Any] | None:
    """A function turning one encoded value back into a Python value that ``pa.array`` accepts
    for type ``t``; None when the value is already one."""
    if pa.types.is_dictionary(t):
        return _decoder(t.value_type)
    if pa.types.is_timestamp(t):
        unit, zoned = t.unit, t.tz is not None
        return lambda v: None if v is None else _parse_timestamp(v, unit, zoned)
    if pa.types.is_time(t):
        unit = t.unit
        return lambda v: None if v is None else _parse_time(v, unit)
    if pa.types.is_duration(t):
        unit = t.unit
        return lambda v: None if v is None else _seconds_to_units(v, unit)
    if pa.types.is_date(t):
        return lambda v: dt.date.fromisoformat(v) if isinstance(v, str) else v
    if pa.types.is_floating(t):
        return lambda v: float(v) if isinstance(v, str) else v
    if pa.types.is_decimal(t):
        return lambda v: None if v is None else decimal.Decimal(str(v))
    if _is_binary(t):
        return lambda v: base64.b64decode(v, validate=True) if isinstance(v, str) else v
    if pa.types.is_map(t):
        kd = _decoder(t.key_type) or (lambda k: k)
        vd = _decoder(t.item_type) or (lambda x: x)

        def decode_map(v: Any) -> Any:
            if v is None:
                return None
            pairs = v.items() if isinstance(v, dict) else v
            return [(kd(k), vd(x)) for k, x in pairs]

        return decode_map
    if pa.types.is_struct(t):
        fields = [(t.field(i).name, _decoder(t.field(i).type)) for i in range(t.num_fields)]

        def decode_struct(v: Any) -> Any:
            if v is None:
                return None
            if not isinstance(v, dict):
                raise TypeError(f"not an object: {v!r}")
            return {n: (v.get(n) if d is None else d(v.get(n))) for n, d in fields}

        return decode_struct
    if _is_list(t):
        item = _decoder(t.value_type)
        if item is None:
            return None
        return lambda v: None if v is None else [item(x) for x in v]
    return None


def decode_values(values: list[Any], t: pa.DataType) -> pa.Array:
    """Encoded values (see :func:`encode_array`) as an Arrow array of type ``t``; raises
    ValueError, TypeError or an ArrowException when they do not fit."""
    if isinstance(t, pa.ExtensionType):
        return pa.ExtensionArray.from_storage(t, decode_values(values, t.storage_type))
    dec = _decoder(t)
    return pa.array(values if dec is None else [dec(v) for v in values], type=t)


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
        _is_string(t)
        or _is_binary(t)
        or pa.types.is_decimal(t)
        or pa.types.is_timestamp(t)
        or pa.types.is_time(t)
    ):
        return "string"
    if _is_list(t):
        return "list"
    return "any"


def _unreadable(path: Path, e: BaseException) -> SourceError:
    return SourceError(
        f"cannot read parquet file {path}: {one_line(e)} — check that it is a complete "
        f"Parquet file, or set `format:` under `source:` if it is in another format"
    )


class ParquetSource(Source):
    """Rows of a Parquet file, read with ``ParquetFile.iter_batches``. Pandas index columns
    (``__index_level_N__``) are left out."""

    format = "parquet"

    @classmethod
    def from_spec(cls, spec: SourceSpec, path: Path, fmt: str) -> ParquetSource:
        return cls(path)

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
            columns.append(Column(field.name, arrow_column_type(field.type), field.type))
        super().__init__(path, columns)

    @staticmethod
    def _open(path: Path) -> pq.ParquetFile:
        try:
            return pq.ParquetFile(path)
        except (pa.ArrowException, OSError, ValueError) as e:
            raise _unreadable(path, e) from None

    def rows(self, start: int = 0) -> Iterator[SourceRow]:
        names = self.column_names
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
                try:
                    cols = [encode_array(batch.column(i)) for i in range(len(names))]
                except (pa.ArrowException, ValueError) as e:
                    raise _unreadable(self.path, e) from None
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
        return _list_of("null", v)
    return "string"


def _widen(kind: str, v: Any) -> str:
    """The narrowest kind wider than ``kind`` that holds ``v`` as well."""
    if kind == "null":
        return _infer(v)
    if kind == "int" and _fits("float", v):
        return "float"
    if kind.startswith("list:") and isinstance(v, (list, tuple)):
        return _list_of(kind[5:], v)
    return "string"


def _list_of(item: str, values: list[Any] | tuple[Any, ...]) -> str:
    """The list kind whose items are ``item`` widened to hold every one of ``values``."""
    for x in values:
        if not _fits(item, x):
            item = _widen(item, x)
    return "list:" + item


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


def vector_type(c: Column) -> pa.DataType:
    """A ``vector`` column's Arrow type: a fixed-size list of float32 when its size is known
    (DuckDB reads it as ``FLOAT[n]``)."""
    return pa.list_(pa.float32(), c.size) if c.size else pa.list_(pa.float32())


class ParquetSink(Sink):
    """Writes a Parquet file with ``ParquetWriter``, one row group per
    :attr:`row_group_rows` rows. A column that carries an ``arrow_type`` (a Parquet source's
    column) is written with exactly that type."""

    format = "parquet"
    row_group_rows = 10_000

    def write_rows(self, names: list[str], columns: list[Column], batches: Batches, key: str) -> int:
        types = [vector_type(c) if c.type == "vector" else c.arrow_type for c in columns]
        writer = _GrowingWriter(
            names, ["arrow" if t is not None else _DECLARED_KINDS[c.type] for c, t in zip(columns, types)], types,
        )
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
    """A ParquetWriter whose column types can widen (by copying what was written so far).

    A column of kind ``"arrow"`` has a fixed Arrow type (``types[i]``) and its values are decoded
    with :func:`decode_values`. Should they not decode (rows stored by an older Corral, say), the
    column is written as text instead, like any column whose values outgrow their type.
    """

    def __init__(
        self, names: list[str], kinds: list[str], types: list[pa.DataType | None] | None = None
    ) -> None:
        self.names = names
        self.kinds = kinds
        self.types = types or [None] * len(names)
        self.tmp: Path = Path()
        self.writer: pq.ParquetWriter | None = None
        self.opened = False
        self._spare: list[Path] = []

    def _type(self, i: int, kind: str) -> pa.DataType:
        return self.types[i] if kind == "arrow" else _arrow_type(kind)

    def _schema(self) -> pa.Schema:
        return pa.schema(
            [pa.field(n, self._type(i, k)) for i, (n, k) in enumerate(zip(self.names, self.kinds))]
        )

    def write_rows(self, rows: list[dict[str, Any]]) -> None:
        cols = [[row.get(n) for row in rows] for n in self.names]
        kinds = list(self.kinds)
        typed: dict[int, pa.Array] = {}
        for i, values in enumerate(cols):
            kind = kinds[i]
            if kind == "arrow":
                try:
                    typed[i] = decode_values(values, self.types[i])
                    continue
                except (pa.ArrowException, ValueError, TypeError, ArithmeticError):
                    kind = "string"
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
            typed[i]
            if i in typed
            else pa.array([_convert(k, v) for v in values], type=_arrow_type(k))
            for i, (k, values) in enumerate(zip(self.kinds, cols))
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
                        # an Arrow-typed column widens to text from its encoded values
                        values = encode_array(col) if was == "arrow" else col.to_pylist()
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
