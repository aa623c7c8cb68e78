"""The stores' call claims (table ``call_claims``) and budget holds (``budget_holds``): the first worker to ask a request claims its
paid call; others asking the same request meanwhile wait for its recorded response instead of
paying it again (see :meth:`corral.store.base.Store.claim_calls`). The functions take the
connection, inside the store's transaction, and the store's clock (``now``).

SQLite runs one writer at a time; Postgres runs the workers' transactions side by side, so a
claim is taken by an upsert that only replaces a claim that is the caller's, expired or of a dead
owner, decided on the row as it is once the other transaction has committed (``RETURNING`` says
which were taken): two workers claiming one request at once never both get it."""

from __future__ import annotations

from collections.abc import Callable

from corral.store._dialect import Conn
from corral.store.base import Claim

_OURS = Claim()
_CACHED = Claim(cached=True)
_CHUNK = 300  # hashes per statement, under SQLite's variable limit (4 variables a hash at most)


def claim(db: Conn, request_hashes: list[str], owner: str, ttl_s: float,
          is_dead: Callable[[str], bool], now: float) -> list[Claim]:
    out: dict[str, Claim] = {}
    for i in range(0, len(request_hashes), _CHUNK):
        part = sorted(set(request_hashes[i:i + _CHUNK]))  # in one order: no two writers deadlock
        marks = ",".join("?" * len(part))
        cached = {h for (h,) in db.execute(
            f"SELECT request_hash FROM responses WHERE request_hash IN ({marks})", part)}
        held: dict[str, str] = {}
        dead: set[str] = set()
        for h, o, exp in db.execute(
                f"SELECT request_hash, owner, expires_at FROM call_claims WHERE request_hash IN ({marks})", part):
            if o == owner or exp <= now:
                continue  # the caller's, or expired: taken over below
            if is_dead(o):
                dead.add(o)
            else:
                held[h] = o
        mine = [h for h in part if h not in cached and h not in held]
        if mine:
            taken = _upsert(db, mine, owner, now, ttl_s, sorted(dead))
            if taken:  # a worker that recorded one of them meanwhile ended its claim as it did:
                # look again (on Postgres this statement sees what committed before the upsert)
                got = sorted(taken)
                late = {h for (h,) in db.execute(
                    f"SELECT request_hash FROM responses WHERE request_hash IN ({','.join('?' * len(got))})", got)}
                if late:
                    cached |= late
                    db.executemany("DELETE FROM call_claims WHERE request_hash=? AND owner=?",
                                   [(h, owner) for h in sorted(late)])
            lost = [h for h in mine if h not in taken]  # claimed by another worker a moment ago
            if lost:
                held.update(db.execute(
                    f"SELECT request_hash, owner FROM call_claims WHERE request_hash IN ({','.join('?' * len(lost))})",
                    lost).fetchall())
        for h in part:
            out[h] = _CACHED if h in cached else Claim(holder=held[h]) if h in held else _OURS
    return [out[h] for h in request_hashes]


def _upsert(db: Conn, hashes: list[str], owner: str, now: float, ttl_s: float, dead: list[str]) -> set[str]:
    """Claim ``hashes`` for ``owner`` where no live claim of another owner stands; the hashes
    claimed."""
    takeover = "call_claims.owner = excluded.owner OR call_claims.expires_at <= ?"
    args: list[object] = [now]
    if dead:
        takeover += f" OR call_claims.owner IN ({','.join('?' * len(dead))})"
        args += dead
    values = ",".join("(?,?,?)" for _ in hashes)
    rows = db.execute(
        f"INSERT INTO call_claims (request_hash, owner, expires_at) VALUES {values} "
        "ON CONFLICT (request_hash) DO UPDATE SET owner=excluded.owner, expires_at=excluded.expires_at "
        f"WHERE {takeover} RETURNING request_hash",
        [x for h in hashes for x in (h, owner, now + ttl_s)] + args,
    ).fetchall()
    return {h for (h,) in rows}


def release(db: Conn, request_hash: str, owner: str) -> None:
    db.execute("DELETE FROM call_claims WHERE request_hash=? AND owner=?", (request_hash, owner))


def renew(db: Conn, owner: str, ttl_s: float, now: float) -> None:
    db.execute("UPDATE call_claims SET expires_at=? WHERE owner=?", (now + ttl_s, owner))


def recorded(db: Conn, request_hashes: list[str]) -> None:
    """The claims of calls whose responses were just recorded end."""
    db.executemany("DELETE FROM call_claims WHERE request_hash=?", [(h,) for h in request_hashes])


def share_budget(db: Conn, run_id: str, owner: str, held: tuple[int, int, int],
                 is_dead: Callable[[str], bool], ttl_s: float, now: float) -> tuple[int, int, int]:
    """Record what ``owner``'s calls in flight hold of the run's budget (calls, tokens, cost in
    nano-dollars); what the other live workers' hold (see Store.share_budget)."""
    db.execute(
        "INSERT INTO budget_holds (run_id, owner, calls, tokens, cost_nanos, updated_at) VALUES (?,?,?,?,?,?) "
        "ON CONFLICT (run_id, owner) DO UPDATE SET calls=excluded.calls, tokens=excluded.tokens, "
        "cost_nanos=excluded.cost_nanos, updated_at=excluded.updated_at", (run_id, owner, *held, now))
    calls = tokens = cost = 0
    for o, c, t, n in db.execute("SELECT owner, calls, tokens, cost_nanos FROM budget_holds WHERE run_id=? "
                                 "AND owner != ? AND updated_at > ?", (run_id, owner, now - ttl_s)).fetchall():
        if not is_dead(o):
            calls, tokens, cost = calls + c, tokens + t, cost + n
    return calls, tokens, cost


def forget_holds(db: Conn, run_id: str, owner: str) -> None:
    db.execute("DELETE FROM budget_holds WHERE run_id=? AND owner=?", (run_id, owner))
