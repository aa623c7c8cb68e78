"""Run every benchmark in order, then rebuild bench/RESULTS.md from bench/results/*.json.

Usage: .venv/bin/python bench/run_all.py [--skip memory,local_ratio]
Exit status: 0 when every benchmark met its goal, 1 otherwise.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

BENCHMARKS: list[tuple[str, list[str]]] = [
    ("throughput", ["throughput.py"]),
    ("crash", ["crash.py"]),
    # a slower fake model and kill windows scaled to the work left, so that kills land mid-run
    ("crash_latency0.05_adaptive", ["crash.py", "--latency", "0.05", "--adaptive"]),
    ("local_ratio", ["local_ratio.py"]),
    ("memory", ["memory.py"]),
]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip", default="", help="comma-separated benchmark names to skip")
    args = ap.parse_args()
    skip = {s for s in args.skip.split(",") if s}
    status: dict[str, int] = {}
    for name, argv in BENCHMARKS:
        if name in skip:
            continue
        print(f"=== {name}: {' '.join(['bench/' + argv[0], *argv[1:]])}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.run([sys.executable, "-u", str(HERE / argv[0]), *argv[1:]], cwd=ROOT).returncode
        status[name] = rc
        print(f"=== {name}: exit {rc} after {time.perf_counter() - t0:.0f} s\n", flush=True)
    subprocess.run([sys.executable, str(HERE / "make_results.py")], cwd=ROOT, check=False)
    print("summary: " + ", ".join(f"{k} {'ok' if v == 0 else f'FAILED (exit {v})'}" for k, v in status.items()))
    return 0 if all(v == 0 for v in status.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
