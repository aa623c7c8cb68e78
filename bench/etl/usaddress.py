"""US address parsing as an `extract` job.

  .venv/bin/python bench/etl/usaddress.py --model fake --sample 120 --seed 0
  .venv/bin/python bench/etl/usaddress.py --model local --sample 120 --seed 0
  .venv/bin/python bench/etl/usaddress.py --model local --sample 120 --seed 0 --rules --out usaddress_rules

Data: ../shared/data/usaddress/labeled_flat.csv (1,513 rows: address, components_json). A seeded
random sample (random.Random(seed).sample of row indexes) is written to a temporary JSONL file
with an `addr_id` column (the 0-based row of labeled_flat.csv) used as the key.

Scoring, per field and over all fields (fields x addresses): a field is correct when gold and
prediction are both null/absent, or both strings are equal after strip() ("strict"); the
"loose" variant also lower-cases, drops punctuation and collapses spaces (the gold tokens keep
their trailing commas and dots: "Chicago," "Rd.,"). A quarantined address counts as all-null.
Also reported: the all-null baseline (predict null for every field) under the same scoring.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _etl import DATA, accounted, read_jsonl, run_corral, write_result, yaml_str  # noqa: E402

FLAT = DATA / "usaddress" / "labeled_flat.csv"

FIELDS = {
    "AddressNumber": "The house or building number, like 123",
    "StreetNamePreDirectional": "A direction written before the street name, like N or West",
    "StreetName": "The name of the street, without number, direction or street type, like Main",
    "StreetNamePostType": "The street type written after the street name, like St or Avenue",
    "OccupancyType": "The kind of unit, like Apt or Suite",
    "OccupancyIdentifier": "The unit's number or letter, like 4B",
    "PlaceName": "The city or town",
    "StateName": "The state, like IL or New York",
    "ZipCode": "The ZIP code, like 60601",
}


#: with --rules: the shapes a component must have (anchored by Corral), besides grounding
PATTERNS = {
    "AddressNumber": "[0-9]+[A-Za-z]?(-[0-9]+[A-Za-z]?)?",
    "ZipCode": "[0-9]{5}(-[0-9]{4})?",
}


def write_job(folder: Path, source: Path, max_length: int, rules: bool = False) -> Path:
    lines = [
        "name: usaddress-extract",
        f"source: {yaml_str(str(source))}",
        "key: addr_id",
        "steps:",
        "  - name: parts",
        "    task: extract",
        '    input: "{address}"',
        "    fields:",
    ]
    for name, desc in FIELDS.items():
        lines += [
            f"      {name}:",
            "        type: string",
            "        nullable: true",
            *([f"        max_length: {max_length}"] if max_length else []),
            f"        description: {yaml_str(desc)}",
            *(["        grounded: true"] if rules else []),
            *([f"        pattern: {yaml_str(PATTERNS[name])}"] if rules and name in PATTERNS else []),
        ]
    if rules:  # a component the address does not hold is no component: null, and the row goes on
        lines.insert(lines.index("    fields:"), "    on_ungrounded: null")
    lines += ["model: local", "sink: out/usaddress.jsonl"]
    job = folder / "usaddress.yaml"
    job.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return job


def _norm_strict(v: Any) -> str | None:
    if v is None:
        return None
    s = str(v).strip()
    return s or None


_PUNCT = re.compile(r"[^\w\s]")


def _norm_loose(v: Any) -> str | None:
    s = _norm_strict(v)
    if s is None:
        return None
    s = " ".join(_PUNCT.sub(" ", s.lower()).split())
    return s or None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="local")
    ap.add_argument("--sample", type=int, default=120)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="", help="results name (default usaddress / usaddress_fake)")
    ap.add_argument("--max-length", type=int, default=30,
                    help="max_length of every field (0: none). Without it the bundled model can "
                         "repeat itself inside a string until max_tokens (see RESULTS.md)")
    ap.add_argument("--rules", action="store_true",
                    help="every field grounded in the address (on_ungrounded: null), and patterns "
                         "for AddressNumber and ZipCode")
    args = ap.parse_args()

    with FLAT.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    ids = sorted(random.Random(args.seed).sample(range(len(rows)), args.sample))
    gold = {i: json.loads(rows[i]["components_json"]) for i in ids}

    with tempfile.TemporaryDirectory(prefix="corral-addr-") as tmp:
        folder = Path(tmp)
        src = folder / "addresses.jsonl"
        src.write_text(
            "".join(json.dumps({"addr_id": i, "address": rows[i]["address"]}) + "\n" for i in ids),
            encoding="utf-8",
        )
        job = write_job(folder, src, args.max_length, args.rules)
        job_text = job.read_text()
        res = run_corral(job, folder / "corral.db", args.model)
        s = res["summary"]
        written = {int(r["addr_id"]): r for r in read_jsonl(folder / "out" / "usaddress.jsonl")}
        quarantined = read_jsonl(folder / "out" / "usaddress.quarantine.jsonl")

    per_field: dict[str, dict[str, Any]] = {}
    tot = {"strict": 0, "loose": 0, "null_baseline_strict": 0}
    all_right = {"strict": 0, "loose": 0}
    row_ok = {i: {"strict": True, "loose": True} for i in ids}
    examples: list[Any] = []
    for name in FIELDS:
        c = {"strict": 0, "loose": 0, "null_baseline_strict": 0, "gold_non_null": 0,
             "strict_on_gold_non_null": 0, "loose_on_gold_non_null": 0}
        for i in ids:
            g = gold[i].get(name)
            p = written[i].get(name) if i in written else None
            ok_s = _norm_strict(g) == _norm_strict(p)
            ok_l = _norm_loose(g) == _norm_loose(p)
            c["strict"] += ok_s
            c["loose"] += ok_l
            c["null_baseline_strict"] += _norm_strict(g) is None
            if _norm_strict(g) is not None:
                c["gold_non_null"] += 1
                c["strict_on_gold_non_null"] += ok_s
                c["loose_on_gold_non_null"] += ok_l
            row_ok[i]["strict"] &= ok_s
            row_ok[i]["loose"] &= ok_l
            if not ok_l and len(examples) < 15:
                examples.append([i, name, g, p])
        n = len(ids)
        per_field[name] = {
            **c,
            "acc_strict": round(c["strict"] / n, 4),
            "acc_loose": round(c["loose"] / n, 4),
            "acc_null_baseline": round(c["null_baseline_strict"] / n, 4),
        }
        for k in tot:
            tot[k] += c[k]
    for i in ids:
        all_right["strict"] += row_ok[i]["strict"]
        all_right["loose"] += row_ok[i]["loose"]
    cells = len(ids) * len(FIELDS)
    result = {
        "data": {"file": "../shared/data/usaddress/labeled_flat.csv", "rows": len(rows)},
        "model": args.model,
        "max_length": args.max_length,
        "rules": args.rules,
        "sample": {"n": len(ids), "seed": args.seed,
                   "how": "random.Random(seed).sample(range(1513), n)", "addr_ids": ids},
        "job": job_text.replace(str(folder), "$TMP"),
        "command": res["command"].replace(str(folder), "$TMP"),
        "exit_code": res["exit_code"],
        "summary": s,
        "rows_accounted": accounted(s),
        "quarantined": len(quarantined),
        "quarantine_reasons": sorted({r["_reason"] for r in quarantined})[:10],
        "overall": {
            "field_cells": cells,
            "acc_strict": round(tot["strict"] / cells, 4),
            "acc_loose": round(tot["loose"] / cells, 4),
            "acc_null_baseline": round(tot["null_baseline_strict"] / cells, 4),
            "addresses_all_fields_right_strict": all_right["strict"],
            "addresses_all_fields_right_loose": all_right["loose"],
        },
        "per_field": per_field,
        "examples_wrong_loose_[addr_id,field,gold,pred]": examples,
    }
    name = "usaddress_fake" if args.model.startswith("fake") else "usaddress"
    if args.out:
        name = args.out
    path = write_result(name, result)
    print(f"model {args.model}, sample {len(ids)} seed {args.seed}")
    print(f"  rows {json.dumps(s['rows'])} accounted={accounted(s)} calls {json.dumps(s['calls'])} "
          f"tokens {json.dumps(s['tokens'])} elapsed {s['elapsed_s']} s")
    o = result["overall"]
    print(f"  overall acc strict {o['acc_strict']} loose {o['acc_loose']} "
          f"(all-null baseline {o['acc_null_baseline']}); all fields right: "
          f"{o['addresses_all_fields_right_strict']} strict, {o['addresses_all_fields_right_loose']} loose")
    for k, v in per_field.items():
        print(f"  {k:26s} strict {v['acc_strict']:.3f} loose {v['acc_loose']:.3f} "
              f"null-baseline {v['acc_null_baseline']:.3f} (gold non-null {v['gold_non_null']})")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
