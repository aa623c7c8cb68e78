"""`corral calibrate`: strategies measured on a labeled sample with the fake model's noisy-labeler
mode (a cheap model right 70% of the time, a strong one 95%), the cheapest one that reaches the
target chosen, and costs that count replayed calls at the price first paid."""

from __future__ import annotations

import csv
import json
import random
import sqlite3
from decimal import Decimal
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from corral._calibrate import matches, wilson
from corral.cli import main
from corral.strategies import parse_strategy

from ..conftest import write

LABELS = ["billing", "shipping", "technical", "account", "other"]
N = 300
JOB = """\
name: triage
source: source.csv
key: id
model: &cheap {name: fake, truth: truth.csv, accuracy: 0.7, price_per_call: 0.0001, logprobs: true}
models:
  cheap: *cheap
  strong: {name: "fake:strong", truth: truth.csv, accuracy: 0.95, price_per_call: 0.002}
steps:
  - name: category
    task: classify
    input: "{text}"
    labels: [billing, shipping, technical, account, other]
    strategy:
      name: cascade
      threshold: 0.8
      stages: [{name: single, model: cheap}, {name: single, model: strong}]
sink: out/triage.csv
"""


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("calibrate")
    rng = random.Random(3)
    rows = [(f"t{i:03d}", f"ticket {i}: the customer writes about case {rng.randint(0, 10**6)}", rng.choice(LABELS))
            for i in range(N)]

    def table(name: str, header: list[str], data: list[tuple[str, ...]]) -> None:
        with (d / name).open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows(data)

    table("source.csv", ["id", "text"], [(k, t) for k, t, _ in rows])
    table("truth.csv", ["text", "label"], [(t, lab) for _, t, lab in rows])
    table("labels.csv", ["id", "category"], [(k, lab) for k, _, lab in rows])
    write(d / "job.yaml", JOB)
    return d


def calibrate(folder: Path, *args: str, store: str = "store/corral.db"):
    argv = ["calibrate", str(folder / "job.yaml"), "--labels", str(folder / "labels.csv"),
            "--store", str(folder / store), *args]
    return CliRunner().invoke(main, argv, catch_exceptions=False)


def ledger(folder: Path, store: str = "store/corral.db", run: str | None = None) -> tuple[int, int, int]:
    """(paid calls, replayed calls, nanodollars paid) in the store's ledger."""
    db = sqlite3.connect(folder / store)
    try:
        where, params = ("WHERE run_id=?", (run,)) if run else ("", ())
        row = db.execute(
            f"SELECT COALESCE(SUM(replayed=0),0), COALESCE(SUM(replayed=1),0), COALESCE(SUM(cost_nanos),0) FROM ledger {where}",
            params,
        ).fetchone()
        return tuple(row)
    finally:
        db.close()


@pytest.fixture(scope="module")
def first(folder):
    result = calibrate(folder, "--target", "0.9", "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout), ledger(folder)


def by_label(report: dict) -> dict[str, dict]:
    return {c["strategy"]: c for c in report["candidates"]}


def test_report_lists_the_default_grid_once_each(first):
    report, _ = first
    names = [c["strategy"] for c in report["candidates"]]
    assert len(names) == len(set(names)) == 16  # own cascade, 2 singles, 8 votes, 5 more thresholds
    cands = by_label(report)
    assert "single @cheap" in cands and "single @strong" in cands  # the job's model is `cheap`
    for m in ("cheap", "strong"):
        for s in (3, 5):
            for a in ("1.0", "0.6"):
                assert f"vote(samples={s}, agreement={a}) @{m}" in cands
    cascades = [c for c in report["candidates"] if c["spec"]["name"] == "cascade"]
    assert sorted(c["spec"].get("threshold", 0.8) for c in cascades) == [0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    assert [c["strategy"] for c in report["candidates"] if c["current"]] == [
        "cascade(threshold=0.8)[single @cheap → single @strong]"
    ]
    assert report["sample"] == 200 and report["labeled_rows"] == N and report["labeled_in_source"] == N
    assert report["step"] == "category" and report["label_column"] == "category" and report["key_column"] == "id"


def test_accuracy_is_measured(first):
    report, _ = first
    cands = by_label(report)
    cheap, strong = cands["single @cheap"], cands["single @strong"]
    assert 0.6 < cheap["accuracy"] < 0.8
    assert strong["accuracy"] > 0.9
    assert strong["accuracy"] - cheap["accuracy"] > 0.15
    for c in report["candidates"]:
        assert c["rows"] == 200 and c["accuracy"] == c["correct"] / 200
        lo, hi = c["interval"]
        assert lo <= c["accuracy"] <= hi
        assert c["held"] == c["quarantined"] == c["not_written"] == 0
        assert c["status"] == "finished"


def test_the_chosen_one_is_the_cheapest_that_meets_the_target(first):
    report, _ = first
    chosen = report["chosen"]
    assert chosen is not None and chosen["meets_target"] and chosen["accuracy"] >= 0.9
    costs = [c["cost_usd"] for c in report["candidates"]]
    assert costs == sorted(costs)
    for c in report["candidates"]:
        assert c["meets_target"] == (c["accuracy"] >= 0.9)
        if c["cost_usd"] < chosen["cost_usd"]:
            assert not c["meets_target"], c
    # the cheap model alone cannot reach 90%; the chosen one is cheaper than the strong one alone
    assert not by_label(report)["single @cheap"]["meets_target"]
    assert chosen["cost_usd"] < by_label(report)["single @strong"]["cost_usd"]
    snippet = yaml.safe_load(report["snippet"])
    assert parse_strategy(snippet["strategy"]) == parse_strategy(chosen["spec"])


def test_costs_count_replayed_calls_at_the_price_paid(first, folder):
    report, paid = first
    cands = by_label(report)
    # the cascade (run first) paid for every cheap single call: single @cheap only replays them
    single = cands["single @cheap"]
    made, replayed, nanos = ledger(folder, run=single["run"])
    assert (made, replayed, nanos) == (0, 200, 0)
    assert single["calls"] == 200 and single["calls_per_row"] == 1.0
    assert Decimal(str(single["cost_usd"])) == Decimal("0.02")
    assert single["cost_per_1000_rows"] == pytest.approx(0.1)
    strong = cands["single @strong"]
    assert strong["cost_usd"] == pytest.approx(200 * 0.002)
    for c in report["candidates"]:
        if "strong" not in c["strategy"]:
            assert c["cost_usd"] == pytest.approx(c["calls"] * 0.0001), c["strategy"]
        assert c["tokens"]["input"] > 0 and c["tokens_per_row"] > 0
    # shared calls are paid once: the candidates' costs add up to more than the ledger paid
    assert sum(c["cost_usd"] for c in report["candidates"]) > paid[2] / 1e9 * 1.5
    assert paid[1] > 0


def test_running_again_gives_the_same_figures_and_pays_nothing(first, folder):
    report, paid = first
    again = calibrate(folder, "--target", "0.9", "--json")
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout) == report
    assert ledger(folder)[0] == paid[0] and ledger(folder)[2] == paid[2]  # no new paid call
    assert not (folder / "store" / "calibrate").exists()  # the temporary folder is gone


def test_table_and_snippet(first, folder):
    result = calibrate(folder, "--target", "0.9")
    assert result.exit_code == 0, result.output
    out = result.stdout
    for head in ("strategy", "accuracy", "95% interval", "calls/row", "tokens/row", "cost/1k rows"):
        assert head in out
    chosen = first[0]["chosen"]["strategy"]
    assert sum("✓" in line for line in out.splitlines()) == 1
    assert any("✓" in line and chosen in line for line in out.splitlines())
    assert "(current)" in out
    assert f"Cheapest reaching 90.0%: {chosen}" in out
    assert first[0]["snippet"].strip() in out
    progress = [ln for ln in result.stderr.splitlines() if ln.startswith("[")]
    assert len(progress) == 16 and progress[0].startswith("[1/16] ")


def test_unreachable_target_exits_6_and_names_the_most_accurate(first, folder):
    result = calibrate(folder, "--target", "0.999")
    assert result.exit_code == 6, result.output
    best = first[0]["most_accurate"]
    assert f"No candidate reaches 99.9% accuracy. The most accurate is {best['strategy']}" in result.stdout
    as_json = calibrate(folder, "--target", "0.999", "--json")
    assert as_json.exit_code == 6
    report = json.loads(as_json.stdout)
    assert report["chosen"] is None and report["snippet"] is None
    assert report["most_accurate"]["accuracy"] == max(c["accuracy"] for c in report["candidates"])


@pytest.mark.parametrize(
    "args,files,expect",
    [
        (["--labels", "nope.csv"], {}, "labels file not found"),
        (["--labels", "bad.csv"], {"bad.csv": "id,other\nt001,x\n"}, "no label column `category` or `label`. Its columns: id, other"),
        (["--labels", "bad.csv"], {"bad.csv": "ref,category\nt001,x\n"}, "no key column `id`. Its columns: ref, category"),
        (["--labels", "bad.csv", "--label-column", "gold"], {"bad.csv": "id,category\nt001,x\n"}, "no label column `gold`"),
        (["--labels", "bad.csv"], {"bad.csv": "id,category\nzz1,billing\n"}, "no labeled key is in the source"),
        (["--step", "categry"], {}, "has no step `categry`; did you mean `category`?"),
        (["--target", "1.5"], {}, "--target must be between 0 and 1"),
        (["--target", "-0.1"], {}, "--target must be between 0 and 1"),
        (["--candidates", "[{name: vote, sampels: 3}]"], {}, "unknown key `sampels`"),
    ],
)
def test_bad_input_is_one_line_exit_2(folder, tmp_path, args, files, expect):
    for name, text in files.items():
        write(tmp_path / name, text)
    argv = ["calibrate", str(folder / "job.yaml"), "--labels", str(folder / "labels.csv"), *args]
    argv = [str(tmp_path / a) if a in files or a == "nope.csv" else a for a in argv]
    result = CliRunner().invoke(main, argv, catch_exceptions=False)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0], result.stderr


def test_candidates_key_and_label_columns_and_json_shape(folder, tmp_path):
    rows = [{"ref": f"t{i:03d}", "gold": lab}
            for i, lab in enumerate(_truth(folder)) if i % 2 == 0]
    write(tmp_path / "gold.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    job = JOB.replace("key: id\n", "").replace("source: source.csv", "source: src.csv")
    write(folder / "keyless.yaml", job)
    (folder / "src.csv").write_text((folder / "source.csv").read_text().replace("id,text", "ref,text", 1))
    write(tmp_path / "cands.yaml", "- single\n- {name: single, model: strong}\n- {name: single, model: cheap}\n")
    result = CliRunner().invoke(main, [
        "calibrate", str(folder / "keyless.yaml"), "--labels", str(tmp_path / "gold.jsonl"),
        "--key-column", "ref", "--label-column", "gold", "--candidates", str(tmp_path / "cands.yaml"),
        "--sample", "40", "--seed", "5", "--target", "0.85", "--json", "--store", str(tmp_path / "s.db"),
    ], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert set(report) >= {"candidates", "chosen", "most_accurate", "snippet", "target", "sample"}
    assert report["sample"] == 40 and report["labeled_rows"] == 150 and report["labeled_in_source"] == 150
    assert [c["strategy"] for c in report["candidates"]] == ["single @cheap", "single @strong"]  # deduplicated
    for c in report["candidates"]:
        assert set(c) >= {"strategy", "accuracy", "interval", "calls", "calls_per_row", "tokens",
                          "tokens_per_row", "cost_usd", "cost_per_1000_rows", "meets_target", "held",
                          "quarantined", "spec", "run"}
    assert report["chosen"]["strategy"] == "single @strong"
    assert report["snippet"] == "strategy: {name: single, model: strong}\n"


def _truth(folder: Path) -> list[str]:
    with (folder / "labels.csv").open(newline="", encoding="utf-8") as f:
        return [r["category"] for r in csv.DictReader(f)]


def test_matching_and_interval():
    assert matches("Billing", " billing ")
    assert matches(["b", "a"], "a;b") and matches(["b", "a"], '["a", "b"]') and not matches(["a"], "a;b")
    assert matches(True, "yes") and matches(False, "false") and not matches(True, "no")
    assert matches(3, "3") and not matches("a", "b")
    lo, hi = wilson(95, 100)
    assert 0.88 < lo < 0.89 and 0.97 < hi < 0.98
    assert wilson(0, 0) == (0.0, 1.0)
