"""`corral worker`: one worker against four on the same job, and four under random SIGKILLs.

  .venv/bin/python bench/workers.py [--rows 20000] [--latency 0.05] [--concurrency 8] [--repeats 3]
                                    [--postgres] [--kills 6]

A classify job over --rows synthetic rows (every text twice, in records far apart, so workers
hold identical prompts at the same moment) on the fake model with --latency seconds per call and
--concurrency calls in flight per worker. Per repeat, in a fresh folder and store (a SQLite file, or with --postgres a fresh database on a throwaway
Postgres server on 127.0.0.1, started as the tests start one: tests/_postgres.py): 1
worker, then 4 workers started together, wall time from start to the last worker's end. Then the
kill scenario: 4 workers, a random one SIGKILLed every few seconds (--kills times) and started
again, until the run is finished; then the invariants: every row written once (sink and records),
no request hash paid twice, no lease left. Writes bench/results/workers.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import CORRAL, RESULTS, machine  # noqa: E402

JOB = """\
name: workers
source: in.csv
key: id
model: {{name: fake, latency: {latency}}}
concurrency: {concurrency}
steps:
  - name: cat
    task: classify
    input: "{{text}}"
    labels: [a, b, c]
sink: out/workers.csv
"""


def folder(base: Path, rows: int, latency: float, concurrency: int) -> Path:
    d = Path(tempfile.mkdtemp(prefix="corral-workers-", dir=base))
    (d / "job.yaml").write_text(JOB.format(latency=latency, concurrency=concurrency))
    half = rows // 2
    with (d / "in.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "text"])
        w.writerows((i, f"ticket text number {i % half}") for i in range(rows))
    return d


def start(d: Path, store: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "CORRAL_STORE": store, "NO_COLOR": "1"}
    return subprocess.Popen([CORRAL, "worker", "job.yaml"], cwd=d, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def timed(d: Path, store: str, n: int) -> float:
    t = time.monotonic()
    procs = [start(d, store) for _ in range(n)]
    codes = [p.wait(timeout=3600) for p in procs]
    if codes != [0] * n:
        raise SystemExit(f"workers exited {codes} in {d}")
    return time.monotonic() - t


def invariants(d: Path, store: str, rows: int) -> dict[str, Any]:
    if store.startswith("postgres"):
        import psycopg

        con: Any = psycopg.connect(store)
    else:
        con = sqlite3.connect(store)
    try:
        cur = con.cursor()
        cur.execute("SELECT state, COUNT(*) FROM records GROUP BY 1")
        states = dict(cur.fetchall())
        cur.execute("SELECT COUNT(*) FROM (SELECT request_hash FROM ledger WHERE replayed=0 "
                    "GROUP BY 1 HAVING COUNT(*) > 1) t")
        paid_twice = cur.fetchone()[0]
        cur.execute("SELECT COUNT(*), SUM(CASE WHEN replayed=0 THEN 1 ELSE 0 END) FROM ledger")
        calls, paid = cur.fetchone()
    finally:
        con.close()
    with (d / "out" / "workers.csv").open() as f:
        keys = [r["id"] for r in csv.DictReader(f)]
    return {"states": states, "sink_rows": len(keys), "sink_distinct": len(set(keys)),
            "hashes_paid_twice": paid_twice, "paid_calls": paid, "ledger_rows": calls,
            "ok": states == {"done": rows} and len(keys) == len(set(keys)) == rows and paid_twice == 0
            and paid == rows // 2}


def kills(d: Path, store: str, rows: int, n_kills: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    procs = [start(d, store) for _ in range(4)]
    t = time.monotonic()
    killed = 0
    while killed < n_kills and any(p.poll() is None for p in procs):
        time.sleep(rng.uniform(1.0, 3.0))
        alive = [i for i, p in enumerate(procs) if p.poll() is None]
        if not alive:
            break
        i = rng.choice(alive)
        procs[i].send_signal(signal.SIGKILL)
        procs[i].wait()
        killed += 1
        procs[i] = start(d, store)
    codes = [p.wait(timeout=3600) for p in procs]
    # a worker started after the others ended finds nothing; one more pass makes sure of the end
    final = subprocess.run([CORRAL, "worker", "job.yaml", "--json"], cwd=d, capture_output=True, text=True,
                           env={**os.environ, "CORRAL_STORE": store}, timeout=3600)
    return {"kills": killed, "wall_s": round(time.monotonic() - t, 2), "exit_codes": codes,
            "final_worker_exit": final.returncode, **invariants(d, store, rows)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--latency", type=float, default=0.05)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--kills", type=int, default=6)
    ap.add_argument("--postgres", action="store_true", help="a throwaway Postgres server (default: SQLite files)")
    ap.add_argument("--seed", type=int, default=14)
    a = ap.parse_args()
    if a.postgres:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from tests._postgres import postgres_server

        with postgres_server() as server:
            bench(a, lambda d, tag: server.new_database(tag))
    else:
        bench(a, lambda d, tag: str(d / f"{tag}.db"))


def bench(a: argparse.Namespace, store_for: Any) -> None:
    base = Path(tempfile.mkdtemp(prefix="corral-bench-workers-"))
    out: dict[str, Any] = {"args": vars(a), "machine": machine(), "pairs": []}

    for i in range(a.repeats):
        d1 = folder(base, a.rows, a.latency, a.concurrency)
        one = timed(d1, store_for(d1, "one"), 1)
        d4 = folder(base, a.rows, a.latency, a.concurrency)
        s4 = store_for(d4, "four")
        four = timed(d4, s4, 4)
        inv = invariants(d4, s4, a.rows)
        out["pairs"].append({"one_s": round(one, 2), "four_s": round(four, 2), "ratio": round(one / four, 3),
                             "four_ok": inv["ok"]})
        print(f"repeat {i + 1}: 1 worker {one:.2f} s, 4 workers {four:.2f} s, ratio {one / four:.2f}, "
              f"invariants {'hold' if inv['ok'] else 'BROKEN: ' + json.dumps(inv)}", flush=True)
    ones = [p["one_s"] for p in out["pairs"]]
    fours = [p["four_s"] for p in out["pairs"]]
    out["median_one_s"], out["median_four_s"] = statistics.median(ones), statistics.median(fours)
    out["median_ratio"] = round(statistics.median(p["ratio"] for p in out["pairs"]), 3)
    print(f"medians: 1 worker {out['median_one_s']:.2f} s, 4 workers {out['median_four_s']:.2f} s, "
          f"ratio of medians {out['median_one_s'] / out['median_four_s']:.2f}", flush=True)
    dk = folder(base, a.rows, a.latency, a.concurrency)
    out["kills"] = kills(dk, store_for(dk, "kills"), a.rows, a.kills, a.seed)
    print("kills:", json.dumps(out["kills"]), flush=True)
    name = "workers_postgres.json" if a.postgres else "workers.json"
    (RESULTS / name).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
