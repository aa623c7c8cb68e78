from __future__ import annotations

import sqlite3
import time

import pytest

from corral.errors import StoreError
from corral.store import SQLiteStore
from corral.store.base import CallRecord, FinalRecord, NewRecord, RunInfo, Store
from corral.store.sqlite import MIGRATIONS


def new_run(store: Store, rid: str = "r1") -> RunInfo:
    now = time.time()
    return store.create_run(RunInfo(rid, "job", "h", "f", {}, "created", None, now, now, 0, False, {}))


def test_wal_and_migrations(tmp_path):
    s = SQLiteStore(tmp_path / "s.db")
    assert s.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert s.db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    s.close()
    SQLiteStore(tmp_path / "s.db").close()  # reopening migrates nothing and fails nothing


def test_newer_schema_is_refused(tmp_path):
    db = sqlite3.connect(tmp_path / "s.db")
    db.execute("PRAGMA user_version=999")
    db.close()
    with pytest.raises(StoreError, match="newer Corral"):
        SQLiteStore(tmp_path / "s.db")


def test_not_a_database(tmp_path):
    (tmp_path / "s.db").write_text("this is not sqlite" * 100)
    with pytest.raises(StoreError, match="cannot open the store"):
        SQLiteStore(tmp_path / "s.db")


def test_lease_reclaim_dead_owner_and_expiry(make_store):
    s = make_store()
    run = new_run(s)
    s.ingest(run.id, [NewRecord(f"k{i}", i, i + 2, '{"x": 1}') for i in range(10)], 10)
    a = s.lease(run.id, "host:1:a", 4, 300)
    assert [r.key for r in a] == ["k0", "k1", "k2", "k3"]
    b = s.lease(run.id, "host:2:b", 4, -1)  # already expired
    assert [r.key for r in b] == ["k4", "k5", "k6", "k7"]
    assert s.counts(run.id) == {"leased": 8, "pending": 2}
    n = s.reclaim(run.id, lambda owner: owner.startswith("host:1:"))
    assert n == 8  # 4 of a dead owner + 4 expired
    assert s.counts(run.id) == {"pending": 10}
    assert len(s.lease(run.id, "o", 100, 300, below_ordinal=3)) == 3


def test_commit_is_atomic_and_ledger_totals(make_store, integrity_error):
    from decimal import Decimal

    s = make_store()
    run = new_run(s)
    s.ingest(run.id, [NewRecord("k", 0, 2, "{}")], 1)
    call = CallRecord(run.id, "k", "step", 0, "v1:abc", "fake", False, 10, 2, 0, 0, Decimal("0.5"), 0.1, "{}", '{"text": "x"}')
    s.commit([call], [], [FinalRecord(run.id, "k", "done", '{"step": "a"}', None, 1)])
    assert s.cached("v1:abc") == '{"text": "x"}'
    t = s.totals(run.id)
    assert (t.made, t.replayed, t.input_tokens, t.output_tokens, t.cost) == (1, 0, 10, 2, Decimal("0.5"))
    unknown = CallRecord(run.id, "k", "step", 1, "v1:def", "fake", False, 1, 1, 0, 0, None, 0.1, "{}", "{}")
    s.commit([unknown], [], [])
    assert s.totals(run.id).cost is None  # unknown is not zero
    s.ingest(run.id, [NewRecord("k2", 1, 3, "{}")], 2)
    late = CallRecord(run.id, "k2", "step", 0, "v1:ghi", "fake", False, 1, 1, 0, 0, Decimal("0.1"), 0.1, "{}", "{}")
    with pytest.raises(integrity_error):
        s.commit([late], [], [FinalRecord(run.id, "k2", None, None, None, 1)])  # type: ignore[arg-type]
    assert s.record(run.id, "k2").state == "pending" and s.cached("v1:ghi") is None  # nothing changed
    # a final state for a record another worker finished is not written over it
    s.commit([], [], [FinalRecord(run.id, "k", "quarantined", None, "late", 2)])
    assert s.record(run.id, "k").state == "done"


def test_ingesting_rows_another_worker_loaded_is_not_a_duplicate(make_store):
    from corral.store.base import DuplicateKeyError

    s = make_store()
    run = new_run(s)
    recs = [NewRecord(f"k{i}", i, i + 2, "{}") for i in range(5)]
    s.ingest(run.id, recs, 5)
    s.ingest(run.id, recs, 5)  # the same rows again, as a second process would: no error
    assert s.counts(run.id) == {"pending": 5}
    with pytest.raises(DuplicateKeyError) as e:
        s.ingest(run.id, [NewRecord("k1", 7, 9, "{}")], 8)
    assert (e.value.key, e.value.first_line, e.value.second_line) == ("k1", 3, 9)
    # a second loader's chunk past one look-up statement (500 keys), its clash in the third part
    many = [NewRecord(f"m{i}", 10 + i, 20 + i, "{}") for i in range(1200)]
    s.ingest(run.id, many, 1210)
    s.ingest(run.id, many, 1210)
    clash = [*many[:1100], NewRecord("m1100", 5000, 9000, "{}"), *many[1101:]]
    with pytest.raises(DuplicateKeyError) as e:
        s.ingest(run.id, clash, 1210)
    assert (e.value.key, e.value.first_line, e.value.second_line) == ("m1100", 1120, 9000)


def test_delete_run_deletes_its_provider_batches(make_store):
    """A run abandoned with a submitted, unfetched batch (no ledger row yet) leaves nothing behind:
    a new run with the same id must not poll the old run's batch."""
    s = make_store()
    run = new_run(s)
    other = new_run(s, "r2")
    for rid in (run.id, other.id):
        s.ingest(rid, [NewRecord("k", 0, 2, "{}")], 1)
        s.add_batch(rid, f"batch-{rid}", "fake", [(f"v1:{rid}", "k", "step", 0, "{}")])
    assert [b.id for b in s.open_batches(run.id)] == ["batch-r1"]
    s.delete_run(run.id)
    assert s.get_run(run.id) is None and s.open_batches(run.id) == []
    assert s.db.execute("SELECT COUNT(*) FROM batch_items WHERE run_id=?", (run.id,)).fetchone()[0] == 0
    assert [b.id for b in s.open_batches(other.id)] == ["batch-r2"]  # another run's stay
    assert [i.custom_id for i in s.batch_items("batch-r2")] == ["v1:r2"]


def test_reads_are_typed_rows(make_store):
    from decimal import Decimal

    s = make_store()
    run = new_run(s)
    s.ingest(run.id, [NewRecord("k", 0, 2, '{"text": "hi"}')], 1)
    call = CallRecord(run.id, "k", "step[1/2]", 0, "v1:abc", "fake", False, 10, 2, 0, 0, Decimal("0.5"), 0.1,
                      "{}", '{"text": "x", "usage": {"input_tokens": 10, "output_tokens": 2, "cost": 0.5}}')
    from corral.store.base import AttemptRecord

    s.commit([call], [AttemptRecord(run.id, "k", "step[1/2]", 0, "v1:abc", "ok"),
                      AttemptRecord(run.id, "k", "step[1/2]", 0, None, "vote", data='{"fields": {}}')],
             [FinalRecord(run.id, "k", "done", '{"step": "a"}', None, 1)])
    rec = s.record(run.id, "k")
    assert (rec.key, rec.state, rec.data, rec.outputs, rec.attempts) == ("k", "done", {"text": "hi"}, {"step": "a"}, 1)
    [[row]] = list(s.iter_records(run.id, "done"))
    assert row == rec
    call_ev, vote = s.record_calls(run.id, "k")
    assert (call_ev.kind, call_ev.step_name, call_ev.part, call_ev.cost_usd) == ("call", "step", "1/2", Decimal("0.5"))
    assert call_ev.to_json()["cost_usd"] == "0.5"
    assert (vote.kind, vote.data) == ("decision", {"fields": {}})
    [spend] = s.breakdown(run.id)
    assert (spend.step, spend.calls, spend.cost) == ("step", 1, Decimal("0.5"))
    assert s.run_spend(run.id).cost == Decimal("0.5")


def test_reviews_learned_models_batches_and_runs(make_store):
    from decimal import Decimal

    from corral.store.base import AttemptRecord, ReviewDecision

    s = make_store()
    run = new_run(s)
    s.ingest(run.id, [NewRecord("k", 0, 2, "{}", "h1"), NewRecord("j", 1, 3, "{}", "h1")], 2)
    assert s.occurrences(run.id) == {"h1": 2}
    s.commit([], [], [FinalRecord(run.id, "k", "review", '{"cat": "a"}', "low confidence", 1)])
    accept = ReviewDecision(run.id, "k", "accept", "ana", 1.0, "done", {"cat": "a"}, None, note="ok")
    trace = [AttemptRecord(run.id, "k", "cat", 0, None, "review", data='{"who": "ana"}')]
    [applied] = s.apply_decisions([accept, ReviewDecision(run.id, "j", "reject", "ana", 2.0, "quarantined", None, "no")], trace)
    assert (applied.key, applied.prev_state, applied.prev_reason, applied.id) == ("k", "review", "low confidence", 1)
    assert s.apply_decisions([accept], trace) == []  # decided already: nothing written twice
    assert s.decisions(run.id) == s.decisions(run.id, "k") == [applied]
    assert (s.record(run.id, "k").state, s.outcome_counts(run.id)) == ("done", {"review": 1})
    s.save_learned("router", b"\x00blob", {"n": 1})
    s.save_learned("router", b"\x01blob", {"n": 2})
    assert (s.load_learned("router"), s.load_learned("none")) == (b"\x01blob", None)
    s.add_batch(run.id, "b1", "fake", [("v1:a", "k", "cat", 0, "{}"), ("v1:b", "j", "cat", 0, "{}")])
    s.set_batch_state("b1", "submitted", "in progress")
    [open_b] = s.open_batches(run.id)
    assert (open_b.id, open_b.detail, open_b.items) == ("b1", "in progress", 2)
    call = CallRecord(run.id, "k", "cat", 0, "v1:a", "fake", False, 3, 1, 0, 0, Decimal("0.25"), 0.0, "{}", "{}")
    s.finish_batch("b1", [call], {"v1:a": "ok", "v1:b": "expired"}, "done")
    s.add_batch(run.id, "b2", "fake", [("v1:b", "j", "cat", 0, "{}")])
    s.finish_batch("b2", [], {"v1:b": "failed"}, "done")
    assert s.open_batches(run.id) == [] and s.batch_answered(run.id) == {"v1:a"}
    assert s.batch_failures(run.id) == {"v1:b": (2, "failed")}
    assert s.has_calls(run.id) and s.totals(run.id).cost == Decimal("0.25")
    s.update_run(run.id, status="finished", tags={"team": "x"}, ingest_done=True, elapsed_s=1.5)
    with pytest.raises(ValueError):
        s.update_run(run.id, job_name="other")
    got = s.get_run(run.id)
    assert (got.status, got.tags, got.ingest_done, got.elapsed_s) == ("finished", {"team": "x"}, True, 1.5)
    new_run(s, "r2")
    assert [r.id for r in s.list_runs()] == ["r1", "r2"] or [r.id for r in s.list_runs()] == ["r2", "r1"]
    assert [r.id for r in s.find_runs("r1")] == ["r1"] and len(s.find_runs("job")) == 2
    assert s.create_run(RunInfo("r1", "j2", "x", "y", {}, "created", None, 0, 0, 0, False, {})).job_name == "job"
    s.delete_run(run.id)
    assert (s.get_run(run.id), s.decisions(run.id), s.has_calls(run.id)) == (None, [], False)
    assert s.cached("v1:a") == "{}"  # the cache stays for other runs
