"""Write bench/RESULTS.md from bench/results/*.json (every figure comes from those files) and
the hand-written observations in bench/FINDINGS.md.

Usage: .venv/bin/python bench/make_results.py
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RES = HERE / "results"


def load(name: str) -> dict[str, Any] | None:
    p = RES / f"{name}.json"
    return json.loads(p.read_text()) if p.exists() else None


def verdict(ok: bool) -> str:
    return "**PASS**" if ok else "**FAIL**"


def machine_line(m: dict[str, Any]) -> str:
    dirty = m.get("git_dirty_files") or []
    tree = f"commit {m.get('git_commit')}" + (f" + uncommitted changes in {', '.join(dirty)}" if dirty else "")
    return (f"{m['date']} · {m['nproc']} CPUs ({m['cpu']}), {m['mem_gb']} GB RAM · Python {m['python']} · "
            f"{m['platform']} · {tree}")


def _share(r: dict[str, Any]) -> str:
    return f"{r['others_cpu_share']:.0%}" if "others_cpu_share" in r else "n/a"


def throughput(d: dict[str, Any]) -> list[str]:
    out = [
        "## 1. Throughput (fake model, 5,574 SMS rows)",
        "",
        f"Run: {machine_line(d['machine'])}",
        "",
        f"Script: `.venv/bin/python bench/throughput.py` · each run: `{d['command']}` from the repository root, "
        "a fresh process and a fresh temporary store; wall = the whole process (interpreter start included). "
        "A warm-up run comes first and is not in the median.",
        "",
        "| run | wall s | rows/s (wall) | engine elapsed_s | rows/s (elapsed_s) | written | quarantined | calls made | replayed | CPU used by other processes |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    w = d["warmup"]
    out.append(f"| warm-up | {w['wall_s']:.3f} | {w['rows_per_s_wall']:,.0f} | {w['engine_elapsed_s']:.3f} | "
               f"{w['rows_per_s_engine']:,.0f} | {w['rows']['written']:,} | {w['rows']['quarantined']:,} | "
               f"{w['calls']['made']:,} | {w['calls']['replayed']:,} | {_share(w)} |")
    for r in d["runs"]:
        out.append(f"| {r['run']} | {r['wall_s']:.3f} | {r['rows_per_s_wall']:,.0f} | {r['engine_elapsed_s']:.3f} | "
                   f"{r['rows_per_s_engine']:,.0f} | {r['rows']['written']:,} | {r['rows']['quarantined']:,} | "
                   f"{r['calls']['made']:,} | {r['calls']['replayed']:,} | {_share(r)} |")
    out += [
        "",
        f"**Median of {len(d['runs'])} runs: {d['median_rows_per_s_wall']:,.0f} rows/s end to end** "
        f"(wall {d['median_wall_s']:.3f} s); by the engine's own elapsed_s: {d['median_rows_per_s_engine']:,.0f} rows/s "
        f"({d['median_engine_elapsed_s']:.3f} s). Every run accounted for all rows: {d['all_runs_accounted']}.",
        "",
        f"Goal: {d['goal']} — {verdict(d['pass'])}",
        "",
    ]
    return out


def crash(d: dict[str, Any], title: str) -> list[str]:
    c = d["checks"]
    f = d["final"]["summary"]
    if d.get("adaptive"):
        window = (f"kill moments uniform in [0.3, 0.8 × ({d['nothing_left_run_s']:.2f} s fixed cost + "
                  f"{d['normal_run_s'] - d['nothing_left_run_s']:.2f} s × share of rows unfinished)] "
                  f"(see the window column), seed {d['seed']}. ")
    else:
        window = (f"kill moments uniform in [{d['kill_window_s'][0]}, {d['kill_window_s'][1]}] s "
                  f"(80% of a normal run), seed {d['seed']}. ")
    out = [
        f"## {title}",
        "",
        f"Run: {machine_line(d['machine'])}",
        "",
        f"Script: `{d['script']}` · each run: `{d['command']}`. Job: the SMS job with model "
        f"`{json.dumps(d['job']['model'])}`, absolute source path, temporary parquet sink. "
        f"A normal run took {d['normal_run_s']:.2f} s (median of {', '.join(f'{x:.2f}' for x in d['calibration_runs_s'])}); "
        + window
        + f"A run with nothing left to do took {d.get('nothing_left_run_s', float('nan')):.2f} s. "
        f"Calls in flight at once (concurrency): {d['concurrency']}.",
        "",
        "| kill | window s | at s | what it hit | exit | records after | call-log lines | ledger paid |",
        "|---:|---|---:|---|---:|---|---:|---:|",
    ]
    for k in d["kills"]:
        states = k.get("states") or {}
        st = ", ".join(f"{s} {n:,}" for s, n in sorted(states.items())) or "(no records yet)"
        win = k.get("window_s") or d["kill_window_s"]
        out.append(f"| {k['kill']} | {win[0]}–{win[1]} | {k['at_s']:.2f} | {k['phase']} | {k['exit_code']} | {st} | "
                   f"{k['call_log_lines']:,} | {k.get('ledger_paid', 0) or 0:,} |")
    cl = c["c_ledger"]
    dd = c["d_repeats"]
    b = c["b_sink"]
    rows = f.get("rows", {})
    out += [
        "",
        f"Kills that landed: {d['kills_that_landed']} (mid-run, rows unfinished: {d['kills_mid_run']}). "
        f"Final run: exit {d['final']['exit_code']}, {d['final']['wall_s']:.2f} s, "
        f"calls {f.get('calls')}.",
        "",
        f"- (a) rows in {rows.get('in'):,} = written {rows.get('written'):,} + quarantined {rows.get('quarantined'):,}; "
        f"pending {rows.get('pending')}: {verdict(c['a_rows_accounted'])}",
        f"- (b) sink: {b['rows']:,} rows, {b['distinct_keys']:,} distinct `_key` (quarantine file: {b['quarantine_rows']} rows): "
        f"{verdict(b['ok'])}",
        f"- (c) ledger: {cl['paid_rows']:,} paid rows for {cl['distinct_paid_hashes']:,} distinct request hashes "
        f"({cl['hashes_paid_twice']} hashes paid twice); {cl['replayed_rows']:,} replayed rows; call log "
        f"{cl['call_log_lines']:,} lines → {cl['extra_calls']} calls made again after a kill, allowed "
        f"≤ {d['kills_that_landed']} kills × {d['concurrency']} = {cl['allowed_extra']}: {verdict(cl['ok'])}",
        f"- (d) request hashes in the call log more than once: {dd['hashes_called_more_than_once']} "
        f"(most calls for one hash: {dd['max_calls_for_one_hash']}); of those paid more than once in the ledger: "
        f"{dd['repeated_and_paid_twice']}: {verdict(dd['ok'])}",
    ]
    if d.get("leftover_temp_files"):
        out.append(f"- note: temporary sink files left beside the sink by killed processes: "
                   f"{', '.join('`' + x + '`' for x in d['leftover_temp_files'])}")
    out += ["", f"Overall: {verdict(d['pass'])}", ""]
    return out


def _others(r: dict[str, Any]) -> str:
    if "others_cpu_share" in r:
        return f"{r['others_cpu_share']:.0%}"
    return f"load avg {r['loadavg_1m_before']:.2f}"


def local_ratio(d: dict[str, Any]) -> list[str]:
    out = [
        f"## 3. Bundled local model vs a bare llama-cpp-python loop (tickets, N = {d['n']})",
        "",
        f"Run: {machine_line(d['machine'])}",
        "",
        "Script: `.venv/bin/python bench/local_ratio.py` · corral: "
        f"`{d['command_corral']}` (a fresh process and store; wall = the whole process, model load included) · "
        f"bare loop: `{d['command_bare']}` (row by row, only the loop timed, after the model load) · "
        f"bare loop in the engine's call order: `{d['command_bare_engine_order']}`. Order of runs: {d['order']}. "
        "Same Llama parameters as `corral/models/local.py`: n_ctx 2048, n_threads = n_threads_batch = all CPUs, "
        "seed 0 (load and call), grammar from the adapter's own `_canonical(schema)` text, cached per schema, "
        "max_tokens and temperature from the request.",
        "",
        "| # | side | s | rows/s | output tokens | input tokens | llama.cpp prompt tokens evaluated | CPU used by other processes meanwhile |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for i, (b, c, p) in enumerate(zip(d["bare"], d["corral"], d["bare_engine_order"]), 1):
        out.append(f"| {i} | bare, row order (loop) | {b['loop_s']:.2f} | {b['rows_per_s']:.3f} | {b['output_tokens']:,} | "
                   f"{b['input_tokens']:,} | {b['llama_prompt_tokens_evaluated']:,} | {_others(b)} |")
        out.append(f"| {i} | corral (end to end; elapsed_s {c['elapsed_s']:.2f}) | {c['wall_s']:.2f} | "
                   f"{c['rows_per_s_wall']:.3f} | {c['output_tokens']:,} | {c['input_tokens']:,} | n/a | "
                   f"{_others(c)} |")
        out.append(f"| {i} | bare, engine order (loop) | {p['loop_s']:.2f} | {p['rows_per_s']:.3f} | {p['output_tokens']:,} | "
                   f"{p['input_tokens']:,} | {p['llama_prompt_tokens_evaluated']:,} | {_others(p)} |")
    det = d["deterministic"]
    out += [
        "",
        f"Same work: the responses of corral and the row-order loop are identical for "
        f"{d['identical_responses_row_order']}/{d['responses_compared']} calls "
        f"(engine-order loop: {d['identical_responses_engine_order']}/{d['responses_compared']}); every side "
        f"repeated itself exactly across runs: {det}. Corral's call order (from its ledger) is two rows at a time, "
        f"step by step: {d['engine_order_is_pairs']} (first calls: {', '.join(d['corral_first_calls'])}).",
        "",
        f"Medians: bare row order {d['median_bare_rows_per_s']:.3f} rows/s (loop {d['median_bare_loop_s']:.2f} s); "
        f"bare engine order {d['median_bare_engine_order_rows_per_s']:.3f} rows/s (loop {d['median_bare_engine_order_loop_s']:.2f} s); "
        f"corral {d['median_corral_rows_per_s_wall']:.3f} rows/s end to end (wall {d['median_corral_wall_s']:.2f} s), "
        f"{d['median_corral_rows_per_s_elapsed']:.3f} rows/s by elapsed_s ({d['median_corral_elapsed_s']:.2f} s).",
        "",
        f"**Ratio corral / bare loop (ratio of medians, end to end): {d['ratio_wall']:.3f}** "
        f"(by elapsed_s: {d['ratio_elapsed']:.3f}; per interleaved pair: "
        f"{', '.join(f'{x:.3f}' for x in d['ratio_per_pair_wall'])}).",
        "",
        f"Ratio corral / bare loop making the calls in the engine's order: {d['ratio_same_order_wall']:.3f} end to end "
        f"(by elapsed_s: {d['ratio_same_order_elapsed']:.3f}; per pair "
        f"{', '.join(f'{x:.3f}' for x in d['ratio_same_order_per_pair_wall'])}).",
        "",
        f"Runs during which other processes used ≥ {(d.get('quiet_wait') or {}).get('max_others_share', '?')} of the CPUs "
        f"were discarded and run again (at most {(d.get('quiet_wait') or {}).get('retries', '?')} times): "
        f"{len(d.get('discarded_attempts') or [])} discarded attempts, kept in the JSON. "
        f"Rounds in which other processes used under 10% of the CPUs on every side: "
        f"{d.get('quiet_rounds', 'not recorded')}. Before each run the script waits (at most "
        f"{(d.get('quiet_wait') or {}).get('max_wait_s', '?')} s) for the machine to be under "
        f"{(d.get('quiet_wait') or {}).get('threshold', '?')} busy; llama.cpp runs 2 threads on 2 CPUs, so "
        "any other busy process slows it a lot, and unevenly.",
        "",
        f"Goal: {d['goal']} — {verdict(d['pass'])}",
        "",
    ]
    return out


def memory(d: dict[str, Any]) -> list[str]:
    out = [
        "## 4. Memory (fake model, generated CSV)",
        "",
        f"Run: {machine_line(d['machine'])}",
        "",
        f"Script: `{d['script']}` (CSV: columns id,text, text about 60 characters of words, seed {d['csv_seed']}; "
        "job: one classify step, `key: id`, parquet sink in the temp dir; peak RSS = ru_maxrss of exactly the "
        "`corral` process, from os.wait4).",
        "",
        "| rows | CSV MB | command | peak RSS MB | wall s | rows/s (wall) | rows/s (elapsed_s) | sink rows | store MB |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in d["runs"]:
        out.append(f"| {r['rows']:,} | {r['csv_mb']} | `{r['command']}` | {r['peak_rss_mb']:.1f} | {r['wall_s']:.1f} | "
                   f"{r['rows_per_s_wall']:,.0f} | {r['rows_per_s_engine']:,.0f} | {r['sink_rows']:,} | {r['store_mb']:,.0f} |")
    out.append("")
    for r in d["runs"]:
        prof = r.get("rss_profile")
        if prof:
            out.append(f"RSS over the {r['rows']:,}-row run (sampled every 0.5 s from /proc, MB at that share of the run): "
                       + ", ".join(f"{k} {v:,.0f}" for k, v in prof["rss_mb_at"].items())
                       + f"; highest sample {prof['peak_sample_mb']:,.0f} MB at {prof['peak_sample_at_s']:.0f} s of {prof['run_s']:.0f} s.")
            out.append("")
    for r in d["runs"]:
        if r.get("store_tables_mb"):
            out.append(f"Store for {r['rows']:,} rows, MB per table/index (SQLite dbstat): "
                       + ", ".join(f"{k} {v:,.1f}" for k, v in r["store_tables_mb"].items()) + ".")
            out.append("")
    if d.get("rss_growth_1m_over_100k") is not None:
        out.append(f"Peak RSS for 1,000,000 rows is {d['rss_growth_1m_over_100k']}× that for 100,000 rows (10× the rows).")
        out.append("")
    for f in d.get("failures") or []:
        out.append(f"- failure: {f}")
    out += [f"Goal: {d['goal']} — {verdict(d['pass'])}", ""]
    return out


def main() -> None:
    lines = [
        "# Corral benchmarks",
        "",
        "Generated by `bench/make_results.py` from `bench/results/*.json`; rerun everything with "
        "`.venv/bin/python bench/run_all.py` (or one benchmark with `.venv/bin/python bench/NAME.py`). "
        "Every figure below is a measurement from those files. The machine is shared and noisy (2 CPUs): "
        "figures are medians of several runs and ratios come from runs interleaved in one script.",
        "",
    ]
    summary = []
    sections: list[str] = []
    if (d := load("throughput")):
        sections += throughput(d)
        summary.append(f"| throughput | median {d['median_rows_per_s_wall']:,.0f} rows/s end to end | {d['goal']} | {verdict(d['pass'])} |")
    if (d := load("crash")):
        sections += crash(d, "2. Crash safety (SIGKILL ×5, fake model latency 0.002 s)")
        summary.append(f"| crash | invariants (a)-(d) after {d['kills_that_landed']} kills | nothing lost, duplicated or paid twice | {verdict(d['pass'])} |")
    if (d := load("crash_adaptive")):
        sections += crash(d, "2a. Crash safety, kills aimed at unfinished work (fake latency 0.002 s, --adaptive kill windows)")
        summary.append(f"| crash (adaptive) | invariants (a)-(d) after {d['kills_that_landed']} kills ({d['kills_mid_run']} with rows unfinished) | nothing lost, duplicated or paid twice | {verdict(d['pass'])} |")
    if (d := load("crash_latency0.05_adaptive")):
        sections += crash(d, "2b. Crash safety, kills aimed mid-run (fake latency 0.05 s, --adaptive kill windows)")
        summary.append(f"| crash (latency 0.05) | invariants (a)-(d) after {d['kills_that_landed']} kills ({d['kills_mid_run']} mid-run) | nothing lost, duplicated or paid twice | {verdict(d['pass'])} |")
    if (d := load("local_ratio")):
        sections += local_ratio(d)
        summary.append(f"| local_ratio | ratio {d['ratio_wall']:.3f} (same call order: {d['ratio_same_order_wall']:.3f}) | {d['goal']} | {verdict(d['pass'])} |")
    if (d := load("memory")):
        sections += memory(d)
        big = next((r for r in d["runs"] if r["rows"] == 1_000_000), None)
        fig = f"{big['peak_rss_mb']:.0f} MB peak RSS at 1M rows" if big else "no 1M-row run"
        summary.append(f"| memory | {fig} | {d['goal']} | {verdict(d['pass'])} |")
    lines += ["| benchmark | result | goal | verdict |", "|---|---|---|---|", *summary, "", *sections]
    findings = HERE / "FINDINGS.md"
    if findings.exists():
        lines += [findings.read_text().rstrip(), ""]
    # sections written by other benchmark suites (bench/providers, bench/etl) are kept as they are
    old = (HERE / "RESULTS.md").read_text() if (HERE / "RESULTS.md").exists() else ""
    marks = [old.find(m) for m in ("## Providers and the request queue", "## ETL tier", "## Deliberation") if m in old]
    kept = old[min(marks):].rstrip() if marks else ""
    (HERE / "RESULTS.md").write_text("\n".join(lines).rstrip() + "\n" + ("\n" + kept + "\n" if kept else ""))
    print(f"wrote {HERE / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
