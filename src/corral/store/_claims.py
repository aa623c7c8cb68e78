"""The SQLite store's call claims (table ``call_claims``) and budget holds (``budget_holds``): the first worker to ask a request
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
_CHUNK = 400  # hashes per IN (...) query, under SQLite's variable limit


def claim(db: sqlite3.Connection, request_hashes: list[str], owner: str, ttl_s: float,
          is_dead: Callable[[str], bool]) -> list[Claim]:
    now = time.time()
    out: list[Claim] = []
    for i in range(0, len(request_hashes), _CHUNK):
        part = request_hashes[i:i + _CHUNK]
        marks = ",".join("?" * len(part))
        cached = {h for (h,) in db.execute(
            f"SELECT request_hash FROM responses WHERE request_hash IN ({marks})", part)}
        held = {h: o for h, o, exp in db.execute(
            f"SELECT request_hash, owner, expires_at FROM call_claims WHERE request_hash IN ({marks})", part)
            if o != owner and exp > now and not is_dead(o)}
        mine = [h for h in part if h not in cached and h not in held]
        db.executemany(
            "INSERT INTO call_claims (request_hash, owner, expires_at) VALUES (?,?,?) ON CONFLICT "
            "(request_hash) DO UPDATE SET owner=excluded.owner, expires_at=excluded.expires_at",
            [(h, owner, now + ttl_s) for h in mine])
        out += [_CACHED if h in cached else Claim(holder=held[h]) if h in held else _OURS for h in part]
    return out


def release(db: sqlite3.Connection, request_hash: str, owner: str) -> None:
    db.execute("DELETE FROM call_claims WHERE request_hash=? AND owner=?", (request_hash, owner))


def renew(db: sqlite3.Connection, owner: str, ttl_s: float) -> None:
    db.execute("UPDATE call_claims SET expires_at=? WHERE owner=?", (time.time() + ttl_s, owner))


def recorded(db: sqlite3.Connection, request_hashes: list[str]) -> None:
    """The claims of calls whose responses were just recorded end."""
    db.executemany("DELETE FROM call_claims WHERE request_hash=?", [(h,) for h in request_hashes])


def share_budget(db: sqlite3.Connection, run_id: str, owner: str, held: tuple[int, int, int],
                 is_dead: Callable[[str], bool], ttl_s: float) -> tuple[int, int, int]:
    """Record ``owner``'s holds (calls, tokens, cost in nano-dollars); the others' live holds."""
    now = time.time()
    db.execute(
        "INSERT INTO budget_holds (run_id, owner, calls, tokens, cost_nanos, updated_at) VALUES (?,?,?,?,?,?) "
        "ON CONFLICT (run_id, owner) DO UPDATE SET calls=excluded.calls, tokens=excluded.tokens, "
        "cost_nanos=excluded.cost_nanos, updated_at=excluded.updated_at", (run_id, owner, *held, now))
    calls = tokens = cost = 0
    for o, c, t, n in db.execute("SELECT owner, calls, tokens, cost_nanos FROM budget_holds WHERE run_id=? "
                                 "AND owner != ? AND updated_at > ?", (run_id, owner, now - ttl_s)):
        if not is_dead(o):
            calls, tokens, cost = calls + c, tokens + t, cost + n
    return calls, tokens, cost


def forget_holds(db: sqlite3.Connection, run_id: str, owner: str) -> None:
    db.execute("DELETE FROM budget_holds WHERE run_id=? AND owner=?", (run_id, owner))
