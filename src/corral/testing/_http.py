"""The test provider server's HTTP side: the server and its handler thread, the faults every
route shares (outages, keys, error rates, hangs), rate limits in sliding windows, the counters
tests compare a run against, and the route table that sends each request to its API.

The APIs themselves are :mod:`corral.testing._openai` and :mod:`corral.testing._anthropic`, on
top of the simulated model of :mod:`corral.testing._answer`; :class:`corral.testing.ProviderServer`
is both APIs on top of :class:`ServerCore`.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, Self

from corral.testing._prompt_cache import PromptCache

__all__ = ["Call", "Route", "Served", "ServerCore"]


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


@dataclass(frozen=True)
class Call:
    """One request, as a route's handler gets it."""

    path: str  # with the /v1 prefix
    id: str  # the path's {id} segment, or ""
    body: Any  # the JSON body of a POST, else None
    headers: Any
    raw: bytes
    label: str  # the route, e.g. ``GET /v1/batches/{id}``


@dataclass(frozen=True)
class Route:
    """What a route is: its handler, the counter kind of its requests (``openai``,
    ``anthropic``, ``files``, ``batches``), and the content type of its answer (the handler
    returns bytes when it is not JSON). A model call's handler returns ``(body, answer)``."""

    handler: Callable[[Any, Call], Any]
    kind: str
    content_type: str = "application/json"

    @property
    def model_call(self) -> bool:
        return self.kind in (OPENAI, ANTHROPIC)


class ServerCore:
    """The server without its APIs: lifecycle, faults, rate limits, counters, routing."""

    # the faults and answers ProviderServer's constructor takes (set by configure)
    latency_s: tuple[float, float]
    rpm: int | None
    tpm: int | None
    rate_window_s: float
    ratelimit_rate: float
    retry_after_s: float
    error_rate: float
    error_codes: tuple[int, ...]
    timeout_rate: float
    hang_s: float
    fail_status: int | None
    fail_message: str | None
    fail_code: str | None
    truncation_rate: float
    refusal_rate: float
    content_filter_rate: float
    malformed_rate: float
    context_window: int | None
    context_exceeded_rate: float
    cache_ratio: float
    prompt_cache: bool
    reasoning_tokens: int
    down: bool
    down_mode: str
    batch_polls: int
    expire_batches: bool
    batch_failure_rate: float
    api_key: str | None
    echo_key: bool
    models: set[str] | None
    supports_json_schema: bool
    answer: Callable[[dict[str, Any], str], Any] | None
    top_logprobs: dict[str, float] | Callable[[dict[str, Any]], dict[str, float]] | None
    seed: int
    #: the routes served: ``"METHOD /v1/path/{id}"`` -> :class:`Route` (each API adds its own)
    routes: ClassVar[dict[str, Route]] = {}

    def _setup(self, host: str, port: int) -> None:
        """The server's state: its lock, address, files, batches and counters."""
        self._lock = threading.RLock()
        self._closing = threading.Event()
        #: answer every `service_tier: flex` call 429 resource_unavailable, as OpenAI does when
        #: flex capacity runs out (a plain attribute: set it at any time)
        self.flex_unavailable = False
        self.host = host
        self.port = port
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._windows = {OPENAI: _Window(), ANTHROPIC: _Window()}
        self._prompt_cache = PromptCache()
        self._seen: Counter[str] = Counter()
        self._files: dict[str, dict[str, Any]] = {}
        self._file_data: dict[str, bytes] = {}
        self._batches: dict[str, dict[str, Any]] = {}
        self._msg_batches: dict[str, dict[str, Any]] = {}
        self.reset_counters()

    def configure(self, **faults: Any) -> Self:
        """Change faults at runtime (``srv.configure(down=True)``); unknown names are an error."""
        known = {k for k, kind in ServerCore.__annotations__.items() if not str(kind).startswith("ClassVar")}
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

    def start(self) -> Self:
        if self._httpd is not None:
            return self
        server: ServerCore = self

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

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = f"{self.host}:{self.port}" if self._httpd is not None else "stopped"
        return f"<ProviderServer {where}>"

    def _dice(self, route: str, body: bytes) -> random.Random:
        digest = hashlib.sha256(route.encode() + b"\0" + body).hexdigest()
        with self._lock:
            self._seen[digest] += 1
            n = self._seen[digest]
        return random.Random(f"{self.seed}:{digest}:{n}")

    def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            self._closing.wait(seconds)

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
        if reqs is not None and self.rpm is not None:
            pairs.append(("requests", int(self.rpm), max(0, int((reqs - n) * per_min)), reset))
        if toks is not None and self.tpm is not None:
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
        """Answer one request through the route table: (status, headers, body, label). Raises
        _Hang/_Reset. The faults every route shares (down, the key, the JSON body) come first."""
        path = path.split("?", 1)[0].rstrip("/") or "/"
        provider = ANTHROPIC if path.startswith("/v1/messages") else OPENAI
        p = path if path.startswith("/v1/") or provider == ANTHROPIC else "/v1" + path
        label = _route_label(method, p)
        with self._lock:
            self.requests[label] += 1
        route = self.routes.get(label)
        kind = provider if route is None else route.kind
        extra: dict[str, str] = {}
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
            if route is None:
                raise _HTTPError(404, _error_body(provider, 404, f"Invalid URL ({method} {path})"))
            segments = label.split(" ", 1)[1].split("/")
            ident = p.split("/")[segments.index("{id}")] if "{id}" in segments else ""
            out = route.handler(self, Call(p, ident, body, headers, raw, label))
            if route.model_call:
                out, ans = out
                self._count(kind, 200, Served(1, ans.prompt_tokens, ans.completion_tokens, ans.cached_tokens))
            if route.content_type != "application/json":  # the handler's bytes as they are
                with self._lock:
                    self.statuses[(label, 200)] += 1
                return 200, {"Content-Type": route.content_type}, out, label
            status = 200
        except _HTTPError as e:
            if route is not None and route.model_call:
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
        if route is not None and route.model_call:
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




class _Handler(BaseHTTPRequestHandler):
    srv: ServerCore
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
