"""What every peer script shares: the task, its rows, its answers and its command line.

Each peer script (``peer_<tool>.py``) runs in that tool's own virtual environment, so this module
uses the standard library only. A script is called as::

    python peer_TOOL.py --rows IN.csv --out ANSWERS.jsonl --base-url URL --work DIR

reads the ``id,text`` rows, classifies each text as spam or ham the way the tool's documentation
says, writes one JSON line ``{"key": ..., "label": ...}`` per answer to ``--out``, and prints, as
its last stdout line, a JSON object with what the tool itself reports (``{}`` when nothing).
``--work`` is the tool's own state folder (cache, intermediate files): the same one is passed to
a rerun after a kill, so a tool that can resume finds what it left.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

MODEL = "gpt-4o-mini"
API_KEY = "sk-bench-0123456789abcdef"  # any key: the test server is started without one
LABELS = {
    "spam": "Unsolicited advertising, prizes, premium-rate offers or scams",
    "ham": "An ordinary personal message",
}
#: The instruction every tool sends (Corral builds its own from the same labels).
INSTRUCTION = (
    "Classify this SMS message as spam or ham.\n"
    + "\n".join(f"- {k}: {v}" for k, v in LABELS.items())
)
#: The answer's JSON schema: tools that send a response format send this one.
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"label": {"type": "string", "enum": list(LABELS)}},
    "required": ["label"],
    "additionalProperties": False,
}
#: For tools that send no response format (LOTUS): the schema written in the prompt, which the
#: test server (corral.testing.ProviderServer) answers as it would a response format.
SCHEMA_IN_PROMPT = 'Answer with JSON only, following this schema: ' + json.dumps(SCHEMA)


def args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--rows", type=Path, required=True, help="CSV with columns id,text")
    ap.add_argument("--out", type=Path, required=True, help="JSON lines {key, label} written here")
    ap.add_argument("--base-url", required=True, help="OpenAI-compatible base URL, ending in /v1")
    ap.add_argument("--work", type=Path, required=True, help="the tool's state folder (kept across a rerun)")
    return ap.parse_args()


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return [{"id": r["id"], "text": r["text"]} for r in csv.DictReader(f)]


def parse_label(answer: Any) -> str | None:
    """``spam`` or ``ham`` from a tool's answer (a dict, a JSON text or plain text), else None."""
    if isinstance(answer, dict):
        answer = answer.get("label")
    if not isinstance(answer, str):
        return None
    text = answer.strip()
    if text.startswith("{"):
        try:
            return parse_label(json.loads(text))
        except ValueError:
            return None
    word = text.strip('"\' .').lower()
    return word if word in LABELS else None


def write_answers(path: Path, answers: list[tuple[str, Any]]) -> None:
    """One JSON line per (key, raw answer); ``label`` is the parsed one (null when it did not parse)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for key, raw in answers:
            f.write(json.dumps({"key": key, "label": parse_label(raw)}) + "\n")


def report(stats: dict[str, Any]) -> None:
    """The tool's own figures, as the script's last stdout line."""
    sys.stdout.flush()
    print(json.dumps(stats, default=str), flush=True)
