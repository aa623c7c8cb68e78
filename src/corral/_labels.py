"""Labeled rows, shared by ``corral calibrate`` and ``corral eval``: reading a labels file, finding
its keys in the job's source, and the rule that says whether an answer equals its label.

A labels file is CSV, TSV or JSONL (by extension) with the job's key column and one column per
expected answer. :func:`matches` is the accuracy rule of both commands: text compared after strip
and casefold, numbers as numbers, lists as sorted sets, yes/no read as booleans for a boolean.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from corral._registry import suggest
from corral.errors import SourceError, UserError
from corral.io import open_source
from corral.io import read_table as io_read_table
from corral.job import Job

LABEL_FORMATS = (".csv", ".tsv", ".jsonl", ".ndjson")


def read_table(path: Path, error: type[UserError]) -> tuple[list[str], list[dict[str, Any]]]:
    """Columns and rows of a CSV, TSV or JSONL labels file."""
    ext = path.suffix.lower()
    if ext not in LABEL_FORMATS:
        raise error(f"labels file {path} must be .csv, .tsv or .jsonl; convert or rename it")
    if not path.is_file():
        raise error(f"labels file not found: {path}")
    try:
        return io_read_table(path.resolve())  # a relative path is taken from the working folder
    except SourceError as e:
        raise error(f"labels file: {e}") from None


def blank(v: Any) -> bool:
    """An empty cell: no value, or only whitespace."""
    return v is None or (isinstance(v, str) and not v.strip())


def read_labels(
    path: Path, key: str, error: type[UserError]
) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """The labels file's columns and its rows by key (as text; the first row of a key wins, rows
    without a key are left out). Raises when the key column is missing."""
    cols, rows = read_table(path, error)
    if key not in cols:
        raise error(
            f"labels file {path.name} has no key column `{key}`{suggest(key, cols) or '.'} "
            f"Its columns: {', '.join(cols) or '(none)'}; give --key-column"
        )
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        k = r.get(key)
        if blank(k):
            continue
        out.setdefault(str(k), r)
    return cols, out


def source_rows(
    job: Job, key: str, wanted: set[str] | dict[str, Any], labels_name: str,
    error: type[UserError],
) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """The job's source columns and its rows whose key is one of ``wanted``, in source order.
    Raises when the source has no such key column or none of the keys."""
    source = open_source(job.source, job.base_dir)
    if key not in source.column_names:
        raise error(
            f"source {source.path.name} has no key column `{key}`{suggest(key, source.column_names) or '.'} "
            f"Its columns: {', '.join(source.column_names)}; give --key-column"
        )
    by_key: dict[str, dict[str, Any]] = {}
    for row in source.rows():
        if row.data is None:
            continue
        k = row.data.get(key)
        if blank(k):
            continue
        k = str(k)
        if k in wanted and k not in by_key:
            by_key[k] = row.data
    if not by_key:
        some = ", ".join(list(wanted)[:3])
        raise error(
            f"no labeled key is in the source: none of the {len(wanted):,} keys of {labels_name} "
            f"(e.g. {some}) is a `{key}` value of {source.path.name}"
        )
    return source.column_names, by_key


# --- the accuracy rule ---------------------------------------------------------------------------


def norm(x: Any) -> Any:
    """A value's comparable form: text stripped and casefolded, whole floats as integers, lists as
    sorted tuples, objects as sorted pairs."""
    if x is None:
        return ""
    if isinstance(x, bool):
        return "true" if x else "false"
    if isinstance(x, (int, float)):
        return str(int(x)) if float(x).is_integer() else repr(float(x))
    if isinstance(x, (list, tuple)):
        return tuple(sorted((norm(v) for v in x), key=str))
    if isinstance(x, dict):
        return tuple(sorted((str(k), norm(v)) for k, v in x.items()))
    return str(x).strip().casefold()


_TRUE = {"true", "yes", "y", "1"}
_FALSE = {"false", "no", "n", "0"}


def as_shape(label: Any, value: Any) -> Any:
    """The label read in the value's shape: a list from JSON or `a;b`, an object from JSON, a
    boolean from yes/no."""
    if not isinstance(label, str):
        return label
    text = label.strip()
    if isinstance(value, list):
        if text.startswith("["):
            try:
                return json.loads(text)
            except ValueError:
                pass
        sep = ";" if ";" in text else "|" if "|" in text else ","
        return [p for p in (s.strip() for s in text.split(sep)) if p]
    if isinstance(value, dict) and text.startswith("{"):
        try:
            return json.loads(text)
        except ValueError:
            return label
    if isinstance(value, bool):
        low = text.casefold()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
    return label


def matches(value: Any, label: Any) -> bool:
    """Whether a step's value equals the label: text after strip + casefold, lists as sorted."""
    return norm(value) == norm(as_shape(label, value))
