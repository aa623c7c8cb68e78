"""`vector` columns (the embed task's) in every sink: the size found in the rows when the step
does not know it, and the type each format writes."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from corral.io import Column
from corral.io.base import sized_vectors
from corral.io.csv import CsvSink
from corral.io.jsonl import JsonlSink
from corral.io.sqlite import SqliteSink

COLS = [Column("id", "string"), Column("vec", "vector")]


def batches(*groups: list[tuple[str, list[float] | None]]) -> list[list[dict]]:
    return [[{"id": k, "vec": v} for k, v in g] for g in groups]


def test_the_size_comes_from_the_first_vector_and_every_row_is_still_written():
    data = batches([("a", None)], [("b", [0.5, 0.5, 0.0]), ("c", [1.0, 0.0, 0.0])], [("d", None)])
    cols, rows = sized_vectors(COLS, iter(data))
    assert [c.size for c in cols] == [None, 3]
    assert [r["id"] for b in rows for r in b] == ["a", "b", "c", "d"]


def test_a_column_without_any_vector_keeps_no_size():
    cols, rows = sized_vectors(COLS, iter(batches([("a", None)])))
    assert cols[1].size is None and [r["id"] for b in rows for r in b] == ["a"]


def test_a_known_size_is_kept_and_nothing_is_read_ahead():
    sized = [COLS[0], Column("vec", "vector", size=7)]
    source = iter(batches([("a", [0.0] * 7)]))
    cols, rows = sized_vectors(sized, source)
    assert cols == sized and rows is source


def test_parquet_writes_fixed_size_float32_lists_and_a_list_when_all_are_null(tmp_path: Path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    from corral.io.parquet import ParquetSink

    ParquetSink(tmp_path / "v.parquet").write(COLS, iter(batches([("a", [0.25, -0.5])])), "id")
    t = pq.read_table(tmp_path / "v.parquet")
    assert t.schema.field("vec").type == pa.list_(pa.float32(), 2)
    assert t.column("vec").to_pylist() == [[0.25, -0.5]]
    ParquetSink(tmp_path / "n.parquet").write(COLS, iter(batches([("a", None)])), "id")
    assert pq.read_schema(tmp_path / "n.parquet").field("vec").type == pa.list_(pa.float32())


def test_duckdb_declares_float_arrays_of_the_size(tmp_path: Path):
    duckdb = pytest.importorskip("duckdb")
    from corral.io.duckdb import DuckDbSink

    DuckDbSink(tmp_path / "v.duckdb", "t").write(COLS, iter(batches([("a", [0.25, -0.5, 1.0])])), "id")
    con = duckdb.connect(str(tmp_path / "v.duckdb"))
    kind = con.execute("SELECT data_type FROM information_schema.columns WHERE column_name = 'vec'").fetchone()
    assert kind == ("FLOAT[3]",)
    assert con.execute("SELECT vec FROM t").fetchone() == ((0.25, -0.5, 1.0),)


def test_sqlite_csv_and_jsonl_hold_json_arrays(tmp_path: Path):
    rows = batches([("a", [0.25, -0.5])])
    SqliteSink(tmp_path / "v.sqlite", "t").write(COLS, iter(rows), "id")
    cell = sqlite3.connect(tmp_path / "v.sqlite").execute("SELECT vec FROM t").fetchone()[0]
    assert json.loads(cell) == [0.25, -0.5]
    CsvSink(tmp_path / "v.csv").write(COLS, iter(rows), "id")
    assert (tmp_path / "v.csv").read_text().splitlines()[1] == 'a,"[0.25, -0.5]"'
    JsonlSink(tmp_path / "v.jsonl").write(COLS, iter(rows), "id")
    assert json.loads((tmp_path / "v.jsonl").read_text()) == {"id": "a", "vec": [0.25, -0.5]}
