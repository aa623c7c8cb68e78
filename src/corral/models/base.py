"""The Model extension point: one abstract async method, capabilities as data."""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, ClassVar, Literal

import orjson

from corral.models._options import ModelOptions, options_signature

FinishReason = Literal["stop", "length", "refused", "content_filter", "error"]

#: Bumped whenever the shape of what goes into a request hash changes, so old cache entries
#: are never mistaken for new ones. A change of the messages themselves (a prompt's wording, row
#: values sent in tags) changes the hash without a bump: such a request was never asked before.
REQUEST_HASH_VERSION = "v1"


@dataclass(frozen=True, slots=True)
class Message:
    role: Literal["system", "user", "assistant"]
    content: str

    def to_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True, slots=True)
class Request:
    """What a task asks a model for.

    ``sample`` distinguishes deliberate repeats of the same prompt (retries after a bad answer,
    votes): it is part of the cache key, so a retry is a new call while a rerun of the same
    attempt is a replay.
    """

    messages: tuple[Message, ...]
    schema: dict[str, Any] | None = None
    max_tokens: int = 256
    temperature: float = 0.0
    sample: int = 0
    #: the provider's reasoning setting (``low``, ``medium``, ``high``) or ``None`` for none
    reasoning_effort: str | None = None
    #: a scoring request: instead of generating freely, the model gives the log-probability of
    #: each of these answers (``Completion.choice_logprobs``); ``None`` for an ordinary request
    choices: tuple[str, ...] | None = None
    #: with ``choices``: the calibration's offset of each choice (its content-free log-probability,
    #: zeros without calibration), which lets a model that searches the choices (``local``) stop
    #: once the calibrated answer is settled; ``None`` asks for every choice's exact score
    choice_offsets: tuple[float, ...] | None = None
    #: with ``choices``: the start of the answer the choices follow (``Category:``), on a model
    #: that continues an answer it is given (``local``); ``None`` for the model's default
    answer_prefix: str | None = None
    #: an embeddings request: each user message is one text to embed, and the answer is one
    #: vector per text (``Completion.vectors``), in order, instead of generated text
    embed: bool = False
    #: with ``embed``: the vectors' length, on models that shorten theirs (OpenAI's
    #: ``text-embedding-3-*``); ``None`` for the model's own
    dimensions: int | None = None

    def texts(self) -> list[str]:
        """The texts of an embeddings request, in order (its user messages)."""
        return [m.content for m in self.messages if m.role == "user"]

    def cache_key(self, model_id: str) -> str:
        """Versioned content hash of everything that determines the response."""
        payload: dict[str, Any] = {
            "model": model_id,
            "messages": [m.to_dict() for m in self.messages],
            "schema": self.schema,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "sample": self.sample,
        }
        if self.reasoning_effort is not None:  # only when set, so earlier hashes stay valid
            payload["reasoning_effort"] = self.reasoning_effort
        if self.choices is not None:  # likewise: requests without choices keep their hashes
            payload["choices"] = list(self.choices)
        if self.choice_offsets is not None:
            payload["choice_offsets"] = [round(x, 6) for x in self.choice_offsets]
        if self.answer_prefix is not None:
            payload["answer_prefix"] = self.answer_prefix
        if self.embed:  # only on embeddings requests: every other request keeps its hash
            payload["embed"] = True
            payload["dimensions"] = self.dimensions
        blob = orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)
        return REQUEST_HASH_VERSION + ":" + hashlib.sha256(blob).hexdigest()

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Request:
        """The request :meth:`to_dict` wrote (keys it does not know are ignored)."""
        return cls(
            messages=tuple(Message(m["role"], m["content"]) for m in d["messages"]),
            schema=d.get("schema"), max_tokens=d.get("max_tokens", 256),
            temperature=d.get("temperature", 0.0), sample=d.get("sample", 0),
            reasoning_effort=d.get("reasoning_effort"),
            choices=tuple(d["choices"]) if d.get("choices") is not None else None,
            choice_offsets=tuple(d["choice_offsets"]) if d.get("choice_offsets") is not None else None,
            answer_prefix=d.get("answer_prefix"),
            embed=bool(d.get("embed", False)), dimensions=d.get("dimensions"),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "messages": [m.to_dict() for m in self.messages],
            "schema": self.schema,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "sample": self.sample,
        }
        if self.reasoning_effort is not None:
            out["reasoning_effort"] = self.reasoning_effort
        if self.choices is not None:
            out["choices"] = list(self.choices)
        if self.choice_offsets is not None:
            out["choice_offsets"] = list(self.choice_offsets)
        if self.answer_prefix is not None:
            out["answer_prefix"] = self.answer_prefix
        if self.embed:
            out["embed"] = True
            out["dimensions"] = self.dimensions
        return out


@dataclass(slots=True)
class Usage:
    """Token usage of one call. ``cost`` is ``None`` when the price is unknown (never 0)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    reasoning_tokens: int = 0
    cost: Decimal | None = None
    #: input tokens written to the provider's prompt cache (Anthropic; priced at its cache-write price)
    cache_write_tokens: int = 0


@dataclass(slots=True)
class Completion:
    """A model's answer to one request."""

    text: str
    finish_reason: FinishReason = "stop"
    usage: Usage = field(default_factory=Usage)
    model: str = ""
    latency_s: float = 0.0
    logprobs: list[float] | None = None
    #: the model's own reasoning text, when the provider returns it (kept in the trace only)
    reasoning: str | None = None
    #: the answer to a scoring request (``Request.choices``): each choice's log-probability as
    #: the whole answer (exact on a model with ``exact_scoring``, estimated from the first
    #: token's ``top_logprobs`` on an OpenAI-compatible server)
    choice_logprobs: dict[str, float] | None = None
    #: the answer to an embeddings request (``Request.embed``): one vector per text, in order
    vectors: list[list[float]] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "text": self.text,
            "reasoning": self.reasoning,
            "finish_reason": self.finish_reason,
            "model": self.model,
            "latency_s": self.latency_s,
            "logprobs": self.logprobs,
            "usage": {
                "input_tokens": self.usage.input_tokens,
                "output_tokens": self.usage.output_tokens,
                "cached_input_tokens": self.usage.cached_input_tokens,
                "reasoning_tokens": self.usage.reasoning_tokens,
                "cost": None if self.usage.cost is None else str(self.usage.cost),
            },
        }
        if self.usage.cache_write_tokens:  # only where a prompt cache was written
            out["usage"]["cache_write_tokens"] = self.usage.cache_write_tokens
        if self.choice_logprobs is not None:  # only on scoring answers: others keep their shape
            out["choice_logprobs"] = self.choice_logprobs
        if self.vectors is not None:  # only on embeddings answers (the vectors are kept once, here)
            out["vectors"] = self.vectors
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Completion:
        u = d.get("usage") or {}
        cost = u.get("cost")
        return cls(
            text=d["text"],
            finish_reason=d.get("finish_reason", "stop"),
            model=d.get("model", ""),
            latency_s=d.get("latency_s", 0.0),
            logprobs=d.get("logprobs"),
            reasoning=d.get("reasoning"),
            choice_logprobs=d.get("choice_logprobs"),
            vectors=d.get("vectors"),
            usage=Usage(
                input_tokens=u.get("input_tokens", 0),
                output_tokens=u.get("output_tokens", 0),
                cached_input_tokens=u.get("cached_input_tokens", 0),
                reasoning_tokens=u.get("reasoning_tokens", 0),
                cost=None if cost is None else Decimal(cost),
                cache_write_tokens=u.get("cache_write_tokens", 0),
            ),
        )


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a model can do, as data the engine and strategies read."""

    supports_schema: bool = False
    supports_logprobs: bool = False
    supports_batch: bool = False
    #: answers scoring requests (``Request.choices``) with ``Completion.choice_logprobs``
    supports_scoring: bool = False
    #: scoring is the model's own (the choices' tokens evaluated: every one, or as far as the
    #: calibrated answer needs under ``Request.choice_offsets``), not estimated from
    #: ``top_logprobs``: ``scoring: auto`` picks labels by likelihood, calibrated, only on such a model
    exact_scoring: bool = False
    #: answers embeddings requests (``Request.embed``) with ``Completion.vectors``
    supports_embeddings: bool = False
    #: how many calls the engine may have in flight at once (1 for an in-process model)
    max_concurrency: int = 64
    context_window: int | None = None


class Model(ABC):
    """A language model. Subclasses implement :meth:`complete` and nothing else is required.

    Register a subclass under the ``corral.models`` entry-point group to make it available by
    name (``model: NAME`` in a job, ``--model NAME`` on the command line). The class is built
    with ``cls(arg, **options)`` where ``arg`` is what follows ``NAME:`` (or ``None``) and
    ``options`` are the other keys of a ``model:`` mapping.

    A model with ``capabilities.supports_scoring`` also answers scoring requests (``choices``
    set, ``schema`` ``None``): ``Completion.choice_logprobs`` holds each choice's log-probability
    as the whole answer, and ``text`` the most likely choice. A model with
    ``capabilities.supports_embeddings`` also answers embeddings requests (``embed`` set):
    ``Completion.vectors`` holds one vector per text (``Request.texts()``), in order, and
    ``text`` is empty.
    """

    #: stable identifier used in cache keys and the ledger, e.g. ``fake`` or ``local:smollm2``
    id: str = "model"
    #: what the model can do; a class default that an instance may replace from its options
    capabilities: Capabilities = Capabilities()
    #: the model's options as a :class:`corral.models._options.ModelOptions` subclass, or
    #: ``None`` for a model whose constructor declares its own keywords. A class that sets it
    #: gets the signature its options make (see :func:`~corral.models._options.options_signature`)
    Options: ClassVar[type[ModelOptions] | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        options = cls.__dict__.get("Options")
        if options is not None:
            setattr(cls, "__signature__", options_signature(options))  # noqa: B010 - not a plain attribute to mypy

    @abstractmethod
    async def complete(self, request: Request) -> Completion:
        """Answer one request. Raise :class:`corral.errors.ModelError` subclasses on failure."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release resources (threads, connections). Called once when a run ends."""


# --- provider batch APIs ---------------------------------------------------------------------

from typing import Protocol, runtime_checkable  # noqa: E402 - kept with the batch interface


@dataclass(slots=True)
class BatchItem:
    """The outcome of one request of a provider batch, matched to the caller's ``custom_id``."""

    custom_id: str
    #: ``None`` when the item failed
    completion: Completion | None
    #: why it failed: ``"errored: ..."`` (the provider's message), ``"expired"``, ``"cancelled"``
    #: (or ``"failed: ..."`` when the provider rejected the whole batch)
    error: str | None = None


@dataclass(slots=True)
class BatchStatus:
    """Where a provider batch stands."""

    id: str
    #: ``"in_progress"`` or ``"ended"`` (results can be fetched: completed, expired, cancelled or
    #: failed as a whole)
    state: str
    #: the provider's own counts, e.g. ``{"total", "completed", "failed"}`` (OpenAI) or
    #: ``{"processing", "succeeded", "errored", "canceled", "expired"}`` (Anthropic)
    counts: dict[str, int]
    #: the provider's status text (``validating``, ``finalizing``, ``expired``...)
    detail: str = ""


@runtime_checkable
class BatchAPI(Protocol):
    """A model that can also answer requests through its provider's batch API (cheaper, slower).

    ``custom_id`` values are the caller's and must be unique within a batch; the adapter maps them
    to what the provider accepts and back.
    """

    #: (max requests per batch, max bytes per batch input)
    batch_limits: tuple[int, int]

    async def submit_batch(self, items: list[tuple[str, Request]]) -> str:
        """Submit ``(custom_id, request)`` pairs as one batch; returns the provider's batch id."""
        ...

    async def poll_batch(self, batch_id: str) -> BatchStatus:
        """The batch's state now."""
        ...

    async def fetch_batch(self, batch_id: str) -> list[BatchItem]:
        """Every item of an ended batch, matched by ``custom_id``, in any order."""
        ...
