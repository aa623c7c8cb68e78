"""Deliberation strategies (single, vote, refine, best_of, cascade) through the engine: checks,
reasoning, per-record and run budgets, resume and run identity, with scripted fake models."""

from __future__ import annotations

import csv
import json
import math
import sqlite3
import threading
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import pytest
from click.testing import CliRunner

import corral
from corral import FakeModel, Job
from corral.cli import main as cli_main
from corral.errors import JobSpecError
from corral.models.base import Request
from corral.testing import plain

from ..conftest import scripted_models, write

# --- helpers ----------------------------------------------------------------------------------


def make_job(
    tmp_path: Path, rows: dict[str, str], step: dict[str, Any], *, sink: str = "out/o.csv", **extra: Any
) -> Job:
    """A job over ``in.csv`` (columns id, text) with one step reading ``{text}``."""
    data = "id,text\n" + "".join(f"{k},{v}\n" for k, v in rows.items())
    write(tmp_path / "in.csv", data)
    d = {"name": "t", "source": "in.csv", "key": "id", "steps": [step], "sink": sink, **extra}
    return Job.from_dict(d, base_dir=tmp_path)


def is_accepted(a: dict[str, Any]) -> bool:
    """An acceptance: an `accepted` event, or a call whose answer was accepted as it is."""
    return a["outcome"] == "accepted" or (a.get("data") or {}).get("accepted") is True


def classify(**kw: Any) -> dict[str, Any]:
    return {"name": "cat", "task": "classify", "input": "{text}", "labels": ["a", "b", "c"], **kw}


def extract(fields: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return {"name": "ex", "task": "extract", "input": "{text}", "fields": fields, **kw}


def read_csv(p: Path | str) -> list[dict[str, str]]:
    with open(p, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def by_id(rows: list[dict[str, str]]) -> dict[str, dict[str, str]]:
    return {r["id"]: r for r in rows}


def user_text(request: Request) -> str:
    """The row's text: the step's user message (second message, also in repair requests),
    without the tags around the row's values."""
    return plain(request.messages[1].content)


class Recorder:
    """A script that records every request it answers, per row text (thread-safe)."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.seen: dict[str, list[Request]] = {}
        self.lock = threading.Lock()

    def __call__(self, request: Request) -> Any:
        with self.lock:
            self.seen.setdefault(user_text(request), []).append(request)
        return self.answer(request)


def ledger(db: Path, run: str | None = None) -> list[dict[str, Any]]:
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    try:
        q = "SELECT * FROM ledger" + (" WHERE run_id=?" if run else "") + " ORDER BY id"
        return [dict(r) for r in con.execute(q, (run,) if run else ())]
    finally:
        con.close()


def attempts(db: Path, run: str, key: str) -> list[dict[str, Any]]:
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    try:
        rows = con.execute(
            "SELECT * FROM attempts WHERE run_id=? AND key=? ORDER BY id", (run, key)
        ).fetchall()
        out = []
        for r in rows:
            d = dict(r)
            d["data"] = json.loads(d["data"]) if d["data"] else {}
            out.append(d)
        return out
    finally:
        con.close()


def show(db: Path, run: str, key: str) -> dict[str, Any]:
    res = CliRunner().invoke(cli_main, ["show", run, key, "--json", "--store", str(db)])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


@pytest.fixture
def strategy_models(monkeypatch: pytest.MonkeyPatch):
    """Register scripted fake models by id (``fake:NAME``) for a job's ``models:`` entries: the
    engine builds strategy models with ``make_model``; a scripted model cannot be written in YAML."""
    return scripted_models(monkeypatch)


def label_of(request: Request, answers: dict[int, str]) -> dict[str, str]:
    return {"label": answers[request.sample]}


# --- single ---------------------------------------------------------------------------------


def test_single_is_one_call_per_row_and_writes_the_answer(tmp_path):
    rows = {f"r{i}": f"row number {i}" for i in range(6)}
    rec = Recorder(lambda r: {"label": "b" if "3" in user_text(r) else "a"})
    fake = FakeModel(script=rec)
    db = tmp_path / "s.db"
    r = corral.run(make_job(tmp_path, rows, classify()), model=fake, store=db)
    assert r.status == "finished"
    assert (r.written, r.review, r.quarantined) == (6, 0, 0)
    assert fake.calls == 6 == r.calls_made
    out = by_id(read_csv(tmp_path / "out" / "o.csv"))
    assert {k: v["cat"] for k, v in out.items()} == {f"r{i}": ("b" if i == 3 else "a") for i in range(6)}
    assert "review" not in r.outputs  # nothing can be held for review without checks or deliberation
    for reqs in rec.seen.values():
        assert len(reqs) == 1
        assert reqs[0].sample == 0 and reqs[0].temperature == 0.0 and len(reqs[0].messages) == 2
        assert "reasoning" not in reqs[0].schema["properties"]
    assert {row["strategy"] for row in ledger(db)} == {"single"}


def test_single_failing_check_holds_the_row_for_review(tmp_path):
    rows = {"r1": "amount 5", "r2": "amount -3", "r3": "amount 12"}

    def answer(r: Request) -> dict[str, Any]:
        return {"amount": float(user_text(r).split()[1])}

    fake = FakeModel(script=answer)
    job = make_job(tmp_path, rows, extract({"amount": "number"}, checks=["amount >= 0"]))
    r = corral.run(job, model=fake, store=tmp_path / "s.db")
    assert r.status == "finished"
    assert (r.written, r.review, r.quarantined) == (2, 1, 0)
    assert fake.calls == 3  # single does not repair
    out = by_id(read_csv(tmp_path / "out" / "o.csv"))
    assert set(out) == {"r1", "r3"}
    assert float(out["r1"]["amount"]) == 5.0 and float(out["r3"]["amount"]) == 12.0
    assert r.outputs["review"] == str(Path("out") / "o.review.csv")
    review = read_csv(tmp_path / r.outputs["review"])
    assert len(review) == 1
    held = review[0]
    assert held["id"] == "r2" and float(held["amount"]) == -3.0
    assert held["_reason"] == "step `ex`: check `amount >= 0` failed (amount = -3.0)"
    assert read_csv(tmp_path / "out" / "o.quarantine.csv") == []


# --- vote -----------------------------------------------------------------------------------


def test_vote_stops_after_two_agreeing_samples(tmp_path):
    rows = {f"r{i}": f"text {i}" for i in range(5)}
    rec = Recorder(lambda r: {"label": "a"})
    fake = FakeModel(script=rec)
    db = tmp_path / "s.db"
    r = corral.run(make_job(tmp_path, rows, classify(strategy="vote")), model=fake, store=db)
    assert r.written == 5
    assert fake.calls == 10  # min_samples 2 per row, of up to 5
    for reqs in rec.seen.values():
        assert [q.sample for q in reqs] == [0, 1]
        assert [q.temperature for q in reqs] == [0.7, 0.7]
    assert {row["strategy"] for row in ledger(db)} == {"vote"}
    vote = [a for a in attempts(db, r.run, "r0") if a["outcome"] == "vote"]
    assert len(vote) == 1
    assert vote[0]["data"]["answers"] == 2 and vote[0]["data"]["agreement"] == 1.0
    assert vote[0]["data"]["fields"] == {"label": {'"a"': 2}}


def test_vote_samples_are_distinct_requests_at_the_vote_temperature(tmp_path):
    rows = {"r1": "one"}
    answers = {0: "a", 1: "b", 2: "c", 3: "a", 4: "b"}
    rec = Recorder(lambda r: label_of(r, answers))
    fake = FakeModel(script=rec)
    step = classify(strategy={"name": "vote", "samples": 5, "temperature": 0.9, "adaptive": False})
    db = tmp_path / "s.db"
    r = corral.run(make_job(tmp_path, rows, step), model=fake, store=db)
    reqs = rec.seen["one"]
    assert [q.sample for q in reqs] == [0, 1, 2, 3, 4]
    assert {q.temperature for q in reqs} == {0.9}
    hashes = [q.cache_key("fake") for q in reqs]
    assert len(set(hashes)) == 5
    paid = [row for row in ledger(db, r.run) if not row["replayed"]]
    assert sorted(row["request_hash"] for row in paid) == sorted(hashes)
    assert sorted(row["attempt"] for row in paid) == [0, 1, 2, 3, 4]
    # a tie between a and b (2 each): the first answer to reach the top count wins
    assert read_csv(tmp_path / "out" / "o.csv")[0]["cat"] == "a"


def test_vote_continues_on_disagreement_and_stops_when_the_leader_is_safe(tmp_path):
    rows = {"r1": "disputed"}
    # a, b, a, a: after four answers a leads 3 to 1 with one sample left: it cannot be overtaken
    answers = {0: "a", 1: "b", 2: "a", 3: "a", 4: "b"}
    fake = FakeModel(script=lambda r: label_of(r, answers))
    db = tmp_path / "s.db"
    r = corral.run(make_job(tmp_path, rows, classify(strategy="vote")), model=fake, store=db)
    assert fake.calls == 4
    assert read_csv(tmp_path / "out" / "o.csv")[0]["cat"] == "a"
    vote = [a for a in attempts(db, r.run, "r1") if a["outcome"] == "vote"][0]
    assert vote["data"]["answers"] == 4
    assert vote["data"]["agreement"] == 0.75
    assert vote["data"]["stopped"] == "no leader can be overtaken with 1 samples left"
    accepted = [a for a in attempts(db, r.run, "r1") if a["outcome"] == "accepted"][0]
    assert accepted["data"]["confidence"] == 0.75
    assert accepted["data"]["answer"] == {"label": "a"}


def test_vote_stops_early_on_a_safe_leader_with_seven_samples(tmp_path):
    rows = {"r1": "x"}
    # b, a, b, b, b: after 5 answers b leads 4 to 1 with 2 left: safe; 4-1=3 > 2
    # after 4 answers b leads 3 to 1 with 3 left: 2 <= 3, not safe yet
    answers = {0: "b", 1: "a", 2: "b", 3: "b", 4: "b", 5: "a", 6: "a"}
    fake = FakeModel(script=lambda r: label_of(r, answers))
    r = corral.run(
        make_job(tmp_path, rows, classify(strategy={"name": "vote", "samples": 7})), model=fake,
        store=tmp_path / "s.db",
    )
    assert r.written == 1
    assert fake.calls == 5
    assert read_csv(tmp_path / "out" / "o.csv")[0]["cat"] == "b"


def test_vote_not_adaptive_takes_exactly_samples(tmp_path):
    rows = {f"r{i}": f"t{i}" for i in range(3)}
    fake = FakeModel(script=lambda r: {"label": "c"})
    step = classify(strategy={"name": "vote", "samples": 3, "adaptive": False})
    r = corral.run(make_job(tmp_path, rows, step), model=fake, store=tmp_path / "s.db")
    assert r.written == 3
    assert fake.calls == 9 == r.calls_made


def test_vote_majority_wins(tmp_path):
    rows = {"r1": "x", "r2": "y"}
    per_row = {"x": {0: "a", 1: "b", 2: "b", 3: "a", 4: "b"}, "y": {0: "c", 1: "c", 2: "a", 3: "c", 4: "a"}}
    fake = FakeModel(script=lambda r: {"label": per_row[user_text(r)][r.sample]})
    step = classify(strategy={"name": "vote", "samples": 5, "adaptive": False})
    db = tmp_path / "s.db"
    r = corral.run(make_job(tmp_path, rows, step), model=fake, store=db)
    assert fake.calls == 10
    out = by_id(read_csv(tmp_path / "out" / "o.csv"))
    assert out["r1"]["cat"] == "b" and out["r2"]["cat"] == "c"
    vote = [a for a in attempts(db, r.run, "r1") if a["outcome"] == "vote"][0]
    assert vote["data"]["agreement"] == 0.6
    assert vote["data"]["fields"] == {"label": {'"b"': 3, '"a"': 2}}


def test_vote_extract_is_field_wise_majority(tmp_path):
    rows = {"r1": "who where"}
    samples = {
        0: {"name": "Ann", "city": "Oslo"},
        1: {"name": "Ann", "city": "Rome"},
        2: {"name": "Bob", "city": "Rome"},
    }
    fake = FakeModel(script=lambda r: samples[r.sample])
    step = extract({"name": "string", "city": "string"},
                   strategy={"name": "vote", "samples": 3, "adaptive": False})
    db = tmp_path / "s.db"
    r = corral.run(make_job(tmp_path, rows, step), model=fake, store=db)
    assert fake.calls == 3
    row = read_csv(tmp_path / "out" / "o.csv")[0]
    # no single sample said (Ann, Rome): each field has its own majority
    assert (row["name"], row["city"]) == ("Ann", "Rome")
    vote = [a for a in attempts(db, r.run, "r1") if a["outcome"] == "vote"][0]
    assert vote["data"]["fields"] == {
        "name": {'"Ann"': 2, '"Bob"': 1}, "city": {'"Rome"': 2, '"Oslo"': 1},
    }
    assert vote["data"]["agreement"] == pytest.approx(2 / 3, abs=1e-4)


def test_vote_extract_adaptive_waits_for_every_field(tmp_path):
    rows = {"r1": "w"}
    # the name agrees from the start, the city only settles on the third answer
    samples = {
        0: {"name": "Ann", "city": "Oslo"},
        1: {"name": "Ann", "city": "Rome"},
        2: {"name": "Ann", "city": "Rome"},
        3: {"name": "Ann", "city": "Rome"},
        4: {"name": "Ann", "city": "Rome"},
    }
    fake = FakeModel(script=lambda r: samples[r.sample])
    step = extract({"name": "string", "city": "string"}, strategy={"name": "vote", "samples": 5})
    corral.run(make_job(tmp_path, rows, step), model=fake, store=tmp_path / "s.db")
    # after 4: Rome 3, Oslo 1, one left -> safe. After 3: Rome 2 vs 1 with 2 left -> not yet
    assert fake.calls == 4
    row = read_csv(tmp_path / "out" / "o.csv")[0]
    assert (row["name"], row["city"]) == ("Ann", "Rome")


# --- refine ---------------------------------------------------------------------------------


def test_refine_repairs_a_failing_answer_with_the_answer_and_problems_last(tmp_path):
    rows = {"r1": "the amount is ten", "r2": "the amount is also ten"}

    def answer(r: Request) -> dict[str, Any]:
        return {"amount": 10.0} if len(r.messages) > 2 else {"amount": -10.0}

    rec = Recorder(answer)
    fake = FakeModel(script=rec)
    step = extract({"amount": "number"}, checks=["amount > 0"], strategy="refine")
    db = tmp_path / "s.db"
    r = corral.run(make_job(tmp_path, rows, step), model=fake, store=db)
    assert (r.written, r.review) == (2, 0)
    assert fake.calls == 4
    out = by_id(read_csv(tmp_path / "out" / "o.csv"))
    assert float(out["r1"]["amount"]) == 10.0 and float(out["r2"]["amount"]) == 10.0
    first, repair = rec.seen["the amount is ten"]
    assert len(first.messages) == 2
    assert len(repair.messages) == 4
    assert repair.messages[:2] == first.messages  # the step's prompt, unchanged
    assert repair.messages[-2].role == "assistant"
    assert json.loads(repair.messages[-2].content) == {"amount": -10.0}
    assert repair.messages[-1].role == "user"
    # the problem names the check and what the answer had
    assert "check `amount > 0` failed (amount = -10.0)" in repair.messages[-1].content
    assert repair.sample != first.sample
    trace = attempts(db, r.run, "r1")
    roles = [a["data"].get("role") for a in trace if a["outcome"] in ("ok", "checks")]
    assert roles == ["sample", "repair"]
    crit = [a for a in trace if a["outcome"] == "critique"]
    assert [c["data"]["round"] for c in crit] == [0, 1]
    assert crit[0]["data"]["problems"] == ["check `amount > 0` failed (amount = -10.0)"]


def test_refine_context_does_not_grow_and_gives_up_after_rounds(tmp_path):
    rows = {"r1": "never right"}
    counter = iter(range(-1, -100, -1))
    rec = Recorder(lambda r: {"amount": float(next(counter))})
    fake = FakeModel(script=rec)
    step = extract({"amount": "number"}, checks=["amount > 0"], strategy={"name": "refine", "rounds": 2})
    r = corral.run(make_job(tmp_path, rows, step), model=fake, store=tmp_path / "s.db")
    assert (r.written, r.review, r.quarantined) == (0, 1, 0)
    assert fake.calls == 3  # the first answer and two repairs
    first, round1, round2 = rec.seen["never right"]
    assert len(first.messages) == 2
    assert len(round1.messages) == len(round2.messages) == 4
    assert json.loads(round1.messages[-2].content) == {"amount": -1.0}
    assert json.loads(round2.messages[-2].content) == {"amount": -2.0}  # only the latest answer
    assert round2.messages[:2] == first.messages
    review = read_csv(tmp_path / r.outputs["review"])
    assert len(review) == 1
    assert review[0]["id"] == "r1" and float(review[0]["amount"]) == -3.0
    assert review[0]["_reason"].startswith("step `ex`: check `amount > 0` failed (amount = ")


def test_refine_critic_on_its_own_model_sends_problems_back(tmp_path, strategy_models):
    rows = {"r1": "double it", "r2": "double that"}
    critic_seen: list[Request] = []

    def critic(r: Request) -> dict[str, Any]:
        critic_seen.append(r)
        answer = json.loads(r.messages[-1].content.split("Answer:\n", 1)[1])
        if answer["amount"] < 10:
            return {"ok": False, "problems": ["the amount must be doubled"]}
        return {"ok": True, "problems": []}

    strategy_models["fake:critic"] = critic_fake = FakeModel("critic", script=critic)
    rec = Recorder(lambda r: {"amount": 10.0} if len(r.messages) > 2 else {"amount": 5.0})
    fake = FakeModel(script=rec)
    step = extract(
        {"amount": "number"},
        strategy={"name": "refine", "critic": "Check the amount is doubled.", "critic_model": "checker"},
    )
    db = tmp_path / "s.db"
    job = make_job(tmp_path, rows, step, models={"checker": "fake:critic"})
    r = corral.run(job, model=fake, store=db)
    assert (r.written, r.review) == (2, 0)
    assert fake.calls == 4 and critic_fake.calls == 4  # answer, critique, repair, critique
    out = by_id(read_csv(tmp_path / "out" / "o.csv"))
    assert float(out["r1"]["amount"]) == 10.0
    repair = rec.seen["double it"][1]
    assert "the amount must be doubled" in repair.messages[-1].content
    assert json.loads(repair.messages[-2].content) == {"amount": 5.0}
    c = critic_seen[0]
    assert c.messages[0].role == "system" and "Check the amount is doubled." in c.messages[0].content
    assert "double it" in c.messages[-1].content or "double that" in c.messages[-1].content
    # the ledger attributes each call to its model
    rows_l = ledger(db, r.run)
    assert len(rows_l) == 8
    by_model: dict[str, int] = {}
    for row in rows_l:
        by_model[row["model"]] = by_model.get(row["model"], 0) + 1
        assert row["strategy"] == "refine"
        assert not row["replayed"]
    assert by_model == {"fake": 4, "fake:critic": 4}
    # and corral show --json lists them with their roles
    rec_json = show(db, r.run, "r1")
    roles = [(c["outcome"], (c["data"] or {}).get("role"), (c["data"] or {}).get("model")) for c in rec_json["calls"]]
    assert roles == [
        ("ok", "sample", "fake"), ("ok", "critic", "fake:critic"),
        ("ok", "repair", "fake"), ("ok", "critic", "fake:critic"),
    ]
    crit = [t for t in rec_json["trace"] if t["outcome"] == "critique"]
    assert crit[0]["data"]["problems"] == ["the amount must be doubled"]


# --- best_of --------------------------------------------------------------------------------


def test_best_of_stops_at_the_first_passing_branch(tmp_path):
    rows = {"r1": "x"}
    branch = {0: -1.0, 1: 3.0, 2: 7.0, 3: 9.0}
    rec = Recorder(lambda r: {"amount": branch[r.sample]})
    fake = FakeModel(script=rec)
    step = extract({"amount": "number"}, checks=["amount > 0"], strategy="best_of")
    db = tmp_path / "s.db"
    r = corral.run(make_job(tmp_path, rows, step), model=fake, store=db)
    assert fake.calls == 2
    assert float(read_csv(tmp_path / "out" / "o.csv")[0]["amount"]) == 3.0
    assert [q.temperature for q in rec.seen["x"]] == [0.7, 0.7]
    best = [a for a in attempts(db, r.run, "r1") if a["outcome"] == "best"][0]
    assert best["data"]["kept"] == 2
    assert [b["passed"] for b in best["data"]["branches"]] == [False, True]


def test_best_of_without_stop_early_takes_n_and_keeps_a_passing_branch(tmp_path):
    rows = {"r1": "x"}
    branch = {0: -1.0, 1: 3.0, 2: -7.0, 3: -9.0}
    fake = FakeModel(script=lambda r: {"amount": branch[r.sample]})
    step = extract({"amount": "number"}, checks=["amount > 0"],
                   strategy={"name": "best_of", "n": 4, "stop_early": False})
    db = tmp_path / "s.db"
    r = corral.run(make_job(tmp_path, rows, step), model=fake, store=db)
    assert fake.calls == 4
    assert r.written == 1
    assert float(read_csv(tmp_path / "out" / "o.csv")[0]["amount"]) == 3.0
    best = [a for a in attempts(db, r.run, "r1") if a["outcome"] == "best"][0]
    assert best["data"]["kept"] == 2 and len(best["data"]["branches"]) == 4


def test_best_of_with_no_passing_branch_holds_the_row(tmp_path):
    rows = {"r1": "x"}
    fake = FakeModel(script=lambda r: {"amount": -1.0 - r.sample})
    step = extract({"amount": "number"}, checks=["amount > 0"], strategy={"name": "best_of", "n": 3})
    r = corral.run(make_job(tmp_path, rows, step), model=fake, store=tmp_path / "s.db")
    assert fake.calls == 3
    assert (r.written, r.review) == (0, 1)
    held = read_csv(tmp_path / r.outputs["review"])[0]
    assert held["_reason"].startswith("step `ex`: check `amount > 0` failed (amount = ")


# --- cascade --------------------------------------------------------------------------------


def test_cascade_escalates_only_rows_the_cheap_vote_disputes(tmp_path, strategy_models):
    rows = {"e1": "easy one", "e2": "easy two", "h1": "hard one", "h2": "hard two"}

    def cheap(r: Request) -> dict[str, str]:
        if user_text(r).startswith("easy"):
            return {"label": "a"}
        return {"label": "a" if r.sample % 2 == 0 else "b"}  # a, b, a: agreement 2/3

    strategy_models["fake:cheap"] = cheap_fake = FakeModel("cheap", script=cheap)
    strategy_models["fake:strong"] = strong_fake = FakeModel("strong", script=lambda r: {"label": "c"})
    main_fake = FakeModel(script=lambda r: {"label": "b"})
    step = classify(strategy={
        "name": "cascade", "threshold": 0.8,
        "stages": [{"name": "vote", "samples": 3, "model": "cheap"}, {"name": "single", "model": "strong"}],
    })
    job = make_job(tmp_path, rows, step, models={"cheap": "fake:cheap", "strong": "fake:strong"})
    db = tmp_path / "s.db"
    r = corral.run(job, model=main_fake, store=db)
    assert (r.written, r.review) == (4, 0)
    out = by_id(read_csv(tmp_path / "out" / "o.csv"))
    assert {k: v["cat"] for k, v in out.items()} == {"e1": "a", "e2": "a", "h1": "c", "h2": "c"}
    assert main_fake.calls == 0
    assert cheap_fake.calls == 2 + 2 + 3 + 3
    assert strong_fake.calls == 2
    per_key: dict[str, list[tuple[str, str]]] = {}
    for row in ledger(db, r.run):
        per_key.setdefault(row["key"], []).append((row["model"], row["strategy"]))
    s1 = "cascade/stage 1 (vote on cheap)"
    s2 = "cascade/stage 2 (single on strong)"
    assert per_key["e1"] == [("fake:cheap", s1)] * 2
    assert per_key["h1"] == [("fake:cheap", s1)] * 3 + [("fake:strong", s2)]
    esc = [a for a in attempts(db, r.run, "h1") if a["outcome"] == "escalate"]
    assert len(esc) == 1 and esc[0]["data"]["escalate"] is True
    assert esc[0]["data"]["confidence"] == pytest.approx(2 / 3, abs=1e-4)
    esc = [a for a in attempts(db, r.run, "e1") if a["outcome"] == "escalate"]
    assert len(esc) == 1 and esc[0]["data"]["escalate"] is False


def test_cascade_escalates_an_answer_failing_checks(tmp_path, strategy_models):
    rows = {"r1": "amount 4", "r2": "amount -4"}
    strategy_models["fake:cheap"] = cheap_fake = FakeModel(
        "cheap", script=lambda r: {"amount": float(user_text(r).split()[1])})
    strategy_models["fake:strong"] = strong_fake = FakeModel("strong", script=lambda r: {"amount": 99.0})
    step = extract({"amount": "number"}, checks=["amount > 0"], strategy={
        "name": "cascade",
        "stages": [{"name": "single", "model": "cheap"}, {"name": "single", "model": "strong"}],
    })
    job = make_job(tmp_path, rows, step, models={"cheap": "fake:cheap", "strong": "fake:strong"})
    db = tmp_path / "s.db"
    r = corral.run(job, model=FakeModel(), store=db)
    assert (r.written, r.review) == (2, 0)
    assert cheap_fake.calls == 2 and strong_fake.calls == 1
    out = by_id(read_csv(tmp_path / "out" / "o.csv"))
    assert float(out["r1"]["amount"]) == 4.0  # no confidence measure: accepted on its checks
    assert float(out["r2"]["amount"]) == 99.0
    assert [row["model"] for row in ledger(db, r.run) if row["key"] == "r2"] == ["fake:cheap", "fake:strong"]
    esc = [a for a in attempts(db, r.run, "r2") if a["outcome"] == "escalate"][0]
    assert "checks failed" in esc["detail"] and "amount > 0" in esc["detail"]


def test_cascade_last_stage_failing_checks_goes_to_review(tmp_path, strategy_models):
    rows = {"r1": "x"}
    strategy_models["fake:cheap"] = FakeModel("cheap", script=lambda r: {"amount": -1.0})
    strategy_models["fake:strong"] = FakeModel("strong", script=lambda r: {"amount": -2.0})
    step = extract({"amount": "number"}, checks=["amount > 0"], strategy={
        "name": "cascade",
        "stages": [{"name": "single", "model": "cheap"}, {"name": "single", "model": "strong"}],
    })
    job = make_job(tmp_path, rows, step, models={"cheap": "fake:cheap", "strong": "fake:strong"})
    r = corral.run(job, model=FakeModel(), store=tmp_path / "s.db")
    assert (r.written, r.review) == (0, 1)
    held = read_csv(tmp_path / r.outputs["review"])[0]
    assert float(held["amount"]) == -2.0  # the last stage's answer stands


def test_cascade_single_stage_confidence_from_logprobs_drives_escalation(tmp_path):
    labels = ["alpha", "beta", "gamma", "delta"]
    texts = {f"r{i}": f"sentence number {i} about topic {i % 4}" for i in range(40)}
    write(tmp_path / "truth.csv", "text,label\n" + "".join(
        f"{t},{labels[i % 4]}\n" for i, t in enumerate(texts.values())))
    step = {"name": "cat", "task": "classify", "input": "{text}", "labels": labels, "strategy": {
        "name": "cascade", "threshold": 0.8,
        "stages": [{"name": "single", "model": "cheap"}, {"name": "single", "model": "strong"}],
    }}
    models = {
        "cheap": {"name": "fake:cheap", "truth": "truth.csv", "accuracy": 0.7, "logprobs": True},
        "strong": {"name": "fake:strong", "truth": "truth.csv", "accuracy": 0.95},
    }
    job = make_job(tmp_path, texts, step, models=models)
    db = tmp_path / "s.db"
    main_fake = FakeModel()
    r = corral.run(job, model=main_fake, store=db)
    assert r.written == 40 and main_fake.calls == 0
    calls = ledger(db, r.run)
    cheap = {row["key"]: row for row in calls if row["model"] == "fake:cheap"}
    strong = {row["key"] for row in calls if row["model"] == "fake:strong"}
    assert len(cheap) == 40
    con = sqlite3.connect(db)
    try:
        resp = dict(con.execute("SELECT request_hash, response FROM responses").fetchall())
    finally:
        con.close()
    escalated = set()
    for key, row in cheap.items():
        comp = json.loads(resp[row["request_hash"]])
        assert comp["logprobs"] and len(comp["logprobs"]) == 1
        if math.exp(comp["logprobs"][0]) < 0.8:
            escalated.add(key)
    assert strong == escalated
    assert 0 < len(escalated) < 40  # both paths are exercised
    for key in ("r0", sorted(escalated)[0]):
        esc = [a for a in attempts(db, r.run, key) if a["outcome"] == "escalate"][0]
        comp = json.loads(resp[cheap[key]["request_hash"]])
        assert esc["data"]["confidence"] == pytest.approx(math.exp(comp["logprobs"][0]))
        assert esc["data"]["escalate"] is (key in escalated)
    out = by_id(read_csv(tmp_path / "out" / "o.csv"))
    answered_by = {k: ("strong" if k in strong else "cheap") for k in texts}
    for k, row in out.items():
        # the accepted answer is the one the answering stage gave
        acc = [a for a in attempts(db, r.run, k) if is_accepted(a)][0]
        assert acc["data"]["answer"] == {"label": row["cat"]}
        stage = "stage 2 (single on strong)" if answered_by[k] == "strong" else "stage 1 (single on cheap)"
        samples = [a for a in attempts(db, r.run, k) if a["outcome"] == "ok"]
        assert samples[-1]["data"]["answer"] == {"label": row["cat"]}
        assert samples[-1]["data"]["strategy"] == "cascade/" + stage


# --- per-record budget ----------------------------------------------------------------------


def test_per_record_budget_holds_a_disputed_row_with_its_leading_answer(tmp_path):
    rows = {"calm": "calm row", "hot": "hot row"}

    def answer(r: Request) -> dict[str, str]:
        if user_text(r) == "calm row":
            return {"label": "c"}
        return {"label": {0: "a", 1: "b", 2: "a", 3: "b", 4: "c"}[r.sample]}

    rec = Recorder(answer)
    fake = FakeModel(script=rec)
    step = classify(strategy={"name": "vote", "samples": 5})
    db = tmp_path / "s.db"
    job = make_job(tmp_path, rows, step, budget={"per_record": {"max_calls": 3}})
    r = corral.run(job, model=fake, store=db)
    assert r.status == "finished"
    assert (r.written, r.review) == (1, 1)
    assert len(rec.seen["hot row"]) == 3  # never a fourth call
    assert len(rec.seen["calm row"]) == 2
    assert fake.calls == 5
    assert read_csv(tmp_path / "out" / "o.csv")[0]["cat"] == "c"
    held = read_csv(tmp_path / r.outputs["review"])
    assert len(held) == 1 and held[0]["id"] == "hot"
    assert held[0]["cat"] == "a"  # a leads 2 to 1
    assert "budget" in held[0]["_reason"] and "max_calls 3" in held[0]["_reason"]
    assert held[0]["_reason"] == "step `cat`: budget: record max_calls 3 reached"
    assert len([row for row in ledger(db, r.run) if row["key"] == "hot"]) == 3
    ev = [a for a in attempts(db, r.run, "hot") if a["outcome"] == "budget"]
    assert len(ev) == 1 and ev[0]["data"]["answer"] == {"label": "a"}


def test_per_record_budget_counts_calls_over_all_steps(tmp_path):
    fake = FakeModel(script=lambda r: {"label": "a"} if "label" in r.schema["properties"] else {"n": 1})
    steps = [
        classify(strategy={"name": "vote", "samples": 2}),
        {"name": "ex", "task": "extract", "input": "{text} {cat}", "fields": {"n": "integer"},
         "strategy": {"name": "vote", "samples": 2}},
    ]
    write(tmp_path / "in.csv", "id,text\nr1,x\n")
    job = Job.from_dict({"name": "t", "source": "in.csv", "key": "id", "steps": steps, "sink": "o.csv",
                         "budget": {"per_record": {"max_calls": 3}}}, base_dir=tmp_path)
    r = corral.run(job, model=fake, store=tmp_path / "s.db")
    assert fake.calls == 3
    assert r.review == 1
    held = read_csv(tmp_path / r.outputs["review"])[0]
    assert held["cat"] == "a" and held["n"] == "1"  # the first step's answer and the best so far
    assert held["_reason"] == "step `ex`: budget: record max_calls 3 reached"


# --- run budget -----------------------------------------------------------------------------


def test_run_cost_budget_stops_within_one_call_and_resumes_without_repeating(tmp_path):
    rows = {f"r{i:03d}": f"row {i}" for i in range(100)}
    step = classify()
    db = tmp_path / "s.db"
    fake = FakeModel(price_per_call="0.01", latency=0.001)
    job = make_job(tmp_path, rows, step, budget={"max_cost_usd": "0.3"}, concurrency=16)
    r1 = corral.run(job, model=fake, store=db)
    assert r1.status == "stopped"
    assert "max_cost_usd" in r1.stop_reason
    # "a cost cap is missed by less than one call's cost" (docs/jobs.md, Budget)
    assert Decimal("0.29") <= r1.cost_usd <= Decimal("0.31"), r1.stop_reason
    assert r1.cost_usd == Decimal("0.01") * r1.calls_made == Decimal("0.01") * fake.calls
    assert r1.written < 100 and r1.pending == 100 - r1.written - r1.quarantined
    assert r1.outputs == {}  # an unfinished run writes no sink

    job2 = make_job(tmp_path, rows, step, budget={"max_cost_usd": "10"}, concurrency=16)
    r2 = corral.run(job2, model=fake, store=db)
    assert r2.run == r1.run
    assert r2.status == "finished" and r2.written == 100
    assert fake.calls == 100  # an uninterrupted run makes 100 calls
    assert r2.cost_usd == Decimal("1.00")
    paid = [row["request_hash"] for row in ledger(db) if not row["replayed"]]
    assert len(paid) == 100 and len(set(paid)) == 100  # no request paid twice


def test_run_cost_budget_with_instant_calls_still_reaches_the_cap(tmp_path):
    """Calls that finish at once wait for their group commit while both counted as spent and
    still holding their reservation: the run must not stop on that double count."""
    rows = {f"r{i:03d}": f"row {i}" for i in range(100)}
    fake = FakeModel(price_per_call="0.01")
    job = make_job(tmp_path, rows, classify(), budget={"max_cost_usd": "0.3"}, concurrency=16)
    r = corral.run(job, model=fake, store=tmp_path / "s.db")
    assert r.status == "stopped"
    assert r.cost_usd >= Decimal("0.29"), r.stop_reason


def test_run_cost_budget_with_one_call_at_a_time_reaches_the_cap_exactly(tmp_path):
    rows = {f"r{i:03d}": f"row {i}" for i in range(50)}
    fake = FakeModel(price_per_call="0.01")
    job = make_job(tmp_path, rows, classify(), budget={"max_cost_usd": "0.3"}, concurrency=1)
    r = corral.run(job, model=fake, store=tmp_path / "s.db")
    assert r.status == "stopped" and "max_cost_usd 0.3" in r.stop_reason
    assert r.cost_usd == Decimal("0.30") and fake.calls == 30 and r.written == 30


def test_run_cost_budget_with_vote_resumes_without_repeating(tmp_path):
    rows = {f"r{i:02d}": f"row {i}" for i in range(30)}
    answers = {0: "a", 1: "b", 2: "a", 3: "a", 4: "b"}

    def answer(r: Request) -> dict[str, str]:
        n = int(user_text(r).split()[1])
        return {"label": "a"} if n % 2 else {"label": answers[r.sample]}

    step = classify(strategy="vote")
    fresh = FakeModel(script=answer, price_per_call="0.01")
    corral.run(make_job(tmp_path, rows, step, sink="fresh.csv"), model=fresh, store=tmp_path / "fresh.db")
    assert fresh.calls == 15 * 2 + 15 * 4

    db = tmp_path / "s.db"
    fake = FakeModel(script=answer, price_per_call="0.01", latency=0.001)
    r1 = corral.run(make_job(tmp_path, rows, step, budget={"max_cost_usd": "0.37"}, concurrency=16),
                    model=fake, store=db)
    assert r1.status == "stopped" and "max_cost_usd" in r1.stop_reason
    assert Decimal("0.36") <= r1.cost_usd <= Decimal("0.38")
    r2 = corral.run(make_job(tmp_path, rows, step, concurrency=16), model=fake, store=db)
    assert r2.status == "finished" and r2.written == 30
    assert fake.calls == fresh.calls
    paid = [row["request_hash"] for row in ledger(db) if not row["replayed"]]
    assert len(paid) == len(set(paid)) == fresh.calls
    assert read_csv(tmp_path / "out" / "o.csv") == read_csv(tmp_path / "fresh.csv")


# --- resume ---------------------------------------------------------------------------------


def _disputed(r: Request) -> dict[str, str]:
    """Votes that depend on the row and the sample: rows take different paths (2 to 5 calls)."""
    n = int(user_text(r).split()[1])
    patterns = [
        "aaaaa",  # agree at 2
        "ababa",  # 5 samples, a wins 3-2
        "abaab",  # a safe after 4
        "bbbbb",
        "abcab",  # a,b,c,a,b: no safe leader, all 5; a wins by first to 2
        "baaac",
    ]
    return {"label": patterns[n % len(patterns)][r.sample]}


def test_interrupted_vote_resumes_replaying_samples_with_the_same_decisions(tmp_path):
    rows = {f"r{i:02d}": f"row {i}" for i in range(24)}
    step = classify(strategy="vote")

    fresh = FakeModel(script=_disputed)
    rf = corral.run(make_job(tmp_path, rows, step, sink="fresh.csv", concurrency=1), model=fresh,
                    store=tmp_path / "fresh.db")
    assert rf.written == 24

    db = tmp_path / "s.db"
    fake = FakeModel(script=_disputed)
    # every row costs at least 2 calls, so the 21st call is some row's second or later: that row
    # is interrupted mid-vote with samples recorded
    r1 = corral.run(make_job(tmp_path, rows, step, budget={"max_calls": 21}, concurrency=1),
                    model=fake, store=db)
    assert r1.status == "stopped" and "max_calls" in r1.stop_reason
    assert fake.calls == r1.calls_made == 21
    r2 = corral.run(make_job(tmp_path, rows, step, concurrency=1), model=fake, store=db)
    assert r2.run == r1.run and r2.status == "finished" and r2.written == 24
    assert r2.calls_replayed >= 1  # the interrupted row's recorded samples
    assert fake.calls == fresh.calls  # no call repeated, none skipped
    assert read_csv(tmp_path / "out" / "o.csv") == read_csv(tmp_path / "fresh.csv")
    for key in rows:
        a = [x["detail"] for x in attempts(db, r2.run, key) if x["outcome"] == "vote"]
        b = [x["detail"] for x in attempts(tmp_path / "fresh.db", rf.run, key) if x["outcome"] == "vote"]
        assert a == b and len(a) == 1


# --- reasoning ------------------------------------------------------------------------------


def test_reasoning_field_comes_first_and_stays_out_of_the_sink(tmp_path):
    rows = {"r1": "think about it"}
    rec = Recorder(lambda r: {"reasoning": "because it says so", "label": "b"})
    fake = FakeModel(script=rec)
    db = tmp_path / "s.db"
    r = corral.run(make_job(tmp_path, rows, classify(reasoning=True)), model=fake, store=db)
    assert r.written == 1
    req = rec.seen["think about it"][0]
    assert list(req.schema["properties"])[0] == "reasoning"
    assert req.schema["required"][0] == "reasoning" and "label" in req.schema["required"]
    assert "reasoning" in req.messages[0].content and req.reasoning_effort is None
    with open(tmp_path / "out" / "o.csv", newline="", encoding="utf-8") as f:
        header = next(csv.reader(f))
    assert header == ["id", "text", "cat"]
    out = read_csv(tmp_path / "out" / "o.csv")[0]
    assert out["cat"] == "b"
    assert "because it says so" not in (tmp_path / "out" / "o.csv").read_text()
    rec_json = show(db, r.run, "r1")
    sample = [t for t in rec_json["trace"] if t["outcome"] == "ok"][0]
    assert sample["data"]["reasoning"] == "because it says so"
    assert sample["data"]["answer"] == {"label": "b"}  # the reasoning is not part of the answer
    accepted = [t for t in rec_json["trace"] if is_accepted(t)][0]
    assert accepted is sample  # a single call's answer: accepted on the call's own row
    assert accepted["data"]["reasoning"] == "because it says so"
    assert rec_json["outputs"] == {"cat": "b"}


def test_reasoning_kept_with_the_vote_winner(tmp_path):
    rows = {"r1": "vote on it"}
    answers = {0: ("a", "first"), 1: ("b", "second"), 2: ("b", "third")}
    fake = FakeModel(script=lambda r: {"reasoning": answers[r.sample][1], "label": answers[r.sample][0]})
    db = tmp_path / "s.db"
    step = classify(reasoning=True, strategy={"name": "vote", "samples": 3, "adaptive": False})
    r = corral.run(make_job(tmp_path, rows, step), model=fake, store=db)
    assert read_csv(tmp_path / "out" / "o.csv")[0]["cat"] == "b"
    accepted = [a for a in attempts(db, r.run, "r1") if a["outcome"] == "accepted"][0]
    assert accepted["data"]["reasoning"] == "second"


def test_reasoning_effort_goes_to_the_request(tmp_path):
    rows = {"r1": "effort"}
    rec = Recorder(lambda r: {"label": "a"})
    r = corral.run(make_job(tmp_path, rows, classify(reasoning="low")), model=FakeModel(script=rec),
                   store=tmp_path / "s.db")
    assert r.written == 1
    req = rec.seen["effort"][0]
    assert req.reasoning_effort == "low"
    assert "reasoning" not in req.schema["properties"]


def test_reasoning_repair_does_not_echo_it_unless_asked(tmp_path):
    rows = {"r1": "x"}
    rec = Recorder(lambda r: {"reasoning": "r", "amount": 1.0 if len(r.messages) > 2 else -1.0})
    step = extract({"amount": "number"}, checks=["amount > 0"], strategy="refine", reasoning=True)
    r = corral.run(make_job(tmp_path, rows, step), model=FakeModel(script=rec), store=tmp_path / "s.db")
    assert r.written == 1
    repair = rec.seen["x"][1]
    # the answer carried back is the parsed answer (reasoning removed)
    assert json.loads(repair.messages[-2].content) == {"amount": -1.0}


# --- job validation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("strategy", "models", "expected"),
    [
        ("votes", None, ["unknown strategy `votes`", "did you mean `vote`?", "Strategies: best_of, cascade"]),
        ({"name": "vote", "sample": 3}, None, ["unknown key `sample`", "did you mean `samples`?"]),
        ({"name": "refine", "critic_modle": "x"}, None, ["unknown key `critic_modle`", "did you mean `critic_model`?"]),
        ({"name": "vote", "model": "nonesuch"}, None,
         ["strategy model `nonesuch` is neither a key of `models:` nor an installed model"]),
        ({"name": "cascade", "stages": ["single", {"name": "single", "model": "strnog"}]}, {"strong": "fake"},
         ["strategy model `strnog`", "did you mean `strong`?"]),
        ({"name": "vote", "samples": 3, "min_samples": 6}, None, ["min_samples (6) is more than samples (3)"]),
        ({"name": "cascade", "stages": ["single"]}, None, ["cascade", "stages", "at least 2"]),
        ({"name": "cascade", "stages": ["single", {"name": "cascade", "stages": ["single", "single"]}]}, None,
         ["cannot itself be a cascade"]),
        ({"name": "vote", "model": {"name": "fake"}}, None, ["under the job's `models:`"]),
        ({"samples": 3}, None, ["needs `name:`"]),
    ],
)
def test_bad_strategies_are_one_line_job_errors(tmp_path, strategy, models, expected):
    write(tmp_path / "in.csv", "id,text\nr1,x\n")
    d = {"name": "t", "source": "in.csv", "key": "id", "steps": [classify(strategy=strategy)], "sink": "o.csv"}
    if models:
        d["models"] = models
    with pytest.raises(JobSpecError) as e:
        Job.from_dict(d, base_dir=tmp_path)
    msg = str(e.value)
    assert "\n" not in msg
    for part in expected:
        assert part in msg, msg


def test_strategy_model_in_models_or_installed_is_accepted(tmp_path):
    write(tmp_path / "in.csv", "id,text\nr1,x\n")
    for strategy, models in (
        ({"name": "vote", "model": "cheap"}, {"cheap": "fake:x"}),
        ({"name": "vote", "model": "fake:other"}, {}),
        ({"name": "refine", "critic": "Is it right?", "critic_model": "fake"}, {}),
    ):
        job = Job.from_dict({"name": "t", "source": "in.csv", "key": "id", "models": models,
                             "steps": [classify(strategy=strategy)], "sink": "o.csv"}, base_dir=tmp_path)
        assert job.steps[0].strategy.name == strategy["name"]


def test_unknown_strategy_model_message_is_well_formed(tmp_path):
    write(tmp_path / "in.csv", "id,text\nr1,x\n")
    d = {"name": "t", "source": "in.csv", "key": "id", "sink": "o.csv",
         "steps": [classify(strategy={"name": "vote", "model": "zzz"})]}
    with pytest.raises(JobSpecError) as e:
        Job.from_dict(d, base_dir=tmp_path)
    msg = str(e.value)
    assert not msg.startswith("job: job:"), msg
    assert "installed model. Choose from" in msg, msg


# --- spec identity --------------------------------------------------------------------------


def test_changing_the_strategy_is_a_new_run_that_replays_shared_samples(tmp_path):
    rows = {f"r{i}": f"row {i}" for i in range(4)}
    answers = {0: "a", 1: "b", 2: "a", 3: "c", 4: "a"}
    db = tmp_path / "s.db"
    first = FakeModel(script=lambda r: label_of(r, answers))
    r1 = corral.run(make_job(tmp_path, rows, classify(strategy={"name": "vote", "samples": 3, "adaptive": False})),
                    model=first, store=db)
    assert first.calls == 12
    second = FakeModel(script=lambda r: label_of(r, answers))
    r2 = corral.run(make_job(tmp_path, rows, classify(strategy={"name": "vote", "samples": 5, "adaptive": False})),
                    model=second, store=db)
    assert r2.run != r1.run
    assert second.calls == 8  # samples 3 and 4 of each row; 0-2 are replayed
    assert (r2.calls_made, r2.calls_replayed) == (8, 12)
    assert r2.written == 4
    # the same vote again: the same run, nothing paid
    third = FakeModel(script=lambda r: label_of(r, answers))
    r3 = corral.run(make_job(tmp_path, rows, classify(strategy={"name": "vote", "samples": 5, "adaptive": False})),
                    model=third, store=db)
    assert r3.run == r2.run and third.calls == 0


def test_single_to_vote_replays_the_first_sample_only_at_the_same_temperature(tmp_path):
    rows = {"r1": "x"}
    db = tmp_path / "s.db"
    m1 = FakeModel(script=lambda r: {"label": "a"})
    corral.run(make_job(tmp_path, rows, classify()), model=m1, store=db)
    m2 = FakeModel(script=lambda r: {"label": "a"})
    r = corral.run(make_job(tmp_path, rows, classify(strategy="vote")), model=m2, store=db)
    # the vote's samples run at temperature 0.7, single's at 0: nothing can be shared
    assert m2.calls == 2 and r.calls_replayed == 0


def test_renaming_a_models_key_is_a_new_run_that_replays_its_calls(tmp_path, strategy_models):
    rows = {"r1": "x"}
    strategy_models["fake:cheap"] = FakeModel("cheap", script=lambda r: {"label": "a"})
    step = classify(strategy={"name": "vote", "model": "cheap", "samples": 3})
    db = tmp_path / "s.db"
    r1 = corral.run(make_job(tmp_path, rows, step, models={"cheap": "fake:cheap"}), model=FakeModel(), store=db)
    # renaming the models: key (same model) is a different spec: a new run, replayed calls
    step2 = classify(strategy={"name": "vote", "model": "small", "samples": 3})
    strategy_models["fake:cheap"] = again = FakeModel("cheap", script=lambda r: {"label": "a"})
    r2 = corral.run(make_job(tmp_path, rows, step2, models={"small": "fake:cheap"}), model=FakeModel(), store=db)
    assert r2.run != r1.run
    assert again.calls == 0 and r2.calls_replayed == 2
    assert [(row["model"], row["replayed"]) for row in ledger(db, r2.run)] == [("fake:cheap", 1)] * 2


# --- more edges -----------------------------------------------------------------------------


def test_vote_agreement_below_one_stops_once_min_samples_agree_enough(tmp_path):
    rows = {"r1": "x"}
    answers = {0: "a", 1: "b", 2: "a", 3: "b", 4: "b"}
    fake = FakeModel(script=lambda r: label_of(r, answers))
    step = classify(strategy={"name": "vote", "samples": 5, "min_samples": 3, "agreement": 0.6})
    db = tmp_path / "s.db"
    r = corral.run(make_job(tmp_path, rows, step), model=fake, store=db)
    assert fake.calls == 3  # a, b, a: 2/3 >= 0.6 once three answers are in
    assert read_csv(tmp_path / "out" / "o.csv")[0]["cat"] == "a"
    vote = [a for a in attempts(db, r.run, "r1") if a["outcome"] == "vote"][0]
    assert vote["data"]["stopped"].startswith("agreement 0.67 >= 0.6 after 3 answers")


def test_vote_skips_an_unusable_sample_and_retries_with_a_fresh_index(tmp_path):
    rows = {"r1": "x"}
    rec = Recorder(lambda r: "not json at all" if r.sample == 1 else {"label": "b"})
    fake = FakeModel(script=rec)
    step = classify(strategy={"name": "vote", "samples": 3, "adaptive": False})
    db = tmp_path / "s.db"
    r = corral.run(make_job(tmp_path, rows, step), model=fake, store=db)
    assert r.written == 1
    # three votes: sample 1 was unusable and its retry became sample 2
    assert [q.sample for q in rec.seen["x"]] == [0, 1, 2, 3]
    vote = [a for a in attempts(db, r.run, "r1") if a["outcome"] == "vote"][0]
    assert vote["data"]["answers"] == 3 and vote["data"]["failed"] == 0
    invalid = [a for a in attempts(db, r.run, "r1") if a["outcome"] == "invalid"]
    assert len(invalid) == 1 and invalid[0]["attempt"] == 1


def test_vote_with_every_sample_unusable_quarantines_the_row(tmp_path):
    rows = {"r1": "x"}
    fake = FakeModel(script=lambda r: "nope")
    step = classify(max_attempts=1, strategy={"name": "vote", "samples": 3})
    r = corral.run(make_job(tmp_path, rows, step), model=fake, store=tmp_path / "s.db")
    assert (r.written, r.quarantined, r.review) == (0, 1, 0)
    assert fake.calls == 3
    q = read_csv(tmp_path / "out" / "o.quarantine.csv")[0]
    assert "not JSON" in q["_reason"] and q["_reason"].startswith("step `cat`:")


def test_strategy_model_can_be_an_installed_model_name(tmp_path):
    rows = {"r1": "some words here"}
    main_fake = FakeModel()
    step = classify(strategy={"name": "vote", "model": "fake:other", "samples": 3})
    db = tmp_path / "s.db"
    r = corral.run(make_job(tmp_path, rows, step), model=main_fake, store=db)
    assert r.written == 1 and main_fake.calls == 0
    models = {row["model"] for row in ledger(db, r.run)}
    assert models == {"fake:other"}


def test_cascade_model_applies_to_stages_without_their_own(tmp_path, strategy_models):
    rows = {"r1": "x"}
    strategy_models["fake:cheap"] = cheap = FakeModel("cheap", script=lambda r: {"label": "a" if r.sample else "b"})
    strategy_models["fake:strong"] = strong = FakeModel("strong", script=lambda r: {"label": "c"})
    step = classify(strategy={
        "name": "cascade", "model": "cheap",
        "stages": [{"name": "vote", "samples": 2}, {"name": "single", "model": "strong"}],
    })
    job = make_job(tmp_path, rows, step, models={"cheap": "fake:cheap", "strong": "fake:strong"})
    main_fake = FakeModel()
    r = corral.run(job, model=main_fake, store=tmp_path / "s.db")
    assert main_fake.calls == 0 and cheap.calls == 2 and strong.calls == 1
    assert r.written == 1 and read_csv(tmp_path / "out" / "o.csv")[0]["cat"] == "c"


def test_best_of_judge_on_its_own_model_picks_the_first_answer_scoring_the_pass_mark(tmp_path, strategy_models):
    rows = {"r1": "x"}
    scores = {"a": 3, "b": 8, "c": 9}
    judged: list[Request] = []

    def judge(r: Request) -> dict[str, Any]:
        judged.append(r)
        label = json.loads(r.messages[-1].content.split("Answer:\n", 1)[1])["label"]
        return {"score": scores[label], "why": "because"}

    strategy_models["fake:judge"] = judge_fake = FakeModel("judge", script=judge)
    # judge calls take sample indexes too: the branches are samples 0, 2, 4, 6
    branch = {0: "a", 2: "b", 4: "c", 6: "c"}
    fake = FakeModel(script=lambda r: label_of(r, branch))
    step = classify(strategy={"name": "best_of", "n": 4, "judge": "Is it right?", "judge_model": "j"})
    db = tmp_path / "s.db"
    r = corral.run(make_job(tmp_path, rows, step, models={"j": "fake:judge"}), model=fake, store=db)
    assert fake.calls == 2 and judge_fake.calls == 2  # a scores 3 (< 7), b scores 8: stop
    assert read_csv(tmp_path / "out" / "o.csv")[0]["cat"] == "b"
    assert "Is it right?" in judged[0].messages[0].content
    best = [a for a in attempts(db, r.run, "r1") if a["outcome"] == "best"][0]
    assert [b["judge"] for b in best["data"]["branches"]] == [3, 8]
    assert sorted(row["model"] for row in ledger(db, r.run)) == ["fake", "fake", "fake:judge", "fake:judge"]


def test_best_of_judge_without_stop_early_keeps_the_highest_score(tmp_path, strategy_models):
    rows = {"r1": "x"}
    scores = {"a": 3, "b": 8, "c": 9}

    def judge(r: Request) -> dict[str, Any]:
        label = json.loads(r.messages[-1].content.split("Answer:\n", 1)[1])["label"]
        return {"score": scores[label], "why": "because"}

    strategy_models["fake:judge"] = FakeModel("judge", script=judge)
    branch = {0: "a", 2: "b", 4: "c", 6: "a"}
    fake = FakeModel(script=lambda r: label_of(r, branch))
    step = classify(strategy={"name": "best_of", "n": 4, "judge": "Score it", "judge_model": "j",
                              "stop_early": False})
    corral.run(make_job(tmp_path, rows, step, models={"j": "fake:judge"}), model=fake, store=tmp_path / "s.db")
    assert fake.calls == 4
    assert read_csv(tmp_path / "out" / "o.csv")[0]["cat"] == "c"


def test_per_record_max_cost_stops_deliberating(tmp_path):
    rows = {"r1": "x"}
    answers = {0: "a", 1: "b", 2: "a", 3: "b", 4: "a"}
    fake = FakeModel(script=lambda r: label_of(r, answers), price_per_call="0.01")
    step = classify(strategy={"name": "vote", "samples": 5})
    job = make_job(tmp_path, rows, step, budget={"per_record": {"max_cost": "0.025"}})
    r = corral.run(job, model=fake, store=tmp_path / "s.db")
    # a third call (0.02 spent, 0.01 the most one cost) could pass 0.025
    assert fake.calls == 2
    assert r.review == 1 and r.cost_usd == Decimal("0.02")
    held = read_csv(tmp_path / r.outputs["review"])[0]
    assert held["_reason"].startswith("step `cat`: budget: record max_cost 0.025 USD reached")
    assert held["cat"] == "a"


def test_run_max_calls_is_never_exceeded_with_deliberation_and_resume_finishes(tmp_path):
    rows = {f"r{i:02d}": f"row {i}" for i in range(24)}
    step = classify(strategy="vote")
    fresh = FakeModel(script=_disputed)
    corral.run(make_job(tmp_path, rows, step, sink="fresh.csv"), model=fresh, store=tmp_path / "fresh.db")
    db = tmp_path / "s.db"
    fake = FakeModel(script=_disputed, latency=0.001)
    r1 = corral.run(make_job(tmp_path, rows, step, budget={"max_calls": 25}, concurrency=16),
                    model=fake, store=db)
    assert r1.status == "stopped" and r1.stop_reason == "budget: max_calls 25 reached"
    assert 0 < fake.calls == r1.calls_made <= 25
    r2 = corral.run(make_job(tmp_path, rows, step, concurrency=16), model=fake, store=db)
    assert r2.status == "finished" and r2.written == 24
    assert fake.calls == fresh.calls
    assert read_csv(tmp_path / "out" / "o.csv") == read_csv(tmp_path / "fresh.csv")


def test_a_strategy_written_by_name_or_with_its_defaults_is_the_same_run(tmp_path):
    rows = {"r1": "x", "r2": "y"}
    db = tmp_path / "s.db"
    m1 = FakeModel(script=lambda r: {"label": "a"})
    r1 = corral.run(make_job(tmp_path, rows, classify(strategy="vote")), model=m1, store=db)
    m2 = FakeModel(script=lambda r: {"label": "a"})
    spelled = {"name": "vote", "samples": 5, "min_samples": 2, "agreement": 1.0, "temperature": 0.7}
    r2 = corral.run(make_job(tmp_path, rows, classify(strategy=spelled)), model=m2, store=db)
    assert r2.run == r1.run and m2.calls == 0
    r3 = corral.run(make_job(tmp_path, rows, classify(strategy={**spelled, "agreement": 0.9})),
                    model=FakeModel(script=lambda r: {"label": "a"}), store=db)
    assert r3.run != r1.run


def test_spec_hash_of_a_job_without_strategies_is_unchanged_by_the_feature(tmp_path):
    job = Job.from_dict({"name": "t", "source": "in.csv", "key": "id", "sink": "o.csv",
                         "steps": [{"name": "cat", "task": "classify", "input": "{text}", "labels": ["a", "b"]}]},
                        base_dir=tmp_path)
    # the hash this job had at the commit before strategies (34dc8d4)
    assert job.spec_hash() == "3387e620669f1f3424739c1942b5633ca0aad0afdccb3c3a8191494e7f463536"


@pytest.mark.parametrize("strategy, says", [
    ({"name": "refine"}, "strategy `refine` has nothing to check answers with; add `checks:`"),
    ({"name": "best_of"}, "strategy `best_of` has nothing to score answers with; add `checks:`"),
    ({"name": "cascade", "stages": ["single", {"name": "refine"}]}, "strategy `refine` has nothing"),
    ({"name": "refine", "critic_model": "fake"}, "`critic_model` is set but `critic` is not"),
])
def test_strategy_without_a_verifier_is_a_one_line_error(tmp_path, strategy, says):
    write(tmp_path / "in.csv", "id,text\nr1,x\n")
    d = {"name": "t", "source": "in.csv", "key": "id", "sink": "o.csv",
         "steps": [classify(strategy=strategy)]}
    with pytest.raises(JobSpecError) as e:
        Job.from_dict(d, base_dir=tmp_path)
    assert says in str(e.value) and "\n" not in str(e.value)
    # with checks on the step, refine and best_of have what they need
    if "critic_model" not in strategy:
        ok = Job.from_dict({**d, "steps": [classify(strategy=strategy, checks=["label != 'zz'"])]},
                           base_dir=tmp_path)
        assert ok.steps[0].checks == ["label != 'zz'"]


def test_a_strategy_written_outside_corral_runs_from_python(tmp_path):
    """The docs' example strategy (docs/models.md), passed as an instance."""
    from corral import Outcome, Solver, Strategy

    class TwoInARow(Strategy):
        name: Literal["two_in_a_row"] = "two_in_a_row"
        limit: int = 6

        async def solve(self, ctx: Solver) -> Outcome:
            last = None
            for _ in range(self.limit):
                s = await ctx.sample(model=self.model, temperature=0.7)
                if s.answer is None:
                    continue
                ctx.offer(s.answer, None)
                if s.answer == last:
                    return Outcome(s.answer, 1.0, ctx.check(s.answer))
                last = s.answer
            ctx.note("vote", f"no two answers in a row agreed in {self.limit} samples")
            return Outcome(last, 0.0, ["no two answers in a row agreed"])

    rows = {"r1": "aab", "r2": "abab"}  # the text is the answers' order: r1 agrees at once

    def script(req: Request) -> dict[str, Any]:
        order = user_text(req)
        return {"label": order[req.sample % len(order)]}

    job = make_job(tmp_path, rows, classify(strategy=TwoInARow(limit=4)))
    fake = FakeModel(script=script)
    r = corral.run(job, model=fake, store=tmp_path / "s.db")
    assert (r.written, r.review) == (1, 1) and fake.calls == 2 + 4
    assert read_csv(tmp_path / "out" / "o.csv")[0]["cat"] == "a"
    assert job.steps[0].model_dump(mode="json")["strategy"] == {"name": "two_in_a_row", "model": None, "limit": 4}


def test_a_cost_cap_with_an_unpriced_strategy_model_stops_and_names_it(tmp_path):
    rows = {f"r{i}": f"text {i}" for i in range(6)}
    step = classify(strategy={"name": "cascade", "threshold": 1.0,
                              "stages": [{"name": "vote", "samples": 2}, {"name": "single", "model": "strong"}]})
    job = make_job(tmp_path, rows, step, models={"strong": {"name": "fake:strong", "price_per_call": None}},
                   budget={"max_cost_usd": 10})
    # votes disagree, so every row escalates to the unpriced model
    fake = FakeModel(price_per_call=0.001, script=lambda r: {"label": "ab"[r.sample % 2]})
    r = corral.run(job, model=fake, store=tmp_path / "s.db")
    assert r.status == "stopped" and r.pending > 0
    assert "model `fake:strong` reports no price" in (r.stop_reason or "")


class _Overlap(corral.Model):
    """A model that counts how many of its calls are in flight at once."""

    id = "overlap"
    capabilities = corral.Capabilities(supports_schema=True, max_concurrency=8)

    def __init__(self) -> None:
        self.now = 0
        self.most = 0

    async def complete(self, request: Request) -> corral.Completion:
        import asyncio

        self.now += 1
        self.most = max(self.most, self.now)
        await asyncio.sleep(0.02)
        self.now -= 1
        return corral.Completion('{"who": "Ann"}', usage=corral.Usage(1, 1, cost=None))


@pytest.mark.parametrize("per_record, overlapped", [(None, True), ({"max_calls": 50}, False)])
def test_chunks_of_one_record_are_asked_at_once_unless_a_record_budget_orders_them(tmp_path, per_record, overlapped):
    long_text = " ".join(f"word{i}" for i in range(400))  # about 3,000 characters: several chunks
    step = extract({"who": {"type": "string", "nullable": True}}, chunking={"size": 600, "overlap": 50})
    extra = {"concurrency": 4}  # one record only: any overlap is between its own chunks
    if per_record:
        extra["budget"] = {"per_record": per_record}
    job = make_job(tmp_path, {"r1": long_text}, step, **extra)
    m = _Overlap()
    r = corral.run(job, model=m, store=tmp_path / "s.db")
    assert r.written == 1 and r.calls_made >= 4
    assert (m.most > 1) is overlapped
