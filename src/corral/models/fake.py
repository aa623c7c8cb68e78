"""``fake``: a scripted model for tests, yours and ours.

By default it answers instantly, never fails, and derives a schema-valid answer from the row's
text, so the same row always gets the same answer. Options inject the trouble real providers
cause::

    model:
      name: fake
      latency: 0.05          # seconds per call (or [min, max] for a uniform range)
      error_rate: 0.1        # share of calls that raise a transient error
      truncation_rate: 0.05  # share answered with a cut-off JSON and finish reason "length"
      refusal_rate: 0.02     # share refused
      invalid_rate: 0.01     # share answered with text that is not JSON
      price_per_call: 0.001  # USD, recorded in the ledger
      seed: 0

``calls`` counts calls in the process (``errors`` those that raised); ``call_log`` (or the ``CORRAL_FAKE_CALL_LOG`` environment
variable) appends each call's request hash to a file, to count calls across processes. From
Python, ``script=callable(request) -> dict | str`` replaces the derived answers.

Noisy labeler
-------------

With ``truth=PATH`` the model becomes a simulated classifier of known accuracy, to benchmark
voting and cascades on a labeled data set (it is a simulation: the answers come from dice, not
from reading the text)::

    model:
      name: fake
      truth: data/banking77/test.csv   # CSV, TSV or JSONL (by extension)
      truth_text: text                 # column holding the input text
      truth_label: category            # column holding the true label
      accuracy: 0.8                    # mean accuracy of one answer over rows, 0 < a < 1
      confusers: 2                     # wrong answers concentrate on this many labels per row
      logprobs: true                   # Completion.logprobs = [log q] of the answered label

A request is simulated when its user text (the user messages joined by newlines, stripped) is a
text of the truth file and its schema has a top-level ``enum`` property (or array of ``enum``)
containing the true label; any other request gets the usual derived answer. For such a row:

* difficulty ``d`` = the first 53 bits of ``sha256(text)`` (big-endian) / 2**53, in [0, 1): it
  depends on the text only, so every model (any seed, any id) finds the same rows hard;
* ``p = 1 - d**g`` with ``g = a / (1 - a)`` is the chance of the true label (its mean over
  uniform ``d`` is exactly ``a``);
* the row's ``confusers`` wrong labels are drawn from the enum (minus the true label) by a hash
  of the text (model-independent), with weights halving from one to the next (2/3, 1/3 for two;
  4/7, 2/7, 1/7 for three); confuser ``i`` gets mass ``(1 - p) * w_i``;
* the answer inverts the cumulative mass (true label first, then the confusers) at a uniform
  ``u`` hashed from the seed, the model id, the text and, only when ``temperature > 0``, the
  request's ``sample``: at temperature 0 a model always gives a row the same answer; above 0
  each sample is an independent draw (the temperature's value does not change the odds).

The label replaces the value of the first top-level ``enum`` property of the derived answer (or
is put as ``[label]`` in the first top-level array-of-``enum`` property). With ``logprobs`` the
completion carries ``logprobs=[log q]``, ``q`` the mass of the answered label, so
``exp(sum(logprobs))`` is the simulated confidence; derived (non-simulated) answers and refusals
carry no logprobs. ``script`` takes precedence over ``truth``; the failure options apply on top.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import math
import os
import random
import re
from collections.abc import Callable
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar

from corral.errors import TransientModelError
from corral.models.base import Capabilities, Completion, Model, Request, Usage

_WORD = re.compile(r"[A-Za-z][A-Za-z'-]{2,}")


class FakeModel(Model):
    capabilities: ClassVar[Capabilities] = Capabilities(
        supports_schema=True, max_concurrency=256, context_window=1_000_000
    )
    #: options naming files, resolved against the job file's folder
    path_options: ClassVar[tuple[str, ...]] = ("truth", "call_log")

    def __init__(
        self,
        arg: str | None = None,
        *,
        latency: float | list[float] = 0.0,
        error_rate: float = 0.0,
        truncation_rate: float = 0.0,
        refusal_rate: float = 0.0,
        invalid_rate: float = 0.0,
        price_per_call: float | str | Decimal | None = 0,
        seed: int = 0,
        call_log: str | None = None,
        script: Callable[[Request], dict[str, Any] | str] | None = None,
        truth: str | None = None,
        truth_text: str = "text",
        truth_label: str = "label",
        accuracy: float = 0.8,
        confusers: int = 2,
        logprobs: bool = False,
    ) -> None:
        self.id = "fake" if arg is None else f"fake:{arg}"
        if isinstance(latency, (list, tuple)):
            if len(latency) != 2:
                raise ValueError("latency must be seconds or [min, max]")
            self.latency = (float(latency[0]), float(latency[1]))
        else:
            self.latency = (float(latency), float(latency))
        for name, rate in (
            ("error_rate", error_rate),
            ("truncation_rate", truncation_rate),
            ("refusal_rate", refusal_rate),
            ("invalid_rate", invalid_rate),
        ):
            if not 0.0 <= float(rate) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
        self.error_rate = float(error_rate)
        self.truncation_rate = float(truncation_rate)
        self.refusal_rate = float(refusal_rate)
        self.invalid_rate = float(invalid_rate)
        self.price = None if price_per_call is None else Decimal(str(price_per_call))
        self.seed = int(seed)
        self.call_log = call_log or os.environ.get("CORRAL_FAKE_CALL_LOG")
        self.script = script
        self.calls = 0
        self.errors = 0
        self._tries: dict[str, int] = {}
        try:
            a = float(accuracy)
        except (TypeError, ValueError):
            a = math.nan
        if not 0.0 < a < 1.0:
            raise ValueError(f"accuracy must be a number strictly between 0 and 1, got {accuracy!r}")
        if isinstance(confusers, bool) or not isinstance(confusers, int) or confusers < 1:
            raise ValueError(f"confusers must be a whole number of at least 1, got {confusers!r}")
        self.accuracy = a
        self.confusers = confusers
        self.logprobs = bool(logprobs)
        self.truth = truth
        #: input text (stripped) -> true label, from the ``truth`` file
        self.labels: dict[str, Any] = (
            {} if truth is None else _load_truth(str(truth), truth_text, truth_label)
        )
        if self.logprobs:
            self.capabilities = replace(FakeModel.capabilities, supports_logprobs=True)  # type: ignore[misc]

    async def complete(self, request: Request) -> Completion:
        self.calls += 1
        key = request.cache_key(self.id)
        tries = self._tries[key] = self._tries.get(key, 0) + 1  # a retry of a call rolls anew
        roll = random.Random(f"{self.seed}:{key}:{tries}")
        lo, hi = self.latency
        delay = lo if lo == hi else roll.uniform(lo, hi)
        if delay > 0:
            await asyncio.sleep(delay)
        self._log(key)
        r = roll.random()
        usage = Usage(input_tokens=_tokens(request), cost=self.price)
        if r < self.error_rate:
            self.errors += 1
            raise TransientModelError("fake model: injected transient error")
        r -= self.error_rate
        if r < self.refusal_rate:
            return self._done("I can't help with that.", "refused", usage, delay)
        r -= self.refusal_rate
        answer, q = self._answer(request)
        lp = [math.log(q)] if self.logprobs and q is not None else None
        text = answer if isinstance(answer, str) else json.dumps(answer)
        if r < self.truncation_rate:
            return self._done(text[: max(1, len(text) // 2)], "length", usage, delay, lp)
        r -= self.truncation_rate
        if r < self.invalid_rate:
            return self._done("Sure! The answer is " + text, "stop", usage, delay, lp)
        return self._done(text, "stop", usage, delay, lp)

    def answer(self, request: Request) -> dict[str, Any] | str:
        """The answer for a request: the script's, a simulated label (``truth``), or one derived
        from the row's text."""
        return self._answer(request)[0]

    def _answer(self, request: Request) -> tuple[dict[str, Any] | str, float | None]:
        """The answer and, for a simulated label, the probability mass the model put on it."""
        if self.script is not None:
            return self.script(request), None
        user = "\n".join(m.content for m in request.messages if m.role == "user")
        rng = random.Random(f"{self.seed}:{hashlib.sha256(user.encode()).hexdigest()}")
        words = _WORD.findall(user) or ["value"]
        schema = request.schema or {"type": "object", "properties": {"text": {"type": "string"}}}
        answer = _generate(schema, rng, words, user)
        if self.labels and isinstance(answer, dict):
            text = user.strip()
            if text in self.labels:
                simulated = self._label(request, text, self.labels[text], schema, answer)
                if simulated is not None:
                    return simulated
        return answer, None

    def _label(
        self, request: Request, text: str, truth: Any, schema: dict[str, Any], answer: dict[str, Any]
    ) -> tuple[dict[str, Any], float] | None:
        """Put a simulated label into ``answer`` (see the module docstring); ``None`` when the
        schema has no enum property holding the true label."""
        slot = _label_slot(schema)
        if slot is None:
            return None
        prop, enum, as_list = slot
        true = next((v for v in enum if v == truth), None)
        if true is None:
            true = next((v for v in enum if str(v) == str(truth)), None)
        if true is None:
            return None
        chosen = _confusers(text, json.dumps(true), json.dumps(enum), self.confusers)
        d = difficulty(text)
        g = self.accuracy / (1.0 - self.accuracy)
        p = 1.0 - d**g if chosen else 1.0  # an enum of the true label alone: always right
        raw = [0.5**i for i in range(len(chosen))]
        total = sum(raw)
        masses = [p] + [(1.0 - p) * w / total for w in raw]
        labels = [true, *chosen]
        parts = [b"draw", str(self.seed), self.id, text]
        if request.temperature > 0:
            parts.append(str(request.sample))
        u = _uniform(*parts)
        pick, cum = len(labels) - 1, 0.0
        for i, m in enumerate(masses):
            cum += m
            if u < cum:
                pick = i
                break
        while masses[pick] <= 0.0 and pick > 0:  # float rounding at the very end of the range
            pick -= 1
        label = labels[pick]
        answer = dict(answer)
        answer[prop] = [label] if as_list else label
        return answer, masses[pick]

    def _done(
        self, text: str, finish: Any, usage: Usage, delay: float, logprobs: list[float] | None = None
    ) -> Completion:
        usage.output_tokens = max(1, len(text) // 4)
        return Completion(
            text=text, finish_reason=finish, usage=usage, model=self.id, latency_s=delay, logprobs=logprobs
        )

    def _log(self, key: str) -> None:
        if self.call_log:
            with open(self.call_log, "a", encoding="utf-8") as f:
                f.write(key + "\n")


def difficulty(text: str) -> float:
    """A row's difficulty in [0, 1) for the noisy labeler: the first 53 bits of ``sha256(text)``
    (UTF-8, the stripped user text; big-endian) divided by 2**53. It depends on the text alone, so
    every simulated model finds the same rows hard."""
    return (int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 11) / 2.0**53


def _hash(*parts: bytes | str) -> bytes:
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, bytes) else part.encode())
        h.update(b"\0")
    return h.digest()


def _uniform(*parts: bytes | str) -> float:
    return (int.from_bytes(_hash(*parts)[:8], "big") >> 11) / 2.0**53


@functools.lru_cache(maxsize=1 << 16)
def _confusers(text: str, true: str, enum: str, k: int) -> tuple[Any, ...]:
    """A row's ``k`` wrong labels, most likely first: the enum's other values (JSON-encoded
    arguments, for the cache) ordered by a hash of the text and the value, so any model confuses
    a row with the same labels."""
    others = [v for v in json.loads(enum) if json.dumps(v) != true]
    keyed = {json.dumps(v): v for v in others}
    order = sorted(keyed, key=lambda v: _hash(b"confuser", text, v))
    return tuple(keyed[v] for v in order[:k])


def _label_slot(schema: dict[str, Any]) -> tuple[str, list[Any], bool] | None:
    """(property, enum values, is a list) of where a classify answer's label goes: the first
    top-level property with an ``enum``, else the first top-level array of ``enum`` items."""
    props = schema.get("properties")
    if not isinstance(props, dict):
        return None
    for name, sub in props.items():
        if isinstance(sub, dict) and isinstance(sub.get("enum"), list):
            return name, [v for v in sub["enum"] if v is not None], False
    for name, sub in props.items():
        items = sub.get("items") if isinstance(sub, dict) else None
        if isinstance(items, dict) and isinstance(items.get("enum"), list):
            return name, [v for v in items["enum"] if v is not None], True
    return None


def _load_truth(path: str, text_col: str, label_col: str) -> dict[str, Any]:
    """Read the labeled file of the ``truth`` option: stripped text -> label (first one wins)."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".csv", ".tsv", ".jsonl", ".ndjson"):
        raise ValueError(
            f"fake model: truth file {path} must be a .csv, .tsv or .jsonl file; rename or convert it"
        )
    if not os.path.isfile(path):
        raise ValueError(
            f"fake model: no truth file at {os.path.abspath(path)}; fix the truth: path "
            "(in a job, a relative path is taken from the job file's folder)"
        )
    from corral.errors import SourceError
    from corral.io import read_table

    try:
        columns, rows = read_table(Path(path).resolve())
    except SourceError as e:
        raise ValueError(
            f"fake model: cannot read truth file {path} ({e}); give a UTF-8 CSV, TSV or JSONL file"
        ) from None
    for option, col in (("truth_text", text_col), ("truth_label", label_col)):
        if col not in columns:
            have = ", ".join(map(repr, columns)) or "none"
            raise ValueError(
                f"fake model: truth file {path} has no column {col!r} (it has {have}); "
                f"set {option}: to the column's name"
            )
    out: dict[str, Any] = {}
    for row in rows:
        text, label = row.get(text_col), row.get(label_col)
        if text is None or label is None or label == "":
            continue
        out.setdefault(str(text).strip(), label)
    if not out:
        raise ValueError(
            f"fake model: truth file {path} has no labeled rows; "
            f"give a file with {text_col!r} and {label_col!r} values"
        )
    return out


def _tokens(request: Request) -> int:
    return max(1, sum(len(m.content) for m in request.messages) // 4)


def _in_text(pattern: str, text: str) -> str | None:
    """The first piece of ``text`` a field's ``pattern`` matches (its anchors dropped): what a
    model that reads the input would answer for a constrained field."""
    core = pattern[1:] if pattern.startswith("^") else pattern
    core = core[:-1] if core.endswith("$") and not core.endswith("\\$") else core
    try:
        m = re.search(core, text)
    except re.error:
        return None
    return m.group(0) if m else None


def _generate(schema: dict[str, Any], rng: random.Random, words: list[str], text: str = "") -> Any:
    """A value that satisfies ``schema``, from the prompt's ``words``; a string field with a
    ``pattern`` takes the first match in the prompt's ``text`` (null when it has none and the
    field is nullable)."""
    if "enum" in schema:
        values = [v for v in schema["enum"] if v is not None] or [None]
        if None in schema["enum"] and rng.random() < 0.2:
            return None
        return rng.choice(values)
    if "anyOf" in schema:
        options = schema["anyOf"]
        non_null = [o for o in options if o.get("type") != "null"]
        patterned = [o for o in non_null if "pattern" in o]
        if len(non_null) < len(options) and patterned and all(
            _in_text(o["pattern"], text) is None for o in patterned
        ):
            return None  # nothing in the input has the field's shape
        if len(non_null) < len(options) and rng.random() < 0.2:
            return None
        return _generate(rng.choice(non_null or options), rng, words, text)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        props = schema.get("properties", {})
        return {k: _generate(v, rng, words, text) for k, v in props.items()}
    if kind == "array":
        items = schema.get("items", {"type": "string"})
        n = rng.randint(1, 2)
        if "enum" in items:
            pool = [v for v in items["enum"] if v is not None]
            return rng.sample(pool, min(n, len(pool)))
        out = [_generate(items, rng, words, text) for _ in range(n)]
        if schema.get("uniqueItems"):
            out = list(dict.fromkeys(json.dumps(x) for x in out))
            out = [json.loads(x) for x in out]
        return out
    if kind == "string":
        if "pattern" in schema:
            found = _in_text(schema["pattern"], text)
            if found is not None:
                return found
        if schema.get("format") == "date":
            return f"20{rng.randint(20, 26)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        word = rng.choice(words)
        limit = schema.get("maxLength")
        return word[:limit] if limit else word
    if kind == "integer":
        return rng.randint(1, 100)
    if kind == "number":
        return round(rng.uniform(1, 500), 2)
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "null":
        return None
    return rng.choice(words)
