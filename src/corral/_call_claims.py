"""Workers asking the same request at once pay it once.

Two workers on one store (two ``corral run`` of a job, or ``corral worker`` processes) may lease
different records whose prompts are the same. Before a paid call, the request layer claims it in
the store (:meth:`corral.store.base.Store.claim_calls`); a worker that finds the call claimed by
another live worker waits for that worker's response to be recorded and replays it. The claims
the run's calls ask for in one turn of the event loop go to the store in one transaction, as
the group committer does with writes, so a run on one worker pays little for them.

The wait is bounded: a claim lives as long as its worker's leases (renewed with them), a dead
worker's claim is taken over at once on this host and after the lease time elsewhere, and a stop
ends the wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

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
        self.pending: list[tuple[str, asyncio.Future[Claim]]] = []

    def _claim(self, request_hash: str) -> asyncio.Future[Claim]:
        fut: asyncio.Future[Claim] = asyncio.get_running_loop().create_future()
        if not self.pending:
            asyncio.get_running_loop().call_soon(self._flush)
        self.pending.append((request_hash, fut))
        return fut

    def _flush(self) -> None:
        pending, self.pending = self.pending, []
        try:
            claims = self.store.claim_calls([h for h, _ in pending], self.owner, LEASE_TTL_S, owner_dead)
        except BaseException as e:  # a StoreError reaches every asker
            for _, fut in pending:
                if not fut.done():
                    fut.set_exception(e)
            return
        for (_, fut), c in zip(pending, claims):
            if not fut.done():
                fut.set_result(c)

    async def claim_or_wait(self, request_hash: str, key: str) -> str | None:
        """The response JSON another worker recorded for ``request_hash`` (a replay), or None:
        the call is this worker's to make now (or the run is stopping, which the caller checks)."""
        delay, started, said = 0.01, time.monotonic(), False
        while True:
            claim = await self._claim(request_hash)
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
