"""A model's options as a typed, documented pydantic model, validated in one place.

Each built-in model declares ``class Options(ModelOptions)`` with a ``Field(description=...)``
per option; its constructor is ``__init__(self, arg=None, **options)`` and calls
:func:`parse_options`. :func:`options_signature` gives the class the signature those options
make (``inspect.signature(FakeModel)`` lists ``latency``, ``seed``...), so that code reading a
model's keywords (the job loader's "unknown option" check) sees them as before.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from corral._registry import suggest
from corral.errors import ModelConfigError

__all__ = ["ModelOptions", "parse_options", "options_signature"]

OptionsT = TypeVar("OptionsT", bound="ModelOptions")


class ModelOptions(BaseModel):
    """The base of every model's ``Options``: unknown keys are refused, values are checked."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, frozen=True)


def parse_options(schema: type[OptionsT], model: str, given: Mapping[str, Any]) -> OptionsT:
    """``given`` checked against ``schema``; a problem raises :class:`ModelConfigError` naming
    ``model`` (as the job names it: ``fake``, ``openai:gpt-4o-mini``), the option and its fix."""
    fields = sorted(schema.model_fields)
    unknown = [k for k in given if k not in schema.model_fields]
    if unknown:
        key = unknown[0]
        others = ", ".join(f"`{k}`" for k in unknown[1:])
        more = f" (and {len(unknown) - 1} more: {others})" if others else ""
        raise ModelConfigError(
            f"model `{model}`: unknown option `{key}`{suggest(key, fields) or '.'}{more} "
            f"Valid options: {', '.join(fields) or 'none'}."
        )
    try:
        return schema.model_validate(dict(given))
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        if first["type"] == "value_error":  # a validator's own sentence names the option
            said = str(first["ctx"]["error"]) if "ctx" in first else first["msg"]
            raise ModelConfigError(f"model `{model}`: {said}") from None
        raise ModelConfigError(
            f"model `{model}`: option `{where}`: {first['msg']} (got {first.get('input')!r})"
        ) from None


def options_signature(schema: type[ModelOptions]) -> inspect.Signature:
    """The constructor signature ``(arg=None, *, OPTION=DEFAULT, ...)`` of a model class."""
    params = [inspect.Parameter("arg", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None)]
    for name, info in schema.model_fields.items():
        default = info.get_default(call_default_factory=True)
        params.append(
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=info.annotation)
        )
    return inspect.Signature(params)
