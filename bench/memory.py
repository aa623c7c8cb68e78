"""Memory: peak RSS of `corral run JOB --model fake --json` on 100,000 and 1,000,000 rows.

Generates a seeded CSV (columns id,text; text about 60 characters of varied words) in a temp
dir, writes a classify job next to it (sink: a parquet file in the same temp dir), runs the job
in a fresh process with a fresh store and reads that process's peak RSS from os.wait4 (the
kernel's ru_maxrss for exactly that child). Checks the sink has every row.
Usage: .venv/bin/python bench/memory.py [--sizes 100000,1000000]   (takes several minutes)
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import CORRAL, ROOT, cmdline, last_json_line, write_result  # noqa: E402

GOAL_MB = 1024.0
SEED = 12345


def make_words(rng: random.Random, n: int = 5000) -> list[str]:
    consonants, vowels = "bcdfghjklmnprstvwz", "aeiou"
    words = set()
    while len(words) < n:
        k = rng.randint(1, 4)
        words.add("".join(rng.choice(consonants) + rng.choice(vowels) for _ in range(k)))
    return sorted(words)


def make_csv(path: Path, rows: int) -> None:
    rng = random.Random(SEED)
    words = make_words(rng)
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write("id,text\n")
        for i in range(rows):
            parts: list[str] = []
            n = 0
            while n < 60:
                w = rng.choice(words)
                parts.append(w)
                n += len(w) + 1
            f.write(f"{i},{' '.join(parts)}\n")


def make_job(tmp: Path, csv: Path, name: str) -> tuple[Path, Path]:
    sink = tmp / f"{name}.parquet"
    spec = {
        "name": name,
        "source": str(csv),
        "key": "id",
        "steps": [
            {
                "name": "topic",
                "task": "classify",
                "input": "{text}",
                "labels": {
                    "sport": "Games, teams and matches",
                    "money": "Prices, payments and markets",
                    "other": "Anything else",
                },
            }
        ],
        "sink": str(sink),
    }
    job = tmp / f"{name}.yaml"
    job.write_text(yaml.safe_dump(spec, sort_keys=False))
    return job, sink


def store_tables(store: Path) -> dict[str, float]:
    """MB per table and index in the store (SQLite's dbstat), to see where the disk goes."""
    import sqlite3

    db = sqlite3.connect(store)
    try:
        rows = db.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC").fetchall()
    except sqlite3.Error:
        return {}
    finally:
        db.close()
    return {name: round(size / 1e6, 1) for name, size in rows}


def run_measured(argv: list[str], env: dict, out: Path) -> tuple[int, float, int, list[tuple[float, float]]]:
    """(exit code, wall seconds, peak RSS in KiB, RSS samples [(s, MB)] every 0.5 s) of one child."""
    import threading

    samples: list[tuple[float, float]] = []
    with open(out, "w") as so, open(out.with_suffix(".err"), "w") as se:
        t0 = time.perf_counter()
        p = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=so, stderr=se)
        done = threading.Event()

        def sample() -> None:
            status = Path(f"/proc/{p.pid}/status")
            while not done.wait(0.5):
                try:
                    for line in status.read_text().splitlines():
                        if line.startswith("VmRSS:"):
                            samples.append((round(time.perf_counter() - t0, 1), round(int(line.split()[1]) / 1024, 1)))
                except (OSError, ValueError):
                    pass

        th = threading.Thread(target=sample, daemon=True)
        th.start()
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        done.set()
        th.join()
        p.returncode = os.waitstatus_to_exitcode(status)
    return p.returncode, wall, ru.ru_maxrss, samples


def rss_profile(samples: list[tuple[float, float]]) -> dict:
    """RSS at 10/25/50/75/90% of the run and when the peak sample came."""
    if not samples:
        return {}
    end = samples[-1][0]
    at = {}
    for q in (10, 25, 50, 75, 90):
        t = end * q / 100
        at[f"{q}%"] = min(samples, key=lambda s: abs(s[0] - t))[1]
    peak = max(samples, key=lambda s: s[1])
    return {"rss_mb_at": at, "peak_sample_mb": peak[1], "peak_sample_at_s": peak[0], "run_s": end}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="100000,1000000")
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    results = []
    failures = []
    with tempfile.TemporaryDirectory(prefix="corral-bench-mem-") as d:
        tmp = Path(d)
        for n in sizes:
            csv = tmp / f"rows{n}.csv"
            t0 = time.perf_counter()
            make_csv(csv, n)
            gen_s = time.perf_counter() - t0
            job, sink = make_job(tmp, csv, f"mem{n}")
            store = tmp / f"store{n}" / "corral.db"
            store.parent.mkdir()
            argv = [CORRAL, "run", str(job), "--model", "fake", "--json"]
            env = {**os.environ, "CORRAL_STORE": str(store)}
            env.pop("CORRAL_FAKE_CALL_LOG", None)
            print(f"{n:,} rows: CSV {csv.stat().st_size / 1e6:.1f} MB generated in {gen_s:.1f} s; running...", flush=True)
            rc, wall, maxrss_kb, samples = run_measured(argv, env, tmp / f"out{n}.json")
            prof = rss_profile(samples)
            out = (tmp / f"out{n}.json").read_text()
            if rc != 0:
                err = (tmp / f"out{n}.err").read_text()[-2000:]
                failures.append(f"{n} rows: exit {rc}: {err}")
                print(f"  FAILED exit {rc}: {err}")
                continue
            s = last_json_line(out)
            sink_rows = pq.read_metadata(sink).num_rows if sink.exists() else None
            store_mb = sum(f.stat().st_size for f in store.parent.iterdir()) / 1e6
            tables = store_tables(store)
            r = {
                "rows": n,
                "csv_mb": round(csv.stat().st_size / 1e6, 1),
                "command": "CORRAL_STORE=<tmp>/corral.db " + cmdline([CORRAL, "run", f"<tmp>/mem{n}.yaml", "--model", "fake", "--json"]),
                "exit_code": rc,
                "wall_s": round(wall, 2),
                "engine_elapsed_s": s["elapsed_s"],
                "rows_per_s_wall": round(n / wall, 1),
                "rows_per_s_engine": round(n / s["elapsed_s"], 1),
                "peak_rss_mb": round(maxrss_kb / 1024, 1),
                "summary_rows": s["rows"],
                "calls": s["calls"],
                "sink_rows": sink_rows,
                "store_mb": round(store_mb, 1),
                "store_tables_mb": tables,
                "rss_profile": prof,
                "rss_samples_mb": samples[:: max(1, len(samples) // 200)],
            }
            results.append(r)
            if prof:
                print("  RSS over the run (MB): " + ", ".join(f"{k} {v:.0f}" for k, v in prof["rss_mb_at"].items())
                      + f"; highest sample {prof['peak_sample_mb']:.0f} MB at {prof['peak_sample_at_s']:.0f} s "
                      f"of {prof['run_s']:.0f} s", flush=True)
            if sink_rows != n:
                failures.append(f"{n} rows: sink has {sink_rows} rows")
            if s["rows"]["in"] != n or s["rows"]["pending"] != 0:
                failures.append(f"{n} rows: summary {s['rows']}")
            print(f"  peak RSS {r['peak_rss_mb']:.1f} MB; wall {wall:.1f} s = {r['rows_per_s_wall']:,.0f} rows/s "
                  f"(engine {r['rows_per_s_engine']:,.0f} rows/s); sink {sink_rows:,} rows; store {store_mb:.0f} MB "
                  f"({', '.join(f'{k} {v:.0f}' for k, v in list(tables.items())[:4])} MB)",
                  flush=True)
            csv.unlink()
    big = next((r for r in results if r["rows"] == 1_000_000), None)
    passed = big is not None and big["peak_rss_mb"] < GOAL_MB and not failures
    growth = None
    small = next((r for r in results if r["rows"] == 100_000), None)
    if big and small:
        growth = round(big["peak_rss_mb"] / small["peak_rss_mb"], 2)
        print(f"peak RSS 1M / 100k = {growth}x for 10x the rows")
    print(f"goal: 1,000,000 rows well under {GOAL_MB:.0f} MB peak RSS: {'PASS' if passed else 'FAIL'}")
    if failures:
        print("FAILED:\n  " + "\n  ".join(failures))
    path = write_result("memory", {
        "script": ".venv/bin/python bench/memory.py --sizes " + args.sizes,
        "csv_seed": SEED,
        "runs": results,
        "rss_growth_1m_over_100k": growth,
        "failures": failures,
        "goal": f"peak RSS for 1,000,000 rows well under {GOAL_MB:.0f} MB, sink complete",
        "pass": passed,
    })
    print(f"wrote {path}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
