"""Workers asking the same request at once pay it once.

Two workers on one store (two ``corral run`` of a job, or ``corral worker`` processes) may lease
different records whose prompts are the same. Before a paid call, the request layer claims it in
the store (:meth:`corral.store.base.Store.claim_calls`); a worker that finds the call claimed by
another live worker waits for that worker's response to be recorded and replays it. The claims
the run's calls ask for in one turn of the event loop go to the store in one transaction
(:mod:`corral._per_turn`), so a run on one worker pays little for them.

The wait is bounded: a claim lives as long as its worker's leases (renewed with them), a dead
worker's claim is taken over at once on this host and after the lease time elsewhere, and a stop
ends the wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from corral._per_turn import PerTurn
from corral.store.base import Claim, Store
from corral.store.leases import LEASE_TTL_S, owner_dead

#: after this long waiting for another worker's call, the wait is said (once per request)
SAY_AFTER_S = 10.0
#: the longest pause between two looks at a claim another worker holds
MAX_POLL_S = 0.5


class Claimer:
    """One worker's claims, gathered per turn of the event loop into one store transaction."""

    def __init__(self, store: Store, owner: str, stop: asyncio.Event, say: Callable[[str], None]) -> None:
        self.store = store
        self.owner = owner
        self.stop = stop
        self.say = say
        #: a turn of the event loop's claims, in one store transaction
        self.claims: PerTurn[str, Claim] = PerTurn(self._claim_all)

    def _claim_all(self, request_hashes: list[str]) -> dict[str, Claim]:
        claims = self.store.claim_calls(request_hashes, self.owner, LEASE_TTL_S, owner_dead)
        return dict(zip(request_hashes, claims))

    async def claim_or_wait(self, request_hash: str, key: str) -> str | None:
        """The response JSON another worker recorded for ``request_hash`` (a replay), or None:
        the call is this worker's to make now (or the run is stopping, which the caller checks)."""
        delay, started, said = 0.01, time.monotonic(), False
        while True:
            claim = await self.claims.get(request_hash)
            if claim.cached:
                return self.store.cached(request_hash)
            if claim.holder is None or self.stop.is_set():
                return None
            if not said and time.monotonic() - started > SAY_AFTER_S:
                said = True
                self.say(f"record {key}: waiting for worker {claim.holder}, which is asking the "
                         "same request; its answer is replayed here, not paid again")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), delay)
            delay = min(delay * 2, MAX_POLL_S)
