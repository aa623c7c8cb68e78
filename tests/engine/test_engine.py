from __future__ import annotations

import asyncio
import csv
import json
import sqlite3
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import corral
from corral import FakeModel, Job
from corral.errors import ModelNotFoundError, SourceError, UserError
from corral.testing import plain

from ..conftest import write

TICKETS = "id,subject,body\n" + "".join(
    f"T{i},Subject {i},Body text number {i} about order ORD-{10000 + i}\n" for i in range(1, 41)
)


def make_job(tmp_path: Path, *, steps=None, key="id", sink="out/o.csv", data=TICKETS, **extra) -> Job:
    write(tmp_path / "in.csv", data)
    d = {
        "name": "t",
        "source": "in.csv",
        "steps": steps
        or [{"name": "cat", "task": "classify", "input": "{subject}: {body}", "labels": ["a", "b", "c"]}],
        "sink": sink,
        **extra,
    }
    if key:
        d["key"] = key
    return Job.from_dict(d, base_dir=tmp_path)


def read_csv(p: Path) -> list[dict[str, str]]:
    with open(p, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_classify_writes_every_row_with_label_column(tmp_path):
    job = make_job(tmp_path)
    fake = FakeModel()
    r = corral.run(job, model=fake)
    assert r.status == "finished"
    assert (r.rows_in, r.written, r.quarantined, r.pending) == (40, 40, 0, 0)
    assert r.accounted
    assert r.calls_made == 40 == fake.calls
    rows = read_csv(tmp_path / "out" / "o.csv")
    assert [x["id"] for x in rows] == [f"T{i}" for i in range(1, 41)]
    assert {x["cat"] for x in rows} <= {"a", "b", "c"}
    assert rows[0]["subject"] == "Subject 1"
    q = read_csv(tmp_path / "out" / "o.quarantine.csv")
    assert q == []


def test_rerun_replays_nothing_and_does_not_duplicate(tmp_path):
    job = make_job(tmp_path)
    first = corral.run(job, model=FakeModel())
    fake = FakeModel()
    again = corral.run(job, model=fake)
    assert again.run == first.run
    assert fake.calls == 0
    assert again.calls_made == 40
    assert len(read_csv(tmp_path / "out" / "o.csv")) == 40


def test_limit_then_resume_only_processes_the_rest(tmp_path):
    job = make_job(tmp_path)
    fake = FakeModel()
    r1 = corral.run(job, model=fake, limit=10)
    assert (r1.rows_in, r1.written, r1.status) == (10, 10, "preview")  # 10 of 40 rows
    r2 = corral.run(job, model=fake)
    assert r2.run == r1.run
    assert (r2.rows_in, r2.written) == (40, 40)
    assert fake.calls == 40  # 10 then 30, none repeated


def test_new_run_for_changed_input_replays_identical_requests(tmp_path):
    job = make_job(tmp_path)
    corral.run(job, model=FakeModel())
    job2 = make_job(tmp_path, data=TICKETS + "T99,New,Brand new row\n")
    fake = FakeModel()
    r = corral.run(job2, model=fake)
    assert r.rows_in == 41
    assert fake.calls == 1
    assert r.calls_replayed == 40


def test_truncated_and_refused_answers_are_never_written(tmp_path):
    job = make_job(tmp_path)
    r = corral.run(job, model=FakeModel(truncation_rate=1.0))
    assert (r.written, r.quarantined) == (0, 40)
    assert r.calls_made == 40 * 3  # max_attempts
    q = read_csv(tmp_path / "out" / "o.quarantine.csv")
    assert len(q) == 40
    assert all("truncated" in x["_reason"] and "after 3 attempts" in x["_reason"] for x in q)
    assert read_csv(tmp_path / "out" / "o.csv") == []

    job = make_job(tmp_path, sink="out/r.csv", steps=[{"name": "cat", "task": "classify", "input": "{body}!", "labels": ["a", "b"], "max_attempts": 2}])
    r = corral.run(job, model=FakeModel(refusal_rate=1.0))
    assert r.quarantined == 40
    assert all("refused" in x["_reason"] for x in read_csv(tmp_path / "out" / "r.quarantine.csv"))


def test_invalid_json_is_retried_then_accepted(tmp_path):
    job = make_job(tmp_path)
    fake = FakeModel(invalid_rate=0.5, seed=3)
    r = corral.run(job, model=fake)
    assert r.accounted and r.pending == 0
    assert r.written > 30  # most rows recover within 3 attempts
    assert r.calls_made == fake.calls > 40
    for row in read_csv(tmp_path / "out" / "o.csv"):
        assert row["cat"] in {"a", "b", "c"}


def test_faults_every_row_in_exactly_one_state_and_ledger_matches(tmp_path):
    job = make_job(tmp_path)
    fake = FakeModel(error_rate=0.3, truncation_rate=0.1, refusal_rate=0.05, invalid_rate=0.05, seed=1)
    r = corral.run(job, model=fake)
    assert r.accounted and r.pending == 0
    assert r.written + r.quarantined == 40
    assert fake.errors > 0
    assert r.calls_made == fake.calls - fake.errors  # calls that raised returned nothing to pay for
    out = {x["id"] for x in read_csv(tmp_path / "out" / "o.csv")}
    quarantined = {x["id"] for x in read_csv(tmp_path / "out" / "o.quarantine.csv")}
    assert out.isdisjoint(quarantined) and len(out | quarantined) == 40


def test_two_steps_later_reads_earlier_and_extract_columns(tmp_path):
    steps = [
        {"name": "cat", "task": "classify", "input": "{body}", "labels": ["billing", "other"]},
        {
            "name": "details",
            "task": "extract",
            "input": "Category {cat}: {body}",
            "fields": {"order_id": {"type": "string", "nullable": True}, "amount": "number", "subject": "string"},
        },
    ]
    seen: list[str] = []

    def script(req):
        user = plain(req.messages[-1].content)
        seen.append(user)
        if "order_id" in json.dumps(req.schema):
            return {"order_id": "ORD-1", "amount": 12.5, "subject": "x"}
        return {"label": "billing"}

    job = make_job(tmp_path, steps=steps, sink="out/o.parquet")
    r = corral.run(job, model=FakeModel(script=script))
    assert r.written == 40
    assert any(s.startswith("Category billing: ") for s in seen)
    t = pq.read_table(tmp_path / "out" / "o.parquet")
    assert "details_subject" in t.column_names  # clashes with the input column
    row = t.slice(0, 1).to_pylist()[0]
    assert row["cat"] == "billing" and row["order_id"] == "ORD-1" and row["amount"] == 12.5


def test_editing_last_step_only_calls_that_step(tmp_path):
    steps = [
        {"name": "cat", "task": "classify", "input": "{body}", "labels": ["x", "y"]},
        {"name": "d", "task": "extract", "input": "{body}", "fields": {"n": "integer"}},
    ]
    corral.run(make_job(tmp_path, steps=steps), model=FakeModel())
    steps[1] = {**steps[1], "instructions": "Count carefully."}
    fake = FakeModel()
    r = corral.run(make_job(tmp_path, steps=steps), model=fake)
    assert fake.calls == 40
    assert r.calls_replayed == 40


def test_keyless_identical_rows_stay_distinct(tmp_path):
    data = "text\nhello\nhello\nworld\n"
    job = make_job(tmp_path, key=None, data=data, steps=[{"name": "s", "task": "classify", "input": "{text}", "labels": ["a", "b"]}])
    r = corral.run(job, model=FakeModel())
    assert (r.rows_in, r.written) == (3, 3)
    rows = read_csv(tmp_path / "out" / "o.csv")
    assert [x["text"] for x in rows] == ["hello", "hello", "world"]
    assert len({x["_key"] for x in rows}) == 3
    assert r.calls_made == 2 and r.calls_replayed == 1  # the duplicate prompt is replayed


def test_malformed_csv_row_quarantined_with_line_number(tmp_path):
    data = "id,subject,body\nA,s,b\nB,s,b,EXTRA\nC,s,b\n"
    job = make_job(tmp_path, data=data)
    r = corral.run(job, model=FakeModel())
    assert (r.rows_in, r.written, r.quarantined) == (3, 2, 1)
    q = read_csv(tmp_path / "out" / "o.quarantine.csv")
    assert q[0]["_line"] == "3" and "line 3" in q[0]["_reason"]


def test_bad_inputs_raise_one_line_and_write_nothing(tmp_path):
    job = make_job(tmp_path, key="ticket")
    with pytest.raises(SourceError) as e:
        corral.run(job, model=FakeModel())
    assert "key column `ticket`" in str(e.value) and "\n" not in str(e.value)

    job = make_job(tmp_path, data="id,subject,body\nA,s,b\nB,s,b\nA,s,c\n")
    with pytest.raises(SourceError) as e:
        corral.run(job, model=FakeModel())
    assert "duplicate key `A`" in str(e.value) and "line 2 and line 4" in str(e.value)

    job = make_job(tmp_path, steps=[{"name": "s", "task": "classify", "input": "{bdy}", "labels": ["a", "b"]}])
    with pytest.raises(SourceError) as e:
        corral.run(job, model=FakeModel())
    assert "{bdy}" in str(e.value) and "did you mean `body`" in str(e.value)

    (tmp_path / "in.csv").write_bytes(b"id,subject,body\nA,s,caf\xe9\n")
    job = Job.from_dict(make_job(tmp_path).model_dump(), base_dir=tmp_path)
    (tmp_path / "in.csv").write_bytes(b"id,subject,body\nA,s,caf\xe9\n")
    with pytest.raises(SourceError) as e:
        corral.run(job, model=FakeModel())
    assert "UTF-8" in str(e.value)

    with pytest.raises(ModelNotFoundError) as e:
        corral.run(make_job(tmp_path), model="gpt-fake")
    assert "unknown model `gpt-fake`" in str(e.value)
    assert not (tmp_path / "out").exists()


def test_later_step_reference_is_rejected(tmp_path):
    steps = [
        {"name": "a", "task": "classify", "input": "{b}", "labels": ["x", "y"]},
        {"name": "b", "task": "classify", "input": "{body}", "labels": ["x", "y"]},
    ]
    with pytest.raises(UserError, match="later step"):
        corral.run(make_job(tmp_path, steps=steps), model=FakeModel())


@pytest.mark.parametrize("concurrency", [1, 8])
def test_budget_stops_and_resumes_without_repeating(tmp_path, concurrency):
    job = make_job(tmp_path, budget={"max_calls": 15}, concurrency=concurrency)
    fake = FakeModel(latency=0.01)
    r = corral.run(job, model=fake)
    assert r.status == "stopped" and "max_calls" in (r.stop_reason or "")
    assert r.calls_made == 15 == fake.calls
    assert r.written == 15 and r.pending == 25 and r.accounted
    assert not (tmp_path / "out" / "o.csv").exists()
    job2 = make_job(tmp_path, budget={"max_calls": 100})
    r2 = corral.run(job2, model=fake)
    assert r2.run == r.run and r2.status == "finished"
    assert fake.calls == 40 and r2.calls_made == 40


def test_stop_event_interrupts_and_releases_leases(tmp_path):
    job = make_job(tmp_path, concurrency=2)

    async def go():
        stop = asyncio.Event()
        fake = FakeModel(latency=0.05)
        task = asyncio.create_task(corral.run_async(job, model=fake, stop=stop))
        await asyncio.sleep(0.12)
        stop.set()
        return await task

    r = asyncio.run(go())
    assert r.status == "interrupted"
    assert r.accounted and 0 < r.pending < 40
    db = sqlite3.connect(tmp_path / "store" / "corral.db")
    assert db.execute("select count(*) from records where state='leased'").fetchone()[0] == 0
    fake = FakeModel()
    r2 = corral.run(job, model=fake)
    assert r2.status == "finished" and r2.written == 40
    assert fake.calls == r.pending


def test_unwritable_sink_fails_before_any_call(tmp_path):
    (tmp_path / "out").write_text("a file where a folder should be")
    fake = FakeModel()
    with pytest.raises(corral.errors.SinkError):
        corral.run(make_job(tmp_path), model=fake)
    assert fake.calls == 0


def test_parquet_and_jsonl_sinks(tmp_path):
    job = make_job(tmp_path, sink="out/o.jsonl")
    corral.run(job, model=FakeModel())
    lines = (tmp_path / "out" / "o.jsonl").read_text().splitlines()
    assert len(lines) == 40 and json.loads(lines[0])["id"] == "T1"


def test_summary_json_shape(tmp_path):
    r = corral.run(make_job(tmp_path), model=FakeModel(price_per_call="0.002"))
    j = r.to_json()
    assert set(j) >= {"run", "status", "rows", "calls", "tokens", "cost_usd", "elapsed_s", "outputs"}
    assert set(j["rows"]) == {"in", "written", "quarantined", "review", "skipped", "pending"}
    assert j["cost_usd"] == pytest.approx(0.08)
    assert j["tokens"]["input"] > 0


def test_unknown_price_is_null_not_zero(tmp_path):
    r = corral.run(make_job(tmp_path), model=FakeModel(price_per_call=None))
    assert r.cost_usd is None and r.to_json()["cost_usd"] is None


def test_smaller_limit_writes_only_rows_within_it(tmp_path):
    job = make_job(tmp_path)
    corral.run(job, model=FakeModel(), limit=10)
    r = corral.run(job, model=FakeModel(), limit=5)
    assert (r.rows_in, r.written) == (5, 5)
    assert [x["id"] for x in read_csv(tmp_path / "out" / "o.csv")] == [f"T{i}" for i in range(1, 6)]


def test_max_cost_with_unpriced_model_stops_instead_of_ignoring_it(tmp_path):
    job = make_job(tmp_path, budget={"max_cost_usd": 1}, concurrency=1)
    r = corral.run(job, model=FakeModel(price_per_call=None))
    assert r.status == "stopped" and "reports no price" in (r.stop_reason or "")
    assert r.calls_made == 1 and r.accounted


def test_duplicate_found_after_paid_calls_keeps_the_failed_run(tmp_path):
    data = "id,subject,body\nA,s,b\nB,s,b\nA,s,c\n"
    job = make_job(tmp_path, data=data)
    corral.run(job, model=FakeModel(), limit=1)
    with pytest.raises(SourceError, match="duplicate key `A`"):
        corral.run(job, model=FakeModel())
    st = corral.open_store()
    runs = st.list_runs()
    assert runs[0].status == "failed" and "duplicate key" in (runs[0].stop_reason or "")
    assert st.totals(runs[0].id).made == 1  # the cost of the paid call stays on record


def test_self_reference_is_named(tmp_path):
    steps = [{"name": "mood", "task": "classify", "input": "{mood}", "labels": ["x", "y"]}]
    with pytest.raises(UserError, match="its own output"):
        corral.run(make_job(tmp_path, steps=steps), model=FakeModel())


def test_workers_follow_the_calls_allowed_in_flight(tmp_path, monkeypatch):
    """Without a job's `concurrency`, the fake model allows 256 calls in flight, but slow start
    begins at 8: the records being worked on at once grow with that limit (a quarter more, plus
    8), instead of all 200 rows being leased into 256 workers at the start."""
    from corral._record import RecordProcessor

    data = "id,subject,body\n" + "".join(f"T{i},S{i},Body {i}\n" for i in range(200))
    job = make_job(tmp_path, data=data)
    busy, peak = 0, 0
    process = RecordProcessor.process

    async def counted(self, committer, rec):
        nonlocal busy, peak
        busy += 1
        peak = max(peak, busy)
        try:
            return await process(self, committer, rec)
        finally:
            busy -= 1

    monkeypatch.setattr(RecordProcessor, "process", counted)
    r = corral.run(job, model=FakeModel(latency=0.05))
    assert (r.status, r.written) == ("finished", 200)
    assert 8 < peak < 200, peak  # grew past the start, never one worker per row
