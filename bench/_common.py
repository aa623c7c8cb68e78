"""Shared helpers for the benchmarks: paths, machine facts, medians, JSON results."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent  # the repository root (/work/main)
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
VENV_BIN = ROOT / ".venv" / "bin"
PY = str(VENV_BIN / "python") if (VENV_BIN / "python").exists() else sys.executable
CORRAL = str(VENV_BIN / "corral") if (VENV_BIN / "corral").exists() else "corral"
DATA = (ROOT.parent / "shared" / "data").resolve()
SMS_TSV = DATA / "sms_spam" / "SMSSpamCollection.tsv"
SMS_ROWS = 5574


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem_kb = next(
            int(line.split()[1])
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal")
        )
    except (OSError, StopIteration):
        mem_kb = 0
    commit = _git("rev-parse", "--short", "HEAD")
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "mem_gb": round(mem_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "git_commit": commit,
        "git_dirty_files": [ln[3:] for ln in dirty.splitlines()] if dirty else [],
    }


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        return ""


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def cmdline(argv: list[str]) -> str:
    """A command as one would type it from the repository root."""
    out = []
    for a in argv:
        s = str(a)
        if s.startswith(str(ROOT) + "/"):
            s = s[len(str(ROOT)) + 1 :]
        out.append(shlex.quote(s))
    return " ".join(out)


def write_result(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    data = {"benchmark": name, "machine": machine(), **data}
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


def last_json_line(text: str) -> dict[str, Any]:
    """The JSON summary `corral run --json` prints (its last non-empty stdout line)."""
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            return json.loads(line)
    raise ValueError(f"no JSON object in output: {text[-500:]!r}")
