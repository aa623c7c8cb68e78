"""Corral on uvloop against asyncio's own loop, side by side: the peers job (2,000 SMS rows)
against a fresh test server per run, alternating the two loops at each latency.

  .venv/bin/python bench/peers/loop_ab.py [--reps 5] [--latencies 0,200]

Prints each run's rows/s (process wall time) and the medians; `CORRAL_EVENT_LOOP=asyncio` picks
asyncio's loop (see docs/cli.md).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import run as R


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--latencies", default="0,200")
    args = ap.parse_args()
    rows = R.sms_rows(2000)
    csv_path = Path(tempfile.mkdtemp()) / "rows.csv"
    R.write_rows(csv_path, rows)
    got: dict[tuple[str, int], list[float]] = {}
    for _ in range(args.reps):
        for loop in ("asyncio", "uvloop"):
            for lat in (int(x) for x in args.latencies.split(",")):
                R.wait_for_quiet(max_wait_s=10)
                work = Path(tempfile.mkdtemp(prefix="loop-ab-"))
                with R.LoggedServer(latency_s=lat / 1000) as srv:
                    argv, env, _ = R.command("corral", work, csv_path, srv.openai_url)
                    env["CORRAL_EVENT_LOOP"] = loop
                    r = R.spawn(argv, env, work)
                rate = round(len(rows) / r["wall_s"], 1)
                got.setdefault((loop, lat), []).append(rate)
                print(f"{loop:8} {lat:4} ms  {rate} rows/s  rc {r['rc']}", flush=True)
    for (loop, lat), v in sorted(got.items()):
        print(f"{loop:8} {lat:4} ms  median {statistics.median(v)}  {sorted(v)}")


if __name__ == "__main__":
    main()
