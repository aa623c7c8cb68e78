"""The engine's request layer against a real HTTP server speaking OpenAI's wire format."""

from __future__ import annotations

import asyncio
import csv
import json
import subprocess
import threading
import time
from pathlib import Path

import pytest

import corral
from corral import Job
from corral._client import SLOW_START_FROM
from corral.testing import ProviderServer

from ..conftest import corral_bin, write

pytest.importorskip("openai")
from corral.models.openai import OpenAIModel  # noqa: E402

KEY = "sk-test-0123456789abcdefSECRET"


def job(tmp: Path, rows: int, **extra) -> Job:
    write(tmp / "in.csv", "id,text\n" + "".join(f"r{i},message number {i} about things\n" for i in range(rows)))
    return Job.from_dict(
        {
            "name": "req",
            "source": "in.csv",
            "key": "id",
            "steps": [{"name": "cat", "task": "classify", "input": "{text}", "labels": ["a", "b", "c"]}],
            "sink": "out/o.csv",
            **extra,
        },
        base_dir=tmp,
    )


def model(srv: ProviderServer, **kw) -> OpenAIModel:
    return OpenAIModel("gpt-4o-mini", base_url=srv.openai_url, api_key=KEY, **kw)


def rows(p: Path) -> list[dict[str, str]]:
    with open(p, newline="") as f:
        return list(csv.DictReader(f))


def test_faults_every_row_one_state_and_ledger_equals_server(tmp_path):
    with ProviderServer(error_rate=0.2, truncation_rate=0.05, refusal_rate=0.02, malformed_rate=0.03,
                        latency_s=(0.0, 0.02), seed=4) as srv:
        r = corral.run(job(tmp_path, 150), model=model(srv))
        ok = srv.served(status=200)
    assert r.status == "finished" and r.accounted and r.pending == 0
    assert r.written + r.quarantined == 150
    for row in rows(tmp_path / "out" / "o.csv"):
        assert row["cat"] in {"a", "b", "c"}  # nothing truncated or refused became a value
    # every answer the server gave (200) is one paid call in the ledger, tokens included
    assert r.calls_made == ok.calls
    assert (r.input_tokens, r.output_tokens) == (ok.prompt_tokens, ok.completion_tokens)


def test_configured_rate_limit_paces_calls_without_429s(tmp_path):
    # 600 requests a minute, enforced over every 1-second window (10/s), each call taking 0.3 s
    with ProviderServer(rpm=600, rate_window_s=1.0, latency_s=0.3) as srv:
        spec = {"name": "openai:gpt-4o-mini", "base_url": srv.openai_url, "api_key": KEY, "rpm": 600}
        t0 = time.monotonic()
        r = corral.run(job(tmp_path, 60, model=spec))
        elapsed = time.monotonic() - t0
        by_status = srv.served_by_status()
    assert r.written == 60
    # pacing at exactly the limit can graze a sliding window's edge once in a while
    assert 429 not in by_status or by_status[429].calls <= 2, by_status
    assert 4.5 < elapsed < 15  # about 10 a second, not all at once and not crawling


def test_outage_pauses_the_run_and_recovery_finishes_it(tmp_path):
    with ProviderServer(latency_s=0.02) as srv:
        def outage() -> None:
            time.sleep(0.4)
            srv.configure(down=True)
            time.sleep(2.5)
            srv.configure(down=False)

        t = threading.Thread(target=outage)
        t.start()
        r = corral.run(job(tmp_path, 200, concurrency=4), model=model(srv, timeout=5))
        t.join()
        failed = sum(s.calls for st, s in srv.served_by_status().items() if st == 503)
    assert r.status == "finished" and r.written == 200 and r.quarantined == 0
    # the breaker stopped the flood: far fewer failed calls than rows x retries
    assert 0 < failed < 60


def run_provider_job(tmp: Path, rows: int, model: str, url: str, key: str) -> subprocess.CompletedProcess[str]:
    """`corral run job.yaml --json` on `rows` rows with a provider model, in `tmp`."""
    write(tmp / "in.csv", "id,text\n" + "".join(f"r{i},t{i}\n" for i in range(rows)))
    write(tmp / "job.yaml", f"""\
name: provider
source: in.csv
key: id
model: {{name: "{model}", base_url: "{url}", api_key: "{key}"}}
steps:
  - {{name: cat, task: classify, input: "{{text}}", labels: [a, b]}}
sink: out/o.csv
""")
    return subprocess.run([corral_bin(), "run", "job.yaml", "--json"], cwd=tmp,
                          capture_output=True, text=True, timeout=120)


def test_bad_key_stops_the_run_with_exit_4_and_never_stores_the_key(tmp_path):
    with ProviderServer(api_key="the-right-key", echo_key=True) as srv:
        p = run_provider_job(tmp_path, 80, "openai:gpt-4o-mini", srv.openai_url, KEY)
        served = sum(s.calls for s in srv.served_by_status().values())
    assert p.returncode == 4, p.stderr
    s = json.loads(p.stdout)
    assert s["status"] == "failed" and s["rows"]["pending"] > 0
    assert "Failed: authentication failed" in p.stderr
    assert served <= SLOW_START_FROM  # stopped after the first calls in flight, not every row tried
    # the key is nowhere: output, store, files written
    assert KEY not in p.stdout + p.stderr
    for f in tmp_path.rglob("*"):
        if f.is_file() and f.name != "job.yaml":
            assert KEY.encode() not in f.read_bytes(), f


def test_stale_rate_limit_headers_do_not_keep_pausing(tmp_path):
    async def go() -> float:
        with ProviderServer(rpm=100000, rate_window_s=60) as srv:
            m = model(srv)
            t0 = time.monotonic()
            await corral.run_async(job(tmp_path, 40), model=m)
            return time.monotonic() - t0

    assert asyncio.run(go()) < 20


@pytest.mark.parametrize("provider, status, code", [
    ("openai", 429, "insufficient_quota"),
    ("anthropic", 402, None),
])
def test_an_account_out_of_quota_stops_the_run_with_exit_4_then_resumes(tmp_path, provider, status, code):
    with ProviderServer(fail_status=status, fail_code=code, fail_message="You exceeded your current quota") as srv:
        url = srv.openai_url if provider == "openai" else srv.url
        name = "openai:gpt-4o-mini" if provider == "openai" else "anthropic:claude-3-5-haiku-latest"
        p = run_provider_job(tmp_path, 40, name, url, "k")
        served = sum(s.calls for s in srv.served_by_status().values())
        assert p.returncode == 4, p.stderr
        s = json.loads(p.stdout)
        # stopped at once: no row was quarantined one by one, every row is still to do
        assert s["status"] == "failed" and s["rows"]["quarantined"] == 0 and s["rows"]["pending"] == 40
        assert "account out of quota" in p.stderr and "add credit" in p.stderr
        assert served < 40
        # credit added: the same command resumes and finishes
        srv.configure(fail_status=None, fail_code=None)
        p = run_provider_job(tmp_path, 40, name, url, "k")
    assert p.returncode == 0, p.stderr
    s = json.loads(p.stdout)
    assert s["status"] == "finished" and s["rows"]["written"] == 40
