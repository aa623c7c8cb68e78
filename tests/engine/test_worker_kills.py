"""Four `corral worker` processes on a 20,000-row job, a random one SIGKILLed again and again and
started anew: nothing lost or duplicated, no completed call paid twice, identical prompts in
records that different workers hold at the same moment included. On SQLite and on Postgres."""

from __future__ import annotations

import csv
import os
import random
import signal
import subprocess
import time
from collections import Counter

import pytest

from corral.store import open_store

from ..conftest import corral_bin, write

ROWS = 20_000
CONCURRENCY = 8
JOB = f"""\
name: kills
source: in.csv
key: id
model: {{name: fake, latency: 0.004}}
concurrency: {CONCURRENCY}
steps:
  - name: cat
    task: classify
    input: "{{text}}"
    labels: [a, b, c]
sink: out/o.csv
"""


@pytest.mark.slow
@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_four_workers_under_sigkills_lose_duplicate_and_pay_twice_nothing(tmp_path, store, request):
    url = request.getfixturevalue("pg_url") if store == "postgres" else str(tmp_path / "s.db")
    write(tmp_path / "job.yaml", JOB)
    with (tmp_path / "in.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "text"])
        w.writerows((i, f"ticket {i % (ROWS // 2)}") for i in range(ROWS))  # each text twice, far apart
    log = tmp_path / "calls.log"
    env = {**os.environ, "CORRAL_STORE": url, "CORRAL_FAKE_CALL_LOG": str(log), "NO_COLOR": "1"}

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen([corral_bin(), "worker", "job.yaml"], cwd=tmp_path, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    rng = random.Random(14)
    procs = [start() for _ in range(4)]
    kills = 0
    deadline = time.monotonic() + 240
    while kills < 6 and time.monotonic() < deadline and any(p.poll() is None for p in procs):
        time.sleep(rng.uniform(0.5, 1.5))
        alive = [i for i, p in enumerate(procs) if p.poll() is None]
        if alive:
            i = rng.choice(alive)
            procs[i].send_signal(signal.SIGKILL)
            procs[i].wait()
            kills += 1
            procs[i] = start()
    assert [p.wait(timeout=240) for p in procs] == [0] * 4
    assert kills >= 3, "the run finished before the kills; make it longer"
    last = subprocess.run([corral_bin(), "worker", "job.yaml"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=240)  # takes what a worker killed last left, writes the outputs
    assert last.returncode == 0, last.stderr
    st = open_store(url)
    try:
        (run,) = st.list_runs()
        assert st.counts(run.id) == {"done": ROWS}  # nothing lost
        paid = Counter(h for (h,) in st.db.execute("SELECT request_hash FROM ledger WHERE replayed=0"))
    finally:
        st.close()
    with open(tmp_path / "out" / "o.csv", newline="") as f:
        keys = [r["id"] for r in csv.DictReader(f)]
    assert len(keys) == ROWS and len(set(keys)) == ROWS  # nothing duplicated
    assert len(paid) == ROWS // 2 and max(paid.values()) == 1  # each distinct prompt recorded paid once
    called = Counter(log.read_text().split())
    assert set(called) == set(paid)
    # the model was asked again only for calls in flight in a killed worker (never recorded)
    assert sum(n - 1 for n in called.values()) <= kills * CONCURRENCY * 2
