"""Shared by the deliberation benchmarks: the job's source, written with an `id` column."""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path


def write_source(path: Path, rows: Iterable[tuple[object, str]], header: tuple[str, str] = ("id", "text")) -> None:
    """A two-column CSV (`id,text` by default) of (id, value) pairs."""
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
