"""Reference lists shared by ``normalize`` and ``match``: read once, indexed for fuzzy lookup.

A reference is the set of canonical entries a step may answer with. It is given inline (a list)
or read from a file in any source format (:class:`ReferenceSpec`). Lookups go through
:class:`Index`: an exact lookup for the "already canonical" shortcut, and a rapidfuzz ranking
that narrows a long list to the few entries worth showing the model for one row.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from rapidfuzz import fuzz, process, utils

from corral._registry import suggest
from corral._template import Template
from corral.errors import SourceError
from corral.io import Source, SourceSpec, open_source
from corral.io.base import resolve_path
from corral.io.spec import SourceFormat


class FileSpec(BaseModel):
    """Where a reference file is and how to read it (the keys of a job's ``source:``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str | None = Field(default=None, description="reference file, relative to the job file's folder")
    table: str | None = Field(default=None, description="table name, for a SQLite reference")
    format: SourceFormat | None = Field(default=None, description="inferred from the extension if omitted")
    delimiter: str | None = Field(default=None, description="CSV field delimiter")
    encoding: str = Field(default="utf-8", description="text encoding of CSV/TSV/JSONL files")

    def source_spec(self) -> SourceSpec:
        assert self.path is not None
        return SourceSpec(
            path=self.path, format=self.format, delimiter=self.delimiter,
            encoding=self.encoding, table=self.table,
        )


class ReferenceSpec(FileSpec):
    """Canonical values: one column of a file (``normalize``)."""

    column: str | None = Field(default=None, description="the column holding the canonical values")
    min_count: int | None = Field(
        default=None, ge=1, description="keep only values that appear at least this many times"
    )


class EntrySpec(FileSpec):
    """Reference records with an id (``match``)."""

    path: str = Field(description="reference file, relative to the job file's folder")
    key: str = Field(description="the column holding each entry's id")
    fields: list[str] | None = Field(default=None, description="columns shown to the model for each entry")
    template: str | None = Field(default=None, description="how an entry is shown: {column} placeholders")


def parse_spec(
    cls: type[BaseModel], value: Any, what: str, example: str, *, lists: bool = True
) -> Any:
    """A spec as a job gives it: a mapping becomes ``cls`` (a list stays a list where ``lists``);
    problems are one line naming the key (for use in a ``mode="before"`` validator)."""
    if value is None or isinstance(value, cls) or (lists and isinstance(value, list)):
        return value
    if not isinstance(value, dict):
        kind = "a list of entries or a mapping" if lists else "a mapping"
        raise ValueError(f"`{what}` must be {kind} like {example}")
    try:
        return cls.model_validate(value)
    except ValidationError as e:
        err = min(e.errors(), key=lambda x: x["type"] != "extra_forbidden")  # a typo first
        loc = ".".join(str(x) for x in err["loc"])
        valid = sorted(cls.model_fields)
        if err["type"] == "extra_forbidden":
            key = str(err["loc"][-1])
            msg = f"unknown key `{key}` in `{what}`{suggest(key, valid)} Valid keys: {', '.join(valid)}."
        elif err["type"] == "missing":
            msg = f"`{what}` needs `{loc}`: {example}"
        else:
            msg = f"`{what}.{loc}`: {err['msg']}"
        raise ValueError(msg) from None


# --- reading ------------------------------------------------------------------------------


def open_reference(spec: SourceSpec, base_dir: Path, where: str, key: str = "reference") -> Source:
    """Open a reference file; every failure is a one-line :class:`SourceError` naming ``where``."""
    path = resolve_path(spec.path, base_dir)
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "not found"
        raise SourceError(
            f"{where}: reference file {what}: {path} — fix `{key}.path` "
            "(paths are relative to the job file's folder)"
        )
    try:
        return open_source(spec, base_dir)
    except SourceError as e:
        msg = str(e).replace("`source:`", f"`{key}:`").replace("under `source:`", f"under `{key}:`")
        raise SourceError(f"{where}: {msg}") from None


def check_column(source: Source, column: str, where: str, key: str) -> None:
    cols = source.column_names
    if column not in cols:
        raise SourceError(
            f"{where}: column `{column}` is not in {source.path.name}"
            f"{suggest(column, cols) or '.'} Columns: {', '.join(cols)}. Fix `{key}`."
        )


def _text(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v).strip()


def count_values(
    spec: SourceSpec, base_dir: Path, columns: dict[str, tuple[str, str]], *,
    job_source: bool = False,
) -> dict[str, Counter[str]]:
    """How often each non-empty value (stripped) appears in each column, in one pass over the
    file. ``columns`` maps a column to (where, key to fix) for its error message; ``job_source``:
    the file is the job's own source (its errors then speak of `source:`)."""
    first_where = next(iter(columns.values()))[0]
    src = open_source(spec, base_dir) if job_source else open_reference(spec, base_dir, first_where)
    for column, (where, key) in columns.items():
        check_column(src, column, where, key)
    counts: dict[str, Counter[str]] = {c: Counter() for c in columns}
    for row in src.rows():
        if row.data is None:
            continue
        for column, counter in counts.items():
            v = _text(row.data.get(column))
            if v:
                counter[v] += 1
    return counts


def frequent(counts: Counter[str], min_count: int) -> list[str]:
    """The values seen at least ``min_count`` times, in order of first appearance."""
    return [v for v, n in counts.items() if n >= min_count]


def read_values(
    spec: SourceSpec, base_dir: Path, column: str, where: str, *, min_count: int = 1,
    column_key: str = "reference.column",
) -> list[str]:
    """The distinct non-empty values of ``column`` (stripped, in order of first appearance) that
    appear at least ``min_count`` times."""
    counts = count_values(spec, base_dir, {column: (where, column_key)})
    return frequent(counts[column], min_count)


def read_entries(spec: EntrySpec, base_dir: Path, where: str) -> list[tuple[str, str]]:
    """(key, text shown to the model) of every entry of a match reference."""
    src = open_reference(spec.source_spec(), base_dir, where)
    check_column(src, spec.key, where, "reference.key")
    cols = src.column_names
    template = Template.parse(spec.template) if spec.template else None
    if template is not None:
        for name in template.names:
            check_column(src, name[0], where, "reference.template")
    fields = spec.fields
    if fields is not None:
        for f in fields:
            check_column(src, f, where, "reference.fields")
    elif template is None:
        fields = [c for c in cols if c != spec.key]
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for row in src.rows():
        if row.data is None:
            continue
        key = _text(row.data.get(spec.key))
        if not key:
            continue
        if key in seen:
            raise SourceError(
                f"{where}: duplicate key `{key}` in column `{spec.key}` of {src.path.name}; "
                "reference keys must be unique: fix the file or choose another `reference.key`"
            )
        seen.add(key)
        if template is not None:
            text = template.render(row.data).strip()
        else:
            text = "; ".join(
                f"{f}: {_text(row.data.get(f))}" for f in fields or [] if _text(row.data.get(f))
            )
        out.append((key, text))
    if not out:
        raise SourceError(f"{where}: reference file {src.path.name} has no entries with a `{spec.key}`")
    return out


# --- lookup -------------------------------------------------------------------------------


class Index:
    """Entries with an exact lookup and a fuzzy ranking (rapidfuzz WRatio on lowercased text
    stripped of punctuation)."""

    def __init__(
        self, entries: list[str], *, case_sensitive: bool = True, distinct: bool = True
    ) -> None:
        # distinct=False keeps repeats, so positions line up with a caller's own list
        self.entries = list(dict.fromkeys(entries)) if distinct else list(entries)
        self.case_sensitive = case_sensitive
        self._exact: dict[str, str] = {}
        for e in self.entries:
            self._exact.setdefault(self._fold(e), e)
        self._processed = [utils.default_process(e) for e in self.entries]

    def __len__(self) -> int:
        return len(self.entries)

    def _fold(self, s: str) -> str:
        s = s.strip()
        return s if self.case_sensitive else s.casefold()

    def exact(self, value: str) -> str | None:
        """The entry ``value`` already is (after strip; ignoring case unless case-sensitive)."""
        return self._exact.get(self._fold(value))

    def nearest(self, query: str, k: int) -> list[tuple[int, float]]:
        """(entry position, score 0..100) of the ``k`` entries most like ``query``, best first.

        Ties on WRatio (common between close variants: "XM4" and "XM5" against "XM5") are
        broken by plain edit-distance ratio, then by the reference's order."""
        k = min(k, len(self.entries))
        q = utils.default_process(query)
        hits = process.extract(
            q, self._processed, scorer=fuzz.WRatio, processor=None, limit=min(len(self.entries), k + 16),
        )
        ranked = sorted(
            hits, key=lambda h: (-h[1], -fuzz.ratio(q, self._processed[h[2]]), h[2])
        )
        return [(i, s) for _, s, i in ranked[:k]]

    def candidates(self, query: str, k: int) -> list[str]:
        return [self.entries[i] for i, _ in self.nearest(query, k)]


def similarity(a: str, b: str) -> float:
    """0..1: rapidfuzz token_set_ratio of the two texts, lowercased, punctuation removed."""
    return fuzz.token_set_ratio(a, b, processor=utils.default_process) / 100.0


def reference_identity(ref: Any, base_dir: Path) -> dict[str, Any]:
    """A step's reference file as part of its run identity: the SHA-256 of its bytes (nothing
    for an inline list)."""
    if ref is None or isinstance(ref, list) or ref.path is None:
        return {}
    h = hashlib.sha256()
    try:
        with resolve_path(ref.path, base_dir).open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError:
        return {"reference_sha256": "unreadable"}  # binding the step reported it already
    return {"reference_sha256": h.hexdigest()}
