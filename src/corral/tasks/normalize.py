"""``normalize``: map a messy value to its canonical form.

Three modes, chosen by the keys a step has:

* **free** (no ``reference``): the model rewrites the value itself, as ``to: text|date|number``,
  and says which part of the input it came from (``span``).
* **reference** (``reference:`` a list or a file column): the model picks one entry of the
  reference, or null. Each row gets its own schema, ``{"value": {"enum": [candidates..., null]}}``,
  so no answer outside the list is ever accepted; a long reference is narrowed per row to the
  ``candidates`` entries most like the value (rapidfuzz). A value that already is an entry is
  answered without a call.
* **clean** (``clean: [A, B, ...]``): clean several columns of each row, each against its own
  reference (by default that column's frequent values in the job's own source). Columns already
  canonical are answered without a call; each other column is one call (a part of the row).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PrivateAttr, field_validator, model_validator

from corral._delimit import delimit, tag_for
from corral.errors import SourceError
from corral.io import SourceSpec
from corral.io.base import Column
from corral.models.base import Request
from corral.tasks._reference import (
    Index,
    ReferenceSpec,
    count_values,
    frequent,
    parse_spec,
    read_values,
    reference_identity,
)
from corral.tasks.base import OnEmpty, Step, distinct_strings

Target = Literal["text", "date", "number"]

_KIND = {
    "text": "",
    "date": " as a date YYYY-MM-DD",
    "number": " as a plain number (digits and a decimal point; no currency, units or thousands "
    "separators)",
}
_VALUE_SCHEMA: dict[str, dict[str, Any]] = {
    "text": {"type": "string"},
    "date": {"type": "string", "format": "date"},
    "number": {"type": "number"},
}
_COLUMN_TYPE = {"text": "string", "date": "date", "number": "number"}

_PICK = (
    "You map a messy value to its canonical form. Pick the candidate that means the same as the "
    "value (the same thing spelled, abbreviated or cased differently, or with a typo), or null if "
    "none does.\n"
    'Answer with JSON only: {"value": "<a candidate, exactly as written>"} or {"value": null}'
)
_DEFAULT_MIN_COUNT_OWN_SOURCE = 2


def _text(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (dict, list)):
        return json.dumps(v, ensure_ascii=False)
    return str(v).strip()


_EXAMPLE = "{path: FILE, column: NAME}"


def _entries(v: Any, what: str = "reference") -> Any:
    """A reference as written: a mapping becomes a :class:`ReferenceSpec`; in a list, numbers
    become text and a YAML boolean is refused (quote it)."""
    if not isinstance(v, list):
        return parse_spec(ReferenceSpec, v, what, _EXAMPLE)
    out = []
    for x in v:
        if isinstance(x, bool):
            raise ValueError(
                f"reference entry {x!r} is a YAML boolean; quote it (\"yes\", \"no\", \"true\"...)"
            )
        out.append(str(x) if isinstance(x, (int, float)) else x)
    return out


class NormalizeStep(Step):
    """Map each row's value to a canonical form: free, against a reference, or column by column."""

    task: Literal["normalize"] = "normalize"
    input: str = Field(
        default="", description="template of the value to normalize (with `clean`: optional row context)"
    )
    to: Target | None = Field(
        default=None, description="free mode: the kind of value, text (default), date or number"
    )
    reference: list[str] | ReferenceSpec | None = Field(
        default=None, description="canonical entries: a list, or {path, column, table, min_count}"
    )
    clean: dict[str, list[str] | ReferenceSpec | None] | None = Field(
        default=None, description="columns to clean, each against its own reference"
    )
    candidates: int = Field(
        default=20, ge=1, le=1000, description="most reference entries shown to the model per value"
    )
    case_sensitive: bool = Field(
        default=True, description="whether a value must match an entry's case to count as canonical"
    )
    keep_unmatched: bool | None = Field(
        default=None,
        description="keep a value that fits no entry as it is, instead of null "
        "(default: true with `clean`, else false)",
    )
    on_empty: OnEmpty = Field(
        default="null", description="an empty value: `null` (default: a null answer, without a call), "
        "`quarantine` or `skip` the row, or `ask` (no such check; a blank value still gets null)"
    )

    _source: SourceSpec | None = PrivateAttr(default=None)
    _indexes: dict[str, Index] | None = PrivateAttr(default=None)

    # --- validation ----------------------------------------------------------------------

    @field_validator("reference", mode="before")
    @classmethod
    def _inline_reference(cls, v: Any) -> Any:
        return _entries(v)

    @field_validator("clean", mode="before")
    @classmethod
    def _clean_shorthand(cls, v: Any) -> Any:
        if isinstance(v, list):
            return dict.fromkeys(distinct_strings(v, "`clean` lists column names", "a column is listed twice"))
        if isinstance(v, dict):
            return {k: _entries(x, f"clean.{k}") for k, x in v.items()}
        return v

    @model_validator(mode="after")
    def _mode(self) -> NormalizeStep:
        if self.clean is not None:
            if not self.clean:
                raise ValueError("`clean` lists no column")
            if self.to is not None:
                raise ValueError("`to` is for free mode (no reference); leave it out with `clean`")
            if isinstance(self.reference, list):
                raise ValueError(
                    "with `clean`, `reference` is a file read column by column ({path, min_count});"
                    " give a list to one column instead: `clean: {State: [al, ak]}`"
                )
            if isinstance(self.reference, ReferenceSpec) and self.reference.column:
                raise ValueError(
                    "with `clean`, leave out `reference.column`: each listed column is read from "
                    "the reference (give `column` per column to read another one)"
                )
            for col, ref in self.clean.items():
                if isinstance(ref, list) and not ref:
                    raise ValueError(f"the reference list of column `{col}` is empty")
            return self
        if not self.input:
            raise ValueError(
                "normalize needs `input:` (the value to normalize) or `clean:` (columns to clean)"
            )
        if self.reference is None:
            if self.keep_unmatched is not None:
                raise ValueError("`keep_unmatched` only applies with a `reference` or `clean`")
            return self
        if self.to is not None:
            raise ValueError("`to` is for free mode; with a `reference` the answer is an entry")
        if isinstance(self.reference, list):
            if not self.reference:
                raise ValueError("the reference list is empty")
        else:
            missing = [k for k in ("path", "column") if not getattr(self.reference, k)]
            if missing:
                raise ValueError(
                    f"`reference` needs {' and '.join(f'`{k}`' for k in missing)}: "
                    "{path: FILE, column: COLUMN}, or give a list of entries"
                )
        return self

    @property
    def kind(self) -> Literal["free", "reference", "clean"]:
        if self.clean is not None:
            return "clean"
        return "free" if self.reference is None else "reference"

    @property
    def _keep(self) -> bool:
        if self.keep_unmatched is not None:
            return self.keep_unmatched
        return self.clean is not None

    # --- the reference -------------------------------------------------------------------

    def bind(self, base_dir: Path, source: SourceSpec | None = None) -> None:
        """Resolve reference files against the job's folder (and, with ``clean``, read the
        job's own ``source`` by default), then load them; a missing file or column raises a
        :class:`~corral.errors.SourceError` here, before any row is processed."""
        super().bind(Path(base_dir))
        if source is not None:
            self._source = source
        self._indexes = None
        if self.reference is not None or self.clean is not None:
            self._index_all()

    def identity(self) -> dict[str, Any]:
        return reference_identity(self.reference, self._base_dir)

    def _index_all(self) -> dict[str, Index]:
        if self._indexes is None:
            where = f"step `{self.name}`"
            out: dict[str, Index] = {}
            if self.clean is not None:
                out = self._clean_indexes()
            elif isinstance(self.reference, list):
                out[""] = Index(self.reference, case_sensitive=self.case_sensitive)
            elif self.reference is not None:
                ref = self.reference
                assert ref.column is not None
                values = read_values(
                    ref.source_spec(), self._base_dir, ref.column, where,
                    min_count=ref.min_count or 1,
                )
                if not values:
                    raise SourceError(
                        f"{where}: the reference column `{ref.column}` of {ref.path} has no value"
                        + (f" seen {ref.min_count} times; lower `reference.min_count`"
                           if (ref.min_count or 1) > 1 else "; fill it or point at another column")
                    )
                out[""] = Index(values, case_sensitive=self.case_sensitive)
            self._indexes = out
        return self._indexes

    def _clean_indexes(self) -> dict[str, Index]:
        """Each cleaned column's own reference; every file is read once for all its columns."""
        assert self.clean is not None
        shared = self.reference if isinstance(self.reference, ReferenceSpec) else None
        lists: dict[str, list[str]] = {}
        # per file: (spec, is the job's source) and its columns: col -> (file column, min_count)
        files: dict[str, tuple[SourceSpec, bool, dict[str, tuple[str, int]]]] = {}
        for col, own in self.clean.items():
            if isinstance(own, list):
                lists[col] = own
                continue
            specs = [s for s in (own, shared) if s is not None]
            file = next((s for s in specs if s.path), None)
            min_count = next((s.min_count for s in specs if s.min_count is not None), None)
            column = own.column if own is not None and own.column else col
            if file is not None:
                spec, mine = file.source_spec(), False
            elif self._source is not None:
                spec, mine = self._source, True
                min_count = min_count or _DEFAULT_MIN_COUNT_OWN_SOURCE
            else:
                raise SourceError(
                    f"step `{self.name}` (column `{col}`): the job's source is not known to this "
                    "step, so it cannot be the reference; name the file: "
                    "`reference: {path: FILE, min_count: 2}`"
                )
            key = spec.model_dump_json()
            files.setdefault(key, (spec, mine, {}))[2][col] = (column, min_count or 1)
        values: dict[str, list[str]] = dict(lists)
        for spec, mine, cols in files.values():
            wanted = {}
            for col, (column, _) in cols.items():
                own = self.clean[col]
                fix = f"clean.{col}.column" if isinstance(own, ReferenceSpec) and own.column else "clean"
                wanted[column] = (f"step `{self.name}` (column `{col}`)", fix)
            counts = count_values(spec, self._base_dir, wanted, job_source=mine)
            for col, (column, min_count) in cols.items():
                values[col] = frequent(counts[column], min_count)
        return {
            col: Index(values[col], case_sensitive=self.case_sensitive) for col in self.clean
        }

    # --- the Step hooks --------------------------------------------------------------------

    def output_schema(self) -> dict[str, Any]:
        if self.kind == "free":
            return _free_schema(self.to or "text", None)
        # each row's own schema narrows this to {"enum": [candidates..., null]}
        return _pick_schema(None)

    def system_prompt(self) -> str:
        if self.kind == "free":
            return (
                f"You rewrite a messy value in canonical form{_KIND[self.to or 'text']}. "
                '"value": the canonical form, or null if the text has none; '
                '"span": the exact part of the text it came from.\n'
                'Answer with JSON only: {"value": ..., "span": "..."}'
            )
        return _PICK

    def names_used(self) -> list[tuple[str, ...]]:
        names = super().names_used()
        for col in self.clean or {}:
            if (col,) not in names:
                names.append((col,))
        return names

    def input_names(self) -> list[tuple[str, ...]]:
        # with `clean`, the input is the listed columns; `input:` is only context for them
        if self.kind == "clean":
            return [(c,) for c in self.clean or {}]
        return super().input_names()

    def empty_answer(self) -> dict[str, Any] | None:
        mode = self.kind
        if mode == "free":
            return {"value": None, "span": ""}
        if mode == "reference":
            return {"value": None}
        return {c: None for c in self.clean or {}}

    def columns(self) -> list[Column]:
        mode = self.kind
        if mode == "free":
            kind = self.to or "text"
            return [Column(self.name, _COLUMN_TYPE[kind]), Column(f"{self.name}_span", "string")]
        if mode == "reference":
            return [Column(self.name, "string")]
        return [Column(f"{self.name}_{c}", "string") for c in self.clean or {}]

    def shortcut(self, context: dict[str, Any]) -> tuple[dict[str, Any], str] | None:
        mode = self.kind
        if mode == "free":
            if not self._template.render(context).strip():
                return {"value": None, "span": ""}, "empty value"
            return None
        if mode == "reference":
            value = self._template.render(context).strip()
            if not value:
                return {"value": None}, "empty value"
            hit = self._index_all()[""].exact(value)
            return ({"value": hit}, "already canonical") if hit is not None else None
        known, todo, why = self._triage(context)
        if todo:
            return None
        return known, why

    def split(self, context: dict[str, Any]) -> list[dict[str, Any]]:
        if self.kind != "clean":
            return [context]
        known, todo, _ = self._triage(context)
        row = self._template.prompt(context, self.data_tags()).strip() if self.input else ""  # as the model sees it
        return [{"column": c, "value": v, "row": row, "known": known} for c, v in todo]

    def _triage(
        self, context: dict[str, Any]
    ) -> tuple[dict[str, Any], list[tuple[str, str]], str]:
        """Columns answered without a call ({column: value}), those that need one, and why."""
        indexes = self._index_all()
        known: dict[str, Any] = {}
        todo: list[tuple[str, str]] = []
        canonical = empty = unknown = 0
        for col in self.clean or {}:
            value = _text(context.get(col))
            if not value:
                known[col] = None
                empty += 1
                continue
            index = indexes[col]
            hit = index.exact(value)
            if hit is not None:
                known[col] = hit
                canonical += 1
            elif not len(index):
                known[col] = value if self._keep else None
                unknown += 1
            else:
                todo.append((col, value))
        why = ", ".join(
            f"{n} {what}" for n, what in (
                (canonical, "already canonical"), (empty, "empty"),
                (unknown, "without reference values"),
            ) if n
        )
        return known, todo, why

    def data_tags(self) -> tuple[str, ...]:
        cleaned = tuple(tag_for(c) for c in self.clean or {})
        return tuple(dict.fromkeys((*self._template.tags, *cleaned)))

    def render(self, context: dict[str, Any], sample: int = 0) -> Request:
        # the row's text goes in tags; the candidates are the reference's, shown as they are
        system = self.with_instructions(self.system_prompt())
        schema: dict[str, Any]
        if self.kind == "free":
            user = self._template.prompt(context)
            schema = _free_schema(self.to or "text", len(self._template.render(context).strip()))
        else:
            if self.kind == "clean":
                col, value = context["column"], context["value"]
                index = self._index_all()[col]
                head = (f"Row: {context['row']}\n" if context.get("row") else "") + f"Column: {col}\n"
                shown = delimit(value, tag_for(col), self.data_tags())
            else:
                value = self._template.render(context).strip()
                index = self._index_all()[""]
                head = ""
                shown = self._template.prompt(context).strip()
            found = index.candidates(value, self.candidates)
            user = head + f"Value: {shown}\nCandidates:\n" + "\n".join(f"- {c}" for c in found)
            schema = _pick_schema(found)
        return self.request(system, user, schema, sample)

    def combine(self, answers: list[dict[str, Any]], parts: list[dict[str, Any]]) -> dict[str, Any]:
        mode = self.kind
        if mode == "free":
            return answers[0]
        if mode == "reference":
            answer = answers[0]
            if answer.get("value") is None and self._keep:
                return {"value": self._template.render(parts[0]).strip() or None}
            return answer
        out = dict(parts[0]["known"]) if parts else {}
        for answer, part in zip(answers, parts):
            v = answer.get("value")
            out[part["column"]] = part["value"] if v is None and self._keep else v
        return {c: out.get(c) for c in self.clean or {}}

    def value(self, answer: dict[str, Any]) -> Any:
        if self.kind == "reference":
            return answer.get("value")
        return answer

    def to_columns(self, value: Any) -> dict[str, Any]:
        mode = self.kind
        if mode == "free":
            return {self.name: value.get("value"), f"{self.name}_span": value.get("span")}
        if mode == "reference":
            return {self.name: value}
        return {f"{self.name}_{c}": value.get(c) for c in self.clean or {}}


def _free_schema(kind: str, size: int | None) -> dict[str, Any]:
    """The free-mode answer; with the input's length, bounded per row: the span is part of the
    input, so never longer, and a text value at most twice as long (plus 20) — a small model
    cannot then ramble on to the token limit."""
    value = dict(_VALUE_SCHEMA[kind])
    span: dict[str, Any] = {"type": "string"}
    if size is not None:
        span["maxLength"] = max(size, 1)
        if kind == "text":
            value["maxLength"] = 2 * size + 20
    return {
        "type": "object",
        "properties": {"value": {"anyOf": [value, {"type": "null"}]}, "span": span},
        "required": ["value", "span"],
        "additionalProperties": False,
    }


def _pick_schema(found: list[str] | None) -> dict[str, Any]:
    value: dict[str, Any] = (
        {"type": ["string", "null"]} if found is None else {"enum": [*found, None]}
    )
    return {
        "type": "object",
        "properties": {"value": value},
        "required": ["value"],
        "additionalProperties": False,
    }
