"""System 1 against an LLM-only run, on labeled data: rows it takes, accuracy against the gold
labels, calls and cost.

  .venv/bin/python bench/system1.py [--scenarios labels,distil,crossdomain,sms_local] [--accuracy 0.95]

- labels: ../shared/data/banking77, train.csv as System 1's labels, test.csv (3,080 rows,
  shuffled with a fixed seed) as the input; the fake noisy labeler at --accuracy as the LLM,
  priced at $0.001 a call.
- distil: the same input with no labels: System 1 learns only from the LLM's answers.
- sms_local: a real model, the bundled SmolLM2-135M (`local`), on 400 shuffled SMS messages
  (../shared/data/sms_spam), System 1 trained on 2,000 other labeled messages.
- crossdomain: ../shared/data/natcs_dstc11_intents, System 1 trained on the banking domain's
  labeled utterances, run on the finance domain (the step's labels: both domains' intents).

Each scenario runs once with `system1:` and once without (LLM only), each in a fresh store.
Writes bench/results/system1.json and prints a table.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import CORRAL, DATA, RESULTS, last_json_line, machine

B77 = DATA / "banking77"
NATCS = DATA / "natcs_dstc11_intents"
PRICE = 0.001
#: SMS rows the bundled model classifies in the sms_local scenario (the next 2,000 are the labels)
SMS_INPUT = 400


def _read_jsonl(p: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def _write_csv(p: Path, rows: list[dict[str, Any]], cols: list[str]) -> None:
    with open(p, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def scenario(name: str, work: Path, accuracy: float) -> tuple[dict[str, Any], dict[str, str], dict[str, Any] | None]:
    """(job spec without system1, gold label by key, the system1 key or None for this scenario)."""
    if name in ("labels", "distil"):
        rows = list(csv.DictReader(open(B77 / "test.csv")))
        random.Random(7).shuffle(rows)
        labels = json.loads((B77 / "categories.json").read_text())
        labels = labels if isinstance(labels, list) else list(labels)
        keyed = [{"id": f"t{i}", "text": r["text"], "category": r["category"]} for i, r in enumerate(rows)]
        truth, text_col, label_col = B77 / "test.csv", "text", "category"
        s1: dict[str, Any] = ({"labels": str(B77 / "train.csv"), "label_column": "category"}
                              if name == "labels" else {"min_rows": 300})
    elif name == "sms_local":  # a real model: the bundled SmolLM2-135M on real SMS rows
        seen: set[str] = set()
        msgs: list[tuple[str, str]] = []
        for line in (DATA / "sms_spam" / "SMSSpamCollection.tsv").read_text().splitlines()[1:]:
            lab, _, text = line.partition("\t")
            if text.strip() and text.strip() not in seen:
                seen.add(text.strip())
                msgs.append((text.strip(), lab.strip()))
        random.Random(7).shuffle(msgs)
        keyed = [{"id": f"m{i}", "text": t, "category": lab} for i, (t, lab) in enumerate(msgs[:SMS_INPUT])]
        _write_csv(work / "sms_labels.csv", [{"text": t, "label": lab} for t, lab in msgs[SMS_INPUT:SMS_INPUT + 2000]],
                   ["text", "label"])
        _write_csv(work / "in.csv", keyed, ["id", "text"])
        job = {"name": "s1-sms-local", "source": "in.csv", "key": "id", "model": "local",
               "steps": [{"name": "intent", "task": "classify", "input": "{text}", "labels": ["spam", "ham"]}],
               "sink": "out/o.csv"}
        return job, {r["id"]: r["category"] for r in keyed}, {"labels": str(work / "sms_labels.csv")}
    else:
        bank = _read_jsonl(NATCS / "test-banking_utterances.jsonl")
        fin = _read_jsonl(NATCS / "test-finance_utterances.jsonl")
        labels = sorted({r["intent"] for r in bank} | {r["intent"] for r in fin})
        _write_csv(work / "bank_labels.csv", [{"text": r["utterance"], "intent": r["intent"]} for r in bank],
                   ["text", "intent"])
        keyed = [{"id": r["utterance_id"], "text": r["utterance"], "category": r["intent"]} for r in fin]
        truth, text_col, label_col = NATCS / "test-finance_utterances.jsonl", "utterance", "intent"
        s1 = {"labels": str(work / "bank_labels.csv"), "label_column": "intent", "min_rows": 200}
    _write_csv(work / "in.csv", keyed, ["id", "text"])
    job = {
        "name": f"s1-{name}", "source": "in.csv", "key": "id",
        "model": {"name": "fake", "truth": str(truth), "truth_text": text_col, "truth_label": label_col,
                  "accuracy": accuracy, "price_per_call": PRICE},
        "steps": [{"name": "intent", "task": "classify", "input": "{text}", "labels": labels}],
        "sink": "out/o.csv",
    }
    return job, {r["id"]: r["category"] for r in keyed}, s1


def run_job(work: Path, job: dict[str, Any], gold: dict[str, str]) -> dict[str, Any]:
    for old in (work / ".corral", work / "out"):
        subprocess.run(["rm", "-rf", str(old)], check=True)
    (work / "job.yaml").write_text(json.dumps(job))
    t0 = time.monotonic()
    p = subprocess.run([CORRAL, "run", "job.yaml", "--json"], cwd=work, capture_output=True, text=True, timeout=900)
    wall = time.monotonic() - t0
    if p.returncode:
        raise SystemExit(f"corral run failed ({p.returncode}): {p.stderr[-2000:]}")
    summary = last_json_line(p.stdout)
    with open(work / "out" / "o.csv", newline="") as f:
        got = {r["id"]: r["intent"] for r in csv.DictReader(f)}
    right = sum(1 for k, v in got.items() if gold.get(k) == v)
    s1 = (summary.get("system1") or [None])[0]
    out = {"rows": len(gold), "written": len(got), "accuracy": round(right / len(gold), 4),
           "calls": summary["calls"]["made"], "cost_usd": summary["cost_usd"], "wall_s": round(wall, 1),
           "system1": s1}
    if s1 is not None:  # accuracy of the rows System 1 answered, from the trace's route events
        import sqlite3

        db = sqlite3.connect(work / ".corral" / "corral.db")
        keys = [k for (k,) in db.execute("SELECT key FROM attempts WHERE outcome='route' AND data LIKE '%\"route\":\"system1\"%'")]
        db.close()
        out["system1_rows"] = len(keys)
        out["system1_accuracy"] = round(sum(1 for k in keys if gold.get(k) == got.get(k)) / len(keys), 4) if keys else None
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenarios", default="labels,distil,crossdomain,sms_local")
    ap.add_argument("--accuracy", type=float, default=0.95, help="the fake LLM's accuracy")
    args = ap.parse_args()
    results: dict[str, Any] = {"benchmark": "system1", "machine": machine(),
                               "script": "bench/system1.py " + " ".join(f"--{k} {v}" for k, v in vars(args).items()),
                               "llm": f"fake noisy labeler, accuracy {args.accuracy}, ${PRICE} a call"}
    for name in [s.strip() for s in args.scenarios.split(",") if s.strip()]:
        work = Path(tempfile.mkdtemp(prefix=f"s1-{name}-"))
        job, gold, s1 = scenario(name, work, args.accuracy)
        llm_only = run_job(work, job, gold)
        job["steps"][0]["system1"] = s1
        with_s1 = run_job(work, job, gold)
        saved = None
        if llm_only["cost_usd"] and with_s1["cost_usd"] is not None:
            saved = round(1 - with_s1["cost_usd"] / llm_only["cost_usd"], 4)
        results[name] = {"llm_only": llm_only, "system1": with_s1, "cost_saved_share": saved}
        s = with_s1["system1"] or {}
        print(f"{name}: LLM only acc {llm_only['accuracy']:.4f}, {llm_only['calls']} calls, ${llm_only['cost_usd']}; "
              f"with System 1 acc {with_s1['accuracy']:.4f}, {with_s1['calls']} calls, ${with_s1['cost_usd']}, "
              f"System 1 took {with_s1.get('system1_rows')} rows (acc {with_s1.get('system1_accuracy')}); "
              f"saved {saved}; summary: {s.get('taken')} taken, met {s.get('met')}, retired {s.get('retired')}, "
              f"notes {s.get('notes')}", flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "system1.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    print("wrote bench/results/system1.json")


if __name__ == "__main__":
    main()
