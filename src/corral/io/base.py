"""The source/sink interface shared by every format, and the factories the engine calls.

A :class:`Source` streams rows out of a file or table as :class:`SourceRow` objects; a row that
cannot be parsed is still yielded (with ``data=None`` and an ``error`` naming its line) so that
one bad line never stops an ingestion. A :class:`Sink` writes the complete output of a run every
time it is called: file sinks write a temporary file beside the target and ``os.replace`` it, the
SQLite and DuckDB sinks upsert by key inside one transaction, so writing twice never duplicates
anything.

Formats are found by name in the ``corral.sources`` and ``corral.sinks`` entry-point groups
(:func:`open_source`, :func:`open_sink`); each class opens itself from the job's spec
(:meth:`Source.from_spec`, :meth:`Sink.from_spec`). The helpers formats share live in
:mod:`corral.io._text` (reading text, messages), :mod:`corral.io._values` (values as JSON or
text) and :mod:`corral.io._atomic` (files replaced whole); they are listed here too.
"""

from __future__ import annotations

import codecs
import hashlib
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeAlias

from corral._registry import SINK_GROUP, SOURCE_GROUP, plugin_names, sink_class, source_class
from corral.errors import SinkError, SourceError
from corral.io._atomic import atomic_path, ensure_parent, temp_path_for
from corral.io._text import PATH_HINT, iter_text_lines, one_line, os_reason
from corral.io._values import json_type, to_json_value, to_text
from corral.io.spec import SinkSpec, SourceSpec, format_from_path
from corral.store._url import is_url

__all__ = [
    "COLUMN_TYPES",
    "FORMATS",
    "TABLE_FORMATS",
    "Batches",
    "Column",
    "Sink",
    "Source",
    "SourceRow",
    "atomic_path",
    "check_encoding",
    "check_sink_columns",
    "sized_vectors",
    "check_writable",
    "ensure_parent",
    "iter_text_lines",
    "json_type",
    "one_line",
    "open_quarantine_sink",
    "open_side_sink",
    "open_sink",
    "open_source",
    "parse_delimiter",
    "quarantine_spec",
    "read_table",
    "resolve_path",
    "side_spec",
    "temp_path_for",
    "to_json_value",
    "to_text",
]

COLUMN_TYPES: tuple[str, ...] = ("string", "integer", "number", "boolean", "date", "list", "vector", "any")
#: the built-in formats (a plugin registers more under ``corral.sources`` / ``corral.sinks``)
FORMATS: tuple[str, ...] = ("csv", "tsv", "jsonl", "parquet", "sqlite", "duckdb", "postgres")
#: formats that hold tables in one database file (side outputs go to tables beside the sink's)
TABLE_FORMATS: tuple[str, ...] = ("sqlite", "duckdb", "postgres")

_BLOCK = 1 << 20  # fingerprint read size: 1 MiB

#: the rows a sink writes, in batches (consumed lazily)
Batches: TypeAlias = Iterable[list[dict[str, Any]]]


@dataclass(slots=True)
class SourceRow:
    """One data row of a source.

    ``ordinal`` is the 0-based position among the source's data rows (malformed rows count too);
    ``line`` the 1-based physical line where the row starts (text formats only). A malformed row
    has ``data=None`` and an ``error`` that starts with ``"line N: "``.
    """

    ordinal: int
    line: int | None
    data: dict[str, Any] | None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Column:
    """A column name and its logical type (one of :data:`COLUMN_TYPES`).

    ``arrow_type`` is the column's exact ``pyarrow.DataType`` when the source knows it (a Parquet
    source does); the Parquet sink writes such a column with that type, turning the JSON the
    store holds back into the original values. Other sinks go by ``type`` alone.

    A ``vector`` column (``embed``'s) holds lists of ``size`` numbers: a fixed-size list of
    float32 in Parquet, ``FLOAT[size]`` in DuckDB, a JSON array elsewhere. When the step does not
    know ``size`` (the model's own length), :meth:`Sink.write` finds it in the rows first.
    """

    name: str
    type: str = "string"
    arrow_type: Any = None
    size: int | None = None

    def __post_init__(self) -> None:
        if self.type not in COLUMN_TYPES:
            raise ValueError(
                f"unknown column type {self.type!r} for column {self.name!r}; "
                f"expected one of {', '.join(COLUMN_TYPES)}"
            )


class Source(ABC):
    """A readable table of rows. ``columns`` is known as soon as the source is opened."""

    format: str = ""
    #: whether the format reads a ``query:`` (a SQL query as the source)
    takes_query: bool = False

    def __init__(self, path: Path, columns: list[Column]) -> None:
        self.path = path
        self.columns = columns

    @classmethod
    @abstractmethod
    def from_spec(cls, spec: SourceSpec, path: Path, fmt: str) -> Source:
        """Open ``path`` (the spec's, resolved) as format ``fmt`` with the spec's options."""

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def fingerprint(self) -> str:
        """Hex sha256 of the input content (the file's bytes, read in 1 MiB blocks)."""
        h = hashlib.sha256()
        try:
            with open(self.path, "rb") as f:
                while block := f.read(_BLOCK):
                    h.update(block)
        except OSError as e:
            raise SourceError(os_reason(f"cannot read source file {self.path}", e)) from e
        return h.hexdigest()

    @abstractmethod
    def rows(self, start: int = 0) -> Iterator[SourceRow]:
        """Stream the rows in order, skipping the first ``start`` data rows."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.path} columns={self.column_names}>"


class Sink(ABC):
    """A place the outputs are written to; every :meth:`write` replaces the previous output."""

    format: str = ""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def from_spec(cls, spec: SinkSpec, path: Path, fmt: str) -> Sink:
        """A sink writing ``path`` (the spec's, resolved) as format ``fmt`` with its options."""
        return cls(path)

    def write(self, columns: list[Column], batches: Batches, key_column: str) -> int:
        """Write every row of ``batches`` (consumed lazily); return how many were written.
        The column names must be unique (see :func:`check_sink_columns`); a ``vector`` column
        without a ``size`` gets the length of its first vector (see :func:`sized_vectors`)."""
        names = check_sink_columns(columns)
        columns, batches = sized_vectors(columns, batches)
        return self.write_rows(names, columns, batches, key_column)

    @abstractmethod
    def write_rows(self, names: list[str], columns: list[Column], batches: Batches, key: str) -> int:
        """:meth:`write` once the column ``names`` are known to be unique; ``key`` is the
        column that identifies a row (an upserting sink replaces by it)."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.path}>"


# ----------------------------------------------------------------------------- factories


def resolve_path(raw: str, base_dir: Path) -> Path:
    """``raw`` made absolute: relative paths are taken from ``base_dir``."""
    p = Path(raw).expanduser()
    if not p.is_absolute():
        p = Path(base_dir) / p
    return Path(os.path.abspath(p))


def _unknown_format(path: Path, where: str) -> str:
    ext = path.suffix or "(none)"
    names = plugin_names(SOURCE_GROUP if where == "source" else SINK_GROUP)
    return (
        f"cannot tell the format of {where} file {path} from its extension {ext} — "
        f"set `format:` under `{where}:` to one of {', '.join(names)}"
    )


def open_source(spec: SourceSpec, base_dir: Path) -> Source:
    """Open the source a job describes; its path is relative to ``base_dir`` unless absolute.
    A spec that carries its source already (a DataFrame's, :mod:`corral.io.frames`) gives it."""
    if (given := getattr(spec, "given", None)) is not None:
        return given  # type: ignore[no-any-return]
    if is_url(spec.path):  # a database, not a file (corral.io.postgres)
        cls = source_class(spec.format or "postgres")
        assert cls is not None
        return cls.from_spec(spec, Path(spec.path), spec.format or "postgres")
    path = resolve_path(spec.path, base_dir)
    if not path.exists():
        raise SourceError(
            f"source file not found: {path} — check `source:` in the job file {PATH_HINT}"
        )
    if path.is_dir():
        raise SourceError(
            f"source path is a folder, not a file: {path} — point `source:` at a data file "
            f"{PATH_HINT}"
        )
    fmt = spec.format or format_from_path(str(path))
    cls = source_class(fmt) if fmt else None
    if fmt is None or cls is None:
        raise SourceError(_unknown_format(path, "source"))
    if spec.query and not cls.takes_query:
        raise SourceError(
            f"`query:` is not read for a {fmt} source ({path}) — remove it, or point `source:` at "
            f"a database that takes queries (duckdb)"
        )
    return cls.from_spec(spec, path, fmt)


def open_sink(spec: SinkSpec, base_dir: Path) -> Sink:
    """Open the sink a job describes; its path is relative to ``base_dir`` unless absolute."""
    if is_url(spec.path):
        klass = sink_class(spec.format or "postgres")
        assert klass is not None
        return klass.from_spec(spec, Path(spec.path), spec.format or "postgres")
    path = resolve_path(spec.path, base_dir)
    fmt = spec.format or format_from_path(str(path))
    cls = sink_class(fmt) if fmt else None
    if fmt is None or cls is None:
        raise SinkError(_unknown_format(path, "sink"))
    check_writable(path)
    return cls.from_spec(spec, path, fmt)


def side_spec(spec: SinkSpec, kind: str) -> SinkSpec:
    """The sink spec for rows set aside as ``kind`` (``quarantine`` or ``skipped``).

    The job's ``quarantine:`` / ``skipped:`` path if set; otherwise ``NAME.KIND.EXT`` beside the
    sink (``out/sms.parquet`` -> ``out/sms.quarantine.parquet``), or for SQLite and DuckDB the
    same database with table ``TABLE_KIND``.
    """
    fmt = spec.format or format_from_path(spec.path)
    override = getattr(spec, kind, None)
    if override:
        qfmt = format_from_path(override) or fmt
        table = None
        if qfmt in TABLE_FORMATS:
            table = f"{spec.table}_{kind}" if spec.table else kind
        return SinkSpec(
            path=override,
            format=qfmt,
            table=table,
            delimiter=spec.delimiter if qfmt == fmt else None,
        )
    if fmt in TABLE_FORMATS:
        table = f"{spec.table}_{kind}" if spec.table else None
        return SinkSpec(path=spec.path, format=fmt, table=table, delimiter=None)
    p = Path(spec.path)
    name = f"{p.stem}.{kind}{p.suffix}" if p.suffix else f"{p.name}.{kind}"
    return SinkSpec(
        path=str(p.with_name(name)),
        format=fmt,
        table=None,
        delimiter=spec.delimiter,
    )


def quarantine_spec(spec: SinkSpec) -> SinkSpec:
    """The sink spec quarantined rows go to (see :func:`side_spec`)."""
    return side_spec(spec, "quarantine")


def open_quarantine_sink(spec: SinkSpec, base_dir: Path) -> Sink:
    """Open the sink for quarantined rows that goes with the sink ``spec``."""
    return open_sink(side_spec(spec, "quarantine"), base_dir)


def open_side_sink(spec: SinkSpec, base_dir: Path, kind: str) -> Sink:
    """Open the sink for rows set aside as ``kind`` (see :func:`side_spec`)."""
    return open_sink(side_spec(spec, kind), base_dir)


def read_table(path: Path) -> tuple[list[str], list[dict[str, Any]]]:
    """The columns and rows of a small data file in any source format (a labels file, say);
    a malformed row is an error here, not a row set aside."""
    src = open_source(SourceSpec(path=str(path)), path.parent)
    rows = []
    for row in src.rows():
        if row.data is None:
            raise SourceError(f"{path.name} {row.error}")
        rows.append(row.data)
    return src.column_names, rows


# ----------------------------------------------------------------------------- option checks


def parse_delimiter(raw: str | None, default: str, where: str) -> str:
    """A one-character delimiter; ``\\t`` and ``tab`` spelled out mean a tab."""
    if raw is None:
        return default
    if raw in ("\\t", "tab", "TAB"):
        return "\t"
    if len(raw) != 1 or raw in ("\n", "\r", '"'):
        err = SourceError if where == "source" else SinkError
        raise err(
            f"invalid delimiter {raw!r} — set `delimiter:` under `{where}:` to a single "
            f"character such as ',' ';' '|' or \"\\t\""
        )
    return raw


def check_encoding(encoding: str) -> str:
    """``encoding`` if Python knows it, else a SourceError."""
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise SourceError(
            f"unknown encoding {encoding!r} — set `encoding:` under `source:` to a Python "
            f"codec name such as utf-8, latin-1 or cp1252"
        ) from None
    return encoding


def check_writable(path: Path) -> None:
    """Raise SinkError now if ``path`` clearly cannot be written (before any work is done)."""
    if path.is_dir():
        raise SinkError(
            f"sink path is a folder, not a file: {path} — set `sink:` to a file path such as "
            f"{path / ('outputs' + (path.suffix or '.csv'))}"
        )
    if path.exists():
        if not os.access(path, os.W_OK):
            raise SinkError(
                f"sink file is not writable: {path} — check its permissions or choose another "
                f"`sink:` path"
            )
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise SinkError(
            f"cannot create the sink's folder {path.parent}: {ancestor} is a file — choose "
            f"another `sink:` path {PATH_HINT}"
        )
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise SinkError(
            f"sink path is not writable: {path} (no write permission on {ancestor}) — choose a "
            f"writable folder for `sink:` {PATH_HINT}"
        )


def sized_vectors(columns: list[Column], batches: Batches) -> tuple[list[Column], Batches]:
    """``columns`` with each unsized ``vector`` column given the length of its first vector
    (batches are read ahead until every one has a vector, or the rows end), and the batches
    as they were. A column with no vector at all keeps ``size`` None (a list of any length)."""
    todo = {c.name for c in columns if c.type == "vector" and c.size is None}
    if not todo:
        return columns, batches
    it = iter(batches)
    ahead: list[list[dict[str, Any]]] = []
    sizes: dict[str, int] = {}
    for batch in it:
        ahead.append(batch)
        for row in batch:
            for name in todo - sizes.keys():
                v = row.get(name)
                if isinstance(v, (list, tuple)) and v:
                    sizes[name] = len(v)
        if len(sizes) == len(todo):
            break
    out = [replace(c, size=sizes.get(c.name)) if c.name in todo else c for c in columns]

    def again() -> Iterator[list[dict[str, Any]]]:
        yield from ahead
        yield from it

    return out, again()


def check_sink_columns(columns: list[Column]) -> list[str]:
    """The column names, after checking they are unique."""
    names = [c.name for c in columns]
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise SinkError(
                f"two output columns are both named {n!r} — rename one of them in the job file"
            )
        seen.add(n)
    return names
