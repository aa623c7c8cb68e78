"""`corral estimate`: the static estimate calls nothing; --sample runs and records the first N
rows, which the later `corral run` does not pay for again; bad input is one line, exit 2."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from ..conftest import corral_bin, write_csv

JOB = """name: est
source: in.csv
key: id
sink: out/o.csv
model: {name: fake, price_per_call: 0.001, call_log: calls.log}
steps:
  - name: label
    task: classify
    input: "{text}"
    labels: [spam, ham]
    strategy: {name: vote, samples: 5, min_samples: 2}
"""


def _project(tmp: Path, rows: int = 40) -> None:
    write_csv(tmp / "in.csv", ["id", "text"], [(i, f"message number {i} about a prize") for i in range(rows)])
    (tmp / "job.yaml").write_text(JOB, encoding="utf-8")


def _cli(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([corral_bin(), *args], cwd=tmp, capture_output=True, text=True, timeout=120)


def _calls(tmp: Path) -> int:
    log = tmp / "calls.log"
    return len(log.read_text().splitlines()) if log.exists() else 0


def test_the_static_estimate_calls_nothing(tmp_path: Path):
    _project(tmp_path)
    p = _cli(tmp_path, "estimate", "job.yaml", "--json")
    assert p.returncode == 0, p.stderr
    est = json.loads(p.stdout)
    assert _calls(tmp_path) == 0 and not (tmp_path / ".corral").exists()
    assert est["rows"] == 40 and est["sample"] is None
    (leg,) = est["steps"]["label"]
    assert leg["calls_per_row"] == [2.0, 5.0] and leg["tokenizer"].startswith("approximation")
    assert est["total_usd"]["online"] == [0.08, 0.2]  # 40 rows x 2..5 calls x $0.001
    assert est["total_usd"]["flex"] == [None, None]  # unknown, never $0
    text = _cli(tmp_path, "estimate", "job.yaml").stdout
    assert "Online  $0.0800 – $0.2000" in text and "approximation: characters / 4" in text


def test_the_sample_is_recorded_and_the_run_pays_only_for_the_rest(tmp_path: Path):
    _project(tmp_path)
    p = _cli(tmp_path, "estimate", "job.yaml", "--sample", "10", "--json")
    assert p.returncode == 0, p.stderr
    s = json.loads(p.stdout)["sample"]
    sampled = _calls(tmp_path)
    assert s["rows"] == 10 and sampled >= 20 and s["rest_rows"] == 30
    assert abs(s["cost_usd"] - sampled * 0.001) < 1e-9
    low, mid, high = s["total_usd"]["online"]
    assert low <= mid <= high and mid > s["cost_usd"]
    p = _cli(tmp_path, "run", "job.yaml", "--json")
    assert p.returncode == 0, p.stderr
    run = json.loads(p.stdout.strip().splitlines()[-1])
    assert run["run"] == s.get("run") or run["run"].startswith(s["run"])
    assert run["calls"]["made"] == _calls(tmp_path)  # the sample's calls count once, in the same run
    assert run["rows"]["written"] == 40


def test_bad_input_is_one_line_with_the_fix(tmp_path: Path):
    _project(tmp_path, rows=5)
    p = _cli(tmp_path, "estimate", "job.yaml", "--sample", "9")
    assert p.returncode == 2 and "--sample 9 is more rows than the source has (5); give --sample 5" in p.stderr
    p = _cli(tmp_path, "estimate", "missing.yaml")
    assert p.returncode == 2 and "job file not found" in p.stderr
    assert _calls(tmp_path) == 0
