"""Concurrency: does Corral, with its defaults, fill a provider's capacity at any latency?

  .venv/bin/python bench/providers/concurrency.py [--rows 2000] [--rate-rows 3000] [--reps 3]

Against corral.testing.ProviderServer on 127.0.0.1, a classify job (one call per row, distinct
texts, `openai:gpt-4o-mini` with base_url = the server, no `concurrency:` in the job) runs as a
``corral run job.yaml --json`` subprocess with a fresh store:

  latency 0 and latency 200 ms, no rate limit: rows per second (the run's own elapsed time);
    beside it, a bare loop over the official `openai` SDK (AsyncOpenAI, 128 calls in flight) on
    the same server;
  latency 1 s, 6,000 requests/min enforced by the server and sent in its x-ratelimit headers
    (Corral is not told the limit): the achieved rate in steady state (the first and last 5 s
    left out) as a share of the limit, and the share of calls answered 429.

Medians over --reps runs, the configurations interleaved. Writes
bench/providers/results/concurrency.json.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

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

RATE_RPM = 6000
EDGE_S = 5.0
LABELS = ["a", "b", "c"]


def corral_run(rows: int, latency: float, rpm: int | None = None) -> dict[str, Any]:
    with TimedServer(latency_s=latency, rpm=rpm) as srv:
        tmp = Path(tempfile.mkdtemp(prefix="corral-conc-"))
        write_rows(tmp / "in.csv", rows)
        spec = {
            "name": "conc", "source": "in.csv", "key": "id",
            "model": {"name": MODEL, "base_url": srv.openai_url, "api_key": KEY},
            "steps": [{"name": "cat", "task": "classify", "input": "{text}", "labels": LABELS}],
            "sink": "out/o.csv",
        }
        write_job(tmp / "job.yaml", spec)
        r = run_corral(["run", "job.yaml", "--json"], tmp, tmp / "corral.db")
        by_status = {st: s.calls for st, s in srv.served_by_status().items()}
        events = list(srv.events)
    summary = r["summary"] or {}
    elapsed = summary.get("elapsed_s") or r["wall_s"]
    out: dict[str, Any] = {
        "rc": r["rc"], "latency_s": latency, "server_rpm": rpm, "rows": summary.get("rows"),
        "elapsed_s": elapsed, "rows_per_s": rows / elapsed if elapsed else None,
        "server_by_status": by_status,
        "command": f"CORRAL_STORE=<tmp>/corral.db {cmdline(r['argv'])} (job: classify, {rows} rows, "
                   f"model {{name: {MODEL}, base_url: <server>/v1}}, no concurrency key)",
    }
    if rpm:
        t0, t1 = r["t0"], r["t1"]
        steady_s = (t1 - t0) - 2 * EDGE_S
        ok = count_between(events, t0 + EDGE_S, t1 - EDGE_S, 200)
        answered = sum(by_status.values())
        out.update({
            "steady_per_s": ok / steady_s if steady_s > 0 else None,
            "steady_pct_of_limit": 100 * ok / steady_s / (rpm / 60) if steady_s > 0 else None,
            "share_429": by_status.get(429, 0) / answered if answered else None,
        })
    if r["rc"] != 0:
        out["stderr_tail"] = r["stderr_tail"][-600:]
    return out


def sdk_loop(rows: int, latency: float, in_flight: int = 128) -> dict[str, Any]:
    import openai

    with TimedServer(latency_s=latency) as srv:
        async def go() -> float:
            client = openai.AsyncOpenAI(api_key=KEY, base_url=srv.openai_url, max_retries=3)
            gate = asyncio.Semaphore(in_flight)
            system = "You classify text. Choose exactly one label from this list:\n" + "\n".join(
                f"- {x}" for x in LABELS) + '\nAnswer with JSON only: {"label": "<one label from the list>"}'

            async def one(i: int) -> None:
                async with gate:
                    await client.chat.completions.create(
                        model="gpt-4o-mini", max_tokens=50, temperature=0,
                        messages=[{"role": "system", "content": system},
                                  {"role": "user", "content": f"message number {i} about an order that arrived late"}])

            t0 = time.perf_counter()
            await asyncio.gather(*(one(i) for i in range(rows)))
            dt = time.perf_counter() - t0
            await client.close()
            return dt

        elapsed = asyncio.run(go())
    return {"latency_s": latency, "in_flight": in_flight, "elapsed_s": elapsed, "rows_per_s": rows / elapsed}


def med(xs: list[float | None]) -> float | None:
    got = [x for x in xs if x is not None]
    return round(statistics.median(got), 3) if got else None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--rate-rows", type=int, default=3000)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    runs: dict[str, list[dict[str, Any]]] = {"corral_0ms": [], "corral_200ms": [], "sdk_0ms": [], "sdk_200ms": [],
                                             "corral_rate_1s": []}
    for rep in range(args.reps):
        runs["corral_0ms"].append(corral_run(args.rows, 0.0))
        runs["corral_200ms"].append(corral_run(args.rows, 0.2))
        runs["sdk_0ms"].append(sdk_loop(args.rows, 0.0))
        runs["sdk_200ms"].append(sdk_loop(args.rows, 0.2))
        runs["corral_rate_1s"].append(corral_run(args.rate_rows, 1.0, RATE_RPM))
        print(f"rep {rep + 1}: " + ", ".join(
            f"{k} {v[-1].get('rows_per_s', 0):.1f} rows/s" for k, v in runs.items()), flush=True)
        print(f"  rate: {runs['corral_rate_1s'][-1].get('steady_pct_of_limit')}% of the limit, "
              f"429 share {runs['corral_rate_1s'][-1].get('share_429')}", flush=True)
    summary = {k: {"rows_per_s": med([r.get("rows_per_s") for r in v])} for k, v in runs.items()}
    summary["corral_rate_1s"].update({
        "steady_pct_of_limit": med([r.get("steady_pct_of_limit") for r in runs["corral_rate_1s"]]),
        "share_429": med([r.get("share_429") for r in runs["corral_rate_1s"]]),
    })
    c0, c200 = summary["corral_0ms"]["rows_per_s"], summary["corral_200ms"]["rows_per_s"]
    summary["ratio_200ms_to_0ms"] = round(c200 / c0, 3) if c0 and c200 else None
    print(summary, flush=True)
    write_json("concurrency", {
        "script": "bench/providers/concurrency.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
        "goal": {"ratio_200ms_to_0ms_min": 0.9, "rate_pct_of_limit_min": 95, "share_429_max": 0.01},
        "summary": summary, "runs": runs,
    })


if __name__ == "__main__":
    main()
