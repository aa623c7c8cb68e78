"""The ``--store`` option every command that reads or writes a store takes: a store file or a
Postgres URL, ``$CORRAL_STORE`` by default. One definition, so the commands' modules
(:mod:`corral.cli` and its ``_cli_*`` siblings) say the same thing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from corral.store import STORE_ENV

#: where the store is looked for, for commands without a job file
FROM_HERE = "the first .corral/corral.db found from the working directory upwards"


def store_option(default: str = FROM_HERE) -> Callable[[Any], Any]:
    """``--store PATH|URL``; ``default`` says where the store is found without it."""
    return click.option(
        "--store", type=click.Path(dir_okay=False, path_type=Path), default=None, envvar=STORE_ENV,
        show_envvar=True, metavar="PATH|URL",
        help=f"Store file, or a Postgres URL postgresql://USER@HOST:PORT/DB (default: {default}; see docs/cli.md).",
    )
