"""``classify``: pick one label (or several) from a fixed set."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from corral.io.base import Column
from corral.tasks.base import Task


class ClassifyStep(Task):
    """Label each row with one of ``labels`` (or a subset, with ``multi_label: true``).

    ``labels`` is a mapping of label to description, or a plain list of labels. The label
    lands in a column named after the step.
    """

    task: Literal["classify"] = "classify"
    labels: dict[str, str] = Field(description="label -> description, or a list of labels")
    multi_label: bool = Field(False, description="allow several labels per row")

    @field_validator("labels", mode="before")
    @classmethod
    def _labels(cls, v: Any) -> Any:
        if isinstance(v, list):
            if not all(isinstance(x, str) for x in v):
                raise ValueError("labels must be strings")
            if len(set(v)) != len(v):
                raise ValueError("labels must be unique")
            return {x: "" for x in v}
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

    def columns(self) -> list[Column]:
        return [Column(self.name, "list" if self.multi_label else "string")]

    def value(self, answer: dict[str, Any]) -> Any:
        return answer["labels"] if self.multi_label else answer["label"]
