"""The noisy labeler: the ``fake`` model as a simulated classifier of known accuracy.

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

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from corral.models.base import Request

__all__ = ["Labeler", "difficulty"]


class Labeler:
    """Labels drawn for the rows of a truth file, with the accuracy and confusions above."""

    def __init__(
        self, truth: str, text_col: str, label_col: str, accuracy: float, confusers: int, seed: int, model_id: str
    ) -> None:
        #: input text (stripped) -> true label, from the ``truth`` file
        self.labels: dict[str, Any] = _load_truth(truth, text_col, label_col)
        self.accuracy = accuracy
        self.confusers = confusers
        self.seed = seed
        self.model_id = model_id

    def label(
        self, request: Request, user_text: str, schema: dict[str, Any], answer: dict[str, Any]
    ) -> tuple[dict[str, Any], float] | None:
        """``answer`` with a simulated label put in, and the mass the model put on that label;
        ``None`` when the text is not in the truth file or the schema has no enum property
        holding its true label."""
        text = user_text.strip()
        if text not in self.labels:
            return None
        truth = self.labels[text]
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
        parts: list[bytes | str] = [b"draw", str(self.seed), self.model_id, text]
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


