"""What the hosted-provider adapters (``openai:``, ``anthropic:``) share: one SDK client per event
loop, rate-limit headers observed from every answer, and the checks every batch's items pass."""

from __future__ import annotations

import asyncio
import os
import time
from abc import abstractmethod
from typing import Any

from corral.errors import PermanentModelError
from corral.models._keys import rate_limit_headers
from corral.models.base import Model, Request


def unreachable(e: BaseException) -> str:
    """Why a connection failed, in words: the deepest OS error under the SDK's (``connection
    refused``, ``name or service not known``), else the innermost exception's text."""
    seen: list[BaseException] = []
    cur: BaseException | None = e
    while cur is not None and cur not in seen:
        seen.append(cur)
        cur = cur.__cause__ or cur.__context__
    for err in reversed(seen):
        if isinstance(err, OSError) and (err.errno or err.strerror):
            # errno's own words ("Connection refused"); DNS errors have negative codes and words
            text = os.strerror(err.errno) if err.errno and err.errno > 0 else str(err.strerror)
            return text[:1].lower() + text[1:]
    inner = seen[-1] if len(seen) > 1 else None
    return f"{type(inner).__name__}: {inner}" if inner is not None else str(e)


class HostedModel(Model):
    """A model behind an HTTP API whose official SDK Corral drives (retries off: the engine's)."""

    def __init__(self) -> None:
        #: the latest rate-limit and ``retry-after`` headers (lower-case name -> value)
        self.rate_limits: dict[str, str] = {}
        #: ``time.time()`` when :attr:`rate_limits` was last updated
        self.rate_limits_at: float | None = None
        self._sdk: Any = None
        self._sdk_loop: asyncio.AbstractEventLoop | None = None

    @abstractmethod
    def _new_sdk(self) -> Any:
        """A new async SDK client (built on the running event loop)."""

    def _client(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._sdk is None or self._sdk_loop is not loop:  # a client belongs to its loop
            self._sdk = self._new_sdk()
            self._sdk_loop = loop
        return self._sdk

    async def aclose(self) -> None:
        sdk, self._sdk = self._sdk, None
        loop, self._sdk_loop = self._sdk_loop, None
        if sdk is not None and loop is asyncio.get_running_loop():
            await sdk.close()

    def _observe(self, headers: Any) -> None:
        found = rate_limit_headers(headers)
        if found:
            self.rate_limits = found
            self.rate_limits_at = time.time()

    def _check_batch(self, items: list[tuple[str, Request]], api: str, most: int) -> None:
        """Refuse a batch the provider would: empty, too many items, or custom ids that are not
        distinct non-empty strings."""
        if not items:
            raise PermanentModelError(f"{self.id}: a batch needs at least one request")
        if len(items) > most:
            raise PermanentModelError(
                f"{self.id}: {len(items)} requests in one batch; the {api} takes at most {most}"
            )
        seen: set[str] = set()
        for custom_id, _ in items:
            if not isinstance(custom_id, str) or not custom_id:
                raise PermanentModelError(f"{self.id}: a batch custom_id must be a non-empty string")
            if custom_id in seen:
                raise PermanentModelError(f"{self.id}: custom_id {custom_id!r} appears twice in one batch")
            seen.add(custom_id)
