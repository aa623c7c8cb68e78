"""Group commit: many workers' writes go to the store in one transaction.

Workers add their calls, attempts and final states to the :class:`GroupCommitter`; a loop writes
what has gathered (at once when 512 writes wait, when a paid call's response must be durable, or
every 0.2 s) and renews the worker's leases. A paid call's response is awaited until it is
durable before its answer is used: response recorded, then answer and state committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import orjson

from corral.store.base import AttemptRecord, CallRecord, FinalRecord, Store
from corral.store.leases import LEASE_TTL_S

#: writes that make the loop commit at once, without waiting for its next tick
GROUP_SIZE = 512


def dumps(value: Any) -> str:
    """Compact JSON text as the store keeps it (UTF-8, not ASCII-escaped); anything odd becomes
    its str()."""
    return orjson.dumps(value, default=str).decode()


class GroupCommitter:
    """Gathers one worker's writes and commits them in groups (see the module's docstring)."""

    def __init__(self, store: Store, run_id: str, owner: str) -> None:
        self.store = store
        self.run_id = run_id
        self.owner = owner
        self.calls: list[CallRecord] = []
        self.attempts: list[AttemptRecord] = []
        self.finals: list[FinalRecord] = []
        self.waiters: list[asyncio.Future[None]] = []
        self.wake = asyncio.Event()
        self.closed = False
        self.last_renew = time.monotonic()

    def add(
        self,
        call: CallRecord | None = None,
        attempt: AttemptRecord | None = None,
        final: FinalRecord | None = None,
    ) -> None:
        """Queue writes for the next group (nothing waits for them)."""
        if call is not None:
            self.calls.append(call)
        if attempt is not None:
            self.attempts.append(attempt)
        if final is not None:
            self.finals.append(final)
        if len(self.calls) + len(self.finals) >= GROUP_SIZE:
            self.wake.set()

    async def durable(self, call: CallRecord) -> None:
        """Write a paid call in the next group and return once it is committed."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.calls.append(call)
        self.waiters.append(fut)
        self.wake.set()
        await fut

    def flush(self) -> None:
        """Commit what has gathered, in one transaction; tell the waiters (or raise to them)."""
        if not (self.calls or self.attempts or self.finals):
            return
        calls, attempts, finals, waiters = self.calls, self.attempts, self.finals, self.waiters
        self.calls, self.attempts, self.finals, self.waiters = [], [], [], []
        try:
            self.store.commit(calls, attempts, finals)
        except BaseException as e:
            for w in waiters:
                if not w.done():
                    w.set_exception(e)
            raise
        for w in waiters:
            if not w.done():
                w.set_result(None)

    async def loop(self) -> None:
        """Commit groups until closed, renewing the worker's leases on the way."""
        while not self.closed:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout=0.2)
            self.wake.clear()
            await asyncio.sleep(0)  # let other ready workers add their writes to this group
            self.flush()
            if time.monotonic() - self.last_renew > LEASE_TTL_S / 4:
                self.store.renew(self.run_id, self.owner, LEASE_TTL_S)
                self.last_renew = time.monotonic()

    async def close(self) -> None:
        """Stop the loop and commit what is left."""
        self.closed = True
        self.wake.set()
        self.flush()
