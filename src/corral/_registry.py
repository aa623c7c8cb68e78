"""Plugins: tasks and models are found through entry-point groups, built-ins included."""

from __future__ import annotations

import difflib
from functools import cache
from importlib.metadata import entry_points
from typing import Any

from corral.errors import ModelNotFoundError, UserError

TASK_GROUP = "corral.tasks"
MODEL_GROUP = "corral.models"
STRATEGY_GROUP = "corral.strategies"


@cache
def _group(group: str) -> dict[str, Any]:
    found = {ep.name: ep for ep in entry_points(group=group)}
    if not found:
        raise UserError(
            f"no {group} plugins are registered: Corral is not installed as a package; "
            "run `pip install -e .` in the project folder"
        )
    return found


def task_classes() -> dict[str, type]:
    return {name: ep.load() for name, ep in sorted(_group(TASK_GROUP).items())}


@cache
def strategy_classes() -> dict[str, type]:
    return {name: ep.load() for name, ep in sorted(_group(STRATEGY_GROUP).items())}


def model_names() -> list[str]:
    return sorted(_group(MODEL_GROUP))


def model_class(name: str) -> type:
    eps = _group(MODEL_GROUP)
    if name not in eps:
        close = difflib.get_close_matches(name, list(eps), n=1)
        hint = f"did you mean `{close[0]}`? " if close else ""
        raise ModelNotFoundError(
            f"unknown model `{name}`; {hint}installed models: {', '.join(sorted(eps))} "
            "(use NAME or NAME:ARG, e.g. `local`, `local:/path/model.gguf`, `fake`)"
        )
    return eps[name].load()


def suggest(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.5)
    return f"; did you mean `{close[0]}`?" if close else ""
