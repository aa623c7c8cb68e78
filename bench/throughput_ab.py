"""Side-by-side throughput of this checkout and an earlier commit, interleaved in one run.

  .venv/bin/python bench/throughput_ab.py --base 34dc8d4 [--pairs 9]

The base commit is checked out into a temporary git worktree and run with the same interpreter and
installed dependencies (its `src/` first on PYTHONPATH). Each pair runs the base, then this
checkout, on all 5,574 SMS rows (`corral run sms-triage.yaml --model fake --json`, a fresh store
each time). Ratios of medians measured side by side cancel most of the machine's drift.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import PY, ROOT, SMS_ROWS, machine  # noqa: E402


def one(src: Path) -> tuple[float, float]:
    with tempfile.TemporaryDirectory(prefix="corral-ab-") as d:
        env = {**os.environ, "CORRAL_STORE": f"{d}/c.db", "PYTHONPATH": str(src)}
        argv = [PY, "-c", "from corral.cli import main; main()", "run", "sms-triage.yaml",
                "--model", "fake", "--json"]
        t0 = time.perf_counter()
        p = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - t0
        s = json.loads(p.stdout.strip().splitlines()[-1])
        if s["rows"]["written"] != SMS_ROWS:
            raise SystemExit(f"{src}: {s['rows']}\n{p.stderr[-2000:]}")
        return wall, s["elapsed_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="the earlier commit")
    ap.add_argument("--pairs", type=int, default=9)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="corral-base-") as tmp:
        wt = Path(tmp) / "base"
        subprocess.run(["git", "worktree", "add", "--detach", str(wt), args.base], cwd=ROOT,
                       check=True, capture_output=True)
        try:
            runs: dict[str, list[tuple[float, float]]] = {"base": [], "head": []}
            for i in range(args.pairs):
                for name, src in (("base", wt / "src"), ("head", ROOT / "src")):
                    runs[name].append(one(src))
                b, h = runs["base"][-1], runs["head"][-1]
                print(f"pair {i + 1}: base {SMS_ROWS / b[0]:,.0f} rows/s, head {SMS_ROWS / h[0]:,.0f} rows/s", flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(wt)], cwd=ROOT, check=False,
                           capture_output=True)
    med = {k: (statistics.median(w for w, _ in v), statistics.median(e for _, e in v)) for k, v in runs.items()}
    result = {
        "benchmark": "throughput_ab", "machine": machine(),
        "command": f".venv/bin/python bench/throughput_ab.py --base {args.base} --pairs {args.pairs}",
        "base": args.base, "rows": SMS_ROWS,
        "median_rows_per_s": {k: round(SMS_ROWS / w, 1) for k, (w, _) in med.items()},
        "median_engine_rows_per_s": {k: round(SMS_ROWS / e, 1) for k, (_, e) in med.items()},
        "ratio_head_over_base_wall": round(med["base"][0] / med["head"][0], 4),
        "ratio_head_over_base_engine": round(med["base"][1] / med["head"][1], 4),
        "runs": {k: [{"wall_s": round(w, 3), "elapsed_s": e} for w, e in v] for k, v in runs.items()},
    }
    out = ROOT / "bench" / "results" / "throughput_ab.json"
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({k: result[k] for k in ("median_rows_per_s", "ratio_head_over_base_wall",
                                              "ratio_head_over_base_engine")}, indent=2))


if __name__ == "__main__":
    main()
