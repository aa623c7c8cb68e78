"""Curator (bespokelabs-curator): an ``LLM`` subclass with its documented ``prompt`` and ``parse``.

``response_format`` is a Pydantic model (Curator sends it as a JSON schema), the instruction is
the ``system_prompt``, the backend is ``openai`` with ``base_url`` = the test server. Without a
token-limit header from the server Curator assumes 100,000 tokens/min; as its documentation says,
the limits are passed in ``backend_params`` instead: :data:`RPM` requests and :data:`TPM` tokens
per minute, far above what the run needs, so that neither binds. Its cache folder
(CURATOR_CACHE_DIR, set by run.py to ``--work``) is how a rerun resumes: the same LLM on the same
rows reads the responses already written there.
"""

from __future__ import annotations

import os
import time
from typing import Any, Literal

import _peer
from bespokelabs import curator
from pydantic import BaseModel

RPM = 1_000_000
TPM = 1_000_000_000


class Answer(BaseModel):
    label: Literal["spam", "ham"]


class SmsClassifier(curator.LLM):
    response_format = Answer

    def prompt(self, input: dict[str, Any]) -> str:  # noqa: A002 - Curator's parameter name
        return input["text"]

    def parse(self, input: dict[str, Any], response: Answer) -> dict[str, Any]:  # noqa: A002
        return {"id": input["id"], "label": response.label}


def main() -> None:
    a = _peer.args()
    os.environ.setdefault("CURATOR_CACHE_DIR", str(a.work))  # run.py sets it to --work already
    rows = _peer.read_rows(a.rows)
    llm = SmsClassifier(
        model_name=_peer.MODEL, backend="openai", system_prompt=_peer.INSTRUCTION,
        backend_params={"base_url": a.base_url, "api_key": _peer.API_KEY,
                        "max_requests_per_minute": RPM, "max_tokens_per_minute": TPM},
    )
    t0 = time.perf_counter()
    res = llm(rows)
    elapsed = time.perf_counter() - t0
    answers = [(r["id"], r["label"]) for r in res.dataset]
    _peer.write_answers(a.out, answers)
    perf, req = res.performance_stats, res.request_stats
    _peer.report({
        "elapsed_s": elapsed, "note": "timed by the script around llm(rows); Curator's own figures beside it",
        "curator_total_time_s": perf.total_time, "curator_requests_per_minute": perf.requests_per_minute,
        "curator_max_concurrent_requests": perf.max_concurrent_requests,
        "curator_requests": {"total": req.total, "succeeded": req.succeeded, "failed": req.failed, "cached": req.cached},
    })


if __name__ == "__main__":
    main()
