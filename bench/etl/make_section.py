"""Write the "## ETL tier" section at the end of bench/RESULTS.md from bench/etl/results/*.json.

  .venv/bin/python bench/etl/make_section.py

Every figure comes from those files. Only the ETL section is replaced (from its heading to the
next "## " heading or the end of the file); the rest of RESULTS.md is left as it is.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
RES = HERE / "results"
TARGET = HERE.parent / "RESULTS.md"
HEADING = "## ETL tier (normalize, match, extract, pipelines)"


def load(name: str) -> dict[str, Any]:
    return json.loads((RES / f"{name}.json").read_text(encoding="utf-8"))


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def at(m: dict[str, Any]) -> str:
    return f"{m.get('date', '?')}, commit {m.get('git_commit', '?')}"


def rows(s: dict[str, Any]) -> str:
    r = s["rows"]
    return (f"{r['in']} in = {r['written']} written + {r['quarantined']} quarantined + "
            f"{r['review']} review + {r['skipped']} skipped + {r['pending']} pending")


def calls(s: dict[str, Any]) -> str:
    return f"{s['calls']['made']} paid + {s['calls']['replayed']} replayed"


def tokens(s: dict[str, Any]) -> str:
    return f"{s['tokens']['input']:,} in / {s['tokens']['output']:,} out"


def sweep_table(title: str, sweep: dict[str, Any]) -> list[str]:
    out = [f"| {title}: threshold T | pairs below T (answered no) | P | R | F1 |", "|---:|---:|---:|---:|---:|"]
    for t, v in sweep.items():
        out.append(f"| {t} | {v['pairs_below_threshold']} | {v['precision']:.3f} | {v['recall']:.3f} | {v['f1']:.3f} |")
    return out


def abt() -> list[str]:
    d = load("abt_buy")
    L: list[str] = ["### 1. Abt-Buy entity matching (`match`, pair mode)", ""]
    L.append(f"Data: `{d['data']['file']}` ({d['data']['pairs']:,} pairs, {d['data']['positives']} "
             f"positives), read in place. Job (written by the script to a temporary folder): one "
             f"`match` step, `left: \"{d['templates']['left']}\"`, `right: \"{d['templates']['right']}\"`, "
             "`block: {threshold: T}`; no `key:` for the full split, `key: pair_id` (0-based line in "
             "test.ndjson) for the sample. A pair is predicted \"same\" when the sink's `same` is true; "
             "a quarantined pair would count as \"no\" (there were none).")
    L.append("")
    L.append("**(a) Whole test split, `--model fake`** — `.venv/bin/python bench/etl/abt_buy.py --part fake`")
    L.append("")
    L.append("| T | command | rows | calls | decided by blocking without a call | positives blocked | elapsed_s |")
    L.append("|---:|---|---|---|---:|---:|---:|")
    for t, r in d["fake_full_split"].items():
        s, sc = r["summary"], r["scored"]
        L.append(f"| {t} | `{r['command']}` | {rows(s)} (accounted: {r['rows_accounted']}) | {calls(s)} | "
                 f"{sc['decided_by_blocking_without_call']} | {sc['positives_lost_to_blocking']} | {s['elapsed_s']} |")
    r0 = next(iter(d["fake_full_split"].values()))
    L.append("")
    L.append(f"Run {at(r0.get('run_at', d['machine']))}. Every row is accounted for; the replayed calls are "
             "pairs whose two records are identical to another pair's (same prompt, answered once). "
             "Corral's blocked count at T = 0.6 equals the count of pairs below 0.6 computed by the script "
             "with `corral.tasks._reference.similarity` (table below). The fake model's P/R/F1 are "
             "meaningless (its answers are derived from a hash of the prompt) and are only in the JSON.")
    L.append("")
    loc = d["local_sample"]
    s, sc, smp = loc["summary"], loc["scored"], loc["sample"]
    L.append(f"**(b) Bundled model on a sample** — `.venv/bin/python bench/etl/abt_buy.py --part local "
             f"--sample {smp['n']} --seed {smp['seed']} --model '{loc['model']}'` → `{loc['command']}`")
    L.append("")
    L.append(f"Sample: {smp['n']} pairs, seed {smp['seed']}, {smp['how']}: {smp['positives']} positives, "
             f"{smp['n'] - smp['positives']} negatives (the split's positive rate). T = {loc['threshold']} "
             f"(the threshold of examples/match.yaml). Run {at(loc['run_at'])}.")
    L.append("")
    L.append("| model | P | R | F1 | tp / fp / fn | predicted same | blocked without a call | rows | calls | tokens | elapsed_s |")
    L.append("|---|---:|---:|---:|---|---:|---:|---|---|---|---:|")
    L.append(f"| SmolLM2-135M (`local`, n_threads 1) | {sc['precision']:.3f} | {sc['recall']:.3f} | {sc['f1']:.3f} | "
             f"{sc['tp']} / {sc['fp']} / {sc['fn']} | {sc['predicted_match']} of {sc['rows_in_file']} | "
             f"{sc['decided_by_blocking_without_call']} | {rows(s)} | {calls(s)} | {tokens(s)} | {s['elapsed_s']} |")
    L.append("")
    L.append(f"The bundled model answered `same: true` for {sc['predicted_match']} of {sc['rows_in_file']} pairs, "
             "so its P/R/F1 are those of \"always yes\" on this sample. At T = 0.4 blocking decided no pair: "
             "every Abt-Buy test pair (positives and the hard negatives alike) has token-set similarity >= 0.4, "
             "so blocking cost no recall and saved no call.")
    L.append("")
    L.append("Baseline, the blocking rule alone (predict \"same\" when similarity >= T, Corral's `similarity` on the "
             "same rendered records):")
    L.append("")
    L += sweep_table("whole split (1,916)", d["blocking_alone_full_split"])
    L.append("")
    L += sweep_table(f"the sample ({smp['n']})", loc["blocking_alone_on_sample"])
    L.append("")
    L.append("Model + blocking at a higher T, derived from the sample run's own answers (pairs below T answered "
             "no, the model's answer for the rest; not separate runs): identical to the blocking-alone rows "
             "above, since the model said yes to every pair — see `posthoc_model_plus_block` in the JSON.")
    L.append("")
    return L


def asked_correct_cells() -> dict[str, int]:
    """Per cleaned column: cells that are right (dirty == clean) but not an entry of the column's
    reference, so the step asks the model about them. Computed from the data and the settings of
    bench/etl/hospital.py, not from a run."""
    import csv
    from collections import Counter

    import hospital as H

    with H.DIRTY.open(newline="", encoding="utf-8") as f:
        dirty = list(csv.DictReader(f))
    with H.CLEAN.open(newline="", encoding="utf-8") as f:
        clean = {(int(r["tid"]), r["attribute"]): r["correct_val"] for r in csv.DictReader(f)}
    out = {}
    for col in H.CLEANED:
        if col == "State":
            ref = set(H.STATES)
        elif col == "EmergencyService":
            ref = {"yes", "no"}
        else:
            mc = 20 if col in H.CATEGORIES else 10 if col in H.MEASURE_LEVEL else 3
            cnt = Counter(r[col].strip() for r in dirty if r[col].strip())
            ref = {v for v, n in cnt.items() if n >= mc}
        out[col] = sum(1 for t, r in enumerate(dirty)
                       if r[col] == clean[(t, col)] and r[col].strip() and r[col].strip() not in ref)
    return out


def hospital() -> list[str]:
    d = load("hospital")
    fk = load("hospital_fake")
    f, s = d["figures"], d["summary"]
    L = ["### 2. Hospital typo cleaning (`normalize`, clean mode)", ""]
    L.append(f"Data: `{d['data']['dirty']}` ({d['data']['rows']:,} rows, {d['data']['typos_in_table']} "
             f"injected typos) scored against `{d['data']['clean']}`, read in place. Rows: "
             f"{d['sample']['how']} ({d['sample']['rows']:,}); the whole table fit in the time budget, so no "
             "sampling. Command: `.venv/bin/python bench/etl/hospital.py --model '{name: local, n_threads: 1}' "
             f"--rows 0` → `{d['command']}`. Run {at(d['machine'])}.")
    L.append("")
    L.append("Columns and settings, chosen from the dirty table's own value counts (not from the clean file): "
             "skipped Address2/Address3 (always empty) and Score/Sample (free measurements, where a rare value "
             "is not a typo); hospital-level columns (ProviderNumber, HospitalName, Address1, City, ZipCode, "
             "CountyName, PhoneNumber: repeated on each of a hospital's 10-28 rows) against the whole table, "
             "`min_count: 3`; measure-level columns (MeasureCode, MeasureName, Stateavg: 34-41 rows per "
             "measure) `min_count: 10`; low-cardinality categories whose misspellings recur up to 16 times "
             "(HospitalType, HospitalOwner, Condition) `min_count: 20`; State = the list of US postal codes "
             "(lower case), EmergencyService = `[\"yes\", \"no\"]`; `candidates: 5`; no row context. The "
             "reference is always the whole dirty file (`reference: {path: .../hospital.csv, min_count: 3}`). "
             "The job is in the JSON (`job`).")
    L.append("")
    L.append("| figure | value |")
    L.append("|---|---:|")
    L.append(f"| typos fixed (cell now exactly the clean value) / all {f['typos_in_sample']} typos | "
             f"{f['fixed_exactly']} = **{pct(f['fixed_rate_of_all_typos'])}** |")
    L.append(f"| ... / the {f['typos_in_cleaned_columns']} typos in the 15 cleaned columns | "
             f"**{pct(f['fixed_rate_of_typos_in_cleaned_columns'])}** |")
    L.append(f"| typos changed at all | {f['typos_changed_at_all']} |")
    L.append(f"| typos changed but still wrong | {f['changed_but_still_wrong']} |")
    L.append(f"| correct cells wrongly changed (of {f['cells_in_cleaned_columns']:,} cleaned cells) | "
             f"{f['wrongly_changed_correct_cells']} |")
    L.append(f"| rows | {rows(s)} |")
    L.append(f"| calls | {calls(s)} (one per cell that is not already an entry; identical prompts replayed) |")
    L.append(f"| tokens | {tokens(s)} |")
    L.append(f"| elapsed_s | {s['elapsed_s']} |")
    L.append("")
    asked = asked_correct_cells()
    L.append("| column | typos | fixed | changed, still wrong | correct cells asked (rarer than min_count) | correct cells wrongly changed |")
    L.append("|---|---:|---:|---:|---:|---:|")
    for c, v in d["per_column"].items():
        L.append(f"| {c} | {v['typos']} | {v['fixed']} | {v['changed_still_wrong']} | {asked[c]} | {v['wrongly_changed']} |")
    L.append("")
    L.append("\"Correct cells asked\" is computed from the data and the job's settings (`asked_correct_cells` in "
             "make_section.py), not from the run. In the text columns every correct cell the model was asked about "
             "was changed: it never answered null (\"none of these\") for a right-but-rare value — Alaska's `ak_...` "
             "Stateavg values, the children's-asthma measures (Condition, MeasureCode, MeasureName, `al_cac-...`), "
             "small hospitals' names and cities — the limit of a frequency reference that docs/jobs.md describes. "
             "In the digit columns ProviderNumber, ZipCode and PhoneNumber it did the opposite: it answered null "
             "(keep the value) for every cell asked, typos included (for tid 13, `1xx19`, the right `10019` was "
             "the first of the 5 candidates shown). "
             "Examples are in the JSON.")
    L.append("")
    fs = fk["summary"]
    L.append(f"Same job, `--model fake` (`.venv/bin/python bench/etl/hospital.py --model fake --rows 0`): "
             f"{rows(fs)}, calls {calls(fs)}, elapsed_s {fs['elapsed_s']} — the same number of calls, as the "
             "calls depend only on the data and the reference.")
    L.append("")
    return L


def usaddress() -> list[str]:
    d = load("usaddress")
    fk = load("usaddress_fake")
    ab = load("aborted_runs")["usaddress_local_120_without_max_length"]
    rp = load("repro_truncation")
    s, o = d["summary"], d["overall"]
    L = ["### 3. US address parsing (`extract`)", ""]
    L.append(f"Data: `{d['data']['file']}` ({d['data']['rows']:,} addresses), read in place. Sample: "
             f"{d['sample']['n']} addresses, seed {d['sample']['seed']}, {d['sample']['how']}. Command: "
             f"`.venv/bin/python bench/etl/usaddress.py --model '{{name: local, n_threads: 1}}' --sample "
             f"{d['sample']['n']} --seed {d['sample']['seed']}` → `{d['command']}`. Run {at(d['machine'])}.")
    L.append("")
    L.append(f"Job: one `extract` step, `input: \"{{address}}\"`, nine nullable string fields (AddressNumber, "
             "StreetNamePreDirectional, StreetName, StreetNamePostType, OccupancyType, OccupancyIdentifier, "
             f"PlaceName, StateName, ZipCode), each with a one-line description and `max_length: {d['max_length']}`. "
             "Scoring: a field is right when gold and answer are both null/absent or equal after strip() "
             "(strict); loose also ignores case and punctuation (the gold tokens keep their commas: "
             "`Chicago,`). The all-null baseline predicts null for every field.")
    L.append("")
    L.append(f"Overall ({o['field_cells']:,} field cells): strict **{pct(o['acc_strict'])}**, loose "
             f"**{pct(o['acc_loose'])}** (all-null baseline {pct(o['acc_null_baseline'])}); addresses with "
             f"every field right: {o['addresses_all_fields_right_strict']} strict, "
             f"{o['addresses_all_fields_right_loose']} loose. Rows {rows(s)}; calls {calls(s)}; tokens "
             f"{tokens(s)}; elapsed_s {s['elapsed_s']}.")
    L.append("")
    L.append("| field | gold non-null | strict | loose | all-null baseline |")
    L.append("|---|---:|---:|---:|---:|")
    for k, v in d["per_field"].items():
        L.append(f"| {k} | {v['gold_non_null']} | {pct(v['acc_strict'])} | {pct(v['acc_loose'])} | "
                 f"{pct(v['acc_null_baseline'])} |")
    L.append("")
    L.append("The 135M model's answers are mostly not address parts (`\");\\n\"`, `\"N\"` in every field, a "
             "field starting with `,` or `.`); it scores below the all-null baseline. Examples are in the JSON.")
    L.append("")
    L.append(f"Why `max_length`: the first run of this job had no `max_length` (`{ab['command']}`); it was "
             f"stopped after {ab['stopped_after_s']} s, having started {ab['addresses_started']} addresses with "
             f"{ab['attempts']['ok']} ok and {ab['attempts']['truncated']} truncated attempts "
             f"({ab['model_time_in_truncated_calls_s']} of {ab['model_time_s']} s of model time in truncated "
             "calls; figures in results/aborted_runs.json). `.venv/bin/python bench/etl/repro_truncation.py` "
             f"reproduces it on one address ({rp['address']!r}):")
    L.append("")
    L.append("| attempt | outcome | max_tokens | temperature | output tokens | latency s | text starts |")
    L.append("|---:|---|---:|---:|---:|---:|---|")
    for c in rp["attempts"]:
        L.append(f"| {c['attempt']} | {c['outcome']} | {c['max_tokens']} | {c['temperature']} | "
                 f"{c['output_tokens']} | {c['latency_s']} | `{c['text_start'][:40]}...` |")
    L.append("")
    rs = rp["summary"]
    L.append(f"(Row {rows(rs)}; tokens {tokens(rs)}; elapsed_s {rs['elapsed_s']}.) See finding 1 below.")
    L.append("")
    fs = fk["summary"]
    L.append(f"Same job and sample, `--model fake`: {rows(fs)}, calls {calls(fs)}, elapsed_s {fs['elapsed_s']}.")
    L.append("")
    return L


def pipeline() -> list[str]:
    d = load("pipeline")
    L = ["### 4. Pipeline: classify → extract (when billing) → filter (`examples/pipeline.yaml`)", ""]
    L.append("examples/pipeline.yaml as it is, copied to a temporary folder with `source:` made absolute and "
             "the sink there; one fresh store per part. The edited copy changes only the last step's "
             f"question, from \"{d['fake']['edit']['question_before']}\" to \"{d['fake']['edit']['question_after']}\". "
             "Calls per step: `SELECT step, replayed, COUNT(*) FROM ledger WHERE run_id = ? GROUP BY step, replayed` "
             "on the store. Files: data rows in the sink, `.quarantine.csv` and `.skipped.csv` written by the run.")
    L.append("")
    L.append("| part | run | command | rows | sink / quarantine / skipped files | calls | ledger: category | refund | wants_money_back | elapsed_s |")
    L.append("|---|---|---|---|---|---|---|---|---|---:|")
    for part, label in (("fake", "`.venv/bin/python bench/etl/pipeline.py --part fake`"),
                        ("local", "`.venv/bin/python bench/etl/pipeline.py --part local --limit 20 --model '{name: local, n_threads: 1}'`")):
        p = d[part]
        for key, name in (("first_run", "first"), ("rerun_after_edit", "rerun, last step edited")):
            r = p[key]
            s, fl, lg = r["summary"], r["files"], r["ledger_by_step"]

            def led(step: str, lg: dict = lg) -> str:
                x = lg.get(step, {"paid": 0, "replayed": 0})
                return f"{x['paid']} paid, {x['replayed']} replayed"

            L.append(f"| {part} | {name} | `{r['command']}` | {rows(s)} (accounted: {r['rows_accounted']}) | "
                     f"{fl['sink_rows']} / {fl['quarantine_rows']} / {fl['skipped_rows']} | {calls(s)} | "
                     f"{led('category')} | {led('refund')} | {led('wants_money_back')} | {s['elapsed_s']} |")
        L.append(f"| {part} | | script: {label}; run {at(p['run_at'])} | | | | | | | |")
    L.append("")
    L.append("In both parts the rerun paid only for the edited step: every `category` and `refund` call was "
             "replayed from the store. The fake model's filter answers did not change with the question (it "
             "derives its answer from the user message, and the question is in the system prompt), hence the "
             "same 112/131 split. With the bundled model the first run kept all 20 rows; the edited question "
             "skipped 2.")
    L.append("")
    return L


def abt_null_prices() -> str:
    from _etl import DATA

    n = sum(1 for line in (DATA / "entity_matching" / "abt-buy" / "test.ndjson").read_text().splitlines()
            if line.strip() and json.loads(line).get("price_left") is None)
    return f"{n:,}"


def findings() -> list[str]:
    rp = load("repro_truncation")
    ab = load("aborted_runs")["abt_buy_local_500_two_threads"]
    mt = [c["max_tokens"] for c in rp["attempts"]]
    return [
        "### What looked wrong in Corral (not fixed here)",
        "",
        f"1. **A truncated answer is retried with the same prompt at temperature 0 and a doubled `max_tokens`** "
        f"(engine.py `_solve`: `max_tokens * 2 ** min(attempt, 3)`; max_tokens {', '.join(map(str, mt))} in the "
        "repro). With the bundled model at temperature 0 each retry regenerates the same text, longer, so a row "
        "that loops costs 256 + 512 + 1024 output tokens and then is quarantined anyway. The engine raises the "
        "temperature to 0.3 after `invalid`/`refused` but not after `truncated`, and the doubling is not in the "
        "docs (jobs.md `max_tokens`/`max_attempts`; concepts.md says a truncated answer is \"retried with the "
        "next sample\"). Repro: `.venv/bin/python bench/etl/repro_truncation.py`.",
        "2. **docs/cli.md is stale on `rows.skipped`**: \"Rows skipped by a filter (no built-in step skips rows "
        "yet, so this is 0)\" — the `filter` step does skip rows (131 of 243 in the fake pipeline run).",
        "3. **`corral show` prints a JSON null input value as Python's `None`** (`x: None`). Repro: a JSONL "
        "source `{\"id\": \"a\", \"x\": null, \"y\": \"b\"}`, any step over it with `key: id`, "
        "`corral run j.yaml --model fake`, then `corral show JOB a`.",
        "4. Pair-mode `match` renders a missing value as nothing, so the documented template "
        f"`\"{{name_left}}, ${{price_left}}\"` sends `A: ..., $` for the {abt_null_prices()} Abt-Buy test pairs whose left record has no price "
        "(there is no conditional in templates). And pair mode makes a call for an empty record, where "
        "reference mode shortcuts it (`empty record`); undocumented either way.",
        f"5. Speed under contention: with the default `n_threads` (all {ab.get('nproc', 2)} CPUs of this shared machine), "
        f"the first Abt-Buy attempt (`{ab['command']}`, 500 pairs) slowed from a mean of "
        f"{ab['mean_latency_s_per_block_of_25_calls'][0]} s per call (first 25 calls) to "
        f"{max(ab['mean_latency_s_per_block_of_25_calls'])} s (max single call {ab['latency_s']['max']} s) once "
        f"the 1-minute load average reached about {ab['load_average_1min_when_stopped']}; it was stopped after "
        f"{ab['paid_calls']} calls. All the model figures above use `{{name: local, n_threads: 1}}` (a model "
        "option, so the same run id).",
        "6. Outside the library: `bench/_common.py` `machine()` strips the `git status --porcelain` output before "
        "cutting 3 characters per line, so the first dirty file loses its first letter (\"ench/results/...\", "
        "\"EADME.md\" in RESULTS.md headers and JSON).",
        "",
    ]


def section() -> str:
    L = [HEADING, ""]
    L.append("Scripts in `bench/etl/` (each writes `bench/etl/results/NAME.json` and prints a summary); this "
             "section is written from those files by `.venv/bin/python bench/etl/make_section.py`. Every job "
             "file, sampled input and store lives in a temporary folder (`$TMP` in the commands); the data is "
             "read from `../shared/data` in place. Machine: 2 shared CPUs (AMD EPYC); the bundled model is "
             "SmolLM2-135M-Instruct run in-process by llama.cpp, given as `--model '{name: local, n_threads: 1}'` "
             "(see finding 5). elapsed_s is the `corral run` summary's; it includes loading the model. It is a "
             "tiny model: the prompts are Corral's own and were not tuned to the data.")
    L.append("")
    a, h, u, p = load("abt_buy"), load("hospital"), load("usaddress"), load("pipeline")
    sc, hs, uo = a["local_sample"]["scored"], h["figures"], u["overall"]
    L.append("| benchmark | sample (seed) | bundled-model result | calls (paid + replayed) | elapsed_s |")
    L.append("|---|---|---|---|---:|")
    L.append(f"| Abt-Buy `match` | {a['local_sample']['sample']['n']} pairs, {a['local_sample']['sample']['positives']} "
             f"positive ({a['local_sample']['sample']['seed']}) | P {sc['precision']:.3f} R {sc['recall']:.3f} "
             f"F1 {sc['f1']:.3f} (said \"same\" to all) | {calls(a['local_sample']['summary'])} | "
             f"{a['local_sample']['summary']['elapsed_s']} |")
    L.append(f"| Hospital `normalize` clean | all 1,000 rows | {hs['fixed_exactly']}/{hs['typos_in_sample']} typos fixed "
             f"({pct(hs['fixed_rate_of_all_typos'])}; {pct(hs['fixed_rate_of_typos_in_cleaned_columns'])} of cleaned "
             f"columns'), {hs['wrongly_changed_correct_cells']} correct cells broken | {calls(h['summary'])} | "
             f"{h['summary']['elapsed_s']} |")
    L.append(f"| usaddress `extract` | {u['sample']['n']} addresses ({u['sample']['seed']}) | field accuracy "
             f"{pct(uo['acc_strict'])} strict / {pct(uo['acc_loose'])} loose (all-null baseline "
             f"{pct(uo['acc_null_baseline'])}) | {calls(u['summary'])} | {u['summary']['elapsed_s']} |")
    lf, lr = p["local"]["first_run"]["summary"], p["local"]["rerun_after_edit"]["summary"]
    L.append(f"| pipeline (`--limit 20`) | first 20 tickets | {rows(lf)}; after the edit: {rows(lr)} | "
             f"{calls(lf)}; rerun {calls(lr)} | {lf['elapsed_s']}; {lr['elapsed_s']} |")
    L.append("")
    for part in (abt(), hospital(), usaddress(), pipeline(), findings()):
        L += part
    return "\n".join(L).rstrip() + "\n"


def main() -> None:
    old = TARGET.read_text(encoding="utf-8") if TARGET.exists() else "# Corral benchmarks\n"
    start = old.find(HEADING)
    if start < 0:
        new = old.rstrip() + "\n\n" + section()
    else:
        nxt = old.find("\n## ", start + len(HEADING))
        tail = old[nxt + 1:] if nxt >= 0 else ""
        new = old[:start] + section() + ("\n" + tail if tail else "")
    TARGET.write_text(new, encoding="utf-8")
    print(f"wrote the ETL section of {TARGET}")


if __name__ == "__main__":
    main()
