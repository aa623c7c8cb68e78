"""Provider prompt caching on a 2,000-row classify job whose instructions (over 1,024 tokens) every
row shares: the cached share of input tokens and the cost with and without the cache, from the
ledger.

  .venv/bin/python bench/prompt_cache.py [--rows 2000]

Against `corral.testing.ProviderServer(prompt_cache=True)` on 127.0.0.1, which simulates the
providers' caches by byte-identical prefix (OpenAI's automatic one for prompts of 1,024 tokens or
more, in 128-token steps; Anthropic's for the blocks a request marks `cache_control`, written
once and read after). Three runs, each in a fresh store: `anthropic:` with the shared prefix
marked (the default), `anthropic:` with `prompt_cache: false`, and `openai:`. Prices per million
tokens: input $3, cached input $0.30, cache write $3.75, output $15 (Anthropic's Sonnet list
prices), the same for both (so the columns compare). Writes bench/results/prompt_cache.json.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from _common import RESULTS, machine  # noqa: E402

import corral  # noqa: E402
from corral import Job  # noqa: E402
from corral.models.anthropic import AnthropicModel  # noqa: E402
from corral.models.openai import OpenAIModel  # noqa: E402
from corral.testing import ProviderServer  # noqa: E402

KEY = "sk-bench-0123456789abcdefghijklmnopqrstuvwxyz"
PRICES = {"input": "3.00", "cached_input": "0.30", "cache_write": "3.75", "output": "15.00"}
TEAMS = ["billing", "shipping", "returns", "accounts", "technical", "sales"]
INSTRUCTIONS = "\n".join(
    f"- Rule {i}: a ticket about {topic} {kind} goes to {TEAMS[i % len(TEAMS)]}; when it also "
    f"names an order number, prefer {TEAMS[(i + 1) % len(TEAMS)]}."
    for i, (topic, kind) in enumerate((t, k) for t in ("refunds", "invoices", "parcels", "logins",
                                                        "passwords", "discounts", "warranty", "pricing")
                                      for k in ("questions", "complaints", "requests", "escalations",
                                                "follow-ups", "disputes", "reminders", "corrections")))


def job(folder: Path, rows: int) -> Job:
    lines = "".join(f"{i},Ticket {i}: my order {1000 + i} has a problem with {TEAMS[i % 6]}\n" for i in range(rows))
    (folder / "in.csv").write_text("id,text\n" + lines)
    return Job.from_dict({
        "name": "tickets", "key": "id", "source": "in.csv", "concurrency": 16,
        "steps": [{"name": "team", "task": "classify", "input": "{text}", "labels": TEAMS,
                   "instructions": INSTRUCTIONS}],
        "sink": "out.csv"}, base_dir=folder)


def from_ledger(db: Path) -> dict[str, Any]:
    con = sqlite3.connect(db)
    try:
        calls, inp, cached, out, nanos = con.execute(
            "SELECT COUNT(*), SUM(input_tokens), SUM(cached_input_tokens), SUM(output_tokens), "
            "SUM(cost_nanos) FROM ledger WHERE replayed=0").fetchone()
    finally:
        con.close()
    million = Decimal(1_000_000)
    without = (inp * Decimal(PRICES["input"]) + out * Decimal(PRICES["output"])) / million
    return {"calls": calls, "input_tokens": inp, "cached_input_tokens": cached,
            "cached_share": round(cached / inp, 4), "output_tokens": out,
            "cost_usd": str(Decimal(nanos) / Decimal(10**9)), "cost_without_cache_usd": str(without)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=2000)
    a = ap.parse_args()
    out: dict[str, Any] = {"rows": a.rows, "instruction_chars": len(INSTRUCTIONS), "machine": machine(), "runs": {}}
    cases = [("anthropic, prefix marked", "anthropic", True), ("anthropic, prompt_cache: false", "anthropic", False),
             ("openai (automatic)", "openai", True)]
    for name, provider, cache in cases:
        with tempfile.TemporaryDirectory() as d, ProviderServer(prompt_cache=True) as srv:
            folder = Path(d)
            if provider == "anthropic":
                model: Any = AnthropicModel("claude-bench", base_url=srv.url, api_key=KEY, prices=PRICES,
                                            prompt_cache=cache)
            else:
                model = OpenAIModel("gpt-bench", base_url=srv.openai_url, api_key=KEY, prices=PRICES)
            t = time.monotonic()
            r = corral.run(job(folder, a.rows), model=model, store=folder / "s.db")
            wall = time.monotonic() - t
            row = {"written": r.written, "wall_s": round(wall, 2), **from_ledger(folder / "s.db")}
        out["runs"][name] = row
        print(f"{name}: {row['calls']:,} calls, {row['input_tokens']:,} input tokens, "
              f"{row['cached_input_tokens']:,} cached ({row['cached_share']:.1%}), cost ${row['cost_usd']} "
              f"(without the cache ${row['cost_without_cache_usd']}), {wall:.1f} s", flush=True)
    (RESULTS / "prompt_cache.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
