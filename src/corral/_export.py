"""``corral export traces``: a run's accepted answers as worked examples for fine-tuning.

Every accepted answer leaves an ``accepted`` event in the record's trace (see
:meth:`corral._solver.StepSolver.accepted`): the answer, its confidence, the reasoning and the
request hash of the step's first sample, whose recorded request holds the step's system and user
prompt. :func:`sft_examples` turns the ``done`` records' events into chat-format examples; it reads
the store through :meth:`Store.iter_records` and :meth:`Store.record_calls` only.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from corral._solver import REASONING_NOTE
from corral.store.base import RunInfo, Store, TraceEvent

FORMATS = ("sft",)


@dataclass(slots=True)
class ExportStats:
    """What an export found: written examples, the records they came from, and what was left out."""

    examples: int = 0
    records: int = 0  # done records that gave at least one example
    with_reasoning: int = 0
    no_prompt: int = 0  # accepted answers whose prompt is not in the store's response cache


def step_names(info: RunInfo) -> list[str]:
    """The run's step names, in job order."""
    return [str(s.get("name")) for s in (info.spec.get("steps") or []) if isinstance(s, dict)]


def accepted_events(trace: list[TraceEvent]) -> list[TraceEvent]:
    """The ``accepted`` event of each step label, in trace order (the last one of a label wins: a
    record processed twice, after a crash, replays to the same answer)."""
    found: dict[str, TraceEvent] = {}
    for ev in trace:
        # an event of its own, or (a single call's answer accepted as it is) the call's own row
        if ev.outcome == "accepted" or ev.info.get("accepted") is True:
            found[ev.step] = ev
    return list(found.values())


def prompt_messages(
    request: dict[str, Any] | None, reasoning: bool = True
) -> list[dict[str, str]] | None:
    """The first system message and the first user message of a recorded request (a repair's
    assistant and user turns come after them and are left out). Without ``reasoning``, the
    instruction to reason first that ``reasoning: true`` adds is taken out of the system prompt,
    so the example asks for what its answer gives."""
    if not request:
        return None
    messages = request.get("messages") or []
    out: list[dict[str, str]] = []
    if messages and messages[0].get("role") == "system":
        system = messages[0]["content"]
        if not reasoning:
            system = system.replace(REASONING_NOTE, "")
        out.append({"role": "system", "content": system})
    user = next((m for m in messages if m.get("role") == "user"), None)
    if user is None:
        return None
    out.append({"role": "user", "content": user["content"]})
    return out


def assistant_content(answer: dict[str, Any], reasoning: str | None) -> str:
    """The answer as compact JSON; with ``reasoning``, a ``reasoning`` key placed first."""
    if reasoning and "reasoning" not in answer:
        answer = {"reasoning": reasoning, **answer}
    return json.dumps(answer, ensure_ascii=False, separators=(",", ":"))


def sft_examples(
    store: Store, info: RunInfo, *, step: str | None = None, reasoning: bool = False,
    stats: ExportStats | None = None,
) -> Iterator[dict[str, Any]]:
    """Chat-format examples, one per accepted answer of each ``done`` record, then of each
    ``skipped`` one (a filter's "no" is an accepted answer too); of ``step`` only when given:
    ``{"messages": [system, user, assistant], "metadata": {...}}``."""
    stats = stats if stats is not None else ExportStats()
    for state in ("done", "skipped"):
        yield from _state_examples(store, info, state, step, reasoning, stats)


def _state_examples(
    store: Store, info: RunInfo, state: str, step: str | None, reasoning: bool, stats: ExportStats
) -> Iterator[dict[str, Any]]:
    for chunk in store.iter_records(info.id, state):
        for rec in chunk:
            got = 0
            for ev in accepted_events(store.record_calls(info.id, rec.key)):
                name, part = ev.step_name, ev.part
                if step is not None and name != step:
                    continue
                data = ev.info
                answer = data.get("answer")
                if not isinstance(answer, dict):
                    continue
                messages = prompt_messages(ev.request, reasoning)
                if messages is None:
                    stats.no_prompt += 1
                    continue
                why = data.get("reasoning") if reasoning else None
                if why and "reasoning" not in answer:
                    stats.with_reasoning += 1
                meta: dict[str, Any] = {
                    "run": info.id,
                    "key": rec.key,
                    "step": name,
                    "strategy": data.get("strategy"),
                    "confidence": data.get("confidence"),
                    "calls": data.get("calls"),
                }
                if part is not None:
                    meta["chunk"] = part
                messages.append({"role": "assistant", "content": assistant_content(answer, why)})
                stats.examples += 1
                got += 1
                yield {"messages": messages, "metadata": meta}
            if got:
                stats.records += 1


def write_jsonl(lines: Iterable[dict[str, Any]], out: Path | TextIO) -> None:
    """Write one JSON object a line: to a stream, or to a file atomically (a temporary file in
    the same folder, renamed over the target once complete; removed if anything fails)."""
    if not isinstance(out, Path):
        for obj in lines:
            out.write(json.dumps(obj, ensure_ascii=False) + "\n")
        out.flush()
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; give it a new file's mode
            for obj in lines:
                f.write(json.dumps(obj, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
