"""Compiled JSON-schema validators for answers, kept per schema (a step's schema is checked
for every row), with the short answer texts already known to pass each."""

from __future__ import annotations

import json
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker

__all__ = ["validator"]

_VALIDATORS: dict[str, tuple[Draft202012Validator, set[str]]] = {}


_BY_ID: dict[int, tuple[dict[str, Any], tuple[Draft202012Validator, set[str]]]] = {}


def validator(schema: dict[str, Any]) -> tuple[Draft202012Validator, set[str]]:
    """A compiled validator for ``schema``, and the set of short answer texts known to pass it."""
    hit = _BY_ID.get(id(schema))
    if hit is not None and hit[0] is schema:  # the same schema object as last time (a step's own)
        return hit[1]
    key = json.dumps(schema, sort_keys=True)
    v = _VALIDATORS.get(key)
    if v is None:
        if len(_VALIDATORS) > 4096:
            _VALIDATORS.clear()
        v = _VALIDATORS[key] = (Draft202012Validator(schema, format_checker=FormatChecker()), set())
    if len(_BY_ID) > 256:
        _BY_ID.clear()
    _BY_ID[id(schema)] = (schema, v)
    return v
