"""The response cache, looked up for many rows in one store query.

Before each call the request layer looks its request up among the recorded responses. Rows
ask in bursts (a chunk leased, a step's answers coming back together), and on a store across a
network (Postgres shared by workers) one query per row makes the round trips, not the calls, the
limit. So the look-ups asked in one turn of the event loop go to the store as one query
(:meth:`corral.store.base.Store.cached_many`), as the group committer does with writes and the
claimer (:mod:`corral._call_claims`) with claims. A lone look-up waits one turn of the loop.
"""

from __future__ import annotations

import asyncio

from corral.store.base import Store


class Lookups:
    """One request layer's cache look-ups, gathered per turn of the event loop."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.pending: dict[str, list[asyncio.Future[str | None]]] = {}

    def get(self, request_hash: str) -> asyncio.Future[str | None]:
        """The recorded response JSON of ``request_hash`` (None when there is none), once the
        turn's look-ups have been made."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[str | None] = loop.create_future()
        if not self.pending:
            loop.call_soon(self._flush)
        self.pending.setdefault(request_hash, []).append(fut)
        return fut

    def _flush(self) -> None:
        pending, self.pending = self.pending, {}
        try:
            found = self.store.cached_many(list(pending))
        except BaseException as e:  # a StoreError reaches every asker
            for futs in pending.values():
                for fut in futs:
                    if not fut.done():
                        fut.set_exception(e)
            return
        for h, futs in pending.items():
            for fut in futs:
                if not fut.done():
                    fut.set_result(found.get(h))
