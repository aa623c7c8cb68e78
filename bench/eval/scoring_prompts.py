"""What the local model's label scoring is made of, measured on the tickets example: the answer's
first word, scoring the end of the turn or not, and which content-free inputs calibrate.

  .venv/bin/python bench/eval/scoring_prompts.py [--threads 2]

Every labeled ticket of examples/data/tickets.csv (243 rows, five categories) is scored with the
bundled model through Corral's own pieces: the classify step's scoring request
(`ClassifyStep.score_requests`), the local model's prompt (`LocalModel._prompt_tokens`) and its
choice scorer in exhaustive mode (`ChoiceScorer.score`), so every label's tokens are evaluated.
Variants:

  answer prefix    `Label:` (the default) or the step's name, `Category:`
  end of turn      each label's tokens alone, or followed by the end-of-turn token
  calibration      none; `N/A`; the mean over `N/A`, nothing and `[MASK]`

Accuracy is reported on tickets 41-243 (where choices were made) and on tickets 1-40 (the demo's
rows, reported, not chosen on). Writes bench/eval/results/scoring_prompts.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import ROOT, machine  # noqa: E402

from corral import Job  # noqa: E402
from corral.models._choice_search import ChoiceScorer  # noqa: E402
from corral.models.local import LocalModel  # noqa: E402
from corral.tasks.base import CONTENT_FREE  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
EXAMPLES = ROOT / "examples"


def normalised(scores: dict[str, float]) -> dict[str, float]:
    top = max(scores.values())
    total = top + math.log(sum(math.exp(v - top) for v in scores.values()))
    return {k: v - total for k, v in scores.items()}


def thresholds(per_row: dict[str, Any], end: str, off: dict[str, float], gold: dict[str, str],
               demo: set[str]) -> dict[str, Any]:
    """For each min_confidence, the rows at or above it and their accuracy, on each slice."""
    out: dict[str, Any] = {}
    for part in ("41-243", "1-40"):
        sure = []
        for key, sc in per_row.items():
            if (key in demo) != (part == "1-40"):
                continue
            probs = normalised({c: v - off[c] for c, v in sc[end].items()})
            best = max(probs, key=probs.get)
            sure.append((math.exp(probs[best]), best == gold[key]))
        out[part] = {}
        for t in (0.5, 0.6, 0.7, 0.8, 0.9):
            kept = [ok for p, ok in sure if p >= t]
            out[part][str(t)] = {"rows": len(kept), "of": len(sure),
                                 "accuracy": round(sum(kept) / len(kept), 4) if kept else None}
            print(f"  min_confidence {t}: {part} {len(kept)}/{len(sure)} rows, "
                  f"{out[part][str(t)]['accuracy']}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    job = Job.load(EXAMPLES / "tickets.yaml")
    step = next(s for s in job.steps if s.name == "category")
    gold = {r["ticket_id"]: r["category"] for r in csv.DictReader((EXAMPLES / "data" / "tickets_labels.csv").open())}
    rows = [r for r in csv.DictReader((EXAMPLES / "data" / "tickets.csv").open()) if r["ticket_id"] in gold]
    demo = {r["ticket_id"] for r in rows[:40]}
    model = LocalModel(n_threads=args.threads)
    llama = model._load()
    scorer = ChoiceScorer(llama)
    eos = [llama.token_eos()]
    labels = list(step.labels)
    t0 = time.perf_counter()

    def scores(context: dict[str, Any], prefix: str) -> dict[str, dict[str, float]]:
        [request] = step.score_requests(context)
        request = replace(request, answer_prefix=prefix)
        prompt = model._prompt_tokens(llama, request)
        out = {}
        for end, extra in (("no end", []), ("end of turn", eos)):
            tails = {c: llama.tokenize((" " + c).encode(), add_bos=False, special=False) + extra for c in labels}
            out[end] = scorer.score(prompt, tails, exhaustive=True).scores
        return out

    got: dict[str, Any] = {}
    coverage: dict[str, Any] = {}
    for prefix in ("Label:", "Category:"):
        per_row = {r["ticket_id"]: scores(r, prefix) for r in rows}
        free = {f: scores(step.content_free(rows[0], f), prefix) for f in CONTENT_FREE}
        for end in ("no end", "end of turn"):
            offsets = {
                "none": dict.fromkeys(labels, 0.0),
                "N/A": normalised(free["N/A"][end]),
                "N/A, nothing, [MASK]": {
                    c: sum(normalised(free[f][end])[c] for f in CONTENT_FREE) / len(CONTENT_FREE) for c in labels},
            }
            for cal, off in offsets.items():
                right = {"41-243": [0, 0], "1-40": [0, 0]}
                for key, sc in per_row.items():
                    best = max(labels, key=lambda c: sc[end][c] - off[c])
                    part = "1-40" if key in demo else "41-243"
                    right[part][0] += best == gold[key]
                    right[part][1] += 1
                got[f"{prefix} | {end} | {cal}"] = {p: round(a / n, 4) for p, (a, n) in right.items()}
                if (prefix, end, cal) == ("Category:", "no end", "N/A, nothing, [MASK]"):  # the default
                    coverage = thresholds(per_row, end, off, gold, demo)
                print(f"{prefix:10s} {end:12s} {cal:22s} 41-243 {got[f'{prefix} | {end} | {cal}']['41-243']:.3f}"
                      f"  1-40 {got[f'{prefix} | {end} | {cal}']['1-40']:.3f}", flush=True)
    scorer.close()
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {"benchmark": "scoring_prompts", "command": " ".join([".venv/bin/python", *sys.argv]),
           "rows": len(rows), "elapsed_s": round(time.perf_counter() - t0, 1), "machine": machine(),
           "accuracy": got, "default_by_confidence": coverage}
    (RESULTS / "scoring_prompts.json").write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
