"""Building a run's models from their references: the job's ``model:``, a ``--model`` name, the
models its strategies and experts name (``models:``). The request layer (:mod:`corral._client`)
then asks them."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from corral._registry import model_class, suggest
from corral.errors import ModelNotFoundError
from corral.job import Job, ModelRef
from corral.models.base import Model
from corral.tasks.base import Task

__all__ = ["make_model", "strategy_models"]


def make_model(ref: ModelRef | str | dict[str, Any], base_dir: Path | None = None) -> Model:
    """Build a model from its name (``local``, ``local:/m.gguf``, ``fake``) or mapping."""
    ref = ModelRef.parse(ref)
    cls = model_class(ref.name)
    arg = ref.arg
    if arg and base_dir is not None and arg.endswith(".gguf") and not os.path.isabs(arg):
        candidate = base_dir / arg
        if candidate.exists():
            arg = str(candidate.resolve())
    options = dict(ref.options)
    if base_dir is not None:  # file options of a model are relative to the job file's folder
        for key in getattr(cls, "path_options", ()):
            v = options.get(key)
            if isinstance(v, str) and v and not os.path.isabs(v):
                options[key] = str((base_dir / v).resolve())
    _check_options(ref, cls, options)
    try:
        return cls(arg, **options)
    except TypeError as e:
        raise ModelNotFoundError(f"model `{ref}`: {e}; check the options under `model:`") from None
    except ValueError as e:
        raise ModelNotFoundError(f"model `{ref}`: {e}") from None


def _check_options(ref: ModelRef, cls: type[Model], options: dict[str, Any]) -> None:
    """An option the model's class does not take is one line naming the ones it does."""
    try:
        params = list(inspect.signature(cls).parameters.values())
    except (TypeError, ValueError):  # a class whose signature cannot be read: let it check
        return
    if not params or any(p.kind is p.VAR_KEYWORD for p in params):
        return
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    takes = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
             and not (positional and p is positional[0])]  # the first one receives NAME:ARG
    unknown = [k for k in options if k not in takes]
    if unknown:
        shared = sorted(set(ModelRef.model_fields) - {"name", "arg", "options"})
        key = unknown[0]
        others = ", ".join(f"`{k}`" for k in unknown[1:])
        more = f" (and {len(unknown) - 1} more: {others})" if others else ""
        raise ModelNotFoundError(
            f"model `{ref}`: unknown option `{key}`{suggest(key, takes + shared) or '.'}{more} "
            f"Valid options: {', '.join(sorted(takes)) or 'none'}; and for every model: "
            f"{', '.join(shared)}."
        )


def strategy_models(
    job: Job, make: Callable[[ModelRef, Path | None], Model] = make_model
) -> dict[str, tuple[Model, ModelRef]]:
    """The models the steps' strategies name (by ``models:`` entry), their experts' too, built
    once per run."""
    out: dict[str, tuple[Model, ModelRef]] = {}
    steps: list[Task] = [v for s in job.steps for v in s.variants()]
    for step in steps:
        for name in step.strategy.models():
            if name not in out:
                ref = job.model_ref(name)
                out[name] = (make(ref, job.base_dir), ref)
    return out
