"""What the workers of one run share through the store: the run-wide budget and the models'
rate limits.

Several processes may work on one run (``corral worker``, or two ``corral run`` of a job). Each
keeps its own counters and limiters; :class:`Peers` looks up in the store, at most every
:data:`REFRESH_S`, how many live workers hold the run's leases and what the run's ledger says
was spent. With others at work, each worker takes its share of what is left: of the budget's
calls, tokens and cost still unspent, 1/k each for k workers (so together they do not pass the
cap, and each stops within about one call of its share), and 1/k of each model's requests and
tokens per minute (the configured limits, and those the provider's headers announce, being the
account's). Alone, a worker counts exactly as before.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from decimal import Decimal

from corral.store.base import Store
from corral.store.leases import other_owners, owner_dead

#: how often a worker looks up its peers and the run's spending while it makes calls
REFRESH_S = 0.25
#: a worker also looks again once it used this fraction (1/N) of what was left at its last look
LOOK_AGAIN = 8


@dataclass(slots=True)
class Share:
    """One worker's view of a run-wide limit: what it used since the last look (``used``), out
    of what it may use (``room``: its share of what was left then), and the run's total as far as
    it knows (for the message)."""

    used: Decimal
    room: Decimal
    total: Decimal


class Peers:
    """A run's other live workers and what they spent, looked up at most every
    :data:`REFRESH_S` (see the module's docstring).

    What the others spent since this worker began is the run's ledger total less what it held
    when this worker began (``base``) and less what this worker committed to it since
    (:meth:`committed`, so that calls this worker counted but has not committed yet are not
    mistaken for nobody's); what their calls in flight reserve is added, as each last recorded
    it in the store (:meth:`corral.store.base.Store.share_budget`)."""

    def __init__(self, store: Store, run_id: str, owner: str, base: tuple[int, int, Decimal | None]) -> None:
        self.store = store
        self.run_id = run_id
        self.owner = owner
        self.workers = 1  # this one and the others holding leases now
        self.at = float("-inf")
        self.base = _vec(*base)
        self.mine_committed = [Decimal(0)] * 3
        self.others: list[Decimal] | None = None  # the others' calls, tokens, cost at the last look
        self.snapshot = [Decimal(0)] * 3  # this worker's own counters at the last look

    def committed(self, tokens: int, cost: Decimal | None) -> None:
        """One paid call of this worker is in the ledger now."""
        m = self.mine_committed
        m[0] += 1
        m[1] += tokens
        m[2] += cost or Decimal(0)

    def refresh(self, made: int, tokens: int, cost: Decimal | None, *,
                held: tuple[int, int, Decimal] | None = None, force: bool = False) -> int:
        """Look the peers up again if the last look is older than :data:`REFRESH_S` (or
        ``force``); with ``held`` (what this worker's calls in flight reserve of a run-wide
        limit), what the others spent and hold too. ``made``, ``tokens``, ``cost``: this worker's
        own counters now. The number of workers."""
        now = time.monotonic()
        if force or now - self.at >= REFRESH_S:
            self.at = now
            self.workers = 1 + len(other_owners(self.store, self.run_id, self.owner))
            if held is not None:
                t, theirs = self.store.share_budget(self.run_id, self.owner, held, owner_dead)
                total = _vec(t.made, t.input_tokens + t.output_tokens, t.cost)
                holds = _vec(*theirs)
                self.others = [total[i] - self.base[i] - self.mine_committed[i] + holds[i] for i in range(3)]
                self.snapshot = _vec(made, tokens, cost)
        return self.workers

    def due(self, which: str, now: Decimal, held: Decimal, limit: Decimal) -> bool:
        """Whether to look again before the next call: this worker used (``now``, with ``held``
        reserved by its calls in flight) an eighth of what was left of limit ``which`` at the last
        look, so what the others did since matters (or it never looked)."""
        if self.others is None:
            return True
        i = _WHICH[which]
        left = limit - self.snapshot[i] - self.others[i]
        return now - self.snapshot[i] + held >= left / LOOK_AGAIN

    def share(self, which: str, now: Decimal, limit: Decimal) -> Share | None:
        """This worker's share of limit ``which`` (``calls``, ``tokens`` or ``cost``) given its own
        counter ``now``: of what was left at the last look, 1/k for k workers; None when it works
        alone (no other worker holds leases and none spent anything), or before the first look."""
        if self.others is None:
            return None
        i = _WHICH[which]
        others = self.others[i]
        if self.workers <= 1 and others <= 0:
            return None  # alone: its own counters are exact
        left = limit - self.snapshot[i] - others
        return Share(now - self.snapshot[i], left / self.workers, now + others)


_WHICH = {"calls": 0, "tokens": 1, "cost": 2}


def _vec(made: int, tokens: int, cost: Decimal | None) -> list[Decimal]:
    return [Decimal(made), Decimal(tokens), cost if cost is not None else Decimal(0)]
