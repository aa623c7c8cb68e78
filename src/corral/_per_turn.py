"""Store reads gathered per turn of the event loop.

Rows ask the store in bursts (a chunk leased, a step's answers coming back together); on a store
across a network (Postgres shared by workers) one query per row makes the round trips, not the
calls, the limit. A :class:`PerTurn` gathers the keys asked in one turn of the event loop and
reads them in one store call, as the group committer (:mod:`corral._commit`) does with writes:
the response cache (:attr:`corral._client.RequestLayer.lookups`) and the call claims
(:mod:`corral._call_claims`) go through one each. A lone ask waits one turn of the loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class PerTurn(Generic[K, V]):
    """``fetch`` (the distinct keys -> a value for each) called once per turn of the event loop
    for every key asked in it."""

    def __init__(self, fetch: Callable[[list[K]], dict[K, V]]) -> None:
        self.fetch = fetch
        self.pending: dict[K, list[asyncio.Future[V]]] = {}

    def get(self, key: K) -> asyncio.Future[V]:
        """What ``fetch`` finds for ``key``, once the turn's keys have been read."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[V] = loop.create_future()
        if not self.pending:
            loop.call_soon(self._flush)
        self.pending.setdefault(key, []).append(fut)
        return fut

    def _flush(self) -> None:
        pending, self.pending = self.pending, {}
        try:
            found = self.fetch(list(pending))
        except BaseException as e:  # a StoreError reaches every asker of the turn
            for futs in pending.values():
                for fut in futs:
                    if not fut.done():
                        fut.set_exception(e)
            if not isinstance(e, Exception):
                raise  # Ctrl-C and the like end the loop as well
            return
        for key, futs in pending.items():
            for fut in futs:
                if not fut.done():
                    fut.set_result(found[key])
