"""LOTUS (lotus-ai): ``DataFrame.sem_map`` with ``lotus.models.LM`` pointed at the test server.

The LM is LOTUS's default (``gpt-4o-mini`` through litellm, ``max_batch_size`` 64) with
``api_base`` = the server. ``sem_map`` sends no response format, so the answer's JSON schema goes
in its ``system_prompt`` (the instruction itself may not hold braces: LOTUS reads ``{...}`` there
as column names); corral.testing.ProviderServer answers a schema written in the prompt as it would
a response format. LOTUS's operator cache is off by default (``enable_cache``) and kept so: a
rerun after a kill starts over.
"""

from __future__ import annotations

import time

import _peer
import lotus
import pandas as pd
from lotus.models import LM


def main() -> None:
    a = _peer.args()
    df = pd.DataFrame(_peer.read_rows(a.rows))
    lotus.settings.configure(lm=LM(model=_peer.MODEL, api_base=a.base_url, api_key=_peer.API_KEY))
    t0 = time.perf_counter()
    out = df.sem_map(_peer.INSTRUCTION + "\nMessage: {text}", system_prompt=_peer.SCHEMA_IN_PROMPT, suffix="answer")
    elapsed = time.perf_counter() - t0
    _peer.write_answers(a.out, list(zip(out["id"], out["answer"], strict=True)))
    _peer.report({"elapsed_s": elapsed, "note": "timed by the script around sem_map (LOTUS reports no figures)"})


if __name__ == "__main__":
    main()
