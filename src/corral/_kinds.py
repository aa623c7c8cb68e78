"""What kind of call a ledger row is: the first try at a step, or what the extra thinking cost.

The step solver knows why it asks (the strategy's role, the step's own retry after an unusable
answer, a cascade past its first stage, a row System 1 is sure of and audits), so it names each
call's kind when the call is written (the ledger's ``kind`` column). A row written before that
column existed (or a provider batch's answer fetched by a later process) has none;
:func:`derive_kind` works it out from what the ledger and the trace do hold. ``corral cost``
reports a replay (``replayed``) as ``replay`` whatever the call first was.

This module imports nothing from Corral, so the store and the solver can both import it.
"""

from __future__ import annotations

import re

FIRST_TRY = "first try"
RETRY = "retry"
VOTE_SAMPLE = "vote sample"
CRITIQUE = "critique"
JUDGE = "judge"
ESCALATION = "escalation"
SYSTEM1 = "System 1"
CALIBRATION = "calibration"
REPLAY = "replay"

#: every kind, in the order ``corral cost`` lists them (docs/cli.md defines each)
CALL_KINDS: tuple[str, ...] = (
    FIRST_TRY, RETRY, VOTE_SAMPLE, CRITIQUE, JUDGE, ESCALATION, SYSTEM1, CALIBRATION, REPLAY,
)

#: the kinds that are deliberation: more thinking about a row that already had its first try
DELIBERATION: frozenset[str] = frozenset({VOTE_SAMPLE, CRITIQUE, JUDGE, ESCALATION})

#: a trace role (``data.role`` of a call's attempt) -> the kind of the call
_ROLE_KINDS = {"critic": CRITIQUE, "repair": CRITIQUE, "judge": JUDGE, "calibrate": CALIBRATION}

#: strategies whose every sample after the first is a further sample (not a retry)
_SAMPLERS = ("vote", "best_of")

_STAGE = re.compile(r"^stage (\d+) \((\w+)")


def call_kind(
    role: str, *, retry: bool, sample: int, escalated: bool, audited: bool
) -> str:
    """The kind of a call the solver is about to make: ``role`` (sample, repair, critic, judge,
    calibrate), whether it asks again after an unusable answer (``retry``), which of the step's
    samples it belongs to (``sample``, 1 for the first), whether the strategy escalated the row
    past a cascade's first stage, and whether System 1 was sure of the row and audits it.

    The first that applies: calibration, System 1, escalation, critique or judge, retry, vote
    sample; else the first try."""
    kind = _ROLE_KINDS.get(role)
    if kind == CALIBRATION:
        return kind
    if audited:
        return SYSTEM1
    if escalated:
        return ESCALATION
    if kind is not None:
        return kind
    if retry:
        return RETRY
    return VOTE_SAMPLE if sample > 1 else FIRST_TRY


def derive_kind(role: str | None, strategy: str | None, attempt: int, audited: bool) -> str:
    """A best guess at the kind of a ledger row written without one, from its trace role (if its
    attempt was found), strategy path (``cascade/stage 2 (vote)``), sample index ``attempt``
    (0 for the step's first call) and whether its row was a System 1 audit. A step's retry and a
    vote's further sample look alike here: after the first call, a call of ``vote`` or
    ``best_of`` is taken for a sample, any other for a retry."""
    escalated, leaf = False, None
    for part in (strategy or "").split("/"):
        m = _STAGE.match(part)
        if m:
            escalated = escalated or int(m.group(1)) > 1
            leaf = m.group(2)
        elif part:
            leaf = part
    if attempt == 0 or role in _ROLE_KINDS or audited or escalated:
        return call_kind(role or "sample", retry=False, sample=1, escalated=escalated, audited=audited)
    return VOTE_SAMPLE if leaf in _SAMPLERS else RETRY
