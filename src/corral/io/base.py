"""The source/sink interface shared by every format, and the factories the engine calls.

A :class:`Source` streams rows out of a file or table as :class:`SourceRow` objects; a row that
cannot be parsed is still yielded (with ``data=None`` and an ``error`` naming its line) so that
one bad line never stops an ingestion. A :class:`Sink` writes the complete output of a run every
time it is called: file sinks write a temporary file beside the target and ``os.replace`` it, the
SQLite sink upserts by key inside one transaction, so writing twice never duplicates anything.
"""

from __future__ import annotations

import base64
import codecs
import datetime as dt
import decimal
import hashlib
import io
import json
import math
import os
import secrets
from abc import ABC, abstractmethod
from collections.abc import Generator, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corral.errors import SinkError, SourceError
from corral.io.spec import SinkSpec, SourceSpec, format_from_path

__all__ = [
    "COLUMN_TYPES",
    "FORMATS",
    "Column",
    "Sink",
    "Source",
    "SourceRow",
    "open_quarantine_sink",
    "open_sink",
    "open_source",
    "quarantine_spec",
]

COLUMN_TYPES: tuple[str, ...] = ("string", "integer", "number", "boolean", "date", "list", "any")
FORMATS: tuple[str, ...] = ("csv", "tsv", "jsonl", "parquet", "sqlite")

_BLOCK = 1 << 20  # fingerprint read size: 1 MiB
_PATH_HINT = "(paths are relative to the job file's folder)"


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
    """

    name: str
    type: str = "string"
    arrow_type: Any = None

    def __post_init__(self) -> None:
        if self.type not in COLUMN_TYPES:
            raise ValueError(
                f"unknown column type {self.type!r} for column {self.name!r}; "
                f"expected one of {', '.join(COLUMN_TYPES)}"
            )


class Source(ABC):
    """A readable table of rows. ``columns`` is known as soon as the source is opened."""

    format: str = ""

    def __init__(self, path: Path, columns: list[Column]) -> None:
        self.path = path
        self.columns = columns

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
            raise SourceError(_os_reason(f"cannot read source file {self.path}", e)) from e
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

    @abstractmethod
    def write(
        self,
        columns: list[Column],
        batches: Iterable[list[dict[str, Any]]],
        key_column: str,
    ) -> int:
        """Write every row of ``batches`` (consumed lazily); return how many were written."""

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
    return (
        f"cannot tell the format of {where} file {path} from its extension {ext} — "
        f"set `format:` under `{where}:` to one of {', '.join(FORMATS)}"
    )


def open_source(spec: SourceSpec, base_dir: Path) -> Source:
    """Open the source a job describes; its path is relative to ``base_dir`` unless absolute."""
    path = resolve_path(spec.path, base_dir)
    if not path.exists():
        raise SourceError(
            f"source file not found: {path} — check `source:` in the job file {_PATH_HINT}"
        )
    if path.is_dir():
        raise SourceError(
            f"source path is a folder, not a file: {path} — point `source:` at a data file "
            f"{_PATH_HINT}"
        )
    fmt = spec.format or format_from_path(str(path))
    if fmt is None:
        raise SourceError(_unknown_format(path, "source"))
    if fmt in ("csv", "tsv"):
        from corral.io.csv import CsvSource

        return CsvSource(
            path,
            delimiter=parse_delimiter(spec.delimiter, "\t" if fmt == "tsv" else ",", "source"),
            encoding=check_encoding(spec.encoding),
            quoting=fmt == "csv",
            fmt=fmt,
        )
    if fmt == "jsonl":
        from corral.io.jsonl import JsonlSource

        return JsonlSource(path, encoding=check_encoding(spec.encoding))
    if fmt == "parquet":
        from corral.io.parquet import ParquetSource

        return ParquetSource(path)
    if fmt == "sqlite":
        from corral.io.sqlite import SqliteSource

        return SqliteSource(path, spec.table)
    raise SourceError(_unknown_format(path, "source"))  # pragma: no cover - Literal guards it


def open_sink(spec: SinkSpec, base_dir: Path) -> Sink:
    """Open the sink a job describes; its path is relative to ``base_dir`` unless absolute."""
    path = resolve_path(spec.path, base_dir)
    fmt = spec.format or format_from_path(str(path))
    if fmt is None:
        raise SinkError(_unknown_format(path, "sink"))
    check_writable(path)
    if fmt in ("csv", "tsv"):
        from corral.io.csv import CsvSink

        return CsvSink(
            path,
            delimiter=parse_delimiter(spec.delimiter, "\t" if fmt == "tsv" else ",", "sink"),
            quoting=fmt == "csv",
            fmt=fmt,
        )
    if fmt == "jsonl":
        from corral.io.jsonl import JsonlSink

        return JsonlSink(path)
    if fmt == "parquet":
        from corral.io.parquet import ParquetSink

        return ParquetSink(path)
    if fmt == "sqlite":
        from corral.io.sqlite import SqliteSink

        return SqliteSink(path, spec.table)
    raise SinkError(_unknown_format(path, "sink"))  # pragma: no cover - Literal guards it


def side_spec(spec: SinkSpec, kind: str) -> SinkSpec:
    """The sink spec for rows set aside as ``kind`` (``quarantine`` or ``skipped``).

    The job's ``quarantine:`` / ``skipped:`` path if set; otherwise ``NAME.KIND.EXT`` beside the
    sink (``out/sms.parquet`` -> ``out/sms.quarantine.parquet``), or for SQLite the same database
    with table ``TABLE_KIND``.
    """
    fmt = spec.format or format_from_path(spec.path)
    override = getattr(spec, kind, None)
    if override:
        qfmt = format_from_path(override) or fmt
        table = None
        if qfmt == "sqlite":
            table = f"{spec.table}_{kind}" if spec.table else kind
        return SinkSpec(
            path=override,
            format=qfmt,  # type: ignore[arg-type]
            table=table,
            delimiter=spec.delimiter if qfmt == fmt else None,
        )
    if fmt == "sqlite":
        table = f"{spec.table}_{kind}" if spec.table else None
        return SinkSpec(path=spec.path, format="sqlite", table=table, delimiter=None)
    p = Path(spec.path)
    name = f"{p.stem}.{kind}{p.suffix}" if p.suffix else f"{p.name}.{kind}"
    return SinkSpec(
        path=str(p.with_name(name)),
        format=fmt,  # type: ignore[arg-type]
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
    from corral.io.spec import SourceSpec

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
            f"another `sink:` path {_PATH_HINT}"
        )
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise SinkError(
            f"sink path is not writable: {path} (no write permission on {ancestor}) — choose a "
            f"writable folder for `sink:` {_PATH_HINT}"
        )


def ensure_parent(path: Path) -> None:
    """Create the parent folders of a sink path."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SinkError(
            _os_reason(f"cannot create the sink's folder {path.parent}", e)
            + f" — choose a writable `sink:` path {_PATH_HINT}"
        ) from e


def one_line(e: BaseException) -> str:
    """An exception's message with all whitespace runs (newlines too) collapsed to one space."""
    return " ".join(str(e).split()) or type(e).__name__


def _os_reason(what: str, e: OSError) -> str:
    return f"{what}: {e.strerror or one_line(e)}"


# ----------------------------------------------------------------------------- text reading


def _decode_error(path: Path, encoding: str, where: str, byte: int | None) -> SourceError:
    shown = f" has the byte 0x{byte:02x}," if byte is not None else ""
    return SourceError(
        f"source file {path} is not valid {encoding}: {where}{shown} which cannot be decoded — "
        f"re-save the file as UTF-8, or set `encoding:` under `source:` to the file's encoding "
        f"(e.g. latin-1)"
    )


def iter_text_lines(path: Path, encoding: str) -> Generator[str, None, None]:
    """Yield the decoded physical lines of a text file (line endings kept, BOM removed).

    Bytes that do not decode raise :class:`SourceError` naming the line and the byte. Memory use
    is one line at a time.
    """
    name = codecs.lookup(encoding).name
    try:
        f = open(path, "rb")
    except OSError as e:
        raise SourceError(_os_reason(f"cannot read source file {path}", e)) from e
    with f:
        if name.startswith(("utf-16", "utf-32")):
            # Multi-byte code units: let a text wrapper split lines, lose exact byte positions.
            text = io.TextIOWrapper(f, encoding=encoding, newline="")
            n = 0
            try:
                for line in text:
                    if n == 0 and line.startswith("\ufeff"):
                        line = line[1:]
                    n += 1
                    yield line
            except UnicodeDecodeError:
                raise _decode_error(path, encoding, f"the text after line {n}", None) from None
            return
        n = 0
        for raw in f:
            n += 1
            try:
                line = raw.decode(encoding)
            except UnicodeDecodeError as e:
                raise _decode_error(path, encoding, f"line {n}", raw[e.start]) from None
            if n == 1 and line.startswith("\ufeff"):
                line = line[1:]
            yield line


# ----------------------------------------------------------------------------- value helpers


def to_json_value(v: Any) -> Any:
    """``v`` as a value ``json.dumps`` accepts: dates -> ISO text, decimals -> str, bytes ->
    base64, NaN -> None, tuples -> lists, dict keys -> str."""
    if v is None or isinstance(v, (str, bool, int)):
        return v
    if isinstance(v, float):
        return None if math.isnan(v) else v
    if isinstance(v, (dt.date, dt.time)):  # datetime is a date
        return v.isoformat()
    if isinstance(v, decimal.Decimal):
        return str(v)
    if isinstance(v, dt.timedelta):
        return v.total_seconds()
    if isinstance(v, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(v)).decode("ascii")
    if isinstance(v, dict):
        return {str(k): to_json_value(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, set, frozenset)):
        return [to_json_value(x) for x in v]
    return str(v)


def to_text(v: Any) -> str:
    """``v`` as one text cell: strings as they are, ``None`` as empty, booleans as
    ``true``/``false``, lists and dicts as JSON text."""
    if v is None:
        return ""
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float, decimal.Decimal)):
        return str(v)
    if isinstance(v, (dt.date, dt.time)):
        return v.isoformat()
    if isinstance(v, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(v)).decode("ascii")
    if isinstance(v, (dict, list, tuple, set, frozenset)):
        return json.dumps(to_json_value(v), ensure_ascii=False)
    return str(v)


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


# ----------------------------------------------------------------------------- atomic files


def temp_path_for(path: Path) -> Path:
    """A fresh hidden temporary name in the same folder as ``path``."""
    return path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds, fsync it and
    ``os.replace`` it over ``path``. On any error the temporary file is removed."""
    ensure_parent(path)
    tmp = temp_path_for(path)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as e:
        with suppress(OSError):
            tmp.unlink()
        raise SinkError(
            _os_reason(f"cannot write sink file {path}", e)
            + f" — check that the folder is writable and has space, or choose another `sink:` "
            f"path {_PATH_HINT}"
        ) from e
    except BaseException:
        with suppress(OSError):
            tmp.unlink()
        raise
