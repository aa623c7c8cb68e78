"""Outage: the provider goes down mid-run; the run pauses, then finishes with nothing lost.

The test server (127.0.0.1) answers after latency_s=0.05. A 1,000-row classify job runs through
``openai:gpt-4o-mini`` with concurrency 16 as a ``corral run job.yaml --json`` subprocess (fresh
store). 3 s after the server's first successful answer (so the run is under way) the script sets
``srv.configure(down=True)`` (every request answered 503) for 15 s, then ``down=False``.

Measured:
  * 503s served during the outage (and connection failures: none in down_mode "503")
  * progress during the outage: 200 answers served, and rows final in the store (sampled every
    0.25 s read-only from the SQLite store), at the start and end of the outage
  * time from the end of the outage to the next successful answer (the circuit breaker's probe)
  * final summary: rows written 1,000, quarantined 0; elapsed; and (--baseline) the same job
    without an outage, for comparison

Usage: .venv/bin/python bench/providers/outage.py [--rows 1000] [--down-after 3] [--down-for 15] [--no-baseline]
Writes bench/providers/results/outage.json.
"""

from __future__ import annotations

import argparse
import sqlite3
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from _util import (
    CORRAL,
    KEY,
    MODEL,
    Sampler,
    TimedServer,
    cmdline,
    corral_env,
    last_json_line,
    write_job,
    write_json,
    write_rows,
)

LATENCY = 0.05
CONCURRENCY = 16


def store_states(db_path: Path) -> dict[str, int]:
    if not db_path.exists():
        return {}
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=1.0)
    try:
        return dict(db.execute("SELECT state, COUNT(*) FROM records GROUP BY state").fetchall())
    except sqlite3.Error:
        return {}
    finally:
        db.close()


def final_rows(states: dict[str, int]) -> int:
    return sum(v for k, v in states.items() if k not in ("pending", "leased"))


def one(rows: int, outage: bool, down_after: float, down_for: float) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="corral-outage-"))
    write_rows(tmp / "in.csv", rows)
    store = tmp / "corral.db"
    with TimedServer(latency_s=LATENCY) as srv:
        spec = {
            "name": "outage", "source": "in.csv", "key": "id", "concurrency": CONCURRENCY,
            "model": {"name": MODEL, "base_url": srv.openai_url, "api_key": KEY},
            "steps": [{"name": "cat", "task": "classify", "input": "{text}", "labels": ["a", "b", "c"]}],
            "sink": "out/o.csv",
        }
        write_job(tmp / "job.yaml", spec)
        argv = [CORRAL, "run", "job.yaml", "--json"]
        sampler = Sampler(lambda: store_states(store), every=0.25)
        marks: dict[str, float] = {}

        def outage_thread() -> None:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not any(s == 200 for _, _, s in list(srv.events)):
                time.sleep(0.01)
            first_ok = min(t for t, _, s in srv.events if s == 200)
            marks["first_ok"] = first_ok
            time.sleep(max(0.0, first_ok + down_after - time.monotonic()))
            if proc.poll() is not None:
                marks["finished_before_outage"] = time.monotonic()
                return
            srv.configure(down=True)
            marks["down"] = time.monotonic()
            time.sleep(down_for)
            srv.configure(down=False)
            marks["up"] = time.monotonic()

        t0 = time.monotonic()
        proc = subprocess.Popen(argv, cwd=tmp, env=corral_env(store), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        sampler.start()
        th = threading.Thread(target=outage_thread, daemon=True)
        if outage:
            th.start()
        try:
            stdout, stderr = proc.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        t1 = time.monotonic()
        if outage:
            th.join(timeout=60)
        sampler.stop()
        events = list(srv.events)
        by_status = {st: s.calls for st, s in srv.served_by_status().items()}
        statuses = dict(srv.statuses)
    try:
        summary = last_json_line(stdout)
    except ValueError:
        summary = None
    res: dict = {
        "outage": outage,
        "command": f"CORRAL_STORE=<tmp>/corral.db {cmdline(argv)}  (cwd <tmp>; {rows} rows, concurrency {CONCURRENCY}, "
                   f"model {{name: {MODEL}, base_url: <server>/v1}}, server latency_s {LATENCY})",
        "rc": proc.returncode, "wall_s": round(t1 - t0, 3), "summary": summary,
        "server_by_status": by_status,
        "connection_resets": sum(v for (label, st), v in statuses.items() if st == 0),
        "stderr_tail": stderr[-800:],
    }

    def rel(t: float) -> float:
        return round(t - t0, 3)

    if outage and "down" in marks:
        down, up = marks["down"], marks["up"]
        def final_at(t: float) -> int | None:
            before = [v for ts, v in sampler.samples if ts <= t and isinstance(v, dict)]
            return final_rows(before[-1]) if before else None
        ok_after = [t for t, _, s in events if s == 200 and t >= up]
        res.update({
            "first_ok_s": rel(marks["first_ok"]), "down_at_s": rel(down), "up_at_s": rel(up),
            "outage_length_s": round(up - down, 3),
            "served_503_during_outage": sum(1 for t, _, s in events if down <= t < up and s == 503),
            "served_503_total": by_status.get(503, 0),
            "served_200_during_outage": sum(1 for t, _, s in events if down <= t < up and s == 200),
            "served_200_first_0.5s_of_outage": sum(1 for t, _, s in events if down <= t < down + 0.5 and s == 200),
            "rows_final_at_down": final_at(down),
            "rows_final_at_down_plus_1s": final_at(down + 1.0),
            "rows_final_at_up": final_at(up),
            "first_ok_after_up_s": round(min(ok_after) - up, 3) if ok_after else None,
            "failed_calls_per_second_of_outage": [
                sum(1 for t, _, s in events if down + i <= t < down + i + 1 and s != 200) for i in range(int(up - down) + 1)
            ],
            "requests_503_times_rel_down_s": [round(t - down, 3) for t, _, s in events if down <= t < up + 1 and s == 503],
        })
    elif outage:
        res["finished_before_outage"] = True
    res["progress_samples"] = [(rel(ts), final_rows(v) if isinstance(v, dict) else v) for ts, v in sampler.samples][::2]
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--down-after", type=float, default=3.0)
    ap.add_argument("--down-for", type=float, default=15.0)
    ap.add_argument("--no-baseline", action="store_true")
    args = ap.parse_args()
    out: dict = {"script": f"bench/providers/outage.py --rows {args.rows} --down-after {args.down_after} --down-for {args.down_for}"
                 + (" --no-baseline" if args.no_baseline else "")}
    r = one(args.rows, True, args.down_after, args.down_for)
    out["outage_run"] = r
    s = r["summary"] or {}
    rows = s.get("rows", {})
    print(f"outage run: rc={r['rc']} wall={r['wall_s']}s elapsed={s.get('elapsed_s')} rows={rows} calls={s.get('calls')}")
    print({k: v for k, v in r.items() if k not in ("summary", "stderr_tail", "progress_samples", "requests_503_times_rel_down_s", "command")})
    if not args.no_baseline:
        b = one(args.rows, False, 0, 0)
        out["baseline_run"] = b
        bs = b["summary"] or {}
        print(f"baseline (no outage): rc={b['rc']} wall={b['wall_s']}s elapsed={bs.get('elapsed_s')} rows={bs.get('rows')} statuses={b['server_by_status']}")
    checks = {
        "outage_happened_mid_run": "down_at_s" in r and (r.get("rows_final_at_down") or 0) < args.rows,
        "progress_stopped": "down_at_s" in r and r.get("rows_final_at_down_plus_1s") == r.get("rows_final_at_up"),
        "nothing_lost": r["rc"] == 0 and rows.get("written") == args.rows and rows.get("quarantined") == 0
        and rows.get("pending") == 0,
    }
    out["checks"] = checks
    out["pass"] = all(checks.values())
    write_json("outage", out)
    print(f"checks {checks} -> {'PASS' if out['pass'] else 'FAIL'}")


if __name__ == "__main__":
    main()
