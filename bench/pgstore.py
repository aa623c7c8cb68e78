"""The Postgres store beside the SQLite store: all 5,574 SMS rows through `corral run
sms-triage.yaml --model fake --json`, one process, with `CORRAL_STORE` an SQLite file or a
database on a throwaway local PostgreSQL server (tests/_postgres.py: fsync off, 127.0.0.1).

Each run is a fresh process with a fresh store (a new file, a new database); then the same run
again (every row already final: it reads the store and rewrites the sink). Usage:
PYTHONPATH=src .venv/bin/python bench/pgstore.py [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import ROOT, SMS_ROWS, SMS_TSV, last_json_line, median, run_child, write_result  # noqa: E402

from tests._postgres import postgres_server  # noqa: E402


def one(store: str) -> dict:
    argv = [sys.executable, "-m", "corral", "run", "sms-triage.yaml", "--model", "fake", "--json"]
    env = {**os.environ, "CORRAL_STORE": store}
    out = {}
    for phase in ("first", "again"):
        c = run_child(argv, env)
        if c["rc"] != 0:
            raise SystemExit(f"{phase} run failed (exit {c['rc']}): {c['stderr'][-2000:]}")
        s = last_json_line(c["stdout"])
        assert s["rows"]["in"] == SMS_ROWS and s["rows"]["pending"] == 0, s["rows"]
        out[phase] = {"wall_s": round(c["wall_s"], 3), "engine_s": s["elapsed_s"], "calls": s["calls"]}
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    if not SMS_TSV.exists():
        raise SystemExit(f"missing data: {SMS_TSV}")
    results: dict[str, list[dict]] = {"sqlite": [], "postgres": []}
    with tempfile.TemporaryDirectory(prefix="corral-bench-pg-") as d, postgres_server() as server:
        for i in range(args.runs + 1):  # run 0 warms the caches and is left out
            for kind in results:
                store = str(Path(d) / f"s{i}.db") if kind == "sqlite" else server.new_database("bench")
                r = one(store)
                print(f"{kind:8} run {i}: first {r['first']['wall_s']:.2f} s, again {r['again']['wall_s']:.2f} s")
                if i:
                    results[kind].append(r)
    summary = {
        kind: {phase: median([r[phase]["wall_s"] for r in rs]) for phase in ("first", "again")}
        for kind, rs in results.items()
    }
    for kind, m in summary.items():
        print(f"{kind:8} median: first {m['first']:.2f} s ({SMS_ROWS / m['first']:.0f} rows/s), again {m['again']:.2f} s")
    write_result("pgstore", {"rows": SMS_ROWS, "runs": results, "median_wall_s": summary,
                             "command": "PYTHONPATH=src .venv/bin/python bench/pgstore.py", "cwd": str(ROOT)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
