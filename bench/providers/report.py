"""Print the "## Providers and the request queue" section of bench/RESULTS.md from
bench/providers/results/*.json (every figure comes from those files; nothing is typed in).

Usage: .venv/bin/python bench/providers/report.py > /tmp/section.md
"""

from __future__ import annotations

import json
from pathlib import Path

R = Path(__file__).resolve().parent / "results"


def load(name: str) -> dict | None:
    p = R / f"{name}.json"
    return json.loads(p.read_text()) if p.exists() else None


def mach(d: dict) -> str:
    m = d["machine"]
    la = d.get("load_avg_at_start")
    dirty = m.get("git_dirty_files") or []
    return (f"Run: {m['date']} · {m['nproc']} CPUs ({m['cpu']}), {m['mem_gb']} GB RAM · Python {m['python']} · "
            f"commit {m['git_commit']}{' + uncommitted changes in ' + str(len(dirty)) + ' files' if dirty else ''}"
            + (f" · 1-min load average when the result file was written {la[0]:.2f}" if la else ""))


def pf(ok: bool) -> str:
    return "**PASS**" if ok else "**FAIL**"


def n(x: float, d: int = 2) -> str:
    return f"{x:,.{d}f}"


def rate_section(d: dict, title: str) -> list[str]:
    out = [title, "", mach(d), ""]
    out.append(f"Script: `.venv/bin/python {d['script']}` · server: `ProviderServer(rpm={d['server']['rpm']}, "
               f"rate_window_s={d['server']['rate_window_s']:g}, latency_s={d['server']['latency_s']:g})` on 127.0.0.1 "
               f"(limit = {d['server']['rpm'] / 60:g} requests/s) · each run: `{d['runs'][0]['command'].split('  (')[0]}` "
               f"in a fresh temp dir with a fresh store; job: one classify step (labels a, b, c), "
               f"{d['runs'][0]['rows']['in']:,} rows with distinct texts, `concurrency: 32`, model "
               "`{name: openai:gpt-4o-mini, base_url: <server>/v1, api_key: <any>}`, variant (b) adds `rpm: 600`. "
               "Rates are the server's own log of successful answers; wall = the whole `corral` process; "
               "steady = answers between 10 s after the process started and 10 s before it ended.")
    out.append("")
    out.append("| variant | run | wall s | rows written | 200 | 429 | 429 share | rate /s (wall) | % of limit | "
               "steady /s | steady % of limit | first answer after s |")
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in d["runs"]:
        v = "(a) no rpm, headers" if r["variant"] == "a" else "(b) rpm: 600"
        st = r["server_by_status"]
        out.append(
            f"| {v} | {r['rep']} | {n(r['wall_s'], 1)} | {r['rows']['written']:,} | {st.get('200', 0):,} | {st.get('429', 0)} | "
            f"{100 * r['rate_429_share']:.2f}% | {n(r['rate_overall_per_s'])} | {n(r['rate_overall_pct_of_limit'], 1)}% | "
            f"{n(r['rate_steady_per_s'])} | {n(r['rate_steady_pct_of_limit'], 1)}% | {n(r['first_ok_after_s'], 1)} |"
        )
    out.append("")
    return out


def main() -> None:
    lines = ["## Providers and the request queue", ""]
    lines.append(
        "The production request path: `openai:` models (OpenAIModel, the official SDK) against "
        "`corral.testing.ProviderServer`, which speaks OpenAI's wire format on 127.0.0.1 from a thread of "
        "the benchmark process, with faults injected; Corral runs as a `corral run job.yaml --json` "
        "subprocess. Scripts and raw results: `bench/providers/` (`results/*.json` hold every run's "
        "figures, per-second series included); this section is printed by "
        "`.venv/bin/python bench/providers/report.py`. The machine is shared (other benchmarks ran at "
        "the same time; load averages are in the JSON)."
    )
    lines.append("")

    rl = load("rate_limit")
    if rl:
        lines += rate_section(rl, "### 1. Rate limit: 600 requests/min, 1 s latency, 2,000 rows")
        runs = rl["runs"]
        worst_rate = min(min(r["rate_overall_pct_of_limit"], r["rate_steady_pct_of_limit"]) for r in runs)
        worst_429 = max(r["rate_429_share"] for r in runs)
        for var in ("a", "b"):
            rs = [r for r in runs if r["variant"] == var]
            if not rs:
                continue
            ok_rate = all(r["rate_overall_pct_of_limit"] >= 95 and r["rate_steady_pct_of_limit"] >= 95 for r in rs)
            ok_429 = all(r["rate_429_share"] < 0.01 for r in rs)
            lines.append(
                f"- Variant ({var}): achieved rate {', '.join(n(r['rate_overall_pct_of_limit'], 1) + '%' for r in rs)} "
                f"of the limit over the whole process (steady part {', '.join(n(r['rate_steady_pct_of_limit'], 1) + '%' for r in rs)}), "
                f"goal >= 95%: {pf(ok_rate)}; 429 share {', '.join(format(100 * r['rate_429_share'], '.2f') + '%' for r in rs)}, "
                f"goal < 1%: {pf(ok_429)}"
            )
        ramp = []
        for r in runs:
            ps = r["ok_per_second"]
            i = next((k for k, x in enumerate(ps) if x), 0)
            ramp.append(f"({r['variant']}) #{r['rep']}: {ps[i:i + 14]}, max {max(ps)}/s, 429s in second(s) "
                        f"{[k for k, x in enumerate(r['r429_per_second']) if x] or 'none'}")
        lines.append("")
        lines.append(
            "Successful answers per second from the first answer on (first 14 s), the highest second, and "
            "when the 429s came: " + "; ".join(ramp) + ". The run starts below 10/s (the adaptive "
            "concurrency starts at 8 calls in flight, and each takes 1 s) and grows to the limit."
        )
        lines.append("")
        lines.append(f"Overall (both variants, every run): lowest rate {n(worst_rate, 1)}% of the limit, "
                     f"highest 429 share {100 * worst_429:.2f}% — {pf(worst_rate >= 95 and worst_429 < 0.01)}")
        lines.append("")

    rw = load("rate_limit_window1s")
    if rw:
        lines += rate_section(rw, "#### 1b. Extra (not an acceptance figure): the same 600 rpm enforced over every 1 s window")
        lines.append(
            "Same server and job but `rate_window_s=1` (at most 10 requests in any 1 s) and "
            f"{rw['runs'][0]['rows']['in']:,} rows. Corral paces at the limit (token bucket of "
            "10/s, burst 0.1 s, from corral/_limits.py) with no margin; 429s came in seconds "
            + "; ".join(f"({r['variant']}) {[k for k, x in enumerate(r['r429_per_second']) if x] or 'none'}" for r in rw["runs"])
            + " of the run (each 429 halves the adaptive concurrency). Measured: "
            + "; ".join(f"({r['variant']}) {100 * r['rate_429_share']:.2f}% 429s, {n(r['rate_overall_pct_of_limit'], 1)}% "
                        f"of the limit (steady {n(r['rate_steady_pct_of_limit'], 1)}%)" for r in rw["runs"])
            + ". Against the goals (>= 95% of the limit, < 1% 429s) under this stricter window: "
            + pf(all(r["rate_overall_pct_of_limit"] >= 95 and r["rate_429_share"] < 0.01 for r in rw["runs"]))
        )
        lines.append("")

    f = load("faults")
    if f:
        s = f["summary"]
        rows = s["rows"]
        fa = f["server_faults"]
        lines += ["### 2. Faults: 20% 5xx, 5% truncated, 2% refused, 3% malformed, 1,000 rows", "", mach(f), ""]
        lines.append(
            f"Script: `.venv/bin/python {f['script']}` · server: `ProviderServer(error_rate={fa['error_rate']}, "
            f"truncation_rate={fa['truncation_rate']}, refusal_rate={fa['refusal_rate']}, malformed_rate={fa['malformed_rate']}, "
            f"latency_s={tuple(fa['latency_s'])}, seed={fa['seed']})` · corral: `{f['command'].split('  (')[0]}` "
            f"({f['command'].split('  (')[1].rstrip(')')}), job: one classify step, labels a, b, c."
        )
        lines.append("")
        st = f["server_by_status"]
        fin = f["server_answers_by_finish"]
        lines.append(f"- Server answered: {', '.join(f'{k}: {v:,}' for k, v in st.items())} (statuses); of the 200s, "
                     f"by kind: {', '.join(f'{k} {v:,}' for k, v in fin.items())} (stop = a valid answer).")
        lines.append(f"- Corral's summary: rows in {rows['in']:,} = written {rows['written']:,} + quarantined "
                     f"{rows['quarantined']:,}; pending {rows['pending']}, review {rows['review']}, skipped {rows['skipped']}; "
                     f"exit code {f['rc']}, {n(f['wall_s'], 1)} s: {pf(f['checks']['one_state_per_row'])}")
        lines.append(f"- Sink: {f['sink_rows']:,} rows, {f['sink_distinct_ids']:,} distinct ids, values "
                     f"{f['sink_values']}, {f['sink_invalid_values']} not a valid label; quarantine file "
                     f"{f['quarantine_rows']} rows, reasons: " + "; ".join('"' + k.replace('`', "'") + '"' for k in f["quarantine_reasons"])
                     + f": {pf(f['checks']['sink_only_valid_labels'])}")
        lg, sv = f["ledger"], f["server"]
        lines.append("")
        lines.append("| | calls | input / prompt tokens | output / completion tokens |")
        lines.append("|---|---:|---:|---:|")
        lines.append(f"| Corral summary (`calls.made`, `tokens`) | {lg['calls_made']:,} | {lg['input_tokens']:,} | {lg['output_tokens']:,} |")
        lines.append(f"| server, status 200 answers | {sv['calls_200']:,} | {sv['prompt_tokens']:,} | {sv['completion_tokens']:,} |")
        lines.append("")
        lines.append(f"Ledger equals the server's count: {pf(f['checks']['ledger_equals_server'])}. Overall: {pf(f['pass'])}")
        lines.append("")

    b = load("batch")
    if b:
        fr, sa, rs, on = b["first_run"], b["status_after_kill"], b["resume"], b["online"]
        sj = sa["json"]
        lines += [f"### 3. Batch mode: kill while polling, resume, price ({b['rows']} rows)", "", mach(b), ""]
        lines.append(
            f"Script: `.venv/bin/python {b['script']}` · job: one classify step with `mode: batch`, model "
            f"`{{name: openai:gpt-4o-mini, base_url: <server>/v1, batch_poll_s: {b['batch_poll_s']}, prices: {json.dumps(b['prices'])}}}` "
            "(USD per million tokens) · commands: " + " → ".join(f"`{x['command'].split('  (')[0]}` ({x['command'].split('  (')[1].rstrip(')')})"
                                                            for x in (fr, sa | {"command": sa["command"] + "  (after the kill)"}, rs, on))
        )
        lines.append("")
        lines.append(f"- First run: the batch was submitted {n(fr['batch_submitted_after_s'])} s after the start; "
                     f"SIGKILL at {n(fr['killed_after_s'])} s while polling (process alive: {fr['alive_at_kill']}, "
                     f"exit {fr['returncode']}); server: submissions {fr['server_submissions']}, {fr['server_polls']} polls.")
        lines.append(f"- `corral status --json` after the kill: status `{sj.get('status')}`, batches "
                     f"`{json.dumps(sj.get('batches'))}`, rows pending {sj.get('rows', {}).get('pending')}: "
                     f"{pf(b['checks']['status_lists_batch_in_flight'])}")
        sm = rs["summary"]
        lines.append(f"- Resume (server set to batch_polls=1): exit {rs['rc']}, {rs['server_polls_during_resume']} polls; "
                     f"server submissions before {fr['server_submissions']} → after {rs['server_submissions']} "
                     f"(no new file or batch: {pf(b['checks']['no_new_submission_on_resume'])}); rows written "
                     f"{sm['rows']['written']:,} of {sm['rows']['in']:,}, quarantined {sm['rows']['quarantined']} "
                     f"({pf(b['checks']['all_rows_written'])}); calls {sm['calls']}; tokens {sm['tokens']} (server batch "
                     f"lines answered: {rs['server_batch_served']['calls']:,}, {rs['server_batch_served']['prompt_tokens']:,} / "
                     f"{rs['server_batch_served']['completion_tokens']:,} tokens; online calls {rs['server_online_served']['calls']}); "
                     f"cost ${sm['cost_usd']}")
        om = on["summary"]
        lines.append(f"- Same job `mode: online`, fresh store and server: exit {on['rc']}, rows written {om['rows']['written']:,}, "
                     f"calls {om['calls']}, tokens {om['tokens']}, cost ${om['cost_usd']}")
        lines.append(f"- **Cost ratio batch / online = {b['cost_ratio_batch_over_online']}** (goal 0.5): "
                     f"{pf(b['checks']['cost_ratio_half'])}")
        lines.append("")
        lines.append(f"Overall: {pf(b['pass'])}. Note: in batch mode `calls.replayed` counts every batch answer "
                     f"again ({sm['calls']['replayed']:,} here): the fetched answers are recorded as paid calls, then "
                     "each row reads its answer back from the store as a (free) replay; cost and tokens are not "
                     "double-counted.")
        lines.append("")

    o = load("outage")
    if o:
        r = o["outage_run"]
        s = r["summary"]
        lines += ["### 4. Outage: provider down for 15 s mid-run (1,000 rows, latency 0.05 s, concurrency 16)", "", mach(o), ""]
        lines.append(
            f"Script: `.venv/bin/python {o['script']}` · corral: `{r['command'].split('  (')[0]}` "
            f"({r['command'].split('  (')[1].rstrip(')')}); 3 s after the server's first successful answer the script "
            "calls `srv.configure(down=True)` (every request answered 503), sleeps 15 s, then `down=False`. "
            "Progress = rows in a final state in the store, read every 0.25 s."
        )
        lines.append("")
        lines.append(f"- Outage from {n(r['down_at_s'])} s to {n(r['up_at_s'])} s after the process started: "
                     f"**{n(r['outage_length_s'])} s**.")
        lines.append(f"- Failed calls served during the outage: **{r['served_503_during_outage']} × 503** "
                     f"(connection failures: {r['connection_resets']}), all within "
                     f"{max(r['requests_503_times_rel_down_s'] or [0]):.3f} s of its start (failed calls per second of the "
                     f"outage: {r['failed_calls_per_second_of_outage']}); 200s during the outage: {r['served_200_during_outage']}.")
        lines.append(f"- Progress stopped: rows final at the outage start {r['rows_final_at_down']}, 1 s later "
                     f"{r['rows_final_at_down_plus_1s']} (answers received before the outage, committed just after it "
                     f"began), at its end {r['rows_final_at_up']}: {pf(o['checks']['progress_stopped'])}")
        lines.append(f"- First successful answer after the outage ended: **{n(r['first_ok_after_up_s'])} s** later "
                     f"(i.e. {n(r['first_ok_after_up_s'] + r['outage_length_s'], 1)} s after it began).")
        lines.append(f"- Finished: exit {r['rc']}, rows written {s['rows']['written']:,}, quarantined {s['rows']['quarantined']}, "
                     f"pending {s['rows']['pending']}, calls {s['calls']}; elapsed_s {s['elapsed_s']} (process {n(r['wall_s'])} s): "
                     f"{pf(o['checks']['nothing_lost'])}")
        bl = o.get("baseline_run")
        if bl:
            lines.append(f"- Same job without an outage: elapsed_s {bl['summary']['elapsed_s']} (process {n(bl['wall_s'])} s), "
                         f"statuses {bl['server_by_status']}. The 15 s outage cost "
                         f"{n(s['elapsed_s'] - bl['summary']['elapsed_s'], 1)} s.")
        lines.append("")
        lines.append(
            f"Overall (pauses, nothing lost): {pf(o['pass'])}. The circuit breaker opened after the "
            "calls in flight failed, then let one probe through after 1 s, 2 s, 4 s, 8 s... (the "
            "failures per second above); the first probe after the outage ended succeeded "
            f"{n(r['first_ok_after_up_s'])} s after it. (An earlier version doubled its pause for every "
            "in-flight failure and sat at its 30 s maximum; fixed by counting only a probe's own failure.)"
        )
        lines.append("")
    print("\n".join(lines).rstrip() + "\n")


if __name__ == "__main__":
    main()
