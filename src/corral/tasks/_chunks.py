"""Chunking a long input: where to cut it (:func:`chunk_spans`), and how each field's values
from the chunks are merged back into one answer (:func:`merge_values`).

Chunks end at the best break near their size limit (a blank line, a line end, a sentence end,
a space) and overlap a little, so a value cut by one boundary is whole in the next chunk.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Chunking(BaseModel):
    """How a long input is split: chunks of at most ``size`` characters, each starting up to
    ``overlap`` characters before the end of the one before it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    size: int = Field(default=4000, ge=50, le=10_000_000, description="most characters in one chunk")
    overlap: int = Field(default=200, ge=0, description="characters a chunk repeats from the one before")

    @model_validator(mode="after")
    def _overlap_below_size(self) -> Chunking:
        if self.overlap >= self.size:
            raise ValueError(
                f"chunking.overlap ({self.overlap}) must be smaller than chunking.size ({self.size})"
            )
        return self


_SPACE = re.compile(r"\s")
# preferred places to end a chunk, best first: a blank line, a line end, a sentence end
_BREAKS: tuple[tuple[str, int], ...] = (("\n\n", 0), ("\n", 0), (". ", 1), ("? ", 1), ("! ", 1))


def _boundary(text: str, lo: int, hi: int) -> int:
    """Where to end a chunk that may end anywhere in ``[lo, hi]``: after the last paragraph
    break, else line break, else sentence end, else word; else at ``hi``."""
    for sep, keep in _BREAKS:
        i = text.rfind(sep, lo, hi + len(sep) - keep)
        if i >= lo and i + keep <= hi:
            return i + keep
    for i in range(hi, lo - 1, -1):
        if i < len(text) and text[i].isspace():
            return i
    return hi


def chunk_spans(text: str, size: int, overlap: int) -> list[tuple[int, int]]:
    """``(start, end)`` offsets of overlapping chunks of ``text``, each at most ``size`` long.

    A text of at most ``size`` characters is one chunk, the whole text. Otherwise each chunk ends
    at the last paragraph break in the second half of its window (else line break, sentence end,
    whitespace; a hard cut only inside a word longer than half a chunk), and the next chunk
    starts at the first word beginning in the last ``overlap`` characters of the one before.
    Leading whitespace of a chunk is skipped.
    """
    n = len(text)
    if n <= size:
        return [(0, n)]
    spans: list[tuple[int, int]] = []
    start = 0
    while True:
        while start < n and text[start].isspace():
            start += 1
        if n - start <= size:
            if start < n or not spans:
                spans.append((start, n))
            return spans
        hi = start + size
        lo = start + max(size // 2, overlap + 1)
        end = _boundary(text, lo, hi)
        while end > start + overlap + 1 and text[end - 1].isspace():
            end -= 1
        spans.append((start, end))
        nxt = end - overlap  # > start, since end > start + overlap
        if overlap:
            m = _SPACE.search(text, nxt, end)
            if m is not None:
                nxt = m.end()
        start = nxt


def chunk_text(text: str, size: int, overlap: int) -> list[str]:
    return [text[s:e] for s, e in chunk_spans(text, size, overlap)]


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def merge_values(rule: str, values: list[Any], is_list: bool = False) -> tuple[Any, Any]:
    """Merge one field's per-chunk values (in document order) by ``rule``.

    Returns ``(value, provenance)``: the chunk number (1-based) the value came from, or for
    ``all`` the chunk number of each listed value; ``None`` where no chunk gave a value.
    """
    found = [(i + 1, v) for i, v in enumerate(values) if v is not None]
    if rule == "all":
        out: list[Any] = []
        where: list[int] = []
        seen: set[str] = set()
        for i, v in found:
            for item in v if is_list and isinstance(v, list) else [v]:
                if item is None:
                    continue
                c = _canon(item)
                if c not in seen:
                    seen.add(c)
                    out.append(item)
                    where.append(i)
        return out, where
    if not found:
        return None, None
    if rule == "most_common":
        counts = Counter(_canon(v) for _, v in found)
        best = max(counts.values())
        for i, v in found:  # ties go to the earliest
            if counts[_canon(v)] == best:
                return v, i
    return found[0][1], found[0][0]
