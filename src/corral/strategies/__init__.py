"""Strategies: how much a step thinks about each record (see :mod:`corral.strategies.base`).

Built-ins (``single``, ``vote``, ``refine``, ``best_of``, ``cascade``) register under the
``corral.strategies`` entry-point group, the same door a plugin uses.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from corral._registry import first_problem, strategy_classes, suggest
from corral.strategies.base import Strategy


def parse_strategy(value: Any) -> Strategy:
    """A strategy from a name (``vote``) or a mapping (``{name: vote, samples: 7}``)."""
    if isinstance(value, Strategy):
        return value
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, dict):
        raise ValueError("strategy is a name such as `vote` or a mapping such as {name: vote, samples: 7}")
    name = value.get("name")
    classes = strategy_classes()
    if name is None:
        raise ValueError(f"a strategy mapping needs `name:` (one of {', '.join(classes)})")
    cls = classes.get(str(name))
    if cls is None:
        raise ValueError(
            f"unknown strategy `{name}`{suggest(str(name), list(classes))} Strategies: {', '.join(classes)}."
        )
    try:
        strategy: Strategy = cls.model_validate(value)
    except ValidationError as e:
        raise ValueError(first_problem(e, cls, f"strategy `{name}`")) from None
    return strategy
