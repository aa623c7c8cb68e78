"""Hospital (HoloClean) typo cleaning as a `normalize` job in clean mode.

  .venv/bin/python bench/etl/hospital.py --model fake --rows 0        # every row, fake model
  .venv/bin/python bench/etl/hospital.py --model local --rows 300 --seed 0

Data: ../shared/data/hospital_errors/hospital.csv (1,000 rows x 19 columns, 509 cells with
injected typos) and hospital_clean.csv (tid, attribute, correct_val; tid = 0-based row index).

The rows to process (all, or a seeded random sample) are written to a temporary CSV with a
leading `tid` column (the key). The frequency reference is always the WHOLE dirty table
(`reference: {path: .../hospital.csv}`), so a sample is cleaned against the same reference as
the full table would be.

Columns and settings, chosen from the structure of the dirty table (not from the clean file):
  * skipped: Address2, Address3 (always empty), Score and Sample (free measurements: a rare value
    is not a typo, there is nothing for a frequency reference to say);
  * hospital-level columns, repeated on every row of a hospital (10-28 rows each, a few small
    ones): ProviderNumber, HospitalName, Address1, City, ZipCode, CountyName, PhoneNumber ->
    the step's reference, min_count 3;
  * measure-level columns, repeated on every row of a measure (34-41 rows each): MeasureCode,
    MeasureName, Stateavg -> min_count 10;
  * low-cardinality categories whose right values appear on 25 to 968 rows but whose typos recur
    (a misspelling seen up to 16 times): HospitalType, HospitalOwner, Condition -> min_count 20;
  * State: the list of US state/territory postal codes (domain knowledge; `al`, `ak`... are
    lower-case in this table, so the list is lower-case);
  * EmergencyService: ["yes", "no"].
`candidates: 5` (the right spelling of a one-character typo ranks at the top of a rapidfuzz
ranking; short prompts keep the 135M model fast). No `input:` (no row context).
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

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _etl import DATA, accounted, run_corral, write_result, yaml_str  # noqa: E402

DIRTY = DATA / "hospital_errors" / "hospital.csv"
CLEAN = DATA / "hospital_errors" / "hospital_clean.csv"

STATES = (
    "al ak az ar ca co ct de dc fl ga hi id il in ia ks ky la me md ma mi mn ms mo mt ne nv nh "
    "nj nm ny nc nd oh ok or pa ri sc sd tn tx ut vt va wa wv wi wy pr gu vi as mp"
).split()

HOSPITAL_LEVEL = ["ProviderNumber", "HospitalName", "Address1", "City", "ZipCode", "CountyName",
                  "PhoneNumber"]
MEASURE_LEVEL = ["MeasureCode", "MeasureName", "Stateavg"]
CATEGORIES = ["HospitalType", "HospitalOwner", "Condition"]
CLEANED = HOSPITAL_LEVEL + ["State"] + CATEGORIES + ["EmergencyService"] + MEASURE_LEVEL


def write_job(folder: Path, source: Path) -> Path:
    lines = [
        "name: hospital-clean",
        f"source: {yaml_str(str(source))}",
        "key: tid",
        "steps:",
        "  - name: fixed",
        "    task: normalize",
        "    candidates: 5",
        "    clean:",
    ]
    for c in HOSPITAL_LEVEL:
        lines.append(f"      {c}:")
    lines.append(f"      State: {json.dumps(STATES)}")
    for c in CATEGORIES:
        lines.append(f"      {c}: {{min_count: 20}}")
    lines.append('      EmergencyService: ["yes", "no"]')
    for c in MEASURE_LEVEL:
        lines.append(f"      {c}: {{min_count: 10}}")
    lines += [
        f"    reference: {{path: {yaml_str(str(DIRTY))}, min_count: 3}}",
        "model: local",
        "sink: out/hospital_fixed.csv",
    ]
    job = folder / "hospital.yaml"
    job.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return job


def read_csv(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="local")
    ap.add_argument("--rows", type=int, default=0, help="seeded random sample of rows (0 = all)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    with DIRTY.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader)
        dirty = [dict(zip(header, r)) for r in reader]
    clean: dict[tuple[int, str], str] = {}
    with CLEAN.open(newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            clean[(int(r["tid"]), r["attribute"])] = r["correct_val"]
    typos_all = {(t, c) for t in range(len(dirty)) for c in header if dirty[t][c] != clean[(t, c)]}
    padded = sum(1 for row in dirty for v in row.values() if v != v.strip())

    if args.rows:
        tids = sorted(random.Random(args.seed).sample(range(len(dirty)), args.rows))
    else:
        tids = list(range(len(dirty)))

    with tempfile.TemporaryDirectory(prefix="corral-hosp-") as tmp:
        folder = Path(tmp)
        src = folder / "hospital_rows.csv"
        with src.open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(["tid", *header])
            for t in tids:
                w.writerow([t, *(dirty[t][c] for c in header)])
        job = write_job(folder, src)
        job_text = job.read_text()
        res = run_corral(job, folder / "corral.db", args.model)
        s = res["summary"]
        written = {int(r["tid"]): r for r in read_csv(folder / "out" / "hospital_fixed.csv")}
        quarantined = read_csv(folder / "out" / "hospital_fixed.quarantine.csv")

    typos = {(t, c) for (t, c) in typos_all if t in set(tids)}
    typos_cleaned = {(t, c) for (t, c) in typos if c in CLEANED}
    fixed = fixed_cleaned = detected = still_wrong = wrongly_changed = 0
    per_col: dict[str, dict[str, int]] = {c: {"typos": 0, "fixed": 0, "wrongly_changed": 0,
                                              "changed_still_wrong": 0} for c in CLEANED}
    examples: dict[str, list[Any]] = {"wrongly_changed": [], "changed_still_wrong": []}
    for t in tids:
        out = written.get(t)
        for c in header:
            d, gold = dirty[t][c], clean[(t, c)]
            if out is not None and c in CLEANED:
                o = out[f"fixed_{c}"]
            else:
                o = d  # not cleaned, or the row was quarantined: the cell stays as it was
            is_typo = d != gold
            changed = o != d
            if is_typo:
                if o == gold:
                    fixed += 1
                    fixed_cleaned += c in CLEANED
                if changed:
                    detected += 1
                    if o != gold:
                        still_wrong += 1
                        if len(examples["changed_still_wrong"]) < 10:
                            examples["changed_still_wrong"].append([t, c, d, o, gold])
            elif changed:
                wrongly_changed += 1
                if len(examples["wrongly_changed"]) < 10:
                    examples["wrongly_changed"].append([t, c, d, o, gold])
            if c in per_col:
                pc = per_col[c]
                pc["typos"] += is_typo
                pc["fixed"] += is_typo and o == gold
                pc["wrongly_changed"] += (not is_typo) and changed
                pc["changed_still_wrong"] += is_typo and changed and o != gold

    result = {
        "data": {"dirty": "../shared/data/hospital_errors/hospital.csv",
                 "clean": "../shared/data/hospital_errors/hospital_clean.csv",
                 "rows": len(dirty), "typos_in_table": len(typos_all),
                 "cells_with_surrounding_spaces": padded},
        "model": args.model,
        "sample": {"rows": len(tids), "seed": args.seed if args.rows else None,
                   "how": "random.Random(seed).sample(range(1000), rows)" if args.rows else "all rows"},
        "cleaned_columns": CLEANED,
        "job": job_text.replace(str(folder), "$TMP"),
        "command": res["command"].replace(str(folder), "$TMP"),
        "exit_code": res["exit_code"],
        "summary": s,
        "rows_accounted": accounted(s),
        "quarantined_rows": len(quarantined),
        "quarantine_reasons": sorted({r["_reason"] for r in quarantined})[:10],
        "figures": {
            "typos_in_sample": len(typos),
            "typos_in_cleaned_columns": len(typos_cleaned),
            "fixed_exactly": fixed,
            "fixed_rate_of_all_typos": round(fixed / len(typos), 4) if typos else None,
            "fixed_rate_of_typos_in_cleaned_columns":
                round(fixed_cleaned / len(typos_cleaned), 4) if typos_cleaned else None,
            "typos_changed_at_all": detected,
            "changed_but_still_wrong": still_wrong,
            "wrongly_changed_correct_cells": wrongly_changed,
            "cells_in_cleaned_columns": len(tids) * len(CLEANED),
        },
        "per_column": per_col,
        "examples_[tid,column,dirty,output,clean]": examples,
    }
    name = "hospital_fake" if args.model.startswith("fake") else "hospital"
    path = write_result(name, result)
    f_ = result["figures"]
    print(f"model {args.model}, rows {len(tids)} (seed {result['sample']['seed']})")
    print(f"  rows {json.dumps(s['rows'])} accounted={accounted(s)} calls {json.dumps(s['calls'])} "
          f"tokens {json.dumps(s['tokens'])} elapsed {s['elapsed_s']} s")
    print(f"  typos in sample {f_['typos_in_sample']} (in cleaned columns "
          f"{f_['typos_in_cleaned_columns']}); fixed exactly {f_['fixed_exactly']} "
          f"= {f_['fixed_rate_of_all_typos']} of all, {f_['fixed_rate_of_typos_in_cleaned_columns']}"
          f" of cleaned-column typos")
    print(f"  typos changed at all {f_['typos_changed_at_all']}, changed but still wrong "
          f"{f_['changed_but_still_wrong']}, correct cells wrongly changed "
          f"{f_['wrongly_changed_correct_cells']} (of {f_['cells_in_cleaned_columns']} cleaned cells)")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
