"""The Task extension point.

A task is a pydantic model (its fields are the step's keys in a job file) that says what to ask
and what shape the answer must have. Subclasses implement one abstract method,
:meth:`Task.output_schema`; they usually also override :meth:`Task.system_prompt`,
:meth:`Task.columns` and :meth:`Task.value`. Register a subclass under the ``corral.tasks``
entry-point group with the name used in ``task:``.
"""

from __future__ import annotations

import json
from abc import abstractmethod
from functools import cached_property
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator

from corral._template import Template
from corral.errors import InvalidOutput, Refused, Truncated
from corral.io.base import Column
from corral.models.base import Completion, Message, Request

_STEP_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


class Task(BaseModel):
    """Common keys of every step."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=_STEP_NAME, description="step name; also the output column name")
    task: str = Field(description="which task this step runs")
    input: str = Field(description="template of the text sent to the model: {column} or {step.field}")
    instructions: str | None = Field(None, description="extra guidance appended to the prompt")
    max_attempts: int = Field(
        3, ge=1, le=20, description="tries per record before it is quarantined"
    )
    max_tokens: int = Field(256, ge=1, le=100_000, description="output token limit per call")
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="sampling temperature")

    _template: Template = PrivateAttr()

    @field_validator("input")
    @classmethod
    def _check_template(cls, v: str) -> str:
        try:
            Template.parse(v)
        except ValueError as e:
            raise ValueError(f"bad template: {e}") from None
        return v

    def model_post_init(self, __context: Any) -> None:
        self._template = Template.parse(self.input)

    # --- the extension point -------------------------------------------------------------

    @abstractmethod
    def output_schema(self) -> dict[str, Any]:
        """JSON schema that every accepted answer satisfies (an object schema)."""

    # --- overridable defaults ------------------------------------------------------------

    def system_prompt(self) -> str:
        """Instructions sent as the system message."""
        return "Answer with a JSON object that matches this schema:\n" + json.dumps(
            self.output_schema()
        )

    def columns(self) -> list[Column]:
        """Columns this step adds to the sink."""
        return [Column(self.name, "any")]

    def value(self, answer: dict[str, Any]) -> Any:
        """What later steps see as ``{name}`` and what :meth:`to_columns` starts from."""
        return answer

    def to_columns(self, value: Any) -> dict[str, Any]:
        """The sink values of this step, keyed like :meth:`columns`."""
        return {self.name: value}

    # --- used by the engine --------------------------------------------------------------

    @property
    def template(self) -> Template:
        return self._template

    @cached_property
    def _validator(self) -> Draft202012Validator:
        return Draft202012Validator(self.output_schema(), format_checker=FormatChecker())

    def render(self, context: dict[str, Any], sample: int = 0) -> Request:
        system = self.system_prompt()
        if self.instructions:
            system = system + "\n\n" + self.instructions.strip()
        return Request(
            messages=(
                Message("system", system),
                Message("user", self._template.render(context)),
            ),
            schema=self.output_schema(),
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            sample=sample,
        )

    def parse(self, completion: Completion) -> dict[str, Any]:
        """Turn a completion into an accepted answer or raise an :class:`OutputError`."""
        if completion.finish_reason == "length":
            raise Truncated(f"truncated: the answer hit the {self.max_tokens}-token output limit")
        if completion.finish_reason in ("refused", "content_filter"):
            raise Refused(f"refused by the model ({completion.finish_reason})")
        try:
            data = json.loads(completion.text, strict=False)
        except (json.JSONDecodeError, ValueError) as e:
            raise InvalidOutput(f"response is not JSON ({e.msg} at char {e.pos})") from None
        if not isinstance(data, dict):
            raise InvalidOutput(f"response is JSON {type(data).__name__}, expected an object")
        errors = sorted(self._validator.iter_errors(data), key=lambda e: list(e.path))
        if errors:
            err = errors[0]
            where = "/".join(str(p) for p in err.path) or "answer"
            raise InvalidOutput(f"response breaks the schema at {where}: {err.message}")
        return data
