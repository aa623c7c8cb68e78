"""`embed` over SMS messages against the test server: requests made, rows/s, and a rerun after
adding 100 rows that embeds only those 100.

  .venv/bin/python bench/embed.py [--rows 10000] [--dimensions 256] [--pack N]

The rows are ../shared/data/sms_spam's 5,574 messages, repeated with a copy number past the
end (`... [copy 1]`) so every row is a text of its own. The model is
`openai:text-embedding-3-small` on `corral.testing.ProviderServer` (127.0.0.1, OpenAI's wire
format, driven through the official SDK), priced from the price table; the sink is Parquet
(fixed_size_list<float32>). First run: N rows in a fresh store. Second run: the same job over
N + 100 rows (the first N unchanged): only the 100 new rows may reach the server (fewer: the
data set repeats some messages word for word, and a text embedded once is replayed, not paid
again). `--pack`
sets the step's `pack:` where the step has one (rows per request). Writes
bench/results/embed.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sqlite3
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from _common import RESULTS, SMS_ROWS, SMS_TSV, cmdline, machine  # noqa: E402

import corral  # noqa: E402
from corral import Job  # noqa: E402
from corral.tasks.embed import EmbedStep  # noqa: E402
from corral.testing import ProviderServer  # noqa: E402

ROUTE = "POST /v1/embeddings"


def messages() -> list[str]:
    with open(SMS_TSV, encoding="utf-8", newline="") as f:
        out = [row[1] for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if len(row) >= 2][1:]  # a header
    assert len(out) == SMS_ROWS, f"{SMS_TSV} has {len(out)} messages, not {SMS_ROWS}"
    return out


def row_texts(texts: list[str], n: int) -> list[str]:
    """The first ``n`` rows' texts: the messages, then again with a copy number."""
    return [texts[i % len(texts)] + (f" [copy {i // len(texts)}]" if i >= len(texts) else "") for i in range(n)]


def write_rows(path: Path, texts: list[str], n: int) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "text"])
        for i, text in enumerate(row_texts(texts, n)):
            w.writerow([f"m{i}", text])


def job(folder: Path, srv: ProviderServer, dimensions: int, pack: int | None) -> Job:
    step: dict[str, Any] = {"name": "vec", "task": "embed", "input": "{text}", "dimensions": dimensions}
    if pack is not None:
        step["pack"] = pack
    return Job.from_dict({
        "name": "sms-embed", "key": "id", "source": "in.csv",
        "model": {"name": "openai:text-embedding-3-small", "base_url": srv.openai_url, "api_key": "sk-bench"},
        "steps": [step], "sink": "out/vec.parquet"}, base_dir=folder)


def ledger(db: Path, run_id: str) -> dict[str, Any]:
    con = sqlite3.connect(db)
    try:
        made, replayed, tokens, nanos = con.execute(
            "SELECT SUM(replayed = 0), SUM(replayed = 1), SUM(CASE WHEN replayed = 0 THEN input_tokens END), "
            "SUM(cost_nanos) FROM ledger WHERE run_id = ?", (run_id,)).fetchone()
    finally:
        con.close()
    return {"ledger_rows_paid": made or 0, "ledger_rows_replayed": replayed or 0, "input_tokens": tokens or 0,
            "cost_usd": str(Decimal(nanos or 0) / Decimal(10**9))}


def one_run(folder: Path, srv: ProviderServer, rows: int, a: argparse.Namespace, texts: list[str]) -> dict[str, Any]:
    write_rows(folder / "in.csv", texts, rows)
    before = srv.requests[ROUTE]
    t = time.monotonic()
    r = corral.run(job(folder, srv, a.dimensions, a.pack), store=folder / "s.db")
    wall = time.monotonic() - t
    requests = srv.requests[ROUTE] - before
    assert r.accounted and r.written == rows, f"{r.written} of {rows} rows written ({r.quarantined} quarantined)"
    return {"rows": rows, "written": r.written, "requests": requests, "calls_made": r.calls_made,
            "calls_replayed": r.calls_replayed, "wall_s": round(wall, 2), "rows_per_s": round(rows / wall, 1),
            **ledger(folder / "s.db", r.run)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--added", type=int, default=100)
    ap.add_argument("--dimensions", type=int, default=256)
    ap.add_argument("--pack", type=int, default=None, help="rows per request (the step's default when unset)")
    a = ap.parse_args()
    has_pack = "pack" in EmbedStep.model_fields
    if a.pack is not None and not has_pack:
        raise SystemExit("this Corral's embed step has no `pack:`; run without --pack")
    pack = a.pack if a.pack is not None else (EmbedStep.model_fields["pack"].default if has_pack else 1)
    texts = messages()
    out: dict[str, Any] = {"command": cmdline(sys.argv), "machine": machine(), "dimensions": a.dimensions,
                           "pack": pack, "model": "openai:text-embedding-3-small (test server)"}
    with tempfile.TemporaryDirectory() as d, ProviderServer() as srv:
        folder = Path(d)
        first = one_run(folder, srv, a.rows, a, texts)
        print(f"first run: {first['rows']:,} rows, {first['requests']:,} requests "
              f"(pack {pack}: ceil(rows/pack) = {math.ceil(first['rows'] / pack):,}), "
              f"{first['rows_per_s']:,} rows/s, {first['input_tokens']:,} input tokens, ${first['cost_usd']}", flush=True)
        second = one_run(folder, srv, a.rows + a.added, a, texts)
        print(f"rerun with {a.added} rows added: {second['requests']:,} requests, {second['ledger_rows_paid']:,} rows "
              f"embedded, {second['calls_replayed']:,} replayed from the store, ${second['cost_usd']}", flush=True)
        import pyarrow.parquet as pq

        schema = pq.read_schema(folder / "out" / "vec.parquet")
        out["sink_type"] = str(schema.field("vec").type)
    out["first"], out["rerun"] = first, second
    # the data set repeats some messages word for word ("Sorry, I'll call later"): a text already
    # embedded is replayed, never paid again, so the rows to pay for are the new distinct texts
    before = set(row_texts(texts, a.rows))
    new = {t for t in row_texts(texts, a.rows + a.added)[a.rows:] if t not in before}
    first["distinct_texts"] = len(before)
    out["rerun_new_texts"] = len(new)
    out["rerun_embeds_only_added"] = second["ledger_rows_paid"] == len(new) and second["requests"] <= len(new)
    print(f"first run: {first['distinct_texts']:,} distinct texts ({first['ledger_rows_paid']:,} rows paid, "
          f"{first['calls_replayed']:,} repeats replayed); rerun: {len(new)} new texts among the {a.added} added, "
          f"{second['ledger_rows_paid']} rows paid")
    print(f"sink column type: {out['sink_type']}; rerun embeds only the added rows: {out['rerun_embeds_only_added']}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "embed.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
