"""What differs between the SQL of the SQLite store and of the Postgres store, for the SQL that
both share (store/_sql.py and the query modules). The shared SQL is written for SQLite, with
``?`` placeholders; the Postgres store's connection takes it as it is (it turns ``?`` into
psycopg's ``%s``) and carries ``dialect = "postgres"``, which the few expressions below read."""

from __future__ import annotations

from typing import Any

#: a connection: ``sqlite3.Connection``, or the Postgres store's (see store/postgres.py)
Conn = Any

#: paid calls, replays and paid calls of unknown price among ledger rows, as sums (a call shared
#: by several rows, ``pack:``, has ``calls`` 1 on its first row and 0 on the others)
PAID = "SUM(CASE WHEN replayed=0 THEN calls ELSE 0 END)"
REPLAYED = "SUM(CASE WHEN replayed=1 THEN 1 ELSE 0 END)"
UNPRICED = "SUM(CASE WHEN replayed=0 AND cost_nanos IS NULL THEN calls ELSE 0 END)"


def postgres(db: Conn) -> bool:
    return getattr(db, "dialect", "sqlite") == "postgres"


def json_true(db: Conn, column: str, field: str) -> str:
    """SQL: the JSON text in ``column`` has ``field`` true (or 1)."""
    if postgres(db):
        return f"(CAST({column} AS jsonb) -> '{field}') IN (CAST('true' AS jsonb), CAST('1' AS jsonb))"
    return f"json_extract({column}, '$.{field}') = 1"


def json_number(db: Conn, column: str, field: str) -> str:
    """SQL: the JSON text in ``column`` has a number at ``field``."""
    if postgres(db):
        return f"jsonb_typeof(CAST({column} AS jsonb) -> '{field}') = 'number'"
    return f"json_type({column}, '$.{field}') IN ('real', 'integer')"


def floor_int(db: Conn, expr: str) -> str:
    """SQL: the integer part of a non-negative number (Postgres's CAST rounds; SQLite's cuts)."""
    return f"CAST(FLOOR({expr}) AS BIGINT)" if postgres(db) else f"CAST({expr} AS INTEGER)"
