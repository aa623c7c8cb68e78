from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

from ._postgres import pg_server, pg_url  # noqa: F401  (fixtures: a throwaway PostgreSQL server)

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
BIN = Path(sys.executable).parent


@pytest.fixture(autouse=True)
def _isolated_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test gets its own store and working directory."""
    monkeypatch.setenv("CORRAL_STORE", str(tmp_path / "store" / "corral.db"))
    monkeypatch.delenv("CORRAL_FAKE_CALL_LOG", raising=False)
    monkeypatch.chdir(tmp_path)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def corral_bin() -> str:
    exe = BIN / "corral"
    return str(exe) if exe.exists() else "corral"


def shared(*parts: str) -> Path:
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"shared data not available: {p}")
    return p


os.environ.setdefault("PYTHONUNBUFFERED", "1")


def scripted_models(monkeypatch: Any) -> dict[str, Any]:
    """A table of scripted fake models by id (``fake:NAME``) that the engine uses for a job's
    ``models:`` entries in place of the models it builds (a scripted model cannot be written in
    YAML); fill it before the run."""
    import corral.engine as engine

    table: dict[str, Any] = {}
    real = engine.make_model

    def fake_make(ref: Any, base_dir: Any = None) -> Any:
        built = real(ref, base_dir)
        return table.get(built.id, built)

    monkeypatch.setattr(engine, "make_model", fake_make)
    return table


def write_csv(path: Path, header: list[str], rows: Any) -> Path:
    """A CSV file of ``header`` and ``rows`` (sequences), its folder made."""
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path
