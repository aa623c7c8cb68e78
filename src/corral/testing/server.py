"""A local server that speaks the hosted providers' wire formats, with faults on demand.

``ProviderServer`` serves, on ``127.0.0.1`` and a free port, from a background thread:

OpenAI (also without the ``/v1`` prefix, so ``base_url`` may be ``srv.url`` or ``srv.openai_url``)
    ``POST /v1/chat/completions``, ``POST /v1/files``, ``GET /v1/files/{id}``,
    ``GET /v1/files/{id}/content``, ``POST /v1/batches``, ``GET /v1/batches/{id}``,
    ``POST /v1/batches/{id}/cancel``
Anthropic (``base_url`` is ``srv.url``)
    ``POST /v1/messages``, ``POST /v1/messages/batches``, ``GET /v1/messages/batches/{id}``,
    ``GET /v1/messages/batches/{id}/results``, ``POST /v1/messages/batches/{id}/cancel``

Answers are JSON values valid for the requested schema (``response_format`` json_schema, the
forced tool's ``input_schema``, ``output_config.format``, or a schema written in the prompt after
``schema:``), derived deterministically from the prompt's text as :mod:`corral.models.fake` does.
Token counts are ``characters // 4``.

Faults are constructor arguments and plain attributes (``srv.error_rate = 0.5`` at any time, or
``srv.configure(...)``); each request's dice are derived from the seed, the request body and how
many times that same body was seen, so a run is reproducible whatever the thread interleaving.
Counters (:attr:`requests`, :attr:`statuses`, :meth:`served`, :attr:`submissions`) are the
ground truth a test compares a run's ledger against.
"""

from __future__ import annotations

import email.parser
import email.policy
import hashlib
import inspect
import json
import math
import random
import re
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from corral._answers import WORD, answer_for

__all__ = ["ProviderServer", "Served"]

_SCHEMA_IN_PROMPT = re.compile(r"schema:\s*(?=\{)", re.I)

OPENAI = "openai"
ANTHROPIC = "anthropic"

_RATES = (
    "ratelimit_rate",
    "error_rate",
    "timeout_rate",
    "truncation_rate",
    "refusal_rate",
    "content_filter_rate",
    "malformed_rate",
    "context_exceeded_rate",
    "batch_failure_rate",
    "cache_ratio",
)


@dataclass
class Served:
    """Calls answered with one status code, and the tokens reported in those answers."""

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0

    def add(self, other: Served) -> None:
        self.calls += other.calls
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.cached_tokens += other.cached_tokens


class _Hang(Exception):
    """Answer nothing: the client's timeout fires."""


class _Reset(Exception):
    """Close the connection without a response."""


class _HTTPError(Exception):
    def __init__(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = headers or {}


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


#: the ``reasoning_effort`` values OpenAI documents
_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")
_THINKING_DOCS = "https://docs.claude.com/en/docs/build-with-claude/extended-thinking"


def _thought(user_text: str) -> str:
    """The reasoning text answered to a request that asks for reasoning (from its words)."""
    words = list(dict.fromkeys(WORD.findall(user_text)))[:6]
    about = ", ".join(words) if words else "nothing in particular"
    return (f"The request mentions {about}. Weighing it step by step, the answer is the JSON "
            "value the schema asks for.")


def _tokens(text: str) -> int:
    return max(1, len(text) // 4)


def _now_iso(offset_s: float = 0.0) -> str:
    t = datetime.now(UTC) + timedelta(seconds=offset_s)
    return t.isoformat().replace("+00:00", "Z")


def _duration(seconds: float) -> str:
    """OpenAI's reset header format: ``20ms``, ``1.5s``, ``6m0s``."""
    if seconds < 1:
        return f"{max(0, int(seconds * 1000))}ms"
    if seconds < 60:
        return f"{seconds:.3g}s"
    m, s = divmod(seconds, 60)
    return f"{int(m)}m{s:.3g}s"


def _openai_error(message: str, type_: str, code: str | None = None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    409: "invalid_request_error",
    413: "request_too_large",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    529: "overloaded_error",
}

_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    408: "timeout",
    409: "conflict",
    422: "invalid_request_error",
    429: "requests",
    500: "server_error",
    503: "server_error",
}


def _anthropic_error(status: int, message: str) -> dict:
    return {
        "type": "error",
        "error": {"type": _ANTHROPIC_TYPES.get(status, "api_error"), "message": message},
        "request_id": "req_" + uuid.uuid4().hex[:24],
    }


def _error_body(provider: str, status: int, message: str, code: str | None = None) -> dict:
    if provider == ANTHROPIC:
        return _anthropic_error(status, message)
    return _openai_error(message, _OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error"), code)


_DEFAULT_MESSAGES = {
    500: "The server had an error while processing your request. Sorry about that!",
    503: "The server is overloaded or not ready yet.",
    529: "Overloaded",
}


class _Window:
    """Sliding-window request and token counts."""

    def __init__(self) -> None:
        self.events: deque[tuple[float, int]] = deque()

    def prune(self, now: float, window: float) -> None:
        while self.events and self.events[0][0] <= now - window:
            self.events.popleft()

    def used(self) -> tuple[int, int]:
        return len(self.events), sum(t for _, t in self.events)

    def wait_for_requests(self, now: float, window: float, limit: int) -> float:
        """Seconds until fewer than ``limit`` requests are in the window."""
        n = len(self.events)
        if n < limit:
            return 0.0
        return self.events[n - limit][0] + window - now

    def wait_for_tokens(self, now: float, window: float, limit: int, want: int) -> float:
        total = sum(t for _, t in self.events)
        if total + want <= limit:
            return 0.0
        for ts, t in self.events:
            total -= t
            if total + want <= limit:
                return ts + window - now
        return window


class ProviderServer:
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
        ``cache_ratio``: share of prompt tokens reported as cached; ``reasoning_tokens`` added
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
        self._lock = threading.RLock()
        self._closing = threading.Event()
        #: answer every `service_tier: flex` call 429 resource_unavailable, as OpenAI does when
        #: flex capacity runs out (a plain attribute: set it at any time)
        self.flex_unavailable = False
        self.host = host
        self.port = port
        self.configure(
            latency_s=latency_s, rpm=rpm, tpm=tpm, rate_window_s=rate_window_s,
            ratelimit_rate=ratelimit_rate, retry_after_s=retry_after_s, error_rate=error_rate,
            error_codes=error_codes, timeout_rate=timeout_rate, hang_s=hang_s,
            fail_status=fail_status, fail_message=fail_message, fail_code=fail_code,
            truncation_rate=truncation_rate,
            refusal_rate=refusal_rate, content_filter_rate=content_filter_rate,
            malformed_rate=malformed_rate, context_window=context_window,
            context_exceeded_rate=context_exceeded_rate, cache_ratio=cache_ratio,
            reasoning_tokens=reasoning_tokens, down=down, down_mode=down_mode,
            batch_polls=batch_polls, expire_batches=expire_batches,
            batch_failure_rate=batch_failure_rate, api_key=api_key, echo_key=echo_key,
            models=models, supports_json_schema=supports_json_schema, answer=answer,
            top_logprobs=top_logprobs, seed=seed,
        )
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._windows = {OPENAI: _Window(), ANTHROPIC: _Window()}
        self._seen: Counter[str] = Counter()
        self._files: dict[str, dict[str, Any]] = {}
        self._file_data: dict[str, bytes] = {}
        self._batches: dict[str, dict[str, Any]] = {}
        self._msg_batches: dict[str, dict[str, Any]] = {}
        self.reset_counters()

    # --- configuration and counters ----------------------------------------------------------

    def configure(self, **faults: Any) -> ProviderServer:
        """Change faults at runtime (``srv.configure(down=True)``); unknown names are an error."""
        known = set(inspect.signature(ProviderServer.__init__).parameters) - {"self", "host", "port"}
        unknown = set(faults) - known
        if unknown:
            raise TypeError(f"unknown ProviderServer option(s): {', '.join(sorted(unknown))}")
        for name in _RATES:
            if name in faults and not 0.0 <= float(faults[name]) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
        if "down_mode" in faults and faults["down_mode"] not in ("503", "reset"):
            raise ValueError('down_mode must be "503" or "reset"')
        if "latency_s" in faults:
            lat = faults["latency_s"]
            if isinstance(lat, (list, tuple)):
                faults["latency_s"] = (float(lat[0]), float(lat[1]))
            else:
                faults["latency_s"] = (float(lat), float(lat))
        if "models" in faults and faults["models"] is not None:
            faults["models"] = set(faults["models"])
        if "batch_polls" in faults and int(faults["batch_polls"]) < 1:
            raise ValueError("batch_polls must be at least 1")
        with self._lock:
            for k, v in faults.items():
                setattr(self, k, v)
        return self

    def reset_counters(self) -> None:
        """Zero every counter (the server's files and batches are kept)."""
        with self._lock:
            #: requests per route, e.g. ``{"POST /v1/chat/completions": 52}``
            self.requests: Counter[str] = Counter()
            #: responses per (route, status); status 0 is a hung request that got no response
            self.statuses: Counter[tuple[str, int]] = Counter()
            #: files uploaded, batches and message batches created
            self.submissions: Counter[str] = Counter()
            #: the last 1000 JSON request bodies, as ``(route, body)``
            self.bodies: deque[tuple[str, Any]] = deque(maxlen=1000)
            self._served: dict[tuple[str, int], Served] = {}

    def served(self, kind: str | None = None, status: int | None = 200) -> Served:
        """Calls and tokens served, summed over ``kind`` (``openai``, ``anthropic``,
        ``openai_batch``, ``anthropic_batch``; ``None`` for the two online routes) and ``status``
        (``None`` for every status)."""
        out = Served()
        with self._lock:
            for (k, st), s in self._served.items():
                if kind is None and k not in (OPENAI, ANTHROPIC):
                    continue
                if kind is not None and k != kind:
                    continue
                if status is not None and st != status:
                    continue
                out.add(s)
        return out

    def served_by_status(self, kind: str | None = None) -> dict[int, Served]:
        """:meth:`served` for every status code seen."""
        with self._lock:
            codes = {st for (k, st) in self._served if kind is None or k == kind}
        return {st: self.served(kind, st) for st in sorted(codes)}

    def _count(self, kind: str, status: int, s: Served | None = None) -> None:
        with self._lock:
            cur = self._served.setdefault((kind, status), Served())
            cur.add(s or Served(calls=1))

    # --- lifecycle -----------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``: the Anthropic SDK's ``base_url`` (and OpenAI's too)."""
        if self._httpd is None:
            raise RuntimeError("the server is not started: use `with ProviderServer() as srv:`")
        return f"http://{self.host}:{self.port}"

    @property
    def openai_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``, the form OpenAI-compatible servers are usually given."""
        return self.url + "/v1"

    def start(self) -> ProviderServer:
        if self._httpd is not None:
            return self
        server = self

        class Handler(_Handler):
            srv = server

        httpd = ThreadingHTTPServer((self.host, self.port), Handler, bind_and_activate=False)
        httpd.daemon_threads = True
        httpd.request_queue_size = 256
        httpd.allow_reuse_address = True
        httpd.server_bind()
        httpd.server_activate()
        self._httpd = httpd
        self.port = httpd.server_address[1]
        self._closing.clear()
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="corral-provider-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._closing.set()
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> ProviderServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = f"{self.host}:{self.port}" if self._httpd is not None else "stopped"
        return f"<ProviderServer {where}>"

    # --- dice ------------------------------------------------------------------------------

    def _dice(self, route: str, body: bytes) -> random.Random:
        digest = hashlib.sha256(route.encode() + b"\0" + body).hexdigest()
        with self._lock:
            self._seen[digest] += 1
            n = self._seen[digest]
        return random.Random(f"{self.seed}:{digest}:{n}")

    def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            self._closing.wait(seconds)

    # --- rate limits -----------------------------------------------------------------------

    def _caps(self) -> tuple[int | None, int | None, float]:
        """Requests and tokens allowed per window: ``rpm``/``tpm`` scaled to ``rate_window_s``."""
        window = float(self.rate_window_s)
        scale = window / 60.0
        reqs = None if self.rpm is None else max(1, int(float(self.rpm) * scale))
        toks = None if self.tpm is None else max(1, int(float(self.tpm) * scale))
        return reqs, toks, window

    def _admit(self, provider: str, tokens: int) -> None:
        """Count the request in the sliding window or raise a 429."""
        if self.rpm is None and self.tpm is None:
            return
        reqs, toks, window = self._caps()
        with self._lock:
            w = self._windows[provider]
            now = time.monotonic()
            w.prune(now, window)
            wait = 0.0
            kind = "requests"
            if reqs is not None:
                wait = w.wait_for_requests(now, window, reqs)
            if toks is not None:
                tw = w.wait_for_tokens(now, window, toks, min(tokens, toks))
                if tw > wait:
                    wait, kind = tw, "tokens"
            if wait <= 0:
                w.events.append((now, tokens))
                return
            used_r, used_t = w.used()
        if kind == "requests":
            msg = (
                f"Rate limit reached for requests per minute (RPM): Limit {self.rpm}, Used "
                f"{used_r} in the last {window:g}s, Requested 1. Please try again in {_duration(wait)}."
            )
        else:
            msg = (
                f"Rate limit reached for tokens per minute (TPM): Limit {self.tpm}, Used {used_t} "
                f"in the last {window:g}s, Requested {tokens}. Please try again in {_duration(wait)}."
            )
        raise self._too_many(provider, msg, wait, kind)

    def _too_many(self, provider: str, msg: str, wait: float, kind: str = "requests") -> _HTTPError:
        headers = {
            "retry-after": str(max(1, math.ceil(wait))),
            "retry-after-ms": str(max(1, int(round(wait * 1000)))),
        }
        if provider == ANTHROPIC:
            body = _anthropic_error(429, msg)
        else:
            body = _openai_error(msg, kind, "rate_limit_exceeded")
        return _HTTPError(429, body, headers)

    def _limit_headers(self, provider: str) -> dict[str, str]:
        """Rate-limit headers: limits per minute, remaining scaled to a minute, time to reset."""
        if self.rpm is None and self.tpm is None:
            return {}
        reqs, toks, window = self._caps()
        per_min = 60.0 / window
        with self._lock:
            w = self._windows[provider]
            now = time.monotonic()
            w.prune(now, window)
            n, used = w.used()
            reset = (w.events[0][0] + window - now) if w.events else 0.0
        out: dict[str, str] = {}
        pairs = []
        if reqs is not None:
            pairs.append(("requests", int(self.rpm), max(0, int((reqs - n) * per_min)), reset))
        if toks is not None:
            pairs.append(("tokens", int(self.tpm), max(0, int((toks - used) * per_min)), reset))
        for kind, limit, remaining, wait in pairs:
            if provider == ANTHROPIC:
                names = [kind] + (["input-tokens", "output-tokens"] if kind == "tokens" else [])
                for name in names:
                    out[f"anthropic-ratelimit-{name}-limit"] = str(limit)
                    out[f"anthropic-ratelimit-{name}-remaining"] = str(remaining)
                    out[f"anthropic-ratelimit-{name}-reset"] = _now_iso(max(0.0, wait))
            else:
                out[f"x-ratelimit-limit-{kind}"] = str(limit)
                out[f"x-ratelimit-remaining-{kind}"] = str(remaining)
                out[f"x-ratelimit-reset-{kind}"] = _duration(max(0.0, wait))
        return out

    # --- the common path of a model call ---------------------------------------------------

    def _check_model(self, provider: str, model: Any) -> None:
        if not isinstance(model, str) or not model:
            raise _HTTPError(400, _error_body(provider, 400, "model: Field required" if provider == ANTHROPIC else "you must provide a model parameter"))
        if self.models is not None and model not in self.models:
            if provider == ANTHROPIC:
                raise _HTTPError(404, _anthropic_error(404, f"model: {model}"))
            raise _HTTPError(404, _openai_error(
                f"The model `{model}` does not exist or you do not have access to it.",
                "invalid_request_error", "model_not_found"))

    def _call_faults(self, provider: str, route: str, raw: bytes, tokens: int) -> random.Random:
        """Rate limits, forced statuses, latency, 5xx and hangs; returns the content dice."""
        self._admit(provider, tokens)
        dice = self._dice(route, raw)
        r = dice.random()
        if self.fail_status is not None:
            status = int(self.fail_status)
            raise _HTTPError(status, _error_body(
                provider, status, self.fail_message or _DEFAULT_MESSAGES.get(status, f"error {status}"),
                getattr(self, "fail_code", None)))
        if r < self.ratelimit_rate:
            wait = float(self.retry_after_s)
            raise self._too_many(provider, f"Rate limit reached. Please try again in {_duration(wait)}.", wait)
        r -= self.ratelimit_rate
        lat = self.latency_s
        lo, hi = (float(lat[0]), float(lat[1])) if isinstance(lat, (list, tuple)) else (float(lat), float(lat))
        self._sleep(lo if lo == hi else dice.uniform(lo, hi))
        if r < self.error_rate:
            codes = tuple(self.error_codes) or (500,)
            status = codes[dice.randrange(len(codes))]
            raise _HTTPError(status, _error_body(provider, status, _DEFAULT_MESSAGES.get(status, f"error {status}")))
        r -= self.error_rate
        if r < self.timeout_rate:
            raise _Hang()
        return dice

    def _generate(self, provider: str, body: dict[str, Any], schema: dict[str, Any] | None,
                  prompt_text: str, user_text: str, max_tokens: int, dice: random.Random,
                  think: bool = False) -> _Answer:
        prompt_tokens = _tokens(prompt_text)
        cached = int(prompt_tokens * float(self.cache_ratio))
        reasoning = int(self.reasoning_tokens)
        thought: str | None = None
        if think:  # the reasoning comes first and counts against max_tokens
            thought = _thought(user_text)
            reasoning = reasoning or _tokens(thought)
            max_tokens = max(1, max_tokens - reasoning)
        r = dice.random()
        if self.answer is not None:
            value = self.answer(body, provider)
        else:
            value = answer_for(schema, user_text, self.seed, read_patterns=False)
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)

        def done(text: str, finish: str, value: Any = value, out: int | None = None) -> _Answer:
            completion = (_tokens(text) if out is None else out) + reasoning
            return _Answer(value, text, finish, prompt_tokens, completion, cached, reasoning, thought)

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

    # --- OpenAI ----------------------------------------------------------------------------

    def _openai_chat(self, body: dict[str, Any], raw: bytes, route: str, *, batch: bool = False,
                     dice: random.Random | None = None) -> tuple[dict[str, Any], _Answer]:
        model = body.get("model")
        self._check_model(OPENAI, model)
        if body.get("service_tier") == "flex" and not batch and self.flex_unavailable:
            raise _HTTPError(429, _openai_error(
                "Resource unavailable: flex processing is out of capacity, try again later or use the default tier",
                "rate_limit_exceeded", "resource_unavailable"), {"retry-after": "1"})
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _HTTPError(400, _openai_error("[] is too short - 'messages'", "invalid_request_error", None, "messages"))
        texts: list[str] = []
        user: list[str] = []
        for m in messages:
            if not isinstance(m, dict) or "role" not in m:
                raise _HTTPError(400, _openai_error("each message needs a role", "invalid_request_error", None, "messages"))
            content = _text_of(m.get("content"))
            texts.append(content)
            if m["role"] == "user":
                user.append(content)
        schema: dict[str, Any] | None = None
        rf = body.get("response_format")
        if rf is not None:
            kind = rf.get("type") if isinstance(rf, dict) else None
            if kind == "json_schema" and not self.supports_json_schema:
                raise _HTTPError(400, _openai_error(
                    "response_format of type 'json_schema' is not supported by this server",
                    "invalid_request_error", "unsupported_parameter", "response_format"))
            if kind == "json_schema":
                js = rf.get("json_schema") or {}
                if not isinstance(js, dict) or not js.get("name") or not isinstance(js.get("schema"), dict):
                    raise _HTTPError(400, _openai_error(
                        "Missing required parameter: 'response_format.json_schema.name' or '.schema'.",
                        "invalid_request_error", "missing_required_parameter", "response_format"))
                schema = js["schema"]
                texts.append(json.dumps(schema))
            elif kind == "json_object":
                if not any("json" in t.lower() for t in texts):
                    raise _HTTPError(400, _openai_error(
                        "'messages' must contain the word 'json' in some form, to use "
                        "'response_format' of type 'json_object'.", "invalid_request_error", None, "messages"))
            elif kind != "text":
                raise _HTTPError(400, _openai_error(
                    f"Invalid value: '{kind}'. Supported values are: 'json_object', 'json_schema', and 'text'.",
                    "invalid_request_error", "invalid_value", "response_format.type"))
        if schema is None:
            schema = _schema_in(texts)
        effort = body.get("reasoning_effort")
        if effort is not None and effort not in _EFFORTS:
            raise _HTTPError(400, _openai_error(
                f"Invalid value: '{effort}'. Supported values are: "
                + ", ".join(f"'{e}'" for e in _EFFORTS[:-1]) + f", and '{_EFFORTS[-1]}'.",
                "invalid_request_error", "invalid_value", "reasoning_effort"))
        top_k = body.get("top_logprobs")
        if top_k is not None:
            if not isinstance(top_k, int) or isinstance(top_k, bool) or not 0 <= top_k <= 20:
                raise _HTTPError(400, _openai_error(
                    f"Invalid 'top_logprobs': integer above maximum value. Expected a value <= 20, but got {top_k} instead.",
                    "invalid_request_error", "integer_above_max_value", "top_logprobs"))
            if not body.get("logprobs"):
                raise _HTTPError(400, _openai_error(
                    "Invalid value for 'top_logprobs': 'logprobs' must be set to true when 'top_logprobs' is used.",
                    "invalid_request_error", "invalid_value", "top_logprobs"))
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or 4096
        prompt_text = "\n".join(texts)
        prompt_tokens = _tokens(prompt_text)
        if self.context_window is not None and prompt_tokens + int(max_tokens) > int(self.context_window):
            raise _HTTPError(400, _openai_error(
                f"This model's maximum context length is {self.context_window} tokens. However, you "
                f"requested {prompt_tokens + int(max_tokens)} tokens ({prompt_tokens} in the messages, "
                f"{max_tokens} in the completion). Please reduce the length of the messages or completion.",
                "invalid_request_error", "context_length_exceeded", "messages"))
        if dice is None:
            dice = self._call_faults(OPENAI, route, raw, prompt_tokens + int(max_tokens))
        ans = self._generate(OPENAI, body, schema, prompt_text, "\n".join(user), int(max_tokens), dice,
                             think=effort not in (None, "none"))
        message: dict[str, Any] = {"role": "assistant", "content": ans.text, "refusal": None}
        finish = {"stop": "stop", "length": "length", "malformed": "stop"}.get(ans.finish, ans.finish)
        if ans.finish == "refusal":
            message = {"role": "assistant", "content": None, "refusal": ans.text}
            finish = "stop"
        elif ans.finish == "content_filter":
            message = {"role": "assistant", "content": None, "refusal": None}
        if ans.reasoning_text is not None:  # as vLLM, DeepSeek and llama.cpp's server send it
            message["reasoning_content"] = ans.reasoning_text
        choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": finish, "logprobs": None}
        dist = self.top_logprobs
        ranked: list[tuple[str, float]] = []
        if top_k and dist is not None and message.get("content"):
            dist = dict(dist(body) if callable(dist) else dist)
            ranked = sorted(dist.items(), key=lambda kv: (-kv[1], kv[0]))
            message["content"] = ranked[0][0].strip() if ranked else ""
            ans.text = message["content"]
        if body.get("logprobs") and message.get("content"):
            content = message["content"]
            pieces = [content[i : i + 4] for i in range(0, len(content), 4)]
            entries = [
                {"token": p, "logprob": round(-dice.random() * 0.2, 6), "bytes": list(p.encode()), "top_logprobs": []}
                for p in pieces
            ]
            if top_k:
                for e in entries:
                    e["top_logprobs"] = [{"token": e["token"], "logprob": e["logprob"], "bytes": e["bytes"]}]
                if dist is not None and ranked:
                    entries[0]["token"], entries[0]["logprob"] = ranked[0][0], ranked[0][1]
                    entries[0]["bytes"] = list(ranked[0][0].encode())
                    entries[0]["top_logprobs"] = [
                        {"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in ranked[:top_k]
                    ]
            choice["logprobs"] = {"content": entries, "refusal": None}
        resp = {
            "id": "chatcmpl-" + uuid.uuid4().hex[:24],
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [choice],
            "usage": {
                "prompt_tokens": ans.prompt_tokens,
                "completion_tokens": ans.completion_tokens,
                "total_tokens": ans.prompt_tokens + ans.completion_tokens,
                "prompt_tokens_details": {"cached_tokens": ans.cached_tokens, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": ans.reasoning_tokens, "audio_tokens": 0,
                                              "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
            },
            "service_tier": "flex" if body.get("service_tier") == "flex" else "default",
            "system_fingerprint": "fp_corral_test",
        }
        return resp, ans

    def _upload(self, headers: Any, raw: bytes) -> dict[str, Any]:
        ctype = headers.get("Content-Type", "")
        if "multipart/form-data" not in ctype:
            raise _HTTPError(400, _openai_error("expected a multipart/form-data upload", "invalid_request_error"))
        msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + ctype.encode() + b"\r\nMIME-Version: 1.0\r\n\r\n" + raw
        )
        fields: dict[str, Any] = {}
        filename = "upload.jsonl"
        content = b""
        for part in msg.iter_parts():
            name = part.get_param("name", header="content-disposition")
            payload = part.get_payload(decode=True) or b""
            if name == "file":
                filename = part.get_filename() or filename
                content = payload
            elif name:
                fields[name] = payload.decode("utf-8", "replace")
        purpose = fields.get("purpose")
        if not purpose:
            raise _HTTPError(400, _openai_error("Missing required parameter: 'purpose'.", "invalid_request_error", None, "purpose"))
        if not content:
            raise _HTTPError(400, _openai_error("Missing required parameter: 'file'.", "invalid_request_error", None, "file"))
        fid = "file-" + uuid.uuid4().hex[:24]
        obj = {
            "id": fid, "object": "file", "bytes": len(content), "created_at": int(time.time()),
            "filename": filename, "purpose": purpose, "status": "processed", "status_details": None,
        }
        with self._lock:
            self._files[fid] = obj
            self._file_data[fid] = content
            self.submissions["files"] += 1
        return obj

    def _new_file(self, lines: list[dict[str, Any]], name: str) -> str:
        data = "".join(json.dumps(x) + "\n" for x in lines).encode()
        fid = "file-" + uuid.uuid4().hex[:24]
        with self._lock:
            self._files[fid] = {
                "id": fid, "object": "file", "bytes": len(data), "created_at": int(time.time()),
                "filename": name, "purpose": "batch_output", "status": "processed", "status_details": None,
            }
            self._file_data[fid] = data
        return fid

    def _create_batch(self, body: dict[str, Any]) -> dict[str, Any]:
        fid = body.get("input_file_id")
        endpoint = body.get("endpoint")
        window = body.get("completion_window")
        with self._lock:
            data = self._file_data.get(fid or "")
        if data is None:
            raise _HTTPError(404, _openai_error(f"No such File object: {fid}", "invalid_request_error", None, "input_file_id"))
        if endpoint != "/v1/chat/completions":
            raise _HTTPError(400, _openai_error(
                f"Invalid value: '{endpoint}'. This test server batches '/v1/chat/completions' only.",
                "invalid_request_error", "invalid_value", "endpoint"))
        if window != "24h":
            raise _HTTPError(400, _openai_error(
                f"Invalid value: '{window}'. Supported values are: '24h'.", "invalid_request_error", "invalid_value",
                "completion_window"))
        lines, errors = [], []
        for n, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                if not isinstance(item, dict) or not item.get("custom_id") or not isinstance(item.get("body"), dict):
                    raise ValueError("each line needs custom_id and body")
                if item.get("url") not in (None, endpoint):
                    raise ValueError(f"url must be {endpoint}")
            except ValueError as e:
                errors.append({"code": "invalid_request", "message": str(e), "param": None, "line": n})
                continue
            lines.append(item)
        ids = [x["custom_id"] for x in lines]
        if len(set(ids)) != len(ids):
            errors.append({"code": "duplicate_custom_id", "message": "custom_id values must be unique", "param": None, "line": None})
        bid = "batch_" + uuid.uuid4().hex[:24]
        now = int(time.time())
        batch = {
            "id": bid, "object": "batch", "endpoint": endpoint, "errors": None, "input_file_id": fid,
            "completion_window": window, "status": "validating", "output_file_id": None,
            "error_file_id": None, "created_at": now, "in_progress_at": None,
            "expires_at": now + 86400, "finalizing_at": None, "completed_at": None, "failed_at": None,
            "expired_at": None, "cancelling_at": None, "cancelled_at": None,
            "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
            "metadata": body.get("metadata"),
        }
        with self._lock:
            self._batches[bid] = {"obj": batch, "lines": lines, "errors": errors, "polls": 0, "cancel": False}
            self.submissions["batches"] += 1
        return batch

    def _poll_batch(self, bid: str) -> dict[str, Any]:
        with self._lock:
            st = self._batches.get(bid)
            if st is None:
                raise _HTTPError(404, _openai_error(f"No such Batch object: {bid}", "invalid_request_error"))
            obj = st["obj"]
            if obj["status"] in ("completed", "expired", "cancelled", "failed"):
                return obj
            st["polls"] += 1
            polls = st["polls"]
            now = int(time.time())
            if st["errors"]:
                obj.update(status="failed", failed_at=now, errors={"object": "list", "data": st["errors"]})
                return obj
            if st["cancel"]:
                self._finish_batch(bid, st, cancelled=True)
                return obj
            if polls < int(self.batch_polls):
                finalizing = int(self.batch_polls) > 2 and polls == int(self.batch_polls) - 1
                obj["status"] = "finalizing" if finalizing else "in_progress"
                obj["in_progress_at"] = obj["in_progress_at"] or now
                if finalizing:
                    obj["finalizing_at"] = now
                return obj
            self._finish_batch(bid, st)
            return obj

    def _finish_batch(self, bid: str, st: dict[str, Any], cancelled: bool = False) -> None:
        obj = st["obj"]
        lines = st["lines"]
        rng = random.Random(f"{self.seed}:{bid}")
        cutoff = len(lines) // 2 if (self.expire_batches or cancelled) else len(lines)
        out: list[dict[str, Any]] = []
        err: list[dict[str, Any]] = []
        for i, item in enumerate(lines):
            rid = "batch_req_" + uuid.uuid4().hex[:24]
            if i >= cutoff:
                code, msg = (("batch_cancelled", "This request was cancelled before it was executed.") if cancelled else
                             ("batch_expired", "This request could not be executed before the completion window expired."))
                err.append({"id": rid, "custom_id": item["custom_id"], "response": None, "error": {"code": code, "message": msg}})
                continue
            raw = json.dumps(item["body"], sort_keys=True).encode()
            dice = self._dice("batch:/v1/chat/completions", raw)
            if dice.random() < self.batch_failure_rate:
                body = _openai_error(_DEFAULT_MESSAGES[500], "server_error")
                err.append({"id": rid, "custom_id": item["custom_id"],
                            "response": {"status_code": 500, "request_id": "req_" + uuid.uuid4().hex[:16], "body": body},
                            "error": None})
                self._count("openai_batch", 500)
                continue
            try:
                resp, ans = self._openai_chat(item["body"], raw, "batch", batch=True, dice=dice)
            except _HTTPError as e:
                err.append({"id": rid, "custom_id": item["custom_id"],
                            "response": {"status_code": e.status, "request_id": "req_" + uuid.uuid4().hex[:16], "body": e.body},
                            "error": None})
                self._count("openai_batch", e.status)
                continue
            out.append({"id": rid, "custom_id": item["custom_id"],
                        "response": {"status_code": 200, "request_id": "req_" + uuid.uuid4().hex[:16], "body": resp},
                        "error": None})
            self._count("openai_batch", 200, Served(1, ans.prompt_tokens, ans.completion_tokens, ans.cached_tokens))
        rng.shuffle(out)
        rng.shuffle(err)
        now = int(time.time())
        obj["output_file_id"] = self._new_file(out, f"{bid}_output.jsonl") if out else None
        obj["error_file_id"] = self._new_file(err, f"{bid}_error.jsonl") if err else None
        obj["request_counts"] = {"total": len(lines), "completed": len(out), "failed": len(err)}
        obj["in_progress_at"] = obj["in_progress_at"] or now
        obj["finalizing_at"] = obj["finalizing_at"] or now
        if cancelled:
            obj.update(status="cancelled", cancelled_at=now)
        elif self.expire_batches:
            obj.update(status="expired", expired_at=now)
        else:
            obj.update(status="completed", completed_at=now)

    def _cancel_batch(self, bid: str) -> dict[str, Any]:
        with self._lock:
            st = self._batches.get(bid)
            if st is None:
                raise _HTTPError(404, _openai_error(f"No such Batch object: {bid}", "invalid_request_error"))
            obj = st["obj"]
            if obj["status"] in ("completed", "expired", "failed", "cancelled"):
                raise _HTTPError(409, _openai_error(
                    f"Cannot cancel a batch with status '{obj['status']}'.", "invalid_request_error"))
            st["cancel"] = True
            obj.update(status="cancelling", cancelling_at=int(time.time()))
            return obj

    # --- Anthropic ---------------------------------------------------------------------------

    def _anthropic_message(self, body: dict[str, Any], raw: bytes, route: str, *,
                           dice: random.Random | None = None) -> tuple[dict[str, Any], _Answer]:
        model = body.get("model")
        self._check_model(ANTHROPIC, model)
        max_tokens = body.get("max_tokens")
        if not isinstance(max_tokens, int) or max_tokens < 0:
            raise _HTTPError(400, _anthropic_error(400, "max_tokens: Field required"))
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _HTTPError(400, _anthropic_error(400, "messages: at least one message is required"))
        texts: list[str] = []
        user: list[str] = []
        system = body.get("system")
        if system is not None:
            texts.append(_text_of(system))
        for m in messages:
            if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
                raise _HTTPError(400, _anthropic_error(400, "messages: roles must be 'user' or 'assistant'"))
            content = _text_of(m.get("content"))
            texts.append(content)
            if m["role"] == "user":
                user.append(content)
        tools = body.get("tools") or []
        choice = body.get("tool_choice") or {}
        forced: dict[str, Any] | None = None
        for t in tools:
            if not isinstance(t, dict) or not t.get("name") or not isinstance(t.get("input_schema"), dict):
                raise _HTTPError(400, _anthropic_error(400, "tools: each tool needs name and input_schema"))
            texts.append(json.dumps(t["input_schema"]))
        think = self._thinking(body, max_tokens, choice)
        if isinstance(choice, dict) and choice.get("type") == "tool":
            forced = next((t for t in tools if t.get("name") == choice.get("name")), None)
            if forced is None:
                raise _HTTPError(400, _anthropic_error(400, f"tool_choice: no tool named '{choice.get('name')}' in tools"))
        elif isinstance(choice, dict) and choice.get("type") == "any" and tools:
            forced = tools[0]
        elif think and tools and (not choice or (isinstance(choice, dict) and choice.get("type") == "auto")):
            forced = tools[0]  # a thinking model left to choose answers through the tool
        schema: dict[str, Any] | None = None
        fmt = (body.get("output_config") or {}).get("format") if isinstance(body.get("output_config"), dict) else None
        if forced is not None:
            schema = forced["input_schema"]
        elif isinstance(fmt, dict) and fmt.get("type") == "json_schema":
            schema = fmt.get("schema")
            refused = _refused_keyword(schema)
            if refused is not None:  # as Anthropic's structured outputs answer
                raise _HTTPError(400, _anthropic_error(
                    400, f"output_config.format.schema: For '{refused[0]}' type, property '{refused[1]}' is not supported"))
            texts.append(json.dumps(schema))
        else:
            schema = _schema_in(texts)
        prompt_text = "\n".join(texts)
        prompt_tokens = _tokens(prompt_text)
        if self.context_window is not None and prompt_tokens > int(self.context_window):
            raise _HTTPError(400, _anthropic_error(
                400, f"prompt is too long: {prompt_tokens} tokens > {self.context_window} maximum"))
        if dice is None:
            dice = self._call_faults(ANTHROPIC, route, raw, prompt_tokens + max_tokens)
        ans = self._generate(ANTHROPIC, body, schema, prompt_text, "\n".join(user), max_tokens, dice,
                             think=think)
        if (ans.finish == "stop" and self.context_window is not None
                and prompt_tokens + ans.completion_tokens > int(self.context_window)):
            room = max(1, int(self.context_window) - prompt_tokens)
            ans = _Answer(_cut(ans.value), ans.text[: room * 4], "context", ans.prompt_tokens,
                          room, ans.cached_tokens, ans.reasoning_tokens, ans.reasoning_text)
        content: list[dict[str, Any]]
        stop = {"stop": "end_turn", "length": "max_tokens", "refusal": "refusal",
                "context": "model_context_window_exceeded", "malformed": "end_turn"}[ans.finish]
        stop_details = None
        if ans.finish == "refusal":
            content = [{"type": "text", "text": ans.text, "citations": None}]
            stop_details = {"type": "refusal", "category": None,
                            "explanation": "The request was declined by the test server's refusal_rate."}
        elif ans.finish == "malformed" or forced is None:
            content = [{"type": "text", "text": ans.text, "citations": None}] if ans.text else []
        else:
            value = ans.value if isinstance(ans.value, dict) else {}
            content = [{"type": "tool_use", "id": "toolu_" + uuid.uuid4().hex[:24], "name": forced["name"], "input": value}]
            if ans.finish == "stop":
                stop = "tool_use"
        if ans.reasoning_text is not None:
            sig = hashlib.sha256(ans.reasoning_text.encode()).hexdigest()
            content = [{"type": "thinking", "thinking": ans.reasoning_text, "signature": "sig_" + sig}, *content]
        resp = {
            "id": "msg_" + uuid.uuid4().hex[:24],
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": stop,
            "stop_sequence": None,
            "stop_details": stop_details,
            "usage": {
                "input_tokens": ans.prompt_tokens - ans.cached_tokens,
                "output_tokens": ans.completion_tokens,
                "cache_read_input_tokens": ans.cached_tokens,
                "cache_creation_input_tokens": 0,
                "service_tier": "standard",
            },
        }
        if ans.reasoning_text is not None:
            resp["usage"]["output_tokens_details"] = {"thinking_tokens": ans.reasoning_tokens}
        return resp, ans

    def _thinking(self, body: dict[str, Any], max_tokens: int, choice: Any) -> bool:
        """Whether the request turns extended thinking on; 400 where Anthropic would refuse it."""
        thinking = body.get("thinking")
        if thinking is None:
            return False
        kind = thinking.get("type") if isinstance(thinking, dict) else None
        if kind == "disabled":
            return False
        if kind == "enabled":
            budget = thinking.get("budget_tokens")
            if not isinstance(budget, int) or isinstance(budget, bool):
                raise _HTTPError(400, _anthropic_error(400, "thinking.enabled.budget_tokens: Field required"))
            if budget < 1024:
                raise _HTTPError(400, _anthropic_error(
                    400, "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024"))
            if max_tokens <= budget:
                raise _HTTPError(400, _anthropic_error(
                    400, f"`max_tokens` must be greater than `thinking.budget_tokens`. Please consult "
                    f"our documentation at {_THINKING_DOCS}#max-tokens-and-context-window-size"))
        elif kind != "adaptive":
            raise _HTTPError(400, _anthropic_error(
                400, f"thinking.type: Input should be 'enabled', 'disabled' or 'adaptive', not {kind!r}"))
        if isinstance(choice, dict) and choice.get("type") in ("tool", "any"):
            raise _HTTPError(400, _anthropic_error(400, "Thinking may not be enabled when tool_choice forces tool use."))
        temperature = body.get("temperature")
        if temperature is not None and temperature != 1:
            raise _HTTPError(400, _anthropic_error(
                400, f"`temperature` may only be set to 1 when thinking is enabled. Please consult our "
                f"documentation at {_THINKING_DOCS}#feature-compatibility"))
        return True

    def _create_msg_batch(self, body: dict[str, Any]) -> dict[str, Any]:
        reqs = body.get("requests")
        if not isinstance(reqs, list) or not reqs:
            raise _HTTPError(400, _anthropic_error(400, "requests: at least one request is required"))
        ids = []
        for r in reqs:
            if not isinstance(r, dict) or not r.get("custom_id") or not isinstance(r.get("params"), dict):
                raise _HTTPError(400, _anthropic_error(400, "requests: each request needs custom_id and params"))
            ids.append(r["custom_id"])
        if len(set(ids)) != len(ids):
            raise _HTTPError(400, _anthropic_error(400, "requests: custom_id values must be unique"))
        bid = "msgbatch_" + uuid.uuid4().hex[:24]
        obj = {
            "id": bid, "type": "message_batch", "processing_status": "in_progress",
            "request_counts": {"processing": len(reqs), "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0},
            "ended_at": None, "created_at": _now_iso(), "expires_at": _now_iso(86400),
            "archived_at": None, "cancel_initiated_at": None, "results_url": None,
        }
        with self._lock:
            self._msg_batches[bid] = {"obj": obj, "requests": reqs, "polls": 0, "cancel": False, "results": None}
            self.submissions["message_batches"] += 1
        return obj

    def _poll_msg_batch(self, bid: str) -> dict[str, Any]:
        with self._lock:
            st = self._msg_batches.get(bid)
            if st is None:
                raise _HTTPError(404, _anthropic_error(404, f"message batch {bid} not found"))
            obj = st["obj"]
            if obj["processing_status"] == "ended":
                return obj
            st["polls"] += 1
            if st["cancel"] or st["polls"] >= int(self.batch_polls):
                self._finish_msg_batch(bid, st)
            return obj

    def _finish_msg_batch(self, bid: str, st: dict[str, Any]) -> None:
        reqs = st["requests"]
        cancelled = st["cancel"]
        rng = random.Random(f"{self.seed}:{bid}")
        cutoff = len(reqs) // 2 if (self.expire_batches or cancelled) else len(reqs)
        counts = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        results = []
        for i, r in enumerate(reqs):
            if i >= cutoff:
                kind = "canceled" if cancelled else "expired"
                counts[kind] += 1
                results.append({"custom_id": r["custom_id"], "result": {"type": kind}})
                continue
            raw = json.dumps(r["params"], sort_keys=True).encode()
            dice = self._dice("batch:/v1/messages", raw)
            if dice.random() < self.batch_failure_rate:
                counts["errored"] += 1
                err = _anthropic_error(500, "Internal server error")
                results.append({"custom_id": r["custom_id"], "result": {"type": "errored", "error": err}})
                self._count("anthropic_batch", 500)
                continue
            try:
                msg, ans = self._anthropic_message(r["params"], raw, "batch", dice=dice)
            except _HTTPError as e:
                counts["errored"] += 1
                results.append({"custom_id": r["custom_id"], "result": {"type": "errored", "error": e.body}})
                self._count("anthropic_batch", e.status)
                continue
            counts["succeeded"] += 1
            results.append({"custom_id": r["custom_id"], "result": {"type": "succeeded", "message": msg}})
            self._count("anthropic_batch", 200, Served(1, ans.prompt_tokens, ans.completion_tokens, ans.cached_tokens))
        rng.shuffle(results)
        st["results"] = "".join(json.dumps(x) + "\n" for x in results).encode()
        st["obj"].update(
            processing_status="ended", ended_at=_now_iso(), request_counts=counts,
            results_url=f"{self.url}/v1/messages/batches/{bid}/results",
        )

    def _cancel_msg_batch(self, bid: str) -> dict[str, Any]:
        with self._lock:
            st = self._msg_batches.get(bid)
            if st is None:
                raise _HTTPError(404, _anthropic_error(404, f"message batch {bid} not found"))
            obj = st["obj"]
            if obj["processing_status"] != "ended":
                st["cancel"] = True
                obj.update(processing_status="canceling", cancel_initiated_at=_now_iso())
            return obj

    def _msg_batch_results(self, bid: str) -> bytes:
        with self._lock:
            st = self._msg_batches.get(bid)
            if st is None:
                raise _HTTPError(404, _anthropic_error(404, f"message batch {bid} not found"))
            if st["results"] is None:
                raise _HTTPError(400, _anthropic_error(400, f"message batch {bid} has not ended yet"))
            return st["results"]

    # --- dispatch ----------------------------------------------------------------------------

    def _auth(self, provider: str, headers: Any) -> None:
        if self.api_key is None:
            return
        got = headers.get("x-api-key")
        auth = headers.get("Authorization") or ""
        if got is None and auth.lower().startswith("bearer "):
            got = auth[7:].strip()
        if got == self.api_key:
            return
        if provider == ANTHROPIC:
            if got is None:
                raise _HTTPError(401, _anthropic_error(401, "x-api-key header is required"))
            shown = got if self.echo_key else "***"
            raise _HTTPError(401, _anthropic_error(401, f"invalid x-api-key {shown}".replace(" ***", "")))
        if not got:
            raise _HTTPError(401, _openai_error(
                "You didn't provide an API key. You need to provide your API key in an Authorization "
                "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                "invalid_request_error", None))
        shown = got if self.echo_key else (got[:3] + "*" * max(0, len(got) - 7) + got[-4:] if len(got) > 8 else "***")
        raise _HTTPError(401, _openai_error(
            f"Incorrect API key provided: {shown}. You can find your API key at "
            "https://platform.openai.com/account/api-keys.", "invalid_request_error", "invalid_api_key"))

    def handle(self, method: str, path: str, headers: Any, raw: bytes) -> tuple[int, dict[str, str], bytes, str]:
        """Answer one request: (status, headers, body, label). Raises _Hang/_Reset."""
        path = path.split("?", 1)[0].rstrip("/") or "/"
        provider = ANTHROPIC if path.startswith("/v1/messages") else OPENAI
        p = path if path.startswith("/v1/") or provider == ANTHROPIC else "/v1" + path
        label = _route_label(method, p)
        with self._lock:
            self.requests[label] += 1
        extra: dict[str, str] = {}
        kind = provider
        try:
            if self.down:
                if self.down_mode == "reset":
                    raise _Reset()
                raise _HTTPError(503, _error_body(provider, 503, "The service is temporarily unavailable (down)."))
            self._auth(provider, headers)
            body: Any = None
            if method == "POST" and "multipart/form-data" not in headers.get("Content-Type", ""):
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    raise _HTTPError(400, _error_body(provider, 400, "We could not parse the JSON body of your request.")) from None
                if not isinstance(body, dict):
                    raise _HTTPError(400, _error_body(provider, 400, "The request body must be a JSON object."))
                with self._lock:
                    self.bodies.append((label, body))
            if provider == ANTHROPIC and headers.get("anthropic-version") is None:
                raise _HTTPError(400, _anthropic_error(400, "anthropic-version: header is required"))
            out: Any
            if label == "POST /v1/chat/completions":
                if body.get("stream"):
                    raise _HTTPError(400, _openai_error("this test server does not stream", "invalid_request_error", None, "stream"))
                out, ans = self._openai_chat(body, raw, label)
                self._count(OPENAI, 200, Served(1, ans.prompt_tokens, ans.completion_tokens, ans.cached_tokens))
            elif label == "POST /v1/messages":
                if body.get("stream"):
                    raise _HTTPError(400, _anthropic_error(400, "this test server does not stream"))
                out, ans = self._anthropic_message(body, raw, label)
                self._count(ANTHROPIC, 200, Served(1, ans.prompt_tokens, ans.completion_tokens, ans.cached_tokens))
            elif label == "POST /v1/files":
                kind = "files"
                out = self._upload(headers, raw)
            elif label == "GET /v1/files/{id}":
                kind = "files"
                with self._lock:
                    out = self._files.get(p.rsplit("/", 1)[1])
                if out is None:
                    raise _HTTPError(404, _openai_error("No such File object", "invalid_request_error"))
            elif label == "GET /v1/files/{id}/content":
                kind = "files"
                with self._lock:
                    data = self._file_data.get(p.split("/")[3])
                if data is None:
                    raise _HTTPError(404, _openai_error("No such File object", "invalid_request_error"))
                with self._lock:
                    self.statuses[(label, 200)] += 1
                return 200, {"Content-Type": "application/octet-stream"}, data, label
            elif label == "POST /v1/batches":
                kind = "batches"
                out = self._create_batch(body)
            elif label == "GET /v1/batches/{id}":
                kind = "batches"
                out = self._poll_batch(p.rsplit("/", 1)[1])
            elif label == "POST /v1/batches/{id}/cancel":
                kind = "batches"
                out = self._cancel_batch(p.split("/")[3])
            elif label == "POST /v1/messages/batches":
                kind = "batches"
                out = self._create_msg_batch(body)
            elif label == "GET /v1/messages/batches/{id}":
                kind = "batches"
                out = self._poll_msg_batch(p.rsplit("/", 1)[1])
            elif label == "POST /v1/messages/batches/{id}/cancel":
                kind = "batches"
                out = self._cancel_msg_batch(p.split("/")[4])
            elif label == "GET /v1/messages/batches/{id}/results":
                kind = "batches"
                data = self._msg_batch_results(p.split("/")[4])
                with self._lock:
                    self.statuses[(label, 200)] += 1
                return 200, {"Content-Type": "application/binary"}, data, label
            else:
                raise _HTTPError(404, _error_body(provider, 404, f"Invalid URL ({method} {path})"))
            status = 200
        except _HTTPError as e:
            if kind in (OPENAI, ANTHROPIC) and label in ("POST /v1/chat/completions", "POST /v1/messages"):
                self._count(kind, e.status)
            status, out, extra = e.status, e.body, dict(e.headers)
        except _Hang:
            self._count(kind, 0)
            with self._lock:
                self.statuses[(label, 0)] += 1
            raise
        except _Reset:
            with self._lock:
                self.statuses[(label, 0)] += 1
            raise
        with self._lock:
            self.statuses[(label, status)] += 1
        headers_out = {"Content-Type": "application/json"}
        if label in ("POST /v1/chat/completions", "POST /v1/messages"):
            headers_out.update(self._limit_headers(provider))
        headers_out.update(extra)
        rid = "req_" + uuid.uuid4().hex[:24]
        headers_out["request-id" if provider == ANTHROPIC else "x-request-id"] = rid
        return status, headers_out, json.dumps(out).encode(), label


def _route_label(method: str, path: str) -> str:
    parts = path.strip("/").split("/")
    # /v1/files/{id}, /v1/batches/{id}/cancel, /v1/messages/batches/{id}/results ...
    if len(parts) >= 3 and parts[1] in ("files", "batches"):
        parts[2] = "{id}"
    if len(parts) >= 4 and parts[1] == "messages" and parts[2] == "batches":
        parts[3] = "{id}"
    return f"{method} /" + "/".join(parts)


def _text_of(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out = []
        for block in content:
            if isinstance(block, dict):
                if isinstance(block.get("text"), str):
                    out.append(block["text"])
                elif "content" in block:
                    out.append(_text_of(block["content"]))
            elif isinstance(block, str):
                out.append(block)
        return "\n".join(out)
    return str(content)


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


class _Handler(BaseHTTPRequestHandler):
    srv: ProviderServer
    protocol_version = "HTTP/1.1"
    server_version = "corral-provider-server"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence
        pass

    def _body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _serve(self, method: str) -> None:
        raw = self._body()
        try:
            status, headers, body, _ = self.srv.handle(method, self.path, self.headers, raw)
        except _Hang:
            self.srv._sleep(float(self.srv.hang_s))
            self.close_connection = True
            return
        except _Reset:
            self.close_connection = True
            return
        except Exception as e:  # a bug in the server: say so as a 500 in OpenAI's shape
            status, headers = 500, {"Content-Type": "application/json"}
            body = json.dumps(_openai_error(f"test server bug: {type(e).__name__}: {e}", "server_error")).encode()
        try:
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def do_POST(self) -> None:  # noqa: N802
        self._serve("POST")

    def do_GET(self) -> None:  # noqa: N802
        self._serve("GET")

    def do_DELETE(self) -> None:  # noqa: N802
        self._serve("DELETE")


#: what Anthropic's structured outputs refuse in ``output_config.format.schema``
_REFUSED_IN_FORMAT = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf",
                      "minLength", "maxLength", "maxItems", "uniqueItems", "minProperties", "maxProperties")


def _refused_keyword(s: Any) -> tuple[str, str] | None:
    """The (type, keyword) of the first refused keyword in a schema, or ``None``."""
    if isinstance(s, list):
        return next((got for x in s if (got := _refused_keyword(x)) is not None), None)
    if not isinstance(s, dict):
        return None
    for k in _REFUSED_IN_FORMAT:
        if k in s:
            return (str(s.get("type", "value")), k)
    return next((got for v in s.values() if (got := _refused_keyword(v)) is not None), None)
