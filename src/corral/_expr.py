"""Safe expressions over a row: ``when:`` conditions.

An expression is one Python expression (comparisons, ``and``/``or``/``not``, ``in``, literals,
attribute access into earlier steps' outputs such as ``details.amount > 100``), evaluated with
simpleeval: no imports, no calls except a few harmless functions, no dunder access.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Any

from simpleeval import EvalWithCompoundTypes, InvalidExpression

_FUNCTIONS = {
    "len": len,
    "lower": lambda s: s.lower() if isinstance(s, str) else s,
    "upper": lambda s: s.upper() if isinstance(s, str) else s,
    "float": float,
    "int": int,
    "str": str,
    "abs": abs,
    "min": min,
    "max": max,
    "sum": sum,
    "round": round,
    "all": all,
    "any": any,
}


class _Attr(dict[str, Any]):
    def __getattr__(self, name: str) -> Any:
        try:
            return _wrap(self[name])
        except KeyError:
            raise AttributeError(name) from None


def _wrap(v: Any) -> Any:
    return _Attr(v) if isinstance(v, dict) else v


@dataclass(frozen=True)
class Condition:
    source: str
    names: frozenset[str]

    @classmethod
    def parse(cls, text: str) -> Condition:
        try:
            tree = ast.parse(text.strip(), mode="eval")
        except SyntaxError as e:
            raise ValueError(f"`{text}` is not a valid expression ({e.msg})") from None
        found = [n for n in ast.walk(tree) if isinstance(n, ast.Name)]
        # a comprehension's own variables (`x` in `any(x > 0 for x in items)`) are not row names
        bound = {n.id for n in found if isinstance(n.ctx, ast.Store)}
        names = {n.id for n in found if n.id not in _FUNCTIONS} - bound - {
            "True", "False", "None", "true", "false", "null"}
        return cls(text.strip(), frozenset(names))

    def __call__(self, context: dict[str, Any]) -> bool:
        names = {k: _wrap(v) for k, v in context.items()}
        for k, v in (("true", True), ("false", False), ("null", None)):
            names.setdefault(k, v)  # YAML-style literals, unless a column has that name
        ev = EvalWithCompoundTypes(names=names, functions=_FUNCTIONS)
        try:
            return bool(ev.eval(self.source))
        except (InvalidExpression, TypeError, ValueError, AttributeError, KeyError) as e:
            raise ConditionError(f"`{self.source}` could not be evaluated: {e}") from None


class ConditionError(Exception):
    """A condition failed on one row (the row is quarantined with this reason)."""
