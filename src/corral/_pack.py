"""The packer: rows of a ``pack: N`` step answered N at a time, each kept as its own.

The records of a run are worked on concurrently; when a packed step's strategy asks for an
answer, :meth:`Packer.ask` does not call the model at once: the row's request joins a group of
requests of the same step (same system prompt, schema, temperature and sample index, same
model). A group is sent when it holds N requests, or :data:`PACK_WAIT_S` after its first one
came (the last rows of a run, a strategy's later samples). The step makes the one request that
answers them (:meth:`~corral.tasks.base.Step.pack_request`) and reads each row's answer back
(:meth:`~corral.tasks.base.Step.unpack`); the call goes through the request layer's budget,
rate limits and retries (:meth:`RequestLayer.spend`) and is then recorded row by row:

* each row answered gets a response-cache entry under its *own* request's hash, as if it had
  been asked alone, so a rerun (with any ``pack:``) replays it, and its trace and worked
  example show the row's own prompt (the packed request and response are kept beside the
  first answered row's, in its entry's ``pack`` field);
* each row gets a ledger row with its share of the call's tokens and cost (split so the shares
  add up exactly), ``calls`` 1 on the first row and 0 on the others: a run's count of calls is
  the provider's;
* a row the answer leaves out or answers twice (or a packed answer that cannot be read at all)
  is asked alone, through the request layer as any single call, never guessed; its share of the
  packed call stays in the ledger under the packed request's hash;
* a packed call the provider refuses (a permanent error: one row too long, an empty text) is
  asked row by row, so that one bad row never fails the others.

A row whose answer is in the cache already, or being asked for another record, is not packed:
it is replayed (or waits) as any request is.
"""

from __future__ import annotations

import asyncio
import weakref
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal
from typing import TYPE_CHECKING, Any

from corral._client import Client, RequestLayer
from corral._commit import GroupCommitter, dumps
from corral._pack_prompt import pack_group, packable
from corral.errors import PermanentModelError
from corral.models.base import Completion, Request, Usage
from corral.store.base import CallRecord

if TYPE_CHECKING:  # pragma: no cover
    from corral.tasks.base import Step

__all__ = ["PACK_WAIT_S", "Packer", "Row", "row_records", "split_usage"]

#: how long a group that is not full waits for more rows after its first came, seconds
PACK_WAIT_S = 0.05
#: why a row is asked alone after its packed call
ALONE = "the packed answer had no answer of its own for this row (its id missing or repeated, or the answer unreadable); asked alone"

_NANO = Decimal("0.000000001")


def split_usage(u: Usage, n: int) -> list[Usage]:
    """``u`` split into ``n`` shares that add up to it exactly (tokens, and the cost to the
    nano-dollar the ledger keeps): the first rows take the remainders."""
    def ints(total: int) -> list[int]:
        q, r = divmod(total, n)
        return [q + (1 if i < r else 0) for i in range(n)]

    tin, tout, cached, reasoning, writes = (ints(x) for x in (
        u.input_tokens, u.output_tokens, u.cached_input_tokens, u.reasoning_tokens, u.cache_write_tokens))
    costs: list[Decimal | None] = [None] * n
    if u.cost is not None:
        nanos = ints(int((u.cost / _NANO).to_integral_value(ROUND_HALF_EVEN)))
        costs = [Decimal(x) * _NANO for x in nanos]
    return [Usage(tin[i], tout[i], cached[i], reasoning[i], costs[i], writes[i]) for i in range(n)]


@dataclass(eq=False)
class _Member:
    """One row's request waiting in a group."""

    committer: GroupCommitter
    at: tuple[str, str, int]  # record key, step label, attempt
    request: Request
    h: str
    made_by: tuple[str | None, str | None]
    done: asyncio.Future[tuple[Completion | None, dict[str, Any]]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())


@dataclass(eq=False)
class _Group:
    step: Step
    client: Client
    members: list[_Member] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None


_PACKERS: weakref.WeakKeyDictionary[RequestLayer, Packer] = weakref.WeakKeyDictionary()


class Packer:
    """The groups of one run's packed steps (see the module's docstring)."""

    def __init__(self, layer: RequestLayer, wait_s: float = PACK_WAIT_S) -> None:
        self.layer = layer
        self.wait_s = wait_s
        self.groups: dict[tuple[Any, ...], _Group] = {}
        self.sending: set[asyncio.Task[None]] = set()

    @classmethod
    def of(cls, layer: RequestLayer) -> Packer:
        """The run's packer (one per request layer)."""
        p = _PACKERS.get(layer)
        if p is None:
            p = _PACKERS[layer] = cls(layer)
        return p

    async def ask(
        self, committer: GroupCommitter, step: Step, at: tuple[str, str, int], request: Request,
        client: Client, made_by: tuple[str | None, str | None],
    ) -> tuple[str, Completion, dict[str, Any] | None]:
        """The answer to one row's ``request`` of ``step`` (and its cache key), asked with other
        rows' in one call where it can be; the third item is what the trace keeps of the
        packing (``None`` for a row not packed: replayed, or asked alone from the start)."""
        layer = self.layer
        h = request.cache_key(client.model.id)
        single = step.pack < 2 or not packable(request)
        if not single and h not in layer.inflight:
            hit = await layer.lookups.get(h)
            if hit is not None:  # answered before: replayed, one look at the store
                return h, layer.replay(committer, at, h, client, hit, made_by, False), None
        if single or h in layer.inflight:  # (in flight: for another record, maybe since the look-up)
            h, asked = await layer.ask(committer, *at, request, False, client, *made_by)
            return h, asked, None
        if layer.stop.is_set():
            raise layer.halt.stopping()
        waiting: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        layer.inflight[h] = waiting  # the same request for another record waits for this one
        claims = layer.claims
        comp: Completion | None = None
        info: dict[str, Any] | None = None
        try:
            # another worker asking the same request now: its answer is replayed, not packed
            if claims is None or await claims.claim_or_wait(h, at[0]) is None:
                member = _Member(committer, at, request, h, made_by)
                self._join(step, client, member)
                try:
                    comp, info = await member.done
                except BaseException:
                    if claims is not None:  # no response recorded: another worker may ask it
                        layer.store.release_call(h, claims.owner)
                    raise
        finally:
            if layer.inflight.get(h) is waiting:
                del layer.inflight[h]
            if not waiting.done():
                waiting.set_result(None)
        if comp is None:  # replayed from another worker, or no answer of its own: asked alone
            h, alone = await layer.ask(committer, *at, request, False, client, *made_by)
            return h, alone, info or None
        return h, comp, info or None

    def _join(self, step: Step, client: Client, member: _Member) -> None:
        r = member.request
        key = (id(step), id(client), *pack_group(r))
        group = self.groups.get(key)
        if group is None:
            group = self.groups[key] = _Group(step, client)
            group.timer = asyncio.get_running_loop().call_later(self.wait_s, self._send, key)
        group.members.append(member)
        if len(group.members) >= step.pack:
            self._send(key)

    def _send(self, key: tuple[Any, ...]) -> None:
        group = self.groups.pop(key, None)
        if group is None:
            return
        if group.timer is not None:
            group.timer.cancel()
        task = asyncio.ensure_future(self._call(group))
        self.sending.add(task)
        task.add_done_callback(self.sending.discard)

    async def _call(self, group: _Group) -> None:
        """Ask one group's packed request; give each member its answer, or the error."""
        members, step, client, layer = group.members, group.step, group.client, self.layer
        hp = ""
        try:
            if len(members) == 1:  # nothing to pack it with: the row is asked as it is
                members[0].done.set_result((None, {}))
                return
            packed = step.pack_request([m.request for m in members])
            hp = packed.cache_key(client.model.id)
            lead = members[0]
            comp, latency = await layer.spend(lead.committer, lead.at, packed, hp, client, lead.made_by)
            answers = step.unpack(packed, comp, len(members))
            infos = await self._record(members, packed, hp, comp, latency, answers, client)
        except asyncio.CancelledError:
            _fail(members, layer.halt.stopping())
            raise
        except PermanentModelError as e:
            # the provider refused the packed call (one row too long for the model, an empty
            # text...): every row is asked alone, so one bad row never fails the others
            why = f"the packed call was refused ({e}); asked alone"
            for i, m in enumerate(members):
                if not m.done.done():
                    m.done.set_result((None, {"pack": {"call": hp, "size": len(members), "id": i + 1, "alone": why}}))
            return
        except Exception as e:
            _fail(members, e)
            return
        for m, a, info in zip(members, answers, infos, strict=True):
            if not m.done.done():
                m.done.set_result((a, info))

    async def _record(
        self, members: list[_Member], packed: Request, hp: str, comp: Completion, latency: float,
        answers: list[Completion | None], client: Client,
    ) -> list[dict[str, Any]]:
        """The members' ledger rows and cache entries, durable before any answer is used."""
        rows = [(m.at, m.h, m.request, m.made_by) for m in members]
        records, infos = row_records(self.layer.run_id, rows, packed, hp, comp, latency, answers, client.model.id)
        committer = members[0].committer
        for r in records[:-1]:
            committer.add(call=r)
        await committer.durable(records[-1])
        self.layer.recorded(comp)
        return infos


#: one row of a packed call: (record key, step label, attempt), its own request's hash and
#: request, and the (strategy, kind) the ledger attributes its share to
Row = tuple[tuple[str, str, int], str, Request, tuple[str | None, str | None]]


def row_records(
    run_id: str, rows: list[Row], packed: Request, hp: str, comp: Completion, latency: float,
    answers: list[Completion | None], model_id: str,
) -> tuple[list[CallRecord], list[dict[str, Any]]]:
    """What a packed call (request ``packed``, hash ``hp``, answer ``comp``) puts in the store:
    one ledger row per row with its share of the usage (``calls`` 1 on the first), a cache entry
    under each answered row's own hash (the packed request and response kept with the first
    answered row's), and what each row's trace keeps of it. ``answers`` come from the step's
    :meth:`~corral.tasks.base.Step.unpack`; their usage is set to the rows' shares here."""
    n = len(rows)
    shares = split_usage(comp.usage, n)
    first = next((i for i, a in enumerate(answers) if a is not None), None)
    records: list[CallRecord] = []
    infos: list[dict[str, Any]] = []
    for i, ((at, h, request, made_by), a, u) in enumerate(zip(rows, answers, shares, strict=True)):
        mark: dict[str, Any] = {"call": hp, "size": n, "id": i + 1}
        info: dict[str, Any] = {"pack": dict(mark)}
        key, label, attempt = at
        request_json = response_json = None
        if a is None:  # no answer of its own: its share stays with the packed call, uncached
            info["pack"]["alone"] = ALONE
            h = hp
        else:
            a.usage = u
            if i == first:  # (an embeddings answer's vectors are in their rows' entries, not twice)
                mark["request"], mark["response"] = packed.to_dict(), comp.to_dict()
                mark["response"].pop("vectors", None)
            request_json, response_json = dumps({**request.to_dict(), "pack": mark}), dumps(a.to_dict())
        records.append(CallRecord(
            run_id, key, label, attempt, h, model_id, False, u.input_tokens, u.output_tokens,
            u.cached_input_tokens, u.reasoning_tokens, u.cost, latency, request_json=request_json,
            response_json=response_json, strategy=made_by[0], kind=made_by[1],
            cache_write_tokens=u.cache_write_tokens, calls=1 if i == 0 else 0))
        infos.append(info)
    return records, infos


def _fail(members: list[_Member], e: BaseException) -> None:
    for m in members:
        if not m.done.done():
            m.done.set_exception(e)
