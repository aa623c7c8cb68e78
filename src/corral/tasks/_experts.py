"""Experts: variants of a step, each for the rows its ``when:`` is true for (the rules router).

A step's ``experts:`` is a list of mappings. Each has a route ``name``, a ``when:`` predicate
over the row and earlier steps' answers, and any of the step's own keys to change (``input``,
``instructions``, ``labels``, ``fields``, ``strategy``, ``checks``...) plus ``model:``, short
for the step's strategy with that ``model:``. At job load each expert becomes a full step of the
same task and the same name (so it answers in the step's column), built from the step's keys
with the expert's on top; an expert that does not validate is one line naming the step, the
expert and the fix. The engine (:mod:`corral._router`) gives a row to the first expert whose
``when:`` is true, and the rest to the step as written (route ``default``).

An expert cannot set ``task`` (its column and schema kind are its step's), ``experts`` (they do
not nest), ``system1`` (System 1 learns the step's own labels and answers only rows no expert
takes) or ``mode``: how a step's calls are bought (online, or a provider batch of the job's
model) is the step's, outside its identity, and a row's route must not decide whether its record
waits for a batch. ``name`` and ``when`` are the expert's own: its route and its predicate.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from corral._expr import Condition
from corral._registry import first_problem, suggest

if TYPE_CHECKING:
    from corral.tasks.base import Step

_ROUTE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

#: the route of the rows no expert takes (the step as written)
DEFAULT_ROUTE = "default"
#: route names the engine gives itself: the step as written, and System 1's
RESERVED_ROUTES = (DEFAULT_ROUTE, "system1", "audit")

#: the step keys an expert may not set, and why (the fix)
FORBIDDEN = {
    "route_by": "the learned router is the step's: it routes rows among the step's experts; set it on the step",
    "task": "an expert runs its step's task and fills its column; to ask something else, add a "
    "step of its own with a `when:`",
    "experts": "experts do not nest; list every variant under the step's `experts:`",
    "mode": "`mode:` is the step's: an expert's calls are bought the way its step's are "
    "(online or a provider batch); set it on the step",
    "system1": "System 1 is the step's: it learns the step's own labels and answers rows no "
    "expert takes; set `system1:` on the step",
}


@dataclass(frozen=True, eq=False)
class Expert:
    """One expert of a step: its route name, its ``when:``, and the full step it runs."""

    route: str
    when: str
    condition: Condition
    step: Step
    #: the step keys the expert sets (``model:`` counted as ``strategy``), as given
    keys: tuple[str, ...]

    def spec(self, mode: str) -> dict[str, Any]:
        """The expert as a job file writes it: name, when, and the keys it sets in the form the
        step serializes them (``model:`` folded into ``strategy``), so a dump loads back as the
        same expert and its spec hash does not depend on how the YAML spelled it."""
        full = self.step.model_dump(mode=mode)
        out: dict[str, Any] = {"name": self.route, "when": self.when}
        for k in self.keys:
            # a key the step's dump leaves out at its default (`on_empty: quarantine`) is kept:
            # the expert set it, maybe against its step's own value
            out[k] = full[k] if k in full else getattr(self.step, k)
        return out


def build_experts(cls: type[Step], data: dict[str, Any], step: Step) -> tuple[Expert, ...]:
    """The experts of ``step`` (validated from ``data``, the mapping it was built from), or a
    ``ValueError`` saying which expert is wrong and how to fix it."""
    raw = data.get("experts") or []
    # (the step's System 1 is not an expert's: it answers only rows on the step as written)
    base = {k: v for k, v in data.items() if k not in ("experts", "when", "system1", "route_by")}
    allowed = sorted((set(cls.model_fields) - set(FORBIDDEN) - {"name", "when"}) | {"model"})
    columns = [(c.name, c.type) for c in step.columns()]
    out: list[Expert] = []
    seen: set[str] = set()
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise ValueError(f"experts[{i}]: an expert is a mapping with `name:`, `when:` and the "
                             "step keys it changes")
        name = item.get("name")
        if name is None:
            raise ValueError(f"experts[{i}] needs `name:`, the route's name (e.g. `name: german`)")
        name = str(name)
        if not _ROUTE.fullmatch(name):
            raise ValueError(f"expert name `{name}` must start with a letter or _ and use only "
                             "letters, digits and _ (it names the route in the trace and in `corral routes`)")
        if name in RESERVED_ROUTES:
            raise ValueError(f"expert name `{name}` is taken: `default` is the route of the rows no "
                             "expert takes, `system1` and `audit` are System 1's; choose another")
        if name in seen:
            raise ValueError(f"two experts are named `{name}`; an expert's name must be unique in its step")
        seen.add(name)
        who = f"expert `{name}`"
        when = item.get("when")
        if when is None:
            raise ValueError(f"{who} needs `when:`, the rows it takes (e.g. when: \"lang == 'de'\")")
        if not isinstance(when, str):
            raise ValueError(f"{who}: `when:` is an expression in quotes, e.g. when: \"lang == 'de'\"")
        try:
            condition = Condition.parse(when)
        except ValueError as e:
            raise ValueError(f"{who}: when: {e}") from None
        keys: list[str] = []
        for k in item:
            if k in ("name", "when"):
                continue
            if k in FORBIDDEN:
                raise ValueError(f"{who} cannot set `{k}`: {FORBIDDEN[k]}")
            if k not in allowed:
                raise ValueError(f"unknown key `{k}` in {who}{suggest(str(k), allowed) or '.'} "
                                 f"Valid keys: name, when, {', '.join(allowed)}.")
            keys.append("strategy" if k == "model" else k)
        overrides = {k: v for k, v in item.items() if k not in ("name", "when", "model")}
        merged = {**base, **overrides}
        if "model" in item:
            merged["strategy"] = _with_model(merged.get("strategy", "single"), item["model"], who)
        try:
            variant = cls.model_validate(merged)
        except ValidationError as e:
            raise ValueError(first_problem(e, cls, who)) from None
        got = [(c.name, c.type) for c in variant.columns()]
        if got != columns:
            raise ValueError(
                f"{who} writes the columns {_shown(got)}, its step {_shown(columns)}; an expert "
                "answers in its step's columns: give it the same fields (names and types)"
            )
        out.append(Expert(name, condition.source, condition, variant, tuple(dict.fromkeys(keys))))
    return tuple(out)


def _with_model(strategy: Any, model: Any, who: str) -> Any:
    """The strategy (as written, or a Strategy) with ``model:`` set: what ``model: NAME`` on an
    expert is short for."""
    if not isinstance(model, str) or not model.strip():
        raise ValueError(f"{who}: `model:` is a model name, a key of the job's `models:` (e.g. `big`) "
                         "or a model such as `openai:gpt-4o`; set its options under `models:`")
    if isinstance(strategy, str):
        return {"name": strategy, "model": model}
    if isinstance(strategy, dict):
        return {**strategy, "model": model}
    if hasattr(strategy, "model_copy"):  # a Strategy given from Python
        return strategy.model_copy(update={"model": model})
    return strategy  # not a strategy: the step's own validation says what is wrong


def _shown(cols: list[tuple[str, str]]) -> str:
    return ", ".join(f"`{n}` ({t})" for n, t in cols) or "none"
