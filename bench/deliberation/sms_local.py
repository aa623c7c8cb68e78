"""The bundled model on a 500-row sample of SMS spam: `single`, adaptive `vote` and `refine`.

  .venv/bin/python bench/deliberation/sms_local.py [--rows 500] [--seed 0]

Data: ../shared/data/sms_spam/SMSSpamCollection.tsv (5,574 messages, label TAB text), read in
place; a seeded random sample (without replacement) is written with an `id` column to a
temporary folder. The model is the bundled SmolLM2-135M-Instruct (`local`), a tiny model: these
figures measure what the strategies do with it, not what a real model would reach.

Strategies (each in its own store, so every call is paid and counted):
  single                      one call at temperature 0
  vote                        the defaults: up to 5 samples at 0.7, stop when 2 agree
  refine with a critic        the same model reviews each answer; up to 2 repairs
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "etl"))

from _common import machine  # noqa: E402
from _data import write_source  # noqa: E402
from _etl import DATA, run_corral  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
SMS = DATA / "sms_spam" / "SMSSpamCollection.tsv"
LABELS = {
    "ham": "an ordinary personal or business message",
    "spam": "unsolicited advertising, a prize or lottery claim, a scam, or a premium-rate offer",
}
CRITIC = (
    "You check whether an SMS message was labeled correctly as spam or ham. spam: unsolicited "
    "advertising, prizes, lotteries, scams, premium-rate numbers. ham: ordinary personal or "
    "business messages."
)
STRATEGIES: list[tuple[str, Any]] = [
    ("single", "single"),
    ("vote (adaptive, defaults)", "vote"),
    ("refine (critic: same model, 2 rounds)", {"name": "refine", "critic": CRITIC}),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default="local")
    ap.add_argument("--only", help="run only the strategies whose label starts with this")
    args = ap.parse_args()
    lines = [ln.split("\t", 1) for ln in SMS.read_text(encoding="utf-8").splitlines() if "\t" in ln]
    picked = random.Random(args.seed).sample(range(len(lines)), args.rows)
    truth = {str(i): lines[i][0] for i in picked}
    results = []
    with tempfile.TemporaryDirectory(prefix="corral-sms-") as tmp:
        d = Path(tmp)
        write_source(d / "data.csv", ((i, lines[i][1]) for i in picked))
        for n, (label, strategy) in enumerate(STRATEGIES):
            if args.only and not label.startswith(args.only):
                continue
            job = {
                "name": f"sms-{n}", "source": "data.csv", "key": "id",
                "steps": [{"name": "kind", "task": "classify", "input": "{text}", "labels": LABELS,
                           "strategy": strategy}],
                "sink": f"out-{n}.csv",
            }
            path = d / f"job-{n}.yaml"
            path.write_text(json.dumps(job), encoding="utf-8")
            got = run_corral(path, d / f"store-{n}.db", args.model)
            s = got["summary"]
            out = {r["id"]: r["kind"] for r in csv.DictReader((d / f"out-{n}.csv").open(encoding="utf-8"))}
            review = {r["_key"]: r.get("kind") for r in csv.DictReader((d / f"out-{n}.review.csv").open(encoding="utf-8"))} \
                if (d / f"out-{n}.review.csv").exists() else {}
            correct = sum(1 for k, v in truth.items() if out.get(k) == v)
            correct_incl_review = correct + sum(1 for k, v in review.items() if truth.get(k) == v)
            spam = [k for k, v in truth.items() if v == "spam"]
            tp = sum(1 for k in spam if out.get(k) == "spam")
            fp = sum(1 for k, v in truth.items() if v == "ham" and out.get(k) == "spam")
            rec = {
                "strategy": label, "spec": strategy, "rows": len(truth),
                "written": s["rows"]["written"], "review": s["rows"]["review"],
                "quarantined": s["rows"]["quarantined"],
                "accuracy": round(correct / len(truth), 4),
                "accuracy_counting_review_answers": round(correct_incl_review / len(truth), 4),
                "spam_recall": round(tp / len(spam), 4) if spam else None,
                "spam_precision": round(tp / (tp + fp), 4) if tp + fp else None,
                "calls": s["calls"]["made"], "calls_per_row": round(s["calls"]["made"] / len(truth), 3),
                "input_tokens": s["tokens"]["input"], "output_tokens": s["tokens"]["output"],
                "tokens_per_row": round((s["tokens"]["input"] + s["tokens"]["output"]) / len(truth), 1),
                "wall_s": got["wall_s"], "command": got["command"],
            }
            results.append(rec)
            print(json.dumps(rec), flush=True)
    majority = max(("ham", "spam"), key=lambda lab: sum(1 for v in truth.values() if v == lab))
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "sms_local" if not args.only else f"sms_local_{args.only.split()[0]}"
    out_path = RESULTS / f"{name}.json"
    out_path.write_text(json.dumps({
        "benchmark": "sms_local_deliberation", "machine": machine(),
        "command": " ".join([".venv/bin/python bench/deliberation/sms_local.py", f"--rows {args.rows}",
                             f"--seed {args.seed}", f"--model '{args.model}'"]
                            + ([f"--only '{args.only}'"] if args.only else [])),
        "spam_share": round(sum(1 for v in truth.values() if v == "spam") / len(truth), 4),
        "majority_baseline_accuracy": round(sum(1 for v in truth.values() if v == majority) / len(truth), 4),
        "results": results,
    }, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
