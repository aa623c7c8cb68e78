"""The rules router: which variant of a step takes a row, and the trace event that says so.

A step with ``experts:`` (:mod:`corral.tasks._experts`) gives each row to the first expert whose
``when:`` is true over the row and the earlier steps' answers, and the rest to the step as
written (route ``default``). :func:`pick` decides once per (record, step); the record's
processing (:mod:`corral._record`) then runs the chosen step and writes :meth:`Routed.event`.

The event is the contract every router writes, this one and System 1 alike: outcome ``route``,
attempt 0, no request, a readable ``detail`` and ``data`` JSON with at least ``{"route": NAME}``
(System 1 adds ``p``, ``threshold``, ``answer``). ``corral show`` prints it as a decision and
``corral routes`` counts rows, calls, cost and accuracy by it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from corral._expr import ConditionError
from corral.store.base import AttemptRecord
from corral.tasks._experts import DEFAULT_ROUTE
from corral.tasks.base import Task

#: the outcome of a route event in the trace
ROUTE = "route"


@dataclass(slots=True, frozen=True)
class Routed:
    """A row's route at one step: the step it runs, the route's name, and why."""

    step: Task
    route: str
    detail: str
    data: dict[str, Any] = field(default_factory=dict)

    def event(self, run_id: str, key: str) -> AttemptRecord:
        """The trace event of this route for record ``key``."""
        data = json.dumps({"route": self.route, **self.data}, ensure_ascii=False)
        return AttemptRecord(run_id, key, self.step.name, 0, None, ROUTE, self.detail, data)


def pick(step: Task, context: dict[str, Any], absent: frozenset[str] | set[str] = frozenset()) -> Routed:
    """The expert of ``step`` that takes this row (the first whose ``when:`` is true), else the
    step as written. A ``when:`` that reads an earlier step that gave the row no answer
    (``absent``) is false, as a step's own ``when:`` is. Raises :class:`ConditionError` naming
    the expert whose ``when:`` cannot be evaluated for the row (the row is quarantined)."""
    for e in step.routes():
        if absent and not absent.isdisjoint(e.condition.names):
            continue
        try:
            taken = e.condition(context)
        except ConditionError as err:
            raise ConditionError(f"expert `{e.route}`: when {err}") from None
        if taken:
            return Routed(e.step, e.route, f"expert `{e.route}`: when {e.when}")
    return Routed(step, DEFAULT_ROUTE, f"{DEFAULT_ROUTE}: no expert's when: is true")
