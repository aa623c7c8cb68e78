"""Kill `corral run` with SIGKILL mid-run; a rerun loses nothing, duplicates nothing, pays nothing twice."""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import time
from collections import Counter

import pytest

from corral.store import open_store

from ..conftest import corral_bin, write

ROWS = 400
JOB = """\
name: crash
source: in.csv
model: {name: fake, latency: 0.01}
concurrency: 8
steps:
  - name: cat
    task: classify
    input: "{text}"
    labels: [a, b, c]
  - name: info
    task: extract
    input: "{text} ({cat})"
    fields:
      n: integer
sink: out/o.csv
"""


@pytest.mark.slow
@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_sigkill_then_rerun_loses_and_repeats_nothing(tmp_path, store, request, monkeypatch):
    if store == "postgres":  # the same on a database of the throwaway PostgreSQL server
        monkeypatch.setenv("CORRAL_STORE", request.getfixturevalue("pg_url"))
    # no key column: keys are content hashes, and some rows repeat on purpose
    lines = [f"message {i % 350} with words {i * 7 % 13}" for i in range(ROWS)]
    write(tmp_path / "in.csv", "text\n" + "\n".join(lines) + "\n")
    write(tmp_path / "job.yaml", JOB)
    log = tmp_path / "calls.log"
    env = {**os.environ, "CORRAL_FAKE_CALL_LOG": str(log)}
    rng = random.Random(7)
    kills = 0
    for _ in range(3):
        proc = subprocess.Popen([corral_bin(), "run", "job.yaml", "--json"], cwd=tmp_path, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.7, 1.4))
        last_killed = proc.poll() is None
        if last_killed:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills >= 1, "the run finished before any kill; make it longer"
    status = subprocess.run([corral_bin(), "status", "crash", "--json"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    st = json.loads(status.stdout)
    # never "running" once its process is dead; rows pending means interrupted, and a kill after
    # the last row's commit but before the outputs were written is interrupted with none pending
    assert st["status"] in ("interrupted", "finished"), (st, last_killed)
    if st["rows"]["pending"]:
        assert st["status"] == "interrupted", st
    assert (st["status"] == "finished") == bool(st["outputs"]), st
    assert st["rows"]["in"] == st["rows"]["written"] + st["rows"]["pending"]
    final = subprocess.run([corral_bin(), "run", "job.yaml", "--json"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=120)
    assert final.returncode == 0, final.stderr
    s = json.loads(final.stdout)
    # nothing lost
    assert s["rows"]["in"] == ROWS and s["rows"]["written"] == ROWS and s["rows"]["pending"] == 0
    # nothing duplicated in the sink
    with open(tmp_path / "out" / "o.csv", newline="") as f:
        out = list(csv.DictReader(f))
    assert len(out) == ROWS and len({r["_key"] for r in out}) == ROWS
    assert Counter(r["text"] for r in out) == Counter(lines)
    # nothing paid twice: the store never recorded two paid calls for one request...
    st_ = open_store(os.environ["CORRAL_STORE"])
    paid = Counter(h for (h,) in st_.db.execute("select request_hash from ledger where replayed=0"))
    st_.close()
    assert paid and max(paid.values()) == 1
    # ...and the model was called again only for calls in flight at a kill (never recorded)
    called = Counter(log.read_text().split())
    assert set(called) == set(paid)
    again = sum(n - 1 for n in called.values())
    assert again <= kills * 8 * 2, (again, kills)
    assert s["calls"]["made"] == len(paid)
