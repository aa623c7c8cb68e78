"""DuckDB sources and sinks (the optional ``duckdb`` package).

The source reads one table or view (``table:``; ``schema.name`` outside the main schema), or the
rows of a SQL query (``query:``), from a database file opened read-only, as Arrow record batches
(:mod:`corral.io._arrow`), in a stable order so that a run resumes with ``start=``: a table in rowid order; a view, and a query without
its own ``ORDER BY``, ordered by every column (``ORDER BY ALL``); a query with an ``ORDER BY`` in
that order (which should be total: end it with a unique column).

The sink creates the table if needed (the key column is its primary key), adds missing columns,
and upserts every row by key inside one transaction, the rows going to DuckDB as Arrow batches:
writing the same output twice leaves the same rows. A column read from a typed source (Parquet,
DuckDB, a DataFrame) keeps its Arrow type; the others get DuckDB types from their Corral type
(lists and ``any`` values as JSON text, ``vector`` columns as ``FLOAT[n]``).

DuckDB lets one process write a database file, or several read it. A file another process holds
is waited for, up to :data:`LOCK_WAIT_S` seconds (said once on stderr), then it is an error.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from corral.errors import SinkError, SourceError, UserError
from corral.io._arrow import ArrowSource
from corral.io._atomic import ensure_parent
from corral.io._text import one_line
from corral.io._values import to_text
from corral.io.base import Batches, Column, Sink
from corral.io.parquet import decode_values, vector_type
from corral.io.spec import SinkSpec, SourceSpec
from corral.io.sqlite import quote_ident

__all__ = ["LOCK_WAIT_S", "DuckDbSink", "DuckDbSource", "connect"]

#: how long a database file another process holds is waited for
LOCK_WAIT_S = 10.0
_BATCH = 2048
_INSTALL = "make install, or pip install -e '.[duckdb]' in the Corral checkout"


def _module(err: type[UserError]) -> Any:
    try:
        import duckdb
    except ImportError:
        raise err(f"DuckDB files need the duckdb package, which is not installed — {_INSTALL}") from None
    return duckdb


def _locked(e: Exception) -> bool:
    return "lock" in str(e).lower()


def connect(path: Path, *, read_only: bool, err: type[UserError], what: str) -> Any:
    """A connection to the database file ``path``, waiting up to :data:`LOCK_WAIT_S` seconds
    for another process to let go of it; ``what`` names the job key to fix in an error."""
    duckdb = _module(err)
    deadline = time.monotonic() + LOCK_WAIT_S
    said = False
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except duckdb.Error as e:
            if not _locked(e):
                raise err(
                    f"cannot open DuckDB database {path}: {one_line(e)} — check that `{what}:` "
                    f"points at a DuckDB file, or set `format:` under `{what}:`"
                ) from None
            if time.monotonic() >= deadline:
                raise err(
                    f"DuckDB database {path} is locked by another process ({one_line(e)}) — "
                    f"close the program that has it open for writing and run again"
                ) from None
            if not said:
                print(f"waiting up to {LOCK_WAIT_S:.0f}s for {path}: another process holds it",
                      file=sys.stderr)
                said = True
            time.sleep(0.2)


def _tables(conn: Any) -> dict[str, tuple[str, str, str]]:
    """The tables and views by the name a job gives them (``name``, or ``schema.name`` outside
    the main schema): (schema, name, table type)."""
    rows = conn.execute(
        "SELECT table_schema, table_name, table_type FROM information_schema.tables "
        "WHERE table_catalog = current_database() ORDER BY table_schema <> 'main', 1, 2"
    ).fetchall()
    return {(n if sch == "main" else f"{sch}.{n}"): (sch, n, kind) for sch, n, kind in rows}


def _listing(tables: dict[str, Any]) -> str:
    return "tables: " + ", ".join(tables) if tables else "the database has no tables"


def _has_order_by(conn: Any, query: str) -> bool:
    """Whether ``query`` is one SELECT statement that ends in an ORDER BY; raises SourceError
    when it is not one SELECT statement."""
    try:
        (text,) = conn.execute("SELECT json_serialize_sql(?)", [query]).fetchall()[0]
    except Exception:  # no json extension: order the rows ourselves
        return False
    parsed = json.loads(text)
    if parsed.get("error") and "Only SELECT" in str(parsed.get("error_message")):
        raise SourceError(
            "the DuckDB source's query is not a SELECT statement (a source only reads) — check "
            "`query:` under `source:`"
        )
    if parsed.get("error"):
        raise SourceError(
            f"bad SQL in the DuckDB source: {one_line(Exception(parsed.get('error_message')))} — "
            f"check `query:` under `source:` (one SELECT statement)"
        )
    statements = parsed.get("statements") or []
    if len(statements) != 1:
        raise SourceError(
            f"the DuckDB source's query holds {len(statements)} statements — check `query:` under "
            f"`source:` (one SELECT statement)"
        )
    modifiers = statements[0].get("node", {}).get("modifiers") or []
    return any(m.get("type") == "ORDER_MODIFIER" for m in modifiers)


def _reader(rel: Any) -> pa.RecordBatchReader:
    """A relation's rows as Arrow record batches (``to_arrow_reader`` in newer DuckDB releases,
    ``fetch_arrow_reader`` in older ones)."""
    method = getattr(rel, "to_arrow_reader", None) or rel.fetch_arrow_reader
    reader: pa.RecordBatchReader = method(_BATCH)
    return reader


class DuckDbSource(ArrowSource):
    """Rows of a table, a view or a query of a DuckDB database file."""

    format = "duckdb"
    takes_query = True

    @classmethod
    def from_spec(cls, spec: SourceSpec, path: Path, fmt: str) -> DuckDbSource:
        return cls(path, table=spec.table, query=spec.query)

    def __init__(self, path: Path, *, table: str | None = None, query: str | None = None) -> None:
        self.path = path
        self.table: str | None = None
        self.query = query
        conn = self._connect()
        try:
            if query and table:
                raise SourceError(
                    f"the DuckDB source {path} has both `table:` and `query:` — keep one of them"
                )
            if query:
                query = query.strip().rstrip(";").rstrip()  # (it is wrapped in another SELECT)
                ordered = _has_order_by(conn, query)
                self._sql = query if ordered else f"SELECT * FROM ({query}) ORDER BY ALL"
                rel = self._relation(conn, self._sql)
            else:
                tables = _tables(conn)
                if not table:
                    raise SourceError(
                        f"source {path} is a DuckDB database but no table is named — add `table:` "
                        f"(or `query:`) under `source:` ({_listing(tables)})"
                    )
                match = {t.lower(): t for t in tables}.get(table.lower())
                if match is None:
                    raise SourceError(
                        f"table {table!r} not found in DuckDB database {path} — set `table:` under "
                        f"`source:` to an existing table ({_listing(tables)})"
                    )
                self.table = match
                schema_name, name, kind = tables[match]
                order = "rowid" if kind == "BASE TABLE" else "ALL"
                self._sql = (f"SELECT * FROM {quote_ident(schema_name)}.{quote_ident(name)} "
                             f"ORDER BY {order}")
                rel = self._relation(conn, self._sql)
            schema = _reader(rel.limit(0)).schema
        finally:
            conn.close()
        where = f"the query in {path}" if query else f"table {self.table!r} in {path}"
        super().__init__(path, schema, where)

    def _connect(self) -> Any:
        return connect(self.path, read_only=True, err=SourceError, what="source")

    def _relation(self, conn: Any, sql: str) -> Any:
        duckdb = _module(SourceError)
        try:
            return conn.sql(sql)
        except duckdb.Error as e:
            if self.query:
                raise SourceError(
                    f"the DuckDB source's query failed: {one_line(e)} — check `query:` under "
                    f"`source:`"
                ) from None
            raise SourceError(f"cannot read DuckDB database {self.path}: {one_line(e)}") from None

    def batches(self) -> Iterator[pa.RecordBatch]:
        duckdb = _module(SourceError)
        conn = self._connect()
        try:
            try:
                yield from _reader(self._relation(conn, self._sql))
            except duckdb.Error as e:
                raise SourceError(f"cannot read DuckDB database {self.path}: {one_line(e)}") from None
        finally:
            conn.close()


_DECLARED = {
    "string": "VARCHAR",
    "integer": "BIGINT",
    "number": "DOUBLE",
    "boolean": "BOOLEAN",
    "date": "DATE",
    "list": "VARCHAR",
    "any": "VARCHAR",
}
_ARROW = {
    "string": pa.string(),
    "integer": pa.int64(),
    "number": pa.float64(),
    "boolean": pa.bool_(),
    "date": pa.date32(),
}


def _array(c: Column, values: list[Any]) -> pa.Array:
    """The values of column ``c`` as Arrow: in its source's Arrow type, or the type its Corral
    type maps to; values that do not fit go as text (DuckDB casts them, or says why not)."""
    t = c.arrow_type if c.arrow_type is not None else _ARROW.get(c.type)
    if c.type == "vector":
        t = vector_type(c)
    if t is not None:
        try:
            return decode_values(values, t)
        except (pa.ArrowException, ValueError, TypeError, OverflowError):
            pass
    return pa.array([None if v is None else to_text(v) for v in values], type=pa.string())


class DuckDbSink(Sink):
    """Upserts rows into one table of a DuckDB database, keyed by the key column."""

    format = "duckdb"

    def __init__(self, path: Path, table: str | None) -> None:
        super().__init__(path)
        if not table:
            raise SinkError(
                f"sink {path} is a DuckDB database but no table is named — add `table:` under "
                f"`sink:`"
            )
        _module(SinkError)
        self.table = table

    @classmethod
    def from_spec(cls, spec: SinkSpec, path: Path, fmt: str) -> DuckDbSink:
        return cls(path, spec.table)

    def _fail(self, e: Exception) -> SinkError:
        return SinkError(
            f"cannot write table {self.table!r} in DuckDB database {self.path}: {one_line(e)} — "
            f"choose another `sink:` path or `table:`"
        )

    def write_rows(self, names: list[str], columns: list[Column], batches: Batches, key: str) -> int:
        if key not in names:
            raise SinkError(
                f"the key column {key!r} is not among the output columns "
                f"({', '.join(names)}) — set `key:` in the job file to one of them"
            )
        duckdb = _module(SinkError)
        ensure_parent(self.path)
        conn = connect(self.path, read_only=False, err=SinkError, what="sink")
        table = quote_ident(self.table)
        count = 0
        try:
            try:
                conn.execute("BEGIN TRANSACTION")
                self._prepare(conn, table, columns, key)
                col_sql = ", ".join(quote_ident(n) for n in names)
                updates = [f"{quote_ident(n)} = excluded.{quote_ident(n)}" for n in names if n != key]
                sql = (
                    f"INSERT INTO {table} ({col_sql}) SELECT {col_sql} FROM _corral_rows "
                    f"ON CONFLICT ({quote_ident(key)}) DO "
                    + (f"UPDATE SET {', '.join(updates)}" if updates else "NOTHING")
                )
                for batch in batches:
                    if not batch:
                        continue
                    arrays = [_array(c, [row.get(c.name) for row in batch]) for c in columns]
                    rows = pa.Table.from_arrays(arrays, names=names)
                    if rows.column(key).null_count:
                        raise SinkError(
                            f"cannot write table {self.table!r} in {self.path}: a row has no "
                            f"value in the key column {key!r} — every output row needs one"
                        )
                    conn.register("_corral_rows", rows)  # (replaces the batch before)
                    conn.execute(sql)
                    count += len(batch)
                conn.execute("COMMIT")
            except duckdb.Error as e:
                if "conflict target" in str(e).lower():
                    raise SinkError(
                        f"table {self.table!r} in {self.path} already exists without {key!r} as "
                        f"its primary key — drop the table, or set `table:` under `sink:` to a "
                        f"new name"
                    ) from None
                raise self._fail(e) from None
        except BaseException:
            try:
                conn.execute("ROLLBACK")
            except Exception:
                pass
            raise
        finally:
            conn.close()
        return count

    def _prepare(self, conn: Any, table: str, columns: list[Column], key: str) -> None:
        """The table created if needed, with the columns it lacks added."""

        def declared(c: Column) -> str:
            if c.arrow_type is not None:
                probe = pa.table({"v": pa.array([], type=c.arrow_type)})
                conn.register("_corral_probe", probe)
                return str(conn.sql("SELECT v FROM _corral_probe").types[0])
            if c.type == "vector":
                return f"FLOAT[{c.size}]" if c.size else "FLOAT[]"
            return _DECLARED[c.type]

        defs = []
        for c in columns:
            d = f"{quote_ident(c.name)} {declared(c)}"
            if c.name == key:
                d += " NOT NULL PRIMARY KEY"
            defs.append(d)
        conn.execute(f"CREATE TABLE IF NOT EXISTS {table} ({', '.join(defs)})")
        existing = {r[0].lower() for r in conn.execute(f"SELECT * FROM {table} LIMIT 0").description}
        for c in columns:
            if c.name.lower() not in existing:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {quote_ident(c.name)} {declared(c)}")
