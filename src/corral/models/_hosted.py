"""The provider boundary the hosted adapters (``openai:``, ``anthropic:``) share, written once.

- one SDK client per event loop, built with the SDK's retries off (the engine retries);
- every SDK error becomes Corral's in one place: :meth:`HostedModel._guarded` runs a call and
  translates what the SDK raises, :meth:`HostedModel._status_error` is the ladder of HTTP
  statuses both providers share, and each adapter's :meth:`HostedModel._special_error` keeps
  only its own cases (OpenAI's ``insufficient_quota``, Anthropic's 402...);
- rate-limit headers are observed from every answer and every error;
- the checks every batch's items pass, and a batch's ``request_counts`` as counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import functools
import importlib
import importlib.util
import os
import time
from abc import abstractmethod
from collections.abc import Awaitable, Iterator
from typing import Any, TypeVar

from pydantic import Field, field_validator

from corral.errors import (
    AuthenticationError,
    ModelError,
    ModelNotFoundError,
    PermanentModelError,
    RateLimited,
    TransientModelError,
)
from corral.models._keys import Secret, base_url_tag, find_key, redact, shown_keys_file
from corral.models._options import ModelOptions
from corral.models._prices import Price, price_for
from corral.models.base import Model, Request

__all__ = [
    "HostedModel", "HostedOptions", "batch_counts", "rate_limit_headers", "retry_after", "retryable",
    "unreachable",
]

T = TypeVar("T")

_LIMIT_PREFIXES = ("x-ratelimit-", "anthropic-ratelimit-", "retry-after")


def rate_limit_headers(headers: Any) -> dict[str, str]:
    """The rate-limit headers of a response (``x-ratelimit-*``, ``anthropic-ratelimit-*``,
    ``retry-after``, ``retry-after-ms``), lower-cased, as strings."""
    if headers is None:
        return {}
    out: dict[str, str] = {}
    try:
        items = headers.items()
    except AttributeError:
        return {}
    for k, v in items:
        name = str(k).lower()
        if name.startswith(_LIMIT_PREFIXES):
            out[name] = str(v)
    return out


def retry_after(headers: Any) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date)."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError, IndexError):
        return None


def unreachable(e: BaseException) -> str:
    """Why a connection failed, in words: the deepest OS error under the SDK's (``connection
    refused``, ``name or service not known``), else the innermost exception's text."""
    seen: list[BaseException] = []
    cur: BaseException | None = e
    while cur is not None and cur not in seen:
        seen.append(cur)
        cur = cur.__cause__ or cur.__context__
    for err in reversed(seen):
        if isinstance(err, OSError) and (err.errno or err.strerror):
            # errno's own words ("Connection refused"); DNS errors have negative codes and words
            text = os.strerror(err.errno) if err.errno and err.errno > 0 else str(err.strerror)
            return text[:1].lower() + text[1:]
    inner = seen[-1] if len(seen) > 1 else None
    return f"{type(inner).__name__}: {inner}" if inner is not None else str(e)


def batch_counts(request_counts: Any) -> dict[str, int]:
    """A batch's ``request_counts`` (an SDK model or a mapping) as ``{name: count}``."""
    if request_counts is None:
        return {}
    if hasattr(request_counts, "model_dump"):
        raw = request_counts.model_dump()
    else:
        raw = dict(request_counts)
    return {str(k): int(v or 0) for k, v in raw.items() if isinstance(v, (int, type(None)))}


def retryable(status: int) -> bool:
    """Whether an HTTP status is worth retrying: a timeout (408), a conflict (409), a 5xx."""
    return status in (408, 409) or status >= 500


class HostedOptions(ModelOptions):
    """The options every hosted model takes."""

    base_url: str | None = Field(
        None, description="the server; default the SDK's environment variable, else the provider's"
    )
    api_key: str | None = Field(
        None, repr=False, description="the API key; prefer the environment or the keys file"
    )
    api_key_env: str = Field("", description="the environment variable the key is read from")
    timeout: float = Field(60.0, description="seconds the HTTP client waits for one answer")
    prices: dict[str, Any] | None = Field(
        None, description="USD per million tokens, overriding the price table"
    )
    max_concurrency: int = Field(1024, description="calls in flight the engine may allow")
    context_window: int | None = Field(None, description="the model's context window in tokens")
    supports_batch: bool = Field(True, description="whether the server has the provider's batch API")
    headers: dict[str, str] | None = Field(
        None, repr=False, description="extra HTTP headers sent with every call"
    )

    @field_validator("api_key", mode="before")
    @classmethod
    def _key_as_text(cls, v: Any) -> Any:
        # a key of digits is read by YAML as a number
        return str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v

    @field_validator("timeout")
    @classmethod
    def _positive_timeout(cls, v: float) -> float:
        if v <= 0:
            raise ValueError("timeout must be a positive number of seconds")
        return v

    @field_validator("max_concurrency")
    @classmethod
    def _some_concurrency(cls, v: int) -> int:
        if v < 1:
            raise ValueError("max_concurrency must be at least 1")
        return v


#: calls in flight one SDK client carries. On every request it hands out and every one that
#: ends, the HTTP pool under the SDK (httpcore) walks all of its connections, probing each idle
#: one's socket: one client carrying 150 calls in flight spent more CPU on that walk than on the
#: call, and capping its idle connections to save the walk made it reconnect a call in three
#: (bench/peers, 200 ms). So a model's calls are spread over as many clients as its calls in
#: flight need, each with at most this many connections, all of them kept alive.
SHARD_CALLS = 32


@functools.cache
def http_module() -> Any:
    """The HTTP client library the SDKs are built on: httpx2 (openai 3, anthropic 2), else httpx
    (looked up once: every OpenAI call names its response class)."""
    try:
        return importlib.import_module("httpx2")
    except ImportError:
        return importlib.import_module("httpx")


@functools.cache
def _tls() -> Any:
    """The TLS context every SDK client shares: building one reads the CA bundle (90 ms here)."""
    return http_module().create_ssl_context()


def pool_options() -> dict[str, Any]:
    """The HTTP client options of one SDK client: a pool of :data:`SHARD_CALLS` connections,
    all kept alive, and the shared TLS context."""
    return {
        "limits": http_module().Limits(max_connections=SHARD_CALLS, max_keepalive_connections=SHARD_CALLS),
        "verify": _tls(),
    }


class _Clients:
    """The SDK clients a model's calls share (all on one event loop), and the calls each carries."""

    def __init__(self, first: Any, most: int) -> None:
        self.sdks = [first]
        self.load = [0]
        self.most = max(1, most)
        self.loop = asyncio.get_running_loop()


class HostedModel(Model):
    """A model behind an HTTP API whose official SDK Corral drives (retries off: the engine's).

    A subclass names its SDK (:attr:`sdk_module`, :attr:`sdk_error`), builds its client
    (:meth:`_new_sdk`) and says what its provider's errors mean beyond the shared ladder
    (:meth:`_special_error`, :meth:`_detail`)."""

    #: the provider's name: the model name's prefix and the keys file's entry
    provider: str = ""
    #: the SDK's module, imported when first needed (``openai``, ``anthropic``)
    sdk_module: str = ""
    #: how to install the SDK (named when it is missing)
    install_hint: str = ""
    #: the name of the SDK's base exception class in that module
    sdk_error: str = ""
    #: the environment variable the key was looked up in (named in the 401 message)
    api_key_env: str = ""
    #: seconds the HTTP client waits for an answer
    timeout: float = 60.0

    def __init__(self) -> None:
        #: the latest rate-limit and ``retry-after`` headers (lower-case name -> value)
        self.rate_limits: dict[str, str] = {}
        #: ``time.time()`` when :attr:`rate_limits` was last updated
        self.rate_limits_at: float | None = None
        self._key: Secret | None = None
        self._clients: _Clients | None = None

    @abstractmethod
    def _new_sdk(self) -> Any:
        """A new async SDK client (built on the running event loop), its HTTP client built with
        :func:`pool_options`."""

    def _configure(
        self, arg: str | None, options: HostedOptions, default_url: str, url_env: str, key_required: bool
    ) -> None:
        """Set what every hosted model has from its options: name, server, key, id, timeout,
        price and headers. The id names a server other than the provider's by a hash of its URL
        (which may hold credentials)."""
        self.name = str(arg).strip()
        url = options.base_url or os.environ.get(url_env) or default_url
        self.base_url = url.strip().rstrip("/")
        self.api_key_env = options.api_key_env
        self._key = find_key(self.provider, options.api_key, options.api_key_env, required=key_required)
        own = self.base_url == default_url
        self.id = f"{self.provider}:{self.name}" + ("" if own else f"@{base_url_tag(self.base_url)}")
        self.timeout = options.timeout
        self.price: Price | None = (
            Price.parse(options.prices, where="prices")
            if options.prices is not None
            else price_for(self.provider, self.name)
        )
        self.headers = dict(options.headers or {})

    @classmethod
    def _named(cls, arg: str | None, example: str) -> str:
        """The model name after ``PROVIDER:``, once the SDK is known to be installed."""
        if importlib.util.find_spec(cls.sdk_module) is None:
            raise ModelNotFoundError(
                f"the {cls.provider} model needs the {cls.sdk_module} package; run: {cls.install_hint}"
            )
        if not arg or not str(arg).strip():
            raise ModelNotFoundError(
                f"name the model after `{cls.provider}:`, e.g. `{cls.provider}:{example}`"
            )
        return str(arg).strip()

    def _api_key(self) -> str | None:
        """The key itself, for the SDK client only."""
        return self._key.get() if self._key is not None else None

    def _shards(self) -> _Clients:
        loop = asyncio.get_running_loop()
        if self._clients is None or self._clients.loop is not loop:  # a client belongs to its loop
            most = -(-self.capabilities.max_concurrency // SHARD_CALLS)
            self._clients = _Clients(self._new_sdk(), most)
        return self._clients

    def _client(self) -> Any:
        """An SDK client, for calls outside the run's stream of completions (batch files)."""
        return self._shards().sdks[0]

    @contextlib.contextmanager
    def _calling(self) -> Iterator[Any]:
        """The SDK client with the fewest calls in flight, held for one call; a new one when
        every client carries :data:`SHARD_CALLS` (up to what ``max_concurrency`` needs)."""
        c = self._shards()
        i = min(range(len(c.load)), key=c.load.__getitem__)
        if c.load[i] >= SHARD_CALLS and len(c.sdks) < c.most:
            c.sdks.append(self._new_sdk())
            c.load.append(0)
            i = len(c.load) - 1
        c.load[i] += 1
        try:
            yield c.sdks[i]
        finally:
            c.load[i] -= 1

    async def aclose(self) -> None:
        c, self._clients = self._clients, None
        if c is not None and c.loop is asyncio.get_running_loop():
            for sdk in c.sdks:
                await sdk.close()

    def _observe(self, headers: Any) -> None:
        found = rate_limit_headers(headers)
        if found:
            self.rate_limits = found
            self.rate_limits_at = time.time()

    # --- the error boundary ------------------------------------------------------------------

    def _sdk_mod(self) -> Any:
        return importlib.import_module(self.sdk_module)

    async def _guarded(self, call: Awaitable[T]) -> T:
        """Await ``call``; an SDK error it raises comes out as Corral's (:meth:`_translate`).

        The one place where SDK errors are not chained to Corral's: ours is raised after the
        ``except`` block has ended, so it carries no ``__context__``. The SDK's exception text may
        quote the key and its request holds it; neither may reach a trace or a log."""
        sdk_error: type[BaseException] = getattr(self._sdk_mod(), self.sdk_error)
        failure: ModelError | None = None
        try:
            return await call
        except sdk_error as e:
            failure = self._translate(e)
        raise failure

    def _say(self, text: str) -> str:
        """``text`` as it may be shown: without the key or anything shaped like one."""
        return redact(text, self._key)

    def _where(self) -> str:
        """The model, as messages name it."""
        return self.id

    def _translate(self, e: BaseException) -> ModelError:
        """An SDK error as Corral's: timeouts and connection errors, then HTTP statuses (the
        adapter's own cases first, then :meth:`_status_error`)."""
        sdk = self._sdk_mod()
        where = self._where()
        if isinstance(e, sdk.APITimeoutError):
            return TransientModelError(self._say(f"{where}: no answer within {self.timeout:g} s (timeout)"))
        if isinstance(e, sdk.APIConnectionError):
            return TransientModelError(self._say(f"{where}: cannot reach the server ({unreachable(e)})"))
        if isinstance(e, sdk.APIStatusError):
            headers = e.response.headers if e.response is not None else None
            self._observe(headers)
            detail = self._detail(e)
            rid = getattr(e, "request_id", None)
            tail = f" (request {rid})" if rid else ""
            special = None if e.status_code == 401 else self._special_error(e, e.status_code, detail, tail)
            return special or self._status_error(e.status_code, detail, headers, rid)
        return PermanentModelError(self._say(f"{where}: {type(e).__name__}: {e}"))

    def _detail(self, e: Any) -> str:
        """The provider's own words in an error response."""
        return str(getattr(e, "message", "") or e)

    def _special_error(self, e: Any, status: int, detail: str, tail: str) -> ModelError | None:
        """The adapter's own reading of an error response, ahead of the shared ladder (``None``:
        the ladder decides). ``tail`` names the request id for the message."""
        return None

    def _status_error(
        self, status: int, detail: str, headers: Any, request_id: str | None
    ) -> ModelError:
        """The ladder of HTTP statuses every provider shares: 401 is the key, 429 a rate limit
        (with the server's ``retry-after``), 408/409/5xx worth retrying, 404 the model name or
        the URL, anything else a rejected request."""
        where = self._where()
        tail = f" (request {request_id})" if request_id else ""
        if status == 401:
            env = self.api_key_env
            return AuthenticationError(self._say(
                f"{where} rejected the API key (401: {detail}); set {env} to a valid key "
                f"(export {env}=...), pass the model's api_key option, or add it to "
                f'{shown_keys_file()} as {{"{self.provider}": "..."}}'
            ))
        if status == 429:
            return RateLimited(
                self._say(f"{where}: rate limited (429: {detail}){tail}"), retry_after=retry_after(headers)
            )
        if retryable(status):
            return TransientModelError(self._say(f"{where}: server error {status}: {detail}{tail}"))
        if status == 404:
            return PermanentModelError(self._say(
                f"{where}: not found (404: {detail}); check the model name and base_url{tail}"
            ))
        return PermanentModelError(self._say(f"{where}: request rejected ({status}: {detail}){tail}"))

    # --- batches -----------------------------------------------------------------------------

    def _check_batch(self, items: list[tuple[str, Request]], api: str, most: int) -> None:
        """Refuse a batch the provider would: empty, too many items, or custom ids that are not
        distinct non-empty strings."""
        if not items:
            raise PermanentModelError(f"{self.id}: a batch needs at least one request")
        if len(items) > most:
            raise PermanentModelError(
                f"{self.id}: {len(items)} requests in one batch; the {api} takes at most {most}"
            )
        seen: set[str] = set()
        for custom_id, _ in items:
            if not isinstance(custom_id, str) or not custom_id:
                raise PermanentModelError(f"{self.id}: a batch custom_id must be a non-empty string")
            if custom_id in seen:
                raise PermanentModelError(f"{self.id}: custom_id {custom_id!r} appears twice in one batch")
            seen.add(custom_id)

    def _check_batch_size(self, size: int, api: str, most: int) -> None:
        """Refuse a batch of more bytes than the provider takes."""
        if size > most:
            raise PermanentModelError(
                f"{self.id}: the batch is {size} bytes; the {api} takes at most {most} bytes: "
                "split it into smaller batches"
            )
