"""The Strategy extension point: how much a step thinks about a record.

A strategy is a pydantic model (its fields are the keys of a step's ``strategy:`` mapping) with one
abstract method, :meth:`Strategy.solve`. It never calls a model itself: it asks the engine through
a :class:`Solver` for samples (each one rendered from the step, parsed, checked, recorded, cached,
budgeted and rate limited by the engine), and returns an :class:`Outcome`. Register a subclass under
the ``corral.strategies`` entry-point group with the name used in ``strategy:``.
"""

from __future__ import annotations

import json
from abc import abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator

from corral.models.base import Message
from corral.store.base import TraceEvent

if TYPE_CHECKING:
    from corral.tasks.base import Step


@dataclass(slots=True)
class Sample:
    """One answer the engine obtained for a strategy (after the step's own retries)."""

    #: the parsed answer (reasoning removed), or ``None`` when no valid answer came back
    answer: dict[str, Any] | None
    #: the step's checks this answer fails (empty when it passes them all)
    problems: list[str] = field(default_factory=list)
    #: why there is no answer (a model error, or invalid output after the step's attempts)
    error: str | None = None
    #: the model's confidence from token log-probabilities, when the model returns them
    confidence: float | None = None
    #: the model that answered
    model: str = ""
    #: the reasoning the model gave (schema field or the provider's), kept for the trace
    reasoning: str | None = None

    @property
    def ok(self) -> bool:
        """An answer that passes every check."""
        return self.answer is not None and not self.problems


@dataclass(slots=True)
class Outcome:
    """What a strategy settled on for one record."""

    answer: dict[str, Any] | None
    confidence: float | None = None
    #: checks the answer still fails (the record goes to review rather than the sink)
    problems: list[str] = field(default_factory=list)
    #: why there is no answer at all (the record is quarantined with it)
    error: str | None = None
    reasoning: str | None = None


class Solver(Protocol):
    """What the engine offers a strategy while it solves one record's step."""

    async def sample(
        self,
        *,
        model: str | None = None,
        temperature: float | None = None,
        repair: tuple[dict[str, Any], list[str]] | None = None,
        role: str = "sample",
    ) -> Sample:
        """One answer to the step's prompt. ``repair`` = (previous answer, its problems) asks the
        model to correct that answer; ``temperature`` overrides the step's."""
        ...

    async def ask_json(
        self, messages: list[Message], schema: dict[str, Any], *, model: str | None, role: str
    ) -> dict[str, Any] | None:
        """An auxiliary call (a critic or a judge): the parsed JSON answer, or ``None``."""
        ...

    def check(self, answer: dict[str, Any]) -> list[str]:
        """The step's checks this answer fails."""
        ...

    def note(self, event: str, detail: str | None = None, **data: Any) -> None:
        """Record a decision in the trace (a vote tally, a critique, an escalation...)."""
        ...

    def offer(self, answer: dict[str, Any] | None, confidence: float | None, reasoning: str | None = None) -> None:
        """The best answer so far: kept for review if the record runs out of budget."""
        ...

    def within(self, label: str) -> Any:
        """Context manager: trace events inside are attributed to ``label`` (e.g. a cascade stage)."""
        ...

    @property
    def input_text(self) -> str:
        """The step's rendered user message (for critic and judge prompts)."""
        ...


class Strategy(BaseModel):
    """Keys common to every strategy."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="which strategy")
    model: str | None = Field(
        default=None,
        description="model for this strategy's calls (`NAME` or `NAME:ARG`); default the job's model",
    )

    @field_validator("model", mode="before")
    @classmethod
    def _model_name(cls, v: Any) -> Any:
        if isinstance(v, dict):
            raise ValueError(
                "a strategy's `model:` is a name such as `openai:gpt-4o-mini`; set its options "
                "(rpm, price...) under the job's `models:` mapping"
            )
        return v

    #: the outcomes this strategy writes its decisions with (``ctx.note(event, ...)``): their
    #: trace events are rendered by its :meth:`describe`
    decisions: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def describe(cls, event: TraceEvent) -> list[str]:
        """One of this strategy's decisions as a short line for ``corral show`` (and, where it
        helps, indented lines under it). Override it to render a plugin's own events; this
        default prints the outcome and its detail."""
        return [f"{event.outcome}: {event.detail}" if event.detail else event.outcome]

    @abstractmethod
    async def solve(self, ctx: Solver) -> Outcome:
        """Reach an answer for one record by asking ``ctx`` for samples."""

    def check_step(self, step: Step) -> None:
        """Raise ``ValueError`` (said at the step) when this strategy cannot run on ``step``, e.g.
        ``refine`` on a step with nothing to check answers with. Called when the step is
        validated, for each stage; the default checks nothing."""

    def models(self) -> list[str]:
        """Model names this strategy (and the ones inside it) call."""
        return [self.model] if self.model else []

    def expected_calls(self) -> tuple[float, float]:
        """(fewest, most) calls per record, for estimates and documentation."""
        return (1.0, 1.0)


# --- helpers shared by strategies ------------------------------------------------------------


def check_verifier(
    step: Step, strategy: str, role: str, instructions: str | None, model: str | None, verb: str
) -> None:
    """The rules of a strategy that verifies answers with the step's checks and field rules or a
    ``role`` call (a critic, a judge): that call needs its ``instructions`` when its ``model`` is
    set, and the step needs something to ``verb`` (check, score) its answers with."""
    if model and not instructions:
        raise ValueError(f"strategy `{strategy}`: `{role}_model` is set but `{role}` is not; "
                         f"give the {role} its instructions with `{role}:`")
    if not (step.checks or step.checks_fields() or instructions):
        raise ValueError(f"strategy `{strategy}` has nothing to {verb} answers with; add `checks:` "
                         f"to the step or a `{role}:` to the strategy")


def canonical(value: Any) -> str:
    """A value as canonical JSON, so equal answers compare equal (lists of labels sorted)."""
    if isinstance(value, list) and all(isinstance(x, str) for x in value):
        value = sorted(value)
    return json.dumps(value, sort_keys=True, ensure_ascii=False)

