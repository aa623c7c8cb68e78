"""The hosted providers, through the official SDKs, over real HTTP against ProviderServer."""

from __future__ import annotations

import asyncio
import csv
import json
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

import corral
from corral.errors import (
    AuthenticationError,
    ModelError,
    ModelNotFoundError,
    PermanentModelError,
    RateLimited,
    TransientModelError,
)
from corral.models._hosted import retry_after
from corral.models._keys import Secret, find_key, redact
from corral.models._prices import Price
from corral.models.base import Message, Request
from corral.testing import ProviderServer

from ..conftest import write

openai = pytest.importorskip("openai")
anthropic = pytest.importorskip("anthropic")

from corral.errors import ContextWindowExceeded  # noqa: E402
from corral.models.anthropic import AnthropicModel  # noqa: E402
from corral.models.openai import OpenAIModel  # noqa: E402

from .._providers import KEY, SCHEMA, claude, oai  # noqa: E402


@pytest.fixture(autouse=True)
def _no_ambient_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_BASE_URL",
                "OPENAI_ORG_ID", "OPENAI_PROJECT_ID", "ANTHROPIC_AUTH_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CORRAL_KEYS_FILE", str(tmp_path / "no-keys.json"))


def req(text: str = "My invoice was charged twice, please refund", schema: Any = SCHEMA,
        max_tokens: int = 200, sample: int = 0) -> Request:
    return Request(
        messages=(Message("system", "You classify support tickets."), Message("user", text)),
        schema=schema, max_tokens=max_tokens, sample=sample,
    )


def call(model: Any, request: Request) -> Any:
    async def go() -> Any:
        try:
            return await model.complete(request)
        finally:
            await model.aclose()

    return asyncio.run(go())


def fails(model: Any, request: Request | None = None) -> ModelError:
    with pytest.raises(ModelError) as info:
        call(model, request or req())
    return info.value


def last_body(srv: ProviderServer, route: str) -> dict[str, Any]:
    return next(b for r, b in reversed(srv.bodies) if r == route)


def valid(value: Any, schema: dict[str, Any] = SCHEMA) -> bool:
    return not list(Draft202012Validator(schema).iter_errors(value))


# --- structured output ----------------------------------------------------------------------


def test_openai_structured_output_round_trip():
    with ProviderServer() as srv:
        comp = call(oai(srv), req())
        body = last_body(srv, "POST /v1/chat/completions")
    assert comp.finish_reason == "stop"
    assert valid(json.loads(comp.text))
    rf = body["response_format"]
    assert rf["type"] == "json_schema" and rf["json_schema"]["strict"] is True
    assert rf["json_schema"]["schema"]["properties"]["label"]["type"] == "string"  # typed for strict
    assert body["max_tokens"] == 200 and body["model"] == "gpt-4o-mini"  # not api.openai.com
    assert [m["role"] for m in body["messages"]] == ["system", "user"]


def test_openai_strict_only_for_closed_schemas_and_json_object_fallback():
    multi = {"type": "object", "properties": {"labels": {"type": "array", "items": {"enum": ["a", "b"]},
             "uniqueItems": True}}, "required": ["labels"], "additionalProperties": False}
    open_schema = {"type": "object", "properties": {"x": {"type": "integer"}}}
    with ProviderServer() as srv:
        comp = call(oai(srv), req(schema=multi))
        sent = last_body(srv, "POST /v1/chat/completions")["response_format"]["json_schema"]
        assert sent["strict"] is True and "uniqueItems" not in json.dumps(sent["schema"])
        assert valid(json.loads(comp.text), multi)
        comp = call(oai(srv), req(schema=open_schema))
        sent = last_body(srv, "POST /v1/chat/completions")["response_format"]["json_schema"]
        assert sent["strict"] is False and sent["schema"] == open_schema
        assert valid(json.loads(comp.text), open_schema)
        comp = call(oai(srv, supports_schema=False), req())
        body = last_body(srv, "POST /v1/chat/completions")
    assert body["response_format"] == {"type": "json_object"}
    assert "JSON schema" in body["messages"][0]["content"]
    assert valid(json.loads(comp.text))


def test_openai_falls_back_to_json_object_when_the_server_rejects_json_schema():
    with ProviderServer(supports_json_schema=False) as srv:
        model = oai(srv)
        comp = call(model, req())
        assert valid(json.loads(comp.text))
        assert srv.statuses[("POST /v1/chat/completions", 400)] == 1
        call(model, req("second row"))  # remembered: no second rejection
        assert srv.statuses[("POST /v1/chat/completions", 400)] == 1
        with pytest.raises(PermanentModelError, match="json_schema"):
            call(oai(srv, supports_schema=True), req())


def test_openai_logprobs_and_text_without_schema():
    with ProviderServer() as srv:
        comp = call(oai(srv, logprobs=True), req(schema=None))
        assert last_body(srv, "POST /v1/chat/completions")["logprobs"] is True
    assert comp.logprobs and all(lp <= 0 for lp in comp.logprobs)


def test_openai_reasoning_models_get_no_temperature_and_other_servers_max_tokens():
    with ProviderServer() as srv:
        call(oai(srv, "o4-mini"), req())
        assert "temperature" not in last_body(srv, "POST /v1/chat/completions")
        call(oai(srv, "gpt-4o-mini"), req())
        assert last_body(srv, "POST /v1/chat/completions")["temperature"] == 0.0
        assert oai(srv).max_tokens_param == "max_tokens"  # not api.openai.com
        assert OpenAIModel("gpt-4o-mini", api_key=KEY).max_tokens_param == "max_completion_tokens"


@pytest.mark.parametrize("structured", ["tool", "json_schema", "prompt"])
def test_anthropic_structured_output_round_trip(structured):
    with ProviderServer() as srv:
        comp = call(claude(srv, structured=structured), req())
        body = last_body(srv, "POST /v1/messages")
    assert comp.finish_reason == "stop"
    assert valid(json.loads(comp.text))
    assert body["system"].startswith("You classify support tickets.")
    assert [m["role"] for m in body["messages"]] == ["user"]
    if structured == "tool":
        assert body["tool_choice"] == {"type": "tool", "name": "answer"}
        assert body["tools"][0]["input_schema"] == SCHEMA
    elif structured == "json_schema":
        # structured outputs refuse maxLength: left out on the wire, still checked on the answer
        note = {k: v for k, v in SCHEMA["properties"]["note"].items() if k != "maxLength"}
        assert body["output_config"]["format"]["schema"] == {
            **SCHEMA, "properties": {**SCHEMA["properties"], "note": note}}
    else:
        assert "JSON schema" in body["system"] and "tools" not in body


def test_anthropic_structured_outputs_leave_out_the_bounds_they_refuse_and_answers_are_still_checked(tmp_path):
    """`minimum`/`maximum` on an extract field: sent in a tool's input schema (tools take them),
    left out of `output_config.format` (which answers 400 to them), and checked on the answer."""
    import corral
    from corral import Job

    (tmp_path / "in.csv").write_text("id,text\na,paid 40 dollars\n", encoding="utf-8")
    field = {"type": "number", "minimum": 0, "maximum": 10}
    job = Job.from_dict({"name": "b", "source": "in.csv", "key": "id", "sink": "out.csv", "steps": [
        {"name": "x", "task": "extract", "input": "{text}", "fields": {"amount": field}}]}, base_dir=tmp_path)
    import anthropic

    with ProviderServer() as srv:
        # the server answers a refused keyword as Anthropic does
        bad = dict(SCHEMA, properties={**SCHEMA["properties"], "n": {"type": "number", "minimum": 0}})
        raw = anthropic.Anthropic(api_key=KEY, base_url=srv.url, max_retries=0)
        with pytest.raises(anthropic.BadRequestError, match="For 'string' type, property 'maxLength' is not supported"):
            raw.messages.create(model="claude-haiku-4-5", max_tokens=10, messages=[{"role": "user", "content": "x"}],
                                extra_body={"output_config": {"format": {"type": "json_schema", "schema": bad}}})
        for structured in ("tool", "json_schema"):
            r = corral.run(job, model=claude(srv, structured=structured), store=tmp_path / f"{structured}.db")
            body = last_body(srv, "POST /v1/messages")
            if structured == "tool":
                sent = body["tools"][0]["input_schema"]["properties"]["amount"]
            else:
                sent = body["output_config"]["format"]["schema"]["properties"]["amount"]
            assert ("minimum" in json.dumps(sent)) == (structured == "tool")
            # whatever the server answered, an amount outside 0..10 never reaches the sink
            assert r.written + r.review + r.quarantined == 1
            sink_rows = list(csv.DictReader((tmp_path / "out.csv").open(encoding="utf-8"))) if r.written else []
            assert all(0 <= float(row["amount"]) <= 10 for row in sink_rows if row["amount"])


def test_answers_are_deterministic_per_row():
    with ProviderServer() as srv:
        a = call(oai(srv), req("row one text")).text
        b = call(oai(srv), req("row one text")).text
        c = call(claude(srv), req("row one text")).text
    assert a == b == c


# --- finish reasons -------------------------------------------------------------------------


@pytest.mark.parametrize("fault,finish", [
    ({"truncation_rate": 1.0}, "length"),
    ({"refusal_rate": 1.0}, "refused"),
    ({"content_filter_rate": 1.0}, "content_filter"),
])
def test_openai_finish_reasons(fault, finish):
    with ProviderServer(**fault) as srv:
        comp = call(oai(srv), req())
    assert comp.finish_reason == finish
    if finish == "refused":
        assert "can't help" in comp.text
    if finish == "length":
        with pytest.raises(ValueError):
            json.loads(comp.text)


def test_a_real_output_limit_truncates():
    with ProviderServer() as srv:
        comp = call(oai(srv), req(max_tokens=3))
        assert comp.finish_reason == "length" and comp.usage.output_tokens == 3
        comp = call(claude(srv), req(max_tokens=3))
        assert comp.finish_reason == "length"


@pytest.mark.parametrize("fault,finish", [({"truncation_rate": 1.0}, "length"), ({"refusal_rate": 1.0}, "refused")])
def test_anthropic_finish_reasons(fault, finish):
    with ProviderServer(**fault) as srv:
        comp = call(claude(srv), req())
    assert comp.finish_reason == finish


def test_anthropic_context_window_exceeded_is_permanent_and_keeps_its_usage():
    with ProviderServer(context_exceeded_rate=1.0) as srv:
        err = fails(claude(srv))
    assert isinstance(err, ContextWindowExceeded) and isinstance(err, PermanentModelError)
    assert "too long" in str(err)
    assert err.usage is not None and err.usage.output_tokens > 0
    with ProviderServer(context_window=20) as srv:  # the prompt alone does not fit: a 400
        err = fails(claude(srv))
    assert type(err) is PermanentModelError and "too long" in str(err)


def test_malformed_answers_come_back_as_text():
    with ProviderServer(malformed_rate=1.0) as srv:
        for model in (oai(srv), claude(srv)):
            comp = call(model, req())
            assert comp.finish_reason == "stop" and comp.text.startswith("Sure!")


# --- errors ---------------------------------------------------------------------------------

PROVIDERS = [pytest.param(oai, id="openai"), pytest.param(claude, id="anthropic")]


@pytest.mark.parametrize("make", PROVIDERS)
def test_429_carries_retry_after(make):
    with ProviderServer(ratelimit_rate=1.0, retry_after_s=2.5) as srv:
        err = fails(make(srv))
    assert isinstance(err, RateLimited)
    assert err.retry_after == 2.5  # from retry-after-ms (retry-after says 3)


@pytest.mark.parametrize("make", PROVIDERS)
def test_sliding_window_rate_limit_and_headers(make):
    with ProviderServer(rpm=24, rate_window_s=5) as srv:  # 2 per 5 seconds
        model = make(srv)

        async def go() -> list[Any]:
            out = []
            for _ in range(3):
                try:
                    out.append(await model.complete(req()))
                except RateLimited as e:
                    out.append(e)
            await model.aclose()
            return out

        results = asyncio.run(go())
    assert [type(r).__name__ for r in results] == ["Completion", "Completion", "RateLimited"]
    assert 0 < results[2].retry_after <= 5.0
    h = model.rate_limits
    if make is oai:
        assert h["x-ratelimit-limit-requests"] == "24"
        assert h["x-ratelimit-remaining-requests"] == "0"
        assert "x-ratelimit-reset-requests" in h and "retry-after-ms" in h
    else:
        assert h["anthropic-ratelimit-requests-limit"] == "24"
        assert h["anthropic-ratelimit-requests-reset"].endswith("Z")


def test_rate_limit_headers_are_kept_after_a_success():
    with ProviderServer(rpm=6000, tpm=1_000_000) as srv:
        model = oai(srv)
        call(model, req())
    assert model.rate_limits["x-ratelimit-limit-tokens"] == "1000000"
    assert int(model.rate_limits["x-ratelimit-remaining-requests"]) == 5999
    assert model.rate_limits_at is not None


@pytest.mark.parametrize("make", PROVIDERS)
@pytest.mark.parametrize("fault", [
    {"error_rate": 1.0, "error_codes": (500,)},
    {"error_rate": 1.0, "error_codes": (503,)},
    {"error_rate": 1.0, "error_codes": (529,)},
    {"fail_status": 408},
    {"fail_status": 409},
    {"down": True},
    {"down": True, "down_mode": "reset"},
], ids=["500", "503", "529", "408", "409", "down", "reset"])
def test_transient_errors(make, fault):
    with ProviderServer(**fault) as srv:
        err = fails(make(srv))
    assert type(err) is TransientModelError, err


@pytest.mark.parametrize("make", PROVIDERS)
def test_timeout_is_transient(make):
    with ProviderServer(timeout_rate=1.0, hang_s=3) as srv:
        t0 = time.perf_counter()
        err = fails(make(srv, timeout=0.3))
        assert time.perf_counter() - t0 < 2
        assert srv.statuses[next(iter(srv.requests)), 0] == 1
    assert type(err) is TransientModelError and "timeout" in str(err)


@pytest.mark.parametrize("make", PROVIDERS)
@pytest.mark.parametrize("status", [400, 403, 404, 422])
def test_permanent_errors_carry_the_providers_message(make, status):
    with ProviderServer(fail_status=status, fail_message="the moon is in the wrong phase") as srv:
        err = fails(make(srv))
    assert type(err) is PermanentModelError
    assert "the moon is in the wrong phase" in str(err) and str(status) in str(err)


@pytest.mark.parametrize("make", PROVIDERS)
def test_unknown_model_is_404_permanent(make):
    with ProviderServer(models={"some-other-model"}) as srv:
        err = fails(make(srv))
    assert type(err) is PermanentModelError and "404" in str(err) and "model" in str(err)


def test_openai_context_length_is_permanent_with_the_message():
    with ProviderServer(context_window=50) as srv:
        err = fails(oai(srv))
    assert type(err) is PermanentModelError
    assert "maximum context length is 50 tokens" in str(err) and "too long" in str(err)


@pytest.mark.parametrize("make,var", [(oai, "OPENAI_API_KEY"), (claude, "ANTHROPIC_API_KEY")])
def test_401_is_an_authentication_error_naming_the_env_var(make, var):
    with ProviderServer(api_key="the-right-key", echo_key=True) as srv:
        err = fails(make(srv))
    assert isinstance(err, AuthenticationError) and isinstance(err, PermanentModelError)
    assert var in str(err) and "keys.json" in str(err)
    assert KEY not in str(err) and KEY not in repr(err)


def test_the_key_never_appears_anywhere():
    seen: list[str] = []
    with ProviderServer(api_key="the-right-key", echo_key=True) as srv:
        for make in (oai, claude):
            model = make(srv)
            seen += [model.id, repr(model), str(vars(model))]
            err = fails(model)
            chain: BaseException | None = err
            while chain is not None:
                seen += [str(chain), repr(chain), str(getattr(chain, "args", ""))]
                chain = chain.__cause__ or chain.__context__
        for fault in ({"api_key": None, "error_rate": 1.0}, {"fail_status": 400}, {"ratelimit_rate": 1.0}):
            srv.configure(**fault)
            for make in (oai, claude):
                err = fails(make(srv))
                seen += [str(err), repr(err)]
    assert seen and not [s for s in seen if KEY in s]
    assert "<redacted>" in " ".join(seen)  # the server echoed it; the boundary scrubbed it


def test_redact_scrubs_key_shaped_text():
    assert redact("bad key sk-proj-abcdef1234567890 given", None) == "bad key <redacted> given"
    assert redact("provided: sk-pr************7890. You", None) == "provided: <redacted>. You"
    assert redact("my-secret-value here", Secret("my-secret-value")) == "<redacted> here"
    assert "Bearer" not in redact("header Authorization: Bearer abcdefghijklmnop", None)


def test_retry_after_parsing():
    assert retry_after({"retry-after-ms": "1500", "retry-after": "2"}) == 1.5
    assert retry_after({"retry-after": "7"}) == 7.0
    assert retry_after({}) is None
    assert 0 <= retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0


# --- usage and cost -------------------------------------------------------------------------


def test_openai_usage_and_known_cost():
    with ProviderServer(cache_ratio=0.5, reasoning_tokens=7) as srv:
        comp = call(oai(srv), req())
        served = srv.served()
    u = comp.usage
    assert (u.input_tokens, u.output_tokens) == (served.prompt_tokens, served.completion_tokens)
    assert u.cached_input_tokens == served.cached_tokens == u.input_tokens // 2
    assert u.reasoning_tokens == 7
    price = Price(Decimal("0.15"), Decimal("0.60"), Decimal("0.075"))
    expected = ((u.input_tokens - u.cached_input_tokens) * price.input
                + u.cached_input_tokens * price.cached_input + u.output_tokens * price.output) / 1_000_000
    assert u.cost == expected and u.cost > 0


def test_anthropic_usage_counts_cache_reads_and_prices_them():
    with ProviderServer(cache_ratio=0.5) as srv:
        comp = call(claude(srv, "claude-haiku-4-5-20251001"), req())
        served = srv.served()
    u = comp.usage
    assert u.input_tokens == served.prompt_tokens and u.cached_input_tokens == served.cached_tokens > 0
    fresh = u.input_tokens - u.cached_input_tokens
    assert u.cost == (fresh * Decimal(1) + u.cached_input_tokens * Decimal("0.10") + u.output_tokens * 5) / 1_000_000


def test_unknown_price_is_none_and_prices_option_overrides():
    with ProviderServer() as srv:
        assert call(oai(srv, "my-local-llama"), req()).usage.cost is None
        assert call(claude(srv, "claude-unreleased-9"), req()).usage.cost is None
        free = call(oai(srv, "my-local-llama", prices={"input": 0, "output": 0}), req())
        assert free.usage.cost == Decimal(0)
        priced = call(oai(srv, "x", prices={"input": "1", "output": "2"}), req())
        u = priced.usage
        assert u.cost == (u.input_tokens * 1 + u.output_tokens * 2) / Decimal(1_000_000)
    with pytest.raises(ModelNotFoundError, match="output"):
        OpenAIModel("x", api_key=KEY, prices={"input": 1})


def test_batch_discount_is_data():
    price = Price.parse({"input": "2", "output": "8"}, batch_discount="0.5")
    assert price.cost(1_000_000, 1_000_000, batch=True) == Decimal(5)


# --- keys and ids ---------------------------------------------------------------------------


def test_key_precedence(tmp_path, monkeypatch):
    keys = write(tmp_path / "keys.json", json.dumps({"openai": "from-file", "anthropic": "file-a"}))
    monkeypatch.setenv("CORRAL_KEYS_FILE", str(keys))
    assert find_key("openai", None, "OPENAI_API_KEY").get() == "from-file"
    monkeypatch.setenv("OPENAI_API_KEY", "from-env")
    assert find_key("openai", None, "OPENAI_API_KEY").get() == "from-env"
    assert find_key("openai", "explicit", "OPENAI_API_KEY").get() == "explicit"
    assert find_key("anthropic", None, "ANTHROPIC_API_KEY").get() == "file-a"
    assert repr(find_key("openai", None, "OPENAI_API_KEY")) == "Secret('<redacted>')"


def test_the_key_in_use_is_the_one_sent(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "env-key")
    with ProviderServer(api_key="env-key") as srv:
        call(OpenAIModel("gpt-4o-mini", base_url=srv.url), req())
        with pytest.raises(AuthenticationError):
            call(OpenAIModel("gpt-4o-mini", base_url=srv.url, api_key="explicit"), req())
        monkeypatch.setenv("ANTHROPIC_API_KEY", "env-key")
        call(AnthropicModel("claude-haiku-4-5", base_url=srv.url), req())


def test_missing_key_is_one_line_with_the_fix():
    with pytest.raises(ModelNotFoundError) as info:
        OpenAIModel("gpt-4o-mini")
    msg = str(info.value)
    assert msg.startswith("no API key for openai: set OPENAI_API_KEY, or add it to ")
    assert "\n" not in msg
    with pytest.raises(ModelNotFoundError, match="ANTHROPIC_API_KEY"):
        AnthropicModel("claude-haiku-4-5")
    # another server than OpenAI's may need no key at all
    assert OpenAIModel("llama", base_url="http://127.0.0.1:1/v1").id.startswith("openai:llama@")


def test_bad_keys_file_never_echoes_its_content(tmp_path, monkeypatch):
    keys = write(tmp_path / "keys.json", '{"openai": "sk-secret-in-broken-file-1234",')
    monkeypatch.setenv("CORRAL_KEYS_FILE", str(keys))
    with pytest.raises(ModelNotFoundError) as info:
        OpenAIModel("gpt-4o-mini")
    assert "not valid JSON" in str(info.value) and "sk-secret" not in str(info.value)


def test_ids_name_the_server_by_hash(monkeypatch):
    a = OpenAIModel("m", base_url="http://a:1/v1")
    b = OpenAIModel("m", base_url="http://b:1/v1")
    assert a.id != b.id and a.id.startswith("openai:m@") and "http" not in a.id
    assert OpenAIModel("gpt-4o-mini", api_key=KEY).id == "openai:gpt-4o-mini"
    assert AnthropicModel("claude-haiku-4-5", api_key=KEY).id == "anthropic:claude-haiku-4-5"
    monkeypatch.setenv("OPENAI_BASE_URL", "http://b:1/v1")
    assert OpenAIModel("m").id == b.id  # the SDK's environment variable is honoured


def test_missing_model_name():
    with pytest.raises(ModelNotFoundError, match="openai:gpt-4o-mini"):
        OpenAIModel(None, api_key=KEY)


def test_a_model_survives_several_event_loops():
    with ProviderServer() as srv:
        model = oai(srv)
        for text in ("one", "two"):
            assert asyncio.run(model.complete(req(text))).finish_reason == "stop"
        call(model, req("three"))


# --- the server itself ----------------------------------------------------------------------


def test_server_serves_20_slow_requests_at_once():
    with ProviderServer(latency_s=0.5) as srv:
        model = oai(srv)

        async def go() -> list[Any]:
            try:
                return await asyncio.gather(*(model.complete(req(f"row {i}")) for i in range(20)))
            finally:
                await model.aclose()

        t0 = time.perf_counter()
        out = asyncio.run(go())
        elapsed = time.perf_counter() - t0
    assert len(out) == 20 and elapsed < 2.5, elapsed


def test_openai_batch_files_round_trip_shuffled():
    n = 20
    lines = "".join(
        json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                    "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"row {i}"}]}}) + "\n"
        for i in range(n)
    )

    async def go(srv: ProviderServer) -> tuple[Any, list[dict], list[dict], list[str]]:
        c = openai.AsyncOpenAI(base_url=srv.openai_url, api_key=KEY, max_retries=0)
        f = await c.files.create(file=("in.jsonl", lines.encode()), purpose="batch")
        b = await c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
        statuses = [b.status]
        while b.status not in ("completed", "expired", "failed", "cancelled"):
            b = await c.batches.retrieve(b.id)
            statuses.append(b.status)
        out = [json.loads(x) for x in (await c.files.content(b.output_file_id)).text.splitlines()]
        err = [json.loads(x) for x in (await c.files.content(b.error_file_id)).text.splitlines()] if b.error_file_id else []
        await c.close()
        return b, out, err, statuses

    with ProviderServer(batch_polls=3, batch_failure_rate=0.2, api_key=KEY) as srv:
        b, out, err, statuses = asyncio.run(go(srv))
        assert srv.submissions == {"files": 1, "batches": 1}
        assert srv.served("openai_batch").calls == len(out)
    assert statuses == ["validating", "in_progress", "finalizing", "completed"]
    assert b.request_counts.total == n and b.request_counts.completed == len(out) and len(out) + len(err) == n
    assert err and all(e["response"]["status_code"] == 500 for e in err)
    ids = [x["custom_id"] for x in out + err]
    assert sorted(ids, key=lambda s: int(s[1:])) == [f"r{i}" for i in range(n)] and ids != sorted(ids, key=lambda s: int(s[1:]))
    assert all(x["response"]["status_code"] == 200 and x["response"]["body"]["object"] == "chat.completion" for x in out)

    with ProviderServer(expire_batches=True) as srv:
        b, out, err, _ = asyncio.run(go(srv))
    assert b.status == "expired" and len(out) == n // 2
    assert {e["error"]["code"] for e in err} == {"batch_expired"}


def test_anthropic_message_batch_round_trip_shuffled():
    n = 12

    async def go(srv: ProviderServer) -> tuple[Any, list[Any]]:
        c = anthropic.AsyncAnthropic(base_url=srv.url, api_key=KEY, max_retries=0)
        b = await c.messages.batches.create(requests=[
            {"custom_id": f"r{i}", "params": {"model": "claude-haiku-4-5", "max_tokens": 64,
                                              "messages": [{"role": "user", "content": f"row {i}"}]}}
            for i in range(n)
        ])
        while b.processing_status != "ended":
            b = await c.messages.batches.retrieve(b.id)
        results = [r async for r in await c.messages.batches.results(b.id)]
        await c.close()
        return b, results

    with ProviderServer(batch_polls=2, batch_failure_rate=0.25) as srv:
        b, results = asyncio.run(go(srv))
        assert srv.submissions["message_batches"] == 1
    kinds = {r.result.type for r in results}
    assert kinds == {"succeeded", "errored"}
    assert b.request_counts.succeeded + b.request_counts.errored == n
    ids = [r.custom_id for r in results]
    assert sorted(ids) == sorted(f"r{i}" for i in range(n)) and ids != [f"r{i}" for i in range(n)]
    with ProviderServer(expire_batches=True) as srv:
        b, results = asyncio.run(go(srv))
    assert b.request_counts.expired == n - n // 2


def test_server_options_are_checked():
    with pytest.raises(TypeError, match="nope"):
        ProviderServer(error_rate=0.1).configure(nope=1)
    with pytest.raises(ValueError, match="error_rate"):
        ProviderServer(error_rate=2)


# --- a whole run ----------------------------------------------------------------------------


def test_a_run_against_the_server_matches_its_ledger(tmp_path):
    rows = "id,text\n" + "".join(
        f"T{i},Ticket {i}: order {1000 + i} {'was charged twice' if i % 3 else 'never arrived'}\n"
        for i in range(50)
    )
    write(tmp_path / "tickets.csv", rows)
    job = corral.Job.from_dict({
        "name": "providers",
        "source": "tickets.csv",
        "key": "id",
        "steps": [{"name": "category", "task": "classify", "input": "{text}", "max_attempts": 5,
                   "labels": {"billing": "money", "shipping": "delivery", "other": "anything else"}}],
        "sink": "out/categories.csv",
    }, base_dir=tmp_path)
    faults = dict(error_rate=0.1, truncation_rate=0.05, malformed_rate=0.05, refusal_rate=0.02,
                  timeout_rate=0.02, hang_s=2, latency_s=(0.0, 0.02), rpm=3000, rate_window_s=1)
    with ProviderServer(api_key=KEY, seed=3, **faults) as srv:
        url = srv.url  # without /v1: the server answers both forms
        model = OpenAIModel("gpt-4o-mini", base_url=url, api_key=KEY, timeout=0.5)
        result = corral.run(job, model=model)
        served = srv.served()
        by_status = srv.served_by_status()
    assert result.status == "finished" and result.accounted and result.rows_in == 50
    assert result.written + result.quarantined == 50 and result.written >= 45
    assert result.calls_made == served.calls == by_status[200].calls
    assert (result.input_tokens, result.output_tokens) == (served.prompt_tokens, served.completion_tokens)
    assert set(by_status) - {200} and all(by_status[s].prompt_tokens == 0 for s in by_status if s != 200)
    price = Price(Decimal("0.15"), Decimal("0.60"), Decimal("0.075"))
    assert result.cost_usd == price.cost(served.prompt_tokens, served.completion_tokens)
    rerun = corral.run(job, model=OpenAIModel("gpt-4o-mini", base_url=url, api_key=KEY))
    assert rerun.calls_made == result.calls_made  # nothing paid twice (the server is gone)


def test_a_rejected_key_stops_the_run_with_the_fix(tmp_path):
    write(tmp_path / "t.csv", "id,text\n" + "".join(f"T{i},ticket {i}\n" for i in range(10)))
    job = corral.Job.from_dict({
        "name": "badkey", "source": "t.csv", "key": "id", "sink": "out.csv",
        "steps": [{"name": "c", "task": "classify", "input": "{text}", "labels": ["a", "b"]}],
    }, base_dir=tmp_path)
    with ProviderServer(api_key="the-right-key", echo_key=True) as srv:
        result = corral.run(job, model=oai(srv))
    assert (result.written, result.quarantined, result.pending, result.calls_made) == (0, 0, 10, 0)
    assert "OPENAI_API_KEY" in (result.stop_reason or "") and KEY not in (result.stop_reason or "")


def test_openai_flex_is_sent_priced_at_batch_rates_and_falls_back_when_asked():
    from corral.errors import RateLimited

    with ProviderServer() as srv:
        std = call(oai(srv), req())
        flex = call(oai(srv, service_tier="flex"), req())
        body = last_body(srv, "POST /v1/chat/completions")
        assert body["service_tier"] == "flex"
        # the same tokens, at the price table's batch discount (half, for gpt-4o-mini)
        assert (flex.usage.input_tokens, flex.usage.output_tokens) == (std.usage.input_tokens, std.usage.output_tokens)
        assert flex.usage.cost == std.usage.cost * (1 - oai(srv).price.batch_discount) and flex.usage.cost < std.usage.cost
        srv.flex_unavailable = True
        # out of flex capacity: a 429 the engine backs off from ...
        with pytest.raises(RateLimited, match="resource_unavailable|Resource unavailable"):
            call(oai(srv, service_tier="flex"), req())
        # ... or, with flex_fallback, the standard tier at the standard price
        back = call(oai(srv, service_tier="flex", flex_fallback=True), req())
        assert last_body(srv, "POST /v1/chat/completions")["service_tier"] == "default"
        assert back.usage.cost == std.usage.cost
        # an ordinary rate limit is no reason to pay the standard price: it is backed off from
        srv.flex_unavailable = False
        srv.configure(ratelimit_rate=1.0)
        with pytest.raises(RateLimited):
            call(oai(srv, service_tier="flex", flex_fallback=True), req())
        assert last_body(srv, "POST /v1/chat/completions")["service_tier"] == "flex"
        srv.configure(ratelimit_rate=0.0)
        with pytest.raises(ModelNotFoundError, match="service_tier must be one of"):
            oai(srv, service_tier="slow")
        with pytest.raises(ModelNotFoundError, match="flex_fallback needs"):
            oai(srv, flex_fallback=True)


# --- typed options and the shared error ladder ---------------------------------------------------


def test_every_model_takes_its_typed_options_and_refuses_others():
    import importlib.util
    import inspect

    from corral.engine import make_model
    from corral.errors import ModelConfigError
    from corral.models.fake import FakeModel

    classes: list[type] = [FakeModel, OpenAIModel, AnthropicModel]
    if importlib.util.find_spec("llama_cpp") is not None:
        from corral.models.local import LocalModel

        classes.append(LocalModel)
    for cls in classes:  # the signature make_model reads is the options' fields
        assert set(inspect.signature(cls).parameters) - {"arg"} == set(cls.Options.model_fields)
    with pytest.raises(ModelConfigError) as info:
        OpenAIModel("gpt-4o-mini", api_key=KEY, timout=5)
    msg = str(info.value)
    assert msg.startswith("model `openai:gpt-4o-mini`: unknown option `timout`; did you mean `timeout`?")
    assert "Valid options: " in msg and "service_tier" in msg
    with pytest.raises(ModelConfigError, match=r"model `anthropic:claude-haiku-4-5`: structured must be"):
        AnthropicModel("claude-haiku-4-5", api_key=KEY, structured="tools")
    with pytest.raises(ModelConfigError, match=r"option `max_concurrency`: .*'many'"):
        OpenAIModel("m", base_url="http://127.0.0.1:1/v1", max_concurrency="many")
    with pytest.raises(ModelConfigError, match="timeout must be a positive number"):
        OpenAIModel("m", base_url="http://127.0.0.1:1/v1", timeout=0)
    with pytest.raises(ModelConfigError, match="model `fake`: error_rate must be between 0 and 1"):
        FakeModel(error_rate=2)
    fake = make_model({"name": "fake", "seed": 3, "latency": [0, 0.01]})
    assert isinstance(fake, FakeModel) and fake.seed == 3 and fake.latency == (0.0, 0.01)


def test_the_shared_status_ladder():
    from corral.errors import RateLimited
    from corral.models._hosted import batch_counts

    m = OpenAIModel("gpt-4o-mini", api_key=KEY)
    e = m._status_error(401, "bad key", None, None)
    assert isinstance(e, AuthenticationError) and "OPENAI_API_KEY" in str(e) and '{"openai": "..."}' in str(e)
    e = m._status_error(429, "slow down", {"retry-after": "2"}, "req_1")
    assert isinstance(e, RateLimited) and e.retry_after == 2.0 and "(request req_1)" in str(e)
    for status in (408, 409, 500, 529):
        assert type(m._status_error(status, "x", None, None)) is TransientModelError
    e = m._status_error(404, "no such model", None, None)
    assert type(e) is PermanentModelError and "check the model name and base_url" in str(e)
    assert "request rejected (400: x)" in str(m._status_error(400, "x", None, None))
    a = AnthropicModel("claude-haiku-4-5", api_key=KEY)
    assert '{"anthropic": "..."}' in str(a._status_error(401, "x", None, None))
    assert batch_counts(None) == {}
    assert batch_counts({"total": 3, "failed": None, "note": "x"}) == {"total": 3, "failed": 0}


# --- many calls in flight ---------------------------------------------------------------------


@pytest.mark.parametrize("make", [oai, claude], ids=["openai", "anthropic"])
def test_calls_in_flight_spread_over_sdk_clients_of_at_most_shard_calls_each(make):
    """80 calls at once: three SDK clients (32 + 32 + 16), none ever carrying more than 32, and
    every call answered; once they end, no client carries any."""
    from corral.models._hosted import SHARD_CALLS

    peaks: list[list[int]] = []

    async def go(model: Any) -> list[Any]:
        done = asyncio.Event()

        async def watch() -> None:
            while not done.is_set():
                if model._clients is not None:
                    peaks.append(list(model._clients.load))
                await asyncio.sleep(0.01)

        w = asyncio.create_task(watch())
        try:
            return await asyncio.gather(*(model.complete(req(f"ticket {i}: refund please")) for i in range(80)))
        finally:
            done.set()
            await w
            assert model._clients is not None and model._clients.load == [0, 0, 0]
            await model.aclose()

    with ProviderServer(latency_s=0.3) as srv:
        answers = asyncio.run(go(make(srv)))
    assert len(answers) == 80 and all(valid(json.loads(a.text)) for a in answers)
    assert max(max(p) for p in peaks) == SHARD_CALLS and max(len(p) for p in peaks) == 3
    assert max(sum(p) for p in peaks) == 80  # all at once: none waited for another to end
