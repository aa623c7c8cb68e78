"""A step's reasoning setting through the hosted providers' SDKs, over real HTTP against
ProviderServer: OpenAI's ``reasoning_effort``, Anthropic's extended thinking, and the reasoning
text that comes back (``Completion.reasoning``)."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from corral.errors import PermanentModelError
from corral.models.base import BatchItem, Message, Request
from corral.testing import ProviderServer
from corral.testing._answer import _thought, _tokens

openai = pytest.importorskip("openai")
anthropic = pytest.importorskip("anthropic")

from corral.models.anthropic import THINKING_BUDGETS, AnthropicModel  # noqa: E402
from corral.models.openai import OpenAIModel  # noqa: E402

from .._providers import KEY, SCHEMA, claude, oai  # noqa: E402

TEXT = "My invoice was charged twice, please refund"
CHAT = "POST /v1/chat/completions"
MESSAGES = "POST /v1/messages"


@pytest.fixture(autouse=True)
def _no_ambient_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_BASE_URL",
                "OPENAI_ORG_ID", "OPENAI_PROJECT_ID", "ANTHROPIC_AUTH_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CORRAL_KEYS_FILE", str(tmp_path / "no-keys.json"))


def req(text: str = TEXT, effort: str | None = None, schema: Any = SCHEMA, max_tokens: int = 200,
        temperature: float = 0.0) -> Request:
    return Request(
        messages=(Message("system", "You classify support tickets."), Message("user", text)),
        schema=schema, max_tokens=max_tokens, temperature=temperature, reasoning_effort=effort,
    )


def call(model: Any, *requests: Request) -> Any:
    async def go() -> Any:
        try:
            return [await model.complete(r) for r in requests]
        finally:
            await model.aclose()

    out = asyncio.run(go())
    return out[0] if len(out) == 1 else out


def bodies(srv: ProviderServer, route: str) -> list[dict[str, Any]]:
    return [b for r, b in srv.bodies if r == route]


def valid(value: Any, schema: dict[str, Any] = SCHEMA) -> bool:
    return not list(Draft202012Validator(schema).iter_errors(value))


def run_batch(model: Any, batch: list[tuple[str, Request]]) -> list[BatchItem]:
    async def go() -> list[BatchItem]:
        try:
            bid = await model.submit_batch(batch)
            for _ in range(10):
                if (await model.poll_batch(bid)).state == "ended":
                    break
            return await model.fetch_batch(bid)
        finally:
            await model.aclose()

    return asyncio.run(go())


def post(srv: ProviderServer, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """A raw request to the server, bypassing the adapters."""
    r = urllib.request.Request(
        srv.url + path, data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json", "anthropic-version": "2023-06-01", "x-api-key": KEY},
    )
    try:
        with urllib.request.urlopen(r, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


# --- OpenAI: reasoning_effort -------------------------------------------------------------


@pytest.mark.parametrize("effort", ["low", "medium", "high"])
def test_openai_sends_reasoning_effort_and_keeps_the_reasoning_text(effort):
    with ProviderServer() as srv:
        plain, thought = call(oai(srv), req(), req(effort=effort))
        without, with_ = bodies(srv, CHAT)
        served = srv.served()
    assert with_["reasoning_effort"] == effort
    # nothing else changes on the wire
    assert {k: v for k, v in with_.items() if k != "reasoning_effort"} == without
    # the reasoning is kept apart; the answer is still the JSON answer, the same one
    assert thought.reasoning == _thought(TEXT)
    assert thought.text == plain.text and valid(json.loads(thought.text))
    assert thought.finish_reason == "stop"
    # its tokens are counted, within the output tokens
    assert thought.usage.reasoning_tokens == _tokens(_thought(TEXT)) > 0
    assert thought.usage.output_tokens == plain.usage.output_tokens + thought.usage.reasoning_tokens
    assert served.completion_tokens == plain.usage.output_tokens + thought.usage.output_tokens
    assert thought.usage.cost > plain.usage.cost  # reasoning is paid as output


def test_openai_without_reasoning_effort_sends_and_reads_nothing_new():
    with ProviderServer() as srv:
        comp = call(oai(srv), req())
        body = bodies(srv, CHAT)[-1]
    assert "reasoning_effort" not in body
    assert set(body) == {"model", "response_format", "messages", "max_tokens", "temperature"}
    assert comp.reasoning is None and comp.usage.reasoning_tokens == 0


def test_openai_reasoning_models_keep_their_other_settings():
    with ProviderServer(reasoning_tokens=9) as srv:
        comp = call(OpenAIModel("o4-mini", base_url=srv.openai_url, api_key=KEY,
                                max_tokens_param="max_completion_tokens"), req(effort="low"))
        body = bodies(srv, CHAT)[-1]
    assert body["reasoning_effort"] == "low" and "temperature" not in body
    assert body["max_completion_tokens"] == 200  # the step's max_tokens, as before
    assert comp.usage.reasoning_tokens == 9  # the server's own count when it reports one
    assert comp.reasoning == _thought(TEXT)


def test_openai_reasoning_is_read_from_reasoning_or_reasoning_content():
    import openai.types.chat

    model = OpenAIModel("qwen3", base_url="http://127.0.0.1:9/v1", api_key=KEY)

    def completion(message: dict[str, Any]) -> Any:
        body = {
            "id": "c", "object": "chat.completion", "created": 1, "model": "qwen3",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": '{"a": 1}', **message}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 9, "total_tokens": 14,
                      "completion_tokens_details": {"reasoning_tokens": 4}},
        }
        return model._completion(openai.types.chat.ChatCompletion.model_validate(body), 0.0)

    c = completion({"reasoning_content": "first this"})
    assert (c.reasoning, c.text, c.usage.reasoning_tokens) == ("first this", '{"a": 1}', 4)
    assert completion({"reasoning": "newer vLLM"}).reasoning == "newer vLLM"
    assert completion({"reasoning_content": "", "reasoning": "fallback"}).reasoning == "fallback"
    assert completion({"reasoning": {"effort": "low"}}).reasoning is None  # not text
    assert completion({"reasoning_content": "  "}).reasoning is None
    assert completion({}).reasoning is None


def test_openai_server_rejects_an_unknown_effort():
    with ProviderServer() as srv:
        with pytest.raises(PermanentModelError, match="reasoning_effort|Invalid value"):
            call(oai(srv), req(effort="extreme"))
        assert srv.statuses[(CHAT, 400)] == 1


def test_openai_batch_lines_carry_reasoning_effort_and_come_back_with_reasoning():
    texts = [f"Ticket {i}: my parcel {w} went wrong" for i, w in enumerate(["late", "lost", "broken"])]
    with ProviderServer() as srv:
        model = oai(srv)
        batch = [(f"row-{i}", req(t, effort="medium")) for i, t in enumerate(texts)]
        lines = [json.loads(x) for x in model.batch_input(batch).decode().splitlines()]
        got = {x.custom_id: x for x in run_batch(model, batch)}
        online = call(oai(srv), *(r for _, r in batch))
        online_bodies = bodies(srv, CHAT)
    assert all(x["body"]["reasoning_effort"] == "medium" for x in lines)
    assert sorted(json.dumps(x["body"], sort_keys=True) for x in lines) == sorted(
        json.dumps(b, sort_keys=True) for b in online_bodies)
    for (cid, _), text, o in zip(batch, texts, online):
        c = got[cid].completion
        assert c is not None and c.reasoning == o.reasoning == _thought(text)
        assert c.text == o.text and valid(json.loads(c.text))
        assert c.usage.reasoning_tokens == o.usage.reasoning_tokens > 0


# --- Anthropic: extended thinking ---------------------------------------------------------


@pytest.mark.parametrize("effort,budget", [("low", 1024), ("medium", 4096), ("high", 16384)])
def test_anthropic_thinking_budget_max_tokens_and_no_forced_tool(effort, budget):
    assert THINKING_BUDGETS[effort] == budget
    with ProviderServer() as srv:
        plain, thought = call(claude(srv, send_temperature=True), req(), req(effort=effort))
        without, with_ = bodies(srv, MESSAGES)
    assert with_["thinking"] == {"type": "enabled", "budget_tokens": budget}
    assert with_["max_tokens"] == budget + 200 > budget  # the answer keeps its own 200
    assert "temperature" not in with_  # thinking allows only the default
    assert with_["tool_choice"] == {"type": "auto"}  # a forced tool is refused with thinking
    assert with_["tools"] == without["tools"] and with_["tools"][0]["input_schema"] == SCHEMA
    assert "`answer` tool" in with_["system"] and with_["system"].startswith(without["system"])
    # the answer still comes back through the tool, the same one; the thinking apart
    assert thought.text == plain.text and valid(json.loads(thought.text))
    assert thought.finish_reason == "stop"
    assert thought.reasoning == _thought(TEXT) and plain.reasoning is None
    assert thought.usage.reasoning_tokens == _tokens(_thought(TEXT)) > 0
    assert thought.usage.output_tokens == plain.usage.output_tokens + thought.usage.reasoning_tokens


def test_anthropic_without_reasoning_nothing_changes():
    with ProviderServer() as srv:
        comp = call(claude(srv, send_temperature=True), req())
        body = bodies(srv, MESSAGES)[-1]
    assert "thinking" not in body
    assert body["tool_choice"] == {"type": "tool", "name": "answer"}
    assert body["max_tokens"] == 200 and body["temperature"] == 0.0
    assert body["system"] == "You classify support tickets."
    assert comp.reasoning is None and comp.usage.reasoning_tokens == 0


@pytest.mark.parametrize("structured", ["json_schema", "prompt"])
def test_anthropic_thinking_with_other_structured_modes(structured):
    with ProviderServer() as srv:
        plain, thought = call(claude(srv, structured=structured), req(), req(effort="low"))
        body = bodies(srv, MESSAGES)[-1]
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    assert body["max_tokens"] == 1224 and "tools" not in body and "tool_choice" not in body
    assert "`answer` tool" not in body["system"]
    assert thought.text == plain.text and valid(json.loads(thought.text))
    assert thought.reasoning == _thought(TEXT)


def test_anthropic_thinking_answer_in_text_is_read_as_text():
    with ProviderServer(malformed_rate=1.0) as srv:
        comp = call(claude(srv), req(effort="low"))
    assert comp.text.startswith("Sure! Here is the answer")  # no tool call: the text, as ever
    assert comp.reasoning == _thought(TEXT)


def test_anthropic_several_thinking_blocks_are_joined_and_redacted_ones_skipped():
    from anthropic.types import Message as AnthropicMessage

    model = AnthropicModel("claude-haiku-4-5", base_url="http://127.0.0.1:9", api_key=KEY)
    msg = AnthropicMessage.model_validate({
        "id": "m", "type": "message", "role": "assistant", "model": "claude-haiku-4-5",
        "stop_reason": "tool_use", "stop_sequence": None,
        "usage": {"input_tokens": 3, "output_tokens": 40, "output_tokens_details": {"thinking_tokens": 30}},
        "content": [
            {"type": "thinking", "thinking": "one", "signature": "s1"},
            {"type": "redacted_thinking", "data": "xyz"},
            {"type": "thinking", "thinking": "two", "signature": "s2"},
            {"type": "tool_use", "id": "t", "name": "answer", "input": {"label": "billing"}},
        ],
    })
    c = model._completion(msg, 0.0)
    assert c.reasoning == "one\n\ntwo" and json.loads(c.text) == {"label": "billing"}
    assert c.usage.reasoning_tokens == 30


def test_anthropic_unknown_effort_fails_before_sending():
    with ProviderServer() as srv:
        with pytest.raises(PermanentModelError, match="reasoning must be one of low, medium, high"):
            call(claude(srv), req(effort="extreme"))
        assert sum(srv.requests.values()) == 0


def test_anthropic_server_refuses_what_anthropic_refuses_with_thinking():
    base = {"model": "claude-haiku-4-5", "max_tokens": 2048, "messages": [{"role": "user", "content": TEXT}],
            "thinking": {"type": "enabled", "budget_tokens": 1024}}
    tool = {"name": "answer", "input_schema": SCHEMA}
    with ProviderServer() as srv:
        status, ok = post(srv, "/v1/messages", base)
        assert status == 200 and ok["content"][0]["type"] == "thinking"
        assert ok["content"][0]["thinking"] == _thought(TEXT) and ok["content"][0]["signature"]
        assert ok["usage"]["output_tokens_details"]["thinking_tokens"] > 0
        refused = {
            "forced tool": {**base, "tools": [tool], "tool_choice": {"type": "tool", "name": "answer"}},
            "any tool": {**base, "tools": [tool], "tool_choice": {"type": "any"}},
            "temperature": {**base, "temperature": 0.0},
            "budget >= max_tokens": {**base, "max_tokens": 1024},
            "budget < 1024": {**base, "thinking": {"type": "enabled", "budget_tokens": 512}},
        }
        for why, body in refused.items():
            status, err = post(srv, "/v1/messages", body)
            assert status == 400 and err["error"]["type"] == "invalid_request_error", why
        status, auto = post(srv, "/v1/messages", {**base, "tools": [tool], "tool_choice": {"type": "auto"}})
        assert status == 200 and [b["type"] for b in auto["content"]] == ["thinking", "tool_use"]
        assert auto["stop_reason"] == "tool_use" and valid(auto["content"][1]["input"])
        # without thinking, the same forced tool and temperature are fine, with no thinking block
        plain = {k: v for k, v in base.items() if k != "thinking"}
        status, out = post(srv, "/v1/messages", {**plain, "temperature": 0.0, "tools": [tool],
                                                 "tool_choice": {"type": "tool", "name": "answer"}})
        assert status == 200 and [b["type"] for b in out["content"]] == ["tool_use"]
        assert "output_tokens_details" not in out["usage"]


def test_anthropic_batch_params_carry_thinking_and_come_back_with_reasoning():
    texts = [f"Ticket {i}: my invoice {w} went wrong" for i, w in enumerate(["late", "lost", "doubled"])]
    with ProviderServer() as srv:
        model = claude(srv, send_temperature=True)
        batch = [(f"row-{i}", req(t, effort="high")) for i, t in enumerate(texts)]
        got = {x.custom_id: x for x in run_batch(model, batch)}
        sent = next(b for r, b in srv.bodies if r == "POST /v1/messages/batches")["requests"]
        online = call(claude(srv, send_temperature=True), *(r for _, r in batch))
        online_bodies = bodies(srv, MESSAGES)
    for r in sent:
        p = r["params"]
        assert p["thinking"] == {"type": "enabled", "budget_tokens": 16384}
        assert p["max_tokens"] == 16384 + 200 and "temperature" not in p
        assert p["tool_choice"] == {"type": "auto"}
    assert sorted(json.dumps(r["params"], sort_keys=True) for r in sent) == sorted(
        json.dumps(b, sort_keys=True) for b in online_bodies)
    for (cid, _), text, o in zip(batch, texts, online):
        c = got[cid].completion
        assert c is not None and c.reasoning == o.reasoning == _thought(text)
        assert c.text == o.text and valid(json.loads(c.text))
        assert c.usage.reasoning_tokens == o.usage.reasoning_tokens > 0
