"""Sources and sinks, on real files in tmp_path and real SQLite databases."""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import json
import sqlite3
import tracemalloc
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from corral.errors import SinkError, SourceError
from corral.io import (
    Column,
    SinkSpec,
    SourceRow,
    SourceSpec,
    open_quarantine_sink,
    open_sink,
    open_source,
    quarantine_spec,
)
from corral.io.parquet import ParquetSink

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
SMS_TSV = SHARED / "sms_spam" / "SMSSpamCollection.tsv"

COLUMNS = [
    Column("id", "string"),
    Column("text", "string"),
    Column("score", "number"),
    Column("n", "integer"),
    Column("ok", "boolean"),
    Column("tags", "list"),
]

ROWS: list[dict[str, Any]] = [
    {"id": "a", "text": "hello, world", "score": 0.5, "n": 1, "ok": True, "tags": ["x", "y"]},
    {"id": "b", "text": 'she said "hi"\nthen left', "score": None, "n": 2, "ok": False, "tags": []},
    {"id": "c", "text": None, "score": 2.0, "n": None, "ok": None, "tags": None},
]


def src(tmp_path: Path, name: str, content: str | bytes, **kw: Any):
    p = tmp_path / name
    if isinstance(content, str):
        p.write_text(content, encoding="utf-8")
    else:
        p.write_bytes(content)
    return open_source(SourceSpec(path=name, **kw), tmp_path)


def data(source, start: int = 0) -> list[dict[str, Any] | None]:
    return [r.data for r in source.rows(start)]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# ----------------------------------------------------------------------------- CSV / TSV


def test_csv_reads_header_rows_and_line_numbers(tmp_path: Path) -> None:
    s = src(tmp_path, "in.csv", "id,text\n1,hello\n\n2,\"multi\nline\ntext\"\n3,after\n")
    assert s.format == "csv"
    assert s.columns == [Column("id", "string"), Column("text", "string")]
    rows = list(s.rows())
    assert [r.ordinal for r in rows] == [0, 1, 2]
    assert [r.line for r in rows] == [2, 4, 7]
    assert rows[1].data == {"id": "2", "text": "multi\nline\ntext"}
    assert rows[2].data == {"id": "3", "text": "after"}
    assert all(r.error is None for r in rows)


def test_csv_crlf_bom_and_quoted_crlf(tmp_path: Path) -> None:
    raw = "\ufeffid,text\r\n1,\"a\r\nb\"\r\n2,c\r\n".encode()
    s = src(tmp_path, "in.csv", raw)
    assert s.column_names == ["id", "text"]
    rows = list(s.rows())
    assert rows[0].data == {"id": "1", "text": "a\r\nb"}
    assert [r.line for r in rows] == [2, 4]


def test_csv_malformed_rows_do_not_stop_reading(tmp_path: Path) -> None:
    s = src(tmp_path, "in.csv", "a,b,c,d\n1,2,3,4\n1,2,3,4,5,6\n5,6,7,8\n1,2\rx,y\n9,9,9,9\n")
    rows = list(s.rows())
    assert [r.ordinal for r in rows] == [0, 1, 2, 3, 4]
    assert rows[1] == SourceRow(1, 3, None, "line 3: expected 4 fields, found 6")
    assert rows[2].data == {"a": "5", "b": "6", "c": "7", "d": "8"}
    assert rows[3].data is None and rows[3].line == 5
    assert rows[3].error.startswith("line 5: ")  # a csv.Error (stray carriage return)
    assert rows[4].data == {"a": "9", "b": "9", "c": "9", "d": "9"} and rows[4].line == 6


@pytest.mark.parametrize("delimiter", [";", "|", "\t"])
def test_csv_delimiter_option(tmp_path: Path, delimiter: str) -> None:
    text = f'id{delimiter}text\n1{delimiter}"x{delimiter}y"\n2{delimiter}z\n'
    s = src(tmp_path, "in.csv", text, delimiter=delimiter)
    assert data(s) == [{"id": "1", "text": f"x{delimiter}y"}, {"id": "2", "text": "z"}]


def test_delimiter_spelled_out_tab(tmp_path: Path) -> None:
    s = src(tmp_path, "in.txt", "a\tb\n1\t2\n", format="csv", delimiter="\\t")
    assert data(s) == [{"a": "1", "b": "2"}]


def test_tsv_has_no_quoting(tmp_path: Path) -> None:
    s = src(tmp_path, "in.tsv", 'Label\tSMS\nham\t"Hi" she said\nspam\tsay "x\nham\tok"\n')
    assert s.format == "tsv"
    assert data(s) == [
        {"Label": "ham", "SMS": '"Hi" she said'},
        {"Label": "spam", "SMS": 'say "x'},
        {"Label": "ham", "SMS": 'ok"'},
    ]
    assert [r.line for r in s.rows()] == [2, 3, 4]


@pytest.mark.skipif(not SMS_TSV.exists(), reason="../shared/data is not present")
def test_real_sms_spam_tsv() -> None:
    s = open_source(SourceSpec(path=str(SMS_TSV)), Path("/"))
    assert s.column_names == ["Label", "SMS"]
    rows = list(s.rows())
    assert len(rows) == 5574
    assert all(r.error is None for r in rows)
    labels = [r.data["Label"] for r in rows]
    assert labels.count("ham") == 4827 and labels.count("spam") == 747
    assert rows[0].line == 2
    assert rows[0].data["SMS"].startswith("Go until jurong point, crazy..")
    # Quotes are part of the text: line 618 starts with a quoted phrase and goes on after it.
    assert rows[616].line == 618
    assert rows[616].data["SMS"].startswith('"Happy valentines day" I know its early')
    assert rows[-1].data == {"Label": "ham", "SMS": "Rofl. Its true to its name"}
    # Each row is exactly the physical line it came from.
    lines = SMS_TSV.read_text(encoding="utf-8").splitlines()
    for r in rows[::250]:
        assert lines[r.line - 1] == f"{r.data['Label']}\t{r.data['SMS']}"


def test_csv_start_skips_rows(tmp_path: Path) -> None:
    s = src(tmp_path, "in.csv", "x\n" + "".join(f"{i}\n" for i in range(10)))
    rows = list(s.rows(start=7))
    assert [r.ordinal for r in rows] == [7, 8, 9]
    assert [r.data["x"] for r in rows] == ["7", "8", "9"]
    assert [r.line for r in rows] == [9, 10, 11]
    assert list(s.rows(start=50)) == []


def test_start_counts_malformed_rows(tmp_path: Path) -> None:
    s = src(tmp_path, "in.csv", "a,b\n1,2\n3\n4,5\n")
    assert [(r.ordinal, r.data) for r in s.rows(start=1)] == [(1, None), (2, {"a": "4", "b": "5"})]


def test_non_utf8_error_names_file_line_and_byte(tmp_path: Path) -> None:
    s = src(tmp_path, "in.csv", "id,text\n1,ok\n2,caf\xe9\n".encode("latin-1"))
    it = s.rows()
    assert next(it).data == {"id": "1", "text": "ok"}
    with pytest.raises(SourceError) as e:
        next(it)
    msg = str(e.value)
    assert str(tmp_path / "in.csv") in msg
    assert "line 3" in msg and "0xe9" in msg
    assert "UTF-8" in msg and "encoding:" in msg and "latin-1" in msg
    assert "\n" not in msg
    latin = open_source(SourceSpec(path="in.csv", encoding="latin-1"), tmp_path)
    assert data(latin)[1] == {"id": "2", "text": "café"}


def test_non_utf8_jsonl_error(tmp_path: Path) -> None:
    s = src(tmp_path, "in.jsonl", b'{"a": 1}\n{"a": "\xff"}\n')
    with pytest.raises(SourceError, match=r"line 2.*0xff"):
        list(s.rows())


def test_utf16_source(tmp_path: Path) -> None:
    s = src(tmp_path, "in.csv", "a,b\n1,ü\n".encode("utf-16"), encoding="utf-16")
    assert data(s) == [{"a": "1", "b": "ü"}]


def test_unknown_encoding(tmp_path: Path) -> None:
    (tmp_path / "in.csv").write_text("a\n1\n")
    with pytest.raises(SourceError, match="unknown encoding 'klingon'.*`encoding:`"):
        open_source(SourceSpec(path="in.csv", encoding="klingon"), tmp_path)


def test_missing_file_message(tmp_path: Path) -> None:
    with pytest.raises(SourceError) as e:
        open_source(SourceSpec(path="data/x.csv"), tmp_path)
    msg = str(e.value)
    assert msg.startswith(f"source file not found: {tmp_path / 'data' / 'x.csv'}")
    assert "`source:`" in msg and "relative to the job file's folder" in msg


def test_absolute_source_path_ignores_base_dir(tmp_path: Path) -> None:
    (tmp_path / "in.csv").write_text("a\n1\n")
    s = open_source(SourceSpec(path=str(tmp_path / "in.csv")), Path("/nonexistent"))
    assert s.path == tmp_path / "in.csv"


def test_source_folder_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "d.csv").mkdir()
    with pytest.raises(SourceError, match="folder"):
        open_source(SourceSpec(path="d.csv"), tmp_path)


@pytest.mark.parametrize("content", ["", "\n\n", "\ufeff"])
def test_empty_csv(tmp_path: Path, content: str) -> None:
    with pytest.raises(SourceError) as e:
        src(tmp_path, "in.csv", content)
    assert "empty" in str(e.value) and "header" in str(e.value)
    assert str(tmp_path / "in.csv") in str(e.value)


def test_blank_header(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no header.*add a header row"):
        src(tmp_path, "in.csv", ",,\n1,2,3\n")


def test_duplicate_header(tmp_path: Path) -> None:
    with pytest.raises(SourceError) as e:
        src(tmp_path, "in.csv", "id,text,id\n1,2,3\n")
    msg = str(e.value)
    assert "duplicate column name 'id'" in msg and "columns 1 and 3" in msg and "rename" in msg


def test_unnamed_header_cells_get_names(tmp_path: Path) -> None:
    s = src(tmp_path, "in.csv", ",text\n0,hi\n")
    assert s.column_names == ["column_1", "text"]


def test_unknown_extension(tmp_path: Path) -> None:
    (tmp_path / "in.txt").write_text("a\n1\n")
    with pytest.raises(SourceError) as e:
        open_source(SourceSpec(path="in.txt"), tmp_path)
    msg = str(e.value)
    assert ".txt" in msg and "`format:`" in msg
    for fmt in ("csv", "tsv", "jsonl", "parquet", "sqlite"):
        assert fmt in msg
    s = open_source(SourceSpec(path="in.txt", format="csv"), tmp_path)
    assert data(s) == [{"a": "1"}]


def test_bad_delimiter(tmp_path: Path) -> None:
    (tmp_path / "in.csv").write_text("a\n1\n")
    with pytest.raises(SourceError, match="delimiter.*single character"):
        open_source(SourceSpec(path="in.csv", delimiter=";;"), tmp_path)


# ----------------------------------------------------------------------------- JSONL


def test_jsonl_rows_blank_lines_and_errors(tmp_path: Path) -> None:
    content = (
        '{"id": 1, "t": "a"}\n\n{"id": 2, "t": {"x": [1]}}\n{"id": 3,\n[1, 2]\n"s"\n  \n'
        '{"id": 4, "extra": null}\n'
    )
    s = src(tmp_path, "in.jsonl", content)
    assert s.columns == [Column("id", "any"), Column("t", "any"), Column("extra", "any")]
    rows = list(s.rows())
    assert [r.ordinal for r in rows] == [0, 1, 2, 3, 4, 5]
    assert [r.line for r in rows] == [1, 3, 4, 5, 6, 8]
    assert rows[1].data == {"id": 2, "t": {"x": [1]}}
    assert rows[2].data is None and rows[2].error.startswith("line 4: not valid JSON")
    assert rows[3].error == "line 5: expected a JSON object, found an array"
    assert rows[4].error == "line 6: expected a JSON object, found a string"
    assert rows[5].data == {"id": 4, "extra": None}
    assert [r.ordinal for r in s.rows(start=4)] == [4, 5]


def test_jsonl_empty(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="empty"):
        src(tmp_path, "in.jsonl", "\n \n")


# ----------------------------------------------------------------------------- Parquet source


def test_parquet_source_types_and_values(tmp_path: Path) -> None:
    table = pa.table(
        {
            "id": pa.array([1, 2, 3], pa.int32()),
            "name": ["a", None, "c"],
            "score": [1.5, float("nan"), None],
            "ok": [True, False, None],
            "day": [dt.date(2024, 1, 2), None, dt.date(2024, 3, 4)],
            "at": pa.array([dt.datetime(2024, 1, 2, 3, 4, 5), None, None], pa.timestamp("s")),
            "price": pa.array([decimal.Decimal("1.50"), None, None], pa.decimal128(5, 2)),
            "tags": [["x"], [], None],
            "blob": [b"\x00\x01", None, None],
            "meta": [{"k": 1}, None, None],
        }
    )
    pq.write_table(table, tmp_path / "in.parquet", row_group_size=2)
    s = open_source(SourceSpec(path="in.parquet"), tmp_path)
    assert {c.name: c.type for c in s.columns} == {
        "id": "integer", "name": "string", "score": "number", "ok": "boolean", "day": "date",
        "at": "string", "price": "string", "tags": "list", "blob": "string", "meta": "any",
    }
    rows = list(s.rows())
    assert [r.ordinal for r in rows] == [0, 1, 2] and all(r.line is None for r in rows)
    assert rows[0].data == {
        "id": 1, "name": "a", "score": 1.5, "ok": True, "day": "2024-01-02",
        "at": "2024-01-02T03:04:05", "price": "1.50", "tags": ["x"], "blob": "AAE=",
        "meta": {"k": 1},
    }
    assert rows[1].data["score"] is None
    json.dumps([r.data for r in rows])  # JSON-friendly
    assert [r.data["id"] for r in s.rows(start=1)] == [2, 3]
    assert [r.ordinal for r in s.rows(start=2)] == [2]
    assert list(s.rows(start=3)) == []


def test_parquet_start_over_many_row_groups(tmp_path: Path) -> None:
    pq.write_table(pa.table({"i": list(range(5000))}), tmp_path / "in.parquet", row_group_size=700)
    s = open_source(SourceSpec(path="in.parquet"), tmp_path)
    rows = list(s.rows(start=4321))
    assert [r.ordinal for r in rows] == list(range(4321, 5000))
    assert [r.data["i"] for r in rows] == list(range(4321, 5000))


def test_unreadable_parquet(tmp_path: Path) -> None:
    (tmp_path / "in.parquet").write_text("id,text\n1,not parquet\n")
    with pytest.raises(SourceError) as e:
        open_source(SourceSpec(path="in.parquet"), tmp_path)
    msg = str(e.value)
    assert "cannot read parquet file" in msg and str(tmp_path / "in.parquet") in msg
    assert "`format:`" in msg


# ----------------------------------------------------------------------------- SQLite source


def make_db(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.executescript(
        """
        CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, price REAL, ok BOOLEAN,
                            day DATE, note VARCHAR(20), raw BLOB, misc);
        CREATE TABLE other (x);
        """
    )
    conn.executemany(
        "INSERT INTO items VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [(i, f"n{i}", i / 2, i % 2, "2024-01-02", None, b"\x01" if i == 1 else None, i)
         for i in range(1, 2501)],
    )
    conn.commit()
    conn.close()


def test_sqlite_source(tmp_path: Path) -> None:
    make_db(tmp_path / "in.db")
    s = open_source(SourceSpec(path="in.db", table="items"), tmp_path)
    assert {c.name: c.type for c in s.columns} == {
        "id": "integer", "name": "string", "price": "number", "ok": "boolean", "day": "date",
        "note": "string", "raw": "any", "misc": "any",
    }
    rows = list(s.rows())
    assert len(rows) == 2500 and rows[-1].ordinal == 2499
    assert rows[0] == SourceRow(0, None, {
        "id": 1, "name": "n1", "price": 0.5, "ok": True, "day": "2024-01-02", "note": None,
        "raw": "AQ==", "misc": 1,
    })
    assert [r.data["id"] for r in s.rows(start=2497)] == [2498, 2499, 2500]
    assert [r.ordinal for r in s.rows(start=2497)] == [2497, 2498, 2499]


def test_sqlite_source_needs_table(tmp_path: Path) -> None:
    make_db(tmp_path / "in.db")
    with pytest.raises(SourceError) as e:
        open_source(SourceSpec(path="in.db"), tmp_path)
    assert "`table:`" in str(e.value) and "items" in str(e.value) and "other" in str(e.value)
    with pytest.raises(SourceError) as e:
        open_source(SourceSpec(path="in.db", table="nope"), tmp_path)
    msg = str(e.value)
    assert "'nope' not found" in msg and "tables: items, other" in msg and "`table:`" in msg


def test_sqlite_source_not_a_database(tmp_path: Path) -> None:
    (tmp_path / "in.db").write_text("hello\n" * 100)
    with pytest.raises(SourceError, match="cannot read SQLite database"):
        open_source(SourceSpec(path="in.db", table="t"), tmp_path)


def test_sqlite_fingerprint(tmp_path: Path) -> None:
    make_db(tmp_path / "in.db")
    spec = SourceSpec(path="in.db", table="items")
    a = open_source(spec, tmp_path).fingerprint()
    assert a == open_source(spec, tmp_path).fingerprint() and len(a) == 64
    conn = sqlite3.connect(tmp_path / "in.db")
    conn.execute("CREATE TABLE unrelated (y)")  # another table does not matter
    conn.commit()
    assert open_source(spec, tmp_path).fingerprint() == a
    conn.execute("UPDATE items SET name = 'changed' WHERE id = 7")
    conn.commit()
    conn.close()
    assert open_source(spec, tmp_path).fingerprint() != a


# ----------------------------------------------------------------------------- fingerprints


@pytest.mark.parametrize("name", ["in.csv", "in.jsonl"])
def test_file_fingerprint(tmp_path: Path, name: str) -> None:
    content = "a,b\n1,2\n" if name.endswith(".csv") else '{"a": 1}\n'
    s = src(tmp_path, name, content)
    fp = s.fingerprint()
    assert len(fp) == 64 and fp == s.fingerprint()
    assert open_source(SourceSpec(path=name), tmp_path).fingerprint() == fp
    (tmp_path / name).write_text(content + content.splitlines()[-1] + "\n")
    assert s.fingerprint() != fp


def test_parquet_fingerprint(tmp_path: Path) -> None:
    pq.write_table(pa.table({"a": [1, 2]}), tmp_path / "in.parquet")
    s = open_source(SourceSpec(path="in.parquet"), tmp_path)
    fp = s.fingerprint()
    assert fp == s.fingerprint()
    pq.write_table(pa.table({"a": [1, 3]}), tmp_path / "in.parquet")
    assert s.fingerprint() != fp


# ----------------------------------------------------------------------------- sinks


def batches(rows: list[dict[str, Any]], size: int = 2):
    for i in range(0, len(rows), size):
        yield rows[i : i + size]


@pytest.mark.parametrize("name", ["out/o.csv", "out/o.tsv", "out/o.jsonl", "out/o.parquet"])
def test_file_sink_round_trip(tmp_path: Path, name: str) -> None:
    sink = open_sink(SinkSpec(path=name), tmp_path)
    assert sink.path == tmp_path / name
    assert sink.write(COLUMNS, batches(ROWS), "id") == 3
    back = data(open_source(SourceSpec(path=name), tmp_path))
    if name.endswith(".parquet"):
        assert back == ROWS
    elif name.endswith(".jsonl"):
        assert back == ROWS
    else:
        text = ROWS[1]["text"] if name.endswith(".csv") else 'she said "hi"\\nthen left'
        assert back == [
            {"id": "a", "text": "hello, world", "score": "0.5", "n": "1", "ok": "true",
             "tags": '["x", "y"]'},
            {"id": "b", "text": text, "score": "", "n": "2", "ok": "false", "tags": "[]"},
            {"id": "c", "text": "", "score": "2.0", "n": "", "ok": "", "tags": ""},
        ]
    assert leftovers(tmp_path / "out") == []


@pytest.mark.parametrize("name", ["o.csv", "o.tsv", "o.jsonl", "o.parquet"])
def test_file_sink_idempotent(tmp_path: Path, name: str) -> None:
    sink = open_sink(SinkSpec(path=name), tmp_path)
    sink.write(COLUMNS, batches(ROWS), "id")
    first = (tmp_path / name).read_bytes()
    sink.write(COLUMNS, batches(ROWS), "id")
    assert (tmp_path / name).read_bytes() == first
    assert len(data(open_source(SourceSpec(path=name), tmp_path))) == 3
    assert leftovers(tmp_path) == []


def test_csv_sink_delimiter(tmp_path: Path) -> None:
    sink = open_sink(SinkSpec(path="o.csv", delimiter=";"), tmp_path)
    sink.write([Column("k"), Column("v")], [[{"k": "1", "v": "a;b"}]], "k")
    assert (tmp_path / "o.csv").read_text() == 'k;v\n1;"a;b"\n'
    back = open_source(SourceSpec(path="o.csv", delimiter=";"), tmp_path)
    assert data(back) == [{"k": "1", "v": "a;b"}]


def test_tsv_sink_writes_quotes_plainly(tmp_path: Path) -> None:
    sink = open_sink(SinkSpec(path="o.tsv"), tmp_path)
    sink.write([Column("k"), Column("v")], [[{"k": "1", "v": '"Hi" she\tsaid'}]], "k")
    assert (tmp_path / "o.tsv").read_text() == 'k\tv\n1\t"Hi" she\\tsaid\n'


def test_sink_consumes_batches_lazily(tmp_path: Path) -> None:
    seen: list[int] = []

    def gen():
        for i in range(5):
            seen.append(i)
            yield [{"id": str(i)}]

    sink = open_sink(SinkSpec(path="o.jsonl"), tmp_path)
    it = gen()
    assert sink.write([Column("id")], it, "id") == 5
    assert seen == [0, 1, 2, 3, 4]


def test_failed_write_leaves_old_file_and_no_temp(tmp_path: Path) -> None:
    sink = open_sink(SinkSpec(path="o.csv"), tmp_path)
    sink.write([Column("id")], [[{"id": "1"}]], "id")

    def boom():
        yield [{"id": "2"}]
        raise RuntimeError("engine failed")

    with pytest.raises(RuntimeError):
        sink.write([Column("id")], boom(), "id")
    assert (tmp_path / "o.csv").read_text() == "id\n1\n"
    assert leftovers(tmp_path) == []


def test_sink_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(SinkError) as e:
        open_sink(SinkSpec(path="out.xlsx"), tmp_path)
    msg = str(e.value)
    assert ".xlsx" in msg and "`format:`" in msg and "`sink:`" in msg and "parquet" in msg


def test_sink_not_writable(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    with pytest.raises(SinkError) as e:
        open_sink(SinkSpec(path="afile/out/o.csv"), tmp_path)
    msg = str(e.value)
    assert str(tmp_path / "afile") in msg and "`sink:`" in msg
    (tmp_path / "adir.csv").mkdir()
    with pytest.raises(SinkError, match="folder"):
        open_sink(SinkSpec(path="adir.csv"), tmp_path)


def test_sink_write_error_is_sink_error(tmp_path: Path) -> None:
    sink = open_sink(SinkSpec(path="sub/o.csv"), tmp_path)
    (tmp_path / "sub").write_text("now a file")  # created after the open-time check
    with pytest.raises(SinkError, match="sub"):
        sink.write([Column("id")], [[{"id": "1"}]], "id")


# ----------------------------------------------------------------------------- parquet sink


def read_parquet(path: Path) -> pa.Table:
    return pq.read_table(path)


def test_parquet_sink_schema(tmp_path: Path) -> None:
    cols = COLUMNS + [Column("day", "date"), Column("extra", "any")]
    rows = [dict(r, day=f"2024-01-0{i + 1}", extra={"k": i}) for i, r in enumerate(ROWS)]
    open_sink(SinkSpec(path="o.parquet"), tmp_path).write(cols, batches(rows), "id")
    t = read_parquet(tmp_path / "o.parquet")
    assert t.schema.field("id").type == pa.string()
    assert t.schema.field("score").type == pa.float64()
    assert t.schema.field("n").type == pa.int64()
    assert t.schema.field("ok").type == pa.bool_()
    assert t.schema.field("tags").type == pa.list_(pa.string())
    assert t.schema.field("day").type == pa.date32()
    assert t.schema.field("extra").type == pa.string()  # dicts: JSON text
    assert t.column("day").to_pylist()[0] == dt.date(2024, 1, 1)
    assert t.column("extra").to_pylist()[0] == '{"k": 0}'


def test_parquet_sink_all_none_first_batch(tmp_path: Path) -> None:
    cols = [Column("id"), Column("n", "integer"), Column("x", "any"), Column("tags", "list")]
    rows = [{"id": str(i), "n": None, "x": None, "tags": None} for i in range(4)]
    rows += [{"id": "4", "n": 7, "x": 1.5, "tags": ["a"]}, {"id": "5", "n": 8, "x": 2, "tags": []}]
    sink = ParquetSink(tmp_path / "o.parquet")
    sink.row_group_rows = 4  # the first row group is all None
    assert sink.write(cols, batches(rows, 1), "id") == 6
    t = read_parquet(tmp_path / "o.parquet")
    assert t.schema.field("n").type == pa.int64()
    assert t.schema.field("x").type == pa.float64()  # inferred after the fact, file rewritten
    assert t.schema.field("tags").type == pa.list_(pa.string())
    assert t.column("x").to_pylist() == [None, None, None, None, 1.5, 2.0]
    assert t.column("n").to_pylist() == [None, None, None, None, 7, 8]
    assert leftovers(tmp_path) == []


def test_parquet_sink_any_inference_and_widening(tmp_path: Path) -> None:
    cols = [Column("id"), Column("ints", "any"), Column("mixed", "any"), Column("n", "integer"),
            Column("lst", "any")]
    rows = [
        {"id": "0", "ints": 1, "mixed": 1, "n": 1, "lst": [1, 2]},
        {"id": "1", "ints": 2, "mixed": 2, "n": 2, "lst": [3]},
        {"id": "2", "ints": 3, "mixed": "x", "n": "N/A", "lst": [1.5]},
        {"id": "3", "ints": 4, "mixed": [1], "n": 4, "lst": None},
    ]
    sink = ParquetSink(tmp_path / "o.parquet")
    sink.row_group_rows = 2
    sink.write(cols, batches(rows, 1), "id")
    t = read_parquet(tmp_path / "o.parquet")
    assert t.schema.field("ints").type == pa.int64()
    assert t.schema.field("mixed").type == pa.string()
    assert t.column("mixed").to_pylist() == ["1", "2", "x", "[1]"]
    assert t.schema.field("n").type == pa.string()
    assert t.column("n").to_pylist() == ["1", "2", "N/A", "4"]
    assert t.schema.field("lst").type == pa.list_(pa.float64())
    assert t.column("lst").to_pylist() == [[1.0, 2.0], [3.0], [1.5], None]
    assert leftovers(tmp_path) == []


def test_parquet_sink_empty_output(tmp_path: Path) -> None:
    assert open_sink(SinkSpec(path="o.parquet"), tmp_path).write(COLUMNS, iter([]), "id") == 0
    t = read_parquet(tmp_path / "o.parquet")
    assert t.num_rows == 0 and t.column_names == [c.name for c in COLUMNS]


def test_parquet_sink_row_groups(tmp_path: Path) -> None:
    sink = ParquetSink(tmp_path / "o.parquet")
    sink.row_group_rows = 100
    rows = [{"id": str(i), "v": i} for i in range(1050)]
    assert sink.write([Column("id"), Column("v", "integer")], batches(rows, 37), "id") == 1050
    pf = pq.ParquetFile(tmp_path / "o.parquet")
    assert pf.metadata.num_row_groups == 11 and pf.metadata.num_rows == 1050


# ----------------------------------------------------------------------------- SQLite sink


def db_rows(path: Path, table: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(f'SELECT * FROM "{table}" ORDER BY 1').fetchall()
    finally:
        conn.close()


def test_sqlite_sink_upsert_idempotent(tmp_path: Path) -> None:
    sink = open_sink(SinkSpec(path="out/o.db", table="results"), tmp_path)
    assert sink.write(COLUMNS, batches(ROWS), "id") == 3
    assert sink.write(COLUMNS, batches(ROWS), "id") == 3
    got = db_rows(tmp_path / "out" / "o.db", "results")
    assert got == [
        ("a", "hello, world", 0.5, 1, 1, '["x", "y"]'),
        ("b", 'she said "hi"\nthen left', None, 2, 0, "[]"),
        ("c", None, 2.0, None, None, None),
    ]
    changed = [dict(ROWS[0], text="new")]
    sink.write(COLUMNS, [changed], "id")
    got = db_rows(tmp_path / "out" / "o.db", "results")
    assert len(got) == 3 and got[0][1] == "new"
    # Reads back as a source with the same column types (lists come back as JSON text).
    s = open_source(SourceSpec(path="out/o.db", table="results"), tmp_path)
    assert [c.type for c in s.columns] == ["string", "string", "number", "integer", "boolean",
                                            "string"]
    assert data(s)[1]["ok"] is False


def test_sqlite_sink_adds_columns_and_rolls_back(tmp_path: Path) -> None:
    sink = open_sink(SinkSpec(path="o.db", table="t"), tmp_path)
    sink.write([Column("id"), Column("a")], [[{"id": "1", "a": "x"}]], "id")
    sink.write([Column("id"), Column("a"), Column("b", "integer")],
               [[{"id": "1", "a": "x", "b": 5}]], "id")
    assert db_rows(tmp_path / "o.db", "t") == [("1", "x", 5)]

    def boom():
        yield [{"id": "2", "a": "y", "b": 1}]
        raise RuntimeError("engine failed")

    with pytest.raises(RuntimeError):
        sink.write([Column("id"), Column("a"), Column("b", "integer")], boom(), "id")
    assert db_rows(tmp_path / "o.db", "t") == [("1", "x", 5)]  # one transaction


def test_sqlite_sink_errors(tmp_path: Path) -> None:
    with pytest.raises(SinkError, match="`table:`"):
        open_sink(SinkSpec(path="o.db"), tmp_path)
    sink = open_sink(SinkSpec(path="o.db", table="t"), tmp_path)
    with pytest.raises(SinkError, match="key column 'nope'"):
        sink.write([Column("id")], [[{"id": "1"}]], "nope")
    with pytest.raises(SinkError, match="key column 'id'"):
        sink.write([Column("id")], [[{"id": None}]], "id")
    conn = sqlite3.connect(tmp_path / "o.db")
    conn.execute("CREATE TABLE plain (id TEXT, v TEXT)")
    conn.commit()
    conn.close()
    with pytest.raises(SinkError, match="primary key.*`table:`"):
        open_sink(SinkSpec(path="o.db", table="plain"), tmp_path).write(
            [Column("id"), Column("v")], [[{"id": "1", "v": "x"}]], "id"
        )
    (tmp_path / "notdb.db").write_text("hello\n" * 100)
    with pytest.raises(SinkError, match="notdb.db"):
        open_sink(SinkSpec(path="notdb.db", table="t"), tmp_path).write(
            [Column("id")], [[{"id": "1"}]], "id"
        )


# ----------------------------------------------------------------------------- quarantine


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("out/sms.parquet", "out/sms.quarantine.parquet"),
        ("out/sms.csv", "out/sms.quarantine.csv"),
        ("results.jsonl", "results.quarantine.jsonl"),
        ("out/data", "out/data.quarantine"),
    ],
)
def test_quarantine_path_naming(path: str, expected: str) -> None:
    q = quarantine_spec(SinkSpec(path=path, format="csv" if "." not in path else None))
    assert q.path == expected


def test_quarantine_sink(tmp_path: Path) -> None:
    q = open_quarantine_sink(SinkSpec(path="out/sms.tsv"), tmp_path)
    assert q.path == tmp_path / "out" / "sms.quarantine.tsv" and q.format == "tsv"
    q = open_quarantine_sink(SinkSpec(path="o.csv", quarantine="bad/rows.jsonl"), tmp_path)
    assert q.path == tmp_path / "bad" / "rows.jsonl" and q.format == "jsonl"
    q = open_quarantine_sink(SinkSpec(path="o.db", table="res"), tmp_path)
    assert q.path == tmp_path / "o.db" and q.format == "sqlite" and q.table == "res_quarantine"
    qcols = [Column("_key"), Column("_line", "integer"), Column("_reason")]
    assert q.write(qcols, [[{"_key": "k1", "_line": 3, "_reason": "refused"}]], "_key") == 1
    assert db_rows(tmp_path / "o.db", "res_quarantine") == [("k1", 3, "refused")]


# ----------------------------------------------------------------------------- streaming


def test_csv_streaming_memory(tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "text", "label"])
        for i in range(200_000):
            w.writerow([i, f"message number {i} with, some \"quoted\" text", "ham"])
    assert path.stat().st_size > 10_000_000
    s = open_source(SourceSpec(path="big.csv"), tmp_path)
    tracemalloc.start()
    try:
        n = 0
        for r in s.rows():
            assert r.error is None
            n += 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n == 200_000
    assert peak < 50 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB"
    assert s.fingerprint() == s.fingerprint()


def test_unclosed_quote_is_quarantined_not_swallowed(tmp_path):
    from corral.io import open_source
    from corral.io.spec import SourceSpec

    p = tmp_path / "uq.csv"
    p.write_text('id,text\nr1,"open quote\nr2,b\nr3,c\n', encoding="utf-8")
    rows = list(open_source(SourceSpec(path=str(p)), tmp_path).rows())
    assert len(rows) == 1 and rows[0].data is None
    assert "never closed" in rows[0].error and "lines 2-4" in rows[0].error


def test_formats_are_looked_up_in_the_registry(tmp_path: Path) -> None:
    from pydantic import ValidationError

    from corral._registry import sink_classes, source_classes
    from corral.io.csv import CsvSink, CsvSource

    assert source_classes()["tsv"] is CsvSource and sink_classes()["csv"] is CsvSink
    with pytest.raises(ValidationError, match=r"unknown source format `jsnl`; did you mean `jsonl`\? Formats: csv, duckdb, jsonl"):
        SourceSpec(path="x.txt", format="jsnl")
    (tmp_path / "in.txt").write_text("a\tb\n1\t2\n", encoding="utf-8")
    src = open_source(SourceSpec(path="in.txt", format="tsv"), tmp_path)
    assert isinstance(src, CsvSource) and [r.data for r in src.rows()] == [{"a": "1", "b": "2"}]
    with pytest.raises(SinkError, match="set `format:` under `sink:` to one of csv, duckdb, jsonl, parquet, postgres, sqlite, tsv"):
        open_sink(SinkSpec(path="out.xlsx"), tmp_path)


def test_every_sink_refuses_repeated_column_names(tmp_path: Path) -> None:
    for name in ("o.csv", "o.jsonl", "o.parquet"):
        sink = open_sink(SinkSpec(path=name), tmp_path)
        with pytest.raises(SinkError, match="two output columns are both named 'id'"):
            sink.write([Column("id"), Column("id")], [[{"id": "1"}]], "id")
