"""`corral estimate` against the cost of the run it estimated: single, vote and cascade.

  .venv/bin/python bench/estimate.py [--rows 1000] [--sample 50]

../shared/data/banking77 test.csv (read from there), --rows rows shuffled with a fixed seed (so
the first N rows that --sample runs are a random sample), a 77-label classify step answered by
the fake noisy labeler priced per call (as bench/deliberation/banking77.py: cheap $0.0001 at 70%,
mid $0.0004 at 80%, strong $0.002 at 95%). Per job, in a fresh folder: the static estimate (no
call), `corral estimate --sample N` (N rows run and recorded), then `corral run` (the rest; the
sampled rows are not paid again) and its cost from the summary. Writes bench/results/estimate.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml
from _common import CORRAL, DATA, RESULTS

TEST = DATA / "banking77" / "test.csv"
LABELS = json.loads((DATA / "banking77" / "categories.json").read_text())
MODELS = {
    "cheap": {"accuracy": 0.70, "price_per_call": 0.0001, "seed": 1, "logprobs": True},
    "mid": {"accuracy": 0.80, "price_per_call": 0.0004, "seed": 2},
    "strong": {"accuracy": 0.95, "price_per_call": 0.002, "seed": 3},
}
JOBS: dict[str, tuple[str, Any]] = {
    "single": ("mid", "single"),
    "vote": ("mid", {"name": "vote", "samples": 5, "min_samples": 2}),
    "cascade": ("cheap", {"name": "cascade", "threshold": 0.6, "stages": ["single", {"name": "single", "model": "strong"}]}),
}


def model(name: str) -> dict[str, Any]:
    return {"name": f"fake:{name}", "truth": str(TEST), "truth_text": "text", "truth_label": "category", **MODELS[name]}


def cli(tmp: Path, *args: str) -> tuple[int, dict[str, Any]]:
    p = subprocess.run([CORRAL, *args, "--json"], cwd=tmp, capture_output=True, text=True, timeout=900)
    if p.returncode not in (0, 7):
        raise SystemExit(f"{args}: exit {p.returncode}: {p.stderr[-2000:]}")
    return p.returncode, json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--sample", type=int, default=50)
    a = ap.parse_args()
    rows = list(csv.DictReader(TEST.open(encoding="utf-8")))
    random.Random(11).shuffle(rows)
    rows = rows[: a.rows]
    out = []
    for name, (main_model, strategy) in JOBS.items():
        with tempfile.TemporaryDirectory() as d:
            tmp = Path(d)
            with open(tmp / "in.csv", "w", newline="", encoding="utf-8") as f:
                w = csv.writer(f)
                w.writerow(["id", "text"])
                w.writerows((i, r["text"]) for i, r in enumerate(rows))
            job = {"name": f"est-{name}", "source": "in.csv", "key": "id", "sink": "out/o.csv",
                   "model": model(main_model), "models": {"strong": model("strong")},
                   "steps": [{"name": "category", "task": "classify", "input": "{text}", "labels": LABELS,
                              "strategy": strategy}]}
            (tmp / "job.yaml").write_text(yaml.safe_dump(job, sort_keys=False), encoding="utf-8")
            _, static = cli(tmp, "estimate", "job.yaml")
            _, sampled = cli(tmp, "estimate", "job.yaml", "--sample", str(a.sample))
            _, run = cli(tmp, "run", "job.yaml")
        actual = run["cost_usd"]
        lo, hi = static["total_usd"]["online"]
        s_lo, s_mid, s_hi = sampled["sample"]["total_usd"]["online"]
        out.append({"job": name, "rows": a.rows, "actual_usd": actual, "calls": run["calls"]["made"],
                    "static_low": lo, "static_high": hi, "sample_estimate": s_mid, "sample_low": s_lo,
                    "sample_high": s_hi, "sample_ratio": s_mid / actual, "static_mid_ratio": (lo + hi) / 2 / actual,
                    "actual_in_sample_range": s_lo <= actual <= s_hi, "actual_in_static_range": lo <= actual <= hi})
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "estimate.json").write_text(json.dumps({"sample": a.sample, "jobs": out}, indent=2) + "\n",
                                           encoding="utf-8")
    print(f"{'job':<8} {'actual':>9} {'static range':>21} {'--sample':>9} {'95% range':>21} {'sample/actual':>13}")
    for r in out:
        print(f"{r['job']:<8} ${r['actual_usd']:>8.4f} ${r['static_low']:>8.4f} – ${r['static_high']:>8.4f} "
              f"${r['sample_estimate']:>8.4f} ${r['sample_low']:>8.4f} – ${r['sample_high']:>8.4f} {r['sample_ratio']:>13.3f}")


if __name__ == "__main__":
    main()
