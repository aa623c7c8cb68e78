"""`corral calibrate` on banking77 with the fake noisy labelers of bench/deliberation/banking77.py.

  .venv/bin/python bench/deliberation/calibrate_b77.py [--sample 1000] [--target 0.93]

The job's step is a cascade cheap -> strong; calibrate measures its default grid (single, vote,
and the cascade at thresholds 0.5 to 1.0) on a seeded sample of labeled rows and names the cheapest
setting that reaches the target. Then the chosen setting is run on all 3,080 rows, in a fresh
store, to see whether the accuracy measured on the sample holds on the whole set.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "etl"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine  # noqa: E402
from _data import write_source  # noqa: E402
from _etl import CORRAL, ROOT  # noqa: E402
from banking77 import LABELS, TEST, model  # noqa: E402

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sample", type=int, default=1000)
    ap.add_argument("--target", type=float, default=0.93)
    args = ap.parse_args()
    rows = list(csv.DictReader(TEST.open(encoding="utf-8")))
    with tempfile.TemporaryDirectory(prefix="corral-cal-") as tmp:
        d = Path(tmp)
        write_source(d / "data.csv", ((i, r["text"]) for i, r in enumerate(rows)))
        write_source(d / "labels.csv", ((i, r["category"]) for i, r in enumerate(rows)), ("id", "intent"))
        job = {
            "name": "b77cal", "source": "data.csv", "key": "id",
            "model": model("cheap", logprobs=True),
            "models": {"cheap": model("cheap", logprobs=True), "strong": model("strong")},
            "steps": [{"name": "intent", "task": "classify", "input": "{text}", "labels": LABELS,
                       "strategy": {"name": "cascade", "threshold": 0.8,
                                    "stages": [{"name": "single", "model": "cheap"},
                                               {"name": "single", "model": "strong"}]}}],
            "sink": "out.csv",
        }
        (d / "job.yaml").write_text(json.dumps(job), encoding="utf-8")
        argv = [CORRAL, "calibrate", str(d / "job.yaml"), "--labels", str(d / "labels.csv"),
                "--sample", str(args.sample), "--target", str(args.target), "--json",
                "--store", str(d / "s.db")]
        p = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False)
        if p.returncode not in (0, 1):
            raise SystemExit(p.stdout + p.stderr)
        report = json.loads(p.stdout)
        chosen = report.get("chosen")
        full = None
        if chosen:
            job["steps"][0]["strategy"] = chosen["spec"]
            job["sink"] = "full.csv"
            (d / "full.yaml").write_text(json.dumps(job), encoding="utf-8")
            q = subprocess.run([CORRAL, "run", str(d / "full.yaml"), "--json", "--store", str(d / "full.db")],
                               cwd=ROOT, capture_output=True, text=True, check=False)
            if q.returncode != 0:
                raise SystemExit(f"{json.dumps(chosen)}\n{q.stdout}{q.stderr}")
            s = json.loads(q.stdout)
            out = {r["id"]: r["intent"] for r in csv.DictReader((d / "full.csv").open(encoding="utf-8"))}
            correct = sum(1 for i, r in enumerate(rows) if out.get(str(i)) == r["category"])
            full = {"rows": len(rows), "accuracy": round(correct / len(rows), 4), "calls": s["calls"]["made"],
                    "cost_usd": s["cost_usd"], "cost_per_1k_rows": round(1000 * s["cost_usd"] / len(rows), 4)}
    result = {
        "benchmark": "calibrate_b77", "machine": machine(),
        "command": f".venv/bin/python bench/deliberation/calibrate_b77.py --sample {args.sample} --target {args.target}",
        "calibrate_exit_code": p.returncode, "report": report, "chosen_on_all_rows": full,
        "chosen_yaml": yaml.safe_dump(chosen["spec"], sort_keys=False) if chosen else None,
    }
    out_path = HERE / "results" / "calibrate_b77.json"
    out_path.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    print(json.dumps({"chosen": chosen, "on_all_rows": full}, indent=2, default=str))


if __name__ == "__main__":
    main()
