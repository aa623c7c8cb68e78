"""DuckDB sources and sinks: real database files in tmp_path, the fake model for runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

duckdb = pytest.importorskip("duckdb")

import corral  # noqa: E402
from corral.cli import main  # noqa: E402
from corral.errors import SinkError, SourceError  # noqa: E402
from corral.io import duckdb as ddb  # noqa: E402
from corral.io.base import Column, open_sink, open_source  # noqa: E402
from corral.io.spec import SinkSpec, SourceSpec, format_from_path  # noqa: E402
from corral.job import Job  # noqa: E402
from corral.models.fake import FakeModel  # noqa: E402


def make_db(path: Path, n: int = 5) -> Path:
    conn = duckdb.connect(str(path))
    try:
        conn.execute(
            "CREATE TABLE tickets (id INTEGER, text VARCHAR, day DATE, seen TIMESTAMP, "
            "amount DECIMAL(10,2), tags VARCHAR[], ok BOOLEAN)"
        )
        for i in range(n):
            conn.execute(
                "INSERT INTO tickets VALUES (?, ?, DATE '2026-12-01' + ?, "
                "TIMESTAMP '2026-12-01 09:30:00', 12.5, ['a', 'b'], ?)",
                [n - i, f"ticket {n - i}", i % 2, i % 2 == 0],
            )
        conn.execute("CREATE VIEW recent AS SELECT id, text FROM tickets")
        conn.execute("CREATE SCHEMA sales")
        conn.execute("CREATE TABLE sales.orders AS SELECT 7 AS id, 'order' AS text")
    finally:
        conn.close()
    return path


def rows_of(path: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = duckdb.connect(str(path), read_only=True)
    try:
        return list(conn.execute(sql).fetchall())
    finally:
        conn.close()


def data(source: Any, start: int = 0) -> list[dict[str, Any]]:
    return [r.data for r in source.rows(start)]


def test_extensions_mean_duckdb() -> None:
    assert format_from_path("w.duckdb") == format_from_path("w.DDB") == "duckdb"


def test_table_source_in_rowid_order_with_types(tmp_path: Path) -> None:
    make_db(tmp_path / "w.duckdb")
    s = open_source(SourceSpec(path="w.duckdb", table="Tickets"), tmp_path)
    assert [(c.name, c.type) for c in s.columns] == [
        ("id", "integer"), ("text", "string"), ("day", "date"), ("seen", "string"),
        ("amount", "string"), ("tags", "list"), ("ok", "boolean"),
    ]
    got = data(s)
    assert [r["id"] for r in got] == [5, 4, 3, 2, 1]  # insertion order, not sorted
    assert got[0] == {"id": 5, "text": "ticket 5", "day": "2026-12-01", "seen": "2026-12-01T09:30:00",
                      "amount": "12.50", "tags": ["a", "b"], "ok": True}
    # resume: the rows after the first `start`, same ordinals
    assert [(r.ordinal, r.data["id"]) for r in s.rows(3)] == [(3, 2), (4, 1)]
    assert s.fingerprint() == open_source(SourceSpec(path="w.duckdb", table="tickets"),
                                          tmp_path).fingerprint()


def test_fingerprint_changes_with_the_data(tmp_path: Path) -> None:
    db = make_db(tmp_path / "w.duckdb")
    before = open_source(SourceSpec(path="w.duckdb", table="tickets"), tmp_path).fingerprint()
    conn = duckdb.connect(str(db))
    conn.execute("UPDATE tickets SET text = 'changed' WHERE id = 3")
    conn.close()
    after = open_source(SourceSpec(path="w.duckdb", table="tickets"), tmp_path).fingerprint()
    assert before != after


def test_view_and_query_sources_are_ordered(tmp_path: Path) -> None:
    make_db(tmp_path / "w.duckdb")
    view = open_source(SourceSpec(path="w.duckdb", table="recent"), tmp_path)
    assert [r["id"] for r in data(view)] == [1, 2, 3, 4, 5]  # a view: ORDER BY ALL
    other = open_source(SourceSpec(path="w.duckdb", table="sales.orders"), tmp_path)
    assert data(other) == [{"id": 7, "text": "order"}]
    q = open_source(SourceSpec(path="w.duckdb", query="SELECT id, text FROM tickets "
                                                       "WHERE day = '2026-12-01'"), tmp_path)
    assert [c.name for c in q.columns] == ["id", "text"]
    assert [r["id"] for r in data(q)] == [1, 3, 5]  # no ORDER BY: ordered by every column
    semi = open_source(SourceSpec(path="w.duckdb", query="SELECT id FROM tickets;\n"), tmp_path)
    assert [r["id"] for r in data(semi)] == [1, 2, 3, 4, 5]
    own = open_source(SourceSpec(path="w.duckdb", query="SELECT id FROM tickets ORDER BY id DESC"),
                      tmp_path)
    assert [r["id"] for r in data(own)] == [5, 4, 3, 2, 1]
    assert [r["id"] for r in data(own, 4)] == [1]


def test_source_failures_say_the_fix(tmp_path: Path) -> None:
    make_db(tmp_path / "w.duckdb")
    with pytest.raises(SourceError, match=r"no table is named .*tables: recent, tickets, sales.orders"):
        open_source(SourceSpec(path="w.duckdb"), tmp_path)
    with pytest.raises(SourceError, match=r"'nope' not found .*tables: recent, tickets, sales.orders"):
        open_source(SourceSpec(path="w.duckdb", table="nope"), tmp_path)
    with pytest.raises(SourceError, match=r"query failed: .*nothere.* check `query:`"):
        open_source(SourceSpec(path="w.duckdb", query="SELECT nothere FROM tickets"), tmp_path)
    with pytest.raises(SourceError, match=r"bad SQL .*check `query:`"):
        open_source(SourceSpec(path="w.duckdb", query="SELEC id FROM tickets"), tmp_path)
    with pytest.raises(SourceError, match=r"not a SELECT statement .* check `query:`"):
        open_source(SourceSpec(path="w.duckdb", query="DELETE FROM tickets"), tmp_path)
    with pytest.raises(SourceError, match=r"2 statements"):
        open_source(SourceSpec(path="w.duckdb", query="SELECT 1; SELECT 2"), tmp_path)
    with pytest.raises(SourceError, match=r"both `table:` and `query:`"):
        open_source(SourceSpec(path="w.duckdb", table="tickets", query="SELECT 1"), tmp_path)
    (tmp_path / "in.csv").write_text("a\n1\n")
    with pytest.raises(SourceError, match=r"`query:` is not read for a csv source"):
        open_source(SourceSpec(path="in.csv", query="SELECT 1"), tmp_path)
    (tmp_path / "junk.duckdb").write_text("not a database")
    with pytest.raises(SourceError, match=r"cannot open DuckDB database .*junk.duckdb"):
        open_source(SourceSpec(path="junk.duckdb", table="t"), tmp_path)
    for e in (SourceError,):
        assert issubclass(e, corral.UserError)


def test_locked_file_waits_then_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capfd: pytest.CaptureFixture[str]) -> None:
    db = make_db(tmp_path / "w.duckdb")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); "
         "print('held', flush=True); time.sleep(30)", str(db)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        monkeypatch.setattr(ddb, "LOCK_WAIT_S", 0.5)
        with pytest.raises(SourceError, match=r"locked by another process .* close the program"):
            open_source(SourceSpec(path="w.duckdb", table="tickets"), tmp_path)
        assert "waiting up to" in capfd.readouterr().err
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()


COLUMNS = [Column("id", "string"), Column("text", "string"), Column("score", "number"),
           Column("n", "integer"), Column("ok", "boolean"), Column("tags", "list")]
ROWS = [
    {"id": "a", "text": "hello, world", "score": 0.5, "n": 1, "ok": True, "tags": ["x", "y"]},
    {"id": "b", "text": "she said \"hi\"\nthen left", "score": None, "n": 2, "ok": False, "tags": []},
    {"id": "c", "text": None, "score": 2, "n": None, "ok": None, "tags": None},
]


def test_sink_upserts_and_is_idempotent(tmp_path: Path) -> None:
    sink = open_sink(SinkSpec(path="out/o.duckdb", table="results"), tmp_path)
    assert sink.write(COLUMNS, [ROWS[:2], ROWS[2:]], "id") == 3
    assert sink.write(COLUMNS, [ROWS], "id") == 3
    db = tmp_path / "out" / "o.duckdb"
    expected = [
        ("a", "hello, world", 0.5, 1, True, '["x", "y"]'),
        ("b", 'she said "hi"\nthen left', None, 2, False, "[]"),
        ("c", None, 2.0, None, None, None),
    ]
    assert rows_of(db, "SELECT * FROM results ORDER BY id") == expected
    sink.write(COLUMNS, [[dict(ROWS[0], text="new")]], "id")
    got = rows_of(db, "SELECT id, text FROM results ORDER BY id")
    assert got == [("a", "new"), ("b", expected[1][1]), ("c", None)]
    types = rows_of(db, "SELECT column_name, data_type FROM information_schema.columns "
                        "WHERE table_name = 'results' ORDER BY ordinal_position")
    assert [t for _, t in types] == ["VARCHAR", "VARCHAR", "DOUBLE", "BIGINT", "BOOLEAN", "VARCHAR"]


def test_sink_adds_columns_and_rolls_back(tmp_path: Path) -> None:
    sink = open_sink(SinkSpec(path="o.ddb", table="t"), tmp_path)
    sink.write(COLUMNS[:2], [[{"id": "a", "text": "x"}]], "id")
    sink.write(COLUMNS[:3], [[{"id": "b", "text": "y", "score": 1.5}]], "id")
    assert rows_of(tmp_path / "o.ddb", "SELECT * FROM t ORDER BY id") == [
        ("a", "x", None), ("b", "y", 1.5)]

    def failing():
        yield [{"id": "c", "text": "z"}]
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        sink.write(COLUMNS[:2], failing(), "id")
    assert [r[0] for r in rows_of(tmp_path / "o.ddb", "SELECT id FROM t ORDER BY id")] == ["a", "b"]


def test_sink_failures_say_the_fix(tmp_path: Path) -> None:
    with pytest.raises(SinkError, match=r"no table is named — add `table:`"):
        open_sink(SinkSpec(path="o.duckdb"), tmp_path)
    sink = open_sink(SinkSpec(path="o.duckdb", table="t"), tmp_path)
    with pytest.raises(SinkError, match=r"key column 'nope' is not among"):
        sink.write(COLUMNS, [ROWS], "nope")
    with pytest.raises(SinkError, match=r"no value in the key column 'id'"):
        sink.write(COLUMNS, [[dict(ROWS[0], id=None)]], "id")
    conn = duckdb.connect(str(tmp_path / "plain.duckdb"))
    conn.execute("CREATE TABLE t (id VARCHAR, text VARCHAR)")
    conn.close()
    plain = open_sink(SinkSpec(path="plain.duckdb", table="t"), tmp_path)
    with pytest.raises(SinkError, match=r"without 'id' as its primary key — drop the table"):
        plain.write(COLUMNS[:2], [[{"id": "a", "text": "x"}]], "id")


def job_spec(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    return {
        "name": "tickets",
        "source": {"path": "w.duckdb", "table": "tickets"},
        "key": "id",
        "steps": [{"name": "cat", "task": "classify", "input": "{text}", "labels": ["a", "b"]}],
        "sink": {"path": "out.duckdb", "table": "labelled"},
        **extra,
    }


def test_run_from_a_table_into_a_table_resumes_after_a_stop(tmp_path: Path) -> None:
    make_db(tmp_path / "w.duckdb", n=30)
    fake = FakeModel()
    r = corral.run(Job.from_dict(job_spec(tmp_path, budget={"max_calls": 10}), base_dir=tmp_path),
                   model=fake)
    assert r.status == "stopped" and r.written == 10 and r.pending == 20
    r2 = corral.run(Job.from_dict(job_spec(tmp_path), base_dir=tmp_path), model=fake)
    assert r2.run == r.run and r2.status == "finished" and fake.calls == 30
    out = tmp_path / "out.duckdb"
    got = rows_of(out, "SELECT id, text, day, amount, cat FROM labelled ORDER BY id")
    assert len(got) == 30 and {g[4] for g in got} <= {"a", "b"}
    assert str(got[-1][2]) == "2026-12-01" and str(got[0][3]) == "12.50"  # types kept
    types = dict(rows_of(out, "SELECT column_name, data_type FROM information_schema.columns "
                              "WHERE table_name = 'labelled'"))
    assert types["id"] == "INTEGER" and types["day"] == "DATE" and types["seen"] == "TIMESTAMP"
    assert types["amount"] == "DECIMAL(10,2)" and types["tags"] == "VARCHAR[]"
    # the quarantine table sits beside the sink's
    assert rows_of(out, "SELECT count(*) FROM labelled_quarantine") == [(0,)]
    # a rerun replays: no call, the same rows
    r3 = corral.run(Job.from_dict(job_spec(tmp_path), base_dir=tmp_path), model=fake)
    assert r3.run == r.run and fake.calls == 30
    assert rows_of(out, "SELECT id, text, day, amount, cat FROM labelled ORDER BY id") == got
    assert r3.to_arrow().num_rows == 30


def test_corral_run_cli_query_source(tmp_path: Path) -> None:
    from click.testing import CliRunner

    make_db(tmp_path / "w.duckdb", n=6)
    spec = job_spec(tmp_path)
    spec["source"] = {"path": "w.duckdb", "query": "SELECT id, text FROM tickets WHERE ok"}
    (tmp_path / "job.yaml").write_text(json.dumps(spec))
    res = CliRunner().invoke(main, ["run", str(tmp_path / "job.yaml"), "--model", "fake", "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output[res.output.index("{"):])
    assert summary["rows"]["written"] == 3
    got = rows_of(tmp_path / "out.duckdb", "SELECT id, cat FROM labelled ORDER BY id")
    assert [g[0] for g in got] == [2, 4, 6]


def test_cli_bad_query_is_one_line_exit_2(tmp_path: Path) -> None:
    from click.testing import CliRunner

    make_db(tmp_path / "w.duckdb")
    spec = job_spec(tmp_path)
    spec["source"] = {"path": "w.duckdb", "query": "SELECT nothere FROM tickets"}
    (tmp_path / "job.yaml").write_text(json.dumps(spec))
    res = CliRunner().invoke(main, ["run", str(tmp_path / "job.yaml"), "--model", "fake"])
    assert res.exit_code == 2
    assert "check `query:`" in res.output and len(res.output.strip().splitlines()) == 1


def test_jobs_without_query_keep_their_run_identity(tmp_path: Path) -> None:
    spec = SourceSpec(path="in.csv")
    assert "query" not in spec.model_dump(mode="json")
    assert SourceSpec(path="w.duckdb", query="SELECT 1").model_dump()["query"] == "SELECT 1"


def test_missing_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "duckdb", None)
    with pytest.raises(SinkError, match=r"make install, or pip install -e '.\[duckdb\]' in the Corral"):
        ddb.DuckDbSink(Path("o.duckdb"), "t")
