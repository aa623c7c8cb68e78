"""Likelihood scoring vs generated JSON on banking77 with the bundled model.

  .venv/bin/python bench/eval/banking77_scoring.py [--rows 300] [--seed 0] [--only NAME]

Data: ../shared/data/banking77/test.csv (3,080 rows, 77 intents), read in place; a seeded random
sample (without replacement) is written with an `id` column to a temporary folder. The model is
the bundled SmolLM2-135M-Instruct (`local`, one thread so the figures do not depend on what else
runs). Each configuration runs in its own store, so every call is made and timed:

  generate                     the label as generated JSON (the schema's enum in the grammar)
  likelihood                   each label's log-probability after the prompt, no calibration
  likelihood + contextual      the same, corrected by a content-free input's scores

Measured against the gold labels: accuracy; rows per second (the run's own elapsed time);
expected calibration error (10 equal-width bins) of the confidence recorded with each accepted
answer; accuracy of the most confident half of the rows. Writes
bench/eval/results/banking77_scoring.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sqlite3
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "etl"))

from _common import DATA, machine  # noqa: E402
from _etl import run_corral  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
B77 = DATA / "banking77"
CONFIGS: list[tuple[str, dict[str, Any]]] = [
    ("generate", {"scoring": "generate"}),
    ("likelihood", {"scoring": "likelihood", "calibrate": "none"}),
    ("likelihood + contextual", {"scoring": "likelihood", "calibrate": "contextual"}),
]


def confidences(store: Path, run_id: str) -> dict[str, float]:
    """The confidence recorded with each record's accepted answer."""
    out: dict[str, float] = {}
    db = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    try:
        # a strategy's acceptance is its own `accepted` event; a single call's is marked on the
        # call's row (`"accepted": true` in its data)
        for key, outcome, data in db.execute(
            "SELECT key, outcome, data FROM attempts WHERE run_id=?", (run_id,)
        ):
            d = json.loads(data) if data else {}
            if (outcome == "accepted" or d.get("accepted")) and d.get("confidence") is not None:
                out[key] = float(d["confidence"])
    finally:
        db.close()
    return out


def ece(pairs: list[tuple[float, bool]], bins: int = 10) -> tuple[float | None, list[dict[str, Any]]]:
    """Expected calibration error over equal-width confidence bins, and the reliability table."""
    if not pairs:
        return None, []
    table = []
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        inside = [(c, ok) for c, ok in pairs if (lo <= c < hi) or (b == bins - 1 and c == 1.0)]
        if not inside:
            continue
        conf = sum(c for c, _ in inside) / len(inside)
        acc = sum(ok for _, ok in inside) / len(inside)
        total += len(inside) / len(pairs) * abs(conf - acc)
        table.append({"bin": f"{lo:.1f}-{hi:.1f}", "n": len(inside), "confidence": round(conf, 4),
                      "accuracy": round(acc, 4)})
    return round(total, 4), table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default="{name: local, n_threads: 1}")
    ap.add_argument("--only", help="run only the configurations whose name starts with this")
    args = ap.parse_args()
    rows = list(csv.DictReader((B77 / "test.csv").open(encoding="utf-8")))
    labels = json.loads((B77 / "categories.json").read_text(encoding="utf-8"))
    picked = random.Random(args.seed).sample(range(len(rows)), args.rows)
    truth = {str(i): rows[i]["category"] for i in picked}
    results = []
    with tempfile.TemporaryDirectory(prefix="corral-b77s-") as tmp:
        d = Path(tmp)
        with (d / "data.csv").open("w", encoding="utf-8", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", "text"])
            w.writerows((i, rows[i]["text"]) for i in picked)
        for n, (name, opts) in enumerate(CONFIGS):
            if args.only and not name.startswith(args.only):
                continue
            job = {
                "name": f"b77-{n}", "source": "data.csv", "key": "id",
                "steps": [{"name": "intent", "task": "classify", "input": "{text}", "labels": labels,
                           **opts}],
                "sink": f"out-{n}.csv",
            }
            path = d / f"job-{n}.yaml"
            path.write_text(json.dumps(job), encoding="utf-8")
            store = d / f"store-{n}.db"
            got = run_corral(path, store, args.model)
            s = got["summary"]
            out = {r["id"]: r["intent"] for r in csv.DictReader((d / f"out-{n}.csv").open(encoding="utf-8"))}
            correct = {k: out.get(k) == v for k, v in truth.items()}
            conf = confidences(store, s["run"])
            pairs = [(conf[k], correct[k]) for k in truth if k in conf]
            err, table = ece(pairs)
            top = sorted(pairs, key=lambda p: -p[0])[: len(pairs) // 2]
            results.append({
                "config": name, "options": opts, "command": got["command"],
                "rows": len(truth), "written": s["rows"]["written"],
                "accuracy": round(sum(correct.values()) / len(truth), 4),
                "elapsed_s": s["elapsed_s"], "rows_per_s": round(len(truth) / s["elapsed_s"], 3),
                "calls": s["calls"]["made"], "tokens": s["tokens"],
                "with_confidence": len(pairs), "ece": err, "reliability": table,
                "accuracy_most_confident_half": round(sum(ok for _, ok in top) / len(top), 4) if top else None,
            })
            print(json.dumps({k: v for k, v in results[-1].items() if k != "reliability"}), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out_path = RESULTS / "banking77_scoring.json"
    out_path.write_text(json.dumps({
        "benchmark": "banking77_scoring", "machine": machine(),
        "command": f".venv/bin/python bench/eval/banking77_scoring.py --rows {args.rows} --seed {args.seed}",
        "majority_class_accuracy": round(max(list(truth.values()).count(c) for c in set(truth.values())) / len(truth), 4),
        "results": results,
    }, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
