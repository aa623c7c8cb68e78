"""Corral's exceptions.

Every exception Corral raises on purpose derives from :class:`CorralError`::

    CorralError
    ├── UserError                 a mistake the user can fix; the CLI prints one line, exit 2
    │   ├── JobSpecError          bad job file: unknown key, wrong type, bad template
    │   ├── SourceError           missing file, missing column, duplicate keys, bad encoding
    │   ├── SinkError             the output cannot be written where the job says
    │   ├── ModelNotFoundError    unknown model name, missing model file or extra
    │   │   └── ModelConfigError  a bad model option, API key or price
    │   ├── RunNotFoundError      `corral status/show` named a run or key that is not stored
    │   └── ReviewError           a review decision cannot be made (`corral review`)
    │       ├── NotHeldError      the key is not a record of the run, or not held for review
    │       └── InvalidEditError  an edited answer breaks the step's schema or checks
    ├── StoreError                the store cannot be opened or is from a newer Corral
    ├── ModelError                a model call failed; translated at the provider boundary
    │   ├── TransientModelError   worth retrying: timeouts, overload, connection errors
    │   │   ├── RateLimited       the provider asked us to slow down (``retry_after`` seconds)
    │   │   └── ProviderUnavailable  unreachable for longer than ``max_outage_s``: the run stops
    │   └── PermanentModelError   retrying will not help: the row is quarantined at once
    │       ├── AuthenticationError  the provider refused the credentials: the run stops
    │       ├── QuotaExceeded     the account is out of credit or quota: the run stops
    │       └── ContextWindowExceeded  the prompt and answer overflowed the context window
    └── OutputError               a response came back but cannot be used as a value
        ├── Truncated             the model stopped at its output limit
        ├── Refused               the model refused or a content filter stopped it
        └── InvalidOutput         not JSON, or JSON that breaks the task's schema

``UserError`` messages are written to be shown as they are: they name the problem and say how to
fix it. ``OutputError`` is never raised to the caller of :func:`corral.run`; the engine catches it,
retries within the record's attempt budget and then quarantines the row with the message as reason.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from corral.models.base import Usage

__all__ = [
    "CorralError",
    "UserError",
    "JobSpecError",
    "SourceError",
    "SinkError",
    "ModelNotFoundError",
    "ModelConfigError",
    "RunNotFoundError",
    "ReviewError",
    "NotHeldError",
    "InvalidEditError",
    "StoreError",
    "ModelError",
    "TransientModelError",
    "RateLimited",
    "ProviderUnavailable",
    "PermanentModelError",
    "AuthenticationError",
    "QuotaExceeded",
    "ContextWindowExceeded",
    "OutputError",
    "Truncated",
    "Refused",
    "InvalidOutput",
]


class CorralError(Exception):
    """Base class of every error Corral raises on purpose."""


class UserError(CorralError):
    """A mistake in the job, its input or the command line; the message says how to fix it."""


class JobSpecError(UserError):
    """The job spec (YAML or Python) is invalid."""


class SourceError(UserError):
    """The source cannot be read as the job describes it."""


class SinkError(UserError):
    """The sink cannot be written."""


class ModelNotFoundError(UserError):
    """The model name does not resolve to an installed model."""


class ModelConfigError(ModelNotFoundError):
    """A model option, API key, keys file or price is invalid or missing; the message names the
    option and its valid values. A :class:`ModelNotFoundError` so that code written before this
    class existed, which caught that, still catches these."""


class RunNotFoundError(UserError):
    """No run (or record) matches what was asked for."""


class ReviewError(UserError):
    """A review decision cannot be made: the run's job cannot be built again, its sinks cannot
    be written, or the command asks for something the queue does not hold."""


class NotHeldError(ReviewError):
    """The key is not a record of the run, or the record is not held for review (any more)."""


class InvalidEditError(ReviewError):
    """An edited answer does not fit the step's output schema, or fails its checks."""


class StoreError(CorralError):
    """The store cannot be opened or migrated."""


class ModelError(CorralError):
    """A model call failed before it produced a usable response."""


class TransientModelError(ModelError):
    """A failure worth retrying after a pause."""


class RateLimited(TransientModelError):
    """The provider rate limited the call."""

    def __init__(self, message: str = "rate limited", retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ProviderUnavailable(TransientModelError):
    """The provider did not answer for longer than the model's ``max_outage_s`` (connection
    refused, DNS failure, 5xx, timeouts): the run stops, keeping every finished row, and resumes
    once the server is up."""


class PermanentModelError(ModelError):
    """A failure that retrying cannot fix (bad request, unknown model on the server...)."""


class AuthenticationError(PermanentModelError):
    """The provider refused the API key (401). Every row would fail, so the run stops."""


class QuotaExceeded(PermanentModelError):
    """The provider says the account is out of credit or quota (OpenAI ``insufficient_quota``,
    Anthropic 402 ``billing_error``): every row would fail, so the run stops."""


class ContextWindowExceeded(PermanentModelError):
    """The model stopped because its context window was full (Anthropic's
    ``model_context_window_exceeded``). The call was made and paid for: :attr:`usage` holds what
    it used, so the engine can charge it."""

    def __init__(self, message: str, usage: Usage | None = None) -> None:
        super().__init__(message)
        self.usage = usage


class OutputError(CorralError):
    """A response arrived but cannot be accepted as a value."""

    kind = "invalid"


class Truncated(OutputError):
    """The model hit its output token limit before finishing."""

    kind = "truncated"


class Refused(OutputError):
    """The model refused, or a content filter stopped the answer."""

    kind = "refused"


class InvalidOutput(OutputError):
    """The response is not JSON or does not satisfy the task's schema."""

    kind = "invalid"
