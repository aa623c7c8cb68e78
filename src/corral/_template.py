"""Prompt templates: ``{column}`` and ``{step.field}`` placeholders over a row's values.

``{{`` and ``}}`` stand for literal braces. A template is parsed once; rendering is a join.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

_FIELD = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")


@dataclass(frozen=True, slots=True)
class Template:
    source: str
    parts: tuple[str | tuple[str, ...], ...]

    @classmethod
    def parse(cls, text: str) -> Template:
        parts: list[str | tuple[str, ...]] = []
        pos = 0
        literal: list[str] = []
        for m in _FIELD.finditer(text):
            literal.append(text[pos : m.start()])
            pos = m.end()
            tok = m.group(0)
            if tok == "{{":
                literal.append("{")
            elif tok == "}}":
                literal.append("}")
            else:
                name = (m.group(1) or "").strip()
                if not name:
                    raise ValueError("empty placeholder {} (write {{ and }} for literal braces)")
                if literal:
                    parts.append("".join(literal))
                    literal = []
                parts.append(tuple(name.split(".")))
        literal.append(text[pos:])
        if literal and "".join(literal):
            parts.append("".join(literal))
        return cls(text, tuple(parts))

    @property
    def names(self) -> list[tuple[str, ...]]:
        return [p for p in self.parts if isinstance(p, tuple)]

    def render(self, context: dict[str, Any]) -> str:
        out: list[str] = []
        for p in self.parts:
            if isinstance(p, str):
                out.append(p)
                continue
            value: Any = context.get(p[0])
            for attr in p[1:]:
                value = value.get(attr) if isinstance(value, dict) else None
            out.append(_text(value))
        return "".join(out)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return json.dumps(value, ensure_ascii=False)
