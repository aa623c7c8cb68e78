"""``best_of``: sample several answers, score each with a verifier, keep the best.

The verifier is the step's ``checks:`` (each passed check scores a point) and, when ``judge:`` is
set, a judge call that scores the answer from 0 to 10. With ``stop_early`` (the default) sampling
stops at the first answer that passes every check (and, with a judge, scores ``judge_pass``).
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

JUDGE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "score": {"type": "integer", "minimum": 0, "maximum": 10},
        "why": {"type": "string", "maxLength": 300},
    },
    "required": ["score", "why"],
    "additionalProperties": False,
}


class BestOf(Strategy):
    """Explore ``n`` branches; keep the one that checks out."""

    name: Literal["best_of"] = "best_of"
    decisions: ClassVar[frozenset[str]] = frozenset({"best"})
    n: int = Field(4, ge=1, le=50, description="most answers sampled per record")
    temperature: float = Field(0.7, ge=0.0, le=2.0, description="sampling temperature of the branches")
    judge: str | None = Field(None, description="instructions for a judge call that scores each answer 0-10")
    judge_model: str | None = Field(None, description="model for the judge (default: `model`)")
    judge_pass: int = Field(7, ge=0, le=10, description="judge score an answer needs to stop early")
    stop_early: bool = Field(True, description="stop at the first answer that passes every check")

    def check_step(self, step: Step) -> None:
        check_verifier(step, "best_of", "judge", self.judge, self.judge_model, "score")

    def models(self) -> list[str]:
        return [m for m in (self.model, self.judge_model) if m]

    def expected_calls(self) -> tuple[float, float]:
        per = 2 if self.judge else 1
        return (float(per), float(per * self.n))


    @classmethod
    def describe(cls, event: TraceEvent) -> list[str]:
        """``best_of: branch 0 passed, judge 8/10; branch 1 failed -> kept branch 0``."""
        d = event.info
        if d.get("branches") is None:
            return super().describe(event)
        parts = []
        for b in d["branches"]:
            s = f"branch {b.get('branch')} " + ("passed" if b.get("passed") else "failed")
            if b.get("judge") is not None:
                s += f", judge {b['judge']}/10"
            if b.get("problems"):
                n = len(b["problems"])
                s += f", {n} failed check{'s' * (n > 1)}"
            parts.append(s)
        return [f"best_of: {'; '.join(parts)} -> kept branch {d.get('kept')}"]

    async def solve(self, ctx: Solver) -> Outcome:
        best: tuple[tuple[float, ...], int, Sample] | None = None
        scores: list[dict[str, Any]] = []
        error = None
        for i in range(self.n):
            s = await ctx.sample(model=self.model, temperature=self.temperature)
            if s.answer is None:
                error = s.error
                continue
            judged = await self._judge(ctx, s) if self.judge else None
            # an unusable judge reply scores 0: the branch does not pass on the judge's silence
            passed = not s.problems and (not self.judge or (judged or 0) >= self.judge_pass)
            score = (1.0 if passed else 0.0, -len(s.problems), judged or 0, s.confidence or 0.0)
            scores.append({"branch": i + 1, "problems": s.problems, "judge": judged, "passed": passed})
            if best is None or score > best[0]:
                best = (score, i + 1, s)
                ctx.offer(s.answer, s.confidence, s.reasoning)
            if passed and self.stop_early:
                break
        if best is None:
            return Outcome(None, error=error or "no answer")
        _, chosen, s = best
        ctx.note("best", f"kept branch {chosen} of {len(scores)}", branches=scores, kept=chosen)
        return Outcome(s.answer, s.confidence, s.problems, reasoning=s.reasoning)

    async def _judge(self, ctx: Solver, s: Sample) -> int | None:
        messages = [
            Message(
                "system",
                self.judge.strip()  # type: ignore[union-attr]
                + '\n\nScore the answer to the task below from 0 (wrong) to 10 (certainly right). '
                'Reply with JSON only: {"score": <0-10>, "why": "<one sentence>"}'
                + "\n" + INPUT_NOTE,
            ),
            Message(
                "user",
                f"Task input:\n{ctx.input_text}\n\nAnswer:\n" + json.dumps(s.answer, ensure_ascii=False),
            ),
        ]
        verdict = await ctx.ask_json(messages, JUDGE_SCHEMA, model=self.judge_model or self.model, role="judge")
        return None if verdict is None else int(verdict.get("score", 0))
