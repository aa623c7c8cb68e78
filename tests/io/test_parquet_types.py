"""Parquet in, Parquet out: source columns keep their Arrow types and values.

Rows travel through the store as JSON (see corral.io.parquet, "JSON codec"); these tests check
that the Parquet sink turns them back into exactly the source's columns, that the text a prompt
or a CSV sink sees stays readable, and that resuming or writing the sink again changes nothing.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import sqlite3
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import corral
from corral import FakeModel, Job
from corral.io import Column
from corral.io.parquet import ParquetSink, decode_values, encode_array
from corral.testing import plain as untagged

PARIS = "Europe/Paris"
_NS = 1_709_281_800_000_000_001  # 2024-03-01T08:30:00.000000001Z


def source_table() -> pa.Table:
    """Five rows holding every awkward type, with a null in every column but `id` and `text`
    (the text a classify step reads)."""
    rec = pa.struct([("a", pa.int32()), ("b", pa.string()), ("at", pa.timestamp("ns"))])
    item = pa.struct([("sku", pa.string()), ("qty", pa.int16())])
    n = 5
    cols: dict[str, pa.Array] = {
        "id": pa.array(range(1, n + 1), pa.int64()),
        "text": pa.array(["refund please", "where is my parcel", "hello", "thanks!", "café ☕"]),
        "rec": pa.array(
            [{"a": 1, "b": "x", "at": _NS}, None, {"a": None, "b": None, "at": None},
             {"a": -7, "b": "", "at": 0}, {"a": 2**31 - 1, "b": "ü", "at": -1}],
            rec,
        ),
        "items": pa.array(
            [[{"sku": "A1", "qty": 2}, {"sku": "B2", "qty": None}], [], None, [None],
             [{"sku": None, "qty": -3}]],
            pa.list_(item),
        ),
        "at": pa.array(
            [dt.datetime(2024, 3, 1, 9, 30), None, dt.datetime(1969, 7, 20, 20, 17, 40, 5),
             dt.datetime(2024, 3, 1, 9, 30, 0, 500000), dt.datetime(1, 1, 1)],
            pa.timestamp("us"),
        ),
        "at_ns": pa.array([_NS, -1, None, 0, 86_400 * 10**9 + 999], pa.timestamp("ns")),
        "at_tz": pa.array(
            [1_709_281_800_000, 1_719_826_200_123, None, 0, -1], pa.timestamp("ms", tz=PARIS)
        ),
        "at_utc": pa.array([_NS, None, 0, 1, -(10**18)], pa.timestamp("ns", tz="UTC")),
        "price": pa.array(
            [Decimal("12.50"), Decimal("-0.01"), None, Decimal("0.00"), Decimal("99999999.99")],
            pa.decimal128(10, 2),
        ),
        "huge": pa.array(
            [Decimal("123456789012345678901234567890.12345"), None, Decimal("0"), Decimal("-1"),
             Decimal("1E-5")],
            pa.decimal256(40, 5),
        ),
        "blob": pa.array([b"\x00\x01\xff", b"", None, b"text", bytes(range(256))]),
        "big_blob": pa.array([b"\x89PNG", None, b"", b"\x00", b"z"], pa.large_binary()),
        "tag4": pa.array([b"ABCD", None, b"\x00\x00\x00\x00", b"wxyz", b"1234"], pa.binary(4)),
        "day": pa.array(
            [dt.date(2024, 3, 1), dt.date(1, 1, 1), None, dt.date(9999, 12, 31),
             dt.date(1970, 1, 1)],
            pa.date32(),
        ),
        "attrs": pa.array(
            [[("color", 1), ("size", 2)], [], None, [("dup", 1), ("dup", 2)], [("x", None)]],
            pa.map_(pa.string(), pa.int64()),
        ),
        "codes": pa.array(
            [[(1, "one")], None, [], [(-5, None), (7, "seven")], [(0, "")]],
            pa.map_(pa.int32(), pa.string()),
        ),
        "big_list": pa.array([[1, 2, 3], [], None, [None], [2**62]], pa.large_list(pa.int64())),
        "nested": pa.array(
            [[["a", "b"], []], None, [None, ["c"]], [], [[None]]], pa.list_(pa.list_(pa.string()))
        ),
        "deep": pa.array(
            [[[1.5]], [[float("inf")], None], None, [], [[-0.0, None]]],
            pa.large_list(pa.large_list(pa.float64())),
        ),
        "pair": pa.array([[1, 2], None, [3, None], [0, 0], [-1, -2]], pa.list_(pa.int8(), 2)),
        "long_text": pa.array(["a" * 1000, None, "", "ß", "line\nbreak"], pa.large_string()),
        "wait": pa.array([1, 10**9 + 5, None, -3, 0], pa.duration("ns")),
        "clock": pa.array([0, 3_600_000_001, None, 86_399_999_999, 5], pa.time64("us")),
        "kind": pa.array(["x", "y", None, "x", "z"], pa.dictionary(pa.int32(), pa.string())),
        "score": pa.array([1.25, float("inf"), None, float("-inf"), 3.0], pa.float32()),
        "flag": pa.array([True, None, False, True, False]),
        "count": pa.array([2**64 - 1, 0, None, 1, 7], pa.uint64()),
    }
    return pa.table(cols)


def write_source(tmp_path: Path, table: pa.Table | None = None) -> pa.Schema:
    pq.write_table(table if table is not None else source_table(), tmp_path / "in.parquet",
                   row_group_size=2)
    return pq.ParquetFile(tmp_path / "in.parquet").schema_arrow


def make_job(tmp_path: Path, *, key: str | None = "id", sink: Any = "out/o.parquet",
             input: str = "{text}") -> Job:
    d: dict[str, Any] = {
        "name": "types",
        "source": "in.parquet",
        "steps": [{"name": "label", "task": "classify", "input": input,
                   "labels": ["refund", "shipping", "other"]}],
        "sink": sink,
    }
    if key:
        d["key"] = key
    return Job.from_dict(d, base_dir=tmp_path)


def plain(col: pa.ChunkedArray) -> pa.Array:
    """One array; a dictionary column as its values (each file has its own dictionary)."""
    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
    return col.combine_chunks()


def assert_same_columns(out: pa.Table, src: pa.Table) -> None:
    """Every source column is in ``out`` with the source's type and values, row for row (by
    ``id``)."""
    out = out.sort_by("id")
    src = src.sort_by("id")
    for name in src.column_names:
        assert out.schema.field(name).type == src.schema.field(name).type, name
        got, want = plain(out.column(name)), plain(src.column(name))
        assert got.equals(want), f"{name}: {got.to_pylist()} != {want.to_pylist()}"
        assert got.null_count == want.null_count, name


@pytest.mark.parametrize("key", ["id", None])
def test_parquet_source_columns_come_back_with_their_types(tmp_path: Path, key) -> None:
    schema = write_source(tmp_path)
    r = corral.run(make_job(tmp_path, key=key), model=FakeModel())
    assert r.written == 5
    out = pq.read_table(tmp_path / "out" / "o.parquet")
    src = pq.read_table(tmp_path / "in.parquet")
    assert out.schema.names[: len(schema)] == schema.names
    assert pa.schema(list(out.schema)[: len(schema)]) == schema
    assert_same_columns(out, src)
    assert out.schema.field("label").type == pa.string()  # step columns as before
    assert set(out.column("label").to_pylist()) <= {"refund", "shipping", "other"}
    if key is None:
        assert out.schema.field("_key").type == pa.string()


def test_resume_and_rerun_keep_the_types(tmp_path: Path) -> None:
    schema = write_source(tmp_path)
    src = pq.read_table(tmp_path / "in.parquet")
    fake = FakeModel()
    first = corral.run(make_job(tmp_path), model=fake, limit=2)
    assert first.written == 2
    partial = pq.read_table(tmp_path / "out" / "o.parquet")
    assert pa.schema(list(partial.schema)[: len(schema)]) == schema
    assert_same_columns(partial, src.slice(0, 2))

    resumed = corral.run(make_job(tmp_path), model=fake)  # picks up rows 3-5 from the store
    assert resumed.written == 5 and fake.calls == 5  # 2, then 3 more
    assert_same_columns(pq.read_table(tmp_path / "out" / "o.parquet"), src)

    (tmp_path / "out" / "o.parquet").unlink()
    again = FakeModel()
    corral.run(make_job(tmp_path), model=again)  # finished run: the sink is written from the store
    assert again.calls == 0
    out = pq.read_table(tmp_path / "out" / "o.parquet")
    assert pa.schema(list(out.schema)[: len(schema)]) == schema
    assert_same_columns(out, src)


def test_quarantined_rows_keep_their_types(tmp_path: Path) -> None:
    table = source_table()
    ids = pa.array([1, None, 3, 4, 5], pa.int64())  # row 2 has no key: quarantined
    table = table.set_column(0, "id", ids)
    schema = write_source(tmp_path, table)
    r = corral.run(make_job(tmp_path), model=FakeModel())
    assert r.quarantined == 1
    q = pq.read_table(tmp_path / "out" / "o.quarantine.parquet")
    assert pa.schema(list(q.schema)[: len(schema)]) == schema
    assert q.column("_reason").to_pylist()[0].startswith("empty key")
    row = table.slice(1, 1)
    for name in table.column_names:
        assert plain(q.column(name)).equals(plain(row.column(name))), name


def test_prompts_and_csv_sinks_see_readable_text(tmp_path: Path) -> None:
    write_source(tmp_path)
    prompts: list[str] = []

    def script(request) -> dict[str, Any]:
        prompts.append(untagged(request.messages[-1].content))
        return {"label": "other"}

    template = "{at_tz} | {at_ns} | {price} | {blob} | {day} | {rec.b} | {attrs} | {kind} | {wait}"
    job = make_job(tmp_path, sink="out/o.csv", input=template)
    corral.run(job, model=FakeModel(script=script))
    assert any(
        (
            "2024-03-01T09:30:00+01:00 | 2024-03-01T08:30:00.000000001 | 12.50 | AAH/ | "
            '2024-03-01 | x | {"color": 1, "size": 2} | x | 1e-09'
        ) in p
        for p in prompts
    ), prompts
    with open(tmp_path / "out" / "o.csv", newline="", encoding="utf-8") as f:
        rows = {r["id"]: r for r in csv.DictReader(f)}
    first = rows["1"]
    assert first["at_tz"] == "2024-03-01T09:30:00+01:00"
    assert first["at"] == "2024-03-01T09:30:00"
    assert first["price"] == "12.50" and first["huge"] == "123456789012345678901234567890.12345"
    assert first["blob"] == "AAH/" and first["day"] == "2024-03-01"
    assert json.loads(first["rec"]) == {"a": 1, "b": "x", "at": "2024-03-01T08:30:00.000000001"}
    assert json.loads(first["items"]) == [{"sku": "A1", "qty": 2}, {"sku": "B2", "qty": None}]
    assert json.loads(first["codes"]) == [[1, "one"]]
    assert rows["4"]["attrs"] == '[["dup", 1], ["dup", 2]]'  # repeated keys stay pairs
    assert rows["2"]["score"] == "Infinity" and rows["2"]["at"] == ""  # null: an empty cell
    assert rows["2"]["wait"] == "1.000000005" and rows["2"]["clock"] == "01:00:00.000001"


@pytest.mark.parametrize("name", source_table().column_names)
def test_codec_round_trips_through_json(name: str) -> None:
    col = source_table().column(name).combine_chunks()
    encoded = json.loads(json.dumps(encode_array(col), allow_nan=False))
    back = decode_values(encoded, col.type)
    assert back.type == col.type
    assert back.equals(col), (back.to_pylist(), col.to_pylist())


MORE_TYPES = [
    pa.array([0, 59, None], pa.timestamp("s", tz="+05:30")),
    pa.array([3661, None], pa.time32("s")),
    pa.array([1, None, 86_399_999], pa.time32("ms")),
    pa.array([5, None, -2], pa.duration("s")),
    pa.array([86_400_000, None], pa.date64()),
    pa.array([1.5, None, float("inf")], pa.float16()),
    pa.array(["x", None], pa.string_view()),
    pa.array([None, None], pa.null()),
    pa.array([[("k", {"t": 1})], None], pa.map_(pa.string(), pa.struct([("t", pa.time64("ns"))]))),
    pa.array([["a", None, "a"], None], pa.list_(pa.dictionary(pa.int8(), pa.string()))),
    pa.array([[1, None], None], pa.list_(pa.timestamp("ns", tz="Asia/Kolkata"), 2)),
    pa.array([{"m": [(b"k", b"v")]}, None], pa.struct([("m", pa.map_(pa.binary(), pa.binary()))])),
]


@pytest.mark.parametrize("col", MORE_TYPES, ids=[str(c.type) for c in MORE_TYPES])
def test_codec_round_trips_other_types(col: pa.Array) -> None:
    encoded = json.loads(json.dumps(encode_array(col), allow_nan=False))
    back = decode_values(encoded, col.type)
    assert back.type == col.type and back.equals(col), (back.to_pylist(), col.to_pylist())


def test_values_that_do_not_decode_fall_back_to_text(tmp_path: Path) -> None:
    # e.g. rows a different version stored: the column is written as text, not lost, not fatal
    sink = ParquetSink(tmp_path / "o.parquet")
    sink.row_group_rows = 2
    cols = [Column("id", "integer"), Column("at", "string", pa.timestamp("ms"))]
    rows = [{"id": 1, "at": "2024-03-01T09:30:00"}, {"id": 2, "at": None},
            {"id": 3, "at": "last Tuesday"}]
    assert sink.write(cols, iter([rows]), "id") == 3
    t = pq.read_table(tmp_path / "o.parquet")
    assert t.schema.field("at").type == pa.string()
    assert t.column("at").to_pylist() == ["2024-03-01T09:30:00", None, "last Tuesday"]
    assert pq.ParquetFile(tmp_path / "o.parquet").metadata.num_row_groups == 2

    good = ParquetSink(tmp_path / "p.parquet")
    good.write(cols, iter([rows[:2]]), "id")
    t = pq.read_table(tmp_path / "p.parquet")
    assert t.schema.field("at").type == pa.timestamp("ms")
    assert t.column("at").to_pylist() == [dt.datetime(2024, 3, 1, 9, 30), None]


def test_jsonl_and_sqlite_sinks_take_parquet_rows(tmp_path: Path) -> None:
    write_source(tmp_path)
    corral.run(make_job(tmp_path, sink="out/o.jsonl"), model=FakeModel())
    with open(tmp_path / "out" / "o.jsonl", encoding="utf-8") as f:
        rows = {r["id"]: r for r in map(json.loads, f)}
    assert len(rows) == 5
    assert rows[1]["rec"] == {"a": 1, "b": "x", "at": "2024-03-01T08:30:00.000000001"}
    assert rows[1]["at_tz"] == "2024-03-01T09:30:00+01:00" and rows[1]["price"] == "12.50"
    assert rows[4]["attrs"] == [["dup", 1], ["dup", 2]] and rows[2]["at"] is None

    corral.run(make_job(tmp_path, sink={"path": "out/o.db", "table": "t"}), model=FakeModel())
    con = sqlite3.connect(tmp_path / "out" / "o.db")
    try:
        got = dict(con.execute("SELECT id, at_tz FROM t").fetchall())
        rec = con.execute("SELECT rec FROM t WHERE id = 1").fetchone()[0]
    finally:
        con.close()
    assert len(got) == 5 and got[1] == "2024-03-01T09:30:00+01:00" and got[3] is None
    assert json.loads(rec)["b"] == "x"
