"""Shared helpers for the provider benchmarks (bench/providers/*.py).

Every benchmark starts a :class:`corral.testing.ProviderServer` on 127.0.0.1 in its own process
(a thread) and runs Corral against it, usually as a ``corral run JOB --json`` subprocess. Nothing
here talks to any other host.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from _common import CORRAL, PY, ROOT, cmdline, last_json_line, machine  # noqa: E402,F401

from corral.testing import ProviderServer  # noqa: E402

RESULTS = HERE / "results"
KEY = "sk-bench-0123456789abcdef"  # any key: the server is started without one
MODEL = "openai:gpt-4o-mini"


class TimedServer(ProviderServer):
    """A ProviderServer that also logs (monotonic time, kind, status) of every counted model
    call: status 200 answers, error statuses (429, 500, 503 ...), 0 for a hung call. Time is
    when the answer was produced (after the injected latency)."""

    def __init__(self, **kw: Any) -> None:
        self.events: list[tuple[float, str, int]] = []
        self.resets: list[float] = []  # down_mode=reset and timeouts are not _count()ed per kind
        super().__init__(**kw)

    def _count(self, kind: str, status: int, s: Any = None) -> None:  # noqa: D401
        with self._lock:
            self.events.append((time.monotonic(), kind, status))
        super()._count(kind, status, s)


def write_json(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    data = {"benchmark": f"providers/{name}", "machine": machine(), "load_avg_at_start": os.getloadavg(), **data}  # "at start" of writing the file
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


def write_rows(path: Path, n: int, text: str = "message number {i} about an order that arrived late") -> None:
    """A CSV with columns id,text; every text is distinct (so no request is replayed from the
    store's response cache)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        f.write("id,text\n")
        for i in range(n):
            f.write(f"r{i}," + text.format(i=i) + "\n")


def write_job(path: Path, spec: dict[str, Any]) -> None:
    path.write_text(json.dumps(spec, indent=2))  # JSON is YAML


def corral_env(store: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["CORRAL_STORE"] = str(store)
    env.pop("OPENAI_BASE_URL", None)
    env.pop("OPENAI_API_KEY", None)
    return env


def run_corral(args: list[str], cwd: Path, store: Path, timeout: float = 900) -> dict[str, Any]:
    """Run ``corral ARGS`` to the end; returns rc, wall seconds, the parsed JSON summary, stderr tail."""
    argv = [CORRAL, *args]
    t0 = time.monotonic()
    p = subprocess.run(argv, cwd=cwd, env=corral_env(store), capture_output=True, text=True, timeout=timeout)
    wall = time.monotonic() - t0
    try:
        summary = last_json_line(p.stdout)
    except ValueError:
        summary = None
    return {"rc": p.returncode, "wall_s": wall, "summary": summary, "stderr_tail": p.stderr[-2000:],
            "argv": argv, "t0": t0, "t1": t0 + wall}


def count_between(events: list[tuple[float, str, int]], t0: float, t1: float, status: int | None = 200,
                  kind: str | None = "openai") -> int:
    return sum(1 for t, k, s in events if t0 <= t < t1 and (kind is None or k == kind)
               and (status is None or s == status))


class Sampler(threading.Thread):
    """Calls ``fn()`` every ``every`` seconds until stopped; keeps (monotonic time, value)."""

    def __init__(self, fn: Any, every: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.fn = fn
        self.every = every
        self.samples: list[tuple[float, Any]] = []
        self._stop_ev = threading.Event()

    def run(self) -> None:
        while not self._stop_ev.is_set():
            try:
                self.samples.append((time.monotonic(), self.fn()))
            except Exception as e:  # noqa: BLE001 - a sample that failed is recorded as such
                self.samples.append((time.monotonic(), f"error: {e}"))
            self._stop_ev.wait(self.every)

    def stop(self) -> None:
        self._stop_ev.set()
        self.join(timeout=10)
