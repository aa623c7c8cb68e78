"""``fake``: a scripted model for tests, yours and ours.

By default it answers instantly, never fails, and derives a schema-valid answer from the row's
text (the prompt's user text, with the tags around the row's values taken out), so the same row
always gets the same answer. Options inject the trouble real providers
cause::

    model:
      name: fake
      latency: 0.05          # seconds per call (or [min, max] for a uniform range)
      error_rate: 0.1        # share of calls that raise a transient error
      truncation_rate: 0.05  # share answered with a cut-off JSON and finish reason "length"
      refusal_rate: 0.02     # share refused
      invalid_rate: 0.01     # share answered with text that is not JSON
      pack_drop_rate: 0.05   # share of a packed request's rows left out of its answer (pack:)
      pack_repeat_rate: 0.05 # share of a packed request's rows answered twice
      price_per_call: 0.001  # USD, recorded in the ledger
      prices: {input: 0.15, output: 0.60}  # or USD per million tokens, from each call's tokens
      seed: 0

``calls`` counts calls in the process (``errors`` those that raised); ``call_log`` (or the ``CORRAL_FAKE_CALL_LOG`` environment
variable) appends each call's request hash to a file, to count calls across processes. From
Python, ``script=callable(request) -> dict | str`` replaces the derived answers.

An embeddings request (``Request.embed``, the ``embed`` task) gets one unit vector per text, of
the request's ``dimensions`` (else the ``dimensions`` option): the sum of a fixed pseudo-random
vector per word of the text (seeded by the word and ``seed``), so the same text always gets the
same vector and texts that share words point the same way.

With ``truth=PATH`` the model becomes a noisy labeler: a simulated classifier of known accuracy,
to benchmark voting and cascades on a labeled data set (:mod:`corral.models._labeler` says how
it draws its answers).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import math
import os
import random
import re
from collections.abc import Callable
from dataclasses import replace
from decimal import Decimal
from typing import Any, ClassVar

from pydantic import Field, field_validator

from corral._answers import FREE_TEXT, answer_for
from corral._delimit import plain
from corral._pack_prompt import answer_rows
from corral.errors import TransientModelError
from corral.models._labeler import Labeler
from corral.models._options import ModelOptions, parse_options
from corral.models._prices import Price
from corral.models.base import Capabilities, Completion, Model, Request, Usage

__all__ = ["FakeModel", "FakeOptions"]


class FakeOptions(ModelOptions):
    """The options of ``fake`` (docs/models.md has them in a table)."""

    latency: float | list[float] = Field(0.0, description="seconds per call, or [min, max] for a uniform range")
    error_rate: float = Field(0.0, description="share of calls that raise a transient error")
    truncation_rate: float = Field(0.0, description="share answered with a cut-off JSON, finish reason length")
    refusal_rate: float = Field(0.0, description="share refused")
    invalid_rate: float = Field(0.0, description="share answered with text that is not JSON")
    price_per_call: float | str | Decimal | None = Field(0, description="USD per call, recorded in the ledger")
    prices: dict[str, Any] | None = Field(
        None, description="USD per million tokens ({input, output}): a call's cost from its tokens, "
        "instead of price_per_call")
    seed: int = Field(0, description="the dice's seed")
    call_log: str | None = Field(
        None, description="a file each call's request hash is appended to (default $CORRAL_FAKE_CALL_LOG)"
    )
    script: Callable[[Request], dict[str, Any] | str] | None = Field(
        None, description="from Python: callable(request) -> dict | str replacing the derived answers"
    )
    truth: str | None = Field(None, description="a labeled CSV, TSV or JSONL file: the noisy labeler")
    truth_text: str = Field("text", description="the truth file's column holding the input text")
    truth_label: str = Field("label", description="the truth file's column holding the true label")
    accuracy: float = Field(0.8, description="the labeler's mean accuracy over rows, 0 < a < 1")
    confusers: int = Field(2, description="wrong answers concentrate on this many labels per row")
    logprobs: bool = Field(False, description="Completion.logprobs = [log q] of the answered label")
    pack_drop_rate: float = Field(0.0, description="share of a packed request's rows left out of its answer")
    pack_repeat_rate: float = Field(0.0, description="share of a packed request's rows answered twice")
    dimensions: int = Field(64, ge=1, le=8192, description="the length of its embeddings (unless the request names one)")

    @field_validator("call_log", "truth", mode="before")
    @classmethod
    def _path(cls, v: Any) -> Any:
        return os.fspath(v) if isinstance(v, os.PathLike) else v

    @field_validator("latency")
    @classmethod
    def _range(cls, v: float | list[float]) -> float | list[float]:
        if isinstance(v, list) and len(v) != 2:
            raise ValueError("latency must be seconds or [min, max]")
        return v

    @field_validator("error_rate", "truncation_rate", "refusal_rate", "invalid_rate", "pack_drop_rate",
                     "pack_repeat_rate")
    @classmethod
    def _share(cls, v: float, info: Any) -> float:
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"{info.field_name} must be between 0 and 1")
        return v

    @field_validator("accuracy", mode="before")
    @classmethod
    def _accuracy(cls, v: Any) -> float:
        try:
            a = float(v)
        except (TypeError, ValueError):
            a = math.nan
        if not 0.0 < a < 1.0:
            raise ValueError(f"accuracy must be a number strictly between 0 and 1, got {v!r}")
        return a

    @field_validator("confusers", mode="before")
    @classmethod
    def _confusers(cls, v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"confusers must be a whole number of at least 1, got {v!r}")
        return v


class FakeModel(Model):
    """The scripted model: instant, never failing, deterministic answers, unless its options
    (:class:`FakeOptions`) inject trouble."""

    capabilities = Capabilities(
        supports_schema=True, supports_embeddings=True, max_concurrency=256, context_window=1_000_000
    )
    #: options naming files, resolved against the job file's folder
    path_options: ClassVar[tuple[str, ...]] = ("truth", "call_log")
    Options = FakeOptions

    def __init__(self, arg: str | None = None, **options: Any) -> None:
        self.id = "fake" if arg is None else f"fake:{arg}"
        opts = parse_options(FakeOptions, self.id, options)
        lat = opts.latency
        self.latency = (float(lat[0]), float(lat[1])) if isinstance(lat, list) else (float(lat), float(lat))
        self.error_rate = opts.error_rate
        self.truncation_rate = opts.truncation_rate
        self.refusal_rate = opts.refusal_rate
        self.invalid_rate = opts.invalid_rate
        self.price = None if opts.price_per_call is None else Decimal(str(opts.price_per_call))
        self.token_price = None if opts.prices is None else Price.parse(opts.prices, where=f"{self.id}: prices")
        self.seed = opts.seed
        self.call_log = opts.call_log or os.environ.get("CORRAL_FAKE_CALL_LOG")
        self.script = opts.script
        self.calls = 0
        self.errors = 0
        self._tries: dict[str, int] = {}
        self.accuracy = opts.accuracy
        self.confusers = opts.confusers
        self.logprobs = opts.logprobs
        self.pack_drop_rate, self.pack_repeat_rate = opts.pack_drop_rate, opts.pack_repeat_rate
        self.dimensions = opts.dimensions
        self.truth = opts.truth
        self._labeler = None if opts.truth is None else Labeler(
            str(opts.truth), opts.truth_text, opts.truth_label, opts.accuracy, opts.confusers,
            opts.seed, self.id,
        )
        if self.logprobs:
            self.capabilities = replace(FakeModel.capabilities, supports_logprobs=True)

    @property
    def labels(self) -> dict[str, Any]:
        """Input text (stripped) -> true label, from the ``truth`` file (empty without one)."""
        return self._labeler.labels if self._labeler is not None else {}

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
        if request.embed:
            n = request.dimensions or self.dimensions
            vectors = [fake_vector(t, n, self.seed) for t in request.texts()]
            return Completion(text="", usage=usage, model=self.id, latency_s=delay, vectors=vectors)
        if r < self.refusal_rate:
            return self._done("I can't help with that.", "refused", usage, delay)
        r -= self.refusal_rate
        packed = None if self.script is not None else self._packed(request, f"{self.seed}:{key}:{tries}")
        answer, q = (packed, None) if packed is not None else self._answer(request)
        lp = [math.log(q)] if self.logprobs and q is not None else None
        text = answer if isinstance(answer, str) else json.dumps(answer)
        if r < self.truncation_rate:
            return self._done(text[: max(1, len(text) // 2)], "length", usage, delay, lp)
        r -= self.truncation_rate
        if r < self.invalid_rate:
            return self._done("Sure! The answer is " + text, "stop", usage, delay, lp)
        return self._done(text, "stop", usage, delay, lp)

    def answer(self, request: Request) -> dict[str, Any] | str:
        """The answer for a request: the script's, a simulated label (``truth``), or one derived
        from the row's text."""
        return self._answer(request)[0]

    def _answer(self, request: Request) -> tuple[dict[str, Any] | str, float | None]:
        """The answer and, for a simulated label, the probability mass the model put on it."""
        if self.script is not None:
            return self.script(request), None
        # the row's text as the row had it: the tags that set it off in the prompt taken out
        user = plain("\n".join(m.content for m in request.messages if m.role == "user"))
        return self._derived(request, request.schema or FREE_TEXT, user)

    def _derived(
        self, request: Request, schema: dict[str, Any], user: str
    ) -> tuple[dict[str, Any] | str, float | None]:
        """The answer derived from a row's text (``user``) for ``schema``: a simulated label
        (``truth``) where the labeler knows the text, else one made from its words."""
        answer = answer_for(schema, user, self.seed)
        if self._labeler is not None and isinstance(answer, dict):
            simulated = self._labeler.label(request, user, schema, answer)
            if simulated is not None:
                return simulated
        return answer, None

    def _packed(self, request: Request, dice: str) -> dict[str, Any] | None:
        """The answer to a packed request (``pack:``), row by row as each would be answered
        alone, with the faults ``pack_drop_rate`` and ``pack_repeat_rate``; ``None`` for a
        request that is not packed."""
        def roll(what: str, rid: int) -> float:
            return random.Random(f"{dice}:{what}:{rid}").random()

        user = "\n".join(m.content for m in request.messages if m.role == "user")
        return answer_rows(request.schema, user, lambda schema, text: self._derived(request, schema, plain(text))[0], drop=lambda i: roll("drop", i) < self.pack_drop_rate,
                           repeat=lambda i: roll("repeat", i) < self.pack_repeat_rate)

    def _done(
        self, text: str, finish: Any, usage: Usage, delay: float, logprobs: list[float] | None = None
    ) -> Completion:
        usage.output_tokens = max(1, len(text) // 4)
        if self.token_price is not None:
            usage.cost = self.token_price.cost(usage.input_tokens, usage.output_tokens)
        return Completion(
            text=text, finish_reason=finish, usage=usage, model=self.id, latency_s=delay, logprobs=logprobs
        )

    def _log(self, key: str) -> None:
        if self.call_log:
            with open(self.call_log, "a", encoding="utf-8") as f:
                f.write(key + "\n")


_WORD = re.compile(r"\w+")


@functools.lru_cache(maxsize=65536)
def _word_vector(word: str, n: int, seed: int) -> tuple[float, ...]:
    digest = hashlib.sha256(f"{seed}:{n}:{word}".encode()).digest()
    rng = random.Random(digest)
    return tuple(rng.gauss(0.0, 1.0) for _ in range(n))


def fake_vector(text: str, n: int, seed: int = 0) -> list[float]:
    """The fake model's embedding of ``text``: a unit vector of length ``n``, the normalised sum
    of one pseudo-random vector per word (a text without words gets its own)."""
    words = _WORD.findall(text.lower()) or [text]
    total = [0.0] * n
    for w in words:
        for i, x in enumerate(_word_vector(w, n, seed)):
            total[i] += x
    norm = math.sqrt(sum(x * x for x in total)) or 1.0
    return [round(x / norm, 6) for x in total]


def _tokens(request: Request) -> int:
    return max(1, sum(len(m.content) for m in request.messages) // 4)
