"""``cascade`` (System 1 to System 2): a fast stage first, a deeper or stronger one only when needed.

Each stage is a strategy (``single``, ``vote``, ``refine``, ``best_of``), usually on its own
``model:``. A stage's answer is accepted when it passes the step's checks and its confidence
(vote agreement, or token log-probabilities when the model returns them) reaches ``threshold``;
otherwise the record escalates to the next stage. The last stage's answer stands.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, SerializeAsAny, field_validator

from corral._trace_text import conf
from corral.store.base import TraceEvent
from corral.strategies.base import Outcome, Solver, Strategy


class Cascade(Strategy):
    """Escalate from cheap to strong on low confidence or failed checks."""

    name: Literal["cascade"] = "cascade"
    decisions: ClassVar[frozenset[str]] = frozenset({"escalate"})
    stages: list[SerializeAsAny[Strategy]] = Field(min_length=2, description="strategies tried in order, cheapest first")
    threshold: float = Field(
        0.8, ge=0.0, le=1.0, description="confidence a stage's answer needs to be accepted"
    )

    @field_validator("stages", mode="before")
    @classmethod
    def _parse_stages(cls, v: Any) -> Any:
        from corral.strategies import parse_strategy

        if not isinstance(v, list):
            raise ValueError("stages is a list of strategies, e.g. [single, {name: vote, model: strong}]")
        return [parse_strategy(x) for x in v]

    def models(self) -> list[str]:
        return [m for s in self.stages for m in s.models()] + super().models()

    def expected_calls(self) -> tuple[float, float]:
        lows = [s.expected_calls() for s in self.stages]
        return (lows[0][0], sum(h for _, h in lows))

    def model_post_init(self, __context: Any) -> None:
        for s in self.stages:
            if isinstance(s, Cascade):
                raise ValueError("a cascade stage cannot itself be a cascade; list its stages instead")


    @classmethod
    def describe(cls, event: TraceEvent) -> list[str]:
        """``escalate: stage 1 -> stage 2: <why>``, or that a stage's answer was accepted."""
        d = event.info
        if "stage" not in d:
            return super().describe(event)
        stage = d["stage"]
        confidence, threshold = d.get("confidence"), d.get("threshold")
        bar = f"threshold {threshold:g}" if threshold is not None else "no threshold"
        if d.get("escalate"):
            why = str(d.get("why") or event.detail or "")
            if why.startswith("confidence ") and confidence is not None:
                return [f"escalate: stage {stage} -> stage {stage + 1}: confidence {conf(confidence)} < {bar}"]
            return [f"escalate: stage {stage} -> stage {stage + 1}: {why} (confidence {conf(confidence)}, {bar})"]
        if confidence is None:
            return [f"cascade: stage {stage} accepted (no confidence measure, {bar}; checks passed)"]
        return [f"cascade: stage {stage} accepted (confidence {conf(confidence)} >= {bar}; checks passed)"]

    async def solve(self, ctx: Solver) -> Outcome:
        out = Outcome(None, error="no stage ran")
        last = len(self.stages) - 1
        for i, stage in enumerate(self.stages):
            label = f"stage {i + 1} ({stage.name}{' on ' + stage.model if stage.model else ''})"
            if stage.model is None and self.model is not None:
                stage = stage.model_copy(update={"model": self.model})
            with ctx.within(label):
                out = await stage.solve(ctx)
            if i == last:
                break
            why = _why_escalate(out, self.threshold)
            if why is None:
                ctx.note("escalate", f"{label} accepted: confidence {_fmt(out.confidence)} >= {self.threshold:g}",
                         stage=i + 1, escalate=False, confidence=out.confidence, threshold=self.threshold)
                return out
            ctx.note("escalate", f"{label} -> stage {i + 2}: {why}", stage=i + 1, escalate=True,
                     confidence=out.confidence, threshold=self.threshold, why=why)
        return out


def _why_escalate(out: Outcome, threshold: float) -> str | None:
    if out.answer is None:
        return f"no answer ({out.error})"
    if out.problems:
        return "checks failed: " + "; ".join(out.problems)
    if out.confidence is None:
        return None  # nothing to measure confidence by: the checks decide
    if out.confidence < threshold:
        return f"confidence {out.confidence:.2f} < {threshold:g}"
    return None


def _fmt(c: float | None) -> str:
    return "n/a" if c is None else f"{c:.2f}"
