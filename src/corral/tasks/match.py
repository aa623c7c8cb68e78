"""``match``: decide whether two records are the same entity.

* **pair** (``left:`` and ``right:``): both records are in the row; the answer is
  ``{"same": bool, "reason": str}``. With ``block: {threshold: T}``, a pair whose cheap similarity
  (rapidfuzz token_set_ratio / 100) is below T is answered "not the same" without a call.
* **reference** (``left:`` and ``reference:``): the row's record is looked up among the entries of
  a reference file; the ``candidates`` entries most like it are shown and the model answers the
  matching entry's key or null, ``{"match": {"enum": [keys..., null]}, "reason": str}`` — a schema
  built for each row, so no key outside the candidates is ever accepted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from corral._template import Template
from corral.io import SourceSpec
from corral.io.base import Column
from corral.models.base import Request
from corral.tasks._reference import (
    EntrySpec,
    Index,
    parse_spec,
    read_entries,
    reference_identity,
    similarity,
)
from corral.tasks.base import OnEmpty, Step

_REASON = {"type": "string", "maxLength": 100}

_PAIR = (
    "You decide whether records A and B describe the same real-world entity (the same product, "
    "company or person). Differences in spelling, word order or format do not matter; a "
    "different model, size, version or quantity does.\n"
    'Answer with JSON only: {"same": true or false, "reason": "<a few words>"}'
)
_PICK = (
    "You find the entry that describes the same real-world entity as the record (the same "
    "product, company or person), or null if none does.\n"
    'Answer with JSON only: {"match": "<the id of the entry>" or null, "reason": "<a few words>"}'
)


class BlockSpec(BaseModel):
    """Skip the model for records too dissimilar to be a match."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    threshold: float = Field(
        ge=0.0, le=1.0, description="similarity (0..1) below which a pair is not the same"
    )


def _check(v: str | None) -> str | None:
    if v is not None:
        try:
            Template.parse(v)
        except ValueError as e:
            raise ValueError(f"bad template: {e}") from None
    return v


class MatchStep(Step):
    """Decide whether the row's ``left`` record is its ``right`` record, or which ``reference``
    entry it is."""

    task: Literal["match"] = "match"
    input: str = Field(default="", description="not used: match reads `left` and `right` (or `reference`)")
    left: str = Field(description="template of the row's record")
    right: str | None = Field(default=None, description="template of the record to compare it with")
    reference: list[str] | EntrySpec | None = Field(
        default=None, description="entries to find the record among: {path, key, fields or template}"
    )
    candidates: int = Field(default=5, ge=1, le=100, description="reference entries shown per row")
    block: BlockSpec | None = Field(
        default=None, description="{threshold: T}: answer 'no match' without a call below similarity T"
    )
    on_empty: OnEmpty = Field(
        default="null", description="a row whose records are empty: `null` (default: no match, without a "
        "call), `quarantine` or `skip` the row, or `ask` (pair mode asks; reference mode answers null)"
    )

    _left: Template = PrivateAttr()
    _right: Template | None = PrivateAttr(default=None)
    _entries: list[tuple[str, str]] | None = PrivateAttr(default=None)
    _index: Index | None = PrivateAttr(default=None)

    @field_validator("left", "right")
    @classmethod
    def _templates(cls, v: str | None) -> str | None:
        return _check(v)

    @field_validator("reference", mode="before")
    @classmethod
    def _inline(cls, v: Any) -> Any:
        if isinstance(v, list):
            return [str(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else x for x in v]
        return parse_spec(EntrySpec, v, "reference", "{path: FILE, key: COLUMN, fields: [A, B]}")

    @field_validator("block", mode="before")
    @classmethod
    def _threshold(cls, v: Any) -> Any:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            v = {"threshold": v}  # `block: 0.3` is short for `block: {threshold: 0.3}`
        return parse_spec(BlockSpec, v, "block", "{threshold: 0.3}", lists=False)

    @model_validator(mode="after")
    def _mode(self) -> MatchStep:
        if self.input:
            raise ValueError(
                "match does not use `input`: give the record as `left:` and the other as "
                "`right:` (or a `reference:` to find it in)"
            )
        if (self.right is None) == (self.reference is None):
            raise ValueError(
                "match needs exactly one of `right:` (compare two records of a row) and "
                "`reference:` (find the record among a file's entries)"
            )
        if isinstance(self.reference, list):
            if not self.reference:
                raise ValueError("the reference list is empty")
            if len(set(self.reference)) != len(self.reference):
                raise ValueError("the reference list has an entry twice")
        if isinstance(self.reference, EntrySpec) and self.reference.fields and self.reference.template:
            raise ValueError("give `reference.fields` or `reference.template`, not both")
        return self

    def model_post_init(self, __context: Any) -> None:
        super().model_post_init(__context)
        self._left = Template.parse(self.left)
        if self.right is not None:
            self._right = Template.parse(self.right)

    @property
    def kind(self) -> Literal["pair", "reference"]:
        return "pair" if self.right is not None else "reference"

    # --- the reference -------------------------------------------------------------------

    def bind(self, base_dir: Path, source: SourceSpec | None = None) -> None:
        """Resolve the reference file against the job's folder and load it; a missing file or
        column raises a :class:`~corral.errors.SourceError` here, before any row is processed."""
        super().bind(Path(base_dir))
        self._entries = self._index = None
        if self.reference is not None:
            self._load()

    def identity(self) -> dict[str, Any]:
        return reference_identity(self.reference, self._base_dir)

    def _load(self) -> tuple[list[tuple[str, str]], Index]:
        if self._entries is None or self._index is None:
            ref = self.reference
            if isinstance(ref, list):
                entries = [(e, e) for e in ref]
            else:
                assert ref is not None
                entries = read_entries(ref, self._base_dir, f"step `{self.name}`")
            self._entries = entries
            self._index = Index([t for _, t in entries], distinct=False)
        return self._entries, self._index

    def _retrieve(self, record: str) -> tuple[list[tuple[str, str]], float]:
        """The candidate entries for a record, best first, and the best similarity seen."""
        entries, index = self._load()
        found = [entries[i] for i, _ in index.nearest(record, self.candidates)]
        if self.block is None:
            return found, 1.0
        sims = [similarity(record, text) for _, text in found]
        kept = [e for e, s in zip(found, sims) if s >= self.block.threshold]
        return kept, max(sims, default=0.0)

    # --- the Step hooks --------------------------------------------------------------------

    def output_schema(self) -> dict[str, Any]:
        if self.kind == "pair":
            return _schema("same", {"type": "boolean"})
        return _schema("match", {"type": ["string", "null"]})

    def system_prompt(self) -> str:
        return _PAIR if self.kind == "pair" else _PICK

    def names_used(self) -> list[tuple[str, ...]]:
        names = super().names_used()
        return names + [n for n in self.input_names() if n not in names]

    def input_names(self) -> list[tuple[str, ...]]:
        names: list[tuple[str, ...]] = []
        for t in (self._left, self._right):
            if t is not None:
                names += [n for n in t.names if n not in names]
        return names

    def empty_answer(self) -> dict[str, Any] | None:
        if self.kind == "pair":
            return {"same": None, "reason": "empty records"}
        return {"match": None, "reason": "empty record"}

    def columns(self) -> list[Column]:
        kind = "boolean" if self.kind == "pair" else "string"
        return [Column(self.name, kind), Column(f"{self.name}_reason", "string")]

    def shortcut(self, context: dict[str, Any]) -> tuple[dict[str, Any], str] | None:
        left = self._left.render(context).strip()
        if self.kind == "pair":
            if self.block is None:
                return None
            assert self._right is not None
            s = similarity(left, self._right.render(context).strip())
            if s >= self.block.threshold:
                return None
            reason = f"blocked: similarity {s:.2f} < {self.block.threshold:g}"
            return {"same": False, "reason": reason}, reason
        if not left:
            return {"match": None, "reason": "empty record"}, "empty record"
        found, best = self._retrieve(left)
        if found:
            return None
        assert self.block is not None
        reason = f"blocked: best similarity {best:.2f} < {self.block.threshold:g}"
        return {"match": None, "reason": reason}, reason

    def data_tags(self) -> tuple[str, ...]:
        right = self._right.tags if self._right is not None else ()
        return tuple(dict.fromkeys((*self._left.tags, *right)))

    def render(self, context: dict[str, Any], sample: int = 0) -> Request:
        # the row's records go in tags (the reference file's entries are the job's own, shown as they are)
        system = self.with_instructions(self.system_prompt())
        tags = self.data_tags()
        left = self._left.prompt(context, tags).strip()
        if self.kind == "pair":
            assert self._right is not None
            user = f"A: {left}\nB: {self._right.prompt(context, tags).strip()}"
            schema = self._schema
        else:
            found, _ = self._retrieve(self._left.render(context).strip())
            lines = "\n".join(f"- {key}: {text}" if key != text else f"- {key}" for key, text in found)
            user = f"Record: {left}\nEntries:\n{lines}"
            schema = _schema("match", {"enum": [k for k, _ in found] + [None]})
        return self.request(system, user, schema, sample)

    def to_columns(self, value: Any) -> dict[str, Any]:
        field = "same" if self.kind == "pair" else "match"
        return {self.name: value.get(field), f"{self.name}_reason": value.get("reason")}


def _schema(name: str, value: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {name: value, "reason": _REASON},
        "required": [name, "reason"],
        "additionalProperties": False,
    }
