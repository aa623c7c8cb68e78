"""``classify``: pick one label (or several) from a fixed set."""

from __future__ import annotations

import math
import re
from functools import cached_property
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from corral._system1 import System1Spec, check_available
from corral.io.base import Column
from corral.models.base import Message, Request
from corral.tasks.base import Step, distinct_strings

#: the answers of a yes/no scoring request (``multi_label`` scoring, filters)
YES_NO = ("yes", "no")


def softmax(logprobs: dict[str, float]) -> dict[str, float]:
    """Log-probabilities normalised over their own keys (a probability per key, summing to 1)."""
    top = max(logprobs.values())
    exp = {k: math.exp(v - top) for k, v in logprobs.items()}
    total = sum(exp.values())
    return {k: v / total for k, v in exp.items()}


def calibrated(scores: dict[str, float], content_free: dict[str, float] | None) -> dict[str, float]:
    """Probabilities over the choices, each divided by its content-free probability when given
    (Zhao et al. 2021, "Calibrate Before Use": p_cal ∝ p / p_cf), then normalised."""
    if content_free is None:
        return softmax(scores)
    return softmax({k: v - content_free.get(k, 0.0) for k, v in scores.items()})


class ClassifyStep(Step):
    """Label each row with one of ``labels`` (or a subset, with ``multi_label: true``).

    ``labels`` is a mapping of label to description, or a plain list of labels. The label
    lands in a column named after the step.
    """

    task: Literal["classify"] = "classify"
    labels: dict[str, str] = Field(description="label -> description, or a list of labels")
    multi_label: bool = Field(default=False, description="allow several labels per row")
    system1: System1Spec | None = Field(
        default=None, description="a learned classifier that answers the rows it is sure of, with no call"
    )

    can_score: ClassVar[bool] = True
    can_pack: ClassVar[bool] = True
    later_keys: ClassVar[tuple[str, ...]] = ("system1",)

    @model_validator(mode="after")
    def _system1_fits(self) -> ClassifyStep:
        if self.system1 is not None:
            if self.multi_label:
                raise ValueError("`system1:` answers one label a row; remove it or `multi_label: true`")
            check_available()
        return self

    # System 1's classes: the labels

    def system1_classes(self) -> tuple[str, ...]:
        return tuple(self.labels)

    def system1_label(self, value: Any) -> str | None:
        """The class of an answer's value (what System 1 learns from the LLM)."""
        return value if isinstance(value, str) and value in self.labels else None

    def system1_label_of(self, cell: Any) -> str | None:
        """The class a labels file's cell names (case and spaces aside), or None."""
        text = str(cell).strip().casefold()
        return next((lab for lab in self.labels if lab.casefold() == text), None)

    def system1_answer(self, label: str, p: float) -> dict[str, Any]:
        return {"label": label}

    @field_validator("labels", mode="before")
    @classmethod
    def _labels(cls, v: Any) -> Any:
        if isinstance(v, list):
            return dict.fromkeys(distinct_strings(v, "labels must be strings", "labels must be unique"), "")
        if isinstance(v, dict):
            return {str(k): "" if d is None else str(d) for k, d in v.items()}
        return v

    @field_validator("labels")
    @classmethod
    def _two_labels(cls, v: dict[str, str]) -> dict[str, str]:
        if len(v) < 2:
            raise ValueError("give at least two labels")
        return v

    def output_schema(self) -> dict[str, Any]:
        names = list(self.labels)
        if self.multi_label:
            return {
                "type": "object",
                "properties": {
                    "labels": {
                        "type": "array",
                        "items": {"enum": names},
                        "uniqueItems": True,
                    }
                },
                "required": ["labels"],
                "additionalProperties": False,
            }
        return {
            "type": "object",
            "properties": {"label": {"enum": names}},
            "required": ["label"],
            "additionalProperties": False,
        }

    def system_prompt(self) -> str:
        lines = []
        for label, desc in self.labels.items():
            lines.append(f"- {label}: {desc}" if desc else f"- {label}")
        listing = "\n".join(lines)
        if self.multi_label:
            return (
                "You classify text. Choose every label that applies from this list:\n"
                f"{listing}\n"
                'Answer with JSON only: {"labels": [<labels from the list>]}'
            )
        return (
            "You classify text. Choose exactly one label from this list:\n"
            f"{listing}\n"
            'Answer with JSON only: {"label": "<one label from the list>"}'
        )

    # likelihood scoring: one request scoring every label, or (multi_label) a yes/no per label

    def score_requests(self, context: dict[str, Any], sample: int = 0) -> list[Request]:
        text = self._tpl.prompt(context)
        if not self.multi_label:
            system = self._scoring_system
            return [Request(messages=(Message("system", system), Message("user", text)),
                            max_tokens=8, sample=sample, choices=self._choices,
                            answer_prefix=self._answer_prefix)]
        system = self._yes_no_system
        return [
            Request(messages=(Message("system", system), Message("user", f"{text}{ask}")),
                    max_tokens=4, sample=sample, choices=YES_NO)
            for ask in self._label_questions
        ]

    def scoring_choices(self) -> int:
        """One continuation per label; with ``multi_label``, a yes and a no per label."""
        return 2 * len(self.labels) if self.multi_label else len(self.labels)

    def scoring_prompts(self) -> int:
        """One prompt; with ``multi_label``, a yes/no question per label."""
        return len(self.labels) if self.multi_label else 1

    # the parts of the scoring requests that are the same for every row, made once a step

    @cached_property
    def _scoring_system(self) -> str:
        lines = [f"- {label}: {desc}" if desc else f"- {label}" for label, desc in self.labels.items()]
        return self.with_instructions(
            "You classify text. Choose exactly one label from this list:\n"
            + "\n".join(lines) + "\nAnswer with the label only."
        )

    @cached_property
    def _answer_prefix(self) -> str | None:
        """The step's name as the start of the answer (``category`` gives ``Category:``): naming
        what is chosen helps a small model (the bundled one on tickets 41-243: 54.7% right after
        ``Label:``, 62.1% after ``Category:``); a name that is not words (``step1``) keeps the
        model's default."""
        words = self.name.replace("_", " ").replace("-", " ").strip()
        if not re.fullmatch(r"[A-Za-z]+( [A-Za-z]+)*", words):
            return None
        return words[0].upper() + words[1:].lower() + ":"

    @cached_property
    def _choices(self) -> tuple[str, ...]:
        return tuple(self.labels)

    @cached_property
    def _yes_no_system(self) -> str:
        return self.with_instructions("You decide whether a label applies to a text. Answer yes or no only.")

    @cached_property
    def _label_questions(self) -> tuple[str, ...]:
        """What follows the row's text in each label's yes/no request."""
        return tuple(
            f"\n\nLabel: {f'{label} ({desc})' if desc else label}\nDoes this label apply to the text?"
            for label, desc in self.labels.items()
        )

    def from_scores(
        self, scores: list[dict[str, float]], content_free: list[dict[str, float]] | None
    ) -> tuple[dict[str, Any], float, dict[str, Any]]:
        if not self.multi_label:
            probs = calibrated(scores[0], content_free[0] if content_free else None)
            best = max(self.labels, key=lambda k: probs[k])  # ties: the first listed label
            return {"label": best}, probs[best], {k: round(v, 4) for k, v in probs.items()}
        chosen, shown, confidence = [], {}, 1.0
        for i, label in enumerate(self.labels):
            p = calibrated(scores[i], content_free[i] if content_free else None)["yes"]
            shown[label] = round(p, 4)
            if p > 0.5:
                chosen.append(label)
            confidence = min(confidence, max(p, 1.0 - p))  # the least sure of the decisions
        return {"labels": chosen}, confidence, shown

    def columns(self) -> list[Column]:
        return [Column(self.name, "list" if self.multi_label else "string")]

    def value(self, answer: dict[str, Any]) -> Any:
        return answer["labels"] if self.multi_label else answer["label"]
