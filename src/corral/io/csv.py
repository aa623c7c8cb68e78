"""CSV and TSV sources and sinks (stdlib :mod:`csv`).

CSV follows RFC 4180 quoting: fields may be quoted and may span lines. TSV follows the
IANA ``text/tab-separated-values`` convention: there is no quoting at all, so a ``"`` inside a
field is an ordinary character (messages like ``"Hi" she said`` read back exactly). Since a TSV
field cannot hold a tab or a line break, the TSV sink writes those as the two characters ``\\t``,
``\\n`` and ``\\r``. Use ``format: csv`` with ``delimiter: "\\t"`` for quoted tab-separated
files.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from corral.errors import SinkError, SourceError
from corral.io._atomic import atomic_path
from corral.io._text import iter_text_lines
from corral.io._values import to_text
from corral.io.base import Batches, Column, Sink, Source, SourceRow, check_encoding, parse_delimiter
from corral.io.spec import SinkSpec, SourceSpec

__all__ = ["CsvSink", "CsvSource"]

# Long LLM-bound documents easily exceed the stdlib's 128 KiB default field limit.
_FIELD_LIMIT = 64 * 1024 * 1024


def _raise_field_limit() -> None:
    if csv.field_size_limit() < _FIELD_LIMIT:
        csv.field_size_limit(_FIELD_LIMIT)


class CsvSource(Source):
    """Rows of a delimited text file; the first non-blank row is the header."""

    def __init__(
        self, path: Path, *, delimiter: str = ",", encoding: str = "utf-8", quoting: bool = True,
        fmt: str = "csv",
    ) -> None:
        self.path = path
        self.format = fmt
        self.delimiter = delimiter
        self.encoding = encoding
        self.quoting = quoting
        _raise_field_limit()
        super().__init__(path, [Column(name, "string") for name in self._read_header()])

    @classmethod
    def from_spec(cls, spec: SourceSpec, path: Path, fmt: str) -> CsvSource:
        return cls(
            path,
            delimiter=parse_delimiter(spec.delimiter, "\t" if fmt == "tsv" else ",", "source"),
            encoding=check_encoding(spec.encoding),
            quoting=fmt == "csv",
            fmt=fmt,
        )

    def _reader(self, lines: Iterator[str]) -> Any:
        if self.quoting:
            # strict: an unclosed quote is an error at the end of the file instead of silently
            # swallowing every row after it into one field
            return csv.reader(
                lines, delimiter=self.delimiter, quotechar='"', doublequote=True, strict=True
            )
        return csv.reader(lines, delimiter=self.delimiter, quoting=csv.QUOTE_NONE)

    def _read_header(self) -> list[str]:
        lines = iter_text_lines(self.path, self.encoding)
        try:
            reader = self._reader(lines)
            try:
                for fields in reader:
                    if fields:
                        break
                else:
                    raise SourceError(
                        f"source file {self.path} is empty — it needs a header row naming the "
                        f"columns, then one row per record"
                    )
            except csv.Error as e:
                raise SourceError(
                    f"cannot read the header of {self.path}: line {reader.line_num}: {e} — fix "
                    f"the first row, or set `format:`/`delimiter:` under `source:`"
                ) from None
        finally:
            lines.close()
        names = [f.strip() for f in fields]
        if not any(names):
            raise SourceError(
                f"source file {self.path} has no header: its first row is blank — add a header "
                f"row naming the columns"
            )
        names = [n or f"column_{i}" for i, n in enumerate(names, 1)]
        first: dict[str, int] = {}
        for i, n in enumerate(names, 1):
            if n in first:
                raise SourceError(
                    f"duplicate column name {n!r} in the header of {self.path} (columns "
                    f"{first[n]} and {i}) — rename one of them so every column name is unique"
                )
            first[n] = i
        return names

    def rows(self, start: int = 0) -> Iterator[SourceRow]:
        names = self.column_names
        width = len(names)
        lines = iter_text_lines(self.path, self.encoding)
        try:
            reader = self._reader(lines)
            header_seen = False
            ordinal = 0
            while True:
                line = reader.line_num + 1  # the row about to be read starts on this line
                try:
                    fields = next(reader)
                except StopIteration:
                    return
                except csv.Error as e:
                    if header_seen:
                        what = str(e)
                        if "unexpected end of data" in what:
                            what = (
                                "a quoted field opened here is never closed, so lines "
                                f"{line}-{reader.line_num} were read as one row; close the quote"
                            )
                        if ordinal >= start:
                            yield SourceRow(ordinal, line, None, f"line {line}: {what}")
                        ordinal += 1
                        continue
                    raise SourceError(
                        f"cannot read the header of {self.path}: line {line}: {e} — fix the "
                        f"first row, or set `format:`/`delimiter:` under `source:`"
                    ) from None
                if not fields:  # a blank line
                    continue
                if not header_seen:
                    header_seen = True
                    continue
                if ordinal >= start:
                    if len(fields) == width:
                        yield SourceRow(ordinal, line, dict(zip(names, fields)))
                    else:
                        yield SourceRow(
                            ordinal,
                            line,
                            None,
                            f"line {line}: expected {width} fields, found {len(fields)}",
                        )
                ordinal += 1
        finally:
            lines.close()


def _tsv_cell(v: Any) -> str:
    s = to_text(v)
    if "\t" in s or "\n" in s or "\r" in s:
        s = s.replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    return s


class CsvSink(Sink):
    """Writes a header row and one row per output, UTF-8, ``\\n`` line endings."""

    def __init__(
        self, path: Path, *, delimiter: str = ",", quoting: bool = True, fmt: str = "csv"
    ) -> None:
        super().__init__(path)
        self.format = fmt
        self.delimiter = delimiter
        self.quoting = quoting

    @classmethod
    def from_spec(cls, spec: SinkSpec, path: Path, fmt: str) -> CsvSink:
        return cls(
            path,
            delimiter=parse_delimiter(spec.delimiter, "\t" if fmt == "tsv" else ",", "sink"),
            quoting=fmt == "csv",
            fmt=fmt,
        )

    def write_rows(self, names: list[str], columns: list[Column], batches: Batches, key: str) -> int:
        cell = to_text if self.quoting else _tsv_cell
        count = 0
        with atomic_path(self.path) as tmp:
            with open(tmp, "x", encoding="utf-8", newline="") as f:
                if self.quoting:
                    w = csv.writer(f, delimiter=self.delimiter, lineterminator="\n")
                else:
                    w = csv.writer(
                        f,
                        delimiter=self.delimiter,
                        quoting=csv.QUOTE_NONE,
                        quotechar=None,
                        escapechar=None,
                        lineterminator="\n",
                    )
                try:
                    w.writerow([cell(n) for n in names])
                    for batch in batches:
                        w.writerows([[cell(row.get(n)) for n in names] for row in batch])
                        count += len(batch)
                except csv.Error as e:
                    raise SinkError(
                        f"cannot write {self.path} as {self.format}: {e} (a value contains the "
                        f"delimiter {self.delimiter!r}) — use `format: csv` under `sink:`, "
                        f"which quotes such values"
                    ) from None
        return count
