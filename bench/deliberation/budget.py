"""A run with `max_cost_usd` stops within one call's cost of the cap, then resumes with a larger
cap to completion without repeating a call.

  .venv/bin/python bench/deliberation/budget.py [--rows 1000] [--cap 0.5]

The job: banking77 intents (first N rows of ../shared/data/banking77/test.csv) with adaptive
`vote` on the fake model as a noisy labeler (accuracy 0.8, $0.001 a call, 5-15 ms latency,
concurrency 32), so records use 2 to 5 calls each and many calls are in flight when the cap nears.

1. run with max_cost_usd = CAP: it must stop (exit 3) with spent within one call of CAP;
2. rerun with max_cost_usd = 1000: it must finish;
3. the same job in a fresh store without a cap, for comparison.
Every call the fake model receives is appended to a call log (CORRAL_FAKE_CALL_LOG); the check is
that no request hash appears twice in the log across steps 1 and 2, that the log matches the
ledger's paid calls, and that 1 + 2 paid exactly as many calls as 3.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "etl"))

from _common import machine  # noqa: E402
from _data import write_source  # noqa: E402
from _etl import CORRAL, DATA, ROOT  # noqa: E402

HERE = Path(__file__).resolve().parent
TEST = DATA / "banking77" / "test.csv"
LABELS = json.loads((DATA / "banking77" / "categories.json").read_text())
PRICE = 0.001


def run(job: Path, store: Path, log: Path) -> tuple[int, dict]:
    env = {**os.environ, "CORRAL_FAKE_CALL_LOG": str(log)}
    p = subprocess.run([CORRAL, "run", str(job), "--json", "--store", str(store)], cwd=ROOT,
                       capture_output=True, text=True, env=env, check=False)
    if p.returncode not in (0, 3):
        raise SystemExit(p.stdout + p.stderr)
    return p.returncode, json.loads(p.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--cap", type=float, default=0.5)
    args = ap.parse_args()
    rows = list(csv.DictReader(TEST.open(encoding="utf-8")))[: args.rows]
    with tempfile.TemporaryDirectory(prefix="corral-budget-") as tmp:
        d = Path(tmp)
        write_source(d / "data.csv", ((i, r["text"]) for i, r in enumerate(rows)))

        def job(cap: float | None) -> Path:
            spec = {
                "name": "budget", "source": "data.csv", "key": "id", "concurrency": 32,
                "model": {"name": "fake", "truth": str(TEST), "truth_text": "text",
                          "truth_label": "category", "accuracy": 0.8, "price_per_call": PRICE,
                          "latency": [0.005, 0.015]},
                "steps": [{"name": "intent", "task": "classify", "input": "{text}", "labels": LABELS,
                           "strategy": "vote"}],
                "sink": "out.csv",
            }
            if cap is not None:
                spec["budget"] = {"max_cost_usd": cap}
            p = d / f"job-{cap}.yaml"
            p.write_text(json.dumps(spec), encoding="utf-8")
            return p

        store, log = d / "s.db", d / "calls.log"
        code1, s1 = run(job(args.cap), store, log)
        calls_after_stop = len(log.read_text().splitlines())
        code2, s2 = run(job(1000.0), store, log)
        hashes = log.read_text().splitlines()
        repeated = sum(n - 1 for n in Counter(hashes).values() if n > 1)
        db = sqlite3.connect(store)
        paid = db.execute("SELECT COUNT(*) FROM ledger WHERE replayed = 0").fetchone()[0]
        paid_twice = db.execute(
            "SELECT COUNT(*) FROM (SELECT request_hash FROM ledger WHERE replayed = 0 "
            "GROUP BY request_hash HAVING COUNT(*) > 1)").fetchone()[0]
        db.close()
        code3, s3 = run(job(None), d / "fresh.db", d / "fresh.log")
        spent1 = s1["cost_usd"]
        result = {
            "benchmark": "budget_stop_resume", "machine": machine(),
            "command": f".venv/bin/python bench/deliberation/budget.py --rows {args.rows} --cap {args.cap}",
            "rows": args.rows, "price_per_call": PRICE, "cap_usd": args.cap,
            "first_run": {"exit_code": code1, "status": s1["status"], "stop_reason": s1["stop_reason"],
                          "spent_usd": spent1, "calls": s1["calls"]["made"],
                          "rows_finished": s1["rows"]["in"] - s1["rows"]["pending"],
                          "over_cap_usd": round(spent1 - args.cap, 6),
                          "within_one_call": abs(spent1 - args.cap) <= PRICE + 1e-9},
            "resumed_run": {"exit_code": code2, "status": s2["status"], "written": s2["rows"]["written"],
                            "review": s2["rows"]["review"], "quarantined": s2["rows"]["quarantined"],
                            "calls_made": s2["calls"]["made"], "calls_replayed": s2["calls"]["replayed"],
                            "spent_usd_total": s2["cost_usd"]},
            "calls_logged_total": len(hashes), "calls_logged_before_resume": calls_after_stop,
            "request_hashes_called_twice": repeated, "ledger_paid_calls": paid,
            "ledger_hashes_paid_twice": paid_twice,
            "uninterrupted_run": {"exit_code": code3, "status": s3["status"], "calls": s3["calls"]["made"],
                                  "spent_usd": s3["cost_usd"]},
            "same_calls_as_uninterrupted": len(hashes) == s3["calls"]["made"],
        }
    out = HERE / "results" / "budget.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
