"""The providers' prompt caches, as the test server simulates them (``prompt_cache=True``).

OpenAI caches by itself: a prompt of at least :data:`MIN_TOKENS` tokens reads from the cache the
longest prefix an earlier prompt had, in steps of :data:`STEP_TOKENS` tokens (its
``prompt_tokens_details.cached_tokens``). Anthropic caches only what a request marks: the prompt
up to the last block with ``cache_control`` (in ``tools``, then ``system``), if at least
:data:`MIN_TOKENS` tokens long, is written the first time (``cache_creation_input_tokens``) and
read after (``cache_read_input_tokens``). A token is four characters, as everywhere in the server.
A prefix matches only when it is byte-identical, as the providers' caches do.
"""

from __future__ import annotations

import hashlib
import json
import threading
from typing import Any

MIN_TOKENS = 1024
STEP_TOKENS = 128
_CHARS = 4


def _key(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


class PromptCache:
    """The prefixes seen so far (shared by both APIs' routes; thread-safe)."""

    def __init__(self) -> None:
        self._seen: set[bytes] = set()
        self._lock = threading.Lock()

    def openai(self, prompt_text: str) -> int:
        """The cached tokens of an OpenAI prompt (its text as the server reads it)."""
        first, step = MIN_TOKENS * _CHARS, STEP_TOKENS * _CHARS
        ends = list(range(first, len(prompt_text) + 1, step))
        cached = 0
        with self._lock:
            for end in ends:
                k = _key(prompt_text[:end])
                if k in self._seen:
                    cached = end // _CHARS
                self._seen.add(k)
        return cached

    def anthropic(self, body: dict[str, Any]) -> tuple[int, int]:
        """(tokens read from the cache, tokens written to it) for a Messages API request."""
        parts: list[str] = []
        marked = 0
        for block in body.get("tools") or []:  # counted as the server counts a prompt's tokens
            parts.append(json.dumps(block.get("input_schema")) if isinstance(block, dict) else str(block))
            if isinstance(block, dict) and block.get("cache_control"):
                marked = len(parts)
        system = body.get("system")
        for block in system if isinstance(system, list) else []:
            parts.append(str(block.get("text", "")) if isinstance(block, dict) else str(block))
            if isinstance(block, dict) and block.get("cache_control"):
                marked = len(parts)
        prefix = "\n".join(parts[:marked])
        tokens = len(prefix) // _CHARS
        if not marked or tokens < MIN_TOKENS:
            return 0, 0
        k = _key(prefix)
        with self._lock:
            if k in self._seen:
                return tokens, 0
            self._seen.add(k)
        return 0, tokens
