"""Rate limits: does Corral run at the provider's request limit without being answered 429?

The test server (corral.testing.ProviderServer, 127.0.0.1) allows rpm=600 in the default 60 s
sliding window and answers each call after latency_s=1.0 s; every model-call response carries
OpenAI's x-ratelimit-* headers. A 2,000-row classify job (one call per row, distinct texts) runs
through ``openai:gpt-4o-mini`` (OpenAIModel, base_url = the server) with concurrency 32, as a
``corral run job.yaml --json`` subprocess with a fresh store:

  (a) the job's model does not set rpm: Corral must learn the limit from the headers
  (b) the job's model sets rpm: 600

Measured from the server's own log of answers (time each answer was produced):
  * achieved rate = successful (200) calls / wall seconds of the corral process;
    also over the steady part, excluding the first and last 10 s of the process
  * as % of the limit (10 requests/s); goal >= 95 %
  * share of calls answered 429 = 429 / all answered calls; goal < 1 %

Usage: .venv/bin/python bench/providers/rate_limit.py [--variants a,b] [--reps 1] [--rows 2000] [--window 60]
Writes bench/providers/results/rate_limit.json (with --window W other than 60, the server's
rate_window_s is W and the results go to rate_limit_windowWs.json: the same 600 rpm enforced
over every W-second window, e.g. W=1: at most 10 in any second).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import Counter
from pathlib import Path

from _util import (
    KEY,
    MODEL,
    TimedServer,
    cmdline,
    count_between,
    run_corral,
    write_job,
    write_json,
    write_rows,
)

RPM = 600
LATENCY = 1.0
CONCURRENCY = 32
EDGE_S = 10.0


def one(variant: str, rows: int, window: float = 60.0) -> dict:
    with TimedServer(rpm=RPM, latency_s=LATENCY, rate_window_s=window) as srv:
        tmp = Path(tempfile.mkdtemp(prefix=f"corral-rl-{variant}-"))
        write_rows(tmp / "in.csv", rows)
        model = {"name": MODEL, "base_url": srv.openai_url, "api_key": KEY}
        if variant == "b":
            model["rpm"] = RPM
        spec = {
            "name": f"ratelimit-{variant}", "source": "in.csv", "key": "id", "concurrency": CONCURRENCY,
            "model": model,
            "steps": [{"name": "cat", "task": "classify", "input": "{text}", "labels": ["a", "b", "c"]}],
            "sink": "out/o.csv",
        }
        write_job(tmp / "job.yaml", spec)
        r = run_corral(["run", "job.yaml", "--json"], tmp, tmp / "corral.db")
        by_status = {st: s.calls for st, s in srv.served_by_status().items()}
        events = list(srv.events)
    t0, t1, wall = r["t0"], r["t1"], r["wall_s"]
    ok = by_status.get(200, 0)
    answered = sum(by_status.values())
    n429 = by_status.get(429, 0)
    steady_ok = count_between(events, t0 + EDGE_S, t1 - EDGE_S, 200)
    steady_429 = count_between(events, t0 + EDGE_S, t1 - EDGE_S, 429)
    steady_s = wall - 2 * EDGE_S
    ok_times = [t for t, k, s in events if s == 200]
    span = (max(ok_times) - min(ok_times)) if len(ok_times) > 1 else float("nan")
    limit_per_s = RPM / 60.0
    per_s_ok = Counter(int(t - t0) for t, k, s in events if s == 200)
    per_s_429 = Counter(int(t - t0) for t, k, s in events if s == 429)
    secs = int(wall) + 1
    summary = r["summary"] or {}
    out = {
        "variant": variant,
        "rate_window_s": window,
        "job_rpm": RPM if variant == "b" else None,
        "command": f"CORRAL_STORE=<tmp>/corral.db {cmdline(r['argv'])}  (cwd <tmp>; job: {spec['name']}, "
                   f"model {{name: {MODEL}, base_url: <server>/v1{', rpm: 600' if variant == 'b' else ''}}}, "
                   f"concurrency {CONCURRENCY}, {rows} rows)",
        "rc": r["rc"],
        "wall_s": round(wall, 3),
        "corral_elapsed_s": summary.get("elapsed_s"),
        "rows": summary.get("rows"),
        "calls": summary.get("calls"),
        "server_by_status": by_status,
        "ok_calls": ok,
        "answered_calls": answered,
        "rate_429_share": n429 / answered if answered else None,
        "rate_overall_per_s": ok / wall,
        "rate_overall_pct_of_limit": 100 * ok / wall / limit_per_s,
        "rate_by_elapsed_per_s": (ok / summary["elapsed_s"]) if summary.get("elapsed_s") else None,
        "rate_first_to_last_answer_per_s": (len(ok_times) - 1) / span if span == span and span > 0 else None,
        "steady_window_s": [EDGE_S, round(wall - EDGE_S, 3)],
        "steady_ok": steady_ok,
        "steady_429": steady_429,
        "rate_steady_per_s": steady_ok / steady_s,
        "rate_steady_pct_of_limit": 100 * steady_ok / steady_s / limit_per_s,
        "first_ok_after_s": round(min(ok_times) - t0, 3) if ok_times else None,
        "last_ok_after_s": round(max(ok_times) - t0, 3) if ok_times else None,
        "ok_per_second": [per_s_ok.get(i, 0) for i in range(secs)],
        "r429_per_second": [per_s_429.get(i, 0) for i in range(secs)],
        "stderr_tail": r["stderr_tail"][-600:],
    }
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", default="a,b")
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--window", type=float, default=60.0, help="server rate_window_s (default 60)")
    args = ap.parse_args()
    runs = []
    order = [v for _ in range(args.reps) for v in args.variants.split(",")]
    for v in order:
        started = time.strftime("%H:%M:%S")
        res = one(v, args.rows, args.window)
        res["rep"] = sum(1 for x in runs if x["variant"] == v) + 1
        res["started"] = started
        runs.append(res)
        print(
            f"[{v} #{res['rep']}] rc={res['rc']} wall={res['wall_s']:.1f}s rows={res['rows']} 200={res['ok_calls']} "
            f"429={res['server_by_status'].get(429, 0)} ({100 * (res['rate_429_share'] or 0):.2f}%) "
            f"rate={res['rate_overall_per_s']:.2f}/s ({res['rate_overall_pct_of_limit']:.1f}% of 10/s) "
            f"steady={res['rate_steady_per_s']:.2f}/s ({res['rate_steady_pct_of_limit']:.1f}%)",
            flush=True,
        )
        name = "rate_limit" if args.window == 60.0 else f"rate_limit_window{args.window:g}s"
        write_json(name, {
            "script": "bench/providers/rate_limit.py " + " ".join(f"--{k} {v}" for k, v in vars(args).items()),
            "server": {"rpm": RPM, "rate_window_s": args.window, "latency_s": LATENCY},
            "goal": {"rate_pct_of_limit_min": 95, "share_429_max_pct": 1},
            "runs": runs,
        })


if __name__ == "__main__":
    main()
