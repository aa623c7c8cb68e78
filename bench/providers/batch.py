"""Batch mode: kill while polling, resume without resubmitting, and the batch price.

A 500-row classify job whose step has ``mode: batch`` runs through ``openai:gpt-4o-mini``
(OpenAIModel against the test server on 127.0.0.1, which speaks OpenAI's Files and Batch API)
with prices {input: 0.15, output: 0.6, batch_discount: 0.5} USD per million tokens and
batch_poll_s 0.2:

  1. the server holds batches open (batch_polls=100000); ``corral run job.yaml --json`` starts;
     once the server has one batch submission and has been polled, the process is SIGKILLed
  2. ``corral status --json`` must list the batch as in flight
  3. the server lets batches end at the next poll (batch_polls=1); ``corral run job.yaml --json``
     again: it must poll the same batch, not submit a new one (server submissions unchanged)
  4. the same job with ``mode: online`` on a fresh store and a fresh server; cost ratio
     batch / online (goal 0.5)

Usage: .venv/bin/python bench/providers/batch.py [--rows 500]
Writes bench/providers/results/batch.json.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import tempfile
import time
from decimal import Decimal
from pathlib import Path

from _util import (
    CORRAL,
    KEY,
    MODEL,
    TimedServer,
    cmdline,
    corral_env,
    last_json_line,
    run_corral,
    write_job,
    write_json,
    write_rows,
)

PRICES = {"input": 0.15, "output": 0.6, "batch_discount": 0.5}
POLL_S = 0.2


def spec(url: str, mode: str, sink: str) -> dict:
    return {
        "name": "batchbench", "source": "in.csv", "key": "id",
        "model": {"name": MODEL, "base_url": url, "api_key": KEY, "batch_poll_s": POLL_S, "prices": PRICES},
        "steps": [{"name": "cat", "task": "classify", "input": "{text}", "labels": ["a", "b", "c"], "mode": mode}],
        "sink": sink,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=500)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="corral-batch-"))
    write_rows(tmp / "in.csv", args.rows)
    store = tmp / "batch.db"
    out: dict = {"script": f"bench/providers/batch.py --rows {args.rows}", "rows": args.rows, "prices": PRICES,
                 "batch_poll_s": POLL_S}
    with TimedServer(batch_polls=100_000) as srv:
        write_job(tmp / "job.yaml", spec(srv.openai_url, "batch", "out/batch.csv"))
        argv = [CORRAL, "run", "job.yaml", "--json"]
        t0 = time.monotonic()
        proc = subprocess.Popen(argv, cwd=tmp, env=corral_env(store), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while srv.submissions["batches"] < 1 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        t_sub = time.monotonic() - t0
        # polling now: wait for a few polls of that batch
        while srv.requests["GET /v1/batches/{id}"] < 3 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        alive = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        t_kill = time.monotonic() - t0
        before = dict(srv.submissions)
        polls_before = srv.requests["GET /v1/batches/{id}"]
        out["first_run"] = {
            "command": f"CORRAL_STORE=<tmp>/batch.db {cmdline(argv)}  (cwd <tmp>; batch_polls=100000 on the server)",
            "batch_submitted_after_s": round(t_sub, 3), "killed_after_s": round(t_kill, 3),
            "alive_at_kill": alive, "returncode": proc.returncode,
            "server_submissions": before, "server_polls": polls_before,
        }
        st = subprocess.run([CORRAL, "status", "--json"], cwd=tmp, env=corral_env(store),
                            capture_output=True, text=True, timeout=120)
        try:
            status = last_json_line(st.stdout)
        except ValueError:
            status = {"unparsed_stdout": st.stdout[-1000:], "stderr": st.stderr[-1000:]}
        out["status_after_kill"] = {"command": "CORRAL_STORE=<tmp>/batch.db .venv/bin/corral status --json",
                                    "rc": st.returncode, "json": status}
        srv.configure(batch_polls=1)
        r = run_corral(["run", "job.yaml", "--json"], tmp, store)
        after = dict(srv.submissions)
        out["resume"] = {
            "command": f"CORRAL_STORE=<tmp>/batch.db {cmdline(r['argv'])}  (cwd <tmp>; batch_polls=1 on the server)",
            "rc": r["rc"], "wall_s": round(r["wall_s"], 3), "summary": r["summary"],
            "server_submissions": after,
            "server_polls_during_resume": srv.requests["GET /v1/batches/{id}"] - polls_before,
            "server_batch_served": vars(srv.served("openai_batch")),
            "server_online_served": vars(srv.served("openai", None)),
            "stderr_tail": r["stderr_tail"][-600:],
        }
    with TimedServer() as srv2:
        write_job(tmp / "job_online.yaml", spec(srv2.openai_url, "online", "out/online.csv"))
        r2 = run_corral(["run", "job_online.yaml", "--json"], tmp, tmp / "online.db")
        out["online"] = {
            "command": f"CORRAL_STORE=<tmp>/online.db {cmdline(r2['argv'])}  (cwd <tmp>; same job, mode: online, fresh store and server)",
            "rc": r2["rc"], "wall_s": round(r2["wall_s"], 3), "summary": r2["summary"],
            "server_online_served": vars(srv2.served("openai")),
            "server_submissions": dict(srv2.submissions),
        }
    sb, so = out["resume"]["summary"] or {}, out["online"]["summary"] or {}
    cb, co = sb.get("cost_usd"), so.get("cost_usd")
    ratio = (Decimal(str(cb)) / Decimal(str(co))) if cb and co else None
    batches_listed = status.get("batches") if isinstance(status, dict) else None
    checks = {
        "killed_while_polling": out["first_run"]["alive_at_kill"] and before.get("batches") == 1 and polls_before >= 1,
        "status_lists_batch_in_flight": bool(batches_listed) and len(batches_listed) == 1,
        "no_new_submission_on_resume": after.get("batches") == before.get("batches") and after.get("files") == before.get("files"),
        "all_rows_written": (sb.get("rows") or {}).get("written") == args.rows,
        "cost_ratio_half": ratio == Decimal("0.5"),
    }
    out["cost_ratio_batch_over_online"] = None if ratio is None else float(ratio)
    out["checks"] = checks
    out["pass"] = all(checks.values())
    write_json("batch", out)
    print(f"first run: batch submitted at {t_sub:.2f}s, killed at {t_kill:.2f}s (alive {alive}), submissions {before}, polls {polls_before}")
    print(f"status --json: status={status.get('status') if isinstance(status, dict) else None} batches={json.dumps(batches_listed)[:400]}")
    print(f"resume: rc={r['rc']} rows={sb.get('rows')} calls={sb.get('calls')} tokens={sb.get('tokens')} cost={cb}; submissions {before} -> {after}")
    print(f"online: rc={r2['rc']} rows={so.get('rows')} calls={so.get('calls')} tokens={so.get('tokens')} cost={co}")
    print(f"cost ratio batch/online = {ratio}; checks {checks} -> {'PASS' if out['pass'] else 'FAIL'}")


if __name__ == "__main__":
    main()
