"""What the test server reads from a request's text, and how it measures and cuts an answer:
shared by its OpenAI and Anthropic APIs."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from corral._answers import WORD

__all__ = ["_Answer", "_cut", "_schema_in", "_text_of", "_thought", "_tokens"]

_SCHEMA_IN_PROMPT = re.compile(r"schema:\s*(?=\{)", re.I)


@dataclass
class _Answer:
    """One generated model answer, before it is put in a provider's shape."""

    value: Any  # JSON value, or a str for raw text
    text: str
    finish: str  # stop | length | refusal | content_filter | context
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    reasoning_tokens: int
    #: the model's reasoning text, when the request asked for reasoning
    reasoning_text: str | None = None


def _thought(user_text: str) -> str:
    """The reasoning text answered to a request that asks for reasoning (from its words)."""
    words = list(dict.fromkeys(WORD.findall(user_text)))[:6]
    about = ", ".join(words) if words else "nothing in particular"
    return (f"The request mentions {about}. Weighing it step by step, the answer is the JSON "
            "value the schema asks for.")


def _tokens(text: str) -> int:
    return max(1, len(text) // 4)


def _text_of(content: Any) -> str:
    """The text of a message's content: a string, or its blocks' texts one per line (a tool
    result's nested content included; blocks without text are left out)."""
    if isinstance(content, list):
        return "\n".join(t for block in content if (t := _block_text(block)) is not None)
    return "" if content is None else str(content)


def _block_text(block: Any) -> str | None:
    if isinstance(block, str):
        return block
    if isinstance(block, dict):
        if isinstance(block.get("text"), str):
            return str(block["text"])
        if "content" in block:
            return _text_of(block["content"])
    return None


def _schema_in(texts: list[str]) -> dict[str, Any] | None:
    """A JSON schema written in the prompt after ``schema:`` (the last one wins)."""
    decoder = json.JSONDecoder()
    found = None
    for text in texts:
        for m in _SCHEMA_IN_PROMPT.finditer(text):
            try:
                obj, _ = decoder.raw_decode(text, m.end())
            except ValueError:
                continue
            if isinstance(obj, dict) and ("type" in obj or "properties" in obj):
                found = obj
    return found


def _cut(value: Any) -> Any:
    """The part of an object answer produced before a cut-off (its first half of keys)."""
    if isinstance(value, dict):
        keys = list(value)[: len(value) // 2]
        return {k: value[k] for k in keys}
    return None
