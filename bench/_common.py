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
    commit = _git("rev-parse", "--short", "HEAD").strip()
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "mem_gb": round(mem_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "git_commit": commit,
        "git_dirty_files": [ln[3:] for ln in dirty.splitlines() if ln.strip()],
    }


def _git(*args: str) -> str:
    try:
        # no strip(): `git status --porcelain` lines start with a meaningful space
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout.rstrip("\n")
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


# --- noise: how busy the machine was with other processes ------------------------------------


def _cpu_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies over all CPUs since boot, from /proc/stat."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = f[3] + (f[4] if len(f) > 4 else 0)
    total = sum(f[:8])
    return total - idle, total


def busy_share(seconds: float = 1.0) -> float:
    """Share of all CPUs busy over the next `seconds` (0..1)."""
    import time

    b0, t0 = _cpu_jiffies()
    time.sleep(seconds)
    b1, t1 = _cpu_jiffies()
    return (b1 - b0) / max(1, t1 - t0)


def wait_for_quiet(threshold: float = 0.15, max_wait_s: float = 300.0) -> tuple[float, float]:
    """Wait until the CPUs are less than `threshold` busy for a second (at most `max_wait_s`).
    Returns (seconds waited, busy share seen last)."""
    import time

    t0 = time.perf_counter()
    share = busy_share()
    while share >= threshold and time.perf_counter() - t0 < max_wait_s:
        share = busy_share()
    return time.perf_counter() - t0, share


def run_child(argv: list[str], env: dict | None = None, cwd: Path = ROOT) -> dict:
    """Run a command; return its exit code, wall time, stdout/stderr, its own CPU seconds and
    the share of the machine's CPU that other processes used meanwhile."""
    import tempfile
    import time

    with tempfile.TemporaryFile("w+") as so, tempfile.TemporaryFile("w+") as se:
        b0, t0j = _cpu_jiffies()
        t0 = time.perf_counter()
        p = subprocess.Popen(argv, cwd=cwd, env=env, stdout=so, stderr=se, text=True)
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        b1, t1j = _cpu_jiffies()
        so.seek(0)
        se.seek(0)
        out, err = so.read(), se.read()
    hz = os.sysconf("SC_CLK_TCK")
    ncpu = os.cpu_count() or 1
    child_cpu = ru.ru_utime + ru.ru_stime
    busy_s = (b1 - b0) / hz
    others = max(0.0, busy_s - child_cpu)
    return {
        "rc": os.waitstatus_to_exitcode(status), "wall_s": wall, "stdout": out, "stderr": err,
        "cpu_s": child_cpu, "others_cpu_share": others / (wall * ncpu) if wall > 0 else 0.0,
        "maxrss_kb": ru.ru_maxrss,
    }
