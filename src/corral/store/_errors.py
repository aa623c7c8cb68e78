"""SQLite errors as StoreErrors that say what to do: a damaged file, a lock held too long by
another process, a full disk, a file the process may not write."""

from __future__ import annotations

import functools
import inspect
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from corral.errors import StoreError

# SQLite primary result codes (the low byte of ``sqlite_errorcode``) that say what went wrong
_DAMAGED = {11, 26}  # SQLITE_CORRUPT, SQLITE_NOTADB
BUSY = {5, 6}  # SQLITEBUSY, SQLITE_LOCKED
_DISK = {10, 13}  # SQLITE_IOERR, SQLITE_FULL
_ACCESS = {3, 8, 14, 23}  # SQLITE_PERM, READONLY, CANTOPEN, AUTH

DAMAGED_FIX = (
    "restore the file from a backup, or move it away (or point --store / CORRAL_STORE at another "
    "file) to start a new store; resuming its runs needs a good copy of this file"
)


def store_error(path: Path, e: sqlite3.DatabaseError, opening: bool, busy_s: float) -> StoreError:
    """The one-line StoreError, with its fix, for an SQLite error met opening or using a store."""
    lead = f"cannot open the store at {path}" if opening else f"cannot use the store at {path}"
    code = (getattr(e, "sqlite_errorcode", None) or 0) & 0xFF
    if code in _DAMAGED or "malformed" in str(e):
        return StoreError(f"{lead}: it is damaged ({e}) — {DAMAGED_FIX}")
    if code in BUSY:
        return StoreError(
            f"{lead}: another process kept it locked for over {busy_s:g} s ({e}) — let that "
            "process finish (or stop it), then run the command again"
        )
    if code in _DISK:
        what = "the disk is full" if code == 13 else f"a disk error ({e})"
        return StoreError(f"{lead}: {what} — free some space (or check the disk), then run again; finished work is kept")
    if code in _ACCESS:
        return StoreError(
            f"{lead}: {e} — point --store (or CORRAL_STORE) at a file you can write, or fix the "
            "permissions of this one and of its folder"
        )
    return StoreError(f"{lead}: {e} — if the file is not a Corral store or was changed by another program, {DAMAGED_FIX}")


_S = TypeVar("_S", bound=type)


def translating_errors(cls: _S) -> _S:
    """Wrap every public method so that an SQLite error it meets is raised as the StoreError the
    class's ``_db_error(e)`` makes. Constraint violations (IntegrityError) and misuse
    (ProgrammingError) are bugs of the caller, not states of the store: they pass as they are."""
    for name, fn in list(vars(cls).items()):
        if not name.startswith("_") and inspect.isfunction(fn):
            setattr(cls, name, _translate(fn))
    return cls


def _translate(fn: Callable[..., Any]) -> Callable[..., Any]:
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def gen(self: Any, *args: Any, **kwargs: Any) -> Iterator[Any]:
            try:
                yield from fn(self, *args, **kwargs)
            except (sqlite3.IntegrityError, sqlite3.ProgrammingError):
                raise
            except sqlite3.DatabaseError as e:
                raise self._db_error(e) from e

        return gen

    @functools.wraps(fn)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(self, *args, **kwargs)
        except (sqlite3.IntegrityError, sqlite3.ProgrammingError):
            raise
        except sqlite3.DatabaseError as e:
            raise self._db_error(e) from e

    return call
