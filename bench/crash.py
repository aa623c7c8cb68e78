"""Crash safety: SIGKILL `corral run` five times at random moments, then finish the run.

The job is the SMS job with model {name: fake, latency: 0.002}, an absolute source path and a
temporary sink. CORRAL_FAKE_CALL_LOG makes the fake model append each call's request hash to a
file, across processes. After the final run the script checks:

  (a) the summary: rows in = 5,574 = written + quarantined, pending 0
  (b) the parquet sink: exactly 5,574 rows and 5,574 distinct `_key` values
  (c) the ledger has no request hash paid (replayed=0) twice, and
      call-log lines - paid ledger rows <= kills x concurrency
  (d) every request hash logged more than once is paid at most once in the ledger

Kill moments are uniform in [0.3 s, 80% of a normal run]. A resumed run has less to do, so later
kills often find the run already finished; --adaptive instead scales each kill's window to the
share of rows still unfinished (0.8 x (fixed cost + processing time x share left)), and --latency
slows the fake model, so that kills land mid-run (the second variant in run_all.py).

Exits 1 if an invariant fails.
Usage: .venv/bin/python bench/crash.py [--seed N] [--kills 5] [--latency 0.002] [--adaptive]
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import CORRAL, ROOT, SMS_ROWS, SMS_TSV, cmdline, last_json_line, median, write_result  # noqa: E402

LATENCY = 0.002


def make_job(tmp: Path, latency: float) -> tuple[Path, Path]:
    spec = yaml.safe_load((ROOT / "sms-triage.yaml").read_text())
    spec["name"] = "sms-crash"
    spec["source"] = str(SMS_TSV)
    spec["model"] = {"name": "fake", "latency": latency}
    sink = tmp / "sms.parquet"
    spec["sink"] = str(sink)
    job = tmp / "sms-crash.yaml"
    job.write_text(yaml.safe_dump(spec, sort_keys=False))
    return job, sink


def concurrency(job: Path) -> int:
    """The most calls in flight at once: the job's ``concurrency``, else the engine's own default
    for the model (``default_concurrency``; the adaptive limit stays within it)."""
    import corral
    from corral.engine import default_concurrency, make_model

    j = corral.Job.load(job)
    return j.concurrency or default_concurrency(make_model(j.model, j.base_dir))


def store_counts(store: Path) -> dict:
    if not store.exists():
        return {}
    db = sqlite3.connect(store)
    try:
        states = dict(db.execute("SELECT state, COUNT(*) FROM records GROUP BY state").fetchall())
        paid = db.execute("SELECT COUNT(*) FROM ledger WHERE replayed=0").fetchone()[0]
        return {"states": states, "ledger_paid": paid}
    except sqlite3.Error as e:  # e.g. killed before the schema existed
        return {"error": str(e)}
    finally:
        db.close()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=None, help="RNG seed for the kill times")
    ap.add_argument("--kills", type=int, default=5)
    ap.add_argument("--calib-runs", type=int, default=3)
    ap.add_argument("--latency", type=float, default=LATENCY, help="fake model latency per call (s)")
    ap.add_argument("--adaptive", action="store_true",
                    help="scale each kill window to the work left, so that kills land mid-run")
    args = ap.parse_args()
    name = "crash" if args.latency == LATENCY else f"crash_latency{args.latency:g}"
    if args.adaptive:
        name += "_adaptive"
    seed = args.seed if args.seed is not None else int(time.time()) % 100_000
    extra = "" if args.latency == LATENCY else f" --latency {args.latency:g}"
    extra += " --adaptive" if args.adaptive else ""
    print(f"seed {seed}, fake latency {args.latency:g} s  (rerun with: .venv/bin/python bench/crash.py --seed {seed}{extra})")
    rng = random.Random(seed)
    failures: list[str] = []

    with tempfile.TemporaryDirectory(prefix="corral-bench-crash-") as d:
        tmp = Path(d)
        job, sink = make_job(tmp, args.latency)
        conc = concurrency(job)
        argv = [CORRAL, "run", str(job), "--json"]

        # 1. a normal run's duration (fresh stores, no call log), median of a few
        calib = []
        for i in range(args.calib_runs):
            env = {**os.environ, "CORRAL_STORE": str(tmp / f"calib{i}.db")}
            env.pop("CORRAL_FAKE_CALL_LOG", None)
            t0 = time.perf_counter()
            p = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True)
            calib.append(time.perf_counter() - t0)
            if p.returncode != 0:
                raise SystemExit(f"calibration run failed: {p.stderr[-2000:]}")
        normal = median(calib)
        hi = 0.8 * normal
        # a run with nothing left to do (the fixed cost: start, imports, sinks), for --adaptive
        startups = []
        for i in range(args.calib_runs):
            env = {**os.environ, "CORRAL_STORE": str(tmp / f"calib{i}.db")}
            env.pop("CORRAL_FAKE_CALL_LOG", None)
            t0 = time.perf_counter()
            subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, check=True)
            startups.append(time.perf_counter() - t0)
        fixed = median(startups)
        print(f"normal run: {normal:.2f} s (runs {', '.join(f'{x:.2f}' for x in calib)}); run with nothing left "
              f"to do: {fixed:.2f} s; concurrency {conc}")
        if args.adaptive:
            print(f"kills uniform in [0.3, 0.8 x ({fixed:.2f} + {normal - fixed:.2f} x share of rows unfinished)] s")
        else:
            print(f"kills uniform in [0.3, {hi:.2f}] s")

        # 2. kills
        store = tmp / "corral.db"
        log = tmp / "calls.log"
        env = {**os.environ, "CORRAL_STORE": str(store), "CORRAL_FAKE_CALL_LOG": str(log)}
        kills = []
        for k in range(args.kills):
            before = (store_counts(store).get("states") or {})
            already_final = bool(before) and before.get("pending", 0) + before.get("leased", 0) == 0
            if args.adaptive:
                left = (before.get("pending", 0) + before.get("leased", 0)) / SMS_ROWS if before else 1.0
                k_hi = max(0.3, 0.8 * (fixed + (normal - fixed) * left))
            else:
                k_hi = hi
            at = rng.uniform(0.3, k_hi)
            p = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            t0 = time.perf_counter()
            exited_early = False
            try:
                p.wait(timeout=at)
                exited_early = True  # finished before the kill moment
            except subprocess.TimeoutExpired:
                os.kill(p.pid, signal.SIGKILL)
                p.wait()
            lived = time.perf_counter() - t0
            p.stdout.close()
            p.stderr.close()
            lines = len(log.read_text().splitlines()) if log.exists() else 0
            snap = store_counts(store)
            states = snap.get("states") or {}
            before_lines = kills[-1]["call_log_lines"] if kills else 0
            if already_final:
                phase = "nothing left to do (every row was final before this attempt)"
                if exited_early:
                    phase += "; it exited before the kill moment"
            elif exited_early:
                phase = "process had already exited (run finished before the kill moment)"
            elif not states:
                phase = "starting up (no records in the store yet)"
            elif states.get("done", 0) == before.get("done", 0) and lines == before_lines:
                phase = "start-up (killed before it made progress)"
            elif states.get("pending", 0) + states.get("leased", 0) > 0:
                phase = "mid-run (rows unfinished)"
            else:
                phase = "after every row was final (writing sinks / exiting)"
            kills.append({"kill": k + 1, "window_s": [0.3, round(k_hi, 3)], "at_s": round(at, 3), "lived_s": round(lived, 3),
                          "exit_code": p.returncode, "exited_before_kill": exited_early,
                          "phase": phase, "call_log_lines": lines, **snap})
            print(f"kill {k + 1}: at {at:.2f} s, {phase} (exit {p.returncode}); "
                  f"store {snap.get('states', snap)}; call log {lines} lines, ledger paid {snap.get('ledger_paid')}")
        real_kills = sum(1 for k in kills if not k["exited_before_kill"])
        mid_run = sum(1 for k in kills if k["phase"].startswith("mid-run"))

        # 3. final run to completion
        t0 = time.perf_counter()
        p = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True)
        final_wall = time.perf_counter() - t0
        if p.returncode != 0:
            failures.append(f"final run exited {p.returncode}: {p.stderr[-1000:]}")
            summary: dict = {}
        else:
            summary = last_json_line(p.stdout)
        print(f"kills that landed: {real_kills} ({mid_run} mid-run with rows unfinished)")
        print(f"final run: exit {p.returncode}, {final_wall:.2f} s, rows {summary.get('rows')}, calls {summary.get('calls')}")

        # (a) summary accounting
        rows = summary.get("rows", {})
        a_ok = (
            rows.get("in") == SMS_ROWS
            and rows.get("written", 0) + rows.get("quarantined", 0) == SMS_ROWS
            and rows.get("pending") == 0
            and summary.get("status") == "finished"
        )
        if not a_ok:
            failures.append(f"(a) summary does not account for {SMS_ROWS} rows: {rows}")

        # (b) sink rows and distinct keys
        sink_rows = sink_keys = None
        if sink.exists():
            t = pq.read_table(sink)
            sink_rows = t.num_rows
            sink_keys = len(set(t.column("_key").to_pylist())) if "_key" in t.column_names else None
        q = sink.with_name("sms.quarantine.parquet")
        q_rows = pq.read_metadata(q).num_rows if q.exists() else None
        b_ok = sink_rows == SMS_ROWS and sink_keys == SMS_ROWS
        if not b_ok:
            failures.append(f"(b) sink has {sink_rows} rows and {sink_keys} distinct keys, want {SMS_ROWS}")

        # litter: temporary sink files left behind by processes killed while writing the sinks
        leftovers = sorted(x.name for x in tmp.iterdir() if x.name.startswith(".") and x.name.endswith(".tmp"))
        if leftovers:
            print(f"note: {len(leftovers)} temporary sink file(s) left beside the sink: {', '.join(leftovers)}")

        # (c) + (d) ledger against the call log
        db = sqlite3.connect(store)
        paid_rows = db.execute("SELECT COUNT(*) FROM ledger WHERE replayed=0").fetchone()[0]
        replayed_rows = db.execute("SELECT COUNT(*) FROM ledger WHERE replayed=1").fetchone()[0]
        paid_by_hash = Counter(
            dict(db.execute("SELECT request_hash, COUNT(*) FROM ledger WHERE replayed=0 GROUP BY request_hash"))
        )
        responses = db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]
        db.close()
        paid_twice = {h: n for h, n in paid_by_hash.items() if n > 1}
        logged = log.read_text().splitlines() if log.exists() else []
        log_counts = Counter(logged)
        extra_calls = len(logged) - paid_rows
        allowed = real_kills * conc
        c_ok = not paid_twice and 0 <= extra_calls <= allowed
        if paid_twice:
            failures.append(f"(c) {len(paid_twice)} request hashes paid more than once in the ledger, "
                            f"e.g. {next(iter(paid_twice.items()))}")
        if not 0 <= extra_calls <= allowed:
            failures.append(f"(c) call log {len(logged)} lines - ledger paid {paid_rows} = {extra_calls}, "
                            f"allowed 0..{allowed} ({real_kills} kills x concurrency {conc})")
        repeated = {h: n for h, n in log_counts.items() if n > 1}
        bad_d = {h: paid_by_hash.get(h, 0) for h in repeated if paid_by_hash.get(h, 0) > 1}
        d_ok = not bad_d
        if bad_d:
            failures.append(f"(d) {len(bad_d)} hashes called more than once are paid more than once")
        logged_not_paid = sum(1 for h in log_counts if h not in paid_by_hash)

        print(f"(a) rows in {rows.get('in')} = written {rows.get('written')} + quarantined {rows.get('quarantined')}, "
              f"pending {rows.get('pending')}: {'OK' if a_ok else 'FAIL'}")
        print(f"(b) sink {sink_rows} rows, {sink_keys} distinct _key (quarantine file {q_rows} rows): {'OK' if b_ok else 'FAIL'}")
        print(f"(c) ledger paid rows {paid_rows} (distinct hashes {len(paid_by_hash)}, paid twice {len(paid_twice)}); "
              f"call log {len(logged)} lines; extra calls {extra_calls} <= {real_kills} kills x {conc} = {allowed}: "
              f"{'OK' if c_ok else 'FAIL'}")
        print(f"(d) hashes called more than once: {len(repeated)}; of those paid more than once: {len(bad_d)}: "
              f"{'OK' if d_ok else 'FAIL'}")

        result = {
            "command": "CORRAL_STORE=<tmp>/corral.db CORRAL_FAKE_CALL_LOG=<tmp>/calls.log "
            + cmdline([CORRAL, "run", "<tmp>/sms-crash.yaml", "--json"])
            + f"  (SIGKILLed {args.kills} times, then run to the end)",
            "script": f".venv/bin/python bench/crash.py --seed {seed}{extra}",
            "job": {"model": {"name": "fake", "latency": args.latency}, "source": str(SMS_TSV), "sink": "<tmp>/sms.parquet"},
            "seed": seed,
            "concurrency": conc,
            "normal_run_s": round(normal, 3),
            "calibration_runs_s": [round(x, 3) for x in calib],
            "nothing_left_run_s": round(fixed, 3),
            "nothing_left_runs_s": [round(x, 3) for x in startups],
            "adaptive": args.adaptive,
            "kill_window_s": [0.3, round(hi, 3)],
            "kills": kills,
            "kills_that_landed": real_kills,
            "kills_mid_run": mid_run,
            "final": {"exit_code": p.returncode, "wall_s": round(final_wall, 3), "summary": summary},
            "checks": {
                "a_rows_accounted": a_ok,
                "b_sink": {"ok": b_ok, "rows": sink_rows, "distinct_keys": sink_keys, "quarantine_rows": q_rows},
                "c_ledger": {
                    "ok": c_ok, "paid_rows": paid_rows, "replayed_rows": replayed_rows,
                    "distinct_paid_hashes": len(paid_by_hash), "hashes_paid_twice": len(paid_twice),
                    "responses_rows": responses, "call_log_lines": len(logged),
                    "extra_calls": extra_calls, "allowed_extra": allowed,
                },
                "d_repeats": {"ok": d_ok, "hashes_called_more_than_once": len(repeated),
                               "max_calls_for_one_hash": max(log_counts.values(), default=0),
                               "repeated_and_paid_twice": len(bad_d),
                               "logged_hashes_not_in_ledger": logged_not_paid},
            },
            "leftover_temp_files": leftovers,
            "failures": failures,
            "pass": not failures,
        }
    path = write_result(name, result)
    print("ALL INVARIANTS HOLD" if not failures else "FAILED:\n  " + "\n  ".join(failures))
    print(f"wrote {path}")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
