"""`corral worker`: processes sharing a store's runs: rows written once, calls paid once; a
killed run taken up from the store; stops and bad input."""

from __future__ import annotations

import csv
import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

from ..conftest import corral_bin, write

JOB = """\
name: wk
source: in.csv
key: id
model: {{name: {model}, latency: 0.02}}
concurrency: 8
steps:
  - name: cat
    task: classify
    input: "{{text}}"
    labels: [a, b]
sink: out/wk.csv
"""


def setup(tmp: Path, rows: int = 600, model: str = "fake", distinct: int | None = None) -> dict[str, str]:
    write(tmp / "job.yaml", JOB.format(model=model))
    with (tmp / "in.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "text"])
        w.writerows((i, f"text {i % distinct if distinct else i}") for i in range(rows))
    return {**os.environ, "NO_COLOR": "1", "CORRAL_STORE": str(tmp / "s.db")}


def worker(tmp: Path, env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([corral_bin(), "worker", *args], cwd=tmp, env=env, capture_output=True, text=True,
                          timeout=timeout)


def ledger(tmp: Path) -> tuple[list[tuple[str, int]], dict[str, int]]:
    """Paid calls per prompt and records per state; empty while the store is not made yet (a
    worker just started may have created the file but not yet its tables)."""
    if not (tmp / "s.db").exists():
        return [], {}
    con = sqlite3.connect(tmp / "s.db")
    try:
        paid = con.execute("SELECT request_hash, COUNT(*) FROM ledger WHERE replayed=0 GROUP BY 1").fetchall()
        states = dict(con.execute("SELECT state, COUNT(*) FROM records GROUP BY 1").fetchall())
    except sqlite3.OperationalError as e:
        if "no such table" not in str(e):
            raise
        return [], {}
    finally:
        con.close()
    return paid, states


def sink_keys(tmp: Path) -> list[str]:
    with (tmp / "out" / "wk.csv").open() as f:
        return [r["id"] for r in csv.DictReader(f)]


def test_three_workers_on_one_job_write_each_row_once_and_pay_each_prompt_once(tmp_path):
    env = setup(tmp_path, rows=900, distinct=450)  # every prompt twice, in records far apart
    procs = [subprocess.Popen([corral_bin(), "worker", "job.yaml", "--json"], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [o[1][-1500:] for o in outs]
    paid, states = ledger(tmp_path)
    assert states == {"done": 900}
    assert len(paid) == 450 and {n for _, n in paid} == {1}  # no prompt paid twice
    assert sorted(sink_keys(tmp_path), key=int) == [str(i) for i in range(900)]
    runs = [json.loads(o[0])["runs"] for o in outs]
    assert all(len(r) == 1 for r in runs) and len({r[0]["run"] for r in runs}) == 1  # one shared run
    assert sum(r[0]["status"] == "finished" for r in runs) >= 1


def test_a_worker_without_job_files_finishes_a_killed_run_from_the_store(tmp_path):
    env = setup(tmp_path, rows=1500)
    proc = subprocess.Popen([corral_bin(), "run", "job.yaml"], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # until it has answered some rows
        time.sleep(0.2)
        if ledger(tmp_path)[1].get("done", 0) > 100:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ledger(tmp_path)[1].get("done", 0) < 1500
    done = worker(tmp_path, env, "--json")
    assert done.returncode == 0, done.stderr
    rep = json.loads(done.stdout)
    assert [r["status"] for r in rep["runs"]] == ["finished"] and rep["skipped"] == {}
    paid, states = ledger(tmp_path)
    assert states == {"done": 1500} and len(paid) == 1500 and {n for _, n in paid} == {1}
    assert len(sink_keys(tmp_path)) == 1500
    again = worker(tmp_path, env)  # nothing left: says so and ends
    assert again.returncode == 0 and "No open run in the store had rows to take." in again.stdout


def test_a_run_on_another_model_than_its_job_is_skipped_with_the_fix(tmp_path):
    env = setup(tmp_path, rows=400, model="fake:x")
    proc = subprocess.Popen([corral_bin(), "run", "job.yaml", "--model", "{name: 'fake:y', latency: 0.05}"],
                            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not ledger(tmp_path)[1].get("done"):
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    res = worker(tmp_path, env)
    assert res.returncode == 0
    assert "ran on model fake:y, not its job's (fake:x); start the worker with the job file and the model" in res.stderr
    assert ledger(tmp_path)[1].get("pending", 0) + ledger(tmp_path)[1].get("leased", 0) > 0  # left alone


def test_sigterm_ends_a_worker_at_once_and_gives_its_rows_back(tmp_path):
    env = setup(tmp_path, rows=3000)
    proc = subprocess.Popen([corral_bin(), "worker", "job.yaml"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not ledger(tmp_path)[1].get("done"):
        time.sleep(0.1)
    t = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert time.monotonic() - t < 5
    assert proc.returncode == 130, err
    assert "Stopped: rows this worker held went back to the queue. Start it again to go on: corral worker job.yaml" in err
    states = ledger(tmp_path)[1]
    assert states.get("leased", 0) == 0 and states.get("pending", 0) > 0


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    env = setup(tmp_path)
    res = worker(tmp_path, env, "--model", "fake")
    assert res.returncode == 2 and "--model needs job files" in res.stderr
    res = worker(tmp_path, {**env, "CORRAL_STORE": str(tmp_path / "missing.db")})
    assert res.returncode == 2 and "no store at" in res.stderr
    res = worker(tmp_path, env, "nope.yaml")
    assert res.returncode == 2 and "nope.yaml" in res.stderr


def test_a_cost_cap_holds_across_four_workers(tmp_path):
    """max_cost_usd $0.30 at $0.001 a call: four workers together stop within one call's cost
    per worker of the cap (each alone would have spent up to the cap: $1.20 in all)."""
    env = setup(tmp_path, rows=2000)
    job = (tmp_path / "job.yaml").read_text().replace("latency: 0.02}", "latency: 0.02, price_per_call: 0.001}")
    write(tmp_path / "job.yaml", job + "budget: {max_cost_usd: 0.30}\n")
    procs = [subprocess.Popen([corral_bin(), "worker", "job.yaml", "--json"], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [3, 3, 3, 3], [o[1][-1500:] for o in outs]
    con = sqlite3.connect(tmp_path / "s.db")
    try:
        (spent,) = con.execute("SELECT SUM(cost_nanos) FROM ledger WHERE replayed=0").fetchone()
    finally:
        con.close()
    spent_usd = spent / 1e9
    assert 0.30 - 4 * 0.001 <= spent_usd <= 0.30 + 4 * 0.001, spent_usd
    assert all("budget: max_cost_usd 0.30 reached" in o[1] or "max_cost_usd" in o[0] for o in outs)


def test_a_worker_stalled_past_its_lease_has_its_rows_taken_over_and_its_late_answers_make_no_row(tmp_path):
    """SIGSTOP a worker holding every row; a second worker takes them over once the lease (2 s
    here) expires; SIGCONT: the stalled worker's late answers go to the ledger, not the sink."""
    env = {**setup(tmp_path, rows=60), "CORRAL_LEASE_TTL": "2"}
    job = (tmp_path / "job.yaml").read_text().replace("latency: 0.02", "latency: 0.3").replace("concurrency: 8", "concurrency: 4")
    write(tmp_path / "job.yaml", job)
    stalled = subprocess.Popen([corral_bin(), "worker", "job.yaml"], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not ledger(tmp_path)[1].get("done"):
        time.sleep(0.05)
    time.sleep(0.1)  # calls in flight
    stalled.send_signal(signal.SIGSTOP)
    try:
        before = ledger(tmp_path)[1]
        assert before.get("leased", 0) > 0  # it holds rows nobody else may take while its lease lasts
        other = worker(tmp_path, env, "--idle", "8", "--json")  # waits out the lease, then takes the rows
        assert other.returncode == 0, other.stderr
        paid, states = ledger(tmp_path)
        assert states == {"done": 60}
        rows_before = sink_keys(tmp_path)
        assert sorted(rows_before, key=int) == [str(i) for i in range(60)]
        paid_before = sum(n for _, n in paid)
    finally:
        stalled.send_signal(signal.SIGCONT)
    _, err = stalled.communicate(timeout=60)
    assert stalled.returncode == 0, err
    paid, states = ledger(tmp_path)
    assert states == {"done": 60}
    assert sorted(sink_keys(tmp_path), key=int) == [str(i) for i in range(60)]  # no row twice
    late = sum(n for _, n in paid) - paid_before
    assert late >= 1  # the stalled worker's calls in flight came back: recorded in the ledger
    assert all(n <= 2 for _, n in paid)  # a call paid twice only where a stalled worker's was in flight
