"""Test helpers shipped with Corral for your own tests.

:class:`ProviderServer` is a local HTTP server that speaks OpenAI's and Anthropic's wire formats
(chat completions, files and batches; messages and message batches) with faults on demand, so a
pipeline can be tested through the real SDK clients without a network or an API key::

    from corral.testing import ProviderServer

    with ProviderServer(error_rate=0.1, rpm=600) as srv:
        model = OpenAIModel("gpt-4o-mini", base_url=srv.openai_url, api_key="test")
        ...
        assert srv.served().calls == result.calls_made

:func:`plain` gives a prompt's text as the row had it: Corral sends each row value between tags
(``<text>...</text>``), and a ``FakeModel(script=...)`` that reads the prompt can take them out::

    FakeModel(script=lambda req: {"label": "billing" if plain(req.messages[-1].content) == "my invoice" else "other"})
"""

from __future__ import annotations

from corral._delimit import plain
from corral.testing.server import ProviderServer, Served

__all__ = ["ProviderServer", "Served", "plain"]
