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
from corral.models._keys import redact

__all__ = ["ModelOptions", "options_signature", "parse_options", "unknown_options"]

OptionsT = TypeVar("OptionsT", bound="ModelOptions")


class ModelOptions(BaseModel):
    """The base of every model's ``Options``: unknown keys are refused, values are checked."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, frozen=True)


def parse_options(schema: type[OptionsT], model: str, given: Mapping[str, Any]) -> OptionsT:
    """``given`` checked against ``schema``; a problem raises :class:`ModelConfigError` naming
    ``model`` (as the job names it: ``fake``, ``openai:gpt-4o-mini``), the option and its fix."""
    unknown = [k for k in given if k not in schema.model_fields]
    if unknown:
        raise ModelConfigError(unknown_options(model, unknown, list(schema.model_fields)))
    try:
        return schema.model_validate(dict(given))
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        if first["type"] == "value_error":  # a validator's own sentence names the option
            said = str(first["ctx"]["error"]) if "ctx" in first else first["msg"]
            raise ModelConfigError(f"model `{model}`: {said}") from None
        field = schema.model_fields.get(str(first["loc"][0])) if first["loc"] else None
        # a secret option's value (a key, the headers that may carry one) is never echoed
        got = f" (got {first.get('input')!r})" if field is None or field.repr else ""
        raise ModelConfigError(redact(f"model `{model}`: option `{where}`: {first['msg']}{got}", None)) from None


def unknown_options(model: str, unknown: list[str], valid: list[str], shared: list[str] | None = None) -> str:
    """The message for options a model does not take: the first, the nearest valid key, how many
    more, then every valid option (and ``shared``, the keys every ``model:`` mapping takes)."""
    key = unknown[0]
    others = ", ".join(f"`{k}`" for k in unknown[1:])
    more = f" (and {len(unknown) - 1} more: {others})" if others else ""
    also = f"; and for every model: {', '.join(shared)}" if shared else ""
    return (
        f"model `{model}`: unknown option `{key}`{suggest(key, valid + list(shared or ())) or '.'}{more} "
        f"Valid options: {', '.join(sorted(valid)) or 'none'}{also}."
    )


def options_signature(schema: type[ModelOptions]) -> inspect.Signature:
    """The constructor signature ``(arg=None, *, OPTION=DEFAULT, ...)`` of a model class."""
    params = [inspect.Parameter("arg", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None)]
    for name, info in schema.model_fields.items():
        default = info.get_default(call_default_factory=True)
        params.append(
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=info.annotation)
        )
    return inspect.Signature(params)
