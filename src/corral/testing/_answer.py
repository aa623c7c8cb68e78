"""The simulated model behind the test server's OpenAI and Anthropic APIs: what it reads from a
request's text (its schema, its words) and what it answers, with the answer faults (refusals,
truncation, malformed JSON, a full context window) drawn from the request's dice."""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from typing import Any

from corral._answers import WORD, answer_for
from corral._delimit import plain
from corral._pack_prompt import answer_rows
from corral.testing._http import ANTHROPIC, OPENAI, ServerCore

__all__ = ["SimulatedModel", "_Answer", "_cut", "_schema_in", "_text_of", "_thought", "_tokens"]

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
    #: prompt tokens written to the provider's prompt cache (Anthropic, ``prompt_cache``)
    cache_write_tokens: int = 0


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


class SimulatedModel(ServerCore):
    """The answers both APIs put in their own shapes (override :meth:`_generate` to change them)."""

    def _generate(self, provider: str, body: dict[str, Any], schema: dict[str, Any] | None,
                  prompt_text: str, user_text: str, max_tokens: int, dice: random.Random,
                  think: bool = False) -> _Answer:
        prompt_tokens = _tokens(prompt_text)
        packed = answer_rows(schema, user_text, lambda s, t: answer_for(s, plain(t), self.seed, read_patterns=False))
        user_text = plain(user_text)  # the row's text, without the tags that set it off
        cached, written = int(prompt_tokens * float(self.cache_ratio)), 0
        if self.prompt_cache:  # the provider's own prompt cache, by the request's prefix
            if provider == OPENAI:
                cached = self._prompt_cache.openai(prompt_text)
            else:
                cached, written = self._prompt_cache.anthropic(body)
            # the row's part of the prompt is never cached
            cached, written = min(cached, prompt_tokens - 1), min(written, prompt_tokens - 1)
        reasoning = int(self.reasoning_tokens)
        thought: str | None = None
        if think:  # the reasoning comes first and counts against max_tokens
            thought = _thought(user_text)
            reasoning = reasoning or _tokens(thought)
            max_tokens = max(1, max_tokens - reasoning)
        r = dice.random()
        if self.answer is not None:
            value = self.answer(body, provider)
        elif packed is not None:  # several rows in one request (`pack:`): each answered alone
            value = packed
        else:
            value = answer_for(schema, user_text, self.seed, read_patterns=False)
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)

        def done(text: str, finish: str, value: Any = value, out: int | None = None) -> _Answer:
            completion = (_tokens(text) if out is None else out) + reasoning
            return _Answer(value, text, finish, prompt_tokens, completion, cached, reasoning, thought, written)

        if r < self.refusal_rate:
            return done("I'm sorry, but I can't help with that request.", "refusal", None)
        r -= self.refusal_rate
        if provider == OPENAI:
            if r < self.content_filter_rate:
                return done("", "content_filter", None, 0)
            r -= self.content_filter_rate
        if r < self.truncation_rate:
            cut = text[: max(1, len(text) // 2)]
            return done(cut, "length", _cut(value), max(1, min(max_tokens, _tokens(cut))))
        r -= self.truncation_rate
        if r < self.malformed_rate:
            return done("Sure! Here is the answer you asked for: " + text, "malformed", None)
        r -= self.malformed_rate
        if provider == ANTHROPIC and r < self.context_exceeded_rate:
            cut = text[: max(1, len(text) // 3)]
            return done(cut, "context", _cut(value))
        if _tokens(text) > max_tokens:  # a real limit: the answer does not fit
            cut = text[: max(1, max_tokens * 4)]
            return done(cut, "length", _cut(value), max_tokens)
        return done(text, "stop")
