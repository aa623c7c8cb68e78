"""What the hosted providers share: API keys (kept out of every message), prices, headers.

Keys are found in this order, first match wins:

1. the model's ``api_key`` option (``OpenAIModel("gpt-4o-mini", api_key=...)``);
2. the provider's environment variable (``OPENAI_API_KEY``, ``ANTHROPIC_API_KEY``, or the
   model's ``api_key_env`` option);
3. the keys file: ``$CORRAL_KEYS_FILE``, else ``$XDG_CONFIG_HOME/corral/keys.json``, else
   ``~/.config/corral/keys.json``, a JSON object such as ``{"openai": "sk-...", "anthropic": "..."}``.

A key is held in a :class:`Secret`, whose ``repr`` and ``str`` never show it, and :func:`redact`
scrubs it (and anything shaped like a provider key) from text before it reaches an exception.
"""

from __future__ import annotations

import json
import os
import re
from decimal import Decimal, InvalidOperation
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from corral.errors import ModelNotFoundError, PermanentModelError

try:  # the engine stops a run on this class; it lives in corral.errors when available
    from corral.errors import AuthenticationError
except ImportError:  # pragma: no cover - older corral.errors

    class AuthenticationError(PermanentModelError):  # type: ignore[no-redef]
        """The provider refused the API key (401). Every row would fail, so the run stops."""


__all__ = [
    "AuthenticationError",
    "Secret",
    "find_key",
    "keys_file",
    "shown_keys_file",
    "redact",
    "Price",
    "price_for",
    "base_url_tag",
    "rate_limit_headers",
    "retry_after",
]

KEYS_FILE_ENV = "CORRAL_KEYS_FILE"


class Secret:
    """A string that never shows itself: ``repr``/``str`` print ``<redacted>``."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('<redacted>')"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)

    def __reduce__(self) -> Any:  # never pickled with its value
        raise TypeError("a Secret cannot be pickled")


def keys_file() -> Path:
    """Where the keys file is looked for."""
    explicit = os.environ.get(KEYS_FILE_ENV)
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CONFIG_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".config"
    return base / "corral" / "keys.json"


def shown_keys_file() -> str:
    """:func:`keys_file` as shown in messages (``~/...`` under the home folder)."""
    return _shown(keys_file())


def _shown(path: Path) -> str:
    try:
        return "~/" + str(path.relative_to(Path.home()))
    except ValueError:
        return str(path)


def _from_file(provider: str) -> str | None:
    path = keys_file()
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ModelNotFoundError(f"cannot read the keys file {_shown(path)}: {e.strerror}") from None
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as e:  # never echo the file's content: it holds keys
        raise ModelNotFoundError(
            f"the keys file {_shown(path)} is not valid JSON (line {e.lineno}); "
            'it must be an object such as {"openai": "sk-...", "anthropic": "sk-ant-..."}'
        ) from None
    if not isinstance(data, dict):
        raise ModelNotFoundError(
            f"the keys file {_shown(path)} must hold a JSON object of provider name to key"
        )
    value = data.get(provider)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ModelNotFoundError(
            f"the keys file {_shown(path)} has a `{provider}` entry that is not a non-empty string"
        )
    return value.strip()


def find_key(
    provider: str, explicit: str | None, env_var: str, *, required: bool = True
) -> Secret | None:
    """The API key for ``provider``: explicit option, then ``env_var``, then the keys file.

    Raises :class:`ModelNotFoundError` (a one-line user error) when ``required`` and none is
    found; returns ``None`` otherwise.
    """
    if explicit is not None and str(explicit).strip():
        return Secret(str(explicit).strip())
    env = os.environ.get(env_var, "").strip()
    if env:
        return Secret(env)
    got = _from_file(provider)
    if got:
        return Secret(got)
    if not required:
        return None
    raise ModelNotFoundError(
        f"no API key for {provider}: set {env_var}, or add it to {_shown(keys_file())} "
        f'as {{"{provider}": "..."}}'
    )


# anything shaped like a provider key: sk-..., sk-proj-..., sk-ant-api03-..., bearer tokens
_KEYISH = re.compile(
    r"\b(?:sk|rk|pk)-[A-Za-z0-9_\-*.]{5,}[A-Za-z0-9_\-*]|\bBearer\s+[A-Za-z0-9_\-.~+/=*]{8,}"
)


def redact(text: str, secret: Secret | None) -> str:
    """``text`` without the key and without anything that looks like a key."""
    if secret is not None:
        value = secret.get()
        if value and len(value) >= 4:
            text = text.replace(value, "<redacted>")
    return _KEYISH.sub("<redacted>", text)


def base_url_tag(url: str) -> str:
    """A short stable hash of a server URL, used in model ids (the URL itself may hold secrets)."""
    import hashlib

    return hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:8]


# --- prices -----------------------------------------------------------------------------------


class Price:
    """USD per million tokens for one model; ``batch_discount`` is the share taken off in batch."""

    __slots__ = ("input", "output", "cached_input", "cache_write", "batch_discount")

    def __init__(
        self,
        input: Decimal,
        output: Decimal,
        cached_input: Decimal | None = None,
        cache_write: Decimal | None = None,
        batch_discount: Decimal = Decimal(0),
    ) -> None:
        self.input = input
        self.output = output
        self.cached_input = input if cached_input is None else cached_input
        self.cache_write = input if cache_write is None else cache_write
        self.batch_discount = batch_discount

    @classmethod
    def parse(cls, data: Any, batch_discount: Any = 0, where: str = "prices") -> Price:
        if not isinstance(data, dict):
            raise ModelNotFoundError(
                f"{where} must be a mapping such as {{input: 0.15, output: 0.60}} "
                "(USD per million tokens)"
            )
        unknown = set(data) - {"input", "output", "cached_input", "cache_write", "batch_discount"}
        if unknown:
            raise ModelNotFoundError(
                f"{where}: unknown key(s) {', '.join(sorted(unknown))}; use input, output, "
                "cached_input, cache_write, batch_discount"
            )
        if "input" not in data or "output" not in data:
            raise ModelNotFoundError(f"{where} needs both `input` and `output` (USD per million tokens)")

        def dec(key: str, default: Any = None) -> Decimal | None:
            v = data.get(key, default)
            if v is None:
                return None
            try:
                d = Decimal(str(v))
            except InvalidOperation:
                raise ModelNotFoundError(f"{where}: `{key}` must be a number, got {v!r}") from None
            if d < 0:
                raise ModelNotFoundError(f"{where}: `{key}` must not be negative")
            return d

        return cls(
            input=dec("input"),  # type: ignore[arg-type]
            output=dec("output"),  # type: ignore[arg-type]
            cached_input=dec("cached_input"),
            cache_write=dec("cache_write"),
            batch_discount=dec("batch_discount", batch_discount) or Decimal(0),
        )

    def cost(
        self,
        uncached_input: int,
        output: int,
        cached_input: int = 0,
        cache_write: int = 0,
        batch: bool = False,
    ) -> Decimal:
        per_m = (
            uncached_input * self.input
            + cached_input * self.cached_input
            + cache_write * self.cache_write
            + output * self.output
        )
        total = per_m / Decimal(1_000_000)
        if batch:
            total *= 1 - self.batch_discount
        return total

    def __repr__(self) -> str:
        return f"Price(input={self.input}, output={self.output}, cached_input={self.cached_input})"


@cache
def _table() -> dict[str, Any]:
    try:
        text = resources.files("corral.models").joinpath("prices.json").read_text(encoding="utf-8")
    except (FileNotFoundError, OSError):  # a broken installation: prices unknown, never 0
        import warnings

        warnings.warn("corral/models/prices.json is missing: every cost is unknown", stacklevel=2)
        return {}
    return json.loads(text)


_DATE_SUFFIX = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{8}|latest)$")


def price_for(provider: str, model: str) -> Price | None:
    """The listed price of ``provider``'s ``model`` (a dated snapshot such as
    ``gpt-4o-mini-2024-07-18`` falls back to its undated name), or ``None`` when unknown."""
    section = _table().get("providers", {}).get(provider)
    if not section:
        return None
    models = section.get("models", {})
    entry = models.get(model)
    if entry is None:
        entry = models.get(_DATE_SUFFIX.sub("", model))
    if entry is None:
        return None
    return Price.parse(entry, section.get("batch_discount", 0), where=f"prices.json {provider}/{model}")


# --- the provider boundary: headers ------------------------------------------------------------

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
        import email.utils
        import time

        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError, IndexError):
        return None
