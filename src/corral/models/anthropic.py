"""``anthropic:MODEL``: Claude through the official SDK's Messages API.

Structured output by a forced tool: the request's schema becomes the ``input_schema`` of one tool
(``tool_choice: {type: tool, name}``), and the tool call's input is the answer. With
``structured: json_schema`` the schema goes in ``output_config.format`` instead; with
``structured: prompt`` it is written in the system prompt.

The SDK's own retries are off (the engine owns retries); every SDK error is translated at the
hosted models' shared boundary (:mod:`corral.models._hosted`), with Anthropic's own cases (402 or
"credit balance", 413 or "too long") added here. The latest ``anthropic-ratelimit-*`` headers
are kept in :attr:`AnthropicModel.rate_limits` for the engine.

The model also speaks the Message Batches API (:class:`corral.models.base.BatchAPI`): each
request's ``params`` are exactly what :meth:`AnthropicModel.complete` sends; results are parsed as
online answers are and priced with the batch discount of the price table. Anthropic accepts
``custom_id`` values matching ``^[a-zA-Z0-9_-]{1,64}$`` only: other ids (such as Corral's request
hashes ``v1:<64 hex>``) are encoded reversibly on the way in and decoded on the way out.

A request's ``reasoning_effort`` turns on extended thinking: ``thinking: {type: enabled,
budget_tokens}`` with the budget of :data:`THINKING_BUDGETS`, ``max_tokens`` raised by the budget
(the answer keeps the request's own ``max_tokens``), no temperature, and, since Anthropic refuses
a forced tool with thinking, ``tool_choice: {type: auto}`` with the system prompt naming the tool
that gives the answer. The text of the ``thinking`` blocks becomes :attr:`Completion.reasoning`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import inspect
import json
import re
import time
from typing import Any

from pydantic import Field, field_validator

from corral.errors import ContextWindowExceeded, ModelError, PermanentModelError, QuotaExceeded
from corral.models._hosted import HostedModel, HostedOptions, batch_counts, pool_options, retryable
from corral.models._options import parse_options
from corral.models._schemas import add_note, output_schema, schema_note
from corral.models.base import (
    BatchItem,
    BatchStatus,
    Capabilities,
    Completion,
    FinishReason,
    Request,
    Usage,
)

__all__ = ["AnthropicModel", "AnthropicOptions", "ContextWindowExceeded"]

_INSTALL_HINT = "make install-hosted, or pip install -e '.[anthropic]', in the Corral checkout"
DEFAULT_BASE_URL = "https://api.anthropic.com"
_TOO_LONG = (
    "the prompt and the answer do not fit in the model's context window; shorten the input "
    "or lower the step's max_tokens"
)
#: the Message Batches API's limits: requests per batch, bytes of the create request
BATCH_LIMITS = (100_000, 256 * 1024 * 1024)
#: a longer HTTP timeout for sending a batch and streaming its results (up to 256 MB)
_FILE_TIMEOUT = 600.0
#: the ``custom_id`` values Anthropic accepts
_CUSTOM_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")
#: ``PREFIX:HEX`` ids (Corral's request hashes are ``v1:<64 hex>``), encoded compactly
_HEX_ID = re.compile(r"([^:]{0,255}):((?:[0-9a-f]{2})+)", re.S)
#: ids the adapter encoded start with this (a caller's id that does too is encoded as well)
_ENCODED = "__"
#: extended thinking's ``budget_tokens`` for each reasoning effort (Anthropic's minimum is 1024)
THINKING_BUDGETS = {"low": 1024, "medium": 4096, "high": 16384}
_TOOL_NOTE = "Give your answer by calling the `{name}` tool: its input is the answer itself."


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def encode_custom_id(custom_id: str) -> str | None:
    """A ``custom_id`` Anthropic accepts that :func:`decode_custom_id` turns back into
    ``custom_id``; ``None`` when no such encoding fits in 64 characters.

    An id that already fits (and does not start with ``__``) is kept as it is; ``PREFIX:HEX``
    becomes ``__h`` + base64url(len(PREFIX), PREFIX, bytes of HEX) (46 characters for
    ``v1:<64 hex>``); anything else of up to 45 bytes becomes ``__b`` + base64url(UTF-8)."""
    if _CUSTOM_ID.fullmatch(custom_id) and not custom_id.startswith(_ENCODED):
        return custom_id
    m = _HEX_ID.fullmatch(custom_id)
    if m:
        prefix = m.group(1).encode("utf-8")
        if len(prefix) < 256:
            out = _ENCODED + "h" + _b64(bytes([len(prefix)]) + prefix + bytes.fromhex(m.group(2)))
            if len(out) <= 64:
                return out
    out = _ENCODED + "b" + _b64(custom_id.encode("utf-8"))
    return out if len(out) <= 64 else None


def decode_custom_id(sent: str) -> str | None:
    """The caller's id for an id :func:`encode_custom_id` made (``None`` if it made none such)."""
    if not sent.startswith(_ENCODED):
        return sent
    tag, body = sent[len(_ENCODED) : len(_ENCODED) + 1], sent[len(_ENCODED) + 1 :]
    try:
        raw = _unb64(body)
        if tag == "h" and raw:
            n = raw[0]
            return raw[1 : 1 + n].decode("utf-8") + ":" + raw[1 + n :].hex()
        if tag == "b":
            return raw.decode("utf-8")
    except (binascii.Error, ValueError, IndexError):
        return None
    return None


#: a system prompt this long (about 1,024 tokens, the least Anthropic caches) is marked for the
#: prompt cache; a shorter one goes as plain text (caching it would do nothing)
CACHE_MIN_CHARS = 4000


class AnthropicOptions(HostedOptions):
    """The options of ``anthropic:MODEL`` (docs/providers.md has them in a table)."""

    api_key_env: str = Field("ANTHROPIC_API_KEY", description="the environment variable the key is read from")
    structured: str = Field(
        "tool", description="tool: force a tool whose input schema is the step's schema; "
        "json_schema: output_config.format; prompt: the schema in the system prompt"
    )
    tool_name: str = Field("answer", description="the name of that tool")
    send_temperature: bool = Field(
        False, description="send the step's temperature as an extra body field (not with "
        "extended thinking, which allows only the default)"
    )
    prompt_cache: bool = Field(
        True, description="mark the prompt's shared part (the tools and the system prompt, which "
        "come before the row) for Anthropic's prompt cache: rows after the first read it at the "
        "cache's price (a prefix under the model's minimum, 1,024 tokens or more, is not cached)"
    )

    @field_validator("structured")
    @classmethod
    def _known_mode(cls, v: str) -> str:
        if v not in ("tool", "json_schema", "prompt"):
            raise ValueError("structured must be `tool`, `json_schema` or `prompt`")
        return v


class AnthropicModel(HostedModel):
    """A Claude model behind Anthropic's Messages API.

    ``arg`` is the model name (``claude-haiku-4-5``, ``claude-sonnet-4-5-20250929``...); the
    options are :class:`AnthropicOptions`. Unknown models have cost ``None``, never 0.
    """

    provider = "anthropic"
    sdk_module = "anthropic"
    install_hint = _INSTALL_HINT
    sdk_error = "AnthropicError"
    Options = AnthropicOptions
    capabilities = Capabilities(supports_schema=True, supports_logprobs=False, max_concurrency=1024)

    def __init__(self, arg: str | None = None, **options: Any) -> None:
        super().__init__()
        name = self._named(arg, "claude-haiku-4-5")
        opts = parse_options(AnthropicOptions, f"anthropic:{name}", options)
        self._configure(name, opts, DEFAULT_BASE_URL, "ANTHROPIC_BASE_URL", key_required=True)
        self.is_anthropic = self.base_url == DEFAULT_BASE_URL
        self.structured = opts.structured
        self.tool_name = opts.tool_name
        self.send_temperature = opts.send_temperature
        self.prompt_cache = opts.prompt_cache
        self.capabilities = Capabilities(
            supports_schema=True,
            supports_logprobs=False,
            supports_batch=opts.supports_batch,
            max_concurrency=opts.max_concurrency,
            context_window=opts.context_window,
        )
        #: (max requests per batch, max bytes of the batch create request)
        self.batch_limits: tuple[int, int] = BATCH_LIMITS
        #: ids too long to encode: the id sent -> the caller's id (kept for this process only)
        self._custom_ids: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"AnthropicModel({self.id!r})"

    def _new_sdk(self) -> Any:
        import anthropic

        return anthropic.AsyncAnthropic(
            api_key=self._api_key(),
            base_url=self.base_url,
            timeout=self.timeout,
            max_retries=0,  # the engine owns retries
            default_headers=self.headers or None,
            http_client=anthropic.DefaultAsyncHttpxClient(**pool_options()),
        )

    # --- one call ----------------------------------------------------------------------------

    def params(self, request: Request) -> dict[str, Any]:
        """The Messages API parameters for a request (what goes on the wire)."""
        system = "\n\n".join(m.content for m in request.messages if m.role == "system")
        messages = [
            {"role": m.role, "content": m.content} for m in request.messages if m.role != "system"
        ]
        budget = self._thinking_budget(request)
        # thinking tokens count against max_tokens, which must exceed the budget: the answer
        # keeps the request's own max_tokens on top of it
        max_tokens = request.max_tokens + budget if budget is not None else request.max_tokens
        p: dict[str, Any] = {"model": self.name, "max_tokens": max_tokens}
        schema = request.schema
        mode = self.structured
        if schema is not None and mode == "tool" and schema.get("type") != "object":
            mode = "prompt"  # a tool's input is always an object
        if schema is not None:
            if mode == "tool":
                p["tools"] = [{
                    "name": self.tool_name,
                    "description": "Give the answer: the tool's input is the answer itself.",
                    "input_schema": schema,
                }]
                if budget is None:
                    p["tool_choice"] = {"type": "tool", "name": self.tool_name}
                else:
                    # extended thinking refuses a forced tool: let the model choose, and say
                    # which tool carries the answer (a text answer is read as text, as ever)
                    p["tool_choice"] = {"type": "auto"}
                    system = add_note(system, _TOOL_NOTE.format(name=self.tool_name))
            elif mode == "json_schema":
                p["output_config"] = {"format": {"type": "json_schema", "schema": output_schema(schema)}}
            else:
                system = schema_note(schema, system)
        if system and self.prompt_cache and len(system) >= CACHE_MIN_CHARS:  # the shared prefix, cached
            p["system"] = [{"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}]
        elif system:
            p["system"] = system
        p["messages"] = messages or [{"role": "user", "content": ""}]
        if budget is not None:
            p["thinking"] = {"type": "enabled", "budget_tokens": budget}
        elif self.send_temperature:  # thinking allows no temperature but the default
            p["extra_body"] = {"temperature": request.temperature}
        return p

    def _thinking_budget(self, request: Request) -> int | None:
        """Extended thinking's budget for the request's ``reasoning_effort`` (``None``: off)."""
        effort = request.reasoning_effort
        if effort is None:
            return None
        budget = THINKING_BUDGETS.get(str(effort).strip().lower())
        if budget is None:
            raise PermanentModelError(
                f"{self.id}: reasoning must be one of {', '.join(THINKING_BUDGETS)}, not {effort!r}"
            )
        return budget

    async def complete(self, request: Request) -> Completion:
        t0 = time.perf_counter()
        msg = await self._guarded(self._create(self.params(request)))
        return self._completion(msg, time.perf_counter() - t0)

    async def _create(self, params: dict[str, Any]) -> Any:
        """One Messages API call: its rate-limit headers observed, its response parsed."""
        with self._calling() as client:
            raw = await client.messages.with_raw_response.create(**params)
        self._observe(raw.headers)
        msg = raw.parse()
        if inspect.isawaitable(msg):
            msg = await msg
        return msg

    def _completion(self, msg: Any, latency: float, batch: bool = False) -> Completion:
        usage = self._usage(getattr(msg, "usage", None), batch=batch)
        stop = getattr(msg, "stop_reason", None)
        if stop == "model_context_window_exceeded":
            raise ContextWindowExceeded(f"{self.id}: too long: {_TOO_LONG}", usage)
        blocks = list(getattr(msg, "content", None) or [])
        text = None
        for b in blocks:
            if getattr(b, "type", None) == "tool_use" and getattr(b, "name", None) == self.tool_name:
                text = json.dumps(b.input, ensure_ascii=False)
                break
        if text is None:
            text = "".join(getattr(b, "text", "") or "" for b in blocks if getattr(b, "type", None) == "text")
        # extended thinking's blocks (redacted_thinking blocks carry no readable text)
        said = (getattr(b, "thinking", None) for b in blocks if getattr(b, "type", None) == "thinking")
        thoughts = [t for t in said if isinstance(t, str) and t.strip()]
        finish: FinishReason
        if stop == "max_tokens":
            finish = "length"
        elif stop == "refusal":
            finish = "refused"
        elif stop in (None, "end_turn", "tool_use", "stop_sequence"):
            finish = "stop"
        else:  # pause_turn or a reason newer than this adapter
            finish = "error"
        return Completion(
            text=text,
            finish_reason=finish,
            usage=usage,
            model=getattr(msg, "model", None) or self.name,
            latency_s=latency,
            reasoning="\n\n".join(thoughts) or None,
        )

    def _usage(self, u: Any, batch: bool = False) -> Usage:
        if u is None:
            return Usage(cost=None)
        fresh = int(getattr(u, "input_tokens", 0) or 0)
        read = int(getattr(u, "cache_read_input_tokens", 0) or 0)
        write = int(getattr(u, "cache_creation_input_tokens", 0) or 0)
        output = int(getattr(u, "output_tokens", 0) or 0)
        details = getattr(u, "output_tokens_details", None)
        thinking = int(getattr(details, "thinking_tokens", 0) or 0) if details is not None else 0
        cost = None
        if self.price is not None:
            cost = self.price.cost(fresh, output, cached_input=read, cache_write=write, batch=batch)
        # input_tokens counts every prompt token (fresh + cache reads + cache writes), as OpenAI's
        # prompt_tokens does; cached_input_tokens is the cache reads among them
        return Usage(
            input_tokens=fresh + read + write,
            output_tokens=output,
            cached_input_tokens=read,
            reasoning_tokens=thinking,
            cost=cost,
            cache_write_tokens=write,
        )

    # --- the Message Batches API -------------------------------------------------------------

    def _send_id(self, custom_id: str) -> str:
        sent = encode_custom_id(custom_id)
        if sent is None:  # too long to encode: a digest, remembered by this instance
            sent = _ENCODED + "k" + _b64(hashlib.sha256(custom_id.encode("utf-8")).digest())
            self._custom_ids[sent] = custom_id
        return sent

    def _caller_id(self, sent: str) -> str:
        if sent in self._custom_ids:
            return self._custom_ids[sent]
        found = decode_custom_id(sent)
        return sent if found is None else found

    def batch_requests(self, items: list[tuple[str, Request]]) -> list[dict[str, Any]]:
        """The ``requests`` of a batch: ``params`` exactly as :meth:`complete` sends them (extra
        body fields merged in), custom ids encoded when Anthropic would refuse them."""
        most, most_bytes = self.batch_limits
        self._check_batch(items, "Message Batches API", most)
        out = []
        size = 16
        for custom_id, request in items:
            params = self.params(request)
            extra = params.pop("extra_body", None)
            if extra:
                params.update(extra)
            entry = {"custom_id": self._send_id(custom_id), "params": params}
            size += len(json.dumps(entry, ensure_ascii=False, separators=(",", ":")).encode("utf-8")) + 1
            out.append(entry)
        self._check_batch_size(size, "Message Batches API", most_bytes)
        return out

    async def submit_batch(self, items: list[tuple[str, Request]]) -> str:
        """Create a message batch; returns its id."""
        requests = self.batch_requests(items)
        timeout = max(self.timeout, _FILE_TIMEOUT)
        batch = await self._guarded(self._client().messages.batches.create(requests=requests, timeout=timeout))
        return str(batch.id)

    async def poll_batch(self, batch_id: str) -> BatchStatus:
        """The batch's state: ``ended`` once its ``processing_status`` is ``ended``."""
        batch = await self._guarded(self._client().messages.batches.retrieve(batch_id))
        status = str(getattr(batch, "processing_status", "") or "")
        return BatchStatus(
            id=str(batch.id),
            state="ended" if status == "ended" else "in_progress",
            counts=batch_counts(getattr(batch, "request_counts", None)),
            detail=status,
        )

    async def fetch_batch(self, batch_id: str) -> list[BatchItem]:
        """Every item of an ended batch: ``succeeded`` answers parsed as online ones and priced
        at the batch price; ``errored`` with the provider's message; ``expired``; ``cancelled``."""
        return await self._guarded(self._results(batch_id))

    async def _results(self, batch_id: str) -> list[BatchItem]:
        found: dict[str, BatchItem] = {}
        timeout = max(self.timeout, _FILE_TIMEOUT)
        async for r in await self._client().messages.batches.results(batch_id, timeout=timeout):
            cid = self._caller_id(str(r.custom_id))
            if cid not in found:
                found[cid] = self._batch_result(cid, r.result)
        return list(found.values())

    def _batch_result(self, cid: str, result: Any) -> BatchItem:
        kind = getattr(result, "type", None)
        if kind == "succeeded":
            try:
                return BatchItem(cid, self._completion(result.message, 0.0, batch=True))
            except ModelError as e:  # e.g. the context window filled up: the call is a failure
                return BatchItem(cid, None, f"errored: {e}")
        if kind == "expired":
            return BatchItem(cid, None, "expired")
        if kind in ("canceled", "cancelled"):
            return BatchItem(cid, None, "cancelled")
        if kind == "errored":
            resp = getattr(result, "error", None)
            err = getattr(resp, "error", None) if resp is not None else None
            etype = getattr(err, "type", None) or "error"
            msg = getattr(err, "message", None) or ""
            return BatchItem(cid, None, self._say(f"errored: {etype}: {msg}"))
        return BatchItem(cid, None, f"errored: unknown batch result type {kind!r}")

    # --- the error boundary: Anthropic's own cases (the shared ladder is HostedModel's) -----

    def _detail(self, e: Any) -> str:
        return getattr(e, "api_message", None) or super()._detail(e)

    def _special_error(self, e: Any, status: int, detail: str, tail: str) -> ModelError | None:
        where = self._where()
        if status == 402 or "credit balance" in detail.lower():
            return QuotaExceeded(self._say(
                f"{where}: the account is out of credit ({status}: {detail}){tail}; add credit "
                "in the provider's billing settings, then run again"
            ))
        if (status == 413 or "too long" in detail.lower()) and status != 429 and not retryable(status):
            return PermanentModelError(self._say(f"{where}: too long ({status}: {detail}); {_TOO_LONG}"))
        return None


