"""Provider prompt caching: the part of a step's prompt every row shares comes first and is
byte-identical across rows; Anthropic's is marked for the cache; the cached tokens (reads and
writes) come back in the ledger at their own prices. Against the test server's simulated caches
(corral.testing._prompt_cache)."""

from __future__ import annotations

import sqlite3
from decimal import Decimal

import corral
from corral import Job
from corral.testing import ProviderServer

from .._providers import claude, oai

LONG = " ".join(f"Rule {i}: a ticket that mentions topic {i} is handled by the team for topic {i}."
                for i in range(80))  # about 1,500 tokens of instructions every row shares
PRICES = {"input": "1.00", "output": "5.00", "cached_input": "0.10", "cache_write": "1.25"}


def job(tmp_path, rows: int = 12, instructions: str | None = LONG) -> Job:
    (tmp_path / "in.csv").write_text("id,text\n" + "".join(f"{i},ticket number {i} about topic {i}\n"
                                                          for i in range(rows)))
    return Job.from_dict({
        "name": "cached", "key": "id", "source": "in.csv", "concurrency": 1,
        "steps": [{"name": "team", "task": "classify", "input": "{text}", "labels": ["a", "b"],
                   **({"instructions": instructions} if instructions else {})}],
        "sink": "out.csv"}, base_dir=tmp_path)


def ledger(db) -> list[tuple[int, int, int]]:
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT input_tokens, cached_input_tokens, cost_nanos FROM ledger "
                           "WHERE replayed=0 ORDER BY id").fetchall()
    finally:
        con.close()


def test_anthropic_marks_the_shared_prefix_and_rows_after_the_first_read_it(tmp_path):
    with ProviderServer(prompt_cache=True) as srv:
        r = corral.run(job(tmp_path), model=claude(srv, prices=PRICES), store=tmp_path / "s.db")
        bodies = [b for _, b in srv.bodies if isinstance(b, dict) and "messages" in b]
    assert (r.written, r.calls_made) == (12, 12)
    systems = [b["system"] for b in bodies]
    assert all(s == systems[0] for s in systems)  # byte-identical across rows
    (block,) = systems[0]
    assert block["cache_control"] == {"type": "ephemeral"} and LONG in block["text"]
    assert all("ticket number" not in block["text"] for block in systems[0])  # the row comes after
    rows = ledger(tmp_path / "s.db")
    assert rows[0][1] == 0 and all(c > 1024 for _, c, _ in rows[1:])  # written once, then read
    con = sqlite3.connect(tmp_path / "s.db")
    writes = [w for (w,) in con.execute("SELECT cache_write_tokens FROM ledger WHERE replayed=0 ORDER BY id")]
    con.close()
    assert writes[0] > 1024 and writes[1:] == [0] * 11
    assert (r.cache_write_tokens, r.cached_input_tokens) == (writes[0], sum(c for _, c, _ in rows))
    assert r.to_json()["tokens"]["cache_write"] == writes[0]
    # a read costs a tenth of a fresh token, a write a quarter more: caching paid for itself
    fresh = sum(i for i, _, _ in rows) * Decimal("1.00") / 10**6
    paid = sum(n for _, _, n in rows) / Decimal(10**9)
    assert paid < fresh * Decimal("0.4")


def test_openai_reports_its_automatic_prefix_cache(tmp_path):
    with ProviderServer(prompt_cache=True) as srv:
        r = corral.run(job(tmp_path), model=oai(srv, prices=PRICES), store=tmp_path / "s.db")
        bodies = [b for _, b in srv.bodies if isinstance(b, dict) and "messages" in b]
    assert r.written == 12
    firsts = [b["messages"][0] for b in bodies]
    assert firsts[0]["role"] == "system" and all(m == firsts[0] for m in firsts)  # the shared part first
    rows = ledger(tmp_path / "s.db")
    assert rows[0][1] == 0 and all(c >= 1024 for _, c, _ in rows[1:])


def test_a_short_system_prompt_is_sent_as_plain_text(tmp_path):
    j = job(tmp_path, rows=2, instructions=None)
    with ProviderServer(prompt_cache=True) as srv:
        corral.run(j, model=claude(srv, prices=PRICES), store=tmp_path / "s.db")
        bodies = [b for _, b in srv.bodies if isinstance(b, dict) and "messages" in b]
    assert all(isinstance(b["system"], str) for b in bodies)  # under the least Anthropic caches
    assert all(c == 0 for _, c, _ in ledger(tmp_path / "s.db"))
