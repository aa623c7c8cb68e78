"""`pack: 10` against `pack: 1`: calls, tokens, cost and accuracy side by side, and every row
accounted for when the model drops or repeats row ids.

  .venv/bin/python bench/pack.py [--b77-rows 300] [--sms-rows 200] [--seed 15] [--no-local]

1. banking77 (../shared/data/banking77/test.csv, read in place): a seeded sample of --b77-rows
   rows, one classify step over the 77 intents, on the fake noisy labeler (truth: the test
   split, accuracy 0.8), each call priced from its tokens at $0.15 / $0.60 per million (a small
   hosted model's list price): pack 1, pack 10, and pack 10 with the model dropping 5% of the
   row ids and repeating 5% (fake's pack_drop_rate and pack_repeat_rate). The labeler draws a
   row's answer from its text, packed or not, so its accuracy is the same by construction: this
   part measures calls, tokens, cost and the accounting, not answer quality.
2. sms_spam (../shared/data/sms_spam): a seeded sample of --sms-rows messages, labels spam and ham, on the
   bundled local model (SmolLM2-135M-Instruct): `scoring: generate` with pack 1 and pack 10, and
   the step's default on that model (pack 1, likelihood scoring) for reference. This part is the
   quality figure: a real model answering ten rows in one prompt.

Each configuration runs with `corral run JOB --store S --json` in a fresh folder and store (every
call paid), then `corral eval JOB --labels L --no-run --json` scores it against the labels.
Writes bench/results/pack.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import CORRAL, DATA, RESULTS, SMS_TSV, machine  # noqa: E402

B77 = DATA / "banking77"
TOKEN_PRICES = {"input": 0.15, "output": 0.60}
#: as bench/delimit_local.py asks it (labels without descriptions: with the descriptions of
#: bench/deliberation/sms_local.py the 135M model answers spam for most rows, under 0.35)
SMS_LABELS = ["spam", "ham"]


def sample(rows: list[tuple[str, str]], n: int, seed: int) -> list[tuple[str, str, str]]:
    """(id, text, label) of ``n`` rows drawn without replacement."""
    picked = random.Random(seed).sample(range(len(rows)), n)
    return [(str(i), rows[i][0], rows[i][1]) for i in sorted(picked)]


def write(folder: Path, rows: list[tuple[str, str, str]], step: str) -> None:
    with (folder / "in.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "text"])
        w.writerows((i, t) for i, t, _ in rows)
    with (folder / "labels.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", step])
        w.writerows((i, lab) for i, _, lab in rows)


def run_one(folder: Path, job: dict[str, Any]) -> dict[str, Any]:
    """Run the job in ``folder`` (fresh store), score it; the figures of one configuration."""
    (folder / "job.yaml").write_text(json.dumps(job))  # JSON is YAML
    t0 = time.perf_counter()
    p = subprocess.run([CORRAL, "run", "job.yaml", "--store", "s.db", "--json"], cwd=folder,
                       capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - t0
    if p.returncode not in (0, 7):
        raise SystemExit(f"corral run failed ({p.returncode}) in {folder}:\n{p.stderr[-2000:]}")
    summary = json.loads(p.stdout)
    e = subprocess.run([CORRAL, "eval", "job.yaml", "--labels", "labels.csv", "--no-run", "--json",
                        "--store", "s.db"], cwd=folder, capture_output=True, text=True, timeout=600)
    if e.returncode != 0:
        raise SystemExit(f"corral eval failed ({e.returncode}) in {folder}:\n{e.stderr[-2000:]}")
    ev = json.loads(e.stdout)["runs"][0]
    rows = summary["rows"]
    sink_keys = set()
    out = folder / "out.csv"
    if out.exists():
        with out.open(encoding="utf-8") as f:
            sink_keys = {r["id"] for r in csv.DictReader(f)}
    with (folder / "in.csv").open(encoding="utf-8") as f:
        keys = {r["id"] for r in csv.DictReader(f)}
    accounted = rows["in"] == rows["written"] + rows["quarantined"] + rows["review"] + rows["skipped"] + rows["pending"]
    return {
        "rows": rows, "accounted": accounted and rows["in"] == len(keys),
        "sink_is_every_written_row": len(sink_keys) == rows["written"] and sink_keys <= keys,
        "calls": summary["calls"]["made"], "tokens": summary["tokens"], "cost_usd": summary["cost_usd"],
        "accuracy": ev["accuracy"], "correct": ev["correct"], "wall_s": round(wall, 2),
    }


def banking77(n: int, seed: int, tmp: Path) -> dict[str, Any]:
    with (B77 / "test.csv").open(encoding="utf-8") as f:
        data = [(r["text"], r["category"]) for r in csv.DictReader(f)]
    labels = json.loads((B77 / "categories.json").read_text())
    rows = sample(data, n, seed)
    out = {}
    for name, pack, faults in (("pack 1", 1, {}), ("pack 10", 10, {}),
                               ("pack 10, 5% ids dropped + 5% repeated", 10,
                                {"pack_drop_rate": 0.05, "pack_repeat_rate": 0.05})):
        folder = tmp / f"b77-{len(out)}"
        folder.mkdir()
        write(folder, rows, "intent")
        job = {
            "name": "b77", "source": "in.csv", "key": "id", "concurrency": 8,
            "model": {"name": "fake", "truth": str(B77 / "test.csv"), "truth_label": "category",
                      "accuracy": 0.8, "seed": seed, "prices": TOKEN_PRICES, **faults},
            "steps": [{"name": "intent", "task": "classify", "input": "{text}", "labels": labels,
                       "pack": pack}],
            "sink": "out.csv",
        }
        out[name] = run_one(folder, job)
        print(f"banking77 {name}: {json.dumps(out[name])}", flush=True)
    return out


def sms(n: int, seed: int, tmp: Path) -> dict[str, Any]:
    with SMS_TSV.open(encoding="utf-8") as f:
        data = [(text, label) for label, text in (line.rstrip("\n").split("\t", 1) for line in f if "\t" in line)]
    rows = sample(data, n, seed)
    out = {}
    for name, extra in (("pack 1, generate", {"scoring": "generate"}),
                        ("pack 10, generate", {"scoring": "generate", "pack": 10}),
                        ("pack 1, default (likelihood)", {})):
        folder = tmp / f"sms-{len(out)}"
        folder.mkdir()
        write(folder, rows, "label")
        job = {
            "name": "sms", "source": "in.csv", "key": "id",
            "steps": [{"name": "label", "task": "classify", "input": "{text}", "labels": SMS_LABELS,
                       **extra}],
            "sink": "out.csv",
        }
        out[name] = run_one(folder, job)
        print(f"sms_spam {name}: {json.dumps(out[name])}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--b77-rows", type=int, default=300)
    ap.add_argument("--sms-rows", type=int, default=200)
    ap.add_argument("--seed", type=int, default=15)
    ap.add_argument("--no-local", action="store_true", help="leave out the bundled model's part")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="corral-pack-") as d:
        tmp = Path(d)
        result: dict[str, Any] = {"machine": machine(), "seed": a.seed,
                                  "banking77": banking77(a.b77_rows, a.seed, tmp)}
        if not a.no_local:
            result["sms_spam"] = sms(a.sms_rows, a.seed, tmp)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "pack.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS / 'pack.json'}")


if __name__ == "__main__":
    main()
