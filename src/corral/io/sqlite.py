"""SQLite table sources and sinks (stdlib :mod:`sqlite3`).

The source opens the database read-only and reads the table in rowid order, in chunks, so rows
come out in a stable order (needed to resume with ``start=``). Tables without a rowid and views
are ordered by their primary key, or by all columns.

The sink creates the table if needed (the key column is its primary key), adds missing columns,
and upserts every row by key inside one transaction: writing the same output twice leaves the
same rows.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import sqlite3
from collections.abc import Generator, Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

from corral.errors import SinkError, SourceError
from corral.io._atomic import ensure_parent
from corral.io._text import one_line
from corral.io._values import to_json_value
from corral.io.base import Batches, Column, Sink, Source, SourceRow
from corral.io.spec import SinkSpec, SourceSpec

__all__ = ["SqliteSink", "SqliteSource", "sqlite_column_type"]

_CHUNK = 1000


def quote_ident(name: str) -> str:
    """``name`` as a quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def sqlite_column_type(declared: str | None) -> str:
    """The Corral column type for a declared SQLite column type (following SQLite's affinity
    rules, with BOOL and DATE recognised)."""
    d = (declared or "").upper()
    if "BOOL" in d:
        return "boolean"
    if "INT" in d:
        return "integer"
    if d == "DATE" or d.startswith("DATE ") or d.startswith("DATE("):
        return "date"
    if "CHAR" in d or "CLOB" in d or "TEXT" in d or "DATE" in d or "TIME" in d:
        return "string"
    if not d or "BLOB" in d:
        return "any"
    if "REAL" in d or "FLOA" in d or "DOUB" in d or "NUM" in d or "DEC" in d:
        return "number"
    return "any"


def _value(v: Any, ctype: str) -> Any:
    if isinstance(v, bytes):
        return base64.b64encode(v).decode("ascii")
    if ctype == "boolean" and isinstance(v, int) and v in (0, 1):
        return bool(v)
    return v


class SqliteSource(Source):
    """Rows of one table (or view) of a SQLite database file."""

    format = "sqlite"

    @classmethod
    def from_spec(cls, spec: SourceSpec, path: Path, fmt: str) -> SqliteSource:
        return cls(path, spec.table)

    def __init__(self, path: Path, table: str | None) -> None:
        self.path = path
        conn = self._connect()
        try:
            tables = self._tables(conn)
            if not table:
                raise SourceError(
                    f"source {path} is a SQLite database but no table is named — add `table:` "
                    f"under `source:` ({self._listing(tables)})"
                )
            match = {t.lower(): t for t in tables}.get(table.lower())
            if match is None:
                raise SourceError(
                    f"table {table!r} not found in SQLite database {path} — set `table:` under "
                    f"`source:` to an existing table ({self._listing(tables)})"
                )
            self.table = match
            info = conn.execute(f"PRAGMA table_info({quote_ident(match)})").fetchall()
            self._order = self._order_by(conn, info)
        except sqlite3.DatabaseError as e:
            raise self._unreadable(e) from None
        finally:
            conn.close()
        columns = [Column(row[1], sqlite_column_type(row[2])) for row in info]
        super().__init__(path, columns)

    @staticmethod
    def _listing(tables: list[str]) -> str:
        if not tables:
            return "the database has no tables"
        return "tables: " + ", ".join(tables)

    def _unreadable(self, e: Exception) -> SourceError:
        return SourceError(
            f"cannot read SQLite database {self.path}: {one_line(e)} — check that `source:` "
            f"points at a SQLite file, or set `format:` under `source:`"
        )

    def _connect(self) -> sqlite3.Connection:
        try:
            return sqlite3.connect(self.path.as_uri() + "?mode=ro", uri=True, timeout=30)
        except sqlite3.Error as e:
            raise self._unreadable(e) from None

    @staticmethod
    def _tables(conn: sqlite3.Connection) -> list[str]:
        rows = conn.execute(
            "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') "
            "AND name NOT LIKE 'sqlite_%' ORDER BY name"
        ).fetchall()
        return [r[0] for r in rows]

    def _order_by(self, conn: sqlite3.Connection, info: list[Any]) -> str:
        try:
            conn.execute(f"SELECT rowid FROM {quote_ident(self.table)} LIMIT 0")
            return "rowid"
        except sqlite3.OperationalError:
            pass
        pk = sorted((r[5], r[1]) for r in info if r[5])
        if pk:
            return ", ".join(quote_ident(name) for _, name in pk)
        return ", ".join(str(i) for i in range(1, len(info) + 1))

    def _select(self) -> str:
        cols = ", ".join(quote_ident(c.name) for c in self.columns)
        return f"SELECT {cols} FROM {quote_ident(self.table)} ORDER BY {self._order}"

    def _chunks(
        self, sql: str, params: tuple[Any, ...] = ()
    ) -> Generator[list[tuple[Any, ...]], None, None]:
        conn = self._connect()
        try:
            try:
                cur = conn.execute(sql, params)
            except sqlite3.DatabaseError as e:
                raise self._unreadable(e) from None
            while True:
                try:
                    chunk = cur.fetchmany(_CHUNK)
                except sqlite3.DatabaseError as e:
                    raise self._unreadable(e) from None
                if not chunk:
                    return
                yield chunk
        finally:
            conn.close()

    def rows(self, start: int = 0) -> Iterator[SourceRow]:
        names = self.column_names
        types = [c.type for c in self.columns]
        ordinal = max(start, 0)
        chunks = self._chunks(self._select() + " LIMIT -1 OFFSET ?", (ordinal,))
        try:
            for chunk in chunks:
                for values in chunk:
                    data = {n: _value(v, t) for n, v, t in zip(names, values, types)}
                    yield SourceRow(ordinal, None, data)
                    ordinal += 1
        finally:
            chunks.close()

    def fingerprint(self) -> str:
        """Hex sha256 over the table's column names and rows, in rowid order."""
        h = hashlib.sha256()
        h.update(repr((self.table, self.column_names)).encode())
        chunks = self._chunks(self._select())
        try:
            for chunk in chunks:
                for values in chunk:
                    h.update(repr(values).encode())
                    h.update(b"\n")
        finally:
            chunks.close()
        return h.hexdigest()


_DECLARED = {
    "string": "TEXT",
    "integer": "INTEGER",
    "number": "REAL",
    "boolean": "BOOLEAN",
    "date": "DATE",
    "list": "TEXT",
    "vector": "TEXT",  # a JSON array
    "any": "",
}


def _sql_value(v: Any) -> Any:
    if v is None or isinstance(v, (str, float, bytes)):
        return v
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, int):
        return v if -(2**63) <= v < 2**63 else str(v)
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(to_json_value(v), ensure_ascii=False)
    if isinstance(v, (dt.date, dt.time)):
        return v.isoformat()
    j = to_json_value(v)
    return j if isinstance(j, (str, int, float)) or j is None else json.dumps(j)


class SqliteSink(Sink):
    """Upserts rows into one table of a SQLite database, keyed by the key column."""

    format = "sqlite"

    def __init__(self, path: Path, table: str | None) -> None:
        super().__init__(path)
        if not table:
            raise SinkError(
                f"sink {path} is a SQLite database but no table is named — add `table:` under "
                f"`sink:`"
            )
        self.table = table

    @classmethod
    def from_spec(cls, spec: SinkSpec, path: Path, fmt: str) -> SqliteSink:
        return cls(path, spec.table)

    def _fail(self, e: Exception) -> SinkError:
        return SinkError(
            f"cannot write table {self.table!r} in SQLite database {self.path}: {one_line(e)} — "
            f"check that the file is a writable SQLite database, or choose another `sink:` path or "
            f"`table:`"
        )

    def write_rows(self, names: list[str], columns: list[Column], batches: Batches, key: str) -> int:
        if key not in names:
            raise SinkError(
                f"the key column {key!r} is not among the output columns "
                f"({', '.join(names)}) — set `key:` in the job file to one of them"
            )
        ensure_parent(self.path)
        try:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        except sqlite3.Error as e:
            raise self._fail(e) from None
        table = quote_ident(self.table)
        count = 0
        try:
            try:
                conn.execute("BEGIN IMMEDIATE")
                defs = []
                for c in columns:
                    d = f"{quote_ident(c.name)} {_DECLARED[c.type]}".rstrip()
                    if c.name == key:
                        d += " NOT NULL PRIMARY KEY"
                    defs.append(d)
                conn.execute(f"CREATE TABLE IF NOT EXISTS {table} ({', '.join(defs)})")
                existing = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
                for c in columns:
                    if c.name not in existing:
                        conn.execute(
                            f"ALTER TABLE {table} ADD COLUMN "
                            f"{quote_ident(c.name)} {_DECLARED[c.type]}".rstrip()
                        )
                col_sql = ", ".join(quote_ident(n) for n in names)
                updates = [f"{quote_ident(n)} = excluded.{quote_ident(n)}" for n in names
                           if n != key]
                sql = (
                    f"INSERT INTO {table} ({col_sql}) VALUES ({', '.join('?' * len(names))}) "
                    f"ON CONFLICT({quote_ident(key)}) DO "
                    + (f"UPDATE SET {', '.join(updates)}" if updates else "NOTHING")
                )
            except sqlite3.Error as e:
                raise self._fail(e) from None
            for batch in batches:
                params = [[_sql_value(row.get(n)) for n in names] for row in batch]
                try:
                    conn.executemany(sql, params)
                except sqlite3.IntegrityError as e:
                    if f".{key}" not in str(e):
                        raise self._fail(e) from None
                    raise SinkError(
                        f"cannot write table {self.table!r} in {self.path}: {one_line(e)} — "
                        f"every output row needs a value in the key column {key!r}"
                    ) from None
                except sqlite3.OperationalError as e:
                    if "ON CONFLICT" in str(e):
                        raise SinkError(
                            f"table {self.table!r} in {self.path} already exists without "
                            f"{key!r} as its primary key — drop the table, or set "
                            f"`table:` under `sink:` to a new name"
                        ) from None
                    raise self._fail(e) from None
                except sqlite3.Error as e:
                    raise self._fail(e) from None
                count += len(batch)
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as e:
                raise self._fail(e) from None
        except BaseException:
            if conn.in_transaction:
                with suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise
        finally:
            conn.close()
        return count
