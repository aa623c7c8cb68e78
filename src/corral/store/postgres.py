"""Postgres store: one database shared by every worker, on any machine (psycopg 3).

The schema and the SQL are the SQLite store's (store/_migrations.py, store/_sql.py): what is
Postgres's own here is connecting, migrating under an advisory lock, transactions, and leases
taken with ``FOR UPDATE SKIP LOCKED``, so that workers leasing at the same moment get disjoint
records without waiting on each other. A lease expires (``ttl_s``) unless renewed: the records of
a worker that died or stalled go back to the queue at the next :meth:`reclaim`. The response
cache and the ledger are tables every worker writes: an answer cached by two workers at once is
kept once (``ON CONFLICT DO NOTHING``), and each paid call keeps its ledger row.

The URL's password never leaves this module: :attr:`PostgresStore.shown` (and every message)
has it masked.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from corral.errors import StoreError
from corral.store import _url
from corral.store._errors import translating_errors
from corral.store._migrations import migrate_pg
from corral.store._sql import SQLStore

__all__ = ["PostgresStore", "INSTALL_HINT", "CONNECT_TIMEOUT_S", "LOCK_TIMEOUT_S"]

INSTALL_HINT = "make install, or pip install -e '.[postgres]' in the Corral checkout"
#: how long opening the store waits for the server to answer
CONNECT_TIMEOUT_S = 10
#: how long a statement waits for a row or table lock another worker holds before it gives up
LOCK_TIMEOUT_S = 30


class _Conn:
    """A psycopg connection that takes the shared SQL as SQLite's is written: ``?`` placeholders
    (psycopg's are ``%s``, and a literal ``%`` is ``%%``)."""

    dialect = "postgres"

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self._sql: dict[str, str] = {}

    def _q(self, sql: str) -> str:
        q = self._sql.get(sql)
        if q is None:
            q = self._sql[sql] = sql.replace("%", "%%").replace("?", "%s")
        return q

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        if not params:  # psycopg reads no placeholders, nor %%, in a query without parameters
            return self.conn.execute(sql)
        return self.conn.execute(self._q(sql), tuple(params))

    def executemany(self, sql: str, rows: Any) -> Any:
        cur = self.conn.cursor()
        cur.executemany(self._q(sql), list(rows))
        return cur

    def transaction(self) -> Any:
        return self.conn.transaction()


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError:
        raise StoreError(
            f"a Postgres store (--store postgresql://...) needs psycopg, which is not installed — "
            f"{INSTALL_HINT}"
        ) from None
    return psycopg


@translating_errors
class PostgresStore(SQLStore):
    """A store in a Postgres database, at ``url`` (``postgresql://USER:PASSWORD@HOST:PORT/DB``;
    libpq's other forms and parameters work too).

    Opening connects (StoreError, with the host and port, when the server cannot be reached) and
    migrates the schema. ``create=False``: a database that holds no Corral store yet is refused
    (StoreError ``no store at URL``) and left as it is. ``check`` is accepted for the SQLite
    store's sake: Postgres checks its own pages.
    """

    # picked once (an uncorrelated ARRAY() runs once; a locking subquery in IN may run again per
    # row, and a join on a table not analyzed yet may scan it per row), then found by key
    _LEASED_ROWS = "key = ANY(ARRAY({pick} FOR UPDATE SKIP LOCKED))"

    def __init__(self, url: str, *, create: bool = True, check: bool = True) -> None:
        self._dsn = _url.whole(url)  # with its password: for connecting, and nothing else
        #: the URL with its password masked: what messages and summaries show
        self.shown = _url.masked(self._dsn)
        self._lock = threading.RLock()
        self._closed = False
        psycopg = _psycopg()
        self._pg = psycopg
        try:
            conn = psycopg.connect(
                self._dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S,
                application_name="corral",
            )
        except psycopg.Error as e:
            raise self._unreachable(e) from None
        self._db = _Conn(conn)
        try:
            conn.execute(f"SET lock_timeout = '{LOCK_TIMEOUT_S}s'")
            if not migrate_pg(self._db, self.shown, create):
                raise StoreError(
                    f"no store at {self.shown} (the database holds no Corral store yet) — run a "
                    "job first, or pass --store (or set CORRAL_STORE) to the store you used"
                )
        except psycopg.Error as e:
            conn.close()
            raise self._error(e, "cannot open") from None
        except BaseException:
            conn.close()
            raise

    @property
    def db(self) -> _Conn:
        if self._closed:
            raise self._pg.InterfaceError("the store is closed")
        return self._db

    @contextlib.contextmanager
    def _tx(self) -> Iterator[_Conn]:
        db = self.db
        with self._lock, db.transaction():
            yield db

    def _clock(self, db: _Conn) -> float:
        # the server's clock: workers on machines whose clocks disagree time leases alike
        return float(db.execute("SELECT EXTRACT(EPOCH FROM clock_timestamp())").fetchone()[0])

    def close(self) -> None:
        self._closed = True
        self._db.conn.close()

    # --- errors ------------------------------------------------------------------------

    def _unreachable(self, e: BaseException) -> StoreError:
        """The StoreError for a server that did not let the store connect, with the fix."""
        reason = self._reason(e)
        if "password authentication failed" in reason or "no password supplied" in reason:
            fix = "check the user and password in the URL (--store or CORRAL_STORE)"
        elif "database" in reason and "does not exist" in reason:
            fix = "create the database (createdb), or check its name in the URL (--store or CORRAL_STORE)"
        else:
            fix = "is the server running? check the URL (--store or CORRAL_STORE)"
        return StoreError(f"cannot connect to the Postgres store at {_url.where(self._dsn)} ({reason}) — {fix}")

    def _reason(self, e: BaseException) -> str:
        """The driver's first line about ``e`` (what the server said, when it said something),
        without the URL's password."""
        text = (str(e).strip().splitlines() or [type(e).__name__])[0]
        if "FATAL:" in text:
            text = text.split("FATAL:", 1)[1].strip()
        secret = _url.password(self._dsn)
        return text.replace(secret, _url.MASK) if secret else text

    def _error(self, e: BaseException, lead: str) -> StoreError:
        pg = self._pg
        if isinstance(e, pg.errors.LockNotAvailable):
            fix = (f"another worker held a lock for over {LOCK_TIMEOUT_S} s; let it finish (or "
                   "stop it), then run the command again")
        elif isinstance(e, pg.OperationalError):
            fix = f"is the server at {_url.where(self._dsn)} running? check the URL (--store or CORRAL_STORE)"
        else:
            fix = "if the database is not a Corral store or was changed by another program, use another --store"
        return StoreError(f"{lead} the store at {self.shown}: {self._reason(e)} — {fix}")

    def _db_error(self, e: Exception) -> StoreError | None:
        """The StoreError for a database error a method met; None for a violated constraint or
        misuse (bugs of the caller) and for what is not a database error."""
        pg = self._pg
        if not isinstance(e, pg.Error) or isinstance(
            e, (pg.IntegrityError, pg.ProgrammingError, pg.InterfaceError, pg.DataError)
        ):
            return None
        return self._error(e, "cannot use")
