"""The `corral` command, run as a real subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ..conftest import corral_bin, write

JOB = """\
name: cli-test
source: data/in.csv
key: id
model: fake
steps:
  - name: cat
    task: classify
    input: "{text}"
    labels: [a, b]
sink: out/o.csv
"""
DATA = "id,text\n" + "".join(f"r{i},row number {i}\n" for i in range(30))


def corral(*args: str, cwd: Path, check: bool = False, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    p = subprocess.run(
        [corral_bin(), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    if check and p.returncode != 0:
        raise AssertionError(f"exit {p.returncode}: {p.stderr}")
    return p


def setup_job(tmp: Path, job: str = JOB, data: str | bytes = DATA) -> Path:
    p = write(tmp / "job.yaml", job)
    f = tmp / "data" / "in.csv"
    f.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        f.write_bytes(data)
    else:
        f.write_text(data, encoding="utf-8")
    return p


def test_run_json_prints_only_the_summary(tmp_path):
    setup_job(tmp_path)
    p = corral("run", "job.yaml", "--json", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    summary = json.loads(p.stdout)  # stdout is exactly one JSON object
    assert summary["status"] == "finished"
    assert summary["rows"] == {"in": 30, "written": 30, "quarantined": 0, "review": 0, "skipped": 0, "pending": 0}
    assert summary["calls"] == {"made": 30, "replayed": 0}
    assert summary["cost_usd"] == 0.0
    assert summary["outputs"]["sink"].endswith("out/o.csv")
    assert (tmp_path / "out" / "o.csv").exists()

    again = json.loads(corral("run", "job.yaml", "--json", cwd=tmp_path, check=True).stdout)
    assert again["run"] == summary["run"]
    assert again["calls"]["made"] == 30  # across resumptions; nothing new was paid for

    status = json.loads(corral("status", summary["run"], "--json", cwd=tmp_path, check=True).stdout)
    assert status["rows"] == summary["rows"] and status["calls"] == again["calls"]
    assert set(status) == set(summary) | {"by_step"}  # plus the spend by step, strategy and model


def test_human_summary_and_limit(tmp_path):
    setup_job(tmp_path)
    p = corral("run", "job.yaml", "--limit", "5", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "5 in = 5 written + 0 quarantined + 0 review + 0 skipped + 0 pending" in p.stdout
    assert "out/o.csv" in p.stdout


def test_model_override(tmp_path):
    setup_job(tmp_path, JOB.replace("model: fake", "model: nonexistent"))
    p = corral("run", "job.yaml", "--model", "fake", "--json", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    p = corral("run", "job.yaml", cwd=tmp_path)
    assert p.returncode == 2
    assert "unknown model `nonexistent`" in p.stderr


def test_runs_status_show(tmp_path):
    setup_job(tmp_path, data="id,text\nr1,hello\nr2,world\n")
    run_id = json.loads(corral("run", "job.yaml", "--json", cwd=tmp_path, check=True).stdout)["run"]
    p = corral("runs", cwd=tmp_path, check=True)
    assert run_id in p.stdout and "cli-test" in p.stdout
    runs = json.loads(corral("runs", "--json", cwd=tmp_path, check=True).stdout)
    assert runs[0]["run"] == run_id
    p = corral("status", cwd=tmp_path, check=True)  # latest run by default
    assert run_id in p.stdout and "2 in = 2 written" in p.stdout
    p = corral("status", "cli-test", cwd=tmp_path, check=True)  # by job name
    assert run_id in p.stdout
    p = corral("show", run_id[:6], "r1", cwd=tmp_path, check=True)
    assert "state: done" in p.stdout
    assert "hello" in p.stdout  # rendered prompt
    assert "You classify text" in p.stdout  # system prompt
    assert '{"label":' in p.stdout  # raw response
    rec = json.loads(corral("show", run_id, "r2", "--json", cwd=tmp_path, check=True).stdout)
    assert rec["state"] == "done" and rec["calls"][0]["outcome"] == "ok"
    assert rec["calls"][0]["request"]["messages"][1]["content"] == "<text>world</text>"  # as it was sent
    p = corral("show", run_id, "nope", cwd=tmp_path)
    assert p.returncode == 2 and "no record with key `nope`" in p.stderr
    p = corral("status", "ffffffffff", cwd=tmp_path)
    assert p.returncode == 2 and "no run matches" in p.stderr


def _no_outputs(tmp: Path) -> bool:
    return not (tmp / "out").exists()


@pytest.mark.parametrize(
    "case, expect",
    [
        ("missing_file", "source file not found"),
        ("missing_key", "key column `ident` is not in"),
        ("duplicate_keys", "duplicate key `r1`"),
        ("unknown_yaml_key", "unknown key `sorce`"),
        ("unknown_model", "unknown model `gpt9`"),
        ("non_utf8", "UTF-8"),
        ("missing_job", "job file not found"),
    ],
)
def test_bad_input_is_one_line_exit_2_no_output(tmp_path, case, expect):
    job, data = JOB, DATA
    if case == "missing_file":
        job = JOB.replace("data/in.csv", "data/nope.csv")
    elif case == "missing_key":
        job = JOB.replace("key: id", "key: ident")
    elif case == "duplicate_keys":
        data = "id,text\nr1,a\nr2,b\nr1,c\n"
    elif case == "unknown_yaml_key":
        job = JOB.replace("source:", "sorce:")
    elif case == "unknown_model":
        job = JOB.replace("model: fake", "model: gpt9")
    elif case == "non_utf8":
        data = b"id,text\nr1,caf\xe9 au lait\n"
    setup_job(tmp_path, job, data)
    target = "nope.yaml" if case == "missing_job" else "job.yaml"
    p = corral("run", target, cwd=tmp_path)
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert expect in p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, p.stderr  # one line, no traceback
    assert "Traceback" not in p.stderr
    assert p.stdout == ""
    assert _no_outputs(tmp_path)


def test_malformed_csv_row_is_quarantined_and_the_rest_run(tmp_path):
    setup_job(tmp_path, data="id,text\nr1,fine\nr2,too,many,fields\nr3,also fine\n")
    p = corral("run", "job.yaml", "--json", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    s = json.loads(p.stdout)
    assert s["rows"]["written"] == 2 and s["rows"]["quarantined"] == 1
    q = (tmp_path / "out" / "o.quarantine.csv").read_text()
    assert "line 3" in q


def test_help_for_every_command_lists_exit_codes():
    p = subprocess.run([corral_bin(), "--help"], capture_output=True, text=True, check=True)
    for cmd in ("run", "runs", "status", "show"):
        assert cmd in p.stdout
    assert "130" in p.stdout and "budget" in p.stdout
    for cmd in ("run", "runs", "status", "show"):
        h = subprocess.run([corral_bin(), cmd, "--help"], capture_output=True, text=True, check=True)
        assert "--store" in h.stdout


def test_budget_stop_exit_3_then_resume(tmp_path):
    setup_job(tmp_path, JOB + "budget:\n  max_calls: 10\nconcurrency: 1\n")
    p = corral("run", "job.yaml", "--json", cwd=tmp_path)
    assert p.returncode == 3
    s = json.loads(p.stdout)
    assert s["status"] == "stopped" and s["calls"]["made"] == 10 and s["rows"]["pending"] == 20
    assert "max_calls" in p.stderr
    setup_job(tmp_path, JOB + "budget:\n  max_calls: 100\n")
    s2 = json.loads(corral("run", "job.yaml", "--json", cwd=tmp_path, check=True).stdout)
    assert s2["run"] == s["run"] and s2["calls"]["made"] == 30


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_checkpoints_and_says_how_to_resume(tmp_path):
    job = JOB.replace("model: fake", "model: {name: fake, latency: 0.05}") + "concurrency: 2\n"
    setup_job(tmp_path, job, "id,text\n" + "".join(f"r{i},row {i}\n" for i in range(300)))
    proc = subprocess.Popen(
        [corral_bin(), "run", "job.yaml", "--json"], cwd=tmp_path, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )
    time.sleep(1.5)  # interpreter start + a few rows
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    s = json.loads(out)
    assert s["status"] == "interrupted" and s["rows"]["pending"] > 0
    assert s["rows"]["in"] == s["rows"]["written"] + s["rows"]["pending"]
    assert "Resume with: corral run job.yaml" in err
    s2 = json.loads(corral("run", "job.yaml", "--json", cwd=tmp_path, check=True).stdout)
    assert s2["rows"]["written"] == 300 and s2["calls"]["made"] == 300


def test_progress_states_show_review_skipped_and_spend():
    import io

    from rich.console import Console

    from corral.report import ProgressView

    view = ProgressView(Console(file=io.StringIO(), force_terminal=True, width=200))
    ev = {"phase": "run", "in": 60, "done": 30, "quarantined": 1, "review": 2, "skipped": 0,
          "pending": 27, "made": 64, "replayed": 12, "cost": 0.064}
    view.update(ev)
    states = view.bar.tasks[0].fields["states"]
    assert states == "written 30 · quarantined 1 · review 2 · calls 64 (+12 replayed) · $0.0640"
    view.update({**ev, "review": 0, "skipped": 3, "replayed": 0, "cost": None})
    assert view.bar.tasks[0].fields["states"] == "written 30 · quarantined 1 · skipped 3 · calls 64"


def test_summary_groups_held_rows_by_reason_not_by_each_confidence():
    from corral.report import reason_kind as _reason_kind

    a = _reason_kind("step `category`: confidence 0.61 < 0.70")
    b = _reason_kind("step `category`: confidence 0.54 < 0.70")
    assert a == b == "step `category`: confidence under 0.70"
    assert _reason_kind("step `x`: budget: record max_calls 3 reached") == "step `x`: budget: record max_calls 3 reached"
