"""Write the "## Deliberation" section of bench/RESULTS.md from bench/deliberation/results/*.json.

  .venv/bin/python bench/deliberation/make_section.py

Every figure comes from those files. Only this section is replaced (from its heading to the next
"## " heading or the end of the file); the rest of RESULTS.md is left as it is.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RES = HERE / "results"
TARGET = HERE.parent / "RESULTS.md"
HEADING = "## Deliberation (strategies, cascades, budgets)"


def load(name: str) -> dict[str, Any] | None:
    p = RES / f"{name}.json"
    return json.loads(p.read_text(encoding="utf-8")) if p.exists() else None


def at(m: dict[str, Any]) -> str:
    return f"{m.get('date', '?')}, commit {m.get('git_commit', '?')}"


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def verdict(ok: bool) -> str:
    return "**PASS**" if ok else "**FAIL**"


def banking(lines: list[str]) -> None:
    d = load("banking77")
    if d is None:
        return
    {r["config"]: r for r in d["results"]}
    s = d["summary"]
    lines += [
        "### banking77 with the fake model as a noisy labeler",
        "",
        f"`{d['command']}` ({at(d['machine'])}); all {d['results'][0]['rows']:,} rows of the test split, "
        "77 intents. The simulated labeler (see the script's docstring and docs/models.md): each row "
        "has a difficulty d shared by every model; a model of accuracy a answers right with "
        "probability 1 - d^(a/(1-a)), else one of two row-specific confusers; samples at "
        "temperature > 0 are independent draws. Prices per call: "
        + ", ".join(f"{k} (a = {v['accuracy']}) ${v['price_per_call']}" for k, v in d["models"].items())
        + ". Each configuration ran in its own store, so every call was paid and counted.",
        "",
        "| configuration | accuracy | calls / row | cost |",
        "|---|---|---|---|",
    ]
    for r in d["results"]:
        lines.append(f"| {r['config']} | {r['accuracy']:.4f} | {r['calls_per_row']:.3f} | ${r['cost_usd']:.4f} |")
    lines += ["", "Adaptive `vote` against fixed k = 5 voting on the same model "
              "(acceptance: the same accuracy, here within 0.1 point, with <= 50% of the calls):", "",
              "| adaptive vote | accuracy | fixed k=5 accuracy | difference | calls vs fixed k=5 | verdict |",
              "|---|---|---|---|---|---|"]
    for name, v in s.items():
        if "fixed_k5_accuracy" not in v:
            continue
        ok = v["call_ratio_vs_fixed_k5"] <= 0.5 and v["accuracy_delta"] >= -0.001
        lines.append(f"| {name} | {v['accuracy']:.4f} | {v['fixed_k5_accuracy']:.4f} | "
                     f"{100 * v['accuracy_delta']:+.2f} pt | {pct(v['call_ratio_vs_fixed_k5'])} | {verdict(ok)} |")
    lines += ["", "`cascade` against the strong model alone "
              "(acceptance: >= 98% of its accuracy at <= 40% of its cost):", "",
              "| cascade | accuracy | vs strong alone | cost vs strong alone | verdict |",
              "|---|---|---|---|---|"]
    for name, v in s.items():
        if "strong_accuracy" not in v:
            continue
        ok = v["accuracy_ratio_vs_strong"] >= 0.98 and v["cost_ratio_vs_strong"] <= 0.40
        lines.append(f"| {name} | {v['accuracy']:.4f} | {pct(v['accuracy_ratio_vs_strong'])} | "
                     f"{pct(v['cost_ratio_vs_strong'])} | {verdict(ok)} |")
    lines.append("")


def sms(lines: list[str]) -> None:
    parts = [load(n) for n in ("sms_local_single", "sms_local_vote", "sms_local_refine")]
    parts = [p for p in parts if p is not None]
    whole = load("sms_local")
    if not parts and whole is None:
        return
    runs = [r for p in parts for r in p["results"]] if parts else whole["results"]
    first = parts[0] if parts else whole
    lines += [
        "### The bundled model on a 500-row sample of SMS spam",
        "",
        f"{', '.join('`' + p['command'] + '`' for p in (parts or [whole]))} ({at(first['machine'])}). "
        f"Seeded sample of {runs[0]['rows']} messages, {pct(first['spam_share'])} spam; always "
        f"answering the majority class scores {first['majority_baseline_accuracy']:.3f}. The model is "
        "SmolLM2-135M-Instruct: the figures show what each strategy costs and does with it, not "
        "what a real model reaches.",
        "",
        "| strategy | accuracy | spam recall | spam precision | written / review / quarantined | calls | calls / row | tokens (in + out) | tokens / row |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        lines.append(
            f"| {r['strategy']} | {r['accuracy']:.3f} | {r['spam_recall']} | {r['spam_precision']} | "
            f"{r['written']} / {r['review']} / {r['quarantined']} | {r['calls']:,} | {r['calls_per_row']:.2f} | "
            f"{r['input_tokens'] + r['output_tokens']:,} | {r['tokens_per_row']:.0f} |")
    by = {r["strategy"].split()[0]: r for r in runs}
    if "refine" in by and "single" in by:
        # refine's first answer is single's (same prompt, temperature 0); every other call is a
        # critic call or a repair: repairs = calls - 2 x single's calls
        repairs = by["refine"]["calls"] - 2 * by["single"]["calls"]
        said = ("the 135M critic approved every answer it was shown, so refine returned single's "
                "answers at twice the calls" if repairs == 0 else "the critic asked for repairs")
        lines += ["", f"`refine` made {by['single']['calls']} first answers, as many critic calls and "
                  f"{repairs} repair calls: {said}."]
        if "vote" in by:
            d = by["vote"]["accuracy"] - by["single"]["accuracy"]
            lines[-1] += (f" `vote` (samples at temperature 0.7) changed accuracy by {100 * d:+.1f} "
                          f"points against `single` at {by['vote']['calls_per_row']:.2f} calls a row.")
    lines.append("")


def budget(lines: list[str]) -> None:
    d = load("budget")
    if d is None:
        return
    f, r, u = d["first_run"], d["resumed_run"], d["uninterrupted_run"]
    ok = f["within_one_call"] and f["exit_code"] == 3 and r["status"] == "finished" \
        and d["request_hashes_called_twice"] == 0 and d["same_calls_as_uninterrupted"]
    lines += [
        "### A cost cap, then resume",
        "",
        f"`{d['command']}` ({at(d['machine'])}): {d['rows']:,} banking77 rows, adaptive `vote` on the "
        f"fake noisy labeler at ${d['price_per_call']} a call, 32 calls in flight.",
        "",
        f"- With `max_cost_usd: {d['cap_usd']}` the run stopped (exit {f['exit_code']}, "
        f"\"{f['stop_reason']}\") having spent ${f['spent_usd']:.3f} on {f['calls']} calls: "
        f"{f['over_cap_usd']:+.3f} USD from the cap, within one call's price ({verdict(f['within_one_call'])}).",
        f"- Rerun with a larger cap: {r['status']}, {r['written']} written + {r['review']} review + "
        f"{r['quarantined']} quarantined; {r['calls_made']:,} calls paid in all, "
        f"{r['calls_replayed']} replayed from the store.",
        f"- Request hashes the model received twice: {d['request_hashes_called_twice']}; ledger paid calls "
        f"{d['ledger_paid_calls']:,} = calls the model received {d['calls_logged_total']:,}; an uninterrupted run "
        f"of the same job paid {u['calls']:,} ({verdict(ok)}).",
        "",
    ]


def calibrate(lines: list[str]) -> None:
    d = load("calibrate_b77")
    if d is None:
        return
    rep, full = d["report"], d["chosen_on_all_rows"]
    target = rep.get("target")
    lines += [
        "### `corral calibrate` on banking77",
        "",
        f"`{d['command']}` ({at(d['machine'])}): the job's step is a cascade cheap -> strong (the "
        f"noisy labelers above); calibrate measured its default grid on a seeded sample of "
        f"{rep['candidates'][0]['rows']:,} labeled rows, all candidates in one store.",
        "",
        "| candidate | accuracy (95% interval) | calls / row | cost / 1,000 rows | meets target |",
        "|---|---|---|---|---|",
    ]
    for c in rep["candidates"]:
        lo, hi = c["interval"]
        cost = "n/a" if c["cost_per_1000_rows"] is None else f"${c['cost_per_1000_rows']:.3f}"
        lines.append(f"| {c['strategy']} | {c['accuracy']:.3f} ({lo:.3f}-{hi:.3f}) | {c['calls_per_row']:.2f} | "
                     f"{cost} | {'yes' if c['meets_target'] else 'no'} |")
    ch = rep.get("chosen")
    if ch:
        lines += ["", f"Chosen for target {target}: {ch['strategy']}, {ch['accuracy']:.3f} on the sample at "
                  f"${ch['cost_per_1000_rows']:.3f} per 1,000 rows."]
    if full:
        lines.append(f"Run on all {full['rows']:,} rows in a fresh store: accuracy {full['accuracy']:.4f}, "
                     f"{full['calls']:,} calls, ${full['cost_per_1k_rows']:.3f} per 1,000 rows.")
    lines.append("")


def speed(lines: list[str]) -> None:
    p = HERE.parent / "results" / "throughput_ab.json"
    if not p.exists():
        return
    d = json.loads(p.read_text(encoding="utf-8"))
    m = d["median_rows_per_s"]
    lines += [
        "### Engine speed with strategies in it",
        "",
        f"`{d['command']}` ({at(d['machine'])}): {len(d['runs']['head'])} interleaved pairs of the "
        f"throughput run (all {d['rows']:,} SMS rows, fake model), the engine before strategies "
        f"(commit {d['base']}) against this one. Medians: {m['base']:,.0f} rows/s before, "
        f"{m['head']:,.0f} rows/s now, ratio {d['ratio_head_over_base_wall']:.3f} end to end "
        f"({d['ratio_head_over_base_engine']:.3f} by the engine's elapsed time).",
        "",
    ]


def main() -> None:
    lines = [
        HEADING, "",
        "Every figure in this section was measured in a clean checkout: "
        "`d=$(mktemp -d) && git clone . \"$d\" && cd \"$d\" && make test`, then the command given "
        "with each figure, run in `$d` (the data read from `../shared/data`, reachable there as "
        "`/tmp/shared`). Each figure names the commit it was measured at; a result file listed as "
        "changed there is only the benchmark's own earlier output.", "",
    ]
    banking(lines)
    sms(lines)
    budget(lines)
    calibrate(lines)
    speed(lines)
    text = TARGET.read_text(encoding="utf-8")
    section = "\n".join(lines).rstrip() + "\n"
    if HEADING in text:
        start = text.index(HEADING)
        nxt = text.find("\n## ", start + len(HEADING))
        text = text[:start] + section + (text[nxt:] if nxt != -1 else "")
    else:
        text = text.rstrip() + "\n\n" + section
    TARGET.write_text(text, encoding="utf-8")
    print(f"wrote {TARGET}")


if __name__ == "__main__":
    main()
