"""Faults: every row ends in exactly one state, no bad answer is written, ledger = server count.

The test server (127.0.0.1) answers 20 % of calls with a 500/503 (error_rate=0.2), and of the
answers it gives, 5 % are truncated (finish_reason length, cut JSON), 2 % refused, 3 % not JSON
(malformed_rate=0.03); latency uniform 0-20 ms. A 1,000-row classify job (labels a, b, c; one
call per row and try, distinct texts) runs through ``openai:gpt-4o-mini`` as a
``corral run job.yaml --json`` subprocess with a fresh store.

Checks:
  (1) rows in = written + quarantined, pending 0 (and review/skipped 0)
  (2) the sink holds `written` rows, distinct ids, every `cat` value one of a, b, c
  (3) summary calls.made == server's count of 200 answers; tokens input/output == the server's
      prompt/completion tokens in those answers

Usage: .venv/bin/python bench/providers/faults.py [--rows 1000] [--seed 7]
Writes bench/providers/results/faults.json.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
from collections import Counter
from pathlib import Path

from _util import KEY, MODEL, TimedServer, cmdline, run_corral, write_job, write_json, write_rows

FAULTS = {"error_rate": 0.2, "truncation_rate": 0.05, "refusal_rate": 0.02, "malformed_rate": 0.03,
          "latency_s": (0.0, 0.02)}
LABELS = ["a", "b", "c"]


class FinishCountingServer(TimedServer):
    """Also counts the kind of every generated answer (stop, length, refusal, malformed)."""

    def __init__(self, **kw):
        self.finishes: Counter[str] = Counter()
        super().__init__(**kw)

    def _generate(self, *a, **kw):
        ans = super()._generate(*a, **kw)
        with self._lock:
            self.finishes[ans.finish] += 1
        return ans


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--concurrency", type=int, default=16)
    args = ap.parse_args()
    with FinishCountingServer(seed=args.seed, **FAULTS) as srv:
        tmp = Path(tempfile.mkdtemp(prefix="corral-faults-"))
        write_rows(tmp / "in.csv", args.rows)
        spec = {
            "name": "faults", "source": "in.csv", "key": "id", "concurrency": args.concurrency,
            "model": {"name": MODEL, "base_url": srv.openai_url, "api_key": KEY},
            "steps": [{"name": "cat", "task": "classify", "input": "{text}", "labels": LABELS}],
            "sink": "out/o.csv",
        }
        write_job(tmp / "job.yaml", spec)
        r = run_corral(["run", "job.yaml", "--json"], tmp, tmp / "corral.db")
        ok = srv.served(status=200)
        by_status = {st: s.calls for st, s in srv.served_by_status().items()}
        finishes = dict(srv.finishes)
    s = r["summary"] or {}
    rows = s.get("rows", {})
    with open(tmp / "out" / "o.csv", newline="") as f:
        sink = list(csv.DictReader(f))
    qpath = tmp / "out" / "o.quarantine.csv"
    quarantine = []
    if qpath.exists():
        with open(qpath, newline="") as f:
            quarantine = list(csv.DictReader(f))
    bad_values = [x for x in sink if x.get("cat") not in LABELS]
    reason_col = next((c for c in (quarantine[0].keys() if quarantine else []) if "reason" in c), None)
    reasons = Counter(
        (x.get(reason_col) or "")[:400] for x in quarantine
    ) if reason_col else Counter()

    c1 = (rows.get("in") == args.rows == rows.get("written", 0) + rows.get("quarantined", 0)
          and rows.get("pending") == 0 and rows.get("review") == 0 and rows.get("skipped") == 0)
    c2 = (len(sink) == rows.get("written") and len({x["id"] for x in sink}) == len(sink) and not bad_values
          and len(quarantine) == rows.get("quarantined")
          and not ({x["id"] for x in sink} & {x.get("id") for x in quarantine}))
    ledger = {"calls_made": s.get("calls", {}).get("made"), "input_tokens": s.get("tokens", {}).get("input"),
              "output_tokens": s.get("tokens", {}).get("output")}
    server = {"calls_200": ok.calls, "prompt_tokens": ok.prompt_tokens, "completion_tokens": ok.completion_tokens}
    c3 = (ledger["calls_made"] == server["calls_200"] and ledger["input_tokens"] == server["prompt_tokens"]
          and ledger["output_tokens"] == server["completion_tokens"])
    out = {
        "script": f"bench/providers/faults.py --rows {args.rows} --seed {args.seed} --concurrency {args.concurrency}",
        "command": f"CORRAL_STORE=<tmp>/corral.db {cmdline(r['argv'])}  (cwd <tmp>; job: faults, {args.rows} rows, "
                   f"concurrency {args.concurrency}, model {{name: {MODEL}, base_url: <server>/v1}})",
        "server_faults": {**FAULTS, "seed": args.seed},
        "rc": r["rc"], "wall_s": round(r["wall_s"], 3), "summary": s,
        "server_by_status": by_status,
        "server_answers_by_finish": finishes,
        "sink_rows": len(sink), "sink_distinct_ids": len({x["id"] for x in sink}),
        "sink_values": dict(Counter(x.get("cat") for x in sink)), "sink_invalid_values": len(bad_values),
        "quarantine_rows": len(quarantine), "quarantine_reasons": dict(reasons.most_common(10)),
        "ledger": ledger, "server": server,
        "checks": {"one_state_per_row": c1, "sink_only_valid_labels": c2, "ledger_equals_server": c3},
        "pass": c1 and c2 and c3,
        "stderr_tail": r["stderr_tail"][-600:],
    }
    write_json("faults", out)
    print(f"rc={r['rc']} wall={r['wall_s']:.1f}s rows={rows}")
    print(f"server: by status {by_status}; answers by finish {finishes}")
    print(f"sink: {len(sink)} rows, values {out['sink_values']}, invalid {len(bad_values)}; quarantine {len(quarantine)}: {dict(reasons.most_common(5))}")
    print(f"ledger {ledger}  vs  server {server}")
    print(f"checks {out['checks']} -> {'PASS' if out['pass'] else 'FAIL'}")


if __name__ == "__main__":
    main()
