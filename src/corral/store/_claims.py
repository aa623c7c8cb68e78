"""The SQLite store's call claims (table ``call_claims``): the first worker to ask a request
claims its paid call; others asking the same request meanwhile wait for its recorded response
instead of paying it again (see :meth:`corral.store.base.Store.claim_call`). The functions take
the connection, inside the store's transaction."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable

from corral.store.base import Claim

_OURS = Claim()
_CACHED = Claim(cached=True)


def claim(db: sqlite3.Connection, request_hash: str, owner: str, ttl_s: float,
          is_dead: Callable[[str], bool]) -> Claim:
    if db.execute("SELECT 1 FROM responses WHERE request_hash=?", (request_hash,)).fetchone():
        return _CACHED
    now = time.time()
    row = db.execute("SELECT owner, expires_at FROM call_claims WHERE request_hash=?",
                     (request_hash,)).fetchone()
    if row is not None and row[0] != owner and row[1] > now and not is_dead(row[0]):
        return Claim(holder=row[0])
    db.execute(
        "INSERT INTO call_claims (request_hash, owner, expires_at) VALUES (?,?,?) "
        "ON CONFLICT (request_hash) DO UPDATE SET owner=excluded.owner, expires_at=excluded.expires_at",
        (request_hash, owner, now + ttl_s))
    return _OURS


def release(db: sqlite3.Connection, request_hash: str, owner: str) -> None:
    db.execute("DELETE FROM call_claims WHERE request_hash=? AND owner=?", (request_hash, owner))


def renew(db: sqlite3.Connection, owner: str, ttl_s: float) -> None:
    db.execute("UPDATE call_claims SET expires_at=? WHERE owner=?", (time.time() + ttl_s, owner))


def recorded(db: sqlite3.Connection, request_hashes: list[str]) -> None:
    """The claims of calls whose responses were just recorded end."""
    db.executemany("DELETE FROM call_claims WHERE request_hash=?", [(h,) for h in request_hashes])
