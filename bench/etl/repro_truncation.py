"""Reproduce what the first usaddress job ran into: the bundled model repeats itself inside a string
field until max_tokens, and the engine's retries of a truncated answer (same prompt, temperature 0,
max_tokens doubled: 256, 512, 1024) give the same text again, longer.

  .venv/bin/python bench/etl/repro_truncation.py

One address from ../shared/data/usaddress/labeled_flat.csv (row 67, "2141 S TAN COURT"), the
usaddress job's fields without `max_length`, written to a temporary folder with its own store.
Prints each attempt's max_tokens, output tokens, latency and the first 80 characters of its text.
"""

from __future__ import annotations

import csv
import json
import sqlite3
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _etl import DATA, run_corral, write_result  # noqa: E402
from usaddress import write_job  # noqa: E402

ROW = 67


def main() -> None:
    with (DATA / "usaddress" / "labeled_flat.csv").open(newline="", encoding="utf-8") as f:
        address = list(csv.DictReader(f))[ROW]["address"]
    with tempfile.TemporaryDirectory(prefix="corral-trunc-") as tmp:
        folder = Path(tmp)
        src = folder / "one.jsonl"
        src.write_text(json.dumps({"addr_id": ROW, "address": address}) + "\n", encoding="utf-8")
        job = write_job(folder, src, 0)
        res = run_corral(job, folder / "corral.db", "{name: local, n_threads: 1}")
        db = sqlite3.connect(folder / "corral.db")
        calls = []
        for attempt, hash_, outcome, detail in db.execute(
            "SELECT attempt, request_hash, outcome, detail FROM attempts ORDER BY id"
        ):
            req, resp = db.execute(
                "SELECT request, response FROM responses WHERE request_hash = ?", (hash_,)
            ).fetchone()
            lat, out_tok = db.execute(
                "SELECT latency_s, output_tokens FROM ledger WHERE request_hash = ?", (hash_,)
            ).fetchone()
            req, resp = json.loads(req), json.loads(resp)
            calls.append({
                "attempt": attempt, "outcome": outcome, "detail": detail,
                "max_tokens": req.get("max_tokens"), "temperature": req.get("temperature"),
                "output_tokens": out_tok, "latency_s": round(lat, 2),
                "text_start": (resp.get("text") or "")[:80],
            })
        db.close()
    s = res["summary"]
    print(f"address {address!r}: rows {json.dumps(s['rows'])} calls {json.dumps(s['calls'])} "
          f"tokens {json.dumps(s['tokens'])} elapsed {s['elapsed_s']} s")
    for c in calls:
        print(f"  attempt {c['attempt']}: {c['outcome']} max_tokens={c['max_tokens']} "
              f"temperature={c['temperature']} out={c['output_tokens']} {c['latency_s']} s "
              f"{c['text_start']!r}")
    write_result("repro_truncation", {
        "address_row": ROW, "address": address,
        "command": res["command"].split(" /tmp/")[0] + " $TMP/usaddress.yaml ...",
        "summary": s, "attempts": calls,
    })


if __name__ == "__main__":
    main()
