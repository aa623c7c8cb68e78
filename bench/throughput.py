"""Throughput: all 5,574 SMS rows through `corral run sms-triage.yaml --model fake --json`.

Each run is a fresh process (interpreter start included) with a fresh temporary store; the
wall time of the whole process is measured. The sink is the job's own `out/sms.parquet`
(gitignored). Usage: .venv/bin/python bench/throughput.py [--runs 7]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    CORRAL,
    ROOT,
    SMS_ROWS,
    SMS_TSV,
    cmdline,
    last_json_line,
    median,
    run_child,
    wait_for_quiet,
    write_result,
)

GOAL_ROWS_S = 2000.0


def one_run(tmp: Path, i: int) -> dict:
    store = tmp / f"run{i}" / "corral.db"
    store.parent.mkdir()
    argv = [CORRAL, "run", "sms-triage.yaml", "--model", "fake", "--json"]
    env = {**os.environ, "CORRAL_STORE": str(store)}
    waited, share = wait_for_quiet(0.15, 120.0)  # the machine is shared: start when it is quiet
    c = run_child(argv, env)
    wall = c["wall_s"]
    if c["rc"] != 0:
        raise SystemExit(f"run {i} failed (exit {c['rc']}): {c['stderr'][-2000:]}")
    s = last_json_line(c["stdout"])
    rows = s["rows"]
    ok = rows["in"] == SMS_ROWS and rows["pending"] == 0 and rows["written"] + rows["quarantined"] == SMS_ROWS
    return {
        "run": i,
        "wall_s": round(wall, 4),
        "rows_per_s_wall": round(SMS_ROWS / wall, 1),
        "engine_elapsed_s": s["elapsed_s"],
        "rows_per_s_engine": round(SMS_ROWS / s["elapsed_s"], 1) if s["elapsed_s"] else None,
        "rows": rows,
        "calls": s["calls"],
        "accounted": ok,
        "sink": s["outputs"].get("sink"),
        "cpu_s": round(c["cpu_s"], 3),
        "waited_for_quiet_s": round(waited, 1),
        "busy_share_before": round(share, 3),
        "others_cpu_share": round(c["others_cpu_share"], 3),
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    if not SMS_TSV.exists():
        raise SystemExit(f"missing data: {SMS_TSV}")
    cmd = "CORRAL_STORE=<fresh tmp>/corral.db " + cmdline(
        [CORRAL, "run", "sms-triage.yaml", "--model", "fake", "--json"]
    )
    runs = []
    with tempfile.TemporaryDirectory(prefix="corral-bench-tp-") as d:
        tmp = Path(d)
        warm = one_run(tmp, 0)  # warm-up: file cache, .pyc; reported but not in the median
        print(f"warm-up: {warm['wall_s']:.3f} s wall")
        for i in range(1, args.runs + 1):
            r = one_run(tmp, i)
            runs.append(r)
            print(
                f"run {i}: wall {r['wall_s']:.3f} s = {r['rows_per_s_wall']:,.0f} rows/s; "
                f"engine elapsed_s {r['engine_elapsed_s']:.3f} s = {r['rows_per_s_engine']:,.0f} rows/s; "
                f"other processes used {r['others_cpu_share']:.0%} of the CPUs"
            )
    med_wall = median([r["wall_s"] for r in runs])
    med_rate = median([r["rows_per_s_wall"] for r in runs])
    med_el = median([r["engine_elapsed_s"] for r in runs])
    med_rate_el = median([r["rows_per_s_engine"] for r in runs])
    all_ok = all(r["accounted"] for r in runs)
    passed = med_rate >= GOAL_ROWS_S and all_ok
    print(
        f"median of {len(runs)}: {med_rate:,.0f} rows/s end to end (wall {med_wall:.3f} s); "
        f"engine {med_rate_el:,.0f} rows/s (elapsed_s {med_el:.3f} s); "
        f"goal >= {GOAL_ROWS_S:,.0f} rows/s end to end: {'PASS' if passed else 'FAIL'}"
    )
    path = write_result(
        "throughput",
        {
            "command": cmd,
            "cwd": str(ROOT),
            "rows": SMS_ROWS,
            "warmup": warm,
            "runs": runs,
            "median_wall_s": med_wall,
            "median_rows_per_s_wall": med_rate,
            "median_engine_elapsed_s": med_el,
            "median_rows_per_s_engine": med_rate_el,
            "all_runs_accounted": all_ok,
            "goal": f"median end-to-end >= {GOAL_ROWS_S:.0f} rows/s",
            "pass": passed,
        },
    )
    print(f"wrote {path}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
