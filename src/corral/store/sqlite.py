"""SQLite store (WAL mode): the embedded default. Its SQL is shared with the Postgres store
(store/_sql.py); what is SQLite's own here is opening, checking and locking the file."""

from __future__ import annotations

import contextlib
import random
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from corral.errors import StoreError
from corral.store._errors import BUSY, DAMAGED_FIX, sqlite_error, store_error, translating_errors
from corral.store._migrations import MIGRATIONS, migrate
from corral.store._sql import SQLStore

__all__ = ["SQLiteStore", "MIGRATIONS", "BUSY_TIMEOUT_S"]

#: how long a command waits for another process's write lock before it gives up
BUSY_TIMEOUT_S = 30.0

@translating_errors
class SQLiteStore(SQLStore):
    """A store in one SQLite file. Safe for several processes (WAL, busy timeout), including
    several that open a fresh store at the same moment (the schema is created under a write lock).

    ``create=True`` (the default): a missing file, and its folders, are made at the first method
    call rather than here, so a run that fails before it writes anything leaves no empty store.
    ``create=False``: the file must exist (else StoreError ``no store at PATH``) and nothing is
    created, for commands that only read. An existing file is checked (``PRAGMA quick_check``,
    unless ``check=False``) and migrated when it is opened, so a damaged store or one from a newer
    Corral is refused at once; an SQLite error a method meets later is raised as StoreError too.
    """

    def __init__(self, path: str | Path, *, create: bool = True, check: bool = True) -> None:
        self.path = Path(path)
        self._check = check
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        self._opening = threading.Lock()
        if self.path.exists():
            self._open(create=False)
        elif not create:
            raise self._missing()

    @property
    def db(self) -> sqlite3.Connection:
        """The connection; the first use of a store whose file does not exist yet creates it."""
        conn = self._conn
        if conn is None:
            with self._opening:
                if self._conn is None:
                    if self._closed:
                        raise sqlite3.ProgrammingError("Cannot operate on a closed database.")
                    self._open(create=True)
                conn = self._conn
                assert conn is not None
        return conn

    # --- plumbing ----------------------------------------------------------------------

    def _missing(self) -> StoreError:
        return StoreError(
            f"no store at {self.path} — run a job first, or pass --store (or set CORRAL_STORE) "
            "to the store you used"
        )

    def _open(self, create: bool) -> None:
        existed = self.path.exists()
        try:
            if create:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                db = sqlite3.connect(
                    self.path, isolation_level=None, timeout=BUSY_TIMEOUT_S, check_same_thread=False
                )
            else:  # mode=rw: never create the file, even if it vanished since we looked
                db = sqlite3.connect(
                    self.path.absolute().as_uri() + "?mode=rw", uri=True, isolation_level=None,
                    timeout=BUSY_TIMEOUT_S, check_same_thread=False,
                )
        except sqlite3.DatabaseError as e:
            if not self.path.exists():
                raise self._missing() from None
            raise store_error(self.path, e, True, BUSY_TIMEOUT_S) from None
        except OSError as e:
            raise StoreError(
                f"cannot create the store at {self.path}: {e.strerror} — point --store (or "
                "CORRAL_STORE) at a file in a folder you can write"
            ) from None
        try:
            if existed and self._check:
                self._quick_check(db)
            self._wal(db)
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA wal_autocheckpoint=10000")
            db.execute("PRAGMA cache_size=-65536")
            db.execute("PRAGMA foreign_keys=ON")
            migrate(db, self.path)
        except sqlite3.DatabaseError as e:
            db.close()
            raise store_error(self.path, e, True, BUSY_TIMEOUT_S) from None
        except BaseException:
            db.close()
            raise
        self._conn = db

    @staticmethod
    def _wal(db: sqlite3.Connection) -> None:
        """WAL mode. Switching a file that another process is creating at the same moment can
        fail with SQLITE_BUSY at once, without waiting for the busy timeout: wait here instead."""
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        while True:
            try:
                db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as e:
                if ((e.sqlite_errorcode or 0) & 0xFF) not in BUSY or time.monotonic() > deadline:
                    raise
                time.sleep(0.005 + 0.02 * random.random())

    def _quick_check(self, db: sqlite3.Connection) -> None:
        """Refuse a damaged file before anything is read from it or written to it."""
        # "ok", or lines of problems (one row, or several) after a "*** in database main ***" line
        lines = [
            line.strip()
            for (row,) in db.execute("PRAGMA quick_check(3)")
            for line in str(row).splitlines()
        ]
        problems = [ln for ln in lines if ln and ln != "ok" and not ln.startswith("*** in database")]
        if lines != ["ok"]:
            first = problems[0][:160] if problems else "; ".join(lines)[:160]
            raise StoreError(
                f"cannot open the store at {self.path}: it is damaged (integrity check: {first}) — "
                f"{DAMAGED_FIX}"
            )

    def _db_error(self, e: Exception) -> StoreError | None:
        """The StoreError, with its fix, for an SQLite error a method met (None: not one)."""
        return store_error(self.path, e, False, BUSY_TIMEOUT_S) if sqlite_error(e) else None

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception."""
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            if db.in_transaction:  # SQLite rolls back by itself on some errors (disk full...)
                db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def close(self) -> None:
        self._closed = True
        if self._conn is not None:
            self._conn.close()
