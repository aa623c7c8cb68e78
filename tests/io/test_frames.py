"""DataFrames from Python: pandas, Polars and Arrow sources, and a run's output back as one."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

import corral
from corral.errors import SourceError, UserError
from corral.job import Job
from corral.models.fake import FakeModel

pd = pytest.importorskip("pandas")
pl = pytest.importorskip("polars")


def make_job(tmp_path: Path, sink: Any = "out/o.parquet", **extra: Any) -> Job:
    return Job.from_dict({
        "name": "frames",
        "source": "dataframe",  # replaced by source= below
        "key": "id",
        "steps": [{"name": "cat", "task": "classify", "input": "{text}", "labels": ["a", "b"]}],
        "sink": sink,
        **extra,
    }, base_dir=tmp_path)


def frame(n: int = 6) -> Any:
    return pd.DataFrame({
        "id": list(range(1, n + 1)),
        "text": [f"message {i}" for i in range(1, n + 1)],
        "when": pd.to_datetime(["2026-12-01 09:30"] * n),
        "score": [0.5] * n,
    })


def test_pandas_frame_runs_and_replays(tmp_path: Path) -> None:
    fake = FakeModel()
    df = frame()
    r = corral.run(make_job(tmp_path), model=fake, source=df)
    assert r.status == "finished" and r.written == 6 and fake.calls == 6
    out = r.to_pandas()
    assert list(out.columns) == ["id", "text", "when", "score", "cat"]
    assert sorted(out["id"]) == list(range(1, 7)) and set(out["cat"]) <= {"a", "b"}
    assert out["when"].dtype.kind == "M"  # a Parquet sink keeps the frame's types
    # the same data again: the same run, replayed without a call
    again = corral.run(make_job(tmp_path), model=fake, source=frame())
    assert again.run == r.run and fake.calls == 6
    # other data: a new run
    other = frame()
    other.loc[0, "text"] = "changed"
    r3 = corral.run(make_job(tmp_path), model=fake, source=other)
    assert r3.run != r.run


def test_polars_and_arrow_sources(tmp_path: Path) -> None:
    fake = FakeModel()
    pdf = frame(4)
    r = corral.run(make_job(tmp_path, sink="out/o.jsonl"), model=fake, source=pl.from_pandas(pdf))
    assert r.written == 4
    got = r.to_polars()
    assert isinstance(got, pl.DataFrame) and got.height == 4 and "cat" in got.columns
    table = pa.Table.from_pandas(pdf, preserve_index=False)
    r2 = corral.run(make_job(tmp_path, sink="out/o2.csv"), model=fake, source=table)
    assert r2.written == 4
    back = r2.to_arrow()
    assert isinstance(back, pa.Table) and back.num_rows == 4
    assert back.schema.field("id").type == pa.string()  # a CSV sink's values are text


def test_stopped_run_resumes_with_the_same_frame(tmp_path: Path) -> None:
    fake = FakeModel()
    df = frame(20)
    r = corral.run(make_job(tmp_path, budget={"max_calls": 8}), model=fake, source=df)
    assert r.status == "stopped" and r.written == 8
    with pytest.raises(UserError, match=r"has written no output \(stopped.*run the job to the end"):
        r.to_arrow()
    r2 = corral.run(make_job(tmp_path), model=fake, source=df)
    assert r2.run == r.run and r2.status == "finished" and fake.calls == 20
    assert r2.to_arrow().num_rows == 20


def test_duckdb_sink_reads_back_typed(tmp_path: Path) -> None:
    pytest.importorskip("duckdb")
    r = corral.run(make_job(tmp_path, sink={"path": "out.duckdb", "table": "res"}), model="fake",
                   source=frame(3))
    t = r.to_arrow()
    assert t.num_rows == 3 and pa.types.is_timestamp(t.schema.field("when").type)


def test_to_arrow_names_the_sink_it_read(tmp_path: Path) -> None:
    r = corral.run(make_job(tmp_path), model="fake", source=frame(2))
    (tmp_path / "out" / "o.parquet").unlink()
    with pytest.raises(UserError, match=r"cannot read back the output of run .* read that file"):
        r.to_arrow()


@pytest.mark.parametrize("bad", [[{"id": 1}], "rows.csv", 42])
def test_a_bad_source_object_says_what_fits(tmp_path: Path, bad: Any) -> None:
    with pytest.raises(SourceError, match=r"source= takes a pandas or Polars DataFrame or a "
                                          r"pyarrow Table"):
        corral.run(make_job(tmp_path), model="fake", source=bad)


def test_a_mixed_column_says_how_to_fix(tmp_path: Path) -> None:
    df = pd.DataFrame({"id": [1, 2], "text": [1, "two"]})
    with pytest.raises(SourceError, match=r"cannot read the DataFrame .* one type each"):
        corral.run(make_job(tmp_path), model="fake", source=df)


def test_a_lazy_frame_says_collect(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"collect\(\)"):
        corral.run(make_job(tmp_path), model="fake", source=pl.LazyFrame({"id": [1]}))


def test_duplicate_keys_in_a_frame_name_it(tmp_path: Path) -> None:
    df = pd.DataFrame({"id": [1, 1], "text": ["a", "b"]})
    with pytest.raises(SourceError, match=r"duplicate key `1` in column `id` of DataFrame"):
        corral.run(make_job(tmp_path), model="fake", source=df)


def test_missing_pandas_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    r = corral.run(make_job(tmp_path), model="fake", source=frame(2))
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(UserError, match=r"make install, or pip install -e '.\[frames\]'"):
        r.to_pandas()
