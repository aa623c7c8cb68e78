"""Provider batches: the answers of ``mode: batch`` steps, bought through a provider's batch API.

A pass over the records asks as usual; a request of a batch step that is not in the cache is
*wanted* (:meth:`BatchCoordinator.want`) and its record waits. After the pass the coordinator
submits what was wanted (split to the provider's limits), records each batch in the store before
polling it, polls every open batch until it ends, and writes its answers to the cache and the
ledger; the next pass then finds them. A killed run polls the batches it left open instead of
submitting them again. A request that failed in more batches than ``batch_resubmits`` allows is
*failed*: asked again, it is a transient model error (the record's step retries or gives up).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from corral._client import Deferred, RequestLayer, Stop
from corral._commit import dumps
from corral.errors import TransientModelError, UserError
from corral.models.base import Request
from corral.store.base import CallRecord, Store

#: a wanted request: (record key, step label, attempt, request)
Wanted = tuple[str, str, int, Request]


class BatchCoordinator:
    """The run's provider batches: what this pass wants, what failed too often, what was paid."""

    def __init__(
        self, store: Store, run_id: str, layer: RequestLayer,
        progress: Callable[[dict[str, Any]], None] | None, snapshot: Callable[[], dict[str, Any]],
    ) -> None:
        self.store = store
        self.run_id = run_id
        self.client = layer.main  # batches go to the job's model
        self.api: Any = layer.main.model  # a model with submit_batch / poll_batch / fetch_batch
        self.layer = layer
        self.budget = layer.budget
        self.counts = layer.counts
        self.stop = layer.stop
        self.progress = progress
        self.snapshot = snapshot
        self.wanted: dict[str, Wanted] = {}
        #: cache keys whose requests failed in too many batches, with why
        self.failed: dict[str, str] = {}
        #: cache keys answered by this run's batches (already in the ledger: not replays)
        self.paid: set[str] = set()
        #: cache key -> the (strategy, kind) that wanted it, for its ledger row (a batch fetched
        #: by a later process has none: its rows' kinds are read back by a best guess)
        self.made_by: dict[str, tuple[str | None, str | None]] = {}

    def check(self) -> None:
        """A job with ``mode: batch`` steps needs a model with a batch API."""
        m = self.client.model
        if not (m.capabilities.supports_batch and hasattr(m, "submit_batch")):
            raise UserError(
                f"a step has `mode: batch` but model `{m.id}` has no batch API; use an openai: "
                "or anthropic: model, or remove `mode: batch`"
            )

    def want(
        self, h: str, rec_key: str, label: str, attempt: int, request: Request,
        strategy: str | None = None, kind: str | None = None,
    ) -> None:
        """Leave a request to the next batch: raises :class:`Deferred` (or, for a request that
        failed too often, :class:`TransientModelError`)."""
        failed = self.failed.get(h)
        if failed is not None:
            raise TransientModelError(failed)
        self.made_by.setdefault(h, (strategy, kind))
        self.wanted.setdefault(h, (rec_key, label, attempt, request))
        raise Deferred()

    def load(self) -> None:
        """What the store says about the run's batches: answered and failed requests."""
        self.paid = self.store.batch_answered(self.run_id)
        limit = self.client.ref.batch_resubmits + 1
        self.failed = {
            h: f"batch request failed {n} times (last: {last})"
            for h, (n, last) in self.store.batch_failures(self.run_id).items()
            if n >= limit
        }

    async def run(self) -> None:
        """Submit what the last pass wanted, then poll every open batch of the run until it
        ends, and record its answers."""
        wanted, self.wanted = self.wanted, {}
        if wanted and not self.stop.is_set():
            with contextlib.suppress(Stop):
                self.budget.check()
            max_n, max_bytes = self.api.batch_limits
            chunk: list[tuple[str, Wanted, str]] = []
            size = 0
            for h, item in wanted.items():
                body = dumps(item[3].to_dict())
                if chunk and (len(chunk) >= max_n or size + len(body) > max_bytes * 0.9):
                    await self._submit(chunk)
                    chunk, size = [], 0
                chunk.append((h, item, body))
                size += len(body)
            if chunk:
                await self._submit(chunk)
        while not self.stop.is_set():
            open_ = self.store.open_batches(self.run_id)
            if not open_:
                break
            for b in open_:
                batch_id = b.id
                status = await self._call(self.api.poll_batch, batch_id)
                if status.state == "ended":
                    await self._fetch(batch_id, status)
                else:
                    self.store.set_batch_state(batch_id, "submitted", status.detail)
            if self.progress:
                self.progress({"phase": "batch", "open": len(self.store.open_batches(self.run_id)),
                               **self.snapshot()})
            if self.store.open_batches(self.run_id):
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), timeout=self.client.ref.batch_poll_s)
        self.load()

    async def _submit(self, chunk: list[tuple[str, Wanted, str]]) -> None:
        if self.stop.is_set():
            return
        batch_id = await self._call(self.api.submit_batch, [(h, item[3]) for h, item, _ in chunk])
        self.store.add_batch(
            self.run_id, batch_id, self.client.model.id,
            [(h, key, label, attempt, body) for h, (key, label, attempt, _), body in chunk],
        )

    async def _fetch(self, batch_id: str, status: Any) -> None:
        results = {item.custom_id: item for item in await self._call(self.api.fetch_batch, batch_id)}
        calls: list[CallRecord] = []
        outcomes: dict[str, str] = {}
        model_id = self.client.model.id
        for it in self.store.batch_items(batch_id):
            h, key, step, attempt, request_json = it.custom_id, it.key, it.step, it.attempt, it.request
            got = results.get(h)
            comp = got.completion if got is not None else None
            if comp is None:
                outcomes[h] = (got.error if got is not None else None) or f"no result ({status.detail or 'ended'})"
                continue
            outcomes[h] = "ok"
            u = comp.usage
            self.counts.paid(u)
            strategy, kind = self.made_by.pop(h, (None, None))
            calls.append(CallRecord(
                self.run_id, key, step, attempt, h, model_id, False,
                u.input_tokens, u.output_tokens, u.cached_input_tokens, u.reasoning_tokens,
                u.cost, comp.latency_s, request_json=request_json, response_json=dumps(comp.to_dict()),
                strategy=strategy, kind=kind, cache_write_tokens=u.cache_write_tokens,
            ))
        self.store.finish_batch(batch_id, calls, outcomes, status.detail)

    async def _call(self, fn: Any, *args: Any) -> Any:
        return await self.layer.retried(self.client, fn, *args)
