"""Provider batch APIs (OpenAI files + batches, Anthropic message batches) through the official
SDKs, over real HTTP against ProviderServer."""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from corral.errors import AuthenticationError, PermanentModelError, TransientModelError
from corral.models.base import BatchAPI, BatchItem, BatchStatus, Message, Request
from corral.testing import ProviderServer

openai = pytest.importorskip("openai")
anthropic = pytest.importorskip("anthropic")

from corral.models.anthropic import decode_custom_id, encode_custom_id  # noqa: E402
from corral.models.openai import OpenAIModel  # noqa: E402

from .._providers import KEY, SCHEMA, claude, oai  # noqa: E402

N = 30
ANTHROPIC_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")
WORDS = ["invoice", "parcel", "refund", "courier", "charge", "address", "receipt", "delay"]


@pytest.fixture(autouse=True)
def _no_ambient_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_BASE_URL",
                "OPENAI_ORG_ID", "OPENAI_PROJECT_ID", "ANTHROPIC_AUTH_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CORRAL_KEYS_FILE", str(tmp_path / "no-keys.json"))


def req(i: int, schema: Any = SCHEMA) -> Request:
    text = f"Ticket {i}: my {WORDS[i % len(WORDS)]} and {WORDS[(i * 3 + 1) % len(WORDS)]} went wrong"
    return Request(
        messages=(Message("system", "You classify support tickets."), Message("user", text)),
        schema=schema, max_tokens=200,
    )


def items(model: Any, n: int = N, schema: Any = SCHEMA) -> list[tuple[str, Request]]:
    """(request hash, request): the ids the engine uses, ``v1:<64 hex>``."""
    out = []
    for i in range(n):
        r = req(i, schema)
        out.append((r.cache_key(model.id), r))
    return out


def same(bodies: Any) -> list[str]:
    """Request bodies as a sorted list, to compare bodies sent concurrently with a batch's."""
    return sorted(json.dumps(b, sort_keys=True) for b in bodies)


def valid(value: Any, schema: dict[str, Any] = SCHEMA) -> bool:
    return not list(Draft202012Validator(schema).iter_errors(value))


async def run_batch(model: Any, batch: list[tuple[str, Request]]) -> tuple[str, list[BatchStatus], list[BatchItem]]:
    """Submit, poll until ended, fetch."""
    bid = await model.submit_batch(batch)
    statuses = []
    for _ in range(20):
        st = await model.poll_batch(bid)
        statuses.append(st)
        if st.state == "ended":
            break
    got = await model.fetch_batch(bid)
    return bid, statuses, got


def batch_then_online(model: Any, batch: list[tuple[str, Request]]) -> tuple[str, list[BatchStatus], list[BatchItem], dict[str, Any]]:
    async def go() -> Any:
        try:
            bid, statuses, got = await run_batch(model, batch)
            answers = await asyncio.gather(*(model.complete(r) for _, r in batch))
            online = {cid: a for (cid, _), a in zip(batch, answers)}
            return bid, statuses, got, online
        finally:
            await model.aclose()

    return asyncio.run(go())


def check_round_trip(batch: list[tuple[str, Request]], got: list[BatchItem], online: dict[str, Any]) -> None:
    ids = [cid for cid, _ in batch]
    assert sorted(x.custom_id for x in got) == sorted(ids)
    assert [x.custom_id for x in got] != ids  # shuffled by the server, matched by custom_id
    for item in got:
        assert item.error is None and item.completion is not None
        c, o = item.completion, online[item.custom_id]
        assert c.finish_reason == "stop" and valid(json.loads(c.text))
        assert c.text == o.text  # the same answer as the same request online
        assert (c.usage.input_tokens, c.usage.output_tokens) == (o.usage.input_tokens, o.usage.output_tokens)
        assert o.usage.cost > 0 and c.usage.cost * 2 == o.usage.cost  # the batch discount
        assert c.model == o.model


# --- round trips ----------------------------------------------------------------------------


def test_both_adapters_implement_the_batch_interface():
    with ProviderServer() as srv:
        o, a = oai(srv), claude(srv)
    assert isinstance(o, BatchAPI) and isinstance(a, BatchAPI)
    assert o.capabilities.supports_batch and a.capabilities.supports_batch
    assert o.batch_limits == (50_000, 200 * 1024 * 1024)
    assert a.batch_limits == (100_000, 256 * 1024 * 1024)
    assert not OpenAIModel("llama", base_url="http://127.0.0.1:9/v1", supports_batch=False).capabilities.supports_batch


def test_openai_batch_round_trip():
    with ProviderServer(batch_polls=3, api_key=KEY) as srv:
        model = oai(srv)
        batch = items(model)
        bid, statuses, got, online = batch_then_online(model, batch)
        assert srv.submissions == {"files": 1, "batches": 1}
        assert srv.served("openai_batch").calls == N
        uploads = [b for r, b in srv.bodies if r == "POST /v1/batches"]
        online_bodies = [b for r, b in srv.bodies if r == "POST /v1/chat/completions"]

        async def input_lines() -> list[dict[str, Any]]:
            c = openai.AsyncOpenAI(base_url=srv.openai_url, api_key=KEY, max_retries=0)
            b = await c.batches.retrieve(bid)
            text = (await c.files.content(b.input_file_id)).text
            await c.close()
            return [json.loads(x) for x in text.splitlines()]

        lines = asyncio.run(input_lines())
    assert [s.state for s in statuses] == ["in_progress", "in_progress", "ended"]
    assert [s.detail for s in statuses] == ["in_progress", "finalizing", "completed"]
    assert statuses[-1].counts == {"total": N, "completed": N, "failed": 0} and statuses[-1].id == bid
    assert len(uploads) == 1 and uploads[0]["endpoint"] == "/v1/chat/completions"
    assert uploads[0]["completion_window"] == "24h"
    # each line's body is exactly what the online call sent
    assert [x["custom_id"] for x in lines] == [cid for cid, _ in batch]
    assert all(x["method"] == "POST" and x["url"] == "/v1/chat/completions" for x in lines)
    assert same(x["body"] for x in lines) == same(online_bodies)
    assert lines[0]["body"]["response_format"]["json_schema"]["strict"] is True
    check_round_trip(batch, got, online)


@pytest.mark.parametrize("structured", ["tool", "json_schema", "prompt"])
def test_anthropic_batch_round_trip(structured):
    with ProviderServer(batch_polls=3) as srv:
        model = claude(srv, structured=structured, send_temperature=True)
        batch = items(model)
        bid, statuses, got, online = batch_then_online(model, batch)
        assert srv.submissions == {"message_batches": 1}
        assert srv.served("anthropic_batch").calls == N
        sent = next(b for r, b in srv.bodies if r == "POST /v1/messages/batches")["requests"]
        online_bodies = [b for r, b in srv.bodies if r == "POST /v1/messages"]
    assert [s.state for s in statuses] == ["in_progress", "in_progress", "ended"]
    assert [s.detail for s in statuses] == ["in_progress", "in_progress", "ended"]
    assert statuses[-1].counts == {"processing": 0, "succeeded": N, "errored": 0, "canceled": 0, "expired": 0}
    # request hashes (v1:<64 hex>, 67 characters) do not fit Anthropic's pattern: encoded
    assert all(ANTHROPIC_ID.fullmatch(r["custom_id"]) for r in sent)
    assert [decode_custom_id(r["custom_id"]) for r in sent] == [cid for cid, _ in batch]
    # params are exactly what the online call sent (temperature included, as a body field)
    assert same(r["params"] for r in sent) == same(online_bodies)
    assert all(p["params"]["temperature"] == 0.0 for p in sent)
    check_round_trip(batch, got, online)


def test_submission_counters_go_up_by_one_per_submit():
    async def go(srv: ProviderServer) -> None:
        o, a = oai(srv), claude(srv)
        try:
            for k in range(3):
                await o.submit_batch(items(o, 5))
                assert srv.submissions == Counter(files=k + 1, batches=k + 1, message_batches=k)
                await a.submit_batch(items(a, 5))
                assert srv.submissions == Counter(files=k + 1, batches=k + 1, message_batches=k + 1)
        finally:
            await o.aclose()
            await a.aclose()

    with ProviderServer() as srv:
        asyncio.run(go(srv))
        assert srv.served("openai_batch").calls == 0  # nothing polled, nothing processed


# --- what goes wrong per item ---------------------------------------------------------------


@pytest.mark.parametrize("make", [oai, claude])
def test_expired_batch_items_are_expired(make):
    with ProviderServer(expire_batches=True) as srv:
        model = make(srv)
        batch = items(model)

        async def go() -> Any:
            try:
                return await run_batch(model, batch)
            finally:
                await model.aclose()

        _, statuses, got = asyncio.run(go())
    assert statuses[-1].state == "ended"
    assert sorted(x.custom_id for x in got) == sorted(cid for cid, _ in batch)
    expired = [x for x in got if x.error == "expired"]
    done = [x for x in got if x.error is None]
    assert len(expired) == N - N // 2 and len(done) == N // 2
    assert all(x.completion is None for x in expired)
    assert all(valid(json.loads(x.completion.text)) for x in done)
    if make is oai:
        assert statuses[-1].detail == "expired" and statuses[-1].counts["failed"] == N - N // 2
    else:
        assert statuses[-1].counts["expired"] == N - N // 2


@pytest.mark.parametrize("make, message", [
    (oai, "errored: 500 server_error: The server had an error while processing your request. Sorry about that!"),
    (claude, "errored: api_error: Internal server error"),
])
def test_failed_items_carry_the_providers_message(make, message):
    with ProviderServer(batch_failure_rate=0.3) as srv:
        model = make(srv)
        batch = items(model)

        async def go() -> Any:
            try:
                return await run_batch(model, batch)
            finally:
                await model.aclose()

        _, statuses, got = asyncio.run(go())
        kind = "openai_batch" if make is oai else "anthropic_batch"
        served_ok, served_500 = srv.served(kind).calls, srv.served(kind, 500).calls
    failed = [x for x in got if x.error is not None]
    assert 0 < len(failed) < N and len(failed) == served_500 and N - len(failed) == served_ok
    assert {x.error for x in failed} == {message} and all(x.completion is None for x in failed)
    assert statuses[-1].counts["failed" if make is oai else "errored"] == len(failed)
    assert sorted(x.custom_id for x in got) == sorted(cid for cid, _ in batch)


def test_openai_cancelled_batch():
    with ProviderServer(batch_polls=5) as srv:
        model = oai(srv)
        batch = items(model, 10)

        async def go() -> Any:
            try:
                bid = await model.submit_batch(batch)
                c = openai.AsyncOpenAI(base_url=srv.openai_url, api_key=KEY, max_retries=0)
                await c.batches.cancel(bid)
                await c.close()
                st = await model.poll_batch(bid)
                return st, await model.fetch_batch(bid)
            finally:
                await model.aclose()

        st, got = asyncio.run(go())
    assert st.state == "ended" and st.detail == "cancelled"
    assert sorted(x.error or "ok" for x in got) == ["cancelled"] * 5 + ["ok"] * 5


# --- custom ids -----------------------------------------------------------------------------

ODD_IDS = [
    "plain-id_1", "v1:" + "ab" * 32, "has space", "__starts-like-an-encoded-id", "a/b:c", "ünïcode",
    "v1:ABCDEF", "x" * 64, "y" * 70, "v1:" + "0" * 64 + "-extra",
]


def test_custom_ids_that_do_not_fit_anthropic_round_trip():
    for cid in ODD_IDS[:-2]:
        sent = encode_custom_id(cid)
        assert sent is not None and ANTHROPIC_ID.fullmatch(sent) and decode_custom_id(sent) == cid
    assert encode_custom_id("plain-id_1") == "plain-id_1"  # ids that fit are sent as they are
    with ProviderServer() as srv:
        model = claude(srv)
        batch = [(cid, req(i)) for i, cid in enumerate(ODD_IDS)]

        async def go() -> Any:
            try:
                bid, _, got = await run_batch(model, batch)
                later = claude(srv)  # another process: the encoded ids still decode
                try:
                    return got, await later.fetch_batch(bid)
                finally:
                    await later.aclose()
            finally:
                await model.aclose()

        got, later = asyncio.run(go())
        sent = next(b for r, b in srv.bodies if r == "POST /v1/messages/batches")["requests"]
    assert all(ANTHROPIC_ID.fullmatch(r["custom_id"]) for r in sent)
    assert len({r["custom_id"] for r in sent}) == len(ODD_IDS)
    by_id = {x.custom_id: x for x in got}
    assert set(by_id) == set(ODD_IDS)
    assert all(by_id[cid].completion is not None and valid(json.loads(by_id[cid].completion.text)) for cid in ODD_IDS)
    # ids too long to encode are remembered by the instance that sent them only
    assert {x.custom_id for x in later} >= set(ODD_IDS[:-2])


def test_openai_custom_ids_are_sent_as_they_are():
    with ProviderServer() as srv:
        model = oai(srv)
        batch = [(cid, req(i)) for i, cid in enumerate(ODD_IDS)]

        async def go() -> Any:
            try:
                bid, _, got = await run_batch(model, batch)
                later = oai(srv)
                try:
                    return got, await later.fetch_batch(bid)
                finally:
                    await later.aclose()
            finally:
                await model.aclose()

        got, later = asyncio.run(go())
    assert {x.custom_id for x in got} == {x.custom_id for x in later} == set(ODD_IDS)


# --- errors at the boundary -----------------------------------------------------------------


@pytest.mark.parametrize("make", [oai, claude])
def test_batch_errors_are_translated(make):
    async def go(model: Any, what: str) -> Any:
        try:
            if what == "submit":
                return await model.submit_batch(items(model, 3))
            if what == "poll":
                return await model.poll_batch("batch_nope")
            bid = await model.submit_batch(items(model, 3))
            return await model.fetch_batch(bid)  # not ended yet
        finally:
            await model.aclose()

    with ProviderServer(api_key="another-key") as srv:
        with pytest.raises(AuthenticationError) as info:
            asyncio.run(go(make(srv), "submit"))
        assert KEY not in str(info.value)
    with ProviderServer(batch_polls=5) as srv:
        with pytest.raises(PermanentModelError, match="404"):
            asyncio.run(go(make(srv), "poll"))
        with pytest.raises(PermanentModelError):
            asyncio.run(go(make(srv), "fetch"))
        srv.configure(down=True)
        with pytest.raises(TransientModelError, match="503"):
            asyncio.run(go(make(srv), "poll"))


@pytest.mark.parametrize("make", [oai, claude])
def test_batches_that_break_the_limits_are_refused_before_sending(make):
    with ProviderServer() as srv:
        model = make(srv)
        batch = items(model, 4)
        with pytest.raises(PermanentModelError, match="twice"):
            asyncio.run(model.submit_batch([batch[0], batch[0]]))
        with pytest.raises(PermanentModelError, match="at least one"):
            asyncio.run(model.submit_batch([]))
        model.batch_limits = (3, 10**9)
        with pytest.raises(PermanentModelError, match="at most 3"):
            asyncio.run(model.submit_batch(batch))
        model.batch_limits = (10, 1000)
        with pytest.raises(PermanentModelError, match="bytes"):
            asyncio.run(model.submit_batch(batch))
        assert sum(srv.requests.values()) == 0


def test_openai_batch_body_follows_the_online_options():
    with ProviderServer() as srv:
        model = oai(srv, supports_schema=False, logprobs=True)
        batch = items(model, 3)
        _, _, got, online = batch_then_online(model, batch)
        online_bodies = [b for r, b in srv.bodies if r == "POST /v1/chat/completions"]
    lines = [json.loads(x) for x in model.batch_input(batch).decode().splitlines()]
    assert same(x["body"] for x in lines) == same(online_bodies)
    assert lines[0]["body"]["response_format"] == {"type": "json_object"} and lines[0]["body"]["logprobs"] is True
    for x in got:
        assert x.completion.logprobs and online[x.custom_id].logprobs
        assert x.completion.text == online[x.custom_id].text and valid(json.loads(x.completion.text))


def test_unknown_price_stays_unknown_in_batch():
    with ProviderServer() as srv:
        model = OpenAIModel("my-local-llama", base_url=srv.openai_url, api_key=KEY)
        _, _, got, _ = batch_then_online(model, items(model, 2))
    assert all(x.completion.usage.cost is None for x in got)
