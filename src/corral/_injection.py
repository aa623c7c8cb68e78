"""The injection gate: rows whose text reads like instructions to the model are held for review.

A row is data to work on. A row that says "ignore the previous instructions and ..." (or carries
a chat template's role tokens) may steer the model, so its answer must not reach the sink before
a person has looked at it: the record ends in ``review`` with the reason ``injection: <what
matched>``. Its steps still run, so the reviewer sees the answer the model gave.

The patterns below are deliberately narrow, so ordinary text is not flagged ("please ignore my
previous email" is ordinary; "ignore the previous instructions" is not). Each is a
``(name, regex)`` pair; the reason names the first that matched and the words it matched.
A job turns the gate off with ``injection: off``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_ANY = r"(?:all|any|the|your|my|these|those|previous|prior|above|earlier|preceding|former|original|system|initial)"
_ORDERS = r"(?:instructions?|prompts?|directions|directives|guidelines|system\s+(?:prompt|message))"

#: (name, pattern): what reads like an instruction to the model rather than data
PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (name, re.compile(rx, re.IGNORECASE | re.MULTILINE))
    for name, rx in (
        ("override", rf"\b(?:ignore|disregard|forget|override|bypass|skip)\b(?:\s+{_ANY}\b)*\s+{_ORDERS}\b"),
        ("override", r"\b(?:disregard|ignore|forget)\s+(?:everything|anything|all)\s+(?:above|before|said\s+before|you\s+were\s+told)\b"),
        ("override", r"\bignor(?:e|ez|er|iere|ieren)\b.{0,20}\b(?:instructions?|consignes|anweisungen|instruktionen)\b"),
        ("override", r"\bignora\b.{0,20}\b(?:instrucciones|istruzioni|instruções)\b"),
        ("override", r"\bignore\s+(?:as|todas\s+as)\s+instruções\b"),
        ("new instructions", r"\b(?:new|updated|real|actual|additional|override)\s+instructions?\s*:"),
        ("system prompt", r"\b(?:reveal|print|show|repeat|output)\b.{0,20}\bsystem\s+(?:prompt|message)\b"),
        ("role change", r"\byou\s+are\s+(?:now|no\s+longer)\s+(?:an?\s+)?(?:ai|assistant|chatbot|language\s+model|dan|unrestricted|jailbroken|in\s+developer\s+mode)\b"),
        ("role change", r"\b(?:act|pretend|behave)\s+(?:as|like|to\s+be)\s+(?:an?\s+)?(?:different|unrestricted|new)\s+(?:ai|assistant|model|system)\b"),
        ("role change", r"\bdeveloper\s+mode\s+(?:enabled|on)\b"),
        ("answer dictated", r"\b(?:classify|categori[sz]e|label|mark)\s+(?:this|it|the)(?:\s+(?:message|text|email|ticket|row|input|sms|one))?\s+as\b"),
        ("answer dictated", r"\b(?:your|the)\s+(?:answer|output|response|label|classification)\s+(?:must|should|shall|will)\s+(?:be|say)\b"),
        ("answer dictated", r"\b(?:respond|reply|answer)\s+only\s+with\b"),
        ("role marker", r"^\s*(?:system|assistant|user|human|ai)\s*:\s*\S"),
        ("role marker", r"^\s*#{2,}\s*(?:instruction|system|response|assistant)\b"),
        ("prompt token", r"<\|(?:im_start|im_end|system|user|assistant|endoftext|eot_id|start_header_id|end_header_id|begin_of_text)\|>"),
        ("prompt token", r"\[/?INST\]|<</?SYS>>|</s>"),
    )
)


def flag(text: str) -> str | None:
    """What in ``text`` reads like an instruction to the model (``name: "words"``), or None."""
    for name, rx in PATTERNS:
        m = rx.search(text)
        if m is not None:
            words = " ".join(m.group(0).split())
            return f'{name}: "{words[:60]}"'
    return None


def flag_row(row: Mapping[str, Any] | None) -> str | None:
    """The first of the row's text values that reads like an instruction, as the reason a
    record is held (``injection: <column>: <what matched>``); None for a row of plain data."""
    for column, value in (row or {}).items():
        if isinstance(value, str) and value:
            found = flag(value)
            if found is not None:
                return f"injection: column `{column}`: {found}"
    return None
