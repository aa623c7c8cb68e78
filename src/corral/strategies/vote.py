"""``vote`` (self-consistency): sample several answers and keep the majority.

Labels are voted as a whole; extracted fields are voted field by field. Agreement (the leader's
share of the votes, the lowest over fields) is the answer's confidence. Sampling is adaptive: it
stops once ``min_samples`` answers reach ``agreement``, or once no field's leader can be overtaken
by the samples left, so an easy row costs about ``min_samples`` calls rather than ``samples``.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from corral._trace_text import conf, votes_text
from corral.store.base import TraceEvent
from corral.strategies.base import Outcome, Sample, Solver, Strategy, canonical


class Vote(Strategy):
    """Self-consistency voting with an adaptive stop."""

    name: Literal["vote"] = "vote"
    decisions: ClassVar[frozenset[str]] = frozenset({"vote"})
    samples: int = Field(5, ge=1, le=50, description="most answers sampled per record")
    min_samples: int = Field(default=2, ge=1, le=50, description="answers sampled before an early stop")
    agreement: float = Field(
        1.0, gt=0.0, le=1.0,
        description="stop early once this share of the answers agree (every field's leader)",
    )
    temperature: float = Field(
        default=0.7, ge=0.0, le=2.0, description="sampling temperature of the votes"
    )
    adaptive: bool = Field(True, description="stop early; false always samples `samples` answers")

    @model_validator(mode="before")
    @classmethod
    def _small_votes(cls, data: Any) -> Any:
        # `samples: 1` alone means one answer: the default min_samples follows it down
        if isinstance(data, dict) and "min_samples" not in data:
            n = data.get("samples")
            if isinstance(n, int) and 1 <= n < 2:
                data = {**data, "min_samples": n}
        return data

    @model_validator(mode="after")
    def _bounds(self) -> Vote:
        if self.min_samples > self.samples:
            raise ValueError(f"min_samples ({self.min_samples}) is more than samples ({self.samples})")
        return self

    def expected_calls(self) -> tuple[float, float]:
        return (float(self.min_samples if self.adaptive else self.samples), float(self.samples))


    @classmethod
    def describe(cls, event: TraceEvent) -> list[str]:
        """``vote: billing 3, account 1 -> billing (agreement 0.75)``; a line a field for fields."""
        d = event.info
        if not d.get("fields"):
            return super().describe(event)
        notes = [f"agreement {conf(d.get('agreement'))}"]
        if d.get("failed"):
            notes.append(f"{d['failed']} sample{'s' * (d['failed'] > 1)} without an answer")
        if d.get("stopped"):
            notes.append(f"stopped: {d['stopped']}")
        tail = f"({'; '.join(notes)})"
        fields: dict[str, dict[str, int]] = d["fields"]
        if len(fields) == 1:
            (votes,) = fields.values()
            return [f"vote: {votes_text(votes)} {tail}"]
        return [f"vote, {d.get('answers', '?')} answers {tail}:", *(f"{k}: {votes_text(v)}" for k, v in fields.items())]

    async def solve(self, ctx: Solver) -> Outcome:
        got: list[Sample] = []
        failures: list[str] = []
        stopped = "all samples taken"
        for i in range(self.samples):
            s = await ctx.sample(model=self.model, temperature=self.temperature)
            if s.answer is None:
                failures.append(s.error or "no answer")
            else:
                got.append(s)
            if not got:
                continue
            winner, agreement, fields, settled = tally(got, self.samples - (i + 1))
            ctx.offer(winner, agreement, _reasoning_for(got, winner))
            if not self.adaptive:
                continue
            if len(got) >= self.min_samples and agreement >= self.agreement:
                stopped = f"agreement {agreement:.2f} >= {self.agreement:g} after {len(got)} answers"
                break
            if settled and len(got) >= min(self.min_samples, self.samples):
                stopped = f"no leader can be overtaken with {self.samples - i - 1} samples left"
                break
        if not got:
            return Outcome(None, error=failures[-1] if failures else "no answer")
        winner, agreement, fields, _ = tally(got, 0)
        ctx.note(
            "vote", f"{len(got)} answers, agreement {agreement:.2f}; {stopped}",
            answers=len(got), failed=len(failures), agreement=round(agreement, 4), fields=fields,
            stopped=stopped,
        )
        problems = ctx.check(winner)
        return Outcome(winner, agreement, problems, reasoning=_reasoning_for(got, winner))


def tally(
    samples: list[Sample], left: int
) -> tuple[dict[str, Any], float, dict[str, dict[str, int]], bool]:
    """Field-wise majority: (answer, lowest leader share, votes per field, every leader safe).

    A leader is safe when its lead over the runner-up is more than the samples left."""
    answers = [s.answer for s in samples if s.answer is not None]
    names: list[str] = []
    for a in answers:
        names += [k for k in a if k not in names]
    winner: dict[str, Any] = {}
    votes: dict[str, dict[str, int]] = {}
    low = 1.0
    settled = True
    for name in names:
        counts: Counter[str] = Counter()
        first: dict[str, Any] = {}
        for a in answers:
            c = canonical(a.get(name))
            counts[c] += 1
            first.setdefault(c, a.get(name))
        ranked = counts.most_common()
        lead, n = ranked[0]
        runner_up = ranked[1][1] if len(ranked) > 1 else 0
        winner[name] = first[lead]
        votes[name] = dict(ranked)
        low = min(low, n / len(answers))
        if n - runner_up <= left:
            settled = False
    return winner, low, votes, settled


def _reasoning_for(samples: list[Sample], winner: dict[str, Any]) -> str | None:
    for s in samples:
        if s.answer == winner and s.reasoning:
            return s.reasoning
    return None
