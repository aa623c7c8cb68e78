"""Postgres store URLs (``postgresql://USER:PASSWORD@HOST:PORT/DATABASE``): telling one from a
store file's path, bringing one back whole after ``pathlib.Path`` folded its ``//``, and its
password masked for anything shown or kept (logs, summaries, error messages, the run spec)."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

SCHEMES = ("postgresql", "postgres")
_URL = re.compile(r"^(postgres(?:ql)?):/*(.*)$", re.DOTALL)
_SECRET_PARAMS = {"password", "passfile", "sslpassword"}
MASK = "***"


def is_url(store: str | Path | None) -> bool:
    """Whether ``store`` names a Postgres store (a ``postgresql://`` or ``postgres://`` URL),
    as typed or as ``Path()`` left it (``postgresql:/...``)."""
    return store is not None and _URL.match(str(store)) is not None


def whole(store: str | Path) -> str:
    """The URL as typed: ``Path("postgresql://h/db")`` reads ``postgresql:/h/db``; the ``//``
    goes back. (``postgresql:///db``, with no host, does not survive a Path: give a host.)"""
    text = str(store)
    m = _URL.match(text)
    if m is None:
        return text
    if text.startswith(m.group(1) + "://"):
        return text
    return f"{m.group(1)}://{m.group(2)}"


def masked(store: str | Path) -> str:
    """The URL with its password (in the user part or the query) replaced by ``***``; a path
    as it is."""
    if not is_url(store):
        return str(store)
    parts = urlsplit(whole(store))
    netloc = parts.netloc
    if "@" in netloc:
        user, _, host = netloc.rpartition("@")
        if ":" in user:
            user = user.split(":", 1)[0] + ":" + MASK
        netloc = f"{user}@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, MASK if k.lower() in _SECRET_PARAMS else v) for k, v in pairs], safe="*/")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def password(store: str | Path) -> str | None:
    """The URL's password, to strip it from a driver's error message."""
    parts = urlsplit(whole(store))
    if parts.password:
        return unquote(parts.password)
    for k, v in parse_qsl(parts.query):
        if k.lower() == "password" and v:
            return v
    return None


def where(store: str | Path) -> str:
    """``HOST:PORT`` (or the socket folder) the URL points at, for an error message."""
    parts = urlsplit(whole(store))
    query = dict(parse_qsl(parts.query))
    host = parts.hostname or query.get("host") or "localhost"
    try:
        port = parts.port or query.get("port") or 5432
    except ValueError:
        port = "?"
    return f"{host}:{port}"
