"""What a new user meets in the first hour: a provider that is down, a preview run after a full
one, the same job from another folder, a second worker, progress in a log file."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

import corral
from corral import Job
from corral.testing import ProviderServer

from .conftest import corral_bin, write

pytest.importorskip("openai")

KEY = "sk-test-0123456789abcdefFIRSTHOUR"
DATA = "id,text\n" + "".join(f"r{i},message number {i}\n" for i in range(3))


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def provider_job(tmp: Path, url: str, rows: int = 3, extra: str = "") -> Path:
    write(tmp / "in.csv", "id,text\n" + "".join(f"r{i},message number {i}\n" for i in range(rows)))
    return write(tmp / "job.yaml", f"""\
name: outage
source: in.csv
key: id
model: {{name: "openai:qwen", base_url: "{url}", api_key: "{KEY}"{extra}}}
steps:
  - {{name: cat, task: classify, input: "{{text}}", labels: [a, b]}}
sink: out/o.csv
""")


def start(tmp: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [corral_bin(), "run", "job.yaml", *args], cwd=tmp, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})},
    )


def wait_for_line(proc: subprocess.Popen[str], needle: str, timeout: float) -> list[str]:
    """Read stderr lines until one contains ``needle`` (fails after ``timeout`` seconds)."""
    assert proc.stderr is not None
    seen: list[str] = []
    done = threading.Event()

    def read() -> None:
        for line in proc.stderr:  # type: ignore[union-attr]
            seen.append(line)
            if needle in line:
                done.set()
                return

    threading.Thread(target=read, daemon=True).start()
    if not done.wait(timeout):
        proc.kill()
        raise AssertionError(f"no line with {needle!r} within {timeout} s; stderr so far: {''.join(seen)}")
    return seen


def csv_rows(p: Path) -> list[dict[str, str]]:
    with open(p, newline="") as f:
        return list(csv.DictReader(f))


# --- 1. a provider that is down ----------------------------------------------------------


def test_unreachable_provider_says_so_and_stops_after_max_outage_with_exit_5(tmp_path):
    url = f"http://127.0.0.1:{closed_port()}/v1"
    provider_job(tmp_path, url, extra=", max_outage_s: 3")
    t0 = time.monotonic()
    p = subprocess.run([corral_bin(), "run", "job.yaml"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=60)
    elapsed = time.monotonic() - t0
    assert p.returncode == 5, p.stderr
    assert elapsed < 30
    assert "no answer for 3 s (max_outage_s 3)" in p.stderr  # the last probe goes at the deadline
    assert "provider unreachable" in p.stderr and "next probe in" in p.stderr
    assert "cannot reach the server (connection refused)" in p.stderr
    assert "start the server or correct base_url" in p.stderr
    assert "Resume with: corral run job.yaml" in p.stderr
    # no row was given up on: all three wait for the provider
    assert "3 in = 0 written + 0 quarantined + 0 review + 0 skipped + 3 pending" in p.stdout
    assert KEY not in p.stdout + p.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_first_signal_ends_an_outage_wait_at_once_with_summary_and_resume_line(tmp_path, sig):
    url = f"http://127.0.0.1:{closed_port()}/v1"
    provider_job(tmp_path, url, rows=50, extra=", max_retries: 1")
    proc = start(tmp_path)
    wait_for_line(proc, "provider unreachable", timeout=60)
    time.sleep(0.5)
    t0 = time.monotonic()
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=20)
    assert time.monotonic() - t0 < 8, "the stop did not end the wait"
    assert proc.returncode == 130, err
    assert "Resume with: corral run job.yaml" in err
    assert "50 in = 0 written + 0 quarantined" in out  # the summary, nothing given up on
    assert ("SIGTERM" if sig == signal.SIGTERM else "Ctrl-C") in out


def test_a_server_answering_503_pauses_rows_instead_of_quarantining_and_recovers(tmp_path):
    with ProviderServer(down=True) as srv:
        job = Job.from_dict({
            "name": "down", "source": "in.csv", "key": "id",
            "model": {"name": "openai:gpt-4o-mini", "base_url": srv.openai_url, "api_key": KEY,
                      "max_retries": 1},
            "steps": [{"name": "cat", "task": "classify", "input": "{text}", "labels": ["a", "b"]}],
            "sink": "out/o.csv",
        }, base_dir=tmp_path)
        write(tmp_path / "in.csv", "id,text\n" + "".join(f"r{i},t{i}\n" for i in range(50)))
        notices: list[str] = []

        def progress(ev: dict) -> None:
            if ev.get("phase") == "notice":
                notices.append(ev["message"])

        def come_back() -> None:
            time.sleep(3)
            srv.configure(down=False)

        t = threading.Thread(target=come_back)
        t.start()
        r = corral.run(job, progress=progress)
        t.join()
    assert r.status == "finished", r.stop_reason
    assert r.written == 50 and r.quarantined == 0
    assert any("provider unreachable" in n and "503" in n for n in notices), notices
    assert any("answers again" in n for n in notices), notices


def test_outage_give_up_leaves_rows_pending_and_a_rerun_finishes(tmp_path):
    with ProviderServer(down=True) as srv:
        spec = {"name": "openai:gpt-4o-mini", "base_url": srv.openai_url, "api_key": KEY,
                "max_outage_s": 2}
        write(tmp_path / "in.csv", "id,text\n" + "".join(f"r{i},t{i}\n" for i in range(20)))
        job = Job.from_dict({
            "name": "down", "source": "in.csv", "key": "id", "model": spec,
            "steps": [{"name": "cat", "task": "classify", "input": "{text}", "labels": ["a", "b"]}],
            "sink": "out/o.csv",
        }, base_dir=tmp_path)
        r = corral.run(job)
        assert r.status == "failed" and r.cause == "outage"
        assert r.pending == 20 and r.quarantined == 0
        assert "max_outage_s 2" in (r.stop_reason or "")
        srv.configure(down=False)
        again = corral.run(job)
    assert again.status == "finished" and again.written == 20


# --- 2. --limit after a full run -------------------------------------------------------------


FAKE_JOB = """\
name: preview
source: data/in.csv
key: id
model: fake
steps:
  - {name: cat, task: classify, input: "{text}", labels: [a, b]}
sink: out/ok.csv
"""


def fake_job(tmp: Path, rows: int = 3, job: str = FAKE_JOB) -> Path:
    write(tmp / "data" / "in.csv", "id,text\n" + "".join(f"r{i},row {i}\n" for i in range(rows)))
    return write(tmp / "job.yaml", job)


def corral_cmd(tmp: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([corral_bin(), *args], cwd=tmp, capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})})


@pytest.mark.parametrize("limit", ["2", "0"])
def test_a_preview_never_replaces_a_complete_output(tmp_path, limit):
    fake_job(tmp_path)
    assert corral_cmd(tmp_path, "run", "job.yaml").returncode == 0
    full = (tmp_path / "out" / "ok.csv").read_text()
    assert len(csv_rows(tmp_path / "out" / "ok.csv")) == 3
    p = corral_cmd(tmp_path, "run", "job.yaml", "--limit", limit, "--json")
    assert p.returncode == 0, p.stderr
    s = json.loads(p.stdout)
    assert s["status"] == "preview"
    assert f"the first {limit} of 3 rows" in s["stop_reason"]
    assert "complete output of the earlier run is kept" in s["stop_reason"]
    assert (tmp_path / "out" / "ok.csv").read_text() == full  # untouched
    status = json.loads(corral_cmd(tmp_path, "status", "--json").stdout)
    assert status["status"] == "finished" and status["rows"]["written"] == 3


def test_a_first_preview_writes_its_rows_and_says_it_covered_part_of_the_source(tmp_path):
    fake_job(tmp_path, rows=5)
    p = corral_cmd(tmp_path, "run", "job.yaml", "--limit", "2")
    assert p.returncode == 0, p.stderr
    assert "preview (--limit 2: the first 2 rows; the source has more)" in p.stdout
    assert "Run without --limit for every row" in p.stderr
    assert len(csv_rows(tmp_path / "out" / "ok.csv")) == 2
    status = json.loads(corral_cmd(tmp_path, "status", "--json").stdout)
    assert status["status"] == "preview"
    full = json.loads(corral_cmd(tmp_path, "run", "job.yaml", "--json").stdout)
    assert full["status"] == "finished" and full["rows"]["written"] == 5
    assert full["calls"] == {"made": 5, "replayed": 0}  # the run's total: 2 + 3, none asked twice
    assert len(csv_rows(tmp_path / "out" / "ok.csv")) == 5


def test_a_limit_covering_the_whole_source_is_a_finished_run(tmp_path):
    fake_job(tmp_path, rows=3)
    s = json.loads(corral_cmd(tmp_path, "run", "job.yaml", "--limit", "10", "--json").stdout)
    assert s["status"] == "finished" and s["rows"]["written"] == 3


# --- 5. the store follows the job ------------------------------------------------------------


def test_the_same_job_from_another_folder_replays_instead_of_paying_again(tmp_path):
    jobs = tmp_path / "jobs"
    fake_job(jobs, rows=4, job=FAKE_JOB)
    env = {k: v for k, v in os.environ.items() if k != "CORRAL_STORE"}
    first = subprocess.run([corral_bin(), "run", "jobs/job.yaml", "--json"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=120, env=env)
    assert first.returncode == 0, first.stderr
    s1 = json.loads(first.stdout)
    assert s1["calls"]["made"] == 4
    assert Path(s1["store"]).resolve() == (jobs / ".corral" / "corral.db").resolve()
    second = subprocess.run([corral_bin(), "run", "job.yaml"], cwd=jobs, capture_output=True,
                            text=True, timeout=120, env=env)
    assert second.returncode == 0, second.stderr
    assert "4 made, 0 replayed" in second.stdout  # the run's total: no row was asked again
    assert "Store       .corral/corral.db" in second.stdout
    assert not (tmp_path / ".corral").exists()  # nothing made in the folder it was run from
    # the read-only commands find it from the job's folder (or below it)
    status = subprocess.run([corral_bin(), "status", "--json"], cwd=jobs, capture_output=True,
                            text=True, timeout=60, env=env)
    assert status.returncode == 0 and json.loads(status.stdout)["rows"]["written"] == 4


def test_in_a_project_the_store_is_at_its_root_and_found_from_anywhere_in_it(tmp_path):
    write(tmp_path / "pyproject.toml", "[project]\nname = 'mine'\n")
    jobs = tmp_path / "pipelines" / "nightly"
    fake_job(jobs, rows=3, job=FAKE_JOB)
    env = {k: v for k, v in os.environ.items() if k != "CORRAL_STORE"}
    first = subprocess.run([corral_bin(), "run", "job.yaml", "--json"], cwd=jobs,
                           capture_output=True, text=True, timeout=120, env=env)
    assert first.returncode == 0, first.stderr
    assert Path(json.loads(first.stdout)["store"]).resolve() == (tmp_path / ".corral" / "corral.db").resolve()
    again = subprocess.run([corral_bin(), "run", "pipelines/nightly/job.yaml", "--json"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=120, env=env)
    assert json.loads(again.stdout)["calls"] == {"made": 3, "replayed": 0}
    for cwd in (tmp_path, jobs):
        runs = subprocess.run([corral_bin(), "runs", "--json"], cwd=cwd, capture_output=True,
                              text=True, timeout=60, env=env)
        assert runs.returncode == 0, runs.stderr
        assert [r["job"] for r in json.loads(runs.stdout)] == ["preview"]
    assert not (jobs / ".corral").exists()


# --- 6. a second worker on the same run ------------------------------------------------------


def test_a_second_worker_exits_0_and_says_who_finishes_the_rest(tmp_path):
    job = FAKE_JOB.replace("model: fake", "model: {name: fake, latency: 0.4}\nconcurrency: 2")
    fake_job(tmp_path, rows=30, job=job)
    first = start(tmp_path)
    wait_for_line(first, "corral: run", timeout=30)
    time.sleep(1.0)  # every row loaded and leased by the first worker: about 5 s of work left
    second = corral_cmd(tmp_path, "run", "job.yaml")
    out, err = first.communicate(timeout=60)
    assert first.returncode == 0, err
    assert second.returncode == 0, second.stderr
    assert "This worker is done" in second.stderr and "being finished by worker" in second.stderr
    assert "Interrupted" not in second.stderr
    assert len(csv_rows(tmp_path / "out" / "ok.csv")) == 30


# --- 8. progress when stderr is not a terminal -------------------------------------------------


def test_progress_lines_when_stderr_is_not_a_terminal(tmp_path):
    job = FAKE_JOB.replace("model: fake", "model: {name: fake, latency: 0.2}\nconcurrency: 2")
    fake_job(tmp_path, rows=16, job=job)
    p = corral_cmd(tmp_path, "run", "job.yaml", env={"CORRAL_PROGRESS_S": "0.5"})
    assert p.returncode == 0, p.stderr
    lines = p.stderr.splitlines()
    assert lines[0].startswith("corral: run ") and "job preview" in lines[0]
    ticks = [ln for ln in lines if "/16 rows" in ln]
    assert len(ticks) >= 2, p.stderr
    assert all(" rows/s" in ln or "(0.0%)" in ln for ln in ticks[1:]), ticks
    # the summary is plain text: no padding at line ends, no rule across 200 columns
    for line in p.stdout.splitlines():
        assert line == line.rstrip() and len(line) < 160, repr(line)


# --- polish: warnings for input that is probably a mistake --------------------------------------


def test_a_header_only_csv_is_said_not_silently_finished(tmp_path):
    write(tmp_path / "job.yaml", FAKE_JOB)
    write(tmp_path / "data" / "in.csv", "id,text\n")
    p = corral_cmd(tmp_path, "run", "job.yaml")
    assert p.returncode == 0, p.stderr
    assert "warning: in.csv has no rows" in p.stderr
    assert "0 in = 0 written" in p.stdout


def test_an_oversized_prompt_is_reported_once_per_step(tmp_path):
    write(tmp_path / "job.yaml", FAKE_JOB)
    big = "word " * 240_000  # 1.2 MB
    write(tmp_path / "data" / "in.csv", f"id,text\nr1,{big}\nr2,{big}\nr3,short\n")
    p = corral_cmd(tmp_path, "run", "job.yaml")
    assert p.returncode == 0, p.stderr
    warned = [ln for ln in p.stderr.splitlines() if "MB prompt" in ln]
    assert len(warned) == 1, p.stderr
    assert "step `cat` sends a 1.2 MB prompt for record r" in warned[0] and "chunking:" in warned[0]


def test_unreachable_says_why_in_words():
    from corral.models._hosted import unreachable

    refused = ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 9)")
    outer = RuntimeError("All connection attempts failed")
    outer.__cause__ = refused
    assert unreachable(outer) == "connection refused"
    dns = socket.gaierror(-2, "Name or service not known")
    outer2 = RuntimeError("x")
    outer2.__cause__ = dns
    assert unreachable(outer2) == "name or service not known"
    assert unreachable(ValueError("odd")) == "odd"


def test_budget_numbers_are_written_like_the_summary_writes_them(tmp_path):
    job = FAKE_JOB.replace("sink:", "budget: {max_calls: 1200}\nsink:")
    fake_job(tmp_path, rows=1300, job=job)
    p = corral_cmd(tmp_path, "run", "job.yaml")
    assert p.returncode == 3, p.stderr
    assert "Stopped: budget: max_calls 1,200 reached" in p.stderr
    assert "1,200 made" in p.stdout
