"""Durable state of runs. ``open_store()`` picks the store from a path or the environment."""

from __future__ import annotations

import os
from pathlib import Path

from corral.store.base import Store
from corral.store.sqlite import SQLiteStore

__all__ = ["Store", "SQLiteStore", "open_store", "default_store_path", "STORE_ENV"]

STORE_ENV = "CORRAL_STORE"


def default_store_path() -> Path:
    """``$CORRAL_STORE`` if set, else ``.corral/corral.db`` in the working directory."""
    env = os.environ.get(STORE_ENV)
    return Path(env) if env else Path(".corral") / "corral.db"


def open_store(path: str | Path | None = None, *, create: bool = True, check: bool = True) -> Store:
    """The store at ``path`` (default: :func:`default_store_path`).

    ``create=True``: a missing store is created, with its folders, at its first method call (not
    here: a run that fails before writing leaves nothing behind). ``create=False``: the store
    must exist, else StoreError ``no store at PATH``; for commands that only read. An existing
    store is checked for damage (``check``) and migrated now. Methods raise StoreError, with
    the fix in its message, when the store turns out damaged, locked too long or out of disk.
    """
    return SQLiteStore(path if path is not None else default_store_path(), create=create, check=check)
