"""``corral estimate``: what a job will cost, before it runs.

The static estimate calls nothing. It renders every step's prompt for the source's rows (the
first :data:`RENDER_ROWS`; the mean per row is scaled to the whole source), counts the prompt's
tokens with the model's own tokenizer where Corral has it offline (the GGUF's, for ``local``
models; tiktoken for ``openai:`` models when it is installed and its encoding file is already in
its cache, since nothing may be downloaded at run time) and otherwise approximates them as
characters / 4 (said so in the output). Per call the output is a range: from the tokens of a
typical schema-valid answer (low) to twice that plus 16 (high), capped at the step's
``max_tokens``; per row the calls are the strategy's ``expected_calls()`` range (a cascade's
low is its first stage, its high every stage, each priced with its stage's model). Prices come
from the price table (or a model's ``prices``, or the fake model's ``price_per_call``); a price
that is unknown makes the cost unknown, never $0. Three tiers: online; batch (the provider's
batch discount); flex (OpenAI's flex processing, billed at batch rates; other providers: n/a).

With ``--sample N`` the first N rows run for real (recorded in the job's store: the later
``corral run`` replays them, paying nothing again) and the estimate is calibrated on them: the
sample's cost per row, its mean m and standard deviation s; the rest R rows cost R*m, with a 95%
range of ±1.96*sqrt(R*s² + R²*s²/N) (the rows' spread and the mean's uncertainty); the total
adds what the sample cost.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

from corral._answers import generate
from corral._build_models import make_model
from corral.io import open_source
from corral.job import Job
from corral.models.base import Model, Request
from corral.tasks.base import Task

#: rows rendered for the static estimate; the mean per row is scaled to the whole source
RENDER_ROWS = 1000
#: tokens a chat template adds around each message (role markers), a documented approximation
PER_MESSAGE = 4
TIERS = ("online", "batch", "flex")

Money = Decimal | None
Range = tuple[Money, Money]


class Tokenizer:
    """Counts tokens with the model's own tokenizer where it is available offline."""

    def __init__(self, model: Model) -> None:
        self.name = "approximation: characters / 4"
        self.exact = False
        self._count: Callable[[str], int] = lambda text: max(1, math.ceil(len(text) / 4))
        path = getattr(model, "path", None)
        if model.id.startswith("local") and isinstance(path, Path):
            self._gguf(path)
        elif model.id.startswith("openai:"):
            self._tiktoken(model.id.partition(":")[2].split("@")[0])

    def _gguf(self, path: Path) -> None:
        try:
            from llama_cpp import Llama
        except ImportError:
            return
        llama = Llama(model_path=str(path), vocab_only=True, verbose=False)
        self._count = lambda text: len(llama.tokenize(text.encode("utf-8"), add_bos=False, special=False))
        self.name, self.exact = f"the model's own ({path.name})", True

    def _tiktoken(self, name: str) -> None:
        try:
            import tiktoken  # type: ignore[import-not-found]  # optional: an openai extra
        except ImportError:
            return
        cache = os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR")
        if not cache or not any(Path(cache).iterdir()):  # it would download: not at run time
            return
        try:
            enc = tiktoken.encoding_for_model(name)
        except Exception:  # an unknown model, or a file it would have to fetch
            return
        self._count = lambda text: len(enc.encode(text, disallowed_special=()))
        self.name, self.exact = f"tiktoken ({enc.name})", True

    def request(self, request: Request) -> int:
        return sum(self._count(m.content) + PER_MESSAGE for m in request.messages)

    def text(self, text: str) -> int:
        return self._count(text)


@dataclass(slots=True)
class Leg:
    """One model's share of a step: its calls per row (low, high) and tokens per call."""

    model: str
    calls: tuple[float, float]
    input_tokens: float  # mean per call
    output_tokens: tuple[int, int]
    tokenizer: str
    cost: dict[str, Range]  # tier -> per-row (low, high)

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "calls_per_row": list(self.calls), "input_tokens_per_call": round(self.input_tokens, 1),
                "output_tokens_per_call": list(self.output_tokens), "tokenizer": self.tokenizer,
                "cost_per_row": {t: [_f(lo), _f(hi)] for t, (lo, hi) in self.cost.items()}}


@dataclass(slots=True)
class Estimate:
    job: str
    rows: int
    rendered: int
    steps: dict[str, list[Leg]]
    total: dict[str, Range]  # tier -> (low, high) for every row
    notes: list[str] = field(default_factory=list)
    sample: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"job": self.job, "rows": self.rows, "rendered_rows": self.rendered,
                "steps": {s: [leg.to_json() for leg in legs] for s, legs in self.steps.items()},
                "total_usd": {t: [_f(lo), _f(hi)] for t, (lo, hi) in self.total.items()},
                "notes": self.notes, "sample": self.sample}


def _f(d: Money) -> float | None:
    return None if d is None else float(d)


def _price_call(model: Model, tier: str, tokens_in: float, tokens_out: float) -> Money:
    """One call's cost on ``tier``: the model's token prices, or a per-call price."""
    price = getattr(model, "price", None)
    if price is None:
        return Decimal(0) if model.id.startswith("local") else None
    provider = model.id.partition(":")[0]
    if isinstance(price, Decimal):  # the fake model's price_per_call
        return price if tier != "flex" else None
    if tier == "flex" and provider != "openai":
        return None
    cost: Decimal = price.cost(round(tokens_in), round(tokens_out), batch=tier != "online")
    return cost


def _legs(job: Job, step: Task) -> list[tuple[str | None, tuple[float, float]]]:
    """(model name or None for the job's model, calls per row) for the step's strategy; a
    cascade's stages each with their own model (low: the first stage only)."""
    strat = step.strategy
    stages = getattr(strat, "stages", None)
    if not stages:
        return [(strat.model, strat.expected_calls())]
    out = []
    for i, st in enumerate(stages):
        lo, hi = st.expected_calls()
        out.append((st.model or strat.model, (lo if i == 0 else 0.0, hi)))
    return out


def rows_of(job: Job, limit: int | None = None) -> Iterator[dict[str, Any]]:
    for r in open_source(job.source, job.base_dir).rows():
        if limit is not None and r.ordinal >= limit:
            return
        if r.data is not None:
            yield r.data


def estimate(job: Job, model: Model, make: Callable[..., Model] = make_model) -> Estimate:
    """The static estimate (see the module's docstring); calls nothing."""
    total_rows = sum(1 for _ in rows_of(job))
    steps: list[Task] = job.steps
    tokenizers: dict[str, Tokenizer] = {}
    models: dict[str | None, Model] = {None: model}
    rendered: list[dict[str, Any]] = list(rows_of(job, RENDER_ROWS))
    notes: list[str] = []
    out: dict[str, list[Leg]] = {}
    total: dict[str, list[Money]] = {t: [Decimal(0), Decimal(0)] for t in TIERS}
    rng = random.Random(0)
    for i, step in enumerate(steps):
        if i and any(n[0] in {s.name for s in steps[:i]} for n in step.names_used()):
            notes.append(f"step `{step.name}` reads earlier steps' answers: rendered without them (approximate)")
        legs = []
        for name, calls in _legs(job, step):
            m = models.get(name)
            if m is None:
                m = models[name] = make(job.model_ref(name), job.base_dir)
            tok = tokenizers.get(m.id) or tokenizers.setdefault(m.id, Tokenizer(m))
            reqs = [step.render(dict(row), sample=0) for row in rendered]
            if step.pack > 1 and len(reqs) > 1:  # a packed call's prompt, split over its rows
                parts = [reqs[j:j + step.pack] for j in range(0, len(reqs), step.pack)]
                counts = [tok.request(step.pack_request(p)) if len(p) > 1 else tok.request(p[0]) for p in parts]
                tokens_in = sum(counts) / len(reqs)
            else:
                counts = [tok.request(r) for r in reqs] or [0]
                tokens_in = sum(counts) / len(counts)
            # the requests' own output limit (0 for embeddings, which have no output tokens)
            cap = reqs[0].max_tokens if reqs else step.max_tokens
            typical = tok.text(orjson.dumps(generate(step.output_schema(), rng, [], "")).decode()) if cap else 0
            out_lo, out_hi = min(typical, cap), min(2 * typical + 16, cap)
            cost: dict[str, Range] = {}
            for t in TIERS:
                lo = _price_call(m, t, tokens_in, out_lo)
                hi = _price_call(m, t, tokens_in, out_hi)
                cost[t] = (None if lo is None else lo * Decimal(str(calls[0])),
                           None if hi is None else hi * Decimal(str(calls[1])))
                for j, v in enumerate(cost[t]):
                    cur = total[t][j]
                    total[t][j] = None if v is None or cur is None else cur + v * total_rows
            legs.append(Leg(m.id, calls, tokens_in, (out_lo, out_hi), tok.name, cost))
        out[step.name] = legs
    if any(s.pack > 1 for s in steps):
        notes.append("packed steps (`pack:`): input tokens are each row's share of its call's prompt")
    if total_rows > len(rendered):
        notes.append(f"prompts rendered for the first {len(rendered):,} of {total_rows:,} rows; "
                     "their mean is scaled to every row")
    return Estimate(job.name, total_rows, len(rendered), out,
                    {t: (lo, hi) for t, (lo, hi) in total.items()}, notes)


def calibrate(est: Estimate, per_row: list[Money], sample_cost: Money, tiers: dict[str, Decimal | None]) -> None:
    """Set ``est.sample`` from the sample's per-row costs (see the module's docstring);
    ``tiers`` is the factor of each tier's price to the online one (None: n/a)."""
    n = len(per_row)
    rest = max(0, est.rows - n)
    known: list[Decimal] = [c for c in per_row if c is not None]
    if n == 0 or len(known) < n or sample_cost is None:
        est.sample = {"rows": n, "cost_usd": _f(sample_cost), "total_usd": None,
                      "note": "some sampled call's price is unknown: the total is unknown"}
        return
    mean = sum(known, Decimal(0)) / n
    var = sum(((c - mean) ** 2 for c in known), Decimal(0)) / max(1, n - 1)
    spread = Decimal("1.96") * (Decimal(rest) * var + Decimal(rest) ** 2 * var / n).sqrt()
    mid = sample_cost + mean * rest
    totals: dict[str, list[float] | None] = {}
    for t, k in tiers.items():
        if k is None:
            totals[t] = None
            continue
        lo, m, hi = (max(sample_cost, mid - spread), mid, mid + spread)
        # the sample was paid online; the rest on the tier's prices
        totals[t] = [float(sample_cost + (v - sample_cost) * k) for v in (lo, m, hi)]
    est.sample = {"rows": n, "cost_usd": float(sample_cost), "cost_per_row": float(mean),
                  "rest_rows": rest, "total_usd": totals}
