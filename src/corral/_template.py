"""Prompt templates: ``{column}`` and ``{step.field}`` placeholders over a row's values.

``{{`` and ``}}`` stand for literal braces. A template is parsed once; rendering is a join.
:meth:`Template.render` gives the row's text as it is (for grounding, System 1, similarity);
:meth:`Template.prompt` gives what a model is sent, each value between tags named after its
placeholder (:mod:`corral._delimit`), so the model reads row text as data.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from corral._delimit import delimit, tag_for

_FIELD = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")


@dataclass(frozen=True, slots=True)
class Template:
    source: str
    parts: tuple[str | tuple[str, ...], ...]
    #: the tags of the placeholders' values in :meth:`prompt`, in order of first use
    tags: tuple[str, ...] = ()

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
        tags = tuple(dict.fromkeys(tag_for(".".join(p)) for p in parts if isinstance(p, tuple)))
        return cls(text, tuple(parts), tags)

    @property
    def names(self) -> list[tuple[str, ...]]:
        return [p for p in self.parts if isinstance(p, tuple)]

    def render(self, context: dict[str, Any]) -> str:
        """The template with the row's values put in as they are."""
        out: list[str] = []
        for p in self.parts:
            if isinstance(p, str):
                out.append(p)
                continue
            out.append(_text(lookup(context, p)))
        return "".join(out)

    def prompt(self, context: dict[str, Any], tags: tuple[str, ...] = ()) -> str:
        """The template as a model is sent it: each value between tags named after its
        placeholder (``<text>...</text>``), a tag inside a value escaped (this template's and
        ``tags``, the other tags of the same prompt) so that no value closes its tag early."""
        out: list[str] = []
        every = (*self.tags, *tags)
        for p in self.parts:
            if isinstance(p, str):
                out.append(p)
                continue
            out.append(delimit(_text(lookup(context, p)), tag_for(".".join(p)), every))
        return "".join(out)


def lookup(context: dict[str, Any], name: tuple[str, ...]) -> Any:
    """The value placeholder ``name`` renders (``{a.b}``: ``context["a"]["b"]``), or None."""
    value: Any = context.get(name[0])
    for attr in name[1:]:
        value = value.get(attr) if isinstance(value, dict) else None
    return value


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
