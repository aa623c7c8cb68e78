"""``openai:MODEL``: OpenAI, or any OpenAI-compatible server, through the official SDK.

``model: openai:gpt-4o-mini`` calls OpenAI's chat completions; with ``base_url`` the same adapter
talks to vLLM, llama.cpp's server, Ollama, or any server that speaks the chat completions API::

    model: {name: openai:Qwen2.5-7B-Instruct, base_url: "http://localhost:8000/v1"}

The SDK's own retries are off: the engine retries, rate limits and times out calls. Every SDK
error is translated at the hosted models' shared boundary (:mod:`corral.models._hosted`); this
module adds OpenAI's own cases (``insufficient_quota``, ``context_length_exceeded``, an answer
that is not a chat completion). The latest rate-limit headers are kept in
:attr:`OpenAIModel.rate_limits` for the engine.

An embeddings request (``Request.embed``, the ``embed`` task) goes to ``/v1/embeddings``, many
texts in one call (:mod:`corral.models._openai_embed`), online and in batches alike.

The model also speaks OpenAI's Batch API (:class:`corral.models.base.BatchAPI`): each request
becomes one JSONL line whose body is exactly what :meth:`OpenAIModel.complete` would send, the
file is uploaded (``purpose="batch"``) and a ``/v1/chat/completions`` batch created; results are
parsed as online answers are and priced with the batch discount of the price table.

A request's ``reasoning_effort`` (``low``, ``medium``, ``high``) is sent as the chat completions
parameter ``reasoning_effort``, online and in batches alike. The reasoning text some compatible
servers return (``message.reasoning_content`` or ``message.reasoning``: vLLM, DeepSeek,
llama.cpp's server) becomes :attr:`Completion.reasoning`; OpenAI itself returns none, only the
count in ``completion_tokens_details.reasoning_tokens``.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from typing import Any

import orjson
from pydantic import Field, field_validator, model_validator

from corral.errors import ModelError, PermanentModelError, QuotaExceeded, TransientModelError
from corral.models._hosted import (
    HostedModel,
    HostedOptions,
    batch_counts,
    http_module,
    pool_options,
    retryable,
)
from corral.models._keys import Secret
from corral.models._openai_embed import (
    EMBEDDINGS_ENDPOINT,
    embed_params,
    embeddings_completion,
    is_embeddings_body,
)
from corral.models._options import parse_options
from corral.models._schemas import strict_ok, strict_schema, with_schema_in_prompt
from corral.models.base import (
    BatchItem,
    BatchStatus,
    Capabilities,
    Completion,
    FinishReason,
    Request,
    Usage,
)

__all__ = ["OpenAIModel", "OpenAIOptions"]

_INSTALL_HINT = "make install-hosted, or pip install -e '.[openai]', in the Corral checkout"
DEFAULT_BASE_URL = "https://api.openai.com/v1"
#: the ``service_tier`` values a model may ask for (``flex``: slower, at batch prices)
SERVICE_TIERS = ("auto", "default", "flex", "priority")
#: models that reject any temperature but the default (reasoning models)
_NO_TEMPERATURE = ("o1", "o3", "o4", "gpt-5")
#: the Batch API's limits: requests per batch, bytes of the input file
BATCH_LIMITS = (50_000, 200 * 1024 * 1024)
_BATCH_ENDPOINT = "/v1/chat/completions"
#: batch statuses after which nothing changes and results can be fetched
_BATCH_ENDED = ("completed", "expired", "cancelled", "failed")
#: a longer HTTP timeout for uploading and downloading batch files (up to 200 MB)
_FILE_TIMEOUT = 600.0








def _batch_errors(batch: Any) -> str:
    """The validation errors of a failed batch, in one line."""
    errors = getattr(batch, "errors", None)
    data = getattr(errors, "data", None) if errors is not None else None
    out = []
    for e in (data or [])[:3]:
        line = getattr(e, "line", None)
        msg = getattr(e, "message", None) or getattr(e, "code", None) or "invalid"
        out.append(f"line {line}: {msg}" if line else str(msg))
    more = len(data or []) - len(out)
    return "; ".join(out) + (f" (and {more} more)" if more > 0 else "")


def _reasoning_of(msg: Any) -> str | None:
    """The reasoning text an OpenAI-compatible server put in the message, if any:
    ``reasoning_content`` (vLLM, DeepSeek, llama.cpp's server) or ``reasoning`` (newer vLLM,
    OpenRouter). The SDK's typed message has no such fields: they are extra fields, read as
    attributes or from ``model_extra``. Only non-empty strings count."""
    if msg is None:
        return None
    extra = msg if isinstance(msg, dict) else (getattr(msg, "model_extra", None) or {})
    for name in ("reasoning_content", "reasoning"):
        value = extra.get(name) if isinstance(extra, dict) else None
        if value is None and not isinstance(msg, dict):
            value = getattr(msg, name, None)
        if isinstance(value, str) and value.strip():
            return value
    return None


#: alternatives asked for the first answer token of a scoring request (OpenAI's maximum)
TOP_LOGPROBS = 20
_EDGE = " \t\n\"'`*.:,;!?()[]{}"


def choice_logprobs(top: list[tuple[str, float]], choices: tuple[str, ...], text: str = "") -> dict[str, float]:
    """Each choice's log-probability, estimated from the first answer token's ``top_logprobs``.

    A first token stands for every choice it begins (case, spaces and quotes ignored): its
    probability goes to that choice, or, when it begins several (``bill`` of ``billing`` and
    ``bills``), to the one the answer's text is, else shared equally. A choice no top token
    begins gets what the top tokens leave of 1, shared among such choices, but no more than the
    least likely top token (it was not among them). An approximation: it assumes that the first
    token decides the answer, which holds when the choices begin differently.
    """
    mass = {c: 0.0 for c in choices}
    folded = {c: c.strip(_EDGE).lower() for c in choices}
    said = text.strip(_EDGE).lower()
    seen = 0.0
    least = 1.0
    for token, lp in top:
        p = math.exp(lp)
        seen += p
        least = min(least, p)
        t = token.strip(_EDGE).lower()
        if not t:
            continue
        hits = [c for c in choices if folded[c].startswith(t)]
        if len(hits) > 1:
            hits = [c for c in hits if said == folded[c]] or hits
        for c in hits:
            mass[c] += p / len(hits)
    unseen = [c for c, m in mass.items() if m == 0.0]
    if unseen:
        rest = min(max(0.0, 1.0 - seen) / len(unseen), least)
        for c in unseen:
            mass[c] = max(rest, 1e-12)
    return {c: math.log(m) for c, m in mass.items()}


def _clean_url(url: str) -> str:
    return url.strip().rstrip("/")


def _shown_url(url: str) -> str:
    """The URL without credentials, for messages."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return scheme + "://" + rest.split("@", 1)[1]
    return url


class OpenAIOptions(HostedOptions):
    """The options of ``openai:MODEL`` (docs/providers.md has them in a table)."""

    api_key_env: str = Field("OPENAI_API_KEY", description="the environment variable the key is read from")
    organization: str | None = Field(None, description="OpenAI organization id (default $OPENAI_ORG_ID)")
    project: str | None = Field(None, description="OpenAI project id (default $OPENAI_PROJECT_ID)")
    supports_schema: bool | None = Field(
        None, description="true: json_schema; false: json_object and the schema in the prompt; "
        "unset: json_schema, falling back for good to json_object when the server rejects it"
    )
    strict: bool | None = Field(
        None, description="strict structured outputs; unset: when the schema qualifies"
    )
    logprobs: bool = Field(False, description="ask for token log-probabilities")
    send_temperature: bool | None = Field(
        None, description="send the step's temperature; unset: except to reasoning models"
    )
    max_tokens_param: str | None = Field(
        None, description="max_completion_tokens (default for OpenAI) or max_tokens (elsewhere)"
    )
    service_tier: str | None = Field(None, description="auto, default, flex or priority")
    flex_fallback: bool = Field(
        False, description="with service_tier flex: a call flex has no capacity for goes to the "
        "standard tier once"
    )

    @field_validator("max_tokens_param")
    @classmethod
    def _known_param(cls, v: str | None) -> str | None:
        if v is not None and v not in ("max_tokens", "max_completion_tokens"):
            raise ValueError("max_tokens_param must be `max_tokens` or `max_completion_tokens`")
        return v

    @field_validator("service_tier")
    @classmethod
    def _known_tier(cls, v: str | None) -> str | None:
        if v is not None and v not in SERVICE_TIERS:
            raise ValueError(f"service_tier must be one of {', '.join(SERVICE_TIERS)}, got {v!r}")
        return v

    @model_validator(mode="after")
    def _fallback_needs_flex(self) -> OpenAIOptions:
        if self.flex_fallback and self.service_tier != "flex":
            raise ValueError("flex_fallback needs `service_tier: flex`")
        return self


class OpenAIModel(HostedModel):
    """A chat model behind OpenAI's chat completions API.

    ``arg`` is the model name (``gpt-4o-mini``; for other servers, the name they serve); the
    options are :class:`OpenAIOptions`. A scoring request (``Request.choices``, ``scoring:
    likelihood``) asks for ``top_logprobs`` and maps the first token's onto the choices
    (:func:`choice_logprobs`). A model with no price has cost ``None`` (unknown), never 0.
    """

    provider = "openai"
    sdk_module = "openai"
    install_hint = _INSTALL_HINT
    sdk_error = "OpenAIError"
    Options = OpenAIOptions
    capabilities = Capabilities(
        supports_schema=True, supports_logprobs=True, supports_scoring=True, supports_embeddings=True,
        max_concurrency=1024,
    )

    def __init__(self, arg: str | None = None, **options: Any) -> None:
        super().__init__()
        name = self._named(arg, "gpt-4o-mini")
        opts = parse_options(OpenAIOptions, f"openai:{name}", options)
        url = opts.base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
        self.is_openai = _clean_url(url) == DEFAULT_BASE_URL
        self._configure(name, opts, DEFAULT_BASE_URL, "OPENAI_BASE_URL", key_required=self.is_openai)
        if self._key is None:
            self._key = Secret("no-key")  # servers started without a key accept any
        self.organization = opts.organization
        self.project = opts.project
        self.supports_schema = opts.supports_schema
        self._schema_mode = "json_object" if opts.supports_schema is False else "json_schema"
        self.strict = opts.strict
        self.logprobs = opts.logprobs
        send = opts.send_temperature
        self.send_temperature = not self.name.lower().startswith(_NO_TEMPERATURE) if send is None else send
        default_param = "max_completion_tokens" if self.is_openai else "max_tokens"
        self.max_tokens_param = opts.max_tokens_param or default_param
        self.service_tier = opts.service_tier
        self.flex_fallback = opts.flex_fallback
        self.capabilities = Capabilities(
            supports_schema=opts.supports_schema is not False,
            # log-probabilities come back when asked for (``logprobs``), and label scores
            # from the first token's top_logprobs (``scoring: likelihood``, estimated)
            supports_logprobs=self.logprobs,
            supports_scoring=True,
            supports_embeddings=True,  # the server says whether this model embeds
            supports_batch=opts.supports_batch,
            max_concurrency=opts.max_concurrency,
            context_window=opts.context_window,
        )
        #: (max requests per batch, max bytes of the batch's input file)
        self.batch_limits: tuple[int, int] = BATCH_LIMITS

    def __repr__(self) -> str:
        return f"OpenAIModel({self.id!r})"

    def _where(self) -> str:
        return self.id if self.is_openai else f"{self.id} ({_shown_url(self.base_url)})"

    def _new_sdk(self) -> Any:
        import openai

        return openai.AsyncOpenAI(
            api_key=self._api_key(),
            base_url=self.base_url,
            organization=self.organization,
            project=self.project,
            timeout=self.timeout,
            max_retries=0,  # the engine owns retries
            default_headers=self.headers or None,
            http_client=openai.DefaultAsyncHttpxClient(**pool_options()),
        )

    # --- one call ----------------------------------------------------------------------------

    def params(self, request: Request) -> dict[str, Any]:
        """The chat completions parameters for a request (what goes on the wire)."""
        messages = [m.to_dict() for m in request.messages]
        p: dict[str, Any] = {"model": self.name}
        if self.service_tier is not None:
            p["service_tier"] = self.service_tier
        if request.choices is not None:
            # a scoring request: a short answer and the first token's most likely alternatives
            # (see choice_logprobs); no response_format, which would force JSON's `{` first
            p["messages"] = messages
            p[self.max_tokens_param] = request.max_tokens
            if self.send_temperature:
                p["temperature"] = 0.0
            p["logprobs"] = True
            p["top_logprobs"] = TOP_LOGPROBS
            return p
        if request.schema is not None:
            if self._schema_mode == "json_schema":
                strict = strict_ok(request.schema) if self.strict is None else self.strict
                schema = strict_schema(request.schema) if strict else copy.deepcopy(request.schema)
                p["response_format"] = {
                    "type": "json_schema",
                    "json_schema": {"name": "answer", "schema": schema, "strict": bool(strict)},
                }
            else:
                messages = with_schema_in_prompt(messages, request.schema)
                p["response_format"] = {"type": "json_object"}
        p["messages"] = messages
        p[self.max_tokens_param] = request.max_tokens
        if self.send_temperature:
            p["temperature"] = request.temperature
        if self.logprobs:
            p["logprobs"] = True
        if request.reasoning_effort is not None:
            # the documented chat completions parameter of reasoning models (vLLM and other
            # compatible servers accept it too); the server decides which values it allows
            p["reasoning_effort"] = request.reasoning_effort
        return p

    async def complete(self, request: Request) -> Completion:
        t0 = time.perf_counter()
        if request.embed:
            body = await self._guarded(self._embeddings(embed_params(self.name, request)))
            return embeddings_completion(self._where(), body, len(request.texts()), self.price,
                                         time.perf_counter() - t0)
        resp = await self._guarded(self._answer(request))
        return self._completion(resp, time.perf_counter() - t0, scoring=request.choices)

    async def _answer(self, request: Request) -> Any:
        """The chat completion for a request, with the two second tries a server may call for:
        json_object where it rejects json_schema, the standard tier where flex has no capacity."""
        with self._calling() as client:
            return await self._answer_on(client, request)

    async def _answer_on(self, client: Any, request: Request) -> Any:
        import openai

        params = self.params(request)
        try:
            try:
                return await self._create(client, params)
            except (openai.BadRequestError, openai.UnprocessableEntityError,
                    openai.InternalServerError) as e:
                # some servers (llama-cpp-python's) reject json_schema with a 422 or even a 500
                if not self._schema_fallback(e, params):
                    raise
                params = self.params(request)
                return await self._create(client, params)
        except openai.RateLimitError as e:
            # flex capacity is unavailable (not a rate limit, which is backed off from as ever):
            # this call goes to the standard tier, at its price
            if not (self.flex_fallback and e.code == "resource_unavailable"):
                raise
            params["service_tier"] = "default"
            return await self._create(client, params)

    async def _create(self, client: Any, params: dict[str, Any]) -> Any:
        """One chat completions call: its rate-limit headers observed, its response parsed.

        The SDK's own client sends it (its auth, base_url, connection pool and error types), as
        a plain POST of the request body: ``chat.completions.create`` would first walk the body
        against its typed parameters (about 0.7 ms a call on these machines, an eighth of the
        engine's time per row at high rates), and the body here is already plain JSON. The answer
        is built into the SDK's ``ChatCompletion`` without validation, as its own parse does."""
        import openai

        raw = await client.post("/chat/completions", body=params, cast_to=http_module().Response)
        self._observe(raw.headers)
        return openai.types.chat.ChatCompletion.construct(**orjson.loads(raw.content))

    async def _embeddings(self, params: dict[str, Any]) -> Any:
        """One embeddings call, sent as :meth:`_create` sends chat completions: a plain POST
        through the SDK's client, the answer read as JSON (``embeddings.create`` would build a
        typed object of every number of every vector)."""
        with self._calling() as client:
            raw = await client.post("/embeddings", body=params, cast_to=http_module().Response)
        self._observe(raw.headers)
        return orjson.loads(raw.content)

    def _schema_fallback(self, e: Any, params: dict[str, Any]) -> bool:
        """On a server that rejects json_schema, switch to json_object for good (auto mode)."""
        if self.supports_schema is not None or self._schema_mode != "json_schema":
            return False
        if (params.get("response_format") or {}).get("type") != "json_schema":
            return False
        text = str(getattr(e, "message", "") or e).lower()
        status = getattr(e, "status_code", 400)
        rejected = "response_format" in text and "json_schema" in text
        if rejected or (status == 400 and ("json_schema" in text or "schema" in text)):
            self._schema_mode = "json_object"
            return True
        return False

    def _completion(
        self, resp: Any, latency: float, batch: bool = False, scoring: tuple[str, ...] | None = None
    ) -> Completion:
        choices = getattr(resp, "choices", None) or []
        if not choices:
            raise TransientModelError(f"{self.id}: the server answered with no choices")
        choice = choices[0]
        msg = choice.message
        text = (msg.content if msg is not None else None) or ""
        refusal = getattr(msg, "refusal", None) if msg is not None else None
        finish: FinishReason
        if refusal:
            finish, text = "refused", refusal
        elif choice.finish_reason == "length":
            finish = "length"
        elif choice.finish_reason == "content_filter":
            finish = "content_filter"
        else:
            finish = "stop"
        logprobs = None
        lp = getattr(choice, "logprobs", None)
        if lp is not None and getattr(lp, "content", None):
            logprobs = [float(t.logprob) for t in lp.content]
        scores = None
        if scoring is not None and finish != "refused":
            first = lp.content[0] if lp is not None and getattr(lp, "content", None) else None
            top = [(str(t.token), float(t.logprob)) for t in (getattr(first, "top_logprobs", None) or [])]
            if not top:
                raise PermanentModelError(
                    f"{self.id} returned no top_logprobs, so it cannot score labels; set "
                    "`scoring: generate` on the step"
                )
            scores = choice_logprobs(top, scoring, text)
            if not any(  # the model did not answer with a label: its scores say nothing
                t.strip(_EDGE) and c.strip(_EDGE).lower().startswith(t.strip(_EDGE).lower())
                for t, _ in top for c in scoring
            ):
                raise PermanentModelError(
                    f"{self.id} answered {text[:40]!r}: none of its first token's top_logprobs "
                    "begins a label; set `scoring: generate` on the step"
                )
        return Completion(
            text=text,
            finish_reason=finish,
            # flex processing is priced at batch rates: the response says which tier served it
            usage=self._usage(getattr(resp, "usage", None),
                              batch=batch or getattr(resp, "service_tier", None) == "flex"),
            model=getattr(resp, "model", None) or self.name,
            latency_s=latency,
            logprobs=logprobs,
            reasoning=_reasoning_of(msg),
            choice_logprobs=scores,
        )

    def _usage(self, u: Any, batch: bool = False) -> Usage:
        if u is None:  # some compatible servers do not report usage: the cost is unknown
            return Usage(cost=None)
        prompt = int(u.prompt_tokens or 0)
        output = int(u.completion_tokens or 0)
        pd = getattr(u, "prompt_tokens_details", None)
        cd = getattr(u, "completion_tokens_details", None)
        cached = int(getattr(pd, "cached_tokens", 0) or 0) if pd is not None else 0
        reasoning = int(getattr(cd, "reasoning_tokens", 0) or 0) if cd is not None else 0
        cost = None
        if self.price is not None:
            cost = self.price.cost(max(0, prompt - cached), output, cached_input=cached, batch=batch)
        return Usage(
            input_tokens=prompt,
            output_tokens=output,
            cached_input_tokens=cached,
            reasoning_tokens=reasoning,
            cost=cost,
        )

    # --- the Batch API -----------------------------------------------------------------------

    def batch_input(self, items: list[tuple[str, Request]]) -> bytes:
        """The JSONL input file of a batch: one line per item, whose body is exactly what
        :meth:`complete` sends for that request."""
        most, most_bytes = self.batch_limits
        self._check_batch(items, "Batch API", most)
        self._batch_endpoint(items)
        lines = []
        for custom_id, request in items:
            if request.embed:
                url, body = EMBEDDINGS_ENDPOINT, embed_params(self.name, request)
            else:
                url, body = _BATCH_ENDPOINT, self.params(request)
            line = {"custom_id": custom_id, "method": "POST", "url": url, "body": body}
            lines.append(json.dumps(line, ensure_ascii=False, separators=(",", ":")))
        data = ("\n".join(lines) + "\n").encode("utf-8")
        self._check_batch_size(len(data), "Batch API", most_bytes)
        return data

    def _batch_endpoint(self, items: list[tuple[str, Request]]) -> str:
        """The one endpoint of a batch's requests: embeddings or chat completions, not both."""
        kinds = {r.embed for _, r in items}
        if len(kinds) > 1:
            raise PermanentModelError(
                f"{self.id}: one batch cannot mix embeddings and chat requests; give the embed "
                "step its own job (or `mode: online`)"
            )
        return EMBEDDINGS_ENDPOINT if kinds == {True} else _BATCH_ENDPOINT

    async def submit_batch(self, items: list[tuple[str, Request]]) -> str:
        """Upload the requests as a JSONL file and create a batch; returns the batch id."""
        data = self.batch_input(items)
        client = self._client()
        f = await self._guarded(client.files.create(
            file=("corral-batch.jsonl", data, "application/jsonl"), purpose="batch",
            timeout=max(self.timeout, _FILE_TIMEOUT),
        ))
        try:
            batch = await self._guarded(client.batches.create(
                input_file_id=f.id, endpoint=self._batch_endpoint(items), completion_window="24h",
            ))
        except ModelError:
            try:  # the upload is of no use without its batch
                await self._guarded(client.files.delete(f.id))
            except ModelError:
                pass
            raise
        return str(batch.id)

    async def _batch(self, batch_id: str) -> Any:
        return await self._guarded(self._client().batches.retrieve(batch_id))

    async def poll_batch(self, batch_id: str) -> BatchStatus:
        """The batch's state: ``ended`` once completed, expired, cancelled or failed."""
        return self._status(await self._batch(batch_id))

    def _status(self, batch: Any) -> BatchStatus:
        status = str(getattr(batch, "status", "") or "")
        detail = status
        if status == "failed":
            why = _batch_errors(batch)
            if why:
                detail = f"failed: {why}"
        return BatchStatus(
            id=str(batch.id),
            state="ended" if status in _BATCH_ENDED else "in_progress",
            counts=batch_counts(getattr(batch, "request_counts", None)),
            detail=self._say(detail),
        )

    async def _file_text(self, file_id: str) -> str:
        timeout = max(self.timeout, _FILE_TIMEOUT)
        content = await self._guarded(self._client().files.content(file_id, timeout=timeout))
        return str(content.text)

    async def fetch_batch(self, batch_id: str) -> list[BatchItem]:
        """Every item of an ended batch: answers parsed as online ones and priced at the batch
        price; failed lines as errors; requests without a result as ``expired``/``cancelled``."""
        batch = await self._batch(batch_id)
        status = str(getattr(batch, "status", "") or "")
        if status not in _BATCH_ENDED:
            raise PermanentModelError(
                f"{self.id}: batch {batch_id} has not ended ({status}); poll it until it has"
            )
        found: dict[str, BatchItem] = {}
        for fid in (getattr(batch, "output_file_id", None), getattr(batch, "error_file_id", None)):
            if not fid:
                continue
            for line in (await self._file_text(fid)).splitlines():
                item = self._batch_line(line)
                if item is not None and item.custom_id not in found:
                    found[item.custom_id] = item
        rc = getattr(batch, "request_counts", None)
        total = int(getattr(rc, "total", 0) or 0) if rc is not None else 0
        if status == "failed" or total == 0 or len(found) < total:
            # requests with no line in either file (read from the input file, only when the
            # counts say some are missing): what happened to the batch happened to them
            if status == "expired":
                why = "expired"
            elif status == "cancelled":
                why = "cancelled"
            elif status == "failed":
                why = "failed: " + (_batch_errors(batch) or "the batch was rejected")
            else:
                why = "errored: the batch output has no result for this request"
            why = self._say(why)
            input_id = getattr(batch, "input_file_id", None)
            if input_id:
                for line in (await self._file_text(input_id)).splitlines():
                    try:
                        cid = json.loads(line).get("custom_id")
                    except (ValueError, AttributeError):
                        continue
                    if isinstance(cid, str) and cid not in found:
                        found[cid] = BatchItem(cid, None, why)
        return list(found.values())

    def _batch_line(self, line: str) -> BatchItem | None:
        """One line of an output or error file."""
        import openai.types.chat

        if not line.strip():
            return None
        try:
            obj = json.loads(line)
        except ValueError:
            return None
        if not isinstance(obj, dict) or not isinstance(obj.get("custom_id"), str):
            return None
        cid = obj["custom_id"]
        err = obj.get("error")
        resp = obj.get("response") if isinstance(obj.get("response"), dict) else None
        if isinstance(err, dict) and err:
            code = err.get("code")
            if code == "batch_expired":
                return BatchItem(cid, None, "expired")
            if code == "batch_cancelled":
                return BatchItem(cid, None, "cancelled")
            return BatchItem(cid, None, self._say(f"errored: {code}: {err.get('message')}"))
        if resp is None:
            return BatchItem(cid, None, "errored: the batch line has neither a response nor an error")
        status = resp.get("status_code")
        body = resp.get("body")
        if status != 200 or not isinstance(body, dict):
            e = body.get("error") if isinstance(body, dict) else None
            if isinstance(e, dict):
                kind = e.get("code") or e.get("type") or "error"
                msg = e.get("message") or ""
            else:
                kind, msg = "error", json.dumps(body)[:500]
            return BatchItem(cid, None, self._say(f"errored: {status} {kind}: {msg}"))
        try:
            if is_embeddings_body(body):
                wanted = len(body["data"])  # (the input's count was checked when it was sent)
                completion = embeddings_completion(self._where(), body, wanted, self.price, 0.0, batch=True)
            else:
                completion = self._completion(openai.types.chat.ChatCompletion.construct(**body), 0.0, batch=True)
        except ModelError as e:
            return BatchItem(cid, None, f"errored: {e}")
        return BatchItem(cid, completion)

    # --- the error boundary: OpenAI's own cases (the shared ladder is HostedModel's) --------

    def _detail(self, e: Any) -> str:
        body = e.body if isinstance(e.body, dict) else {}
        said = body.get("message")
        return said if isinstance(said, str) and said else super()._detail(e)

    def _special_error(self, e: Any, status: int, detail: str, tail: str) -> ModelError | None:
        code = e.body.get("code") if isinstance(e.body, dict) else None
        where = self._where()
        if status == 429 and code == "insufficient_quota":
            return QuotaExceeded(self._say(
                f"{where}: the account is out of quota (429: {detail}){tail}; add credit "
                "or raise the limit in the provider's billing settings, then run again"
            ))
        if code == "context_length_exceeded" and not retryable(status):
            return PermanentModelError(self._say(
                f"{where}: prompt too long for the model's context window (400: {detail}); "
                "shorten the input or lower max_tokens"
            ))
        return None

    def _translate(self, e: BaseException) -> ModelError:
        import openai

        if isinstance(e, openai.APIResponseValidationError):
            return TransientModelError(
                self._say(f"{self._where()}: the server's answer is not a valid chat completion: {e}")
            )
        return super()._translate(e)
