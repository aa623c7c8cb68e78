"""Experts on a mixed job: two labeled data sets in one source, each row to its expert.

  .venv/bin/python bench/routing.py [--rows 300] [--accuracy 0.95]

The source holds --rows SMS messages (../shared/data/sms_spam: spam or ham) and --rows banking
questions (../shared/data/banking77 test.csv: 77 intents), shuffled, with a `dataset` column. One
classify step has two experts, each with its own labels; the LLM is the fake noisy labeler at
--accuracy. Two runs, each in a fresh store:

- rules: the experts' `when:` reads the `dataset` column;
- learned: the experts' `when:` read no column (both false); `route_by:` learns the route from
  the text, from the file `corral eval --best-experts` writes for other labeled rows of the two
  data sets (SMS messages after the first --rows, banking77's train.csv): each row with the expert
  that answered it right with the fewest calls.

For each: rows per route, rows that reached their data set's expert, accuracy against the gold
labels (overall and per route, from `corral routes --labels`), calls. Writes
bench/results/routing.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sqlite3
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from _common import CORRAL, DATA, RESULTS, SMS_TSV, last_json_line, machine

B77 = DATA / "banking77"


def sms(n: int, skip: int = 0) -> list[dict[str, str]]:
    seen: set[str] = set()
    out: list[dict[str, str]] = []
    with open(SMS_TSV, newline="") as f:
        for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            text = (r.get("SMS") or "").strip()
            if text and text not in seen:
                seen.add(text)
                out.append({"text": text, "label": r["Label"].strip()})
    return out[skip: skip + n]


def write(p: Path, rows: list[dict[str, Any]], cols: list[str]) -> None:
    with open(p, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=300, help="rows of each data set")
    ap.add_argument("--accuracy", type=float, default=0.95)
    args = ap.parse_args()
    n = args.rows
    bank = list(csv.DictReader(open(B77 / "test.csv")))
    random.Random(3).shuffle(bank)
    intents = json.loads((B77 / "categories.json").read_text())
    intents = intents if isinstance(intents, list) else list(intents)
    rows = ([{"dataset": "sms", **r} for r in sms(n)]
            + [{"dataset": "banking", "text": r["text"], "label": r["category"]} for r in bank[:n]])
    random.Random(5).shuffle(rows)
    for i, r in enumerate(rows):
        r["id"] = f"r{i}"
    expert_of = {"sms": "sms", "banking": "bank"}
    train_bank = list(csv.DictReader(open(B77 / "train.csv")))
    random.Random(4).shuffle(train_bank)
    # rows for the learned router: other SMS messages and banking77 train questions, labeled;
    # `corral eval --best-experts` finds which expert answers each right
    train_rows = ([{"dataset": "sms", **r} for r in sms(n, skip=n)]
                  + [{"dataset": "banking", "text": r["text"], "label": r["category"]} for r in train_bank[:n]])
    for i, r in enumerate(train_rows):
        r["id"] = f"t{i}"
    results: dict[str, Any] = {"benchmark": "routing", "machine": machine(),
                               "script": f"bench/routing.py --rows {n} --accuracy {args.accuracy}",
                               "rows": len(rows)}
    for mode in ("rules", "learned"):
        work = Path(tempfile.mkdtemp(prefix=f"routing-{mode}-"))
        write(work / "in.csv", rows, ["id", "dataset", "text"])
        write(work / "truth.csv", rows + train_rows, ["text", "label"])
        write(work / "labels.csv", rows, ["id", "label"])
        sms_when = "dataset == 'sms'" if mode == "rules" else "false"
        bank_when = "dataset == 'banking'" if mode == "rules" else "false"
        step: dict[str, Any] = {
            "name": "label", "task": "classify", "input": "{text}", "labels": ["other", "unknown"],
            "experts": [
                {"name": "sms", "when": sms_when, "labels": ["spam", "ham"],
                 "instructions": "Is this text message spam?"},
                {"name": "bank", "when": bank_when, "labels": intents,
                 "instructions": "Which banking intent does the customer's question have?"},
            ],
        }
        model = {"name": "fake", "truth": "truth.csv", "accuracy": args.accuracy, "price_per_call": 0.001}
        if mode == "learned":
            write(work / "train.csv", train_rows, ["id", "text"])
            write(work / "train_labels.csv", train_rows, ["id", "label"])
            (work / "train.yaml").write_text(json.dumps({
                "name": "routing-train", "source": "train.csv", "key": "id", "model": model,
                "steps": [step], "sink": "out/train.csv"}))
            ev = subprocess.run([CORRAL, "eval", "train.yaml", "--labels", "train_labels.csv",
                                 "--best-experts", "routes.csv", "--json"], cwd=work, capture_output=True,
                                text=True, timeout=900)
            if ev.returncode:
                raise SystemExit(f"corral eval --best-experts failed ({ev.returncode}): {ev.stderr[-2000:]}")
            results["best_experts"] = {"command": "corral eval train.yaml --labels train_labels.csv "
                                                  "--best-experts routes.csv --json", **json.loads(ev.stdout)}
            print(f"best experts: {results['best_experts']}", flush=True)
            step["route_by"] = {"labels": "routes.csv", "column": "expert", "target": 0.95}
        job = {"name": f"routing-{mode}", "source": "in.csv", "key": "id", "model": model,
               "steps": [step], "sink": "out/o.csv"}
        (work / "job.yaml").write_text(json.dumps(job))
        p = subprocess.run([CORRAL, "run", "job.yaml", "--json"], cwd=work, capture_output=True, text=True, timeout=900)
        if p.returncode:
            raise SystemExit(f"{mode}: corral run failed ({p.returncode}): {p.stderr[-2000:]}")
        summary = last_json_line(p.stdout)
        db = sqlite3.connect(work / ".corral" / "corral.db")
        route = {k: json.loads(d)["route"] for k, d in
                 db.execute("SELECT key, data FROM attempts WHERE outcome='route'")}
        db.close()
        by_id = {r["id"]: r for r in rows}
        reached = sum(1 for k, rt in route.items() if expert_of[by_id[k]["dataset"]] == rt)
        with open(work / "out" / "o.csv", newline="") as f:
            got = {r["id"]: r["label"] for r in csv.DictReader(f)}
        right = sum(1 for k, v in got.items() if by_id[k]["label"] == v)
        rep = subprocess.run([CORRAL, "routes", summary["run"], "--labels", "labels.csv", "--json"], cwd=work,
                             capture_output=True, text=True, timeout=300)
        shown = subprocess.run([CORRAL, "routes", summary["run"], "--labels", "labels.csv"], cwd=work,
                               capture_output=True, text=True, timeout=300)
        routes_count: dict[str, int] = {}
        for rt in route.values():
            routes_count[rt] = routes_count.get(rt, 0) + 1
        results[mode] = {
            "routes": routes_count, "reached_their_expert": reached, "of": len(rows),
            "accuracy": round(right / len(rows), 4), "calls": summary["calls"]["made"],
            "corral_routes": json.loads(rep.stdout) if rep.returncode == 0 else rep.stderr[-500:],
            "corral_routes_text": shown.stdout,
        }
        print(f"{mode}: routes {routes_count}; {reached} of {len(rows)} reached their data set's expert; "
              f"accuracy {right / len(rows):.4f}; {summary['calls']['made']} calls", flush=True)
        print(shown.stdout, flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "routing.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    print("wrote bench/results/routing.json")


if __name__ == "__main__":
    main()
