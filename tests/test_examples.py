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
