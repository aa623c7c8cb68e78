"""DuckDB in, DuckDB out, next to Parquet in, Parquet out: rows/s and peak RSS of one classify job.

Generates a seeded table (columns id, text; text about 60 characters of varied words, the same
generator as bench/memory.py) and writes it both as a DuckDB table and as a Parquet file with the
same rows. Then, for each format, in a fresh process with a fresh store:
`python -m corral run JOB --model fake --json`, the job classifying `{text}` into three labels
(`key: id`), its sink a table of a new DuckDB file or a new Parquet file. Reports wall seconds,
rows/s (rows / wall, process start and fingerprinting included) and peak RSS (ru_maxrss of exactly
that process, from os.wait4), and checks that the sink holds every row.

Usage: PYTHONPATH=src .venv/bin/python bench/duckdb_million.py [--rows 1000000] [--formats duckdb,parquet]
(about 2,000 rows/s on a 2-CPU machine: 1,000,000 rows take some 8 minutes per format.)
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import PY, cmdline, last_json_line, run_child, write_result  # noqa: E402
from memory import SEED, make_words  # noqa: E402


def make_table(rows: int) -> pa.Table:
    rng = random.Random(SEED)
    words = make_words(rng)
    texts: list[str] = []
    for _ in range(rows):
        parts: list[str] = []
        n = 0
        while n < 60:
            w = rng.choice(words)
            parts.append(w)
            n += len(w) + 1
        texts.append(" ".join(parts))
    return pa.table({"id": pa.array(range(rows), pa.int64()), "text": pa.array(texts, pa.string())})


def make_job(tmp: Path, fmt: str, table: pa.Table) -> tuple[Path, Path]:
    import duckdb

    if fmt == "duckdb":
        src = tmp / "in.duckdb"
        conn = duckdb.connect(str(src))
        conn.register("rows", table)
        conn.execute("CREATE TABLE tickets AS SELECT * FROM rows")
        conn.close()
        source: object = {"path": str(src), "table": "tickets"}
        sink_path = tmp / "out.duckdb"
        sink: object = {"path": str(sink_path), "table": "labelled"}
    else:
        src = tmp / "in.parquet"
        pq.write_table(table, src)
        source = str(src)
        sink_path = tmp / "out.parquet"
        sink = str(sink_path)
    spec = {
        "name": f"million-{fmt}",
        "source": source,
        "key": "id",
        "steps": [{
            "name": "topic", "task": "classify", "input": "{text}",
            "labels": {"sport": "Games, teams and matches", "money": "Prices, payments and markets",
                       "other": "Anything else"},
        }],
        "sink": sink,
    }
    job = tmp / f"{fmt}.yaml"
    job.write_text(yaml.safe_dump(spec, sort_keys=False))
    return job, sink_path


def sink_rows(fmt: str, path: Path) -> int:
    if fmt == "parquet":
        return int(pq.ParquetFile(path).metadata.num_rows)
    import duckdb

    conn = duckdb.connect(str(path), read_only=True)
    try:
        return int(conn.execute("SELECT count(*) FROM labelled").fetchall()[0][0])
    finally:
        conn.close()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--formats", default="duckdb,parquet")
    args = ap.parse_args()
    table = make_table(args.rows)
    results = []
    for fmt in args.formats.split(","):
        with tempfile.TemporaryDirectory(prefix=f"corral-{fmt}-") as d:
            tmp = Path(d)
            job, sink = make_job(tmp, fmt, table)
            argv = [PY, "-m", "corral", "run", str(job), "--model", "fake", "--json"]
            env = {**os.environ, "CORRAL_STORE": str(tmp / "store" / "corral.db")}
            r = run_child(argv, env=env)
            if r["rc"] != 0:
                print(r["stderr"][-2000:], file=sys.stderr)
                return 1
            summary = last_json_line(r["stdout"])
            got = sink_rows(fmt, sink)
            row = {
                "format": fmt, "rows": args.rows, "wall_s": round(r["wall_s"], 1),
                "rows_per_s": round(args.rows / r["wall_s"]),
                "peak_rss_mb": round(r["maxrss_kb"] / 1024, 1), "sink_rows": got,
                "written": summary["rows"]["written"], "cpu_s": round(r["cpu_s"], 1),
                "others_cpu_share": round(r["others_cpu_share"], 2),
                "command": f"CORRAL_STORE=<tmp>/store/corral.db {cmdline(argv)}",
            }
            results.append(row)
            print(row, flush=True)
            if got != args.rows:
                print(f"{fmt}: the sink holds {got} rows, not {args.rows}", file=sys.stderr)
                return 1
    write_result("duckdb_million", {"rows": args.rows, "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
