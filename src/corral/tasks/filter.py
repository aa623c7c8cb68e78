"""``filter``: keep the rows for which a yes/no question holds; skip the others, with a reason.

A skipped row is not dropped: it ends in the ``skipped`` state with the model's reason
(``filtered out: ...``), is counted in the run's summary, and is written to the skipped output
beside the sink. Later steps run only for kept rows.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from corral._system1 import System1Spec, check_available
from corral.io.base import Column
from corral.models.base import Message, Request
from corral.tasks.base import Step
from corral.tasks.classify import YES_NO, calibrated

REASON_MAX = 200


class FilterStep(Step):
    """Ask ``question`` (yes or no) about each row; keep the row when the answer is
    ``keep_when`` (yes by default), skip it otherwise. The step's column is ``true`` for every
    written row (null where its ``when:`` kept it from running)."""

    task: Literal["filter"] = "filter"
    question: str = Field(description="a yes/no question about the input, e.g. `Is this a refund request?`")
    keep_when: Literal["yes", "no"] = Field(
        default="yes", description="keep rows whose answer is yes (default) or no"
    )

    system1: System1Spec | None = Field(
        default=None, description="a learned classifier that answers the rows it is sure of, with no call"
    )

    can_skip: ClassVar[bool] = True
    can_score: ClassVar[bool] = True
    can_pack: ClassVar[bool] = True
    later_keys: ClassVar[tuple[str, ...]] = ("system1",)

    @model_validator(mode="after")
    def _system1_fits(self) -> FilterStep:
        if self.system1 is not None:
            check_available()
        return self

    # System 1's classes: whether the row is kept

    def system1_classes(self) -> tuple[str, ...]:
        return ("true", "false")

    def system1_label(self, value: Any) -> str | None:
        if isinstance(value, dict) and isinstance(value.get("keep"), bool):
            return "true" if value["keep"] else "false"
        return None

    def system1_label_of(self, cell: Any) -> str | None:
        text = str(cell).strip().casefold()
        return "true" if text in ("true", "yes", "1", "keep") else "false" if text in ("false", "no", "0", "drop") else None

    def system1_answer(self, label: str, p: float) -> dict[str, Any]:
        return {"reason": f"System 1 (p {p:.2f})", "keep": label == "true"}

    @field_validator("question")
    @classmethod
    def _a_question(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("`question` must be a yes/no question, e.g. `Is this a refund request?`")
        return v.strip()

    @field_validator("keep_when", mode="before")
    @classmethod
    def _yaml_booleans(cls, v: Any) -> Any:
        # YAML 1.1 reads a bare yes/no as a boolean
        if v is True:
            return "yes"
        if v is False:
            return "no"
        return v

    def output_schema(self) -> dict[str, Any]:
        return {
            "type": "object",
            # the reason first, so a model that writes in order reasons before it decides
            "properties": {
                "reason": {"type": "string", "maxLength": REASON_MAX},
                "keep": {"type": "boolean"},
            },
            "required": ["reason", "keep"],
            "additionalProperties": False,
        }

    def system_prompt(self) -> str:
        yes, no = ("true", "false") if self.keep_when == "yes" else ("false", "true")
        return (
            "You answer a yes/no question about a text.\n"
            f"Question: {self.question}\n"
            f'Set "keep" to {yes} if the answer is yes and to {no} if the answer is no. '
            'Give the "reason" in one short sentence.\n'
            'Answer with JSON only: {"reason": "<one sentence>", "keep": true or false}'
        )

    def score_requests(self, context: dict[str, Any], sample: int = 0) -> list[Request]:
        system = self._scoring_system
        return [Request(messages=(Message("system", system), Message("user", self._tpl.prompt(context))),
                        max_tokens=4, sample=sample, choices=YES_NO)]

    @cached_property
    def _scoring_system(self) -> str:
        return self.with_instructions(
            f"You answer a yes/no question about a text.\nQuestion: {self.question}\n"
            "Answer with yes or no only."
        )

    def from_scores(
        self, scores: list[dict[str, float]], content_free: list[dict[str, float]] | None
    ) -> tuple[dict[str, Any], float, dict[str, Any]]:
        probs = calibrated(scores[0], content_free[0] if content_free else None)
        said = "yes" if probs["yes"] > 0.5 else "no"
        keep = said == self.keep_when
        reason = f"the answer is {said} (p {probs[said]:.2f}, by likelihood)"
        return {"reason": reason, "keep": keep}, probs[said], {k: round(v, 4) for k, v in probs.items()}

    def columns(self) -> list[Column]:
        return [Column(self.name, "boolean")]

    def value(self, answer: dict[str, Any]) -> Any:
        return {"keep": bool(answer["keep"]), "reason": answer.get("reason") or ""}

    def to_columns(self, value: Any) -> dict[str, Any]:
        return {self.name: value.get("keep") if isinstance(value, dict) else None}

    def skip(self, value: Any) -> str | None:
        if not isinstance(value, dict) or value.get("keep", True):
            return None
        reason = (value.get("reason") or "").strip()
        return f"filtered out: {reason}" if reason else "filtered out (no reason given)"
