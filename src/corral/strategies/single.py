"""``single`` (System 1): one answer, accepted if it passes the step's checks."""

from __future__ import annotations

from typing import Literal

from corral.strategies.base import Outcome, Solver, Strategy


class Single(Strategy):
    """One call (plus the step's own retries after an unusable answer)."""

    name: Literal["single"] = "single"

    async def solve(self, ctx: Solver) -> Outcome:
        s = await ctx.sample(model=self.model)
        ctx.offer(s.answer, s.confidence, s.reasoning)
        if s.answer is None:
            return Outcome(None, error=s.error)
        return Outcome(s.answer, s.confidence, s.problems, reasoning=s.reasoning)
