"""Postgres as a job's source (a table or a query) and sink (upsert by key into a table), on a
throwaway server (tests/_postgres.py)."""

from __future__ import annotations

import json
import subprocess

import pytest

import corral
from corral import FakeModel, Job
from corral.errors import SinkError, SourceError
from corral.io.postgres import PostgresSource

from ..conftest import corral_bin, write


def fill(url: str, rows: int = 30) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as con:
        con.execute("CREATE TABLE tickets (id INTEGER PRIMARY KEY, text TEXT, score NUMERIC, meta JSONB)")
        with con.cursor() as cur:
            cur.executemany("INSERT INTO tickets VALUES (%s, %s, %s, %s)",
                            [(i, f"ticket {i}", i / 2, json.dumps({"n": i})) for i in range(rows)])


def out_rows(url: str, table: str = "out") -> list[tuple]:
    import psycopg

    with psycopg.connect(url) as con:
        return con.execute(f'SELECT id, text, cat FROM "{table}" ORDER BY id').fetchall()


def job(tmp_path, url: str, source: dict) -> Job:
    return Job.from_dict({
        "name": "pg", "key": "id", "source": {"path": url, **source},
        "steps": [{"name": "cat", "task": "classify", "input": "{text}", "labels": ["a", "b"]}],
        "sink": {"path": url, "table": "out"}}, base_dir=tmp_path)


def test_a_table_in_and_a_table_out_upserted_by_key(tmp_path, pg_url):
    fill(pg_url)
    r = corral.run(job(tmp_path, pg_url, {"table": "tickets"}), model=FakeModel(), store=tmp_path / "s.db")
    assert (r.status, r.written, r.calls_made) == ("finished", 30, 30)
    first = out_rows(pg_url)
    assert [row[0] for row in first] == list(range(30)) and all(row[2] in ("a", "b") for row in first)
    again = corral.run(job(tmp_path, pg_url, {"table": "tickets"}), model=FakeModel(), store=tmp_path / "s2.db")
    assert again.calls_made == 30 and out_rows(pg_url) == first  # written again: the same rows, once each


def test_a_query_source_in_a_stable_order_and_its_types(tmp_path, pg_url):
    fill(pg_url)
    src = PostgresSource(pg_url, query="SELECT id, text, score, meta FROM tickets WHERE id < 10")
    rows = list(src.rows())
    assert [r.data["id"] for r in rows] == list(range(10))
    assert rows[3].data["score"] == 1.5 and json.loads(rows[3].data["meta"]) == {"n": 3}
    assert [r.data["id"] for r in src.rows(start=7)] == [7, 8, 9]  # a resume skips the first rows
    assert src.fingerprint() == PostgresSource(pg_url, query="SELECT id, text, score, meta FROM tickets "
                                                              "WHERE id < 10").fingerprint()
    assert "pg-test-secret" not in str(src.path)  # the password never shown


def test_bad_input_is_one_line_with_the_fix(tmp_path, pg_url):
    fill(pg_url, 3)
    with pytest.raises(SourceError, match=r"table 'nope' not found .* \(tables: tickets\)"):
        PostgresSource(pg_url, table="nope")
    with pytest.raises(SourceError, match="the Postgres source's query failed: .* check `query:`"):
        PostgresSource(pg_url, query="SELECT nonsense FROM tickets")
    with pytest.raises(SourceError, match="has both `table:` and `query:`"):
        PostgresSource(pg_url, table="tickets", query="SELECT 1")
    dead = pg_url.rsplit(":", 1)[0] + ":1/db"
    with pytest.raises(SourceError, match="is the server running"):
        PostgresSource(dead, table="tickets")
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as con:
        con.execute("CREATE TABLE out (id INTEGER, text TEXT)")  # no primary key to upsert by
    with pytest.raises(SinkError, match="already exists without 'id' as its primary key"):
        corral.run(job(tmp_path, pg_url, {"table": "tickets"}), model=FakeModel(), store=tmp_path / "s.db")


def test_corral_run_from_the_cli_never_prints_the_password(tmp_path, pg_url):
    fill(pg_url, 5)
    write(tmp_path / "job.yaml", json.dumps({
        "name": "pgcli", "key": "id", "model": "fake", "source": {"path": pg_url, "query": "SELECT id, text FROM tickets"},
        "steps": [{"name": "cat", "task": "classify", "input": "{text}", "labels": ["a", "b"]}],
        "sink": {"path": pg_url, "table": "out"}}))
    res = subprocess.run([corral_bin(), "run", "job.yaml", "--json", "--store", str(tmp_path / "s.db")],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "pg-test-secret" not in res.stdout + res.stderr
    assert json.loads(res.stdout)["rows"]["written"] == 5 and len(out_rows(pg_url)) == 5


def test_an_embed_steps_vectors_are_jsonb_arrays(tmp_path, pg_url):
    import psycopg

    fill(pg_url, rows=4)
    j = Job.from_dict({
        "name": "pgvec", "key": "id", "source": {"path": pg_url, "table": "tickets"},
        "steps": [{"name": "vec", "task": "embed", "input": "{text}", "dimensions": 6}],
        "sink": {"path": pg_url, "table": "vecs"}}, base_dir=tmp_path)
    r = corral.run(j, model=FakeModel(), store=tmp_path / "s.db")
    assert r.written == 4
    with psycopg.connect(pg_url) as con:
        kind = con.execute("SELECT data_type FROM information_schema.columns WHERE table_name = 'vecs' "
                           "AND column_name = 'vec'").fetchone()
        got = con.execute("SELECT jsonb_array_length(vec), vec_model FROM vecs").fetchall()
    assert kind == ("jsonb",) and got == [(6, "fake")] * 4
