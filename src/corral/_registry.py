"""Plugins: the one door through which tasks, strategies, models, sources and sinks are found.

Each kind is an entry-point group (built-ins included, see ``pyproject.toml``), read once per
process and loaded on first use, so ``import corral`` loads no plugin.
"""

from __future__ import annotations

import difflib
from functools import cache
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Any

from corral.errors import ModelNotFoundError, UserError

if TYPE_CHECKING:
    from pydantic import ValidationError

    from corral.io.base import Sink, Source
    from corral.strategies.base import Strategy
    from corral.tasks.base import Step

TASK_GROUP = "corral.tasks"
MODEL_GROUP = "corral.models"
STRATEGY_GROUP = "corral.strategies"
SOURCE_GROUP = "corral.sources"
SINK_GROUP = "corral.sinks"


@cache
def _group(group: str) -> dict[str, EntryPoint]:
    found = {ep.name: ep for ep in entry_points(group=group)}
    if not found:
        raise UserError(
            f"no {group} plugins are registered: Corral is not installed as a package; "
            "run `pip install -e .` in the project folder"
        )
    return found


@cache
def _loaded(group: str) -> dict[str, Any]:
    return {name: ep.load() for name, ep in sorted(_group(group).items())}


def task_classes() -> dict[str, type[Step]]:
    """The installed tasks by their ``task:`` name, sorted."""
    return _loaded(TASK_GROUP)


def strategy_classes() -> dict[str, type[Strategy]]:
    """The installed strategies by their ``strategy:`` name, sorted."""
    return _loaded(STRATEGY_GROUP)


def source_classes() -> dict[str, type[Source]]:
    """The installed source formats by their ``format:`` name, sorted."""
    return _loaded(SOURCE_GROUP)


def sink_classes() -> dict[str, type[Sink]]:
    """The installed sink formats by their ``format:`` name, sorted."""
    return _loaded(SINK_GROUP)


@cache
def _one(group: str, name: str) -> Any:
    ep = _group(group).get(name)
    return None if ep is None else ep.load()


def source_class(name: str) -> type[Source] | None:
    """The source format named ``name``, loading that plugin only (None: none is installed)."""
    found: type[Source] | None = _one(SOURCE_GROUP, name)
    return found


def sink_class(name: str) -> type[Sink] | None:
    """The sink format named ``name``, loading that plugin only (None: none is installed)."""
    found: type[Sink] | None = _one(SINK_GROUP, name)
    return found


def plugin_names(group: str) -> list[str]:
    """The names registered under an entry-point ``group``, sorted (no plugin is loaded)."""
    return sorted(_group(group))


def model_names() -> list[str]:
    return plugin_names(MODEL_GROUP)


def model_class(name: str) -> type:
    eps = _group(MODEL_GROUP)
    if name not in eps:
        close = difflib.get_close_matches(name, list(eps), n=1)
        hint = f"did you mean `{close[0]}`? " if close else ""
        raise ModelNotFoundError(
            f"unknown model `{name}`; {hint}installed models: {', '.join(sorted(eps))} "
            "(use NAME or NAME:ARG, e.g. `local`, `local:/path/model.gguf`, `fake`)"
        )
    loaded: type = eps[name].load()
    return loaded


def suggest(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.5)
    return f"; did you mean `{close[0]}`?" if close else ""


def first_problem(exc: ValidationError, cls: type, what: str) -> str:
    """The first problem of a plugin's mapping that ``cls`` rejected, in one line that names
    ``what`` it is (``strategy `vote```) and, for an unknown key, the nearest and the valid keys.
    An unknown key is said first: a misspelt key is often why another one is missing."""
    err = min(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
    where = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        valid = sorted(getattr(cls, "model_fields", {}))
        return (
            f"unknown key `{where}` in {what}{suggest(str(err['loc'][-1]), valid)} "
            f"Valid keys: {', '.join(valid)}."
        )
    msg = err["msg"].removeprefix("Value error, ")
    return what + (f" {where}" if where else "") + f": {msg}"
