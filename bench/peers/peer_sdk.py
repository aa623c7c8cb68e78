"""The bare loop: the official ``openai`` SDK, ``AsyncOpenAI`` with 128 calls in flight.

The baseline every tool is compared with: one chat completion per row with the answer's JSON
schema as ``response_format`` (as Corral sends it), the answers kept in memory and written at the
end. No cache and no resume: a rerun after a kill starts again from the first row.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import _peer
import openai

IN_FLIGHT = 128


async def classify(rows: list[dict[str, str]], base_url: str) -> list[tuple[str, Any]]:
    client = openai.AsyncOpenAI(api_key=_peer.API_KEY, base_url=base_url, max_retries=3)
    gate = asyncio.Semaphore(IN_FLIGHT)
    fmt: Any = {"type": "json_schema", "json_schema": {"name": "answer", "schema": _peer.SCHEMA, "strict": True}}

    async def one(row: dict[str, str]) -> tuple[str, Any]:
        async with gate:
            r = await client.chat.completions.create(
                model=_peer.MODEL, temperature=0, max_tokens=50, response_format=fmt,
                messages=[{"role": "system", "content": _peer.INSTRUCTION},
                          {"role": "user", "content": row["text"]}])
            return row["id"], r.choices[0].message.content

    try:
        return await asyncio.gather(*(one(r) for r in rows))
    finally:
        await client.close()


def main() -> None:
    a = _peer.args()
    rows = _peer.read_rows(a.rows)
    t0 = time.perf_counter()
    answers = asyncio.run(classify(rows, a.base_url))
    elapsed = time.perf_counter() - t0
    _peer.write_answers(a.out, answers)
    _peer.report({"elapsed_s": elapsed, "note": "timed by the script around the loop (the SDK reports nothing)"})


if __name__ == "__main__":
    main()
