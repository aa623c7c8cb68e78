"""The engine's side of a strategy: one record's step, asked through the engine's request layer.

A :class:`StepSolver` renders the step's prompt with a fresh sample index for every call, so the
sequence of requests is a function of the answers already recorded: a resumed record replays its
calls from the cache and takes the same path. It keeps the record's budget and the trace.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson

from corral._client import Client, RequestLayer
from corral._commit import GroupCommitter
from corral._kinds import CALIBRATION, call_kind
from corral._pack import Packer
from corral._schema_check import validator as _validator
from corral.errors import OutputError, PermanentModelError, TransientModelError, UserError
from corral.job import RecordBudget
from corral.models.base import Completion, Message, Request
from corral.store.base import AttemptRecord, LeasedRecord
from corral.strategies.base import Outcome, Sample
from corral.tasks.base import CONTENT_FREE, Task


class OutOfBudget(Exception):
    """The record would pass its per-record budget with one more call."""


@dataclass(slots=True)
class RecordUse:
    """What one record has used so far, over all its steps (paid and replayed calls alike, so a
    resumed record makes the same decisions)."""

    calls: int = 0
    tokens: int = 0
    cost: Decimal = Decimal(0)
    most_output: int = 0
    most_cost: Decimal = Decimal(0)

    def add(self, comp: Completion) -> None:
        u = comp.usage
        self.calls += 1
        self.tokens += u.input_tokens + u.output_tokens
        self.most_output = max(self.most_output, u.output_tokens)
        if u.cost is not None:
            self.cost += u.cost
            self.most_cost = max(self.most_cost, u.cost)

    def check(self, budget: RecordBudget, request: Request) -> None:
        """Raise :class:`OutOfBudget` if one more call (estimated from this record's largest so
        far) could pass a limit."""
        if budget.max_calls is not None and self.calls + 1 > budget.max_calls:
            raise OutOfBudget(f"budget: record max_calls {budget.max_calls:,} reached")
        if budget.max_tokens is not None:
            estimate = _prompt_tokens(request) + self.most_output
            if self.tokens + estimate > budget.max_tokens:
                raise OutOfBudget(
                    f"budget: record max_tokens {budget.max_tokens:,} reached "
                    f"({self.tokens:,} used, next call about {estimate:,})"
                )
        if budget.max_cost is not None and self.cost + self.most_cost > budget.max_cost:
            raise OutOfBudget(f"budget: record max_cost {budget.max_cost} USD reached ({self.cost} used)")


def _prompt_tokens(request: Request) -> int:
    return sum(len(m.content) for m in request.messages) // 4


#: the content-free scores of a run's steps, by request hash, while the run goes on
_CONTENT_FREE: weakref.WeakKeyDictionary[Any, dict[str, asyncio.Future[dict[str, float] | None]]] = (
    weakref.WeakKeyDictionary()
)


#: the calibration offsets of a run's scoring steps, by (step, model), once worked out
_OFFSETS: weakref.WeakKeyDictionary[Any, dict[tuple[str, str, int], list[dict[str, float]]]] = (
    weakref.WeakKeyDictionary()
)


def _choice_scores(comp: Completion, request: Request, model_id: str) -> dict[str, float]:
    """The choices' log-probabilities of a scoring answer, or a model error saying what is wrong."""
    got = comp.choice_logprobs
    wanted = request.choices or ()
    if got is None or any(c not in got for c in wanted):
        raise PermanentModelError(
            f"model {model_id} gave no label scores for a scoring request; set `scoring: generate` on the step"
        )
    return {c: float(got[c]) for c in wanted}


def _log_normalised(scores: dict[str, float]) -> dict[str, float]:
    """Log-probabilities shifted so that their probabilities sum to 1 over the choices."""
    top = max(scores.values())
    total = top + math.log(sum(math.exp(v - top) for v in scores.values()))
    return {c: v - total for c, v in scores.items()}


def low_confidence(step: Task, conf: float | None) -> str | None:
    """Why an answer is held for review under the step's ``min_confidence``, or ``None``."""
    floor = step.min_confidence
    if floor is None:
        return None
    if conf is None:
        return f"confidence unknown < {floor:.2f} (the model gave no log-probabilities)"
    if conf < floor:
        return f"confidence {conf:.2f} < {floor:.2f}"
    return None


def check_scoring(job: Any, model: Any, extra: dict[str, Any]) -> None:
    """The job errors of ``scoring: likelihood``, ``min_confidence`` and ``embed`` on the models a
    step calls, found before any row is asked: one line naming the fix (an expert's, by its name)."""
    for step, label in ((v, _label(s, v)) for s in job.steps for v in s.variants()):
        used = []
        for st in step.stages():
            name = st.model or step.strategy.model
            used.append((st, model if name is None else extra[name][0]))
        if step.task == "embed":
            lacking = [m.id for _, m in used if not m.capabilities.supports_embeddings]
            if lacking:
                raise UserError(
                    f"{label}: task `embed` needs a model with an embeddings API (openai:, local, "
                    f"fake); {', '.join(dict.fromkeys(lacking))} has none; set the job's `model:` (or "
                    "the strategy's) to one, e.g. openai:text-embedding-3-small"
                )
        if step.scoring == "likelihood" and not any(m.capabilities.supports_scoring for _, m in used):
            # (a stage on a model that cannot score generates its answer instead)
            ids = ", ".join(dict.fromkeys(m.id for _, m in used))
            raise UserError(
                f"{label}: `scoring: likelihood` needs a model that scores labels "
                f"(local, or an openai: model); {ids} does not; set `scoring: generate`"
            )
        if step.min_confidence is not None:
            def gives(st: Any, m: Any, step: Any = step) -> bool:
                caps = m.capabilities
                return st.name == "vote" or caps.supports_logprobs or step.uses_likelihood(caps)

            if not any(gives(st, m) for st, m in used):
                ids = ", ".join(dict.fromkeys(m.id for _, m in used))
                hint = ("`scoring: likelihood`, " if step.can_score else "") + "a `vote` strategy"
                raise UserError(
                    f"{label}: `min_confidence` needs a confidence, which {ids} does not "
                    f"give this step; use {hint} or a model with `logprobs: true`"
                )


def _label(step: Any, variant: Any) -> str:
    """How a check names a step, or one of its experts: ``step `reply` (expert `german`)``."""
    route = next((e.route for e in step.routes() if e.step is variant), None)
    return f"step `{step.name}`" + (f" (expert `{route}`)" if route else "")


def confidence(comp: Completion) -> float | None:
    """The probability of the answer's tokens, from the model's log-probabilities."""
    if not comp.logprobs:
        return None
    return math.exp(max(-700.0, sum(comp.logprobs)))


@dataclass(slots=True)
class _Held:
    """A usable answer's attempt, held back until the next event (see :meth:`StepSolver.accepted`)."""

    n: int
    h: str | None
    outcome: str
    detail: str | None
    data: dict[str, Any]
    answer: dict[str, Any]


class StepSolver:
    """Implements :class:`corral.strategies.base.Solver` for one record's step (or chunk): asks
    through the run's request layer and writes the trace through the worker's committer."""

    def __init__(
        self, layer: RequestLayer, committer: GroupCommitter, rec: LeasedRecord, step: Task,
        context: dict[str, Any], label: str, use: RecordUse, *, audit: bool = False,
    ) -> None:
        self.layer = layer
        self.committer = committer
        self.key = rec.key  # the record's key: all the solver needs of it
        self.step = step
        self.context = context
        self.label = label
        self.use = use
        self.seq = 0  # sample index of the next call: distinct calls get distinct cache keys
        self.path: list[str] = [step.strategy.name]
        self.best: tuple[dict[str, Any], float | None, str | None] | None = None
        self.first_hash: str | None = None
        self._base: Request | None = None
        # the latest usable answer's attempt, held back until the next event: when it is the
        # answer accepted as it is (a single call), the acceptance is written on the same row
        self._pending: _Held | None = None
        # what the ledger's `kind` of each call is made of (corral._kinds.call_kind): the row is
        # a System 1 audit, the strategy escalated past a cascade's first stage, samples asked
        self.audit = audit
        self.escalated = False
        self.samples = 0
        #: what the trace keeps of the last call's packing (corral._pack), or None
        self._packed: dict[str, Any] | None = None

    # --- the Solver protocol ----------------------------------------------------------

    @property
    def input_text(self) -> str:
        return "\n".join(m.content for m in self._request(0).messages if m.role == "user")

    async def sample(
        self, *, model: str | None = None, temperature: float | None = None,
        repair: tuple[dict[str, Any], list[str]] | None = None, role: str = "sample",
    ) -> Sample:
        step = self.step
        client = self.layer.client(model)
        if repair is None and not temperature and step.uses_likelihood(client.model.capabilities):
            return await self._scored(client, role)
        reason = "no answer"
        last: str | None = None
        grown = False
        tries = 0
        role = "repair" if repair is not None else role
        if repair is None:
            self.samples += 1
        for tries in range(1, step.max_attempts + 1):  # noqa: B007 (read after the loop)
            n = self.seq
            self.seq += 1
            request = self._request(n)
            if temperature is not None:
                request = dataclasses.replace(request, temperature=temperature)
            elif last is not None and request.temperature == 0:
                # the same prompt at temperature 0 repeats itself: a retry samples a little
                request = dataclasses.replace(request, temperature=0.3)
            if repair is not None:
                request = _with_repair(request, *repair, reasoning=step.reasoning is True)
            grown = grown or last == "truncated"
            if grown:  # a cut-off answer gets twice the room to finish (once, not growing on)
                request = dataclasses.replace(request, max_tokens=request.max_tokens * 2)
            try:
                h, comp = await self._call(request, n, client, kind=self._kind(role, retry=tries > 1),
                                           pack=repair is None)
            except (TransientModelError, PermanentModelError) as e:
                reason = f"model error: {e}"
                self._attempt(n, None, "error", str(e), role=role)
                break
            try:
                answer = step.parse(comp, request)
                grounding = step.ground(answer, self.context)  # may null values, or refuse them
            except OutputError as e:
                reason = str(e)
                last = e.kind
                self._attempt(n, h, e.kind, str(e), role=role)
                continue
            reasoning = comp.reasoning
            if step.reasoning is True:
                reasoning = answer.pop("reasoning", None)
            problems = step.failed_checks(answer, self.context)
            conf = confidence(comp)
            data: dict[str, Any] = {
                "role": role, "answer": step.traced(answer), "model": client.model.id,
                "strategy": self.strategy,
            }
            if conf is not None:
                data["confidence"] = conf
            if problems:
                data["problems"] = problems
            if grounding is not None:
                data["grounding"] = grounding
            if reasoning is not None:
                data["reasoning"] = reasoning
            if self._packed is not None:
                data.update(self._packed)
            self.flush()
            self._pending = _Held(n, h, "checks" if problems else "ok", "; ".join(problems) or None, data, answer)
            if self.first_hash is None:
                self.first_hash = h
            return Sample(answer, problems, None, conf, client.model.id, reasoning)
        return Sample(
            None, error=f"{reason} (after {tries} attempt{'s' if tries > 1 else ''})",
            model=client.model.id,
        )

    async def _scored(self, client: Client, role: str) -> Sample:
        """One answer by likelihood: the step's scoring requests, calibrated against the same
        requests for a content-free input when the step calibrates (``calibrate:``)."""
        step = self.step
        n = self.seq
        self.seq += 1
        self.samples += 1
        kind = self._kind(role)
        h0: str | None = None
        scores: list[dict[str, float]] = []
        content_free: list[dict[str, float]] | None = None
        caps = client.model.capabilities
        try:
            if step.calibrates(caps):
                content_free = await self._content_free_scores(n, client)
            for i, request in enumerate(step.score_requests(self.context, sample=n)):
                if caps.exact_scoring:  # a searching model stops once the calibrated answer is settled
                    offsets = content_free[i] if content_free else {}
                    request = dataclasses.replace(
                        request, choice_offsets=tuple(offsets.get(c, 0.0) for c in request.choices or ()))
                h, comp = await self._call(request, n, client, batch=False, kind=kind)
                h0 = h0 or h
                scores.append(_choice_scores(comp, request, client.model.id))
        except (TransientModelError, PermanentModelError) as e:
            self._attempt(n, h0, "error", str(e), role=role)
            return Sample(None, error=f"model error: {e}", model=client.model.id)
        answer, conf, shown = step.from_scores(scores, content_free)
        problems = step.failed_checks(answer, self.context)
        data: dict[str, Any] = {
            "role": role, "answer": answer, "model": client.model.id, "strategy": self.strategy,
            "confidence": conf, "scoring": "likelihood", "calibrated": content_free is not None,
            "scores": shown,
        }
        if problems:
            data["problems"] = problems
        self.flush()
        self._pending = _Held(n, h0, "checks" if problems else "ok", "; ".join(problems) or None, data, answer)
        if self.first_hash is None:
            self.first_hash = h0
        return Sample(answer, problems, None, conf, client.model.id)

    async def _content_free_scores(self, n: int, client: Client) -> list[dict[str, float]]:
        """Each scoring request's offsets: per choice, the mean over the content-free inputs
        (:data:`CONTENT_FREE`) of its log-probability normalised over the choices. The same for
        every row of the step (its inputs are all replaced), so worked out once per run."""
        memo = _OFFSETS.setdefault(self.layer, {})
        # by the step object: an expert of the step (same name) has its own prompts and labels
        key = (self.step.name, client.model.id, id(self.step))
        got = memo.get(key)
        if got is None:
            got = memo[key] = await self._offsets(n, client)
        return got

    async def _offsets(self, n: int, client: Client) -> list[dict[str, float]]:
        per_input = []
        for filler in CONTENT_FREE:
            free = self.step.content_free(self.context, filler)
            per_input.append([await self._content_free(r, n, client, filler)
                              for r in self.step.score_requests(free, sample=0)])
        out = []
        for i, first in enumerate(per_input[0]):
            normed = [_log_normalised(got[i]) for got in per_input]
            out.append({c: sum(x[c] for x in normed) / len(normed) for c in first})
        return out

    async def _content_free(self, request: Request, n: int, client: Client, filler: str) -> dict[str, float]:
        """The scores of a content-free request: asked once per run (the first record to need it
        makes the call, recorded against it; the others wait for it), replayed on a resume."""
        memo = _CONTENT_FREE.setdefault(self.layer, {})
        key = request.cache_key(client.model.id)
        while True:
            got = memo.get(key)
            if got is None:
                break
            scores = await asyncio.shield(got)
            if scores is not None:
                return scores
            # the call that was finding it out failed: this record tries itself
        fut: asyncio.Future[dict[str, float] | None] = asyncio.get_running_loop().create_future()
        memo[key] = fut
        try:
            h, comp = await self._call(request, n, client, batch=False, kind=CALIBRATION)
            scores = _choice_scores(comp, request, client.model.id)
        except BaseException:
            del memo[key]
            fut.set_result(None)
            raise
        fut.set_result(scores)
        shown = {k: round(math.exp(v), 4) for k, v in scores.items()}
        self._attempt(n, h, "calibration", f"content-free input ({filler!r}) scored once for the run",
                      role="calibrate", scores=shown, model=client.model.id)
        return scores

    async def ask_json(
        self, messages: list[Message], schema: dict[str, Any], *, model: str | None, role: str
    ) -> dict[str, Any] | None:
        client = self.layer.client(model)
        n = self.seq
        self.seq += 1
        request = Request(messages=tuple(messages), schema=schema, max_tokens=200, temperature=0.0, sample=n)
        try:
            h, comp = await self._call(request, n, client, kind=self._kind(role, sample=self.samples + 1))
        except (TransientModelError, PermanentModelError) as e:
            self._attempt(n, None, "error", str(e), role=role)
            return None
        try:
            data = json.loads(comp.text, strict=False)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            errors = list(_validator(schema)[0].iter_errors(data))
            if errors:
                raise ValueError(errors[0].message)
        except ValueError as e:
            self._attempt(n, h, "invalid", f"{role} answer unusable: {e}", role=role)
            return None
        self._attempt(n, h, "ok", None, role=role, answer=data, model=client.model.id)
        return data

    def check(self, answer: dict[str, Any]) -> list[str]:
        return self.step.failed_checks(answer, self.context)

    def note(self, event: str, detail: str | None = None, **data: Any) -> None:
        if event == "escalate" and data.get("escalate"):  # a cascade hands the row on
            self.escalated = True
        self.flush()
        self._attempt(self.seq, None, event, detail, **data)

    def offer(
        self, answer: dict[str, Any] | None, confidence: float | None, reasoning: str | None = None
    ) -> None:
        if answer is not None:
            self.best = (answer, confidence, reasoning)

    @contextlib.contextmanager
    def within(self, label: str) -> Iterator[None]:
        self.path.append(label)
        try:
            yield
        finally:
            self.path.pop()

    # --- the engine's side ------------------------------------------------------------

    def accepted(self, out: Outcome) -> None:
        """Record the accepted answer: what ``corral export traces`` turns into a worked example.

        When it is the latest call's answer as it is (a `single` step), the acceptance goes on
        that call's row (``data.accepted``); otherwise it is an ``accepted`` event of its own."""
        p = self._pending
        if p is not None and p.answer is out.answer and p.outcome == "ok":
            self._pending = None
            p.data["accepted"] = True
            p.data["calls"] = self.seq
            self._write(p.n, p.h, p.outcome, p.detail, p.data)
            return
        self.flush()
        answer = out.answer or {}
        self._attempt(
            self.seq, self.first_hash, "accepted", None, answer=answer, confidence=out.confidence,
            reasoning=out.reasoning, calls=self.seq,
        )

    @property
    def strategy(self) -> str:
        return "/".join(self.path)

    def _request(self, n: int) -> Request:
        if self._base is None:
            self._base = _with_reasoning(self.step, self.step.render(self.context, sample=0))
        if n == 0:
            return self._base
        return _with_reasoning(self.step, self.step.render(self.context, sample=n))

    def flush(self) -> None:
        """Write the attempt held back for a possible acceptance (before any later event)."""
        p, self._pending = self._pending, None
        if p is not None:
            self._write(p.n, p.h, p.outcome, p.detail, p.data)

    def _kind(self, role: str, *, retry: bool = False, sample: int | None = None) -> str:
        """The ledger's kind of the call about to be made (:func:`corral._kinds.call_kind`)."""
        return call_kind(role, retry=retry, sample=self.samples if sample is None else sample,
                         escalated=self.escalated, audited=self.audit)

    async def _call(
        self, request: Request, n: int, client: Client, batch: bool | None = None, kind: str | None = None,
        pack: bool = False,
    ) -> tuple[str, Completion]:
        """One answer through the request layer; ``pack``: a sample the step's ``pack:`` may ask
        together with other rows' (corral._pack; what the trace keeps of it in ``_packed``)."""
        self.flush()
        layer = self.layer
        budget = layer.budget.per_record
        if budget is not None:
            self.use.check(budget, request)
        if batch is None:
            batch = self.step.mode == "batch" and client is layer.main
        self._packed = None
        if pack and self.step.pack > 1 and not batch:
            h, comp, self._packed = await Packer.of(layer).ask(
                self.committer, self.step, (self.key, self.label, n), request, client, (self.strategy, kind))
        else:
            h, comp = await layer.ask(
                self.committer, self.key, self.label, n, request, batch, client, self.strategy, kind)
        self.use.add(comp)
        return h, comp

    def _attempt(self, n: int, h: str | None, outcome: str, detail: str | None, **data: Any) -> None:
        self.flush()
        self._write(n, h, outcome, detail, {k: v for k, v in data.items() if v is not None})

    def _write(self, n: int, h: str | None, outcome: str, detail: str | None, data: dict[str, Any]) -> None:
        data.setdefault("strategy", self.strategy)
        self.committer.add(attempt=AttemptRecord(
            self.layer.run_id, self.key, self.label, n, h, outcome, detail,
            data=orjson.dumps(data, default=str).decode(),
        ))


#: appended to the system prompt of a step with ``reasoning: true``
REASONING_NOTE = (
    "\n\nFirst think briefly, step by step, in the `reasoning` field; then give the answer in the "
    "other fields."
)


def _with_reasoning(step: Task, request: Request) -> Request:
    """Add the step's reasoning: a ``reasoning`` field before the answer, or the provider's setting."""
    if step.reasoning is True and request.schema is not None:
        schema = dict(request.schema)
        schema["properties"] = {
            "reasoning": {"type": "string", "description": "brief step-by-step reasoning"},
            **(schema.get("properties") or {}),
        }
        schema["required"] = ["reasoning", *[r for r in schema.get("required", []) if r != "reasoning"]]
        first, *rest = request.messages
        if first.role == "system":
            messages = (Message("system", first.content + REASONING_NOTE), *rest)
        else:
            messages = request.messages
        return dataclasses.replace(request, schema=schema, messages=messages)
    if isinstance(step.reasoning, str):
        return dataclasses.replace(request, reasoning_effort=step.reasoning)
    return request


def _with_repair(
    request: Request, answer: dict[str, Any], problems: list[str], reasoning: bool
) -> Request:
    """The step's prompt, the latest answer and its problems: the context does not grow."""
    shown = {k: v for k, v in answer.items() if k != "reasoning"} if not reasoning else answer
    listing = "\n".join(f"- {p}" for p in problems)
    return dataclasses.replace(
        request,
        messages=(
            *request.messages,
            Message("assistant", json.dumps(shown, ensure_ascii=False)),
            Message(
                "user",
                f"That answer has problems:\n{listing}\nReply with the corrected answer as JSON only.",
            ),
        ),
    )
