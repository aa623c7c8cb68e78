"""The peers' virtual environments: bench/peers/.venvs/<tool>, built on first use and reused.

A tool's environment is built with ``python3 -m venv`` and ``pip install -r
requirements-<tool>.txt`` (the versions pinned when it was first resolved); without that file,
from the tool's PyPI packages (:data:`PACKAGES`), and then the resolved versions are written to
it. A finished build leaves ``.installed`` in the environment; a failed one is removed, and the
benchmark reports the tool as not run, with pip's last words.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENVS = HERE / ".venvs"
#: What each peer needs from PyPI. LOTUS's sentence-transformers pulls torch: the CPU-only wheel
#: (torch==X+cpu, from pip's find-links or https://download.pytorch.org/whl/cpu) instead of the
#: default CUDA build and its gigabytes of nvidia-* packages.
PACKAGES = {
    "sdk": ["openai"],
    "curator": ["bespokelabs-curator"],
    "docetl": ["docetl"],
    "lotus": ["torch==2.13.0+cpu", "lotus-ai"],
}
BUILD_TIMEOUT_S = 1800


def requirements(tool: str) -> Path:
    return HERE / f"requirements-{tool}.txt"


def python(tool: str) -> Path:
    return VENVS / tool / "bin" / "python"


def ensure(tool: str) -> str | None:
    """Build ``tool``'s environment unless it is there; None when ready, else why not."""
    venv = VENVS / tool
    if (venv / ".installed").exists():
        return None
    pins = requirements(tool)
    spec = ["-r", str(pins)] if pins.exists() else PACKAGES[tool]
    print(f"{tool}: building {venv.relative_to(HERE.parent.parent)} (pip install {' '.join(spec)}) ...", flush=True)
    t0 = time.monotonic()
    shutil.rmtree(venv, ignore_errors=True)
    try:
        subprocess.run([shutil.which("python3") or sys.executable, "-m", "venv", str(venv)],
                       check=True, capture_output=True, text=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *spec]
        p = subprocess.run(pip, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    except (subprocess.SubprocessError, OSError) as e:
        shutil.rmtree(venv, ignore_errors=True)
        return f"could not build its virtual environment: {e}"
    if p.returncode != 0:
        shutil.rmtree(venv, ignore_errors=True)
        tail = " ".join(line for line in p.stderr.splitlines() if not line.startswith("WARNING: Location"))[-600:]
        return f"pip install {' '.join(spec)} failed: {tail}"
    if not pins.exists():
        freeze = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "freeze"], capture_output=True, text=True)
        pins.write_text(f"# {tool}: the versions pip resolved for {' '.join(PACKAGES[tool])}; "
                        "bench/peers/_venvs.py installs these\n" + freeze.stdout)
    (venv / ".installed").touch()
    print(f"{tool}: built in {time.monotonic() - t0:.0f} s", flush=True)
    return None


def site_packages(tool: str) -> Path | None:
    found = sorted((VENVS / tool / "lib").glob("python3*/site-packages"))
    return found[0] if found else None


def tiktoken_dir(tool: str) -> Path | None:
    """litellm's bundled tiktoken encodings, for TIKTOKEN_CACHE_DIR: without it tiktoken downloads
    them at first use, and offline DocETL and Curator fail at start."""
    site = site_packages(tool)
    d = site / "litellm" / "litellm_core_utils" / "tokenizers" if site else None
    return d if d is not None and d.is_dir() else None


def describe(tool: str) -> dict[str, object]:
    """The packages a tool ran with (its pins), for the results."""
    if tool == "corral":
        return {"venv": ".venv (this repository)"}
    pins = requirements(tool)
    wanted = {p.split("==")[0].lower() for p in PACKAGES[tool]}
    versions = [ln for ln in pins.read_text().splitlines() if ln.split("==")[0].lower() in wanted] if pins.exists() else []
    return {"venv": f"bench/peers/.venvs/{tool}", "packages": versions, "pins": pins.name}
