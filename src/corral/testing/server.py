"""A local server that speaks the hosted providers' wire formats, with faults on demand.

``ProviderServer`` serves, on ``127.0.0.1`` and a free port, from a background thread:

OpenAI (also without the ``/v1`` prefix, so ``base_url`` may be ``srv.url`` or ``srv.openai_url``)
    ``POST /v1/chat/completions``, ``POST /v1/embeddings``, ``POST /v1/files``, ``GET /v1/files/{id}``,
    ``GET /v1/files/{id}/content``, ``POST /v1/batches``, ``GET /v1/batches/{id}``,
    ``POST /v1/batches/{id}/cancel``
Anthropic (``base_url`` is ``srv.url``)
    ``POST /v1/messages``, ``POST /v1/messages/batches``, ``GET /v1/messages/batches/{id}``,
    ``GET /v1/messages/batches/{id}/results``, ``POST /v1/messages/batches/{id}/cancel``

Answers are JSON values valid for the requested schema (``response_format`` json_schema, the
forced tool's ``input_schema``, ``output_config.format``, or a schema written in the prompt after
``schema:``), derived deterministically from the prompt's text as :mod:`corral.models.fake` does.
Token counts are ``characters // 4``. Embeddings are unit vectors made from each input's words
(as :mod:`corral.models.fake` makes them): 1536 numbers (3072 for ``text-embedding-3-large``),
or ``dimensions`` of them on ``text-embedding-3-*``; at most 2048 inputs a request, none empty.

Faults are constructor arguments and plain attributes (``srv.error_rate = 0.5`` at any time, or
``srv.configure(...)``); each request's dice are derived from the seed, the request body and how
many times that same body was seen, so a run is reproducible whatever the thread interleaving.
Counters (:attr:`requests`, :attr:`statuses`, :meth:`served`, :attr:`submissions`) are the
ground truth a test compares a run's ledger against.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from corral.testing._anthropic import AnthropicAPI
from corral.testing._http import Route, Served
from corral.testing._openai import OpenAIAPI

__all__ = ["ProviderServer", "Served"]


class ProviderServer(OpenAIAPI, AnthropicAPI):
    """OpenAI- and Anthropic-compatible test server with fault injection.

    Use as a context manager; :attr:`url` is ``http://127.0.0.1:PORT``. Every argument is also an
    attribute that may be changed while the server runs.

    Latency and rate limits
        ``latency_s``: seconds per answer, or ``(min, max)`` for a uniform range.
        ``rpm`` / ``tpm``: requests and tokens (prompt + max_tokens) allowed per minute, enforced
        in a sliding window of ``rate_window_s`` (default 60; a shorter window allows the same
        rate pro rata, e.g. ``rpm=600, rate_window_s=1`` is 10 per second); beyond them a 429 with
        ``retry-after`` and ``retry-after-ms``. While a limit is set, every model-call response
        carries ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` (per minute, as OpenAI
        sends them), or the ``anthropic-ratelimit-*`` headers on Anthropic routes.
        ``ratelimit_rate``: share of calls answered 429 regardless, with ``retry_after_s``.
    Failures
        ``error_rate``: share answered with one of ``error_codes`` (default 500 and 503, mixed).
        ``timeout_rate``: share that hang for ``hang_s`` and then close the connection.
        ``fail_status`` / ``fail_message`` / ``fail_code``: answer every model call with this
        status (and, for OpenAI, this error ``code``, e.g. ``insufficient_quota``).
        ``down``: while true every request fails: ``down_mode="503"`` (default) or ``"reset"``
        (the connection is closed without a response).
        ``api_key``: require this key (``Authorization: Bearer`` or ``x-api-key``), else 401;
        ``echo_key`` puts the whole wrong key in the 401 message (as badly behaved servers do).
        ``models``: if given, other model names get 404.
        ``supports_json_schema=False``: reject ``response_format`` json_schema with a 400, as
        servers without structured outputs do.
    Answers
        ``truncation_rate`` (finish ``length`` / ``max_tokens`` with cut JSON),
        ``refusal_rate``, ``content_filter_rate`` (OpenAI), ``malformed_rate`` (text that is not
        JSON), ``context_exceeded_rate`` (Anthropic ``model_context_window_exceeded``);
        ``context_window``: prompts longer than this get a 400 (prompt + max_tokens for OpenAI);
        ``cache_ratio``: share of prompt tokens reported as cached; ``prompt_cache``: instead,
        the providers' own prompt caches by the request's prefix (:mod:`corral.testing._prompt_cache`:
        OpenAI's automatic one, Anthropic's for blocks marked ``cache_control``); ``reasoning_tokens`` added
        to each completion; ``answer(body, provider)`` returns the answer (a JSON value, or a
        str for raw text) instead of the derived one.
    Log-probabilities
        A request with ``logprobs: true`` gets ``choices[0].logprobs.content`` (a token per four
        characters); with ``top_logprobs: k`` too (0 to 20, else 400; without ``logprobs`` a 400)
        each token carries its ``k`` most likely alternatives ``{token, logprob, bytes}``.
        ``top_logprobs``: a distribution ``{token: logprob}`` (or ``f(body) -> {token: logprob}``,
        e.g. by the prompt's text) for the first answer token of such requests: the answer is
        then its most likely token, and that token's alternatives are the distribution's ``k``
        most likely entries.
    Reasoning
        A request with ``reasoning_effort`` (OpenAI; one of ``none``, ``minimal``, ``low``,
        ``medium``, ``high``, ``xhigh``, else 400) gets a reasoning text in
        ``message.reasoning_content`` (as vLLM and DeepSeek answer) and its tokens in
        ``completion_tokens_details.reasoning_tokens``. A request with ``thinking: {type:
        enabled, budget_tokens}`` (Anthropic) is checked as Anthropic does (a budget of at least
        1024 and below ``max_tokens``, no forced ``tool_choice``, no ``temperature`` but 1: else
        400), and gets a ``thinking`` block before its answer, its tokens in
        ``usage.output_tokens_details.thinking_tokens``; with ``tool_choice`` ``auto`` the answer
        comes through the first tool. The reasoning's tokens are ``reasoning_tokens`` when set,
        else those of its text. The parameters are in :attr:`bodies` as sent.
    Batches
        ``batch_polls``: polls until a batch is done; ``expire_batches``: half the lines expire;
        ``batch_failure_rate``: share of lines that fail.
    """

    routes: ClassVar[dict[str, Route]] = {**OpenAIAPI.routes, **AnthropicAPI.routes}

    def __init__(
        self,
        *,
        latency_s: float | tuple[float, float] = 0.0,
        rpm: int | None = None,
        tpm: int | None = None,
        rate_window_s: float = 60.0,
        ratelimit_rate: float = 0.0,
        retry_after_s: float = 1.0,
        error_rate: float = 0.0,
        error_codes: tuple[int, ...] = (500, 503),
        timeout_rate: float = 0.0,
        hang_s: float = 10.0,
        fail_status: int | None = None,
        fail_message: str | None = None,
        fail_code: str | None = None,
        truncation_rate: float = 0.0,
        refusal_rate: float = 0.0,
        content_filter_rate: float = 0.0,
        malformed_rate: float = 0.0,
        context_window: int | None = None,
        context_exceeded_rate: float = 0.0,
        cache_ratio: float = 0.0,
        prompt_cache: bool = False,
        reasoning_tokens: int = 0,
        down: bool = False,
        down_mode: str = "503",
        batch_polls: int = 1,
        expire_batches: bool = False,
        batch_failure_rate: float = 0.0,
        api_key: str | None = None,
        echo_key: bool = False,
        models: list[str] | set[str] | None = None,
        supports_json_schema: bool = True,
        answer: Callable[[dict[str, Any], str], Any] | None = None,
        top_logprobs: dict[str, float] | Callable[[dict[str, Any]], dict[str, float]] | None = None,
        seed: int = 0,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        faults = {k: v for k, v in locals().items() if k not in ("self", "host", "port")}
        self._setup(host, port)
        self.configure(**faults)
