"""Files written whole or not at all: a temporary file beside the target, renamed over it.

A reader of a sink file never sees half a run's output, and a failed write leaves the previous
file as it was (and no temporary file behind).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from corral.errors import SinkError
from corral.io._text import PATH_HINT, os_reason


def temp_path_for(path: Path) -> Path:
    """A fresh hidden temporary name in the same folder as ``path``."""
    return path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")


def ensure_parent(path: Path) -> None:
    """Create the parent folders of a sink path."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SinkError(
            os_reason(f"cannot create the sink's folder {path.parent}", e)
            + f" — choose a writable `sink:` path {PATH_HINT}"
        ) from e


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds, fsync it and
    ``os.replace`` it over ``path``. On any error the temporary file is removed."""
    ensure_parent(path)
    tmp = temp_path_for(path)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as e:
        with suppress(OSError):
            tmp.unlink()
        raise SinkError(
            os_reason(f"cannot write sink file {path}", e)
            + f" — check that the folder is writable and has space, or choose another `sink:` "
            f"path {PATH_HINT}"
        ) from e
    except BaseException:
        with suppress(OSError):
            tmp.unlink()
        raise
