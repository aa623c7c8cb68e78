"""Shared helpers for the ETL-tier benchmarks (normalize, match, extract, pipelines).

Every benchmark writes its job file(s), any sampled input and its store into a temporary folder
(never into the repository), runs the real `corral` CLI with `--json`, reads the sink it wrote,
and scores it against the data set's own labels. Results go to bench/etl/results/NAME.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from _common import CORRAL, DATA, ROOT, cmdline, machine  # noqa: E402

RESULTS = HERE / "results"


def run_corral(
    job: Path, store: Path, model: str, *, limit: int | None = None, extra: list[str] | None = None
) -> dict[str, Any]:
    """`corral run JOB --json --store STORE --model MODEL`; returns the summary, the exit code,
    the wall time measured here and the command line."""
    argv = [CORRAL, "run", str(job), "--json", "--store", str(store), "--model", model]
    if limit is not None:
        argv += ["--limit", str(limit)]
    argv += extra or []
    t0 = time.perf_counter()
    p = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    summary: dict[str, Any] | None = None
    try:
        summary = json.loads(p.stdout)
    except json.JSONDecodeError:
        pass
    if p.returncode not in (0, 3) or summary is None:
        sys.stderr.write(p.stdout[-4000:] + "\n" + p.stderr[-4000:] + "\n")
        raise SystemExit(f"corral run failed with exit code {p.returncode}: {cmdline(argv)}")
    return {
        "command": cmdline(argv),
        "exit_code": p.returncode,
        "wall_s": round(wall, 2),
        "summary": summary,
        "stderr_tail": p.stderr[-2000:],
    }


def accounted(summary: dict[str, Any]) -> bool:
    r = summary["rows"]
    return r["in"] == r["written"] + r["quarantined"] + r["review"] + r["skipped"] + r["pending"]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def prf(tp: int, fp: int, fn: int) -> dict[str, Any]:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return {"tp": tp, "fp": fp, "fn": fn, "precision": round(p, 4), "recall": round(r, 4), "f1": round(f, 4)}


def write_result(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}.json"
    data = {"benchmark": name, "machine": machine(), "load_avg_at_end": os.getloadavg(), **data}
    out.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return out


def yaml_str(s: str) -> str:
    """A YAML double-quoted scalar (JSON strings are valid YAML)."""
    return json.dumps(s, ensure_ascii=False)


__all__ = [
    "CORRAL", "DATA", "ROOT", "RESULTS", "accounted", "cmdline", "prf", "read_jsonl",
    "run_corral", "write_result", "yaml_str",
]
