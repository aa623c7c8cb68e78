"""The review queue at 1,000 held rows: `corral review accept RUN --all` (one sink rewrite for
every decision) against accepting rows one command at a time (a rewrite each).

Each repeat: a fresh store and folder; a 1,000-row job on the fake model whose check holds every
row for review; then, timed, `corral review accept RUN --all` in a fresh process; and, in a second
fresh copy, 20 single-key `corral review accept RUN KEY` processes (the per-decision cost, which a
1,000-row review made one key at a time would pay 1,000 times; most of it is the process's start),
then 20 `decide()` calls in one process, each with its sink rewrite. Prints medians and a JSON line.

    .venv/bin/python bench/review.py [--rows 1000] [--singles 20] [--repeats 3]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CORRAL = [sys.executable, "-m", "corral"]


def setup(folder: Path, rows: int) -> str:
    with open(folder / "in.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "text"])
        w.writerows((f"r{i}", f"message {i}: my parcel and my invoice") for i in range(rows))
    (folder / "job.yaml").write_text(
        "name: held\nsource: in.csv\nkey: id\nmodel: fake\nsink: out/o.csv\nsteps:\n"
        "  - name: topic\n    task: classify\n    input: \"{text}\"\n    labels: [billing, shipping]\n"
        "    checks: [\"label == 'none'\"]\n", encoding="utf-8")
    out = subprocess.run([*CORRAL, "run", "job.yaml", "--json"], cwd=folder, env=env(folder),
                         capture_output=True, text=True, check=True)
    summary = json.loads(out.stdout)
    assert summary["rows"]["review"] == rows, summary["rows"]
    return str(summary["run"])


def env(folder: Path) -> dict[str, str]:
    return {**os.environ, "CORRAL_STORE": str(folder / "corral.db"), "CORRAL_REVIEWER": "bench"}


def timed(folder: Path, args: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run([*CORRAL, *args], cwd=folder, env=env(folder), capture_output=True, check=True)
    return time.perf_counter() - t


def in_process(folder: Path, run: str, n: int) -> float:
    """Median seconds of one `decide(..., write=True)` (a decision and a sink rewrite) in-process."""
    from corral import _review
    from corral.store import open_store

    st = open_store(folder / "corral.db")
    try:
        each = []
        for i in range(n):
            t = time.perf_counter()
            _review.decide(st, run, f"r{500 + i}", "accept", who="bench")
            each.append(time.perf_counter() - t)
        return statistics.median(each)
    finally:
        st.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--singles", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    all_s, single_s, lib_s = [], [], []
    for _ in range(a.repeats):
        with tempfile.TemporaryDirectory() as d1, tempfile.TemporaryDirectory() as d2:
            f1, f2 = Path(d1), Path(d2)
            run = setup(f1, a.rows)
            all_s.append(timed(f1, ["review", "accept", run, "--all"]))
            with open(f1 / "out" / "o.csv", newline="", encoding="utf-8") as f:
                assert sum(1 for _ in csv.DictReader(f)) == a.rows
            run = setup(f2, a.rows)
            each = [timed(f2, ["review", "accept", run, f"r{i}"]) for i in range(a.singles)]
            single_s.append(statistics.median(each))
            lib_s.append(in_process(f2, run, a.singles))
    res = {
        "rows": a.rows, "repeats": a.repeats, "accept_all_s": statistics.median(all_s),
        "accept_all_runs_s": [round(x, 3) for x in all_s], "one_key_s": statistics.median(single_s),
        "one_key_runs_s": [round(x, 3) for x in single_s],
        "one_at_a_time_estimate_s": statistics.median(single_s) * a.rows,
        "decide_in_process_s": statistics.median(lib_s), "decide_in_process_runs_s": [round(x, 4) for x in lib_s],
    }
    print(f"accept --all of {a.rows:,} held rows: median {res['accept_all_s']:.2f} s ({res['accept_all_runs_s']})")
    print(f"one key per command: median {res['one_key_s']:.2f} s each ({res['one_key_runs_s']}), "
          f"{a.rows:,} of them ≈ {res['one_at_a_time_estimate_s']:.0f} s")
    print(f"decide() with its sink rewrite, in one process: median {res['decide_in_process_s'] * 1000:.0f} ms "
          f"each ({res['decide_in_process_runs_s']})")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
