"""Workers asking the same request at once pay it once (corral._call_claims, Store.claim_calls)."""

from __future__ import annotations

import csv
import json
import os
import sqlite3
import subprocess
import time
from decimal import Decimal

import pytest

from corral.store import open_store
from corral.store.base import CallRecord, Claim, NewRecord, RunInfo

from ..conftest import corral_bin, write

ALIVE = "elsewhere:1:aaaa"  # an owner on another host: alive until its claim expires


def never_dead(owner: str) -> bool:
    return False


def paid_call(h: str, run_id: str = "r1") -> CallRecord:
    return CallRecord(run_id, "k1", "cat", 1, h, "fake", False, 10, 2, 0, 0, Decimal(0), 0.01,
                      request_json="{}", response_json='{"text": "a"}')


@pytest.fixture(params=["sqlite", "postgres"])
def where(request, tmp_path):
    """The store: an SQLite file, or a database on the throwaway PostgreSQL server."""
    return str(tmp_path / "s.db") if request.param == "sqlite" else request.getfixturevalue("pg_url")


def store_with_run(where):
    st = open_store(where)
    now = time.time()
    st.create_run(RunInfo("r1", "j", "h", "f", {}, "running", None, now, now, 0, False, {}))
    st.ingest("r1", [NewRecord("k1", 0, 1, "{}")], 1)
    return st


def test_the_first_owner_claims_the_second_waits_and_then_replays(where):
    st = store_with_run(where)
    try:
        assert st.claim_calls(["h1"], "me:1:a", 60, never_dead)[0] == Claim()
        assert st.claim_calls(["h1"], "me:1:a", 60, never_dead)[0] == Claim()  # its own claim again
        assert st.claim_calls(["h1"], ALIVE, 60, never_dead)[0] == Claim(holder="me:1:a")
        st.commit([paid_call("h1")], [], [])  # the response is recorded: the claim ends with it
        assert st.claim_calls(["h1"], ALIVE, 60, never_dead)[0] == Claim(cached=True)
        assert st.db.execute("SELECT COUNT(*) FROM call_claims").fetchone()[0] == 0
    finally:
        st.close()


def test_a_released_expired_or_dead_owners_claim_is_taken_over(where):
    st = store_with_run(where)
    try:
        st.claim_calls(["h1"], ALIVE, 60, never_dead)[0]
        st.release_call("h1", "someone else")  # only the holder releases its claim
        assert st.claim_calls(["h1"], "me:1:a", 60, never_dead)[0].holder == ALIVE
        st.release_call("h1", ALIVE)
        assert st.claim_calls(["h1"], "me:1:a", 60, never_dead)[0] == Claim()

        st.claim_calls(["h2"], ALIVE, 0.05, never_dead)[0]
        time.sleep(0.1)  # not renewed: it expires
        assert st.claim_calls(["h2"], "me:1:a", 60, never_dead)[0] == Claim()

        st.claim_calls(["h3"], ALIVE, 60, never_dead)[0]
        assert st.claim_calls(["h3"], "me:1:a", 60, lambda o: o == ALIVE)[0] == Claim()  # its process is gone

        st.claim_calls(["h4"], ALIVE, 0.05, never_dead)[0]
        st.renew("r1", ALIVE, 60)  # renewed with the owner's leases
        time.sleep(0.1)
        assert st.claim_calls(["h4"], "me:1:a", 60, never_dead)[0].holder == ALIVE
    finally:
        st.close()


JOB = """\
name: claims
source: in.csv
key: id
model: {name: fake, latency: 0.05}
concurrency: 16
steps:
  - name: cat
    task: classify
    input: "{text}"
    labels: [a, b, c]
sink: out/o.csv
"""


def two_runs(tmp_path, job: str, rows: int, distinct: int, logs: list | None = None) -> tuple[list[dict], dict]:
    """``rows`` rows of ``distinct`` texts loaded by one `corral run --limit 0`, then two `corral
    run --json` at once (each with its own fake call log when ``logs`` are given): their
    summaries, and the store's paid request hashes, replays, states, claims and calls."""
    write(tmp_path / "job.yaml", job)
    with (tmp_path / "in.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "text"])
        w.writerows((i, f"message number {i % distinct}") for i in range(rows))
    env = {**os.environ, "NO_COLOR": "1"}
    first = subprocess.run([corral_bin(), "run", "job.yaml", "--limit", "0"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=120)  # the rows loaded once, nothing asked
    assert first.returncode == 0, first.stderr
    envs = [env, env] if logs is None else [{**env, "CORRAL_FAKE_CALL_LOG": str(log)} for log in logs]
    procs = [subprocess.Popen([corral_bin(), "run", "job.yaml", "--json"], cwd=tmp_path, env=e,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for e in envs]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    sums = [json.loads(o[0].strip().splitlines()[-1]) for o in outs]
    con = sqlite3.connect(sums[0]["store"])
    try:
        got = {
            "paid": con.execute("SELECT request_hash, COUNT(*) FROM ledger WHERE replayed=0 GROUP BY 1").fetchall(),
            "replayed": con.execute("SELECT COUNT(*) FROM ledger WHERE replayed=1").fetchone()[0],
            "calls": con.execute("SELECT SUM(calls) FROM ledger WHERE replayed=0").fetchone()[0],
            "states": dict(con.execute("SELECT state, COUNT(*) FROM records GROUP BY 1").fetchall()),
            "claims": con.execute("SELECT COUNT(*) FROM call_claims").fetchone()[0],
        }
    finally:
        con.close()
    return sums, got


def test_two_processes_on_one_store_pay_each_distinct_prompt_once(tmp_path):
    """300 rows with 15 distinct texts, leased by two `corral run` at once: identical prompts
    in records the two processes hold at the same moment are paid once, the other replays."""
    sums, got = two_runs(tmp_path, JOB, 300, 15)
    paid = got["paid"]
    assert got["states"] == {"done": 300}
    assert len(paid) == 15 and all(n == 1 for _, n in paid), paid  # no prompt paid twice
    assert got["replayed"] == 285 and got["claims"] == 0
    assert {s["calls"]["made"] for s in sums} == {15}  # the run's ledger, as each process saw it last


def test_two_processes_packing_rows_pay_each_distinct_prompt_once(tmp_path):
    """The same with `pack: 10`: 400 rows with 100 distinct texts, two `corral run` at once; a
    row's prompt that the other process holds in a pack of its own is replayed, not packed again."""
    job = JOB.replace("latency: 0.05", "latency: 0.4").replace("concurrency: 16", "concurrency: 2")
    job = job.replace("    labels: [a, b, c]\n", "    labels: [a, b, c]\n    pack: 10\n")
    logs = [tmp_path / f"calls{i}.log" for i in range(2)]  # each process's calls to the model
    _, got = two_runs(tmp_path, job, 400, 100, logs)
    made = [len(log.read_text().splitlines()) if log.exists() else 0 for log in logs]
    assert all(n > 0 for n in made), made  # both processes asked the model
    paid, calls = got["paid"], got["calls"]
    assert got["states"] == {"done": 400} and got["claims"] == 0
    assert len(paid) == 100 and all(n == 1 for _, n in paid), paid  # each distinct prompt paid once
    assert 10 <= calls < 100 and calls == sum(made)  # in packs (one the 50 ms wait sent early: smaller)
