"""SQLite errors as StoreErrors that say what to do: a damaged file, a lock held too long by
another process, a full disk, a file the process may not write; and :func:`translating_errors`,
which both stores use to raise their database's errors as StoreErrors."""

from __future__ import annotations

import functools
import inspect
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeGuard, TypeVar

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
    """Wrap every public method of the class, and those it inherits from the shared SQL store,
    so that a database error it meets is raised as the StoreError the class's ``_db_error(e)``
    makes; ``_db_error`` returns None for what passes as it is (not a database error; a
    constraint violated or the store misused, which are bugs of the caller)."""
    names = {n for k in cls.__mro__ for n in vars(k) if not n.startswith("_")}
    for name in names:
        fn = inspect.getattr_static(cls, name)
        if inspect.isfunction(fn) and not getattr(fn, "__isabstractmethod__", False):
            setattr(cls, name, _translate(fn))
    return cls


def sqlite_error(e: BaseException) -> TypeGuard[sqlite3.DatabaseError]:
    """Whether ``e`` is an SQLite error that says something of the store (see
    :func:`translating_errors`)."""
    return isinstance(e, sqlite3.DatabaseError) and not isinstance(
        e, (sqlite3.IntegrityError, sqlite3.ProgrammingError))


def _translate(fn: Callable[..., Any]) -> Callable[..., Any]:
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def gen(self: Any, *args: Any, **kwargs: Any) -> Iterator[Any]:
            try:
                yield from fn(self, *args, **kwargs)
            except Exception as e:
                err = self._db_error(e)
                if err is None:
                    raise
                raise err from e

        return gen

    @functools.wraps(fn)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(self, *args, **kwargs)
        except Exception as e:
            err = self._db_error(e)
            if err is None:
                raise
            raise err from e

    return call
