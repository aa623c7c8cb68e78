"""``refine`` (validate and repair, "gleaning"): answer, check, send the problems back, ask again.

The answer is checked with the step's ``checks:`` and, when ``critic:`` is set, by a critic call
(which may use a cheaper ``critic_model``). Each repair round sends the step's prompt, the latest
answer and its problems only, so the context does not grow with the rounds.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from corral._delimit import INPUT_NOTE
from corral.models.base import Message
from corral.store.base import TraceEvent
from corral.strategies.base import Outcome, Sample, Solver, Strategy, check_verifier

if TYPE_CHECKING:
    from corral.tasks.base import Step

CRITIC_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "ok": {"type": "boolean"},
        "problems": {"type": "array", "items": {"type": "string", "maxLength": 200}, "maxItems": 3},
    },
    "required": ["ok", "problems"],
    "additionalProperties": False,
}


class Refine(Strategy):
    """Validate and repair, up to ``rounds`` repairs."""

    name: Literal["refine"] = "refine"
    decisions: ClassVar[frozenset[str]] = frozenset({"critique"})
    rounds: int = Field(2, ge=1, le=10, description="most repair rounds after the first answer")
    critic: str | None = Field(
        None, description="instructions for a critic call that reviews each answer"
    )
    critic_model: str | None = Field(None, description="model for the critic (default: `model`)")

    def check_step(self, step: Step) -> None:
        check_verifier(step, "refine", "critic", self.critic, self.critic_model, "check")

    def models(self) -> list[str]:
        return [m for m in (self.model, self.critic_model) if m]

    def expected_calls(self) -> tuple[float, float]:
        per = 2 if self.critic else 1
        return (float(per), float(per * (self.rounds + 1)))


    @classmethod
    def describe(cls, event: TraceEvent) -> list[str]:
        """``critique of answer 2: <problem>``, a line a problem when there are several."""
        d = event.info
        if "problems" not in d:
            return super().describe(event)
        problems = [str(p) for p in d["problems"] or []]
        if not problems:
            return [f"critique: {event.detail or 'no problems'}"]
        head = f"critique of answer {int(d.get('round', 0)) + 1}:"
        if len(problems) == 1:
            return [f"{head} {problems[0]}"]
        return [head, *(f"- {p}" for p in problems)]

    async def solve(self, ctx: Solver) -> Outcome:
        s = await ctx.sample(model=self.model)
        for round_ in range(self.rounds + 1):
            if s.answer is None:
                return Outcome(None, error=s.error)
            problems = list(s.problems)
            if self.critic and not problems:
                problems = await self._critique(ctx, s)
            ctx.offer(s.answer, s.confidence if not problems else 0.0, s.reasoning)
            if not problems:
                if round_:
                    ctx.note("critique", f"accepted after {round_} repair{'s' * (round_ > 1)}",
                             round=round_, problems=[])
                return Outcome(s.answer, s.confidence, reasoning=s.reasoning)
            ctx.note("critique", "; ".join(problems), round=round_, problems=problems)
            if round_ == self.rounds:
                return Outcome(s.answer, s.confidence, problems, reasoning=s.reasoning)
            repaired = await ctx.sample(model=self.model, repair=(s.answer, problems))
            if repaired.answer is None:  # the repair was unusable: keep the answer we have
                return Outcome(s.answer, s.confidence, problems, reasoning=s.reasoning)
            s = repaired
        raise AssertionError("unreachable")

    async def _critique(self, ctx: Solver, s: Sample) -> list[str]:
        messages = [
            Message(
                "system",
                self.critic.strip()  # type: ignore[union-attr]
                + "\n\nReview the answer to the task below. Reply with JSON only: "
                '{"ok": true|false, "problems": ["<what is wrong and how to fix it>", ...]}'
                + "\n" + INPUT_NOTE,
            ),
            Message(
                "user",
                f"Task input:\n{ctx.input_text}\n\nAnswer:\n"
                + json.dumps(s.answer, ensure_ascii=False),
            ),
        ]
        verdict = await ctx.ask_json(
            messages, CRITIC_SCHEMA, model=self.critic_model or self.model, role="critic"
        )
        if verdict is None:
            ctx.note("critique", "the critic's reply was unusable: the answer stands on its checks")
            return []
        if verdict.get("ok", True):
            return []
        found = [str(p) for p in verdict.get("problems") or [] if str(p).strip()]
        return found or ["the critic rejected the answer without saying why"]
