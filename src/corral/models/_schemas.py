"""What each provider's structured outputs accept of a JSON schema, and the schema written in
a prompt for servers without them. The task checks every answer against the full schema, so what
a provider cannot take is left out on the wire only."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["add_note", "output_schema", "schema_note", "strict_ok", "strict_schema", "with_schema_in_prompt"]

_SCHEMA_NOTE = "Answer with a JSON object that matches this JSON schema:\n"


def add_note(system: str, note: str) -> str:
    """A system prompt (maybe empty) with ``note`` as its last paragraph."""
    return (system.rstrip() + "\n\n" + note) if system else note


def schema_note(schema: dict[str, Any], system: str = "") -> str:
    """``system`` with the schema written after it."""
    return add_note(system, _SCHEMA_NOTE + json.dumps(schema, ensure_ascii=False))


def with_schema_in_prompt(messages: list[dict[str, str]], schema: dict[str, Any]) -> list[dict[str, str]]:
    """Chat messages with the schema written in the (first) system message, or in a new one."""
    out = [dict(m) for m in messages]
    for m in out:
        if m["role"] == "system":
            m["content"] = schema_note(schema, m["content"])
            return out
    return [{"role": "system", "content": schema_note(schema)}, *out]


# --- OpenAI: strict structured outputs --------------------------------------------------------

#: JSON-schema keywords that rule out OpenAI's strict structured outputs
_NOT_STRICT = {
    "allOf", "not", "if", "then", "else", "oneOf", "patternProperties", "dependentRequired",
    "dependentSchemas", "unevaluatedProperties", "propertyNames", "contains",
}

#: validation-only keywords left out of a strict schema on the wire (the task still checks them)
_STRIP_STRICT = {"uniqueItems", "minLength", "maxLength", "minProperties", "maxProperties"}

def strict_ok(s: Any, root: bool = True) -> bool:
    """Whether OpenAI's strict mode accepts the schema as it is (every object closed and
    every property required, no unsupported keyword)."""
    if not isinstance(s, dict) or _NOT_STRICT & set(s):
        return False
    kind = s.get("type")
    if root and kind != "object":
        return False
    if kind == "object" or "properties" in s:
        props = s.get("properties") or {}
        if s.get("additionalProperties") is not False or set(s.get("required") or []) != set(props):
            return False
        return all(strict_ok(v, False) for v in props.values())
    if kind == "array" or "items" in s:
        return strict_ok(s.get("items"), False)
    if "anyOf" in s:
        return all(strict_ok(v, False) for v in s["anyOf"])
    return True

def strict_schema(s: Any) -> Any:
    """A copy of the schema for strict mode: an ``enum`` without ``type`` gets one, and
    validation-only keywords strict mode may refuse are left out (answers are still checked
    against the full schema by the task)."""
    if isinstance(s, list):
        return [strict_schema(x) for x in s]
    if not isinstance(s, dict):
        return s
    out = {k: strict_schema(v) for k, v in s.items() if k not in _STRIP_STRICT}
    if "enum" in out and "type" not in out:
        names = {"str": "string", "int": "integer", "float": "number", "bool": "boolean", "NoneType": "null"}
        kinds = sorted({names.get(type(v).__name__, "string") for v in out["enum"]})
        if "integer" in kinds and "number" in kinds:
            kinds.remove("integer")
        out["type"] = kinds[0] if len(kinds) == 1 else kinds
    return out


# --- Anthropic: output_config.format ----------------------------------------------------------

#: keywords Anthropic's structured outputs refuse (``For 'number' type, property 'minimum' is not
#: supported``): left out of ``output_config.format``, still checked on every answer
_NOT_IN_OUTPUT_FORMAT = frozenset({
    "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf",
    "minLength", "maxLength", "maxItems", "uniqueItems", "minProperties", "maxProperties",
})


def output_schema(s: Any) -> Any:
    """A copy of a schema without the keywords structured outputs refuse."""
    if isinstance(s, list):
        return [output_schema(x) for x in s]
    if not isinstance(s, dict):
        return s
    return {k: output_schema(v) for k, v in s.items() if k not in _NOT_IN_OUTPUT_FORMAT}
