"""API keys for the hosted providers, kept out of every message.

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
from pathlib import Path
from typing import Any

from corral.errors import ModelConfigError

__all__ = ["Secret", "find_key", "keys_file", "shown_keys_file", "redact", "base_url_tag"]

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
        raise ModelConfigError(f"cannot read the keys file {_shown(path)}: {e.strerror}") from None
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as e:  # never echo the file's content: it holds keys
        raise ModelConfigError(
            f"the keys file {_shown(path)} is not valid JSON (line {e.lineno}); "
            'it must be an object such as {"openai": "sk-...", "anthropic": "sk-ant-..."}'
        ) from None
    if not isinstance(data, dict):
        raise ModelConfigError(
            f"the keys file {_shown(path)} must hold a JSON object of provider name to key"
        )
    value = data.get(provider)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ModelConfigError(
            f"the keys file {_shown(path)} has a `{provider}` entry that is not a non-empty string"
        )
    return value.strip()


def find_key(
    provider: str, explicit: str | None, env_var: str, *, required: bool = True
) -> Secret | None:
    """The API key for ``provider``: explicit option, then ``env_var``, then the keys file.

    Raises :class:`ModelConfigError` (a one-line user error) when ``required`` and none is
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
    raise ModelConfigError(
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
