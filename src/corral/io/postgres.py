"""PostgreSQL sources and sinks (psycopg 3, the ``postgres`` extra).

A job names the database by URL: ``source: {path: postgresql://USER@HOST/DB, table: tickets}``,
or ``query: SELECT ...`` instead of ``table:``. The password, if the URL has one, is never shown:
the source's and sink's ``path`` (what summaries and errors print) is the URL with it masked;
prefer a ``~/.pgpass`` file or ``$PGPASSWORD`` to a password in the job file.

The source reads the table (``schema.name`` outside ``public``) or the query's rows through a
server-side cursor, in chunks, as Arrow record batches (:mod:`corral.io._arrow`), in a stable
order so that a run resumes with ``start=``: a table by its primary key, else by every column; a
query by every column of its result (which is stable: rows equal in every column are the same
row). The sink creates the table if needed (the key column its primary key), adds the columns it
lacks, and upserts every row by key in one transaction: writing the same output twice leaves the
same rows, and two workers writing one run's outputs leave one row per key.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from corral.errors import SinkError, SourceError, UserError
from corral.io._arrow import ArrowSource
from corral.io._text import one_line
from corral.io.base import Batches, Column, Sink
from corral.io.spec import SinkSpec, SourceSpec
from corral.io.sqlite import quote_ident
from corral.store._url import masked

__all__ = ["PostgresSink", "PostgresSource"]

_BATCH = 2048
_INSTALL = "make install, or pip install -e '.[postgres]' in the Corral checkout"
#: Postgres type OIDs -> the Arrow type the rows come as (anything else: its text)
_OID_ARROW: dict[int, pa.DataType] = {
    16: pa.bool_(), 20: pa.int64(), 21: pa.int64(), 23: pa.int64(), 700: pa.float64(),
    701: pa.float64(), 1700: pa.float64(), 1082: pa.date32(),
}
_JSON_OIDS = {114, 3802}
_DECLARED = {"string": "TEXT", "integer": "BIGINT", "number": "DOUBLE PRECISION", "boolean": "BOOLEAN",
             "date": "DATE", "list": "JSONB", "vector": "JSONB", "any": "JSONB"}


def _psycopg(err: type[UserError]) -> Any:
    try:
        import psycopg
    except ImportError:
        raise err(f"Postgres sources and sinks need psycopg, which is not installed — {_INSTALL}") from None
    return psycopg


def _connect(url: str, err: type[UserError], what: str) -> Any:
    psycopg = _psycopg(err)
    try:
        return psycopg.connect(url, connect_timeout=10)
    except psycopg.Error as e:
        raise err(f"cannot connect to {masked(url)}: {one_line(e)} — is the server running? check "
                  f"the URL in `{what}:`") from None


def _split(table: str) -> tuple[str, str]:
    schema, _, name = table.rpartition(".")
    return schema or "public", name


class PostgresSource(ArrowSource):
    """Rows of a table, a view or a query of a Postgres database."""

    format = "postgres"
    takes_query = True

    @classmethod
    def from_spec(cls, spec: SourceSpec, path: Path, fmt: str) -> PostgresSource:
        return cls(spec.path, table=spec.table, query=spec.query)

    def __init__(self, url: str, *, table: str | None = None, query: str | None = None) -> None:
        self.url = url
        shown = masked(url)
        if query and table:
            raise SourceError(f"the Postgres source {shown} has both `table:` and `query:` — keep one of them")
        if not query and not table:
            raise SourceError(f"source {shown} is a Postgres database but no table is named — add "
                              "`table:` (or `query:`) under `source:`")
        self.table, self.query = table, query
        psycopg = _psycopg(SourceError)
        with _connect(url, SourceError, "source") as conn:
            if table:
                schema, name = _split(table)
                found = conn.execute("SELECT 1 FROM information_schema.tables WHERE table_schema=%s AND "
                                     "table_name=%s", (schema, name)).fetchone()
                if found is None:
                    listing = [f"{s}.{n}" if s != "public" else n for s, n in conn.execute(
                        "SELECT table_schema, table_name FROM information_schema.tables WHERE table_schema "
                        "NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2").fetchall()]
                    raise SourceError(f"table {table!r} not found in {shown} — set `table:` under `source:` "
                                      f"to an existing table (tables: {', '.join(listing) or 'none'})")
                inner = f"SELECT * FROM {quote_ident(schema)}.{quote_ident(name)}"
                pk = [r[0] for r in conn.execute(
                    "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
                    "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = %s::regclass AND i.indisprimary",
                    (f"{quote_ident(schema)}.{quote_ident(name)}",)).fetchall()]
            else:
                inner, pk = query.strip().rstrip(";").rstrip(), []  # type: ignore[union-attr]
            try:
                cur = conn.execute(f"SELECT * FROM ({inner}) q LIMIT 0")
            except psycopg.Error as e:
                raise SourceError(f"the Postgres source's query failed: {one_line(e)} — check "
                                  "`query:` under `source:` (one SELECT statement)") from None
            desc = cur.description or []
        fields = [pa.field(d.name, _OID_ARROW.get(d.type_code, pa.string())) for d in desc]
        self._json = [d.type_code in _JSON_OIDS for d in desc]
        order = pk or [f"{quote_ident(d.name)}{'::text' if j else ''}" for d, j in zip(desc, self._json)]
        self._sql = f"SELECT * FROM ({inner}) q" + (f" ORDER BY {', '.join(order)}" if order else "")
        where = f"the query in {shown}" if query else f"table {table!r} in {shown}"
        super().__init__(Path(shown), pa.schema(fields), where)

    def batches(self) -> Iterator[pa.RecordBatch]:
        psycopg = _psycopg(SourceError)
        with _connect(self.url, SourceError, "source") as conn, conn.cursor(name="corral_source") as cur:
            try:
                cur.execute(self._sql)
                while rows := cur.fetchmany(_BATCH):
                    yield self._batch(rows)
            except psycopg.Error as e:
                raise SourceError(f"cannot read {masked(self.url)}: {one_line(e)}") from None

    def _batch(self, rows: list[tuple[Any, ...]]) -> pa.RecordBatch:
        arrays = []
        for i, f in enumerate(self.schema):
            values = [r[i] for r in rows]
            if pa.types.is_string(f.type):
                values = [None if v is None else json.dumps(v) if self._json[i] else str(v) for v in values]
            elif pa.types.is_floating(f.type):
                values = [None if v is None else float(v) for v in values]
            arrays.append(pa.array(values, type=f.type))
        return pa.RecordBatch.from_arrays(arrays, schema=self.schema)


class PostgresSink(Sink):
    """Upserts rows into one table of a Postgres database, keyed by the key column."""

    format = "postgres"

    def __init__(self, url: str, table: str | None) -> None:
        super().__init__(Path(masked(url)))
        if not table:
            raise SinkError(f"sink {masked(url)} is a Postgres database but no table is named — add "
                            "`table:` under `sink:`")
        _psycopg(SinkError)
        self.url, self.table = url, table

    @classmethod
    def from_spec(cls, spec: SinkSpec, path: Path, fmt: str) -> PostgresSink:
        return cls(spec.path, spec.table)

    def write_rows(self, names: list[str], columns: list[Column], batches: Batches, key: str) -> int:
        if key not in names:
            raise SinkError(f"the key column {key!r} is not among the output columns ({', '.join(names)}) "
                            "— set `key:` in the job file to one of them")
        psycopg = _psycopg(SinkError)
        schema, name = _split(self.table)
        table = f"{quote_ident(schema)}.{quote_ident(name)}"
        cols = ", ".join(quote_ident(n) for n in names)
        updates = [f"{quote_ident(n)} = excluded.{quote_ident(n)}" for n in names if n != key]
        sql = (f"INSERT INTO {table} ({cols}) VALUES ({', '.join(['%s'] * len(names))}) "
               f"ON CONFLICT ({quote_ident(key)}) DO " + (f"UPDATE SET {', '.join(updates)}" if updates else "NOTHING"))
        count = 0
        with _connect(self.url, SinkError, "sink") as conn:
            try:
                with conn.transaction():
                    self._prepare(conn, table, schema, name, columns, key)
                    with conn.cursor() as cur:
                        for batch in batches:
                            rows = [tuple(_value(row.get(c.name), c) for c in columns) for row in batch]
                            if any(r[names.index(key)] is None for r in rows):
                                raise SinkError(f"cannot write table {self.table!r} in {self.path}: a row has "
                                                f"no value in the key column {key!r} — every output row needs one")
                            cur.executemany(sql, rows)
                            count += len(rows)
            except psycopg.errors.InvalidColumnReference:
                raise SinkError(f"table {self.table!r} in {self.path} already exists without {key!r} as its "
                                "primary key — drop the table, or set `table:` under `sink:` to a new name") from None
            except psycopg.Error as e:
                raise SinkError(f"cannot write table {self.table!r} in {self.path}: {one_line(e)} — choose "
                                "another `table:` under `sink:`") from None
        return count

    @staticmethod
    def _prepare(conn: Any, table: str, schema: str, name: str, columns: list[Column], key: str) -> None:
        """The table created if needed, with the columns it lacks added."""
        defs = [f"{quote_ident(c.name)} {_DECLARED[c.type]}" + (" NOT NULL PRIMARY KEY" if c.name == key else "")
                for c in columns]
        conn.execute(f"CREATE TABLE IF NOT EXISTS {table} ({', '.join(defs)})")
        have = {r[0] for r in conn.execute("SELECT column_name FROM information_schema.columns WHERE "
                                           "table_schema=%s AND table_name=%s", (schema, name)).fetchall()}
        for c in columns:
            if c.name not in have:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {quote_ident(c.name)} {_DECLARED[c.type]}")


def _value(v: Any, c: Column) -> Any:
    if v is None:
        return None
    if c.type in ("list", "vector", "any"):
        return json.dumps(v)
    if c.type == "string" and not isinstance(v, str):
        return json.dumps(v) if isinstance(v, (list, dict)) else str(v)
    return v
