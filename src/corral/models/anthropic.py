"""``anthropic:MODEL``: Claude through the official SDK's Messages API.

Structured output by a forced tool: the request's schema becomes the ``input_schema`` of one tool
(``tool_choice: {type: tool, name}``), and the tool call's input is the answer. With
``structured: json_schema`` the schema goes in ``output_config.format`` instead; with
``structured: prompt`` it is written in the system prompt.

The SDK's own retries are off (the engine owns retries); every SDK error is translated in
:meth:`AnthropicModel._translate`. The latest ``anthropic-ratelimit-*`` headers are kept in
:attr:`AnthropicModel.rate_limits` for the engine.
"""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import json
import os
import time
from typing import Any

from corral.errors import (
    ModelError,
    ModelNotFoundError,
    PermanentModelError,
    RateLimited,
    TransientModelError,
)
from corral.models._keys import (
    AuthenticationError,
    Price,
    base_url_tag,
    find_key,
    shown_keys_file,
    price_for,
    rate_limit_headers,
    redact,
    retry_after,
)
from corral.models.base import Capabilities, Completion, FinishReason, Model, Request, Usage

__all__ = ["AnthropicModel"]

DEFAULT_BASE_URL = "https://api.anthropic.com"
_INSTALL_HINT = "pip install 'corral[anthropic]'"
_SCHEMA_NOTE = "Answer with a JSON object that matches this JSON schema:\n"
_TOO_LONG = (
    "the prompt and the answer do not fit in the model's context window; shorten the input "
    "or lower the step's max_tokens"
)


class ContextWindowExceeded(PermanentModelError):
    """The model stopped because its context window was full (``model_context_window_exceeded``).

    The call was made and paid for: :attr:`usage` holds what it used."""

    def __init__(self, message: str, usage: Usage | None = None) -> None:
        super().__init__(message)
        self.usage = usage


class AnthropicModel(Model):
    """A Claude model behind Anthropic's Messages API.

    ``arg`` is the model name (``claude-haiku-4-5``, ``claude-sonnet-4-5-20250929``...). Options
    (all optional):

    ``base_url``
        Default ``$ANTHROPIC_BASE_URL``, else ``https://api.anthropic.com``.
    ``api_key`` / ``api_key_env``
        The key, else the environment variable ``api_key_env`` (default ``ANTHROPIC_API_KEY``),
        else the ``anthropic`` entry of the keys file.
    ``timeout``
        Seconds the HTTP client waits for an answer (default 60).
    ``structured``
        ``tool`` (default): force a tool whose input schema is the step's schema;
        ``json_schema``: ``output_config.format``; ``prompt``: the schema in the system prompt.
    ``tool_name``
        The name of that tool (default ``answer``).
    ``send_temperature``
        Send the step's temperature (default ``False``: the SDK's Messages API has no
        ``temperature`` parameter; ``True`` sends it as an extra body field).
    ``prices``
        USD per million tokens ``{input, output, cached_input, cache_write, batch_discount}``,
        overriding the price table; unknown models have cost ``None``.
    ``max_concurrency``, ``context_window``
        Capabilities the engine reads (default 64 calls in flight; window unknown).
    ``headers``
        Extra HTTP headers sent with every call (e.g. ``anthropic-beta``).
    """

    provider = "anthropic"
    capabilities = Capabilities(supports_schema=True, supports_logprobs=False, max_concurrency=64)

    def __init__(
        self,
        arg: str | None = None,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        api_key_env: str = "ANTHROPIC_API_KEY",
        timeout: float = 60.0,
        structured: str = "tool",
        tool_name: str = "answer",
        send_temperature: bool = False,
        prices: dict[str, Any] | None = None,
        max_concurrency: int = 64,
        context_window: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        if importlib.util.find_spec("anthropic") is None:
            raise ModelNotFoundError(
                f"the anthropic model needs the anthropic package; run: {_INSTALL_HINT}"
            )
        if not arg or not str(arg).strip():
            raise ModelNotFoundError(
                "name the model after `anthropic:`, e.g. `anthropic:claude-haiku-4-5`"
            )
        self.name = str(arg).strip()
        url = base_url if base_url else os.environ.get("ANTHROPIC_BASE_URL") or DEFAULT_BASE_URL
        self.base_url = url.strip().rstrip("/")
        self.is_anthropic = self.base_url == DEFAULT_BASE_URL
        self.api_key_env = api_key_env
        self._key = find_key("anthropic", api_key, api_key_env)
        self.id = f"anthropic:{self.name}" + (
            "" if self.is_anthropic else f"@{base_url_tag(self.base_url)}"
        )
        if float(timeout) <= 0:
            raise ModelNotFoundError("timeout must be a positive number of seconds")
        self.timeout = float(timeout)
        if structured not in ("tool", "json_schema", "prompt"):
            raise ModelNotFoundError("structured must be `tool`, `json_schema` or `prompt`")
        self.structured = structured
        self.tool_name = tool_name
        self.send_temperature = bool(send_temperature)
        self.price: Price | None = (
            Price.parse(prices, where="prices") if prices is not None
            else price_for("anthropic", self.name)
        )
        if int(max_concurrency) < 1:
            raise ModelNotFoundError("max_concurrency must be at least 1")
        self.headers = dict(headers or {})
        self.capabilities = Capabilities(
            supports_schema=True,
            supports_logprobs=False,
            supports_batch=False,
            max_concurrency=int(max_concurrency),
            context_window=context_window,
        )
        #: the latest ``anthropic-ratelimit-*`` / ``retry-after`` headers (lower-case name -> value)
        self.rate_limits: dict[str, str] = {}
        #: ``time.time()`` when :attr:`rate_limits` was last updated
        self.rate_limits_at: float | None = None
        self._sdk: Any = None
        self._sdk_loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"AnthropicModel({self.id!r})"

    def _client(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._sdk is None or self._sdk_loop is not loop:
            import anthropic

            self._sdk = anthropic.AsyncAnthropic(
                api_key=self._key.get(),  # type: ignore[union-attr]
                base_url=self.base_url,
                timeout=self.timeout,
                max_retries=0,  # the engine owns retries
                default_headers=self.headers or None,
            )
            self._sdk_loop = loop
        return self._sdk

    async def aclose(self) -> None:
        sdk, self._sdk = self._sdk, None
        loop, self._sdk_loop = self._sdk_loop, None
        if sdk is not None and loop is asyncio.get_running_loop():
            await sdk.close()

    # --- one call ----------------------------------------------------------------------------

    def params(self, request: Request) -> dict[str, Any]:
        """The Messages API parameters for a request (what goes on the wire)."""
        system = "\n\n".join(m.content for m in request.messages if m.role == "system")
        messages = [
            {"role": m.role, "content": m.content} for m in request.messages if m.role != "system"
        ]
        p: dict[str, Any] = {"model": self.name, "max_tokens": request.max_tokens}
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
                p["tool_choice"] = {"type": "tool", "name": self.tool_name}
            elif mode == "json_schema":
                p["output_config"] = {"format": {"type": "json_schema", "schema": schema}}
            else:
                note = _SCHEMA_NOTE + json.dumps(schema, ensure_ascii=False)
                system = (system.rstrip() + "\n\n" + note) if system else note
        if system:
            p["system"] = system
        p["messages"] = messages or [{"role": "user", "content": ""}]
        if self.send_temperature:
            p["extra_body"] = {"temperature": request.temperature}
        return p

    async def complete(self, request: Request) -> Completion:
        import anthropic

        client = self._client()
        t0 = time.perf_counter()
        failure: ModelError | None = None
        try:
            raw = await client.messages.with_raw_response.create(**self.params(request))
            self._observe(raw.headers)
            msg = raw.parse()
            if inspect.isawaitable(msg):
                msg = await msg
        except anthropic.AnthropicError as e:
            failure = self._translate(e)
        if failure is not None:
            # raised outside the except block: the SDK's exception is not chained to ours
            raise failure
        return self._completion(msg, time.perf_counter() - t0)

    def _completion(self, msg: Any, latency: float) -> Completion:
        usage = self._usage(getattr(msg, "usage", None))
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
        )

    def _usage(self, u: Any) -> Usage:
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
            cost = self.price.cost(fresh, output, cached_input=read, cache_write=write)
        # input_tokens counts every prompt token (fresh + cache reads + cache writes), as OpenAI's
        # prompt_tokens does; cached_input_tokens is the cache reads among them
        return Usage(
            input_tokens=fresh + read + write,
            output_tokens=output,
            cached_input_tokens=read,
            reasoning_tokens=thinking,
            cost=cost,
        )

    # --- the error boundary ------------------------------------------------------------------

    def _observe(self, headers: Any) -> None:
        found = rate_limit_headers(headers)
        if found:
            self.rate_limits = found
            self.rate_limits_at = time.time()

    def _translate(self, e: Exception) -> ModelError:
        """The one place SDK errors become Corral's."""
        import anthropic

        where = self.id

        def say(text: str) -> str:
            return redact(text, self._key)

        if isinstance(e, anthropic.APITimeoutError):
            return TransientModelError(say(f"{where}: no answer within {self.timeout:g} s (timeout)"))
        if isinstance(e, anthropic.APIConnectionError):
            cause = e.__cause__ or e.__context__
            detail = f": {type(cause).__name__}: {cause}" if cause else ""
            return TransientModelError(say(f"{where}: cannot reach the server{detail}"))
        if isinstance(e, anthropic.APIStatusError):
            headers = e.response.headers if e.response is not None else None
            self._observe(headers)
            status = e.status_code
            detail = getattr(e, "api_message", None) or str(getattr(e, "message", "") or e)
            rid = getattr(e, "request_id", None)
            tail = f" (request {rid})" if rid else ""
            if status == 401:
                return AuthenticationError(say(
                    f"{where} rejected the API key (401: {detail}); set {self.api_key_env} to a "
                    f"valid key (export {self.api_key_env}=...), pass the model's api_key option, "
                    f"or add it to {shown_keys_file()} as {{\"anthropic\": \"...\"}}"
                ))
            if status == 429:
                return RateLimited(
                    say(f"{where}: rate limited (429: {detail}){tail}"), retry_after=retry_after(headers)
                )
            if status in (408, 409) or status >= 500:
                return TransientModelError(say(f"{where}: server error {status}: {detail}{tail}"))
            if status == 413 or "too long" in detail.lower():
                return PermanentModelError(say(f"{where}: too long ({status}: {detail}); {_TOO_LONG}"))
            if status == 404:
                return PermanentModelError(say(
                    f"{where}: not found (404: {detail}); check the model name and base_url{tail}"
                ))
            return PermanentModelError(say(f"{where}: request rejected ({status}: {detail}){tail}"))
        return PermanentModelError(say(f"{where}: {type(e).__name__}: {e}"))
