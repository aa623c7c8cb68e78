"""Durable state of runs. ``open_store()`` picks the store from a path or a Postgres URL, or the
environment (``CORRAL_STORE``)."""

from __future__ import annotations

import os
from pathlib import Path

from corral.store._url import is_url, masked
from corral.store.base import Store
from corral.store.sqlite import SQLiteStore

__all__ = [
    "Store", "SQLiteStore", "open_store", "default_store_path", "store_path_near", "STORE_ENV",
    "PROJECT_MARKERS", "is_store_url", "shown_store", "scratch_folder",
]

#: whether a ``--store`` / ``CORRAL_STORE`` value is a Postgres URL (``postgresql://...``)
is_store_url = is_url
#: a store's path, or its URL with the password masked: what messages and summaries show
shown_store = masked

STORE_ENV = "CORRAL_STORE"
#: what marks a project's root folder, where a job's store goes when none exists yet
PROJECT_MARKERS = (".git", ".hg", "pyproject.toml")
_STORE = Path(".corral") / "corral.db"


def _existing_above(folder: Path) -> Path | None:
    for f in (folder, *folder.parents):
        if (f / _STORE).is_file():
            return f / _STORE
    return None


def store_path_near(folder: str | Path) -> Path:
    """The store of a job whose file is in ``folder``: ``$CORRAL_STORE`` if set; else the first
    ``.corral/corral.db`` that exists in ``folder`` or a folder above it; else
    ``.corral/corral.db`` in the first of those folders that is a project's root (has ``.git``,
    ``.hg`` or ``pyproject.toml``); else in ``folder``. So the same job finds the same store
    whichever folder it is run from."""
    env = os.environ.get(STORE_ENV)
    if env:
        return Path(env)  # a URL too: open_store() reads it whole again
    start = Path(folder).resolve()
    found = _existing_above(start)
    if found is not None:
        return found
    for f in (start, *start.parents):
        if any((f / m).exists() for m in PROJECT_MARKERS):
            return f / _STORE
    return start / _STORE


def default_store_path() -> Path:
    """The store of the commands that have no job file (``runs``, ``status``, ``show``,
    ``export``): ``$CORRAL_STORE`` if set; else the first ``.corral/corral.db`` in the working
    directory or a folder above it; else ``.corral/corral.db`` here (which they report missing)."""
    env = os.environ.get(STORE_ENV)
    if env:
        return Path(env)
    found = _existing_above(Path.cwd().resolve())
    if found is None:
        return _STORE
    try:
        return found.relative_to(Path.cwd().resolve())
    except ValueError:
        return found


def scratch_folder(store: Path, base_dir: Path) -> Path:
    """Where a command keeps files of its own beside the store (calibration samples, eval
    copies): the store file's folder; for a Postgres store, ``.corral`` in ``base_dir`` (the
    job's folder), never a folder named after the URL."""
    return base_dir / ".corral" if is_url(store) else store.resolve().parent


def open_store(path: str | Path | None = None, *, create: bool = True, check: bool = True) -> Store:
    """The store at ``path`` (default: :func:`default_store_path`): a
    :class:`~corral.store.postgres.PostgresStore` for a ``postgresql://`` or ``postgres://`` URL
    (also as ``Path()`` leaves one), else an SQLite file.

    ``create=True``: a missing store is created, with its folders, at its first method call (not
    here: a run that fails before writing leaves nothing behind). ``create=False``: the store
    must exist, else StoreError ``no store at PATH``; for commands that only read. An existing
    store is checked for damage (``check``) and migrated now. Methods raise StoreError, with
    the fix in its message, when the store turns out damaged, locked too long or out of disk.
    """
    where = path if path is not None else default_store_path()
    if is_url(where):
        from corral.store.postgres import PostgresStore  # psycopg only where it is used

        return PostgresStore(str(where), create=create, check=check)
    return SQLiteStore(where, create=create, check=check)
