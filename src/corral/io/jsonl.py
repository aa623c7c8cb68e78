"""JSON Lines sources and sinks: one JSON object per line, blank lines ignored."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from corral.errors import SourceError
from corral.io._atomic import atomic_path
from corral.io._text import iter_text_lines
from corral.io._values import json_type, to_json_value
from corral.io.base import Batches, Column, Sink, Source, SourceRow, check_encoding
from corral.io.spec import SourceSpec

__all__ = ["JsonlSink", "JsonlSource"]

# How many objects are looked at to name the columns when the source is opened.
_SAMPLE_OBJECTS = 100


#: how a line's JSON value that is not an object is named, by its JSON type
_FOUND = {"array": "an array", "string": "a string", "boolean": "a boolean", "integer": "a number",
          "number": "a number", "null": "null"}


def _parse(line: str, n: int) -> tuple[dict[str, Any] | None, str | None]:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        return None, f"line {n}: not valid JSON ({e.msg} at column {e.colno})"
    except RecursionError:
        return None, f"line {n}: not valid JSON (nested too deeply)"
    if not isinstance(obj, dict):
        return None, f"line {n}: expected a JSON object, found {_FOUND[json_type(obj)]}"
    return obj, None


class JsonlSource(Source):
    """Rows of a JSON Lines file. Columns (type ``any``) are the keys of the first objects, in
    order of appearance; rows keep every key they have."""

    format = "jsonl"

    def __init__(self, path: Path, *, encoding: str = "utf-8") -> None:
        self.path = path
        self.encoding = encoding
        super().__init__(path, [Column(name, "any") for name in self._sample_keys()])

    @classmethod
    def from_spec(cls, spec: SourceSpec, path: Path, fmt: str) -> JsonlSource:
        return cls(path, encoding=check_encoding(spec.encoding))

    def _sample_keys(self) -> list[str]:
        keys: dict[str, None] = {}
        seen = 0
        lines = iter_text_lines(self.path, self.encoding)
        try:
            for line in lines:
                if not line.strip():
                    continue
                obj, _ = _parse(line, 0)
                if obj is not None:
                    keys.update(dict.fromkeys(obj))
                    seen += 1
                    if seen >= _SAMPLE_OBJECTS:
                        break
        except SourceError:
            pass  # undecodable bytes: rows() reports them with the line number
        finally:
            lines.close()
        if seen == 0 and not keys:
            self._check_not_empty()
        return list(keys)

    def _check_not_empty(self) -> None:
        lines = iter_text_lines(self.path, self.encoding)
        try:
            for line in lines:
                if line.strip():
                    return
        except SourceError:
            return
        finally:
            lines.close()
        raise SourceError(
            f"source file {self.path} is empty — a JSON Lines source needs one JSON object per "
            f"line"
        )

    def rows(self, start: int = 0) -> Iterator[SourceRow]:
        lines = iter_text_lines(self.path, self.encoding)
        try:
            ordinal = 0
            for n, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                if ordinal >= start:
                    obj, error = _parse(line, n)
                    yield SourceRow(ordinal, n, obj, error)
                ordinal += 1
        finally:
            lines.close()


class JsonlSink(Sink):
    """Writes one JSON object per line (UTF-8, keys in column order)."""

    format = "jsonl"

    def write_rows(self, names: list[str], columns: list[Column], batches: Batches, key: str) -> int:
        count = 0
        with atomic_path(self.path) as tmp:
            with open(tmp, "x", encoding="utf-8", newline="\n") as f:
                for batch in batches:
                    f.writelines(
                        json.dumps(
                            {n: to_json_value(row.get(n)) for n in names}, ensure_ascii=False
                        )
                        + "\n"
                        for row in batch
                    )
                    count += len(batch)
        return count
