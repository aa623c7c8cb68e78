"""Does putting row text in tags hurt the bundled tiny model? `corral eval` on SMS spam, one code tree.

  .venv/bin/python bench/delimit_local.py --code src --name after [--rows 200] [--seed 0]
  .venv/bin/python bench/delimit_local.py --code /path/to/a/checkout/without/tags/src --name before

Data: a seeded random sample of ../shared/data/sms_spam (read in place), written with an `id`
column, and its labels file, to a temporary folder. Job: one classify step, `input: '{text}'`,
labels spam and ham, the bundled SmolLM2-135M-Instruct (`{name: local, n_threads: 1}`: the default
scoring, likelihood with contextual calibration). `corral eval job.yaml --labels labels.csv --json`
runs in a fresh store with PYTHONPATH set to `--code`, so the same script measures the code
before and after a change. Each run's accuracy, macro-F1 and time are added to
bench/results/delimit_local.json under `--name`.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import CORRAL, DATA, RESULTS, machine


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--code", required=True, help="the src folder of the Corral to measure")
    ap.add_argument("--name", required=True, help="the name the figures are kept under (before, after)")
    ap.add_argument("--rows", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    code = Path(args.code).resolve()
    with open(DATA / "sms_spam" / "SMSSpamCollection.tsv", newline="", encoding="utf-8") as f:
        msgs = [(r["SMS"], r["Label"]) for r in csv.DictReader(f, delimiter="\t")]
    picked = random.Random(args.seed).sample(msgs, args.rows)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for name, cols in (("in.csv", ("id", "text")), ("labels.csv", ("id", "label"))):
            with open(tmp / name, "w", newline="", encoding="utf-8") as f:
                w = csv.writer(f)
                w.writerow(cols)
                w.writerows((f"m{i}", t if cols[1] == "text" else lab) for i, (t, lab) in enumerate(picked))
        (tmp / "job.yaml").write_text(
            "name: sms-delimit\nsource: in.csv\nkey: id\nsink: out/o.csv\n"
            "model: {name: local, n_threads: 1}\n"
            "steps:\n  - name: label\n    task: classify\n    input: '{text}'\n    labels: [spam, ham]\n",
            encoding="utf-8")
        cmd = [CORRAL, "eval", "job.yaml", "--labels", "labels.csv", "--json", "--store", str(tmp / "corral.db")]
        env = {**os.environ, "PYTHONPATH": str(code)}
        t0 = time.monotonic()
        p = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=1200, env=env)
        wall = time.monotonic() - t0
        assert p.returncode == 0, p.stderr
        ev = json.loads(p.stdout)
        prompt = None
        probe = subprocess.run(  # what the model is sent for the first row, by this code
            [sys.executable, "-c",
             "import sys, json; from corral import Job; j = Job.load('job.yaml'); s = j.steps[0];"
             "r = s.score_requests({'text': sys.argv[1]})[0]; print(json.dumps([m.content for m in r.messages]))",
             picked[0][0]], cwd=tmp, capture_output=True, text=True, env=env, timeout=120)
        if probe.returncode == 0:
            prompt = json.loads(probe.stdout)
    run = ev["runs"][0]
    step = run["steps"][0]
    lab = step["labels"]
    spam = sum(1 for _, label in picked if label == "spam")
    out = {
        "command": f"bench/delimit_local.py --code {args.code} --name {args.name} --rows {args.rows} --seed {args.seed}"
                   " -> corral eval job.yaml --labels labels.csv --json",
        "machine": machine(), "rows": args.rows, "seed": args.seed, "spam_share": round(spam / args.rows, 4),
        "majority_baseline": round(max(spam, args.rows - spam) / args.rows, 4),
        "answered": lab["answered"], "correct": lab["correct"], "accuracy": lab["accuracy"],
        "macro_f1": lab["macro_f1"], "calls": run["calls"], "wall_s": round(wall, 1),
        "first_row_prompt": prompt,
    }
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "delimit_local.json"
    results = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    results[args.name] = out
    path.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"{args.name}: accuracy {out['accuracy']} ({out['correct']}/{out['answered']}), macro-F1 {out['macro_f1']}, "
          f"{out['calls']} calls, {out['wall_s']} s; majority baseline {out['majority_baseline']}")


if __name__ == "__main__":
    main()
