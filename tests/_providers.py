"""What the provider tests share: a test key, a ticket schema, and the two adapters pointed at a
:class:`~corral.testing.ProviderServer`."""

from __future__ import annotations

from typing import Any

from corral.models.anthropic import AnthropicModel
from corral.models.openai import OpenAIModel
from corral.testing import ProviderServer

KEY = "sk-test-abcdefghijklmnopqrstuvwxyz0123456789"
SCHEMA = {
    "type": "object",
    "properties": {
        "label": {"enum": ["billing", "shipping", "other"]},
        "note": {"type": "string", "maxLength": 12},
        "amount": {"type": "number"},
    },
    "required": ["label", "note", "amount"],
    "additionalProperties": False,
}


def oai(srv: ProviderServer, name: str = "gpt-4o-mini", **kw: Any) -> OpenAIModel:
    kw.setdefault("api_key", KEY)
    return OpenAIModel(name, base_url=srv.openai_url, **kw)


def claude(srv: ProviderServer, name: str = "claude-haiku-4-5", **kw: Any) -> AnthropicModel:
    kw.setdefault("api_key", KEY)
    return AnthropicModel(name, base_url=srv.url, **kw)
