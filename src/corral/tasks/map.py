"""``map``: a free prompt with a declared output, to enrich each row with new values.

``instructions`` say what to produce; the output is declared either as ``fields`` (the same
field specs as ``extract``) or as ``schema``, a JSON schema of an object. Each field (each
top-level property of the schema) lands in its own column.
"""

from __future__ import annotations

import json
import warnings
from functools import cached_property
from typing import Annotated, Any, ClassVar, Literal

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from pydantic import BeforeValidator, Field, field_validator, model_validator

from corral.io.base import Column, json_type
from corral.models.base import Request
from corral.tasks.base import Step
from corral.tasks.extract import (
    CHUNKS_KEY,
    ON_UNGROUNDED_HELP,
    FieldRules,
    FieldSpec,
    OnUngrounded,
    check_field_names,
    check_on_ungrounded,
    describe_fields,
    fields_schema,
    parse_fields,
)

_SCALAR_COLUMNS = {"string": "string", "number": "number", "integer": "integer", "boolean": "boolean"}


def check_object_schema(v: Any) -> dict[str, Any]:
    """A JSON schema of an object with at least one property, or a one-line ValueError."""
    if not isinstance(v, dict):
        raise ValueError(
            "`schema` must be a JSON schema mapping like "
            "{type: object, properties: {summary: {type: string}}}"
        )
    if v.get("type") != "object":
        got = "no `type`" if "type" not in v else f"type {json.dumps(v['type'])}"
        raise ValueError(f"`schema` must be an object schema (`type: object`), it has {got}")
    props = v.get("properties")
    if not isinstance(props, dict) or not props:
        raise ValueError("`schema` needs `properties:` naming at least one output field")
    for name, sub in props.items():
        if not isinstance(name, str) or not name.strip():
            raise ValueError("`schema` property names must be non-empty text")
        if name == CHUNKS_KEY:
            raise ValueError(f"`{CHUNKS_KEY}` is a reserved name")
        if not isinstance(sub, (dict, bool)):
            raise ValueError(f"`schema` property `{name}` must be a schema mapping like {{type: string}}")
    try:
        Draft202012Validator.check_schema(v)
    except SchemaError as e:
        where = "/".join(str(p) for p in e.path) or "the top level"
        raise ValueError(f"`schema` is not a valid JSON schema at {where}: {e.message}") from None
    return v


def _types(s: Any) -> list[str]:
    if not isinstance(s, dict):
        return []
    t = s.get("type")
    kinds = [t] if isinstance(t, str) else [x for x in t if isinstance(x, str)] if isinstance(t, list) else []
    for key in ("anyOf", "oneOf"):
        for alt in s.get(key) or []:
            kinds += _types(alt)
    if "enum" in s:
        kinds += ["null" if x is None else json_type(x) for x in s["enum"]]
    if "const" in s:
        kinds.append(json_type(s["const"]))
    return list(dict.fromkeys(kinds))


def property_column_type(s: Any) -> str:
    """The sink column type of one top-level property of a raw schema."""
    kinds = [k for k in _types(s) if k != "null"]
    if len(kinds) != 1:
        return "number" if set(kinds) == {"integer", "number"} else "any"
    kind = kinds[0]
    if kind == "array":
        return "list"
    if kind == "string" and isinstance(s, dict) and s.get("format") == "date":
        return "date"
    return _SCALAR_COLUMNS.get(kind, "any")


def describe_property(s: Any) -> str:
    """A compact description of one property's schema, for the prompt."""
    if not isinstance(s, dict):
        return "any value"
    kinds = _types(s)
    nullable = "null" in kinds
    if "enum" in s:
        kind = "one of " + ", ".join(json.dumps(x) if not isinstance(x, str) else x for x in s["enum"] if x is not None)
    else:
        real = [k for k in kinds if k != "null"]
        if real == ["array"] or (not real and s.get("type") == "array"):
            items = s.get("items")
            kind = f"list of {describe_property(items)}" if isinstance(items, dict) else "list"
        elif real == ["object"]:
            kind = "object " + json.dumps(s.get("properties", {}), separators=(",", ":"))
        elif real == ["string"] and s.get("format") == "date":
            kind = "date as YYYY-MM-DD"
        else:
            kind = " or ".join(real) or "any value"
        limits = []
        if "maxLength" in s:
            limits.append(f"at most {s['maxLength']} characters")
        if "minimum" in s:
            limits.append(f">= {s['minimum']}")
        if "maximum" in s:
            limits.append(f"<= {s['maximum']}")
        if "maxItems" in s:
            limits.append(f"at most {s['maxItems']} items")
        if limits:
            kind += ", " + ", ".join(limits)
    if nullable:
        kind += ", or null"
    return kind


# `schema` is the natural key name in a job file; pydantic warns that it shadows the deprecated
# BaseModel.schema() classmethod, which nothing here uses.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message='Field name "schema"', category=UserWarning)

    class MapStep(FieldRules, Step):
        """Produce new values for each row: ``instructions`` say what, ``fields`` or ``schema``
        declare the shape. One column per field (per top-level property of ``schema``)."""

        task: Literal["map"] = "map"
        instructions: str = Field(description="what to produce from the input; shown first in the prompt")
        fields: Annotated[dict[str, FieldSpec] | None, BeforeValidator(parse_fields)] = Field(
            default=None, description="field name -> type or {type, description, ...}, as in extract"
        )
        schema: dict[str, Any] | None = Field(  # type: ignore[assignment]
            default=None, description="a JSON schema of an object, instead of `fields`"
        )
        on_ungrounded: OnUngrounded = Field(default="review", description=ON_UNGROUNDED_HELP)

        later_keys: ClassVar[tuple[str, ...]] = ("on_ungrounded",)

        @field_validator("instructions")
        @classmethod
        def _say_what(cls, v: str) -> str:
            if not v.strip():
                raise ValueError("`instructions` must say what to produce")
            return v

        @field_validator("fields")
        @classmethod
        def _names(cls, v: dict[str, FieldSpec] | None) -> dict[str, FieldSpec] | None:
            if v is None:
                return v
            check_field_names(v)
            for name, f in v.items():
                if f.merge != "first":
                    raise ValueError(f"field `{name}`: `merge` only applies to chunked extract steps")
            return v

        @field_validator("schema", mode="before")
        @classmethod
        def _object_schema(cls, v: Any) -> Any:
            return v if v is None else check_object_schema(v)

        @model_validator(mode="after")
        def _one_output(self) -> MapStep:
            if (self.fields is None) == (self.schema is None):
                raise ValueError(
                    "declare the output with exactly one of `fields:` (like extract) or `schema:` "
                    "(a JSON schema of an object)"
                )
            check_on_ungrounded(self, self.fields)
            return self

        def output_schema(self) -> dict[str, Any]:
            if self.fields is not None:
                return fields_schema(self.fields)
            assert self.schema is not None
            return self.schema

        def _properties(self) -> dict[str, Any]:
            if self.fields is not None:
                return {n: f for n, f in self.fields.items()}
            assert self.schema is not None
            return dict(self.schema["properties"])

        def system_prompt(self) -> str:
            if self.fields is not None:
                listing = describe_fields(self.fields)
            else:
                assert self.schema is not None
                required = set(self.schema.get("required") or [])
                lines = []
                for name, sub in self.schema["properties"].items():
                    desc = sub.get("description") if isinstance(sub, dict) else None
                    opt = "" if name in required else ", optional"
                    lines.append(f"- {name} ({describe_property(sub)}{opt})" + (f": {desc}" if desc else ""))
                listing = "\n".join(lines)
            return (
                self.instructions.strip()
                + "\n\nAnswer with JSON only: an object with these keys:\n"
                + listing
            )

        def render(self, context: dict[str, Any], sample: int = 0) -> Request:
            # instructions come first, inside the system prompt: not appended again after it
            return self.request(self._map_system, self._tpl.prompt(context), self._schema, sample)

        @cached_property
        def _map_system(self) -> str:
            note = self._data_note
            return self.system_prompt() + ("\n\n" + note if note else "")

        def columns(self) -> list[Column]:
            if self.fields is not None:
                return [Column(n, f.column_type()) for n, f in self.fields.items()]
            return [Column(n, property_column_type(s)) for n, s in self._properties().items()]

        def to_columns(self, value: Any) -> dict[str, Any]:
            return {name: value.get(name) for name in self._properties()}
