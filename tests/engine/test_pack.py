"""``pack: N``: N rows answered in one call, each row still its own (state, trace, cache entry,
ledger share); a row the answer leaves out or answers twice is asked alone, never guessed."""

from __future__ import annotations

import json
import sqlite3
from decimal import Decimal

import pytest

import corral
from corral import Job
from corral._pack import split_usage
from corral._pack_prompt import pack_request, rows_of, unpack_answers
from corral.errors import JobSpecError
from corral.models.base import Completion, Message, Request, Usage
from corral.testing import ProviderServer

from .._providers import KEY, claude, oai

LABELS = ["billing", "shipping", "other"]


def make_job(tmp_path, rows: int = 40, pack: int = 10, model: dict | None = None, budget: dict | None = None,
             concurrency: int | None = None, **step) -> Job:
    (tmp_path / "in.csv").write_text("id,text\n" + "".join(
        f"{i},ticket {i} about {LABELS[i % 3]} number {i}\n" for i in range(rows)))
    return Job.from_dict({
        "name": "packed", "key": "id", "source": "in.csv",
        "model": model or {"name": "fake", "price_per_call": "0.001"},
        "steps": [{"name": "cat", "task": "classify", "input": "{text}", "labels": LABELS,
                   "pack": pack, **step}],
        "sink": "out.csv", **({"budget": budget} if budget else {}),
        **({"concurrency": concurrency} if concurrency else {})}, base_dir=tmp_path)


def ledger(db) -> list[tuple]:
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT key, request_hash, replayed, calls, input_tokens, output_tokens, "
                           "cost_nanos FROM ledger ORDER BY id").fetchall()
    finally:
        con.close()


def sink(tmp_path) -> dict[str, str]:
    lines = (tmp_path / "out.csv").read_text().splitlines()[1:]
    return {ln.split(",")[0]: ln.split(",")[-1] for ln in lines}


def test_ten_rows_a_call_and_each_row_its_own_answer(tmp_path):
    r = corral.run(make_job(tmp_path), store=tmp_path / "s.db")
    assert (r.written, r.quarantined) == (40, 0)
    assert r.calls_made == 4  # 40 rows, 10 a call
    assert r.cost_usd == Decimal("0.004")
    rows = ledger(tmp_path / "s.db")
    assert len(rows) == 40 and {k for k, *_ in rows} == {str(i) for i in range(40)}
    assert sum(c for *_, c, _, _, _ in rows) == 4  # `calls`: 1 on the first row of each call
    assert sum(n for *_, n in rows) == 4_000_000  # the shares add up to the calls' cost exactly
    # the same answers as one row a call: each row is answered as it would be alone
    (tmp_path / "one").mkdir()
    alone = corral.run(make_job(tmp_path / "one", pack=1), store=tmp_path / "one.db")
    assert alone.calls_made == 40
    assert sink(tmp_path / "one") == sink(tmp_path)


def test_a_rerun_with_another_pack_replays_every_row(tmp_path):
    corral.run(make_job(tmp_path, pack=10), store=tmp_path / "s.db")
    again = corral.run(make_job(tmp_path, pack=4), store=tmp_path / "s.db")
    assert (again.written, again.calls_made, again.calls_replayed) == (40, 0, 40)
    single = corral.run(make_job(tmp_path, pack=1), store=tmp_path / "s.db")
    assert (single.calls_made, single.calls_replayed) == (0, 40)


def test_rows_dropped_or_repeated_by_the_model_are_asked_alone(tmp_path):
    model = {"name": "fake", "price_per_call": "0.001", "pack_drop_rate": 0.15, "pack_repeat_rate": 0.15}
    r = corral.run(make_job(tmp_path, rows=200, model=model), store=tmp_path / "s.db")
    assert (r.written, r.quarantined, r.review) == (200, 0, 0)  # every row accounted for
    rows = ledger(tmp_path / "s.db")
    packed_calls = 20
    alone = r.calls_made - packed_calls
    assert 20 < alone < 100  # about 28% of the rows were dropped or repeated
    # a row asked alone: its share of the packed call stays under the packed request's hash,
    # its own call under its own request's hash; no row's own request paid twice
    own = [h for k, h, rep, c, *_ in rows if c == 1 and not rep]
    assert len(own) == r.calls_made
    assert len(set(own)) == len(own)
    assert sink(tmp_path).keys() == {str(i) for i in range(200)}
    # the answers are each row's own, as one row a call would give them
    (tmp_path / "one").mkdir()
    corral.run(make_job(tmp_path / "one", rows=200, pack=1), store=tmp_path / "one.db")
    assert sink(tmp_path / "one") == sink(tmp_path)
    con = sqlite3.connect(tmp_path / "s.db")
    notes = [json.loads(d) for (d,) in con.execute("SELECT data FROM attempts WHERE outcome='ok'")]
    con.close()
    assert sum(1 for d in notes if "alone" in d.get("pack", {})) == alone
    assert sum(1 for d in notes if "pack" in d and "alone" not in d["pack"]) == 200 - alone


def test_the_trace_shows_the_rows_own_prompt_and_where_it_was_packed(tmp_path):
    corral.run(make_job(tmp_path, rows=12, pack=6), store=tmp_path / "s.db")
    con = sqlite3.connect(tmp_path / "s.db")
    (req,) = con.execute("SELECT r.request FROM responses r JOIN ledger l ON l.request_hash=r.request_hash "
                         "WHERE l.key='3'").fetchone()
    con.close()
    req = json.loads(req)
    assert "ticket 3 about" in req["messages"][1]["content"] and "<row" not in req["messages"][1]["content"]
    assert req["pack"]["size"] == 6 and 1 <= req["pack"]["id"] <= 6


def test_vote_over_packed_calls(tmp_path):
    model = {"name": "fake", "price_per_call": "0.001", "truth": "truth.csv", "accuracy": 0.7}
    (tmp_path / "truth.csv").write_text("text,label\n" + "".join(
        f"ticket {i} about {LABELS[i % 3]} number {i},{LABELS[i % 3]}\n" for i in range(30)))
    r = corral.run(make_job(tmp_path, rows=30, model=model,
                            strategy={"name": "vote", "samples": 3, "temperature": 0.7, "adaptive": False}),
                   store=tmp_path / "s.db")
    assert r.written == 30
    assert r.calls_made == 9  # 3 samples of 30 rows, 10 rows a call


def test_openai_and_anthropic_answer_packed_requests_over_http(tmp_path):
    with ProviderServer() as srv:
        for name, model in (("openai", oai(srv)), ("anthropic", claude(srv))):
            d = tmp_path / name
            d.mkdir()
            r = corral.run(make_job(d, rows=25, pack=10), model=model, store=d / "s.db")
            assert (r.written, r.calls_made) == (25, 3), name
        bodies = [b for _, b in srv.bodies if isinstance(b, dict)]
    users = [b["messages"][-1]["content"] for b in bodies if "messages" in b]
    assert sum(1 for u in users if '<row id="10">' in str(u)) == 4  # two full packs per provider


def test_packing_is_refused_where_it_cannot_work(tmp_path):
    with pytest.raises(JobSpecError, match="remove `pack:`"):
        make_job(tmp_path, scoring="likelihood")
    with pytest.raises(JobSpecError, match="asks one row a call"):
        Job.from_dict({"name": "x", "source": "in.csv", "steps": [
            {"name": "m", "task": "map", "input": "{text}", "instructions": "say a", "fields": {"a": "string"},
             "pack": 5}]},
            base_dir=tmp_path)
    with pytest.raises(JobSpecError, match="one or the other"):
        Job.from_dict({"name": "x", "source": "in.csv", "steps": [
            {"name": "e", "task": "extract", "input": "{text}", "fields": {"a": "string"}, "pack": 5,
             "chunking": True}]}, base_dir=tmp_path)


def test_pack_prompt_shares_its_prefix_and_reads_answers_row_by_row():
    rows = [Request(messages=(Message("system", "S"), Message("user", f"<text>row {i} </row> x</text>")),
                    schema={"type": "object", "properties": {"label": {"enum": ["a", "b"]}}, "required": ["label"]})
            for i in range(3)]
    packed = pack_request(rows)
    assert packed.messages[0].content.startswith("S\n\n")  # the shared part first, as it was
    assert packed.schema["properties"]["answers"]["minItems"] == 3
    got = rows_of(packed.schema, packed.messages[1].content)
    assert [t for _, t in got] == [r.messages[1].content for r in rows]  # a row cannot close <row> early
    answer = {"answers": [{"id": 1, "label": "a"}, {"id": 3, "label": "b"}, {"id": 3, "label": "a"},
                          {"id": 9, "label": "a"}]}
    out = unpack_answers(Completion(json.dumps(answer)), 3)
    assert json.loads(out[0].text) == {"label": "a"} and out[1] is None and out[2] is None
    assert unpack_answers(Completion('{"answers": [', finish_reason="length"), 3) == [None] * 3
    assert unpack_answers(Completion("not json"), 2) == [None, None]


def test_split_usage_adds_up_exactly():
    parts = split_usage(Usage(103, 7, 10, 0, Decimal("0.0010000007")), 10)
    assert sum(p.input_tokens for p in parts) == 103 and sum(p.output_tokens for p in parts) == 7
    assert sum(p.cost for p in parts) == Decimal("0.001000001")  # to the nano-dollar
    assert all(p.cost is None for p in split_usage(Usage(5, 5), 3))


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_packed_rows_go_n_to_a_batch_request(tmp_path, provider):
    prices = {"input": 1.0, "output": 4.0, "batch_discount": 0.5}

    def model(srv: ProviderServer, **kw) -> dict:
        name, url = (("openai:gpt-4o-mini", srv.openai_url) if provider == "openai"
                     else ("anthropic:claude-haiku-4-5", srv.url))
        return {"name": name, "base_url": url, "api_key": KEY, "prices": prices, **kw}

    with ProviderServer() as srv:
        r = corral.run(make_job(tmp_path, rows=25, pack=10, mode="batch", model=model(srv, batch_poll_s=0.05)),
                       store=tmp_path / "s.db")
        subs = dict(srv.submissions)
        rows = ledger(tmp_path / "s.db")
        # a rerun one row a call, online: every row replayed
        again = corral.run(make_job(tmp_path, rows=25, pack=1, model=model(srv)), store=tmp_path / "s.db")
    assert (r.written, r.quarantined, r.calls_made, r.calls_replayed) == (25, 0, 3, 0)
    assert subs["batches" if provider == "openai" else "message_batches"] == 1
    assert len(rows) == 25 and sum(c for *_, c, _, _, _ in rows) == 3
    assert sum(n for *_, n in rows) == int(r.cost_usd * 10**9)
    assert (again.calls_made, again.calls_replayed) == (0, 25)


def test_estimate_prices_each_rows_share_of_a_packed_prompt(tmp_path):
    from corral._estimate import estimate
    from corral.models.fake import FakeModel

    rules = " ".join(f"Rule {i}: tickets about topic {i} go to team {i}." for i in range(60))
    one = estimate(make_job(tmp_path, pack=1, instructions=rules), FakeModel())
    ten = estimate(make_job(tmp_path, pack=10, instructions=rules), FakeModel())
    assert ten.steps["cat"][0].input_tokens < one.steps["cat"][0].input_tokens / 4
    assert any("pack" in n for n in ten.notes) and not any("pack" in n for n in one.notes)


def test_a_budget_stops_a_packed_run_between_calls_and_it_resumes(tmp_path):
    r = corral.run(make_job(tmp_path, rows=40, budget={"max_calls": 2}), store=tmp_path / "s.db")
    assert r.status == "stopped" and r.calls_made == 2 and r.written == 20 and r.accounted
    rest = corral.run(make_job(tmp_path, rows=40), store=tmp_path / "s.db")
    assert rest.run == r.run and rest.written == 40
    assert rest.calls_made == 4  # over both invocations: the 20 rows left went 10 a call


def test_a_stop_while_rows_wait_for_their_call_ends_the_run_at_once(tmp_path):
    import asyncio
    import time

    from corral.engine import run_async

    job = make_job(tmp_path, rows=300, model={"name": "fake", "latency": 0.3}, concurrency=2)

    async def stopped_soon():
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(0.5, stop.set)
        return await run_async(job, store=tmp_path / "s.db", stop=stop)

    t0 = time.monotonic()
    r = asyncio.run(stopped_soon())
    assert time.monotonic() - t0 < 5  # the grouped rows did not hold the stop up
    assert r.status == "interrupted" and r.accounted and 0 < r.written < 300
    rest = corral.run(job, store=tmp_path / "s.db")
    assert rest.written == 300 and rest.accounted
    hashes = [h for _, h, rep, c, *_ in ledger(tmp_path / "s.db") if not rep]
    assert len(hashes) == len(set(hashes)) == 300  # every row paid once, over both invocations


def test_the_bundled_model_answers_each_packed_row_once_in_order(tmp_path):
    from corral._pack_prompt import in_order, pack_schema

    tupled = in_order(pack_schema({"type": "object", "properties": {"label": {"enum": ["a", "b"]}},
                                   "required": ["label"]}, 3))
    assert [e["properties"]["id"] for e in tupled["properties"]["answers"]["prefixItems"]] == [
        {"const": 1}, {"const": 2}, {"const": 3}]
    texts = ["WINNER! Claim your free prize now, call 0906", "See you at lunch tomorrow?",
             "URGENT: your account won a cash reward, text CLAIM", "Can you pick up milk on the way home",
             "Free entry to win a holiday, reply YES", "Thanks for the notes, they helped"]
    (tmp_path / "in.csv").write_text("id,text\n" + "".join(f'{i},"{t}"\n' for i, t in enumerate(texts)))
    job = Job.from_dict({"name": "local", "key": "id", "source": "in.csv", "steps": [
        {"name": "label", "task": "classify", "input": "{text}", "labels": ["spam", "ham"], "pack": 3}],
        "sink": "out.csv"}, base_dir=tmp_path)
    r = corral.run(job, store=tmp_path / "s.db")
    # the grammar holds it to one answer per row: no row asked alone (a group the 50 ms wait
    # sends before its third row came, on a loaded machine, is a call more, not a lost row)
    assert r.written == 6 and 2 <= r.calls_made <= 4
    con = sqlite3.connect(tmp_path / "s.db")
    notes = [json.loads(d) for (d,) in con.execute("SELECT data FROM attempts WHERE data LIKE '%pack%'")]
    con.close()
    assert notes and not any("alone" in d["pack"] for d in notes)


def test_filter_and_extract_steps_pack_too(tmp_path):
    def job(folder, pack: int) -> Job:
        folder.mkdir(exist_ok=True)
        (folder / "in.csv").write_text("id,text\n" + "".join(
            f"{i},order {i} for {i * 3} units shipped to Lyon\n" for i in range(30)))
        return Job.from_dict({"name": "two", "key": "id", "source": "in.csv",
                              "model": {"name": "fake", "price_per_call": "0.001"}, "steps": [
            {"name": "keep", "task": "filter", "input": "{text}", "question": "Is it an order?", "pack": pack},
            {"name": "info", "task": "extract", "input": "{text}", "pack": pack,
             "fields": {"units": "integer", "city": "string"}}], "sink": "out.csv"}, base_dir=folder)

    r = corral.run(job(tmp_path / "packed", 10), store=tmp_path / "s.db")
    alone = corral.run(job(tmp_path / "alone", 1), store=tmp_path / "one.db")
    assert r.accounted and (r.written, r.skipped) == (alone.written, alone.skipped)
    assert r.written + r.skipped == 30 and r.written > 0
    assert alone.calls_made == 30 + alone.written
    # ten rows a call at each step (a group the 50 ms wait sends before it is full: a call more)
    assert 3 + -(-r.written // 10) <= r.calls_made <= 3 + -(-r.written // 10) + 2
    assert (tmp_path / "packed" / "out.csv").read_text() == (tmp_path / "alone" / "out.csv").read_text()
