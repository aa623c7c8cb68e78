"""Every example job runs; the bundled model runs end to end on a few real rows."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import ROOT, corral_bin, shared

EXAMPLES = ROOT / "examples"


def copy_examples(tmp: Path) -> Path:
    dst = tmp / "examples"
    shutil.copytree(EXAMPLES, dst, ignore=shutil.ignore_patterns("out", ".corral"))
    return dst


def run(args: list[str], cwd: Path, timeout: float = 600) -> dict:
    p = subprocess.run([corral_bin(), *args, "--json"], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_tickets_example_with_fake_model(tmp_path):
    ex = copy_examples(tmp_path)
    s = run(["run", "examples/tickets.yaml", "--model", "fake"], cwd=tmp_path)
    with open(ex / "data" / "tickets.csv", newline="", encoding="utf-8") as f:
        n = sum(1 for _ in csv.DictReader(f))
    assert n >= 200
    r = s["rows"]
    assert r["in"] == n == r["written"]  # the fake model's answers always satisfy the schema
    with open(ex / "out" / "tickets.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == r["written"]
    assert set(rows[0]) >= {"ticket_id", "subject", "body", "category", "order_id", "amount", "urgency"}
    assert {x["category"] for x in rows} <= {"billing", "shipping", "technical", "account", "other"}
    assert {x["urgency"] for x in rows} <= {"low", "medium", "high"}


def test_experts_example_routes_rows_and_scores_each_route(tmp_path):
    ex = copy_examples(tmp_path)
    s = run(["run", "examples/experts.yaml", "--model", "fake"], cwd=tmp_path)
    with open(ex / "data" / "tickets.csv", newline="", encoding="utf-8") as f:
        tickets = list(csv.DictReader(f))
    assert s["rows"]["in"] == len(tickets) == s["rows"]["written"]
    out = run(["routes", "experts", "--labels", "examples/data/tickets_labels.csv"], cwd=tmp_path)
    [step] = out["steps"]
    assert step["step"] == "urgency" and step["rows"] == len(tickets) and step["scored"]
    by = {r["route"]: r for r in step["routes"]}
    assert set(by) == {"money", "shouting", "default"}
    with open(ex / "out" / "experts.csv", newline="", encoding="utf-8") as f:
        written = {r["ticket_id"]: r for r in csv.DictReader(f)}
    billing = sum(r["category"] == "billing" for r in written.values())
    assert by["money"]["rows"] == billing > 0  # the first expert takes every billing ticket
    assert by["shouting"]["calls"] >= 2 * by["shouting"]["rows"]  # a vote: two samples or more
    assert all(r["labeled"] and 0 <= r["accuracy"] <= 1 for r in step["routes"])


def test_sms_triage_job_runs_as_written(tmp_path):
    shared("sms_spam", "SMSSpamCollection.tsv")
    # the job file lives at the project root and reads ../shared/data; run it in place with a
    # temp store, sending the sink to a temp folder through a copy that differs only in `sink:`
    text = (ROOT / "sms-triage.yaml").read_text().replace("sink: out/sms.parquet", f"sink: {tmp_path}/sms.parquet")
    job = ROOT / f".sms-test-{tmp_path.name}.yaml"
    job.write_text(text)
    try:
        s = run(["run", str(job), "--model", "fake", "--limit", "300"], cwd=tmp_path)
    finally:
        job.unlink()
    assert s["rows"]["in"] == 300 == s["rows"]["written"]
    import pyarrow.parquet as pq

    t = pq.read_table(tmp_path / "sms.parquet")
    assert t.num_rows == 300 and set(t.column("spam").to_pylist()) <= {"spam", "ham"}
    assert t.column_names[:2] == ["Label", "SMS"]


@pytest.mark.slow
def test_bundled_model_end_to_end(tmp_path):
    pytest.importorskip("llama_cpp")
    ex = copy_examples(tmp_path)
    s = run(["run", "examples/tickets.yaml", "--limit", "2"], cwd=tmp_path)
    r = s["rows"]
    assert r["in"] == 2 and r["pending"] == 0
    assert r["written"] + r["quarantined"] == 2
    assert s["calls"]["made"] >= 4 and s["tokens"]["input"] > 0 and s["tokens"]["output"] > 0
    assert s["cost_usd"] == 0.0
    with open(ex / "out" / "tickets.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        assert row["category"] in {"billing", "shipping", "technical", "account", "other"}
        assert row["urgency"] in {"low", "medium", "high"}
    # a rerun replays the recorded answers: no new calls
    again = run(["run", "examples/tickets.yaml", "--limit", "2"], cwd=tmp_path)
    assert again["calls"]["made"] == s["calls"]["made"]


@pytest.mark.slow
def test_the_demo_holds_unsure_rows_and_scores_what_it_wrote(tmp_path):
    """`make demo`'s two commands on 6 tickets: answers under min_confidence are held for review,
    never in the sink; no order id or amount in the sink that is not in its ticket; eval scores
    the written and the held rows apart."""
    pytest.importorskip("llama_cpp")
    ex = copy_examples(tmp_path)
    s = run(["run", "examples/demo.yaml", "--limit", "6"], cwd=tmp_path)
    r = s["rows"]
    assert r["in"] == 6 and r["pending"] == 0 and r["written"] + r["review"] + r["quarantined"] == 6
    tickets = {t["ticket_id"]: t for t in csv.DictReader((ex / "data" / "tickets.csv").open(encoding="utf-8"))}
    written = list(csv.DictReader((ex / "out" / "demo.csv").open(encoding="utf-8")))
    for row in written:
        text = tickets[row["ticket_id"]]["body"] + tickets[row["ticket_id"]]["subject"]
        if row["order_id"]:
            assert row["order_id"] in text
        if row["amount"]:
            assert str(int(float(row["amount"]))) in text.replace(",", "")
    held = list(csv.DictReader((ex / "out" / "demo.review.csv").open(encoding="utf-8"))) if r["review"] else []
    assert len(held) == r["review"]
    assert all("confidence" in h["_reason"] and "<" in h["_reason"] for h in held)
    p = subprocess.run([corral_bin(), "eval", "examples/demo.yaml", "--labels", "examples/data/tickets_labels.csv",
                        "--no-run", "--json"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    [run_eval] = json.loads(p.stdout)["runs"]
    assert run_eval["rows"] == 243 and run_eval["not_in_run"] == 237  # 243 labeled, 6 in the preview
    cat = next(st for st in run_eval["steps"] if st["step"] == "category")
    groups = {g["group"]: g for g in cat["groups"]}
    assert groups["written"]["rows"] == r["written"] and groups["held"]["rows"] == r["review"]
    assert cat["calibration"] is not None  # likelihood scoring gives every answer a confidence


def test_embed_example_writes_fixed_size_vectors_and_a_rerun_replays_them(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    ex = copy_examples(tmp_path)
    s = run(["run", "examples/embed.yaml", "--model", "fake"], cwd=tmp_path)
    assert s["rows"]["in"] == s["rows"]["written"] > 0
    table = pq.read_table(ex / "out" / "ticket_vectors.parquet")
    assert table.schema.field("vec").type == pa.list_(pa.float32(), 64)  # fake's default length
    assert set(table.column("vec_model").to_pylist()) == {"fake"}
    again = run(["run", "examples/embed.yaml", "--model", "fake"], cwd=tmp_path)
    assert again["calls"]["made"] == s["calls"]["made"]  # the same run, finished: nothing paid again
