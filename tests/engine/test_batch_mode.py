"""`mode: batch` end to end: provider batch APIs through the engine, kill while polling, price."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from decimal import Decimal
from pathlib import Path

import pytest

import corral
from corral import Job
from corral.testing import ProviderServer

from ..conftest import corral_bin, write

pytest.importorskip("openai")
pytest.importorskip("anthropic")

KEY = "sk-batch-test-key-000111222333"
PRICES = {"input": 1.0, "output": 4.0, "batch_discount": 0.5}  # USD per million tokens


def make(tmp: Path, srv: ProviderServer, *, provider: str = "openai", mode: str = "batch", rows: int = 30, poll: float = 0.1) -> Job:
    write(tmp / "in.csv", "id,text\n" + "".join(f"r{i},ticket {i} about a late parcel\n" for i in range(rows)))
    name = "openai:gpt-4o-mini" if provider == "openai" else "anthropic:claude-haiku-4-5"
    url = srv.openai_url if provider == "openai" else srv.url
    return Job.from_dict(
        {
            "name": "batch",
            "source": "in.csv",
            "key": "id",
            "model": {"name": name, "base_url": url, "api_key": KEY, "batch_poll_s": poll, "prices": PRICES},
            "steps": [
                {"name": "cat", "task": "classify", "input": "{text}", "labels": ["a", "b"], "mode": mode},
                {"name": "info", "task": "extract", "input": "{text} ({cat})", "fields": {"n": "integer"}, "mode": mode},
            ],
            "sink": f"out/{mode}.csv",
        },
        base_dir=tmp,
    )


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_batch_mode_runs_every_step_through_batches_at_half_price(tmp_path, provider):
    with ProviderServer() as srv:
        r = corral.run(make(tmp_path, srv, provider=provider))
        subs = dict(srv.submissions)
    assert r.status == "finished" and r.written == 30 and r.accounted
    kind = "batches" if provider == "openai" else "message_batches"
    assert subs[kind] == 2  # one batch per step (the second step needs the first's answers)
    assert r.calls_made == 60
    assert r.calls_replayed == 0  # batch answers are paid calls, not replays
    # the same job online, on a fresh store, costs twice as much
    os.environ["CORRAL_STORE"] = str(tmp_path / "online.db")
    with ProviderServer() as srv:
        online = corral.run(make(tmp_path, srv, provider=provider, mode="online"))
    assert online.calls_made == 60
    assert r.cost_usd is not None and online.cost_usd is not None and r.cost_usd > 0
    assert r.cost_usd * 2 == online.cost_usd


def test_failed_and_expired_items_are_resubmitted_then_quarantined(tmp_path):
    with ProviderServer(batch_failure_rate=0.3, seed=2) as srv:
        r = corral.run(make(tmp_path, srv, rows=20))
        subs = srv.submissions["batches"]
    assert r.status == "finished" and r.accounted and r.pending == 0
    assert subs > 2  # failed lines went out again in new batches
    assert r.written + r.quarantined == 20
    with ProviderServer(expire_batches=True) as srv:
        job = make(tmp_path, srv, rows=10)
        job = Job.from_dict({**job.model_dump(mode="json"), "name": "expiring"}, base_dir=tmp_path)
        r2 = corral.run(job)
    assert r2.accounted and r2.pending == 0 and r2.quarantined > 0
    q = (tmp_path / "out" / "batch.quarantine.csv").read_text()
    assert "expired" in q


def test_killed_while_polling_resumes_without_resubmitting(tmp_path):
    with ProviderServer(batch_polls=10_000) as srv:
        job = make(tmp_path, srv, rows=25)
        yaml_path = tmp_path / "job.yaml"
        spec = job.model_dump(mode="json")
        yaml_path.write_text(json.dumps(spec))  # JSON is YAML
        proc = subprocess.Popen([corral_bin(), "run", "job.yaml", "--json"], cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while srv.submissions["batches"] < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)  # polling now
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert srv.submissions["batches"] == 1
        status = subprocess.run([corral_bin(), "status", "batch", "--json"], cwd=tmp_path,
                                capture_output=True, text=True, timeout=60)
        st = json.loads(status.stdout)
        assert st["status"] == "interrupted" and len(st["batches"]) == 1
        srv.configure(batch_polls=1)
        p = subprocess.run([corral_bin(), "run", "job.yaml", "--json"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        s = json.loads(p.stdout)
        # the first step's batch was polled, not submitted again; only the second step's is new
        assert srv.submissions["batches"] == 2
    assert s["rows"]["written"] == 25 and s["calls"]["made"] == 50
    assert Decimal(str(s["cost_usd"])) > 0


def test_batch_mode_needs_a_batch_model(tmp_path):
    write(tmp_path / "in.csv", "id,text\n1,a\n")
    job = Job.from_dict({"name": "x", "source": "in.csv", "key": "id", "sink": "o.csv",
                         "steps": [{"name": "c", "task": "classify", "input": "{text}", "labels": ["a", "b"], "mode": "batch"}]},
                        base_dir=tmp_path)
    with pytest.raises(corral.UserError, match="no batch API"):
        corral.run(job, model=corral.FakeModel())


def test_a_vote_in_batch_mode_takes_one_batch_per_round_and_finishes(tmp_path):
    with ProviderServer() as srv:
        write(tmp_path / "in.csv", "id,text\n" + "".join(f"r{i},ticket {i} about a late parcel\n" for i in range(10)))
        job = Job.from_dict({
            "name": "bvote", "source": "in.csv", "key": "id",
            "model": {"name": "openai:gpt-4o-mini", "base_url": srv.openai_url, "api_key": KEY,
                      "batch_poll_s": 0.1, "prices": PRICES},
            "steps": [{"name": "cat", "task": "classify", "input": "{text}", "labels": ["a", "b"],
                       "mode": "batch", "strategy": {"name": "vote", "samples": 3}}],
            "sink": "out/v.csv",
        }, base_dir=tmp_path)
        r = corral.run(job, store=tmp_path / "s.db")
        subs = dict(srv.submissions)
    assert r.status == "finished" and r.written == 10 and r.accounted
    # each vote round is one batch: at least the two samples every vote needs, at most three
    assert 2 <= subs["batches"] <= 3
    assert 20 <= r.calls_made <= 30 and r.calls_replayed == 0
