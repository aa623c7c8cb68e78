"""The test server's Anthropic API: messages and message batches, as Anthropic answers them
(tools, structured outputs, extended thinking and errors included)."""

from __future__ import annotations

import hashlib
import json
import random
import uuid
from typing import Any, ClassVar

from corral.testing._answer import SimulatedModel, _Answer, _cut, _schema_in, _text_of, _tokens
from corral.testing._http import (
    ANTHROPIC,
    Call,
    Route,
    Served,
    _anthropic_error,
    _HTTPError,
    _now_iso,
)

__all__ = ["AnthropicAPI"]

_THINKING_DOCS = "https://docs.claude.com/en/docs/build-with-claude/extended-thinking"


class AnthropicAPI(SimulatedModel):
    """``/v1/messages`` and ``/v1/messages/batches``."""

    def _anthropic_message(self, body: dict[str, Any], raw: bytes, route: str, *,
                           dice: random.Random | None = None) -> tuple[dict[str, Any], _Answer]:
        model = body.get("model")
        self._check_model(ANTHROPIC, model)
        max_tokens = body.get("max_tokens")
        if not isinstance(max_tokens, int) or max_tokens < 0:
            raise _HTTPError(400, _anthropic_error(400, "max_tokens: Field required"))
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _HTTPError(400, _anthropic_error(400, "messages: at least one message is required"))
        texts: list[str] = []
        user: list[str] = []
        system = body.get("system")
        if system is not None:
            texts.append(_text_of(system))
        for m in messages:
            if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
                raise _HTTPError(400, _anthropic_error(400, "messages: roles must be 'user' or 'assistant'"))
            said = _text_of(m.get("content"))
            texts.append(said)
            if m["role"] == "user":
                user.append(said)
        tools = body.get("tools") or []
        choice = body.get("tool_choice") or {}
        forced: dict[str, Any] | None = None
        for t in tools:
            if not isinstance(t, dict) or not t.get("name") or not isinstance(t.get("input_schema"), dict):
                raise _HTTPError(400, _anthropic_error(400, "tools: each tool needs name and input_schema"))
            texts.append(json.dumps(t["input_schema"]))
        think = self._thinking(body, max_tokens, choice)
        if isinstance(choice, dict) and choice.get("type") == "tool":
            forced = next((t for t in tools if t.get("name") == choice.get("name")), None)
            if forced is None:
                raise _HTTPError(400, _anthropic_error(400, f"tool_choice: no tool named '{choice.get('name')}' in tools"))
        elif isinstance(choice, dict) and choice.get("type") == "any" and tools:
            forced = tools[0]
        elif think and tools and (not choice or (isinstance(choice, dict) and choice.get("type") == "auto")):
            forced = tools[0]  # a thinking model left to choose answers through the tool
        schema: dict[str, Any] | None = None
        fmt = (body.get("output_config") or {}).get("format") if isinstance(body.get("output_config"), dict) else None
        if forced is not None:
            schema = forced["input_schema"]
        elif isinstance(fmt, dict) and fmt.get("type") == "json_schema":
            schema = fmt.get("schema")
            refused = _refused_keyword(schema)
            if refused is not None:  # as Anthropic's structured outputs answer
                raise _HTTPError(400, _anthropic_error(
                    400, f"output_config.format.schema: For '{refused[0]}' type, property '{refused[1]}' is not supported"))
            texts.append(json.dumps(schema))
        else:
            schema = _schema_in(texts)
        prompt_text = "\n".join(texts)
        prompt_tokens = _tokens(prompt_text)
        if self.context_window is not None and prompt_tokens > int(self.context_window):
            raise _HTTPError(400, _anthropic_error(
                400, f"prompt is too long: {prompt_tokens} tokens > {self.context_window} maximum"))
        if dice is None:
            dice = self._call_faults(ANTHROPIC, route, raw, prompt_tokens + max_tokens)
        ans = self._generate(ANTHROPIC, body, schema, prompt_text, "\n".join(user), max_tokens, dice,
                             think=think)
        if (ans.finish == "stop" and self.context_window is not None
                and prompt_tokens + ans.completion_tokens > int(self.context_window)):
            room = max(1, int(self.context_window) - prompt_tokens)
            ans = _Answer(_cut(ans.value), ans.text[: room * 4], "context", ans.prompt_tokens,
                          room, ans.cached_tokens, ans.reasoning_tokens, ans.reasoning_text,
                          ans.cache_write_tokens)
        content: list[dict[str, Any]]
        stop = {"stop": "end_turn", "length": "max_tokens", "refusal": "refusal",
                "context": "model_context_window_exceeded", "malformed": "end_turn"}[ans.finish]
        stop_details = None
        if ans.finish == "refusal":
            content = [{"type": "text", "text": ans.text, "citations": None}]
            stop_details = {"type": "refusal", "category": None,
                            "explanation": "The request was declined by the test server's refusal_rate."}
        elif ans.finish == "malformed" or forced is None:
            content = [{"type": "text", "text": ans.text, "citations": None}] if ans.text else []
        else:
            value = ans.value if isinstance(ans.value, dict) else {}
            content = [{"type": "tool_use", "id": "toolu_" + uuid.uuid4().hex[:24], "name": forced["name"], "input": value}]
            if ans.finish == "stop":
                stop = "tool_use"
        if ans.reasoning_text is not None:
            sig = hashlib.sha256(ans.reasoning_text.encode()).hexdigest()
            content = [{"type": "thinking", "thinking": ans.reasoning_text, "signature": "sig_" + sig}, *content]
        resp: dict[str, Any] = {
            "id": "msg_" + uuid.uuid4().hex[:24],
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": stop,
            "stop_sequence": None,
            "stop_details": stop_details,
            "usage": {
                "input_tokens": ans.prompt_tokens - ans.cached_tokens - ans.cache_write_tokens,
                "output_tokens": ans.completion_tokens,
                "cache_read_input_tokens": ans.cached_tokens,
                "cache_creation_input_tokens": ans.cache_write_tokens,
                "service_tier": "standard",
            },
        }
        if ans.reasoning_text is not None:
            resp["usage"]["output_tokens_details"] = {"thinking_tokens": ans.reasoning_tokens}
        return resp, ans

    def _thinking(self, body: dict[str, Any], max_tokens: int, choice: Any) -> bool:
        """Whether the request turns extended thinking on; 400 where Anthropic would refuse it."""
        thinking = body.get("thinking")
        if thinking is None:
            return False
        kind = thinking.get("type") if isinstance(thinking, dict) else None
        if kind == "disabled":
            return False
        if kind == "enabled":
            budget = thinking.get("budget_tokens")
            if not isinstance(budget, int) or isinstance(budget, bool):
                raise _HTTPError(400, _anthropic_error(400, "thinking.enabled.budget_tokens: Field required"))
            if budget < 1024:
                raise _HTTPError(400, _anthropic_error(
                    400, "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024"))
            if max_tokens <= budget:
                raise _HTTPError(400, _anthropic_error(
                    400, f"`max_tokens` must be greater than `thinking.budget_tokens`. Please consult "
                    f"our documentation at {_THINKING_DOCS}#max-tokens-and-context-window-size"))
        elif kind != "adaptive":
            raise _HTTPError(400, _anthropic_error(
                400, f"thinking.type: Input should be 'enabled', 'disabled' or 'adaptive', not {kind!r}"))
        if isinstance(choice, dict) and choice.get("type") in ("tool", "any"):
            raise _HTTPError(400, _anthropic_error(400, "Thinking may not be enabled when tool_choice forces tool use."))
        temperature = body.get("temperature")
        if temperature is not None and temperature != 1:
            raise _HTTPError(400, _anthropic_error(
                400, f"`temperature` may only be set to 1 when thinking is enabled. Please consult our "
                f"documentation at {_THINKING_DOCS}#feature-compatibility"))
        return True

    def _create_msg_batch(self, body: dict[str, Any]) -> dict[str, Any]:
        reqs = body.get("requests")
        if not isinstance(reqs, list) or not reqs:
            raise _HTTPError(400, _anthropic_error(400, "requests: at least one request is required"))
        ids = []
        for r in reqs:
            if not isinstance(r, dict) or not r.get("custom_id") or not isinstance(r.get("params"), dict):
                raise _HTTPError(400, _anthropic_error(400, "requests: each request needs custom_id and params"))
            ids.append(r["custom_id"])
        if len(set(ids)) != len(ids):
            raise _HTTPError(400, _anthropic_error(400, "requests: custom_id values must be unique"))
        bid = "msgbatch_" + uuid.uuid4().hex[:24]
        obj = {
            "id": bid, "type": "message_batch", "processing_status": "in_progress",
            "request_counts": {"processing": len(reqs), "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0},
            "ended_at": None, "created_at": _now_iso(), "expires_at": _now_iso(86400),
            "archived_at": None, "cancel_initiated_at": None, "results_url": None,
        }
        with self._lock:
            self._msg_batches[bid] = {"obj": obj, "requests": reqs, "polls": 0, "cancel": False, "results": None}
            self.submissions["message_batches"] += 1
        return obj

    def _msg_batch_state(self, bid: str) -> dict[str, Any]:
        """A message batch's state (its object, requests, results...), or a 404 as Anthropic
        answers it."""
        st = self._msg_batches.get(bid)
        if st is None:
            raise _HTTPError(404, _anthropic_error(404, f"message batch {bid} not found"))
        return st

    def _poll_msg_batch(self, bid: str) -> dict[str, Any]:
        with self._lock:
            st = self._msg_batch_state(bid)
            obj = st["obj"]
            if obj["processing_status"] == "ended":
                return obj
            st["polls"] += 1
            if st["cancel"] or st["polls"] >= int(self.batch_polls):
                self._finish_msg_batch(bid, st)
            return obj

    def _finish_msg_batch(self, bid: str, st: dict[str, Any]) -> None:
        reqs = st["requests"]
        cancelled = st["cancel"]
        rng = random.Random(f"{self.seed}:{bid}")
        cutoff = len(reqs) // 2 if (self.expire_batches or cancelled) else len(reqs)
        counts = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        results = []
        for i, r in enumerate(reqs):
            if i >= cutoff:
                kind = "canceled" if cancelled else "expired"
                counts[kind] += 1
                results.append({"custom_id": r["custom_id"], "result": {"type": kind}})
                continue
            raw = json.dumps(r["params"], sort_keys=True).encode()
            dice = self._dice("batch:/v1/messages", raw)
            if dice.random() < self.batch_failure_rate:
                counts["errored"] += 1
                err = _anthropic_error(500, "Internal server error")
                results.append({"custom_id": r["custom_id"], "result": {"type": "errored", "error": err}})
                self._count("anthropic_batch", 500)
                continue
            try:
                msg, ans = self._anthropic_message(r["params"], raw, "batch", dice=dice)
            except _HTTPError as e:
                counts["errored"] += 1
                results.append({"custom_id": r["custom_id"], "result": {"type": "errored", "error": e.body}})
                self._count("anthropic_batch", e.status)
                continue
            counts["succeeded"] += 1
            results.append({"custom_id": r["custom_id"], "result": {"type": "succeeded", "message": msg}})
            self._count("anthropic_batch", 200, Served(1, ans.prompt_tokens, ans.completion_tokens, ans.cached_tokens))
        rng.shuffle(results)
        st["results"] = "".join(json.dumps(x) + "\n" for x in results).encode()
        st["obj"].update(
            processing_status="ended", ended_at=_now_iso(), request_counts=counts,
            results_url=f"{self.url}/v1/messages/batches/{bid}/results",
        )

    def _cancel_msg_batch(self, bid: str) -> dict[str, Any]:
        with self._lock:
            st = self._msg_batch_state(bid)
            obj = st["obj"]
            if obj["processing_status"] != "ended":
                st["cancel"] = True
                obj.update(processing_status="canceling", cancel_initiated_at=_now_iso())
            return obj

    def _msg_batch_results(self, bid: str) -> bytes:
        with self._lock:
            st = self._msg_batch_state(bid)
            if st["results"] is None:
                raise _HTTPError(400, _anthropic_error(400, f"message batch {bid} has not ended yet"))
            return st["results"]

    def _message(self, c: Call) -> tuple[dict[str, Any], _Answer]:
        if c.body.get("stream"):
            raise _HTTPError(400, _anthropic_error(400, "this test server does not stream"))
        return self._anthropic_message(c.body, c.raw, c.label)

    routes: ClassVar[dict[str, Route]] = {
        "POST /v1/messages": Route(lambda s, c: s._message(c), ANTHROPIC),
        "POST /v1/messages/batches": Route(lambda s, c: s._create_msg_batch(c.body), "batches"),
        "GET /v1/messages/batches/{id}": Route(lambda s, c: s._poll_msg_batch(c.id), "batches"),
        "POST /v1/messages/batches/{id}/cancel": Route(lambda s, c: s._cancel_msg_batch(c.id), "batches"),
        "GET /v1/messages/batches/{id}/results": Route(
            lambda s, c: s._msg_batch_results(c.id), "batches", "application/binary"
        ),
    }


#: what Anthropic's structured outputs refuse in ``output_config.format.schema``
_REFUSED_IN_FORMAT = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf",
                      "minLength", "maxLength", "maxItems", "uniqueItems", "minProperties", "maxProperties")

def _refused_keyword(s: Any) -> tuple[str, str] | None:
    """The (type, keyword) of the first refused keyword in a schema, or ``None``."""
    if isinstance(s, list):
        return next((got for x in s if (got := _refused_keyword(x)) is not None), None)
    if not isinstance(s, dict):
        return None
    for k in _REFUSED_IN_FORMAT:
        if k in s:
            return (str(s.get("type", "value")), k)
    return next((got for v in s.values() if (got := _refused_keyword(v)) is not None), None)
