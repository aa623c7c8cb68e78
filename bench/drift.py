"""Monitoring on real data: does a shifted label mix raise the drift warning and exit 7?

  .venv/bin/python bench/drift.py [--rows 500] [--accuracy 0.9]

../shared/data/sms_spam (read from there): a spam/ham classify job answered by the fake noisy
labeler (the fake model with `truth:` the SMS file itself, at --accuracy: a simulated classifier,
its answers drawn around the gold labels). Three runs of the same job, each over its own input
file, in one store:
  1. --rows random messages (the corpus' own mix, about 13% spam);
  2. the shifted night: --rows messages, all spam;
  3. another --rows random messages, none of run 1's, with the original mix.
Reported per run: its gold and answered label mix, the distance to the run it was compared with,
the warnings and the exit code. Writes bench/results/drift.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import subprocess
import tempfile
from pathlib import Path

from _common import CORRAL, DATA, RESULTS


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=500)
    ap.add_argument("--accuracy", type=float, default=0.9)
    a = ap.parse_args()
    tsv = DATA / "sms_spam" / "SMSSpamCollection.tsv"
    with open(tsv, newline="", encoding="utf-8") as f:
        rows = [(f"m{i:05d}", r["SMS"], r["Label"]) for i, r in enumerate(csv.DictReader(f, delimiter="\t"))]
    rows = list({t: (k, t, g) for k, t, g in rows}.values())  # one row per distinct text
    rng = random.Random(7)
    rng.shuffle(rows)
    n = a.rows
    spam = [r for r in rows if r[2] == "spam"]
    runs = {"1 random": rows[:n], "2 only spam": spam[:n], "3 random again": rows[n:2 * n]}
    out = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for name, chosen in runs.items():
            src = tmp / f"in-{len(out) + 1}.csv"
            with open(src, "w", newline="", encoding="utf-8") as f:
                w = csv.writer(f)
                w.writerow(["id", "text"])
                w.writerows((k, t) for k, t, _ in chosen)
            (tmp / "job.yaml").write_text(
                f"name: sms-drift\nsource: {src.name}\nkey: id\nsink: out/o.csv\n"
                f"model: {{name: fake, truth: {tsv}, truth_text: SMS, truth_label: Label, accuracy: {a.accuracy}}}\n"
                "steps:\n  - name: label\n    task: classify\n    input: '{text}'\n    labels: [spam, ham]\n",
                encoding="utf-8")
            p = subprocess.run([CORRAL, "run", "job.yaml", "--json"], cwd=tmp, capture_output=True, text=True,
                               timeout=600)
            s = json.loads(p.stdout.strip().splitlines()[-1])
            with open(tmp / "out" / "o.csv", newline="", encoding="utf-8") as f:
                answered = [r["label"] for r in csv.DictReader(f)]
            gold = [g for _, _, g in chosen]
            out.append({
                "run": name, "rows": len(chosen), "exit": p.returncode,
                "gold_spam": round(gold.count("spam") / len(gold), 4),
                "answered_spam": round(answered.count("spam") / max(1, len(answered)), 4),
                "compared_with": s["monitor"]["compared_with"], "warnings": s["monitor"]["warnings"],
            })
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "drift.json").write_text(json.dumps({"accuracy": a.accuracy, "runs": out}, indent=2) + "\n",
                                        encoding="utf-8")
    print(f"{'run':<16} {'rows':>5} {'gold spam':>9} {'answered spam':>13} {'exit':>4}  warnings")
    for r in out:
        print(f"{r['run']:<16} {r['rows']:>5} {r['gold_spam']:>9.1%} {r['answered_spam']:>13.1%} {r['exit']:>4}  "
              f"{'; '.join(r['warnings']) or '-'}")


if __name__ == "__main__":
    main()
