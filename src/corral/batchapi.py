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
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from corral._client import Deferred, RequestLayer, Stop
from corral._commit import dumps
from corral._pack import Row, row_records
from corral._pack_prompt import pack_group, packable, unpack_answers
from corral.errors import TransientModelError, UserError
from corral.models.base import Completion, Request
from corral.store.base import CallRecord, Store

if TYPE_CHECKING:  # pragma: no cover
    from corral.tasks.base import Step

#: a wanted request: (record key, step label, attempt, request)
Wanted = tuple[str, str, int, Request]


class BatchCoordinator:
    """The run's provider batches: what this pass wants, what failed too often, what was paid."""

    def __init__(
        self, store: Store, run_id: str, layer: RequestLayer,
        progress: Callable[[dict[str, Any]], None] | None, snapshot: Callable[[], dict[str, Any]],
        steps: Sequence[Step] = (),
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
        #: the ``pack:`` steps whose wanted rows go N to a batch request, by step label
        self.packs: dict[str, Step] = {s.name: s for s in steps if s.pack > 1}
        #: rows a packed batch answer left without an answer: asked alone from now on
        self.alone: set[str] = set()
        #: a packed request's rows, by its cache key (what its stored body lists as `pack_rows`)
        self.rows: dict[str, list[Row]] = {}

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
        wanted, self.wanted = self._packed(self.wanted), {}
        if wanted and not self.stop.is_set():
            with contextlib.suppress(Stop):
                self.budget.check()
            max_n, max_bytes = self.api.batch_limits
            chunk: list[tuple[str, Wanted, str]] = []
            size = 0
            for h, item in wanted.items():
                body = dumps(self._body(h, item[3]))
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

    def _packed(self, wanted: dict[str, Wanted]) -> dict[str, Wanted]:
        """``wanted`` with the rows of ``pack:`` steps put N to a request (corral._pack): each
        packed request stands in their place, its rows listed in its stored body."""
        out: dict[str, Wanted] = {}
        groups: dict[tuple[Any, ...], list[tuple[str, Wanted]]] = {}
        for h, item in wanted.items():
            step, r = self.packs.get(item[1]), item[3]
            if step is None or step.pack < 2 or h in self.alone or not packable(r):
                out[h] = item
                continue
            key = (item[1], *pack_group(r))
            groups.setdefault(key, []).append((h, item))
        model_id = self.client.model.id
        for (label, *_), rows in groups.items():
            step = self.packs[label]
            for i in range(0, len(rows), step.pack):
                part = rows[i:i + step.pack]
                if len(part) == 1:
                    out[part[0][0]] = part[0][1]
                    continue
                packed = step.pack_request([item[3] for _, item in part])
                hp = packed.cache_key(model_id)
                self.rows[hp] = [((k, lab, a), h, req, self.made_by.get(h, (None, None)))
                                 for h, (k, lab, a, req) in part]
                out[hp] = (*part[0][1][:3], packed)
        return out

    async def _submit(self, chunk: list[tuple[str, Wanted, str]]) -> None:
        if self.stop.is_set():
            return
        batch_id = await self._call(self.api.submit_batch, [(h, item[3]) for h, item, _ in chunk])
        self.store.add_batch(
            self.run_id, batch_id, self.client.model.id,
            [(h, key, label, attempt, body) for h, (key, label, attempt, _), body in chunk],
        )

    def _body(self, h: str, request: Request) -> dict[str, Any]:
        """What the store keeps of a batch request: the request, and a packed one's rows."""
        body = request.to_dict()
        rows = self.rows.get(h)
        if rows is not None:
            body["pack_rows"] = [[*at, rh, req.to_dict(), list(made_by)] for at, rh, req, made_by in rows]
        return body

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
            body = orjson.loads(request_json)
            if "pack_rows" in body:  # one request for several rows: each row's share and answer
                calls.extend(self._unpacked(h, body, comp))
                continue
            strategy, kind = self.made_by.pop(h, (None, None))
            calls.append(CallRecord(
                self.run_id, key, step, attempt, h, model_id, False,
                u.input_tokens, u.output_tokens, u.cached_input_tokens, u.reasoning_tokens,
                u.cost, comp.latency_s, request_json=request_json, response_json=dumps(comp.to_dict()),
                strategy=strategy, kind=kind, cache_write_tokens=u.cache_write_tokens,
            ))
        self.store.finish_batch(batch_id, calls, outcomes, status.detail)

    def _unpacked(self, hp: str, body: dict[str, Any], comp: Completion) -> list[CallRecord]:
        """A packed batch answer's ledger rows and cache entries, row by row (corral._pack)."""
        rows: list[Row] = [((k, label, a), rh, Request.from_dict(req), (mb[0], mb[1]))
                           for k, label, a, rh, req, mb in body.pop("pack_rows")]
        packed = Request.from_dict(body)
        step = self.packs.get(rows[0][0][1])
        answers = (step.unpack(packed, comp, len(rows)) if step is not None
                   else unpack_answers(comp, len(rows)))
        records, _ = row_records(self.run_id, rows, packed, hp, comp, comp.latency_s, answers,
                                 self.client.model.id)
        for (_, rh, _, _), a in zip(rows, answers, strict=True):
            self.made_by.pop(rh, None)
            if a is None:
                self.alone.add(rh)
            else:
                self.paid.add(rh)
        return records

    async def _call(self, fn: Any, *args: Any) -> Any:
        return await self.layer.retried(self.client, fn, *args)
