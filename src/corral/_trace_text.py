"""Small formatters for trace events as text: what ``corral show`` prints and each strategy's
:meth:`~corral.strategies.base.Strategy.describe` uses, so a vote or a confidence reads the same
wherever it is shown. Imports nothing of Corral's, so strategies can import it freely."""

from __future__ import annotations

import json
from typing import Any


def conf(c: Any) -> str:
    """A confidence as ``0.87`` (``1.2e-03`` when tiny, ``n/a`` when there is none)."""
    if c is None:
        return "n/a"
    c = float(c)
    return f"{c:.2f}" if c == 0 or c >= 0.01 else f"{c:.1e}"


def compact(v: Any) -> str:
    """A value as one line of JSON, spaced for reading."""
    return json.dumps(v, ensure_ascii=False, separators=(", ", ": "))


def votes_text(votes: dict[str, int]) -> str:
    """``{'"billing"': 3, '"account"': 1}`` -> ``billing 3, account 1 -> billing`` (the leader first)."""
    ranked = sorted(votes.items(), key=lambda kv: -kv[1])  # stable: ties keep the vote's order
    shown = [f"{_value(v)} {n}" for v, n in ranked]
    return f"{', '.join(shown)} -> {_value(ranked[0][0])}" if ranked else "no votes"


def route_line(step: str, detail: str | None, data: dict[str, Any]) -> str:
    """A route event as ``corral show`` prints it: ``route: step `reply` -> expert `german`: when
    lang == "de"``, with System 1's probability and threshold when the event has them."""
    route = data.get("route")
    said = detail or ""
    text = f"route: step `{step}` -> {said or route or 'unknown'}"
    notes = []  # what the data holds that the detail does not say already
    if "threshold" not in said:
        notes += [f"{k} {conf(data[k])}" for k in ("p", "threshold") if isinstance(data.get(k), (int, float))]
    if "answer" not in said and data.get("answer") is not None:
        notes.append(f"answer {compact(data['answer'])}")
    return text + (f" ({', '.join(notes)})" if notes else "")


def _value(canonical_json: str) -> str:
    try:
        v = json.loads(canonical_json)
    except ValueError:
        return canonical_json
    return v if isinstance(v, str) else compact(v)
