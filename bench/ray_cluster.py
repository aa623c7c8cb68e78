"""`corral run --engine ray` on a local Ray cluster against the same job in one process.

  .venv/bin/python bench/ray_cluster.py [--rows 2000] [--latency 0.05] [--concurrency 8]
                                        [--ray-workers 4] [--repeats 3]

Starts a Ray cluster on this machine (a head without CPUs and two worker nodes of two CPUs each,
as tests/engine/test_ray.py does), then per repeat, in a fresh folder: a classify job over --rows
synthetic rows (every text twice) on the fake model with --latency seconds per call and
--concurrency calls in flight, run once in one process (`corral run job.yaml --store a.db`) and
once on the cluster (`corral run job.yaml --engine ray --address ADDR --ray-workers N --store
b.db`), each timed from process start to exit. Checks that both sinks hold the same rows and
values and that no request hash was paid twice. rows/s = rows / wall. Writes
bench/results/ray_cluster.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import CORRAL, RESULTS, machine, median  # noqa: E402

JOB = """\
name: rayb
source: in.csv
key: id
model: {{name: fake, latency: {latency}}}
concurrency: {concurrency}
steps:
  - name: cat
    task: classify
    input: "{{text}}"
    labels: [a, b, c]
sink: out/{sink}.csv
"""


def folder(rows: int, latency: float, concurrency: int) -> Path:
    d = Path(tempfile.mkdtemp(prefix="corral-ray-"))
    for sink in ("alone", "ray"):
        (d / sink).mkdir()
        (d / sink / "job.yaml").write_text(JOB.format(latency=latency, concurrency=concurrency, sink=sink))
        with (d / sink / "in.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", "text"])
            w.writerows((i, f"ticket text number {i % (rows // 2)}") for i in range(rows))
    return d


def timed(cwd: Path, *args: str) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("CORRAL_STORE", "RAY_ADDRESS")}
    t = time.monotonic()
    r = subprocess.run([CORRAL, "run", "job.yaml", "--store", "s.db", "--json", *args], cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=600)
    wall = time.monotonic() - t
    if r.returncode != 0 or json.loads(r.stdout)["status"] != "finished":
        raise SystemExit(f"corral run {' '.join(args)} failed ({r.returncode}): {r.stderr[-2000:]}")
    return wall


def checked(d: Path, rows: int) -> dict[str, Any]:
    def sink(name: str) -> list[tuple[tuple[str, str], ...]]:
        with (d / name / "out" / f"{name}.csv").open() as f:
            return sorted(tuple(sorted(r.items())) for r in csv.DictReader(f))

    con = sqlite3.connect(d / "ray" / "s.db")
    try:
        twice = con.execute("SELECT COUNT(*) FROM (SELECT request_hash FROM ledger WHERE replayed=0 "
                            "GROUP BY 1 HAVING COUNT(*) > 1)").fetchone()[0]
    finally:
        con.close()
    same = sink("alone") == sink("ray") and len(sink("ray")) == rows
    return {"same_rows_and_values": same, "hashes_paid_twice": twice}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--latency", type=float, default=0.05)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--ray-workers", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    from ray.cluster_utils import Cluster

    t = time.monotonic()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    session = cluster.head_node.get_session_dir_path()
    out: dict[str, Any] = {"args": vars(a), "machine": machine(), "repeats": []}
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=2)
        out["cluster_start_s"] = round(time.monotonic() - t, 2)
        for i in range(a.repeats):
            d = folder(a.rows, a.latency, a.concurrency)
            alone = timed(d / "alone")
            ray = timed(d / "ray", "--engine", "ray", "--address", str(cluster.address),
                        "--ray-workers", str(a.ray_workers))
            rep = {"alone_s": round(alone, 2), "ray_s": round(ray, 2), **checked(d, a.rows)}
            out["repeats"].append(rep)
            print(f"repeat {i + 1}: one process {alone:.1f} s ({a.rows / alone:,.0f} rows/s), "
                  f"{a.ray_workers} Ray workers {ray:.1f} s ({a.rows / ray:,.0f} rows/s); {rep}", flush=True)
    finally:
        cluster.shutdown()
        shutil.rmtree(session, ignore_errors=True)  # its logs and sockets
    for key in ("alone_s", "ray_s"):
        out[f"median_{key}"] = round(median([r[key] for r in out["repeats"]]), 2)
    out["median_speedup"] = round(out["median_alone_s"] / out["median_ray_s"], 2)
    print(json.dumps({k: v for k, v in out.items() if k.startswith("median") or k == "cluster_start_s"}))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ray_cluster.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
