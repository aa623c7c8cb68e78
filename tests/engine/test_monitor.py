"""Monitoring: a finished run is compared with the job's previous finished run; a shifted label
mix warns (summary, `monitor` field, exit code 7), an unshifted rerun does not, nor a first run
or `monitor: {enabled: false}`; the profile's rates count the records' states."""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

from corral._monitor import FieldProfile, MonitorSpec, RunProfile, check, distance

from ..conftest import corral_bin, write_csv

SPAM = [f"WIN a free prize number {i}, text CLAIM to 8080{i}" for i in range(60)]
HAM = [f"see you at the station at {i % 12 + 1} o'clock, love {i}" for i in range(60)]


def _project(tmp: Path, monitor: str = "") -> None:
    write_csv(tmp / "truth.csv", ["text", "label"], [(t, "spam") for t in SPAM] + [(t, "ham") for t in HAM])
    (tmp / "job.yaml").write_text(
        "name: sms\nsource: in.csv\nkey: id\nsink: out/o.csv\n"
        "model: {name: fake, truth: truth.csv, accuracy: 0.97}\n" + monitor +
        "steps:\n  - name: label\n    task: classify\n    input: '{text}'\n    labels: [spam, ham]\n",
        encoding="utf-8")


def _run(tmp: Path, texts: list[str], seed: int) -> tuple[int, dict, str]:
    rows = [(f"r{seed}-{i}", t) for i, t in enumerate(texts)]
    random.Random(seed).shuffle(rows)
    write_csv(tmp / "in.csv", ["id", "text"], rows)
    p = subprocess.run([corral_bin(), "run", "job.yaml", "--json"], cwd=tmp, capture_output=True,
                       text=True, timeout=120)
    return p.returncode, json.loads(p.stdout.strip().splitlines()[-1]), p.stderr


def test_a_shifted_label_mix_warns_and_exits_7_an_unshifted_rerun_does_not(tmp_path: Path):
    _project(tmp_path)
    code, first, _ = _run(tmp_path, SPAM[:40] + HAM[:40], 1)
    assert code == 0 and first["monitor"] == {"compared_with": None, "warnings": []}  # nothing to compare
    code, shifted, err = _run(tmp_path, SPAM[:50], 2)
    assert code == 7, err
    assert shifted["monitor"]["compared_with"] == first["run"]
    (warning,) = [w for w in shifted["monitor"]["warnings"] if w.startswith("label drift in `label`")]
    assert "distance" in warning and "Monitoring: 1 warning" in err
    code, again, err = _run(tmp_path, SPAM[20:60] + HAM[20:60], 3)
    assert code == 0, err
    # the shifted run was warned about: it is no baseline, the balanced rerun is compared with run 1
    assert again["monitor"] == {"compared_with": first["run"], "warnings": []}
    p = subprocess.run([corral_bin(), "status", again["run"]], cwd=tmp_path, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0


def test_an_unshifted_second_run_does_not_warn(tmp_path: Path):
    _project(tmp_path)
    assert _run(tmp_path, SPAM[:40] + HAM[:40], 1)[0] == 0
    code, second, err = _run(tmp_path, SPAM[20:60] + HAM[20:60], 2)
    assert code == 0, err
    assert second["monitor"]["compared_with"] is not None and second["monitor"]["warnings"] == []


def test_monitoring_off_never_warns(tmp_path: Path):
    _project(tmp_path, "monitor: {enabled: false}\n")
    assert _run(tmp_path, SPAM[:40] + HAM[:40], 1)[0] == 0
    code, shifted, _ = _run(tmp_path, SPAM[:50], 2)
    assert code == 0 and shifted["monitor"] == {"compared_with": None, "warnings": []}


def test_thresholds_and_small_runs():
    def prof(spam: int, ham: int, review: float = 0.0) -> RunProfile:
        f = FieldProfile(values=spam + ham, text=True)
        f.labels.update({"spam": spam, "ham": ham})
        return RunProfile("r", spam + ham, spam + ham, {"review": review}, {"label": f})

    assert distance({"a": 1.0}, {"b": 1.0}) == 1.0 and distance({"a": 0.5, "b": 0.5}, {"a": 0.5, "b": 0.5}) == 0
    assert check(prof(90, 10), prof(50, 50), MonitorSpec())  # distance 0.4 > 0.2
    assert not check(prof(90, 10), prof(50, 50), MonitorSpec(label_drift=0.5))
    assert not check(prof(9, 1), prof(50, 50), MonitorSpec())  # 10 rows: under min_rows
    (w,) = check(prof(50, 50, review=0.3), prof(50, 50), MonitorSpec())
    assert w.startswith("review rows rose from 0.0% to 30.0%")
