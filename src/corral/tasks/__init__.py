"""Steps: the :class:`~corral.tasks.base.Step` extension point and the built-in tasks.

Built-ins (``classify``, ``extract``, ``normalize``, ``match``, ``map``, ``filter``) register
under the ``corral.tasks`` entry-point group, the same door a plugin uses. :func:`parse_step`
turns one item of a job's ``steps:`` into the step class its ``task:`` names, when the job is
validated (not when :mod:`corral` is imported).
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from corral._registry import first_problem, suggest, task_classes
from corral.tasks.base import Step


class StepSpecError(ValueError):
    """A step mapping that does not validate. ``errors`` are pydantic's errors, located inside
    the step; ``step_class`` is the class its ``task:`` names, whose keys are the valid ones."""

    def __init__(
        self, message: str, errors: ValidationError | None = None, step_class: type[Step] | None = None
    ) -> None:
        super().__init__(message)
        self.errors = errors
        self.step_class = step_class


def parse_step(value: Any) -> Step:
    """A step from a mapping with ``task:`` (``{name: mood, task: classify, ...}``), looked up
    among the installed tasks; a :class:`Step` is returned as it is.

    Raises :class:`StepSpecError` (a ``ValueError``) saying how to fix the mapping.
    """
    if isinstance(value, Step):
        return value
    if not isinstance(value, dict):
        raise StepSpecError("a step is a mapping with name, task and input")
    classes = task_classes()
    tasks = ", ".join(classes)
    if "task" not in value:
        raise StepSpecError(f"needs `task:` (one of {tasks})")
    name = str(value["task"])
    cls = classes.get(name)
    if cls is None:
        raise StepSpecError(f"unknown task `{name}`{suggest(name, list(classes))} Tasks: {tasks}.")
    try:
        step: Step = cls.model_validate(value)
    except ValidationError as e:
        raise StepSpecError(first_problem(e, cls, f"task `{name}`"), e, cls) from None
    return step


__all__ = ["Step", "StepSpecError", "parse_step"]
