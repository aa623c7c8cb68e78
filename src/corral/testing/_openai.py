"""The test server's OpenAI API: chat completions, embeddings, files and batches, as OpenAI
answers them (errors, usage, logprobs, reasoning and flex included)."""

from __future__ import annotations

import base64
import email.parser
import email.policy
import json
import random
import struct
import time
import uuid
from typing import Any, ClassVar

from corral.models.fake import fake_vector
from corral.testing._answer import SimulatedModel, _Answer, _schema_in, _text_of, _tokens
from corral.testing._http import (
    _DEFAULT_MESSAGES,
    OPENAI,
    Call,
    Route,
    Served,
    _HTTPError,
    _openai_error,
)

__all__ = ["OpenAIAPI"]

#: the ``reasoning_effort`` values OpenAI documents
_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")
#: the vectors' length of OpenAI's embedding models (any other name gets the first's)
_EMBED_DIMS = {"text-embedding-3-small": 1536, "text-embedding-3-large": 3072, "text-embedding-ada-002": 1536}
#: the most inputs one embeddings request takes (OpenAI's limit)
EMBED_MAX_INPUTS = 2048
#: the batch endpoints served
_BATCH_ENDPOINTS = ("/v1/chat/completions", "/v1/embeddings")


def _embed_error(message: str, param: str | None = "input", code: str | None = None) -> _HTTPError:
    return _HTTPError(400, _openai_error(message, "invalid_request_error", code, param))


class OpenAIAPI(SimulatedModel):
    """``/v1/chat/completions``, ``/v1/embeddings``, ``/v1/files`` and ``/v1/batches`` (also
    without ``/v1``)."""

    def _openai_chat(self, body: dict[str, Any], raw: bytes, route: str, *, batch: bool = False,
                     dice: random.Random | None = None) -> tuple[dict[str, Any], _Answer]:
        model = body.get("model")
        self._check_model(OPENAI, model)
        if body.get("service_tier") == "flex" and not batch and self.flex_unavailable:
            raise _HTTPError(429, _openai_error(
                "Resource unavailable: flex processing is out of capacity, try again later or use the default tier",
                "rate_limit_exceeded", "resource_unavailable"), {"retry-after": "1"})
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _HTTPError(400, _openai_error("[] is too short - 'messages'", "invalid_request_error", None, "messages"))
        texts: list[str] = []
        user: list[str] = []
        for m in messages:
            if not isinstance(m, dict) or "role" not in m:
                raise _HTTPError(400, _openai_error("each message needs a role", "invalid_request_error", None, "messages"))
            content = _text_of(m.get("content"))
            texts.append(content)
            if m["role"] == "user":
                user.append(content)
        schema: dict[str, Any] | None = None
        rf = body.get("response_format")
        if rf is not None:
            kind = rf.get("type") if isinstance(rf, dict) else None
            if kind == "json_schema" and not self.supports_json_schema:
                raise _HTTPError(400, _openai_error(
                    "response_format of type 'json_schema' is not supported by this server",
                    "invalid_request_error", "unsupported_parameter", "response_format"))
            if kind == "json_schema":
                js = rf.get("json_schema") or {}
                if not isinstance(js, dict) or not js.get("name") or not isinstance(js.get("schema"), dict):
                    raise _HTTPError(400, _openai_error(
                        "Missing required parameter: 'response_format.json_schema.name' or '.schema'.",
                        "invalid_request_error", "missing_required_parameter", "response_format"))
                schema = js["schema"]
                texts.append(json.dumps(schema))
            elif kind == "json_object":
                if not any("json" in t.lower() for t in texts):
                    raise _HTTPError(400, _openai_error(
                        "'messages' must contain the word 'json' in some form, to use "
                        "'response_format' of type 'json_object'.", "invalid_request_error", None, "messages"))
            elif kind != "text":
                raise _HTTPError(400, _openai_error(
                    f"Invalid value: '{kind}'. Supported values are: 'json_object', 'json_schema', and 'text'.",
                    "invalid_request_error", "invalid_value", "response_format.type"))
        if schema is None:
            schema = _schema_in(texts)
        effort = body.get("reasoning_effort")
        if effort is not None and effort not in _EFFORTS:
            raise _HTTPError(400, _openai_error(
                f"Invalid value: '{effort}'. Supported values are: "
                + ", ".join(f"'{e}'" for e in _EFFORTS[:-1]) + f", and '{_EFFORTS[-1]}'.",
                "invalid_request_error", "invalid_value", "reasoning_effort"))
        top_k = body.get("top_logprobs")
        if top_k is not None:
            if not isinstance(top_k, int) or isinstance(top_k, bool) or not 0 <= top_k <= 20:
                raise _HTTPError(400, _openai_error(
                    f"Invalid 'top_logprobs': integer above maximum value. Expected a value <= 20, but got {top_k} instead.",
                    "invalid_request_error", "integer_above_max_value", "top_logprobs"))
            if not body.get("logprobs"):
                raise _HTTPError(400, _openai_error(
                    "Invalid value for 'top_logprobs': 'logprobs' must be set to true when 'top_logprobs' is used.",
                    "invalid_request_error", "invalid_value", "top_logprobs"))
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or 4096
        prompt_text = "\n".join(texts)
        prompt_tokens = _tokens(prompt_text)
        if self.context_window is not None and prompt_tokens + int(max_tokens) > int(self.context_window):
            raise _HTTPError(400, _openai_error(
                f"This model's maximum context length is {self.context_window} tokens. However, you "
                f"requested {prompt_tokens + int(max_tokens)} tokens ({prompt_tokens} in the messages, "
                f"{max_tokens} in the completion). Please reduce the length of the messages or completion.",
                "invalid_request_error", "context_length_exceeded", "messages"))
        if dice is None:
            dice = self._call_faults(OPENAI, route, raw, prompt_tokens + int(max_tokens))
        ans = self._generate(OPENAI, body, schema, prompt_text, "\n".join(user), int(max_tokens), dice,
                             think=effort not in (None, "none"))
        message: dict[str, Any] = {"role": "assistant", "content": ans.text, "refusal": None}
        finish = {"stop": "stop", "length": "length", "malformed": "stop"}.get(ans.finish, ans.finish)
        if ans.finish == "refusal":
            message = {"role": "assistant", "content": None, "refusal": ans.text}
            finish = "stop"
        elif ans.finish == "content_filter":
            message = {"role": "assistant", "content": None, "refusal": None}
        if ans.reasoning_text is not None:  # as vLLM, DeepSeek and llama.cpp's server send it
            message["reasoning_content"] = ans.reasoning_text
        choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": finish, "logprobs": None}
        dist = self.top_logprobs
        ranked: list[tuple[str, float]] = []
        if top_k and dist is not None and message.get("content"):
            dist = dict(dist(body) if callable(dist) else dist)
            ranked = sorted(dist.items(), key=lambda kv: (-kv[1], kv[0]))
            message["content"] = ranked[0][0].strip() if ranked else ""
            ans.text = message["content"]
        if body.get("logprobs") and message.get("content"):
            content = message["content"]
            pieces = [content[i : i + 4] for i in range(0, len(content), 4)]
            entries = [
                {"token": p, "logprob": round(-dice.random() * 0.2, 6), "bytes": list(p.encode()), "top_logprobs": []}
                for p in pieces
            ]
            if top_k:
                for e in entries:
                    e["top_logprobs"] = [{"token": e["token"], "logprob": e["logprob"], "bytes": e["bytes"]}]
                if dist is not None and ranked:
                    entries[0]["token"], entries[0]["logprob"] = ranked[0][0], ranked[0][1]
                    entries[0]["bytes"] = list(ranked[0][0].encode())
                    entries[0]["top_logprobs"] = [
                        {"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in ranked[:top_k]
                    ]
            choice["logprobs"] = {"content": entries, "refusal": None}
        resp = {
            "id": "chatcmpl-" + uuid.uuid4().hex[:24],
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [choice],
            "usage": {
                "prompt_tokens": ans.prompt_tokens,
                "completion_tokens": ans.completion_tokens,
                "total_tokens": ans.prompt_tokens + ans.completion_tokens,
                "prompt_tokens_details": {"cached_tokens": ans.cached_tokens, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": ans.reasoning_tokens, "audio_tokens": 0,
                                              "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
            },
            "service_tier": "flex" if body.get("service_tier") == "flex" else "default",
            "system_fingerprint": "fp_corral_test",
        }
        return resp, ans

    def _openai_embeddings(self, body: dict[str, Any], raw: bytes, route: str, *,
                           dice: random.Random | None = None) -> tuple[dict[str, Any], _Answer]:
        """``POST /v1/embeddings``: one vector per input, from its words (as ``fake`` makes
        them), ``dimensions`` long on ``text-embedding-3-*`` models, as floats or base64."""
        model = body.get("model")
        self._check_model(OPENAI, model)
        given = body.get("input")
        texts = [given] if isinstance(given, str) else given
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise _embed_error("'$.input' is invalid. Please check the API reference: "
                               "https://platform.openai.com/docs/api-reference.")
        if len(texts) > EMBED_MAX_INPUTS:
            raise _embed_error(f"'$.input' is too long: at most {EMBED_MAX_INPUTS} inputs in one request.")
        if any(not t for t in texts):
            raise _embed_error("'$.input' is invalid: an input is an empty string.")
        native = _EMBED_DIMS.get(str(model), 1536)
        dims = body.get("dimensions")
        if dims is not None:
            if str(model) == "text-embedding-ada-002":
                raise _embed_error("This model does not support specifying dimensions.", "dimensions")
            if not isinstance(dims, int) or isinstance(dims, bool) or not 1 <= dims <= native:
                raise _embed_error(f"Invalid value for 'dimensions' = {dims}. Must be between 1 and {native}.",
                                   "dimensions", "invalid_value")
        fmt = body.get("encoding_format", "float")
        if fmt not in ("float", "base64"):
            raise _embed_error(f"Invalid value: '{fmt}'. Supported values are: 'float' and 'base64'.",
                               "encoding_format", "invalid_value")
        prompt_tokens = sum(_tokens(t) for t in texts)
        if dice is None:
            self._call_faults(OPENAI, route, raw, prompt_tokens)
        n = dims or native
        data = []
        for i, t in enumerate(texts):
            vec = fake_vector(t, n, self.seed)
            shown: Any = vec if fmt == "float" else base64.b64encode(struct.pack(f"<{n}f", *vec)).decode()
            data.append({"object": "embedding", "index": i, "embedding": shown})
        resp = {"object": "list", "data": data, "model": model,
                "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}}
        return resp, _Answer(None, "", "stop", prompt_tokens, 0, 0, 0)

    def _upload(self, headers: Any, raw: bytes) -> dict[str, Any]:
        ctype = headers.get("Content-Type", "")
        if "multipart/form-data" not in ctype:
            raise _HTTPError(400, _openai_error("expected a multipart/form-data upload", "invalid_request_error"))
        msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + ctype.encode() + b"\r\nMIME-Version: 1.0\r\n\r\n" + raw
        )
        fields: dict[str, Any] = {}
        filename = "upload.jsonl"
        content = b""
        for part in msg.iter_parts():
            name = part.get_param("name", header="content-disposition")
            got = part.get_payload(decode=True)
            payload = got if isinstance(got, bytes) else b""
            if name == "file":
                filename = part.get_filename() or filename
                content = payload
            elif isinstance(name, str) and name:
                fields[name] = payload.decode("utf-8", "replace")
        purpose = fields.get("purpose")
        if not purpose:
            raise _HTTPError(400, _openai_error("Missing required parameter: 'purpose'.", "invalid_request_error", None, "purpose"))
        if not content:
            raise _HTTPError(400, _openai_error("Missing required parameter: 'file'.", "invalid_request_error", None, "file"))
        fid = "file-" + uuid.uuid4().hex[:24]
        obj = {
            "id": fid, "object": "file", "bytes": len(content), "created_at": int(time.time()),
            "filename": filename, "purpose": purpose, "status": "processed", "status_details": None,
        }
        with self._lock:
            self._files[fid] = obj
            self._file_data[fid] = content
            self.submissions["files"] += 1
        return obj

    def _new_file(self, lines: list[dict[str, Any]], name: str) -> str:
        data = "".join(json.dumps(x) + "\n" for x in lines).encode()
        fid = "file-" + uuid.uuid4().hex[:24]
        with self._lock:
            self._files[fid] = {
                "id": fid, "object": "file", "bytes": len(data), "created_at": int(time.time()),
                "filename": name, "purpose": "batch_output", "status": "processed", "status_details": None,
            }
            self._file_data[fid] = data
        return fid

    def _create_batch(self, body: dict[str, Any]) -> dict[str, Any]:
        fid = body.get("input_file_id")
        endpoint = body.get("endpoint")
        window = body.get("completion_window")
        with self._lock:
            data = self._file_data.get(fid or "")
        if data is None:
            raise _HTTPError(404, _openai_error(f"No such File object: {fid}", "invalid_request_error", None, "input_file_id"))
        if endpoint not in _BATCH_ENDPOINTS:
            raise _HTTPError(400, _openai_error(
                f"Invalid value: '{endpoint}'. This test server batches '/v1/chat/completions' and "
                "'/v1/embeddings' only.",
                "invalid_request_error", "invalid_value", "endpoint"))
        if window != "24h":
            raise _HTTPError(400, _openai_error(
                f"Invalid value: '{window}'. Supported values are: '24h'.", "invalid_request_error", "invalid_value",
                "completion_window"))
        lines, errors = [], []
        for n, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                if not isinstance(item, dict) or not item.get("custom_id") or not isinstance(item.get("body"), dict):
                    raise ValueError("each line needs custom_id and body")
                if item.get("url") not in (None, endpoint):
                    raise ValueError(f"url must be {endpoint}")
            except ValueError as e:
                errors.append({"code": "invalid_request", "message": str(e), "param": None, "line": n})
                continue
            lines.append(item)
        ids = [x["custom_id"] for x in lines]
        if len(set(ids)) != len(ids):
            errors.append({"code": "duplicate_custom_id", "message": "custom_id values must be unique", "param": None, "line": None})
        bid = "batch_" + uuid.uuid4().hex[:24]
        now = int(time.time())
        batch = {
            "id": bid, "object": "batch", "endpoint": endpoint, "errors": None, "input_file_id": fid,
            "completion_window": window, "status": "validating", "output_file_id": None,
            "error_file_id": None, "created_at": now, "in_progress_at": None,
            "expires_at": now + 86400, "finalizing_at": None, "completed_at": None, "failed_at": None,
            "expired_at": None, "cancelling_at": None, "cancelled_at": None,
            "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
            "metadata": body.get("metadata"),
        }
        with self._lock:
            self._batches[bid] = {"obj": batch, "lines": lines, "errors": errors, "polls": 0, "cancel": False}
            self.submissions["batches"] += 1
        return batch

    def _batch_state(self, bid: str) -> dict[str, Any]:
        """A batch's state (its object, lines, polls...), or a 404 as OpenAI answers it."""
        st = self._batches.get(bid)
        if st is None:
            raise _HTTPError(404, _openai_error(f"No such Batch object: {bid}", "invalid_request_error"))
        return st

    def _poll_batch(self, bid: str) -> dict[str, Any]:
        with self._lock:
            st = self._batch_state(bid)
            obj = st["obj"]
            if obj["status"] in ("completed", "expired", "cancelled", "failed"):
                return obj
            st["polls"] += 1
            polls = st["polls"]
            now = int(time.time())
            if st["errors"]:
                obj.update(status="failed", failed_at=now, errors={"object": "list", "data": st["errors"]})
                return obj
            if st["cancel"]:
                self._finish_batch(bid, st, cancelled=True)
                return obj
            if polls < int(self.batch_polls):
                finalizing = int(self.batch_polls) > 2 and polls == int(self.batch_polls) - 1
                obj["status"] = "finalizing" if finalizing else "in_progress"
                obj["in_progress_at"] = obj["in_progress_at"] or now
                if finalizing:
                    obj["finalizing_at"] = now
                return obj
            self._finish_batch(bid, st)
            return obj

    def _finish_batch(self, bid: str, st: dict[str, Any], cancelled: bool = False) -> None:
        obj = st["obj"]
        lines = st["lines"]
        rng = random.Random(f"{self.seed}:{bid}")
        cutoff = len(lines) // 2 if (self.expire_batches or cancelled) else len(lines)
        out: list[dict[str, Any]] = []
        err: list[dict[str, Any]] = []
        for i, item in enumerate(lines):
            rid = "batch_req_" + uuid.uuid4().hex[:24]
            if i >= cutoff:
                code, msg = (("batch_cancelled", "This request was cancelled before it was executed.") if cancelled else
                             ("batch_expired", "This request could not be executed before the completion window expired."))
                err.append({"id": rid, "custom_id": item["custom_id"], "response": None, "error": {"code": code, "message": msg}})
                continue
            raw = json.dumps(item["body"], sort_keys=True).encode()
            endpoint = obj["endpoint"]
            dice = self._dice("batch:" + endpoint, raw)
            if dice.random() < self.batch_failure_rate:
                body = _openai_error(_DEFAULT_MESSAGES[500], "server_error")
                err.append({"id": rid, "custom_id": item["custom_id"],
                            "response": {"status_code": 500, "request_id": "req_" + uuid.uuid4().hex[:16], "body": body},
                            "error": None})
                self._count("openai_batch", 500)
                continue
            try:
                if endpoint == "/v1/embeddings":
                    resp, ans = self._openai_embeddings(item["body"], raw, "batch", dice=dice)
                else:
                    resp, ans = self._openai_chat(item["body"], raw, "batch", batch=True, dice=dice)
            except _HTTPError as e:
                err.append({"id": rid, "custom_id": item["custom_id"],
                            "response": {"status_code": e.status, "request_id": "req_" + uuid.uuid4().hex[:16], "body": e.body},
                            "error": None})
                self._count("openai_batch", e.status)
                continue
            out.append({"id": rid, "custom_id": item["custom_id"],
                        "response": {"status_code": 200, "request_id": "req_" + uuid.uuid4().hex[:16], "body": resp},
                        "error": None})
            self._count("openai_batch", 200, Served(1, ans.prompt_tokens, ans.completion_tokens, ans.cached_tokens))
        rng.shuffle(out)
        rng.shuffle(err)
        now = int(time.time())
        obj["output_file_id"] = self._new_file(out, f"{bid}_output.jsonl") if out else None
        obj["error_file_id"] = self._new_file(err, f"{bid}_error.jsonl") if err else None
        obj["request_counts"] = {"total": len(lines), "completed": len(out), "failed": len(err)}
        obj["in_progress_at"] = obj["in_progress_at"] or now
        obj["finalizing_at"] = obj["finalizing_at"] or now
        if cancelled:
            obj.update(status="cancelled", cancelled_at=now)
        elif self.expire_batches:
            obj.update(status="expired", expired_at=now)
        else:
            obj.update(status="completed", completed_at=now)

    def _cancel_batch(self, bid: str) -> dict[str, Any]:
        with self._lock:
            st = self._batch_state(bid)
            obj = st["obj"]
            if obj["status"] in ("completed", "expired", "failed", "cancelled"):
                raise _HTTPError(409, _openai_error(
                    f"Cannot cancel a batch with status '{obj['status']}'.", "invalid_request_error"))
            st["cancel"] = True
            obj.update(status="cancelling", cancelling_at=int(time.time()))
            return obj

    def _chat(self, c: Call) -> tuple[dict[str, Any], _Answer]:
        if c.body.get("stream"):
            raise _HTTPError(400, _openai_error("this test server does not stream", "invalid_request_error", None, "stream"))
        return self._openai_chat(c.body, c.raw, c.label)

    def _file(self, file_id: str) -> dict[str, Any]:
        with self._lock:
            out = self._files.get(file_id)
        if out is None:
            raise _HTTPError(404, _openai_error("No such File object", "invalid_request_error"))
        return out

    def _file_content(self, file_id: str) -> bytes:
        with self._lock:
            data = self._file_data.get(file_id)
        if data is None:
            raise _HTTPError(404, _openai_error("No such File object", "invalid_request_error"))
        return data

    routes: ClassVar[dict[str, Route]] = {
        "POST /v1/chat/completions": Route(lambda s, c: s._chat(c), OPENAI),
        "POST /v1/embeddings": Route(lambda s, c: s._openai_embeddings(c.body, c.raw, c.label), OPENAI),
        "POST /v1/files": Route(lambda s, c: s._upload(c.headers, c.raw), "files"),
        "GET /v1/files/{id}": Route(lambda s, c: s._file(c.id), "files"),
        "GET /v1/files/{id}/content": Route(lambda s, c: s._file_content(c.id), "files", "application/octet-stream"),
        "POST /v1/batches": Route(lambda s, c: s._create_batch(c.body), "batches"),
        "GET /v1/batches/{id}": Route(lambda s, c: s._poll_batch(c.id), "batches"),
        "POST /v1/batches/{id}/cancel": Route(lambda s, c: s._cancel_batch(c.id), "batches"),
    }
