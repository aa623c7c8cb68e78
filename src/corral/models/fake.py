"""``fake``: a scripted model for tests, yours and ours.

By default it answers instantly, never fails, and derives a schema-valid answer from the row's
text, so the same row always gets the same answer. Options inject the trouble real providers
cause::

    model:
      name: fake
      latency: 0.05          # seconds per call (or [min, max] for a uniform range)
      error_rate: 0.1        # share of calls that raise a transient error
      truncation_rate: 0.05  # share answered with a cut-off JSON and finish reason "length"
      refusal_rate: 0.02     # share refused
      invalid_rate: 0.01     # share answered with text that is not JSON
      price_per_call: 0.001  # USD, recorded in the ledger
      seed: 0

``calls`` counts calls in the process (``errors`` those that raised); ``call_log`` (or the ``CORRAL_FAKE_CALL_LOG`` environment
variable) appends each call's request hash to a file, to count calls across processes. From
Python, ``script=callable(request) -> dict | str`` replaces the derived answers.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import re
from collections.abc import Callable
from decimal import Decimal
from typing import Any, ClassVar

from corral.errors import TransientModelError
from corral.models.base import Capabilities, Completion, Model, Request, Usage

_WORD = re.compile(r"[A-Za-z][A-Za-z'-]{2,}")


class FakeModel(Model):
    capabilities: ClassVar[Capabilities] = Capabilities(
        supports_schema=True, max_concurrency=256, context_window=1_000_000
    )

    def __init__(
        self,
        arg: str | None = None,
        *,
        latency: float | list[float] = 0.0,
        error_rate: float = 0.0,
        truncation_rate: float = 0.0,
        refusal_rate: float = 0.0,
        invalid_rate: float = 0.0,
        price_per_call: float | str | Decimal | None = 0,
        seed: int = 0,
        call_log: str | None = None,
        script: Callable[[Request], dict[str, Any] | str] | None = None,
    ) -> None:
        self.id = "fake" if arg is None else f"fake:{arg}"
        if isinstance(latency, (list, tuple)):
            if len(latency) != 2:
                raise ValueError("latency must be seconds or [min, max]")
            self.latency = (float(latency[0]), float(latency[1]))
        else:
            self.latency = (float(latency), float(latency))
        for name, rate in (
            ("error_rate", error_rate),
            ("truncation_rate", truncation_rate),
            ("refusal_rate", refusal_rate),
            ("invalid_rate", invalid_rate),
        ):
            if not 0.0 <= float(rate) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
        self.error_rate = float(error_rate)
        self.truncation_rate = float(truncation_rate)
        self.refusal_rate = float(refusal_rate)
        self.invalid_rate = float(invalid_rate)
        self.price = None if price_per_call is None else Decimal(str(price_per_call))
        self.seed = int(seed)
        self.call_log = call_log or os.environ.get("CORRAL_FAKE_CALL_LOG")
        self.script = script
        self.calls = 0
        self.errors = 0
        self._tries: dict[str, int] = {}

    async def complete(self, request: Request) -> Completion:
        self.calls += 1
        key = request.cache_key(self.id)
        tries = self._tries[key] = self._tries.get(key, 0) + 1  # a retry of a call rolls anew
        roll = random.Random(f"{self.seed}:{key}:{tries}")
        lo, hi = self.latency
        delay = lo if lo == hi else roll.uniform(lo, hi)
        if delay > 0:
            await asyncio.sleep(delay)
        self._log(key)
        r = roll.random()
        usage = Usage(input_tokens=_tokens(request), cost=self.price)
        if r < self.error_rate:
            self.errors += 1
            raise TransientModelError("fake model: injected transient error")
        r -= self.error_rate
        if r < self.refusal_rate:
            return self._done("I can't help with that.", "refused", usage, delay)
        r -= self.refusal_rate
        answer = self.answer(request)
        text = answer if isinstance(answer, str) else json.dumps(answer)
        if r < self.truncation_rate:
            return self._done(text[: max(1, len(text) // 2)], "length", usage, delay)
        r -= self.truncation_rate
        if r < self.invalid_rate:
            return self._done("Sure! The answer is " + text, "stop", usage, delay)
        return self._done(text, "stop", usage, delay)

    def answer(self, request: Request) -> dict[str, Any] | str:
        """The answer for a request: the script's, or one derived from the row's text."""
        if self.script is not None:
            return self.script(request)
        user = "\n".join(m.content for m in request.messages if m.role == "user")
        rng = random.Random(f"{self.seed}:{hashlib.sha256(user.encode()).hexdigest()}")
        words = _WORD.findall(user) or ["value"]
        schema = request.schema or {"type": "object", "properties": {"text": {"type": "string"}}}
        return _generate(schema, rng, words)

    def _done(self, text: str, finish: Any, usage: Usage, delay: float) -> Completion:
        usage.output_tokens = max(1, len(text) // 4)
        return Completion(text=text, finish_reason=finish, usage=usage, model=self.id, latency_s=delay)

    def _log(self, key: str) -> None:
        if self.call_log:
            with open(self.call_log, "a", encoding="utf-8") as f:
                f.write(key + "\n")


def _tokens(request: Request) -> int:
    return max(1, sum(len(m.content) for m in request.messages) // 4)


def _generate(schema: dict[str, Any], rng: random.Random, words: list[str]) -> Any:
    if "enum" in schema:
        values = [v for v in schema["enum"] if v is not None] or [None]
        if None in schema["enum"] and rng.random() < 0.2:
            return None
        return rng.choice(values)
    if "anyOf" in schema:
        options = schema["anyOf"]
        non_null = [o for o in options if o.get("type") != "null"]
        if len(non_null) < len(options) and rng.random() < 0.2:
            return None
        return _generate(rng.choice(non_null or options), rng, words)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        props = schema.get("properties", {})
        return {k: _generate(v, rng, words) for k, v in props.items()}
    if kind == "array":
        items = schema.get("items", {"type": "string"})
        n = rng.randint(1, 2)
        if "enum" in items:
            pool = [v for v in items["enum"] if v is not None]
            return rng.sample(pool, min(n, len(pool)))
        out = [_generate(items, rng, words) for _ in range(n)]
        if schema.get("uniqueItems"):
            out = list(dict.fromkeys(json.dumps(x) for x in out))
            out = [json.loads(x) for x in out]
        return out
    if kind == "string":
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
