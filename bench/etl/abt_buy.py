"""Abt-Buy entity matching as a `match` job in pair mode.

  .venv/bin/python bench/etl/abt_buy.py --part fake    # whole test split, --model fake
  .venv/bin/python bench/etl/abt_buy.py --part local   # seeded stratified sample, bundled model

Data: ../shared/data/entity_matching/abt-buy/test.ndjson (1,916 pairs, 206 positives), read in
place for the full split; the sample is written to a temporary folder with a `pair_id` column
(the 0-based line of the pair in test.ndjson).

The job (written to the temporary folder):
  left:  "{name_left}, ${price_left}"    right: "{name_right}, ${price_right}"
  block: {threshold: T}                   (T = --threshold, default 0.4 as in examples/match.yaml)

Scores: predicted match = the sink's `same` is true; a quarantined pair counts as "no match"
(and is reported). The blocking rule alone (similarity >= T, with Corral's own `similarity`
function on the same rendered records) is scored as a baseline on the same pairs.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine  # noqa: E402
from _etl import DATA, RESULTS, accounted, prf, read_jsonl, run_corral, write_result, yaml_str  # noqa: E402

from corral.tasks._reference import similarity  # noqa: E402

TEST = DATA / "entity_matching" / "abt-buy" / "test.ndjson"
LEFT = "{name_left}, ${price_left}"
RIGHT = "{name_right}, ${price_right}"
SWEEP = [0.4, 0.5, 0.6, 0.7, 0.8, 0.9]


def _txt(v: Any) -> str:
    return "" if v is None else str(v)


def rendered(row: dict[str, Any]) -> tuple[str, str]:
    """The two records as the job's templates render them (null renders as nothing)."""
    return (
        f"{_txt(row['name_left'])}, ${_txt(row['price_left'])}".strip(),
        f"{_txt(row['name_right'])}, ${_txt(row['price_right'])}".strip(),
    )


def block_baseline(rows: list[dict[str, Any]]) -> dict[str, Any]:
    sims = [similarity(*rendered(r)) for r in rows]
    out = {}
    for t in SWEEP:
        tp = sum(1 for s, r in zip(sims, rows) if s >= t and r["label"] == 1)
        fp = sum(1 for s, r in zip(sims, rows) if s >= t and r["label"] == 0)
        fn = sum(1 for s, r in zip(sims, rows) if s < t and r["label"] == 1)
        out[str(t)] = {"pairs_below_threshold": sum(1 for s in sims if s < t), **prf(tp, fp, fn)}
    return out


def write_job(folder: Path, source: Path, threshold: float, key: str | None) -> Path:
    job = folder / "abt_buy.yaml"
    lines = [
        "name: abt-buy-match",
        f"source: {yaml_str(str(source))}",
    ]
    if key:
        lines.append(f"key: {key}")
    lines += [
        "steps:",
        "  - name: same",
        "    task: match",
        f"    left: {yaml_str(LEFT)}",
        f"    right: {yaml_str(RIGHT)}",
        f"    block: {{threshold: {threshold}}}",
        "model: local",
        "sink: out/abt_buy.jsonl",
    ]
    job.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return job


def score(folder: Path, rows_in: list[dict[str, Any]]) -> dict[str, Any]:
    written = read_jsonl(folder / "out" / "abt_buy.jsonl")
    quarantined = read_jsonl(folder / "out" / "abt_buy.quarantine.jsonl")
    tp = fp = fn = tn = 0
    blocked = blocked_pos = 0
    for r in written:
        pred = r["same"] is True
        gold = r["label"] == 1
        if str(r.get("same_reason") or "").startswith("blocked:"):
            blocked += 1
            blocked_pos += gold
        tp += pred and gold
        fp += pred and not gold
        fn += (not pred) and gold
        tn += (not pred) and not gold
    q_pos = sum(1 for r in quarantined if r.get("label") == 1)
    fn += q_pos  # a quarantined pair has no "same": counted as "no match"
    tn += len(quarantined) - q_pos
    return {
        "rows_in_file": len(rows_in),
        "written": len(written),
        "quarantined": len(quarantined),
        "quarantined_positives": q_pos,
        "quarantine_reasons": sorted({r.get("_reason") for r in quarantined})[:10],
        "predicted_match": tp + fp,
        "tn": tn,
        "decided_by_blocking_without_call": blocked,
        "positives_lost_to_blocking": blocked_pos,
        **prf(tp, fp, fn),
    }


def posthoc_block(folder: Path, thresholds: list[float]) -> dict[str, Any]:
    """What a higher threshold would have given, from this run's own answers: pairs below T
    become "no match", the model's answer stands for the rest (derived, not a separate run)."""
    written = read_jsonl(folder / "out" / "abt_buy.jsonl")
    quarantined = read_jsonl(folder / "out" / "abt_buy.quarantine.jsonl")
    out = {}
    for t in thresholds:
        tp = fp = fn = 0
        below = 0
        for r in written + quarantined:
            s = similarity(*rendered(r))
            pred = s >= t and r.get("same") is True
            below += s < t
            gold = r["label"] == 1
            tp += pred and gold
            fp += pred and not gold
            fn += (not pred) and gold
        out[str(t)] = {"pairs_below_threshold": below, **prf(tp, fp, fn)}
    return out


def sample(rows: list[dict[str, Any]], n: int, seed: int) -> list[dict[str, Any]]:
    """Stratified: round(n * positive rate) positives and the rest negatives, each drawn with
    random.Random(seed).sample; kept in file order."""
    rng = random.Random(seed)
    pos = [r for r in rows if r["label"] == 1]
    neg = [r for r in rows if r["label"] == 0]
    n_pos = round(n * len(pos) / len(rows))
    picked = rng.sample(pos, n_pos) + rng.sample(neg, n - n_pos)
    return sorted(picked, key=lambda r: r["pair_id"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", choices=["fake", "local"], required=True)
    ap.add_argument("--sample", type=int, default=250, help="pairs for --part local")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threshold", type=float, default=0.4)
    ap.add_argument("--model", default="local",
                    help="model for --part local, e.g. '{name: local, n_threads: 1}'")
    args = ap.parse_args()

    raw = [json.loads(line) for line in TEST.read_text(encoding="utf-8").splitlines() if line.strip()]
    for i, r in enumerate(raw):
        r["pair_id"] = i
    out_path = RESULTS / "abt_buy.json"
    result: dict[str, Any] = json.loads(out_path.read_text()) if out_path.exists() else {}
    result.pop("machine", None)
    result.pop("benchmark", None)
    result["data"] = {"file": "../shared/data/entity_matching/abt-buy/test.ndjson",
                      "pairs": len(raw), "positives": sum(r["label"] for r in raw)}
    result["templates"] = {"left": LEFT, "right": RIGHT}

    with tempfile.TemporaryDirectory(prefix="corral-abt-") as tmp:
        folder = Path(tmp)
        if args.part == "fake":
            runs = {}
            for t in (args.threshold, 0.6):
                sub = folder / f"t{t}"
                sub.mkdir()
                job = write_job(sub, TEST, t, key=None)
                res = run_corral(job, sub / "corral.db", "fake")
                runs[str(t)] = {
                    "run_at": machine(),
                    "threshold": t,
                    "command": res["command"].replace(str(sub), "$TMP"),
                    "exit_code": res["exit_code"],
                    "summary": res["summary"],
                    "rows_accounted": accounted(res["summary"]),
                    "scored": score(sub, raw),
                }
                print(f"fake, threshold {t}: {json.dumps(res['summary']['rows'])} "
                      f"calls {json.dumps(res['summary']['calls'])} "
                      f"accounted={accounted(res['summary'])} "
                      f"blocked={runs[str(t)]['scored']['decided_by_blocking_without_call']} "
                      f"elapsed {res['summary']['elapsed_s']} s")
            result["fake_full_split"] = runs
            result["blocking_alone_full_split"] = block_baseline(raw)
            print("blocking alone, full split:")
            for t, v in result["blocking_alone_full_split"].items():
                print(f"  T={t}: below={v['pairs_below_threshold']} P={v['precision']} "
                      f"R={v['recall']} F1={v['f1']}")
        else:
            picked = sample(raw, args.sample, args.seed)
            src = folder / "abt_buy_sample.jsonl"
            src.write_text("".join(json.dumps(r) + "\n" for r in picked), encoding="utf-8")
            job = write_job(folder, src, args.threshold, key="pair_id")
            res = run_corral(job, folder / "corral.db", args.model)
            s = res["summary"]
            scored = score(folder, picked)
            result["local_sample"] = {
                "sample": {
                    "how": "stratified: round(n * 206/1916) positives + the rest negatives, "
                           "random.Random(seed).sample from each class",
                    "n": len(picked), "seed": args.seed,
                    "positives": sum(r["label"] for r in picked),
                    "pair_ids": [r["pair_id"] for r in picked],
                },
                "run_at": machine(),
                "threshold": args.threshold,
                "model": args.model,
                "command": res["command"].replace(str(folder), "$TMP"),
                "exit_code": res["exit_code"],
                "summary": s,
                "rows_accounted": accounted(s),
                "scored": scored,
                "blocking_alone_on_sample": block_baseline(picked),
                "posthoc_model_plus_block": posthoc_block(folder, SWEEP),
            }
            print(f"local, sample n={len(picked)} seed={args.seed} "
                  f"(positives {result['local_sample']['sample']['positives']}), T={args.threshold}")
            print(f"  rows {json.dumps(s['rows'])} calls {json.dumps(s['calls'])} "
                  f"tokens {json.dumps(s['tokens'])} elapsed {s['elapsed_s']} s")
            print(f"  P={scored['precision']} R={scored['recall']} F1={scored['f1']} "
                  f"(tp {scored['tp']} fp {scored['fp']} fn {scored['fn']}; "
                  f"blocked {scored['decided_by_blocking_without_call']}, "
                  f"positives blocked {scored['positives_lost_to_blocking']}, "
                  f"quarantined {scored['quarantined']})")
            print("  blocking alone on the sample:")
            for t, v in result["local_sample"]["blocking_alone_on_sample"].items():
                print(f"    T={t}: below={v['pairs_below_threshold']} P={v['precision']} "
                      f"R={v['recall']} F1={v['f1']}")
            print("  model + blocking at T (derived from this run's answers):")
            for t, v in result["local_sample"]["posthoc_model_plus_block"].items():
                print(f"    T={t}: below={v['pairs_below_threshold']} P={v['precision']} "
                      f"R={v['recall']} F1={v['f1']}")
    path = write_result("abt_buy", result)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
