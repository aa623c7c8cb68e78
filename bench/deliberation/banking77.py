"""Self-consistency and cascades on banking77 with the fake model as a noisy labeler.

  .venv/bin/python bench/deliberation/banking77.py

Data: ../shared/data/banking77/test.csv (3,080 rows, 77 intents), read in place as the fake
model's truth file; the job's source is a copy with an `id` column in a temporary folder.

The simulated labeler (src/corral/models/fake.py, "noisy labeler"): each row has a difficulty d
in [0, 1) from a hash of its text (shared by every model); a model of accuracy a answers the true
label with probability 1 - d**(a/(1-a)), else one of 2 row-specific confusers (weights 2/3, 1/3);
samples at temperature > 0 are independent draws, temperature 0 is one fixed draw per model and
row; with `logprobs: true` it reports the probability of the label it answered.

Prices per call: cheap (a = 0.70) $0.0001, mid (a = 0.80) $0.0004, strong (a = 0.95) $0.002
(a 20x spread, as between gpt-4.1-nano and gpt-4.1 list prices); the cascades are also run with
the strong model at $0.006 (60x, as between Claude 3 Haiku and Claude 3 Opus list prices): the
same simulated answers, another price.

Each configuration runs in its own store, so every call it needs is paid and counted.
"""

from __future__ import annotations

import argparse
import csv
import json
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
TEST = DATA / "banking77" / "test.csv"
LABELS = json.loads((DATA / "banking77" / "categories.json").read_text())

MODELS = {
    "cheap": {"accuracy": 0.70, "price_per_call": 0.0001, "seed": 1},
    "mid": {"accuracy": 0.80, "price_per_call": 0.0004, "seed": 2},
    "strong": {"accuracy": 0.95, "price_per_call": 0.002, "seed": 3},
}


def model(name: str, logprobs: bool = False, price: float | None = None) -> dict[str, Any]:
    m = {"name": f"fake:{name}", "truth": str(TEST), "truth_text": "text", "truth_label": "category",
         **MODELS[name]}
    if price is not None:  # the same simulated model (same answers) at another price
        m["price_per_call"] = price
    if logprobs:
        m["logprobs"] = True
    return m


def configs() -> list[tuple[str, str, dict[str, Any], Any, dict[str, Any]]]:
    """(group, label, main model, strategy, the `strong` model)"""
    out: list[tuple[str, str, dict[str, Any], Any, dict[str, Any]]] = []
    strong60 = model("strong", price=0.006)
    out.append(("single60", "single @strong priced 60x", strong60, "single", strong60))
    for t in (0.5, 0.55, 0.6, 0.7):
        out.append(("cascade60", f"cascade single@cheap (logprobs) -> single@strong priced 60x, threshold {t}",
                    model("cheap", logprobs=True),
                    {"name": "cascade", "threshold": t, "stages": ["single", {"name": "single", "model": "strong"}]},
                    strong60))
    for m in ("cheap", "mid", "strong"):
        out.append(("single", f"single @{m}", model(m), "single", model("strong")))
    for m in ("cheap", "mid", "strong"):
        out.append(("vote", f"vote fixed k=5 @{m}", model(m), {"name": "vote", "samples": 5, "adaptive": False},
                    model("strong")))
        out.append(("vote", f"vote adaptive (defaults: samples 5, min 2, agreement 1.0) @{m}", model(m), "vote",
                    model("strong")))
        out.append(("vote", f"vote adaptive agreement 0.6 @{m}", model(m),
                    {"name": "vote", "samples": 5, "agreement": 0.6}, model("strong")))
    for t in (0.4, 0.5, 0.55, 0.6, 0.7):
        out.append(("cascade", f"cascade single@cheap (logprobs) -> single@strong, threshold {t}",
                    model("cheap", logprobs=True),
                    {"name": "cascade", "threshold": t, "stages": ["single", {"name": "single", "model": "strong"}]},
                    model("strong")))
    for t in (0.6, 1.0):
        out.append(("cascade", f"cascade vote(3)@cheap -> single@strong, threshold {t}", model("cheap"),
                    {"name": "cascade", "threshold": t,
                     "stages": [{"name": "vote", "samples": 3}, {"name": "single", "model": "strong"}]},
                    model("strong")))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=0, help="first N rows only (0 = all 3,080)")
    args = ap.parse_args()
    rows = list(csv.DictReader(TEST.open(encoding="utf-8")))
    if args.rows:
        rows = rows[: args.rows]
    truth = {str(i): r["category"] for i, r in enumerate(rows)}
    results = []
    with tempfile.TemporaryDirectory(prefix="corral-b77-") as tmp:
        d = Path(tmp)
        write_source(d / "data.csv", ((i, r["text"]) for i, r in enumerate(rows)))
        for n, (group, label, main_model, strategy, strong) in enumerate(configs()):
            job = {
                "name": f"b77-{n}",
                "source": "data.csv",
                "key": "id",
                "model": main_model,
                "models": {"strong": strong},
                "steps": [{
                    "name": "intent", "task": "classify", "input": "{text}", "labels": LABELS,
                    "strategy": strategy,
                }],
                "sink": f"out-{n}.csv",
            }
            path = d / f"job-{n}.yaml"
            path.write_text(json.dumps(job), encoding="utf-8")
            got = run_corral(path, d / f"store-{n}.db", json.dumps(main_model))
            s = got["summary"]
            out = {r["id"]: r["intent"] for r in csv.DictReader((d / f"out-{n}.csv").open(encoding="utf-8"))}
            correct = sum(1 for k, v in truth.items() if out.get(k) == v)
            rec = {
                "group": group, "config": label, "strategy": strategy, "rows": len(truth),
                "written": s["rows"]["written"], "review": s["rows"]["review"],
                "quarantined": s["rows"]["quarantined"],
                "accuracy": round(correct / len(truth), 4), "calls": s["calls"]["made"],
                "calls_per_row": round(s["calls"]["made"] / len(truth), 3),
                "cost_usd": s["cost_usd"], "command": got["command"],
            }
            results.append(rec)
            print(f"{label:<75} acc {rec['accuracy']:.4f}  calls/row {rec['calls_per_row']:.3f}  cost ${rec['cost_usd']}",
                  flush=True)
    by = {r["config"]: r for r in results}
    summary: dict[str, Any] = {}
    for m in ("cheap", "mid", "strong"):
        fixed = by[f"vote fixed k=5 @{m}"]
        for name in (f"vote adaptive (defaults: samples 5, min 2, agreement 1.0) @{m}", f"vote adaptive agreement 0.6 @{m}"):
            a = by[name]
            summary[name] = {
                "accuracy": a["accuracy"], "fixed_k5_accuracy": fixed["accuracy"],
                "accuracy_delta": round(a["accuracy"] - fixed["accuracy"], 4),
                "call_ratio_vs_fixed_k5": round(a["calls"] / fixed["calls"], 4),
            }
    for r in results:
        if r["group"] in ("cascade", "cascade60"):
            strong = by["single @strong" if r["group"] == "cascade" else "single @strong priced 60x"]
            summary[r["config"]] = {
                "accuracy": r["accuracy"], "strong_accuracy": strong["accuracy"],
                "accuracy_ratio_vs_strong": round(r["accuracy"] / strong["accuracy"], 4),
                "cost_ratio_vs_strong": round(float(r["cost_usd"]) / float(strong["cost_usd"]), 4),
            }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out_path = RESULTS / "banking77.json"
    out_path.write_text(json.dumps({
        "benchmark": "banking77_deliberation", "machine": machine(),
        "command": ".venv/bin/python bench/deliberation/banking77.py" + (f" --rows {args.rows}" if args.rows else ""),
        "models": MODELS, "results": results, "summary": summary,
    }, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(summary, indent=2))
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
