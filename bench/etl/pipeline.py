"""examples/pipeline.yaml (classify -> extract when billing -> filter) over the 243 demo tickets.

  .venv/bin/python bench/etl/pipeline.py --part fake    # full run, edit the last step, rerun
  .venv/bin/python bench/etl/pipeline.py --part local   # bundled model, --limit 20 (+ the edit)

The job is examples/pipeline.yaml as it is, copied to a temporary folder with `source:` made
absolute (examples/data/tickets.csv) and the sink in the temporary folder. The edited copy
changes only the last step's `question`. Both runs use one fresh store; calls per step come from
the store's ledger (table ledger(run_id, step, replayed, ...)).
"""

from __future__ import annotations

import argparse
import csv
import json
import sqlite3
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine  # noqa: E402
from _etl import RESULTS, ROOT, accounted, run_corral, write_result  # noqa: E402

EXAMPLE = ROOT / "examples" / "pipeline.yaml"
NEW_QUESTION = "Is the customer asking to get money returned to them (refund, chargeback or store credit)?"


def write_jobs(folder: Path) -> tuple[Path, Path, str]:
    spec = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    spec["source"] = str((EXAMPLE.parent / spec["source"]).resolve())
    spec["sink"] = str(folder / "out" / "refunds.csv")
    original = folder / "pipeline.yaml"
    original.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    old_q = spec["steps"][-1]["question"]
    spec["steps"][-1]["question"] = NEW_QUESTION
    edited = folder / "pipeline_edited.yaml"
    edited.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return original, edited, old_q


def ledger(store: Path, run_id: str) -> dict[str, dict[str, int]]:
    db = sqlite3.connect(store)
    out: dict[str, dict[str, int]] = {}
    for step, replayed, n in db.execute(
        "SELECT step, replayed, COUNT(*) FROM ledger WHERE run_id = ? GROUP BY step, replayed",
        (run_id,),
    ):
        d = out.setdefault(step, {"paid": 0, "replayed": 0})
        d["replayed" if replayed else "paid"] += n
    db.close()
    return out


def step_counts(store: Path, run_id: str) -> dict[str, Any]:
    """Record states in the store for the run (done, skipped, quarantined...)."""
    db = sqlite3.connect(store)
    states = dict(db.execute(
        "SELECT state, COUNT(*) FROM records WHERE run_id = ? GROUP BY state", (run_id,)
    ).fetchall())
    db.close()
    return states


def count_csv(path: Path) -> int:
    if not path.exists():
        return -1
    with path.open(newline="", encoding="utf-8") as f:
        return sum(1 for _ in csv.DictReader(f))


def one_run(job: Path, store: Path, model: str, folder: Path, limit: int | None) -> dict[str, Any]:
    res = run_corral(job, store, model, limit=limit)
    s = res["summary"]
    out = folder / "out"
    return {
        "command": res["command"].replace(str(folder), "$TMP"),
        "exit_code": res["exit_code"],
        "summary": s,
        "rows_accounted": accounted(s),
        "record_states_in_store": step_counts(store, s["run"]),
        "files": {
            "sink_rows": count_csv(out / "refunds.csv"),
            "quarantine_rows": count_csv(out / "refunds.quarantine.csv"),
            "skipped_rows": count_csv(out / "refunds.skipped.csv"),
        },
        "ledger_by_step": ledger(store, s["run"]),
    }


def show(label: str, r: dict[str, Any]) -> None:
    s = r["summary"]
    print(f"{label}: run {s['run']} rows {json.dumps(s['rows'])} accounted={r['rows_accounted']} "
          f"calls {json.dumps(s['calls'])} elapsed {s['elapsed_s']} s")
    print(f"   files {json.dumps(r['files'])}")
    print(f"   ledger by step {json.dumps(r['ledger_by_step'])}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", choices=["fake", "local"], required=True)
    ap.add_argument("--limit", type=int, default=20, help="rows for --part local")
    ap.add_argument("--model", default="local",
                    help="model for --part local, e.g. '{name: local, n_threads: 1}'")
    args = ap.parse_args()

    out_path = RESULTS / "pipeline.json"
    result: dict[str, Any] = json.loads(out_path.read_text()) if out_path.exists() else {}
    result.pop("machine", None)
    result.pop("benchmark", None)
    with tempfile.TemporaryDirectory(prefix="corral-pipe-") as tmp:
        folder = Path(tmp)
        original, edited, old_q = write_jobs(folder)
        store = folder / "corral.db"
        model = "fake" if args.part == "fake" else args.model
        limit = None if args.part == "fake" else args.limit
        first = one_run(original, store, model, folder, limit)
        show(f"{model} first run", first)
        second = one_run(edited, store, model, folder, limit)
        show(f"{model} rerun, last step's question edited", second)
        result[args.part] = {
            "model": model,
            "limit": limit,
            "run_at": machine(),
            "job": "examples/pipeline.yaml (source made absolute, sink in $TMP)",
            "edit": {"step": "wants_money_back", "question_before": old_q, "question_after": NEW_QUESTION},
            "first_run": first,
            "rerun_after_edit": second,
        }
    path = write_result("pipeline", result)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
