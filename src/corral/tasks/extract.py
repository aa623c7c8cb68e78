"""``extract``: pull typed fields out of text."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from corral.io.base import Column
from corral.tasks.base import Task

FieldType = Literal["string", "number", "integer", "boolean", "date", "enum", "list"]
ItemType = Literal["string", "number", "integer", "boolean", "date"]

_JSON_TYPES = {"string": "string", "number": "number", "integer": "integer", "boolean": "boolean"}


def _scalar_schema(kind: str, max_length: int | None = None) -> dict[str, Any]:
    if kind == "date":
        return {"type": "string", "format": "date"}
    if kind == "string" and max_length is not None:
        return {"type": "string", "maxLength": max_length}
    return {"type": _JSON_TYPES[kind]}


class FieldSpec(BaseModel):
    """One field to extract. A bare type name (``amount: number``) is shorthand for ``{type: number}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: FieldType = Field("string", description="string, number, integer, boolean, date, enum or list")
    description: str = Field("", description="what the field means; shown to the model")
    nullable: bool = Field(False, description="allow null when the text does not say")
    values: list[str] | None = Field(None, description="allowed values, for type enum")
    items: ItemType = Field("string", description="element type, for type list")
    max_length: int | None = Field(None, ge=1, description="longest allowed string, in characters")

    @model_validator(mode="after")
    def _enum_values(self) -> FieldSpec:
        if self.type == "enum" and not self.values:
            raise ValueError("a field of type enum needs `values: [...]`")
        if self.type != "enum" and self.values is not None:
            raise ValueError("`values` only applies to type enum")
        is_text = self.type == "string" or (self.type == "list" and self.items == "string")
        if self.max_length is not None and not is_text:
            raise ValueError("`max_length` only applies to strings")
        return self

    def schema(self) -> dict[str, Any]:
        if self.type == "enum":
            vals: list[Any] = list(self.values or [])
            s: dict[str, Any] = {"enum": vals + [None] if self.nullable else vals}
        else:
            if self.type == "list":
                base = {"type": "array", "items": _scalar_schema(self.items, self.max_length)}
            else:
                base = _scalar_schema(self.type, self.max_length)
            s = {"anyOf": [base, {"type": "null"}]} if self.nullable else base
        if self.description:
            s = {**s, "description": self.description}
        return s

    def describe(self) -> str:
        kind = f"one of {', '.join(self.values or [])}" if self.type == "enum" else self.type
        if self.type == "list":
            kind = f"list of {self.items}"
        if self.type == "date":
            kind = "date as YYYY-MM-DD"
        if self.nullable:
            kind += ", or null if not stated"
        return kind


class ExtractStep(Task):
    """Extract typed ``fields`` from each row; each field lands in its own column."""

    task: Literal["extract"] = "extract"
    fields: dict[str, FieldSpec] = Field(description="field name -> type or {type, description, ...}")

    @field_validator("fields", mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        if isinstance(v, dict):
            return {k: {"type": t} if isinstance(t, str) else t for k, t in v.items()}
        return v

    @field_validator("fields")
    @classmethod
    def _names(cls, v: dict[str, FieldSpec]) -> dict[str, FieldSpec]:
        if not v:
            raise ValueError("give at least one field")
        for name in v:
            if not name.isidentifier():
                raise ValueError(f"field name {name!r} must be letters, digits and _")
        return v

    def output_schema(self) -> dict[str, Any]:
        return {
            "type": "object",
            "properties": {name: f.schema() for name, f in self.fields.items()},
            "required": list(self.fields),
            "additionalProperties": False,
        }

    def system_prompt(self) -> str:
        lines = []
        for name, f in self.fields.items():
            desc = f": {f.description}" if f.description else ""
            lines.append(f"- {name} ({f.describe()}){desc}")
        return (
            "You extract fields from text. Fields:\n"
            + "\n".join(lines)
            + "\nAnswer with JSON only: an object with exactly these keys."
        )

    def columns(self) -> list[Column]:
        kinds = {"enum": "string"}
        return [Column(name, kinds.get(f.type, f.type)) for name, f in self.fields.items()]

    def to_columns(self, value: Any) -> dict[str, Any]:
        return {name: value.get(name) for name in self.fields}
