"""``extract``: pull typed fields out of text, in one call or chunk by chunk for long documents.

With ``chunking:`` a row whose rendered input is longer than ``chunking.size`` characters is
split into overlapping chunks (see :mod:`corral.tasks._chunks`), each chunk is asked on its own,
and each field's per-chunk values are merged by the field's ``merge`` rule. A row that fits in
one chunk makes exactly the call it would make without chunking.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
from functools import cached_property
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from corral._delimit import CHUNK_TAG, delimit
from corral._grounding import find
from corral.errors import InvalidOutput
from corral.io.base import Column
from corral.models.base import Request
from corral.tasks._chunks import Chunking, chunk_text, merge_values
from corral.tasks.base import Step, yaml_null

if TYPE_CHECKING:
    from corral._template import Template
    from corral.strategies.base import Strategy

FieldType = Literal["string", "number", "integer", "boolean", "date", "enum", "list"]
ItemType = Literal["string", "number", "integer", "boolean", "date"]
MergeRule = Literal["first", "most_common", "all"]

_JSON_TYPES = {"string": "string", "number": "number", "integer": "integer", "boolean": "boolean"}

#: key of an answer that says which chunk (1-based) each merged value came from
CHUNKS_KEY = "_chunks"
# keys of a part context; a NUL cannot appear in a column name read from a file
_CHUNK = "\x00chunk"
_PART = "\x00part"


def _scalar_schema(kind: str, max_length: int | None = None, rules: dict[str, Any] | None = None) -> dict[str, Any]:
    if kind == "date":
        return {"type": "string", "format": "date"}
    if kind == "string" and max_length is not None:
        return {"type": "string", "maxLength": max_length, **(rules or {})}
    return {"type": _JSON_TYPES[kind], **(rules or {})}


_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def _real_date(v: str) -> bool:
    """Whether ``v`` is a date as YYYY-MM-DD naming a day of the calendar."""
    if not _ISO_DATE.fullmatch(v):
        return False
    try:
        _dt.date.fromisoformat(v)
    except ValueError:
        return False
    return True


def wire_pattern(pattern: str) -> str:
    """A field's ``pattern`` (matched against the whole value) as a JSON-schema pattern (which
    matches anywhere in the value): anchored at both ends, as local grammars also require."""
    if pattern.startswith("^") and pattern.endswith("$") and not pattern.endswith("\\$") and "|" not in pattern:
        return pattern
    core = pattern[1:] if pattern.startswith("^") else pattern
    if core.endswith("$") and not core.endswith("\\$"):
        core = core[:-1]
    return f"^({core})$"


def _drop_defaults(
    model: BaseModel, handler: SerializerFunctionWrapHandler, defaults: dict[str, Any]
) -> dict[str, Any]:
    """Serialize ``model`` without keys added after 0.1 while they hold their default, so a job
    that does not use them keeps its spec hash (and so its run id)."""
    data = handler(model)
    if isinstance(data, dict):
        for key, default in defaults.items():
            if key in data and getattr(model, key) == default:
                del data[key]
    return data


class FieldSpec(BaseModel):
    """One field to extract. A bare type name (``amount: number``) is shorthand for ``{type: number}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: FieldType = Field(default="string", description="string, number, integer, boolean, date, enum or list")
    description: str = Field(default="", description="what the field means; shown to the model")
    nullable: bool = Field(default=False, description="allow null when the text does not say")
    values: list[str] | None = Field(default=None, description="allowed values, for type enum")
    items: ItemType = Field(default="string", description="element type, for type list")
    max_length: int | None = Field(default=None, ge=1, description="longest allowed string, in characters")
    max_items: int | None = Field(default=None, ge=1, description="most elements, for type list")
    merge: MergeRule = Field(
        default="first",
        description="how the values of a chunked document's parts are merged: first, "
        "most_common or all (a list of the distinct values)",
    )
    grounded: bool = Field(
        default=False, description="the value must occur in the step's input (each item, for a list)"
    )
    pattern: str | None = Field(
        default=None, description="a regular expression the whole string must match, for strings"
    )
    minimum: float | None = Field(default=None, description="smallest allowed value, for numbers")
    maximum: float | None = Field(default=None, description="largest allowed value, for numbers")

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as e:
                raise ValueError(f"`pattern` {v!r} is not a regular expression: {e}") from None
        return v

    @model_validator(mode="after")
    def _enum_values(self) -> FieldSpec:
        if self.type == "enum" and not self.values:
            raise ValueError("a field of type enum needs `values: [...]`")
        if self.type != "enum" and self.values is not None:
            raise ValueError("`values` only applies to type enum")
        is_text = self.type == "string" or (self.type == "list" and self.items == "string")
        if self.max_length is not None and not is_text:
            raise ValueError("`max_length` only applies to strings")
        if self.max_items is not None and self.type != "list":
            raise ValueError("`max_items` only applies to type list")
        if self.pattern is not None and not is_text:
            raise ValueError("`pattern` only applies to strings (type string, or a list of strings)")
        is_number = self.item_kind in ("number", "integer")
        for key in ("minimum", "maximum"):
            if getattr(self, key) is not None and not is_number:
                raise ValueError(f"`{key}` only applies to numbers (type number or integer, or a list of them)")
        if self.minimum is not None and self.maximum is not None and self.minimum > self.maximum:
            raise ValueError(f"`minimum` ({self.minimum:g}) is larger than `maximum` ({self.maximum:g})")
        if self.grounded and self.item_kind == "boolean":
            raise ValueError("`grounded` does not apply to booleans: a yes/no is not quoted from the text")
        return self

    @model_serializer(mode="wrap")
    def _serialize(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> Any:
        return _drop_defaults(self, handler, {
            "merge": "first", "max_items": None, "grounded": False, "pattern": None,
            "minimum": None, "maximum": None,
        })

    @property
    def item_kind(self) -> str:
        """The type of the value, or of each item for a list."""
        return self.items if self.type == "list" else self.type

    def _rules(self) -> dict[str, Any]:
        """The value rules of the JSON schema (sent to the model, checked after the answer)."""
        rules: dict[str, Any] = {}
        if self.pattern is not None:
            rules["pattern"] = wire_pattern(self.pattern)
        for key in ("minimum", "maximum"):
            v = getattr(self, key)
            if v is not None:
                rules[key] = int(v) if float(v).is_integer() else v
        return rules

    def problems(self, name: str, value: Any) -> list[str]:
        """What is wrong with ``value`` by this field's rules (pattern, minimum, maximum, a real
        date): readable problems naming the field and the rule; empty when it passes."""
        if value is None:
            return []
        out = []
        for v in value if self.type == "list" and isinstance(value, list) else [value]:
            if v is None:
                continue
            shown = _shown(name, v)
            if self.item_kind == "date" and isinstance(v, str) and not _real_date(v):
                out.append(f"{shown} is not a date as YYYY-MM-DD (a real calendar day)")
            if self.pattern is not None and isinstance(v, str) and not re.fullmatch(self.pattern, v):
                out.append(f"{shown} does not match {self.pattern}")
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                if self.minimum is not None and v < self.minimum:
                    out.append(f"{shown} is below the minimum {self.minimum:g}")
                if self.maximum is not None and v > self.maximum:
                    out.append(f"{shown} is above the maximum {self.maximum:g}")
        return out

    # pydantic's deprecated BaseModel.schema() is a classmethod: this field's schema overrides it
    def schema(self) -> dict[str, Any]:  # type: ignore[override]
        if self.type == "enum":
            vals: list[Any] = list(self.values or [])
            s: dict[str, Any] = {"enum": vals + [None] if self.nullable else vals}
        else:
            base: dict[str, Any]
            if self.type == "list":
                base = {"type": "array", "items": _scalar_schema(self.items, self.max_length, self._rules())}
                if self.max_items is not None:
                    base["maxItems"] = self.max_items
            else:
                base = _scalar_schema(self.type, self.max_length, self._rules())
            s = {"anyOf": [base, {"type": "null"}]} if self.nullable else base
        if self.description:
            s = {**s, "description": self.description}
        return s

    def describe(self) -> str:
        kind = f"one of {', '.join(self.values or [])}" if self.type == "enum" else self.type
        if self.type == "list":
            kind = f"list of {self.items}"
            if self.max_items is not None:
                kind += f", at most {self.max_items}"
        if self.type == "date":
            kind = "date as YYYY-MM-DD"
        if self.pattern is not None:
            kind += f" matching {self.pattern}"
        if self.minimum is not None:
            kind += f", >= {self.minimum:g}"
        if self.maximum is not None:
            kind += f", <= {self.maximum:g}"
        if self.grounded:
            kind += ", copied from the text"
        if self.nullable:
            kind += ", or null if not stated"
        return kind

    def column_type(self) -> str:
        if self.merge == "all":
            return "list"
        return {"enum": "string"}.get(self.type, self.type)


def parse_fields(v: Any) -> Any:
    """``fields:`` shorthand: a bare type name stands for ``{type: NAME}``."""
    if isinstance(v, dict):
        return {k: {"type": t} if isinstance(t, str) else t for k, t in v.items()}
    return v


def check_field_names(v: dict[str, FieldSpec]) -> dict[str, FieldSpec]:
    if not v:
        raise ValueError("give at least one field")
    for name in v:
        if not name.isidentifier():
            raise ValueError(f"field name {name!r} must be letters, digits and _")
        if name == CHUNKS_KEY:
            raise ValueError(f"`{CHUNKS_KEY}` is reserved (it records which chunk a value came from)")
    return v


#: a step's ``fields:``: names checked, a bare type name standing for ``{type: NAME}``
Fields = Annotated[dict[str, FieldSpec], BeforeValidator(parse_fields), AfterValidator(check_field_names)]


def fields_schema(fields: dict[str, FieldSpec]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {name: f.schema() for name, f in fields.items()},
        "required": list(fields),
        "additionalProperties": False,
    }


def describe_fields(fields: dict[str, FieldSpec]) -> str:
    lines = []
    for name, f in fields.items():
        desc = f": {f.description}" if f.description else ""
        lines.append(f"- {name} ({f.describe()}){desc}")
    return "\n".join(lines)


# --- field rules and grounding ------------------------------------------------------------

#: what a step does with a value of a ``grounded`` field that does not occur in its input
OnUngrounded = Annotated[Literal["null", "review", "quarantine"], BeforeValidator(yaml_null)]

ON_UNGROUNDED_HELP = (
    "a `grounded` field's value that does not occur in the input: `review` holds the row for "
    "review with the answer (default), `null` makes the field null (drops the item, in a list) "
    "and goes on, `quarantine` asks again like an unusable answer, then quarantines the row. "
    "Under `strategy: refine` the value is a problem its repair sees"
)

#: JSON-schema keywords of the field rules: sent to the model, checked after the answer
#: (as problems, not as a broken schema)
RULE_KEYWORDS = frozenset({"pattern", "minimum", "maximum", "format"})


def _kind_of(f: FieldSpec) -> str:
    k = f.item_kind
    return "date" if k == "date" else "number" if k in ("number", "integer") else "text"


def _shown(name: str, v: Any) -> str:
    return f"{name} `{v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)}`"


def _ungrounded(fields: dict[str, FieldSpec], answer: dict[str, Any], text: str) -> tuple[
    dict[str, Any], list[tuple[str, Any]]
]:
    """Where each grounded field's value occurs in ``text`` (``{"span": [start, end], "found":
    the text there}``, a list of those for a list field, ``None`` where it does not occur), and
    the (field, value) pairs that do not occur."""
    spans: dict[str, Any] = {}
    missing: list[tuple[str, Any]] = []
    for name, f in fields.items():
        if not f.grounded or answer.get(name) is None:
            continue
        v = answer[name]
        kind = _kind_of(f)
        if f.type == "list" and isinstance(v, list):
            got = []
            for item in v:
                where = None if item is None else _at(find(item, text, kind), text)  # type: ignore[arg-type]
                if where is None and item is not None:
                    missing.append((name, item))
                got.append(where)
            spans[name] = got
        else:
            where = _at(find(v, text, kind), text)  # type: ignore[arg-type]
            if where is None:
                missing.append((name, v))
            spans[name] = where
    return spans, missing


def _at(span: tuple[int, int] | None, text: str) -> dict[str, Any] | None:
    return None if span is None else {"span": list(span), "found": text[span[0]:span[1]]}


def ungrounded_problem(name: str, value: Any) -> str:
    return f"{_shown(name, value)} does not occur in the input"


def ground_fields(
    fields: dict[str, FieldSpec], answer: dict[str, Any], text: str, mode: str
) -> dict[str, Any] | None:
    """Look for each grounded field's value in ``text``; what the trace keeps: ``spans`` (see
    :func:`_ungrounded`) and, with ``mode`` ``null``, the values set to null (``nulled``; the
    answer is changed in place). With ``mode`` ``quarantine`` a value that does not occur raises
    :class:`InvalidOutput`; with ``problem`` it is left for :func:`field_problems`."""
    if not any(f.grounded for f in fields.values()):
        return None
    spans, missing = _ungrounded(fields, answer, text)
    out: dict[str, Any] = {"spans": spans}
    if missing and mode == "quarantine":
        raise InvalidOutput("; ".join(ungrounded_problem(n, v) for n, v in missing))
    if missing and mode == "null":
        nulled: dict[str, Any] = {}
        for name in dict.fromkeys(n for n, _ in missing):
            f, v = fields[name], answer[name]
            if f.type == "list" and isinstance(v, list):
                answer[name] = [x for x, w in zip(v, spans[name]) if w is not None or x is None]
                nulled[name] = [x for x, w in zip(v, spans[name]) if w is None and x is not None]
            else:
                answer[name] = None
                nulled[name] = v
        out["nulled"] = nulled
    return out


def field_problems(fields: dict[str, FieldSpec], answer: dict[str, Any], text: str | None) -> list[str]:
    """The answer's problems by its fields' rules, then its grounded values that do not occur
    in ``text`` (``None``: no field is grounded)."""
    out: list[str] = []
    for name, f in fields.items():
        out += f.problems(name, answer.get(name))
    if text is not None:
        out += [ungrounded_problem(n, v) for n, v in _ungrounded(fields, answer, text)[1]]
    return out


_LOOSE: dict[int, tuple[dict[str, Any], dict[str, Any]]] = {}


def without_rules(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` without the field rules' keywords (:data:`RULE_KEYWORDS`): what an answer is
    parsed against, so a broken rule is a problem (repaired, or held for review), not an
    unusable answer."""
    hit = _LOOSE.get(id(schema))
    if hit is not None and hit[0] is schema:
        return hit[1]
    loose = _strip_rules(schema)
    if len(_LOOSE) > 256:
        _LOOSE.clear()
    _LOOSE[id(schema)] = (schema, loose)
    return loose


def _strip_rules(s: Any) -> Any:
    if not isinstance(s, dict):
        return s
    out = {k: v for k, v in s.items() if k not in RULE_KEYWORDS}
    if isinstance(out.get("properties"), dict):
        out["properties"] = {k: _strip_rules(v) for k, v in out["properties"].items()}
    if "items" in out:
        out["items"] = _strip_rules(out["items"])
    for key in ("anyOf", "oneOf"):
        if isinstance(out.get(key), list):
            out[key] = [_strip_rules(x) for x in out[key]]
    return out


def has_rules(fields: dict[str, FieldSpec] | None) -> bool:
    """Whether any field has a rule checked after the answer (pattern, minimum, maximum, date)."""
    return any(
        f.pattern is not None or f.minimum is not None or f.maximum is not None or f.item_kind == "date"
        for f in (fields or {}).values()
    )


def ungrounded_mode(stages: list[Strategy], on_ungrounded: str) -> str:
    """``problem`` when the step's strategy repairs (refine, in any of its ``stages``) or
    ``on_ungrounded`` is ``review``; else ``null`` or ``quarantine``."""
    if on_ungrounded == "review" or any(st.name == "refine" for st in stages):
        return "problem"
    return on_ungrounded


def check_on_ungrounded(step: Step, fields: dict[str, FieldSpec] | None) -> None:
    if "on_ungrounded" in step.model_fields_set and not any(f.grounded for f in (fields or {}).values()):
        raise ValueError("`on_ungrounded` is set but no field is `grounded: true`")


class FieldRules:
    """The checks of a step whose answer is its ``fields:`` when some have rules (``pattern``,
    ``minimum``/``maximum``, ``type: date``) or are ``grounded``: what the engine asks of such a
    step (``ground``, ``checks_fields``, ``field_problems``, ``validation_schema``). A step gives
    the fields that apply to a row (``_rule_fields``) and the text the answer was taken from
    (``_input_for``); extract and map mix it in."""

    if TYPE_CHECKING:  # what the step it is mixed into has
        fields: dict[str, FieldSpec] | None
        on_ungrounded: str

        @property
        def template(self) -> Template: ...

        def stages(self) -> list[Strategy]: ...

    def _rule_fields(self, context: dict[str, Any] | None = None) -> dict[str, FieldSpec]:
        return self.fields or {}

    def _input_for(self, context: dict[str, Any]) -> str:
        return self.template.render(context)

    @cached_property
    def _grounded(self) -> bool:
        return any(f.grounded for f in self._rule_fields().values())

    @cached_property
    def _has_rules(self) -> bool:
        return has_rules(self._rule_fields())

    @cached_property
    def _mode(self) -> str:
        return ungrounded_mode(self.stages(), self.on_ungrounded)

    def ground(self, answer: dict[str, Any], context: dict[str, Any]) -> dict[str, Any] | None:
        if not self._grounded:
            return None
        return ground_fields(self._rule_fields(context), answer, self._input_for(context), self._mode)

    def checks_fields(self) -> bool:
        return self._has_rules or self._grounded

    def field_problems(self, answer: dict[str, Any], context: dict[str, Any]) -> list[str]:
        if not (self._has_rules or self._grounded):
            return []
        text = self._input_for(context) if self._grounded else None
        return field_problems(self._rule_fields(context), answer, text)

    def validation_schema(self, schema: dict[str, Any]) -> dict[str, Any]:
        return without_rules(schema) if self._has_rules else schema


def _extract_system(source: str, fields: dict[str, FieldSpec], note: str = "") -> str:
    """The system prompt that asks for ``fields`` from ``source`` (``text``, or a chunk)."""
    return (
        f"You extract fields from {source}. Fields:\n" + describe_fields(fields) + note
        + "\nAnswer with JSON only: an object with exactly these keys."
    )


class ExtractStep(FieldRules, Step):
    """Extract typed ``fields`` from each row; each field lands in its own column."""

    task: Literal["extract"] = "extract"
    fields: Fields = Field(description="field name -> type or {type, description, ...}")
    chunking: Chunking | None = Field(
        default=None,
        description="split inputs longer than `size` characters into overlapping chunks, "
        "ask each, and merge the fields (see each field's `merge`)",
    )

    on_ungrounded: OnUngrounded = Field(default="review", description=ON_UNGROUNDED_HELP)

    later_keys: ClassVar[tuple[str, ...]] = ("chunking", "on_ungrounded")

    @field_validator("chunking", mode="before")
    @classmethod
    def _chunking_shorthand(cls, v: Any) -> Any:
        if v is True:
            return {}
        if v is False:
            return None
        return v

    #: small extractions pack (``pack:``); a chunked document is one long row a call
    can_pack: ClassVar[bool] = True

    @model_validator(mode="after")
    def _ungrounded_needs_a_field(self) -> ExtractStep:
        check_on_ungrounded(self, self.fields)
        if self.pack > 1 and self.chunking is not None:
            raise ValueError("`pack:` puts several small rows in one call and `chunking:` splits "
                             "one long row over several; use one or the other")
        return self


    # --- field rules and grounding -------------------------------------------------------

    def _rule_fields(self, context: dict[str, Any] | None = None) -> dict[str, FieldSpec]:
        return self._part_fields if context is not None and _CHUNK in context else self.fields

    def _input_for(self, context: dict[str, Any]) -> str:
        """The rendered input the answer was taken from: the chunk's text, for a chunk."""
        return context[_CHUNK] if _CHUNK in context else self.template.render(context)

    def output_schema(self) -> dict[str, Any]:
        return fields_schema(self.fields)

    def system_prompt(self) -> str:
        return _extract_system("text", self.fields)

    def columns(self) -> list[Column]:
        return [Column(name, f.column_type()) for name, f in self.fields.items()]

    def to_columns(self, value: Any) -> dict[str, Any]:
        return {name: value.get(name) for name in self.fields}

    # --- chunking ----------------------------------------------------------------------

    @cached_property
    def _part_fields(self) -> dict[str, FieldSpec]:
        # a chunk may not mention a field at all: every field may be null in one chunk's answer
        return {n: f.model_copy(update={"nullable": True}) for n, f in self.fields.items()}

    @cached_property
    def _part_schema(self) -> dict[str, Any]:
        return fields_schema(self._part_fields)

    def _part_system(self) -> str:
        return _extract_system(
            "one part of a longer document", self._part_fields,
            "\nUse null for a field this part does not state; other parts are read separately.",
        )

    def split(self, context: dict[str, Any]) -> list[dict[str, Any]]:
        if self.chunking is None:
            return [context]
        text = self.template.render(context)
        if len(text) <= self.chunking.size:
            return [context]
        chunks = chunk_text(text, self.chunking.size, self.chunking.overlap)
        n = len(chunks)
        return [{**context, _CHUNK: c, _PART: (i + 1, n)} for i, c in enumerate(chunks)]

    def render(self, context: dict[str, Any], sample: int = 0) -> Request:
        if _CHUNK not in context:
            return super().render(context, sample)
        i, n = context[_PART]
        system = self.with_instructions(self._part_system(), (CHUNK_TAG,))
        chunk = delimit(context[_CHUNK], CHUNK_TAG, self.template.tags)
        return self.request(system, f"[part {i} of {n}]\n{chunk}", self._part_schema, sample)

    def combine(self, answers: list[dict[str, Any]], parts: list[dict[str, Any]]) -> dict[str, Any]:
        if len(parts) == 1 and _CHUNK not in parts[0]:
            answer = answers[0]
            lists = [n for n, f in self.fields.items() if f.merge == "all"]
            if not lists:
                return answer
            out = dict(answer)
            for name in lists:
                out[name] = merge_values("all", [answer.get(name)], self.fields[name].type == "list")[0]
            return out
        merged: dict[str, Any] = {}
        where: dict[str, Any] = {}
        for name, f in self.fields.items():
            value, came_from = merge_values(
                f.merge, [a.get(name) for a in answers], f.type == "list"
            )
            if value is None and not f.nullable:
                raise InvalidOutput(
                    f"step `{self.name}`: no part of the document gave `{name}`, which is not "
                    "nullable; make it `nullable: true` if documents may leave it out"
                )
            merged[name] = value
            where[name] = came_from
        merged[CHUNKS_KEY] = where
        return merged
