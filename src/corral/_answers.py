"""Answers derived from a prompt: a value that satisfies a JSON schema, made of the prompt's own
words, the same for the same text. The ``fake`` model and the test provider server
(:mod:`corral.testing`) both answer this way, so a test's expectations hold against either."""

from __future__ import annotations

import hashlib
import json
import random
import re
from typing import Any

__all__ = ["WORD", "answer_for", "generate"]

#: the words an answer is made of
WORD = re.compile(r"[A-Za-z][A-Za-z'-]{2,}")
#: the schema of an answer when the request has none
FREE_TEXT: dict[str, Any] = {"type": "object", "properties": {"text": {"type": "string"}}}


def answer_for(schema: dict[str, Any] | None, user_text: str, seed: int, *, read_patterns: bool = True) -> Any:
    """The answer to ``user_text`` (the request's user messages): :func:`generate` with dice
    seeded by ``seed`` and the text. ``read_patterns``: a string field with a ``pattern`` takes
    the first match in the text, as a model that reads its input would."""
    rng = random.Random(f"{seed}:{hashlib.sha256(user_text.encode()).hexdigest()}")
    words = WORD.findall(user_text) or ["value"]
    return generate(schema or FREE_TEXT, rng, words, user_text if read_patterns else "")


def _in_text(pattern: str, text: str) -> str | None:
    """The first piece of ``text`` a field's ``pattern`` matches (its anchors dropped): what a
    model that reads the input would answer for a constrained field."""
    core = pattern[1:] if pattern.startswith("^") else pattern
    core = core[:-1] if core.endswith("$") and not core.endswith("\\$") else core
    try:
        m = re.search(core, text)
    except re.error:
        return None
    return m.group(0) if m else None


def generate(schema: dict[str, Any], rng: random.Random, words: list[str], text: str = "") -> Any:
    """A value that satisfies ``schema``, from the prompt's ``words``; a string field with a
    ``pattern`` takes the first match in the prompt's ``text`` (null when it has none and the
    field is nullable)."""
    if "enum" in schema:
        values = [v for v in schema["enum"] if v is not None] or [None]
        if None in schema["enum"] and rng.random() < 0.2:
            return None
        return rng.choice(values)
    if "anyOf" in schema:
        options = schema["anyOf"]
        non_null = [o for o in options if o.get("type") != "null"]
        patterned = [o for o in non_null if "pattern" in o]
        if len(non_null) < len(options) and patterned and all(
            _in_text(o["pattern"], text) is None for o in patterned
        ):
            return None  # nothing in the input has the field's shape
        if len(non_null) < len(options) and rng.random() < 0.2:
            return None
        return generate(rng.choice(non_null or options), rng, words, text)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        props = schema.get("properties", {})
        return {k: generate(v, rng, words, text) for k, v in props.items()}
    if kind == "array":
        items = schema.get("items", {"type": "string"})
        n = rng.randint(1, 2)
        if "enum" in items:
            pool = [v for v in items["enum"] if v is not None]
            return rng.sample(pool, min(n, len(pool)))
        out = [generate(items, rng, words, text) for _ in range(n)]
        if schema.get("uniqueItems"):
            out = list(dict.fromkeys(json.dumps(x) for x in out))
            out = [json.loads(x) for x in out]
        return out
    if kind == "string":
        if "pattern" in schema:
            found = _in_text(schema["pattern"], text)
            if found is not None:
                return found
        if schema.get("format") == "date":
            return f"20{rng.randint(20, 26)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        word = rng.choice(words)
        limit = schema.get("maxLength")
        return word[:limit] if limit else word
    if kind == "integer":
        return rng.randint(1, 100)
    if kind == "number":
        return round(rng.uniform(1, 500), 2)
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "null":
        return None
    return rng.choice(words)
