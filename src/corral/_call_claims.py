"""Workers asking the same request at once pay it once.

Two workers on one store (two ``corral run`` of a job, or ``corral worker`` processes) may lease
different records whose prompts are the same. Before a paid call, the request layer claims it in
the store (:meth:`corral.store.base.Store.claim_call`); a worker that finds the call claimed by
another live worker waits for that worker's response to be recorded and replays it. The wait is
bounded: a claim lives as long as its worker's leases (renewed with them), a dead worker's claim
is taken over at once on this host and after the lease time elsewhere, and a stop ends the wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from corral.store.base import Store
from corral.store.leases import LEASE_TTL_S, owner_dead

#: after this long waiting for another worker's call, the wait is said (once per request)
SAY_AFTER_S = 10.0
#: the longest pause between two looks at the claim
MAX_POLL_S = 0.5


async def claim_or_wait(store: Store, request_hash: str, owner: str, stop: asyncio.Event,
                        say: Callable[[str], None], key: str) -> str | None:
    """The response JSON another worker recorded for ``request_hash`` (a replay), or None: the
    call is ``owner``'s to make now (or the run is stopping, which the caller checks)."""
    delay, started, said = 0.01, time.monotonic(), False
    while True:
        claim = store.claim_call(request_hash, owner, LEASE_TTL_S, owner_dead)
        if claim.cached:
            return store.cached(request_hash)
        if claim.holder is None or stop.is_set():
            return None
        if not said and time.monotonic() - started > SAY_AFTER_S:
            said = True
            say(f"record {key}: waiting for worker {claim.holder}, which is asking the same "
                "request; its answer is replayed here, not paid again")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        delay = min(delay * 2, MAX_POLL_S)
