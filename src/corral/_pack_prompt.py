"""Several rows in one call (``pack: N``): the packed request, and its answer read back per row.

A packed request keeps the rows' shared system prompt first, byte for byte (so a provider's
prompt cache serves it), adds one sentence saying how the rows are numbered, and sends the rows
as ``<row id="1">…</row>``, ``<row id="2">…</row>``, each with its own user message as it would
have been sent alone. Its schema asks for ``{"answers": [{"id": 1, …}, …]}``: exactly N entries,
each an answer of the row schema with the row's ``id`` added. Every row's answer is then read
on its own (:func:`unpack_answers`): a row whose id is missing from the answer, or answered more
than once, gets no answer here (it is asked alone; never guessed), and the row schema is checked
by the step as for any answer.

:func:`rows_of` and :func:`answer_rows` read a packed request back, for the test doubles (the
``fake`` model and the test provider server) that answer it row by row.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from typing import Any

from corral._delimit import guard
from corral.models.base import Completion, Message, Request

__all__ = [
    "ROW_TAG", "answer_rows", "in_order", "pack_group", "pack_request", "packable", "packable_schema", "rows_of",
    "unpack_answers",
]

#: the tag each row of a packed request is put in
ROW_TAG = "row"
#: what a packed request's system prompt says after the step's own (``{n}``: how many rows)
PACK_NOTE = (
    "\n\nThis request holds {n} rows, each inside <row id=\"K\"> tags (K = 1 to {n}). Answer every "
    "row on its own, exactly as you would answer it alone, and give the answers in `answers`: one "
    "entry per row, in the rows' order, each with the row's `id` and the fields of that row's answer."
)
#: output tokens a packed answer may take besides its rows' own limits (its braces, the ids)
_PACK_OVERHEAD_TOKENS = 16
_ROW = re.compile(r'<row id="(\d+)">\n(.*?)\n</row>', re.DOTALL)
_ESCAPED_ROW = re.compile(r"&lt;(?=\s*/?\s*row(?![A-Za-z0-9_.-]))", re.IGNORECASE)


def packable(request: Request) -> bool:
    """Whether a row's request can go in one call with other rows': an embeddings request (the
    texts of several go in one request), or one whose answers pack (:func:`packable_schema`)."""
    return request.embed or packable_schema(request.schema)


def pack_group(request: Request) -> tuple[Any, ...]:
    """What the requests packed together share: temperature, sample, output limit, the system
    prompt (an embeddings request has none: its one message is the row's), schema, and an
    embeddings request's ``dimensions``."""
    first = request.messages[0] if request.messages else None
    system = first.content if first is not None and first.role == "system" else ""
    return (request.temperature, request.sample, request.max_tokens, system, json.dumps(request.schema),
            request.embed, request.dimensions)


def packable_schema(schema: dict[str, Any] | None) -> bool:
    """Whether answers of ``schema`` can be packed: a JSON object with named properties (the
    row's ``id`` is added beside them)."""
    return (isinstance(schema, dict) and schema.get("type") == "object"
            and isinstance(schema.get("properties"), dict) and "id" not in schema["properties"])


def pack_schema(schema: dict[str, Any], n: int) -> dict[str, Any]:
    """The schema of a packed answer: ``answers``, exactly ``n`` answers of ``schema`` each with
    its row's ``id`` (1 to ``n``); definitions the row schema refers to are moved to the top."""
    row = copy.deepcopy(schema)
    defs: dict[str, Any] = {k: row.pop(k) for k in ("$defs", "definitions") if k in row}
    row["properties"] = {"id": {"type": "integer", "enum": list(range(1, n + 1))}, **row["properties"]}
    row["required"] = ["id", *[r for r in row.get("required", []) if r != "id"]]
    return {
        "type": "object",
        "properties": {"answers": {"type": "array", "items": row, "minItems": n, "maxItems": n}},
        "required": ["answers"],
        "additionalProperties": False,
        **defs,
    }


def in_order(schema: dict[str, Any]) -> dict[str, Any]:
    """A packed answer's schema with its ``answers`` as a tuple, entry K holding ``id`` K: for a
    model that is held to a schema as it writes (``local``'s grammar), so that it cannot leave a
    row out or answer one twice. Any other schema is returned as it is."""
    answers = schema.get("properties", {}).get("answers")
    if not (isinstance(answers, dict) and isinstance(answers.get("items"), dict)
            and "id" in answers["items"].get("properties", {})):
        return schema
    n = answers.get("maxItems")
    if not isinstance(n, int) or answers.get("minItems") != n:
        return schema
    entries = []
    for k in range(1, n + 1):
        entry = copy.deepcopy(answers["items"])
        entry["properties"]["id"] = {"const": k}
        entries.append(entry)
    out = dict(schema)
    out["properties"] = {**schema["properties"], "answers": {"type": "array", "prefixItems": entries}}
    return out


def pack_request(requests: list[Request]) -> Request:
    """The one request that answers ``requests`` (rows of one step with the same system prompt,
    schema, temperature and sample index), rows numbered 1 to N in order."""
    first = requests[0]
    system = "\n\n".join(m.content for m in first.messages if m.role == "system")
    n = len(requests)
    rows = []
    for i, r in enumerate(requests, start=1):
        user = "\n".join(m.content for m in r.messages if m.role == "user")
        rows.append(f'<row id="{i}">\n{guard(user, (ROW_TAG,))}\n</row>')
    assert first.schema is not None
    return Request(
        messages=(Message("system", system + PACK_NOTE.format(n=n)), Message("user", "\n\n".join(rows))),
        schema=pack_schema(first.schema, n),
        max_tokens=sum(r.max_tokens for r in requests) + _PACK_OVERHEAD_TOKENS * n,
        temperature=first.temperature,
        sample=first.sample,
        reasoning_effort=first.reasoning_effort,
    )


def unpack_answers(completion: Completion, n: int) -> list[Completion | None]:
    """Each row's answer in a packed completion (text: the row's answer as JSON, without its
    ``id``), or ``None`` for a row the answer does not answer exactly once: its id missing or
    repeated, or the whole answer unreadable (cut off, refused, not JSON). Usage is left to the
    caller, which splits the call's usage over the rows."""
    if completion.finish_reason != "stop":
        return [None] * n
    try:
        data = json.loads(completion.text, strict=False)
    except ValueError:
        return [None] * n
    items = data.get("answers") if isinstance(data, dict) else data
    if not isinstance(items, list):
        return [None] * n
    by_id: dict[int, list[dict[str, Any]]] = {}
    for item in items:
        if not isinstance(item, dict):
            continue
        rid = item.get("id")
        if isinstance(rid, str) and rid.strip().isdigit():
            rid = int(rid)
        if isinstance(rid, int) and not isinstance(rid, bool) and 1 <= rid <= n:
            by_id.setdefault(rid, []).append(item)
    out: list[Completion | None] = []
    for i in range(1, n + 1):
        got = by_id.get(i, [])
        if len(got) != 1:
            out.append(None)
            continue
        answer = {k: v for k, v in got[0].items() if k != "id"}
        out.append(Completion(text=json.dumps(answer, ensure_ascii=False), finish_reason="stop",
                              model=completion.model, latency_s=completion.latency_s))
    return out


def rows_of(schema: dict[str, Any] | None, user: str) -> list[tuple[int, str]] | None:
    """A packed request's rows, ``(id, user message)`` in order, from its schema and user text;
    ``None`` for a request that is not packed (for the test doubles that answer row by row)."""
    answers = schema.get("properties", {}).get("answers") if isinstance(schema, dict) else None
    if not isinstance(answers, dict) or "id" not in answers.get("items", {}).get("properties", {}):
        return None
    rows = [(int(m.group(1)), _ESCAPED_ROW.sub("<", m.group(2))) for m in _ROW.finditer(user)]
    return rows or None


def row_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema of one row's answer in a packed request's ``schema`` (its ``id`` taken out)."""
    row = copy.deepcopy(schema["properties"]["answers"]["items"])
    row["properties"].pop("id", None)
    row["required"] = [r for r in row.get("required", []) if r != "id"]
    for k in ("$defs", "definitions"):
        if k in schema:
            row[k] = schema[k]
    return row


def answer_rows(
    schema: dict[str, Any] | None, user: str, answer_one: Callable[[dict[str, Any], str], Any],
    drop: Callable[[int], bool] = lambda i: False, repeat: Callable[[int], bool] = lambda i: False,
) -> dict[str, Any] | None:
    """The answer a test double gives a packed request (its ``schema`` and user text):
    ``answer_one(row schema, row text)`` for each row, with its id; ``drop(id)`` leaves a row
    out, ``repeat(id)`` answers it twice (the faults of a model that loses count). ``None`` for
    a request that is not packed."""
    rows = rows_of(schema, user)
    if rows is None or schema is None:
        return None
    one = row_schema(schema)
    out: list[dict[str, Any]] = []
    for rid, text in rows:
        if drop(rid):
            continue
        value = answer_one(one, text)
        entry = {"id": rid, **(value if isinstance(value, dict) else {})}
        out.append(entry)
        if repeat(rid):
            out.append(dict(entry))
    return {"answers": out}
