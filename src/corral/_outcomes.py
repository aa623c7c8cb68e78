"""What a trace event's ``outcome`` can say: the closed set a model call (or a step that made no
call) ends with. The engine and the step solver write these; the store, ``corral show``,
``corral eval`` and ``corral export`` read them. Any other outcome is a strategy's decision
(``vote``, ``critique``, ``best``, ``escalate``, a plugin's own...) or one of the engine's
decisions below, so a plugin strategy's events render as decisions, never as model calls.

This module imports nothing from Corral, so both sides can import it without a cycle.
"""

from __future__ import annotations

#: how a model call ended, or why a step made none
CALL_OUTCOMES = frozenset({
    "ok",  # an answer that passes the step's checks
    "checks",  # an answer that fails some of the step's checks
    "truncated",  # the answer was cut off at max_tokens
    "refused",  # the model refused to answer
    "invalid",  # the answer does not parse, or does not fit the schema
    "error",  # the call failed (after the request layer's retries)
    "retry",  # a transient failure the request layer retried
    "calibration",  # the content-free input scored once for the run's confidence offsets
    "not run",  # the step's `when:` is false: no call
    "empty",  # the step's input is empty: no call
    "shortcut",  # the step answered without a call (a rule of the task)
})

#: decisions the engine itself writes, whatever the strategy: the answer it accepted, the
#: record budget that stopped a strategy, a row's route at a step with experts or System 1
#: (``data.route``: an expert's name, ``default``, ``system1`` or ``audit``; see corral._router),
#: the injection gate that held a row (see corral._injection), and a person's decision on a row
#: held for review (``reviewed``: see corral._review)
ENGINE_DECISIONS = frozenset({"accepted", "budget", "route", "injection", "reviewed"})


def is_call(outcome: str) -> bool:
    """Whether an event with this outcome is a model call (or a step that made none), rather
    than a strategy's or the engine's decision."""
    return outcome in CALL_OUTCOMES
