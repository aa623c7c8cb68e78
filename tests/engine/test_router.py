"""The rules router: a step's `experts:` (variants of the step, each for the rows its `when:` is
true for) through the engine, with scripted fake models and a real SQLite store: which rows
each expert takes, what reaches its requests, the route events in the trace, the job errors."""

from __future__ import annotations

import csv
import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import corral
from corral import FakeModel, Job
from corral.cli import main as cli_main
from corral.errors import JobSpecError, SourceError, UserError
from corral.models.base import Request
from corral.testing import plain

from ..conftest import scripted_models, write

ROWS = {
    "r1": ("de", "Meine Rechnung ist falsch"),
    "r2": ("fr", "Ma facture est fausse"),
    "r3": ("en", "My invoice is wrong"),
    "r4": ("de", "Paket verloren"),
    "r5": ("en", "Where is my parcel"),
}


def make_job(tmp_path: Path, steps: list[dict[str, Any]], rows: dict[str, tuple[str, str]] = ROWS,
             **extra: Any) -> Job:
    write(tmp_path / "in.csv", "id,lang,text\n" + "".join(f"{k},{lang},{t}\n" for k, (lang, t) in rows.items()))
    d = {"name": "t", "source": "in.csv", "key": "id", "steps": steps, "sink": "out/o.csv", **extra}
    return Job.from_dict(d, base_dir=tmp_path)


def reply(**kw: Any) -> dict[str, Any]:
    return {"name": "reply", "task": "classify", "input": "{text}", "labels": ["a", "b", "c"], **kw}


GERMAN = {"name": "german", "when": "lang == 'de'", "instructions": "Antworte auf Deutsch.",
          "labels": ["ja", "nein"]}
# also true for the German rows: the first expert that matches takes a row
BIG = {"name": "big", "when": "lang in ['de', 'fr']", "model": "big", "input": "FR: {text}"}


class Recorder:
    """A script that records the requests it answers (thread-safe)."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.seen: list[Request] = []
        self.lock = threading.Lock()

    def __call__(self, request: Request) -> Any:
        with self.lock:
            self.seen.append(request)
        return self.answer(request)

    def users(self) -> list[str]:
        return sorted(plain(r.messages[1].content) for r in self.seen)


def labels_of(request: Request) -> list[str]:
    return request.schema["properties"]["label"]["enum"]  # type: ignore[index]


def first_label(request: Request) -> dict[str, str]:
    return {"label": labels_of(request)[0]}


@pytest.fixture
def models(monkeypatch: pytest.MonkeyPatch) -> dict[str, FakeModel]:
    """Scripted fake models by id (``fake:NAME``) for a job's ``models:`` entries."""
    return scripted_models(monkeypatch)


def read_csv(p: Path) -> list[dict[str, str]]:
    with open(p, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def route_events(db: Path, run: str) -> dict[str, dict[str, Any]]:
    con = sqlite3.connect(db)
    try:
        rows = con.execute("SELECT key, step, attempt, request_hash, detail, data FROM attempts "
                           "WHERE run_id=? AND outcome='route' ORDER BY id", (run,)).fetchall()
    finally:
        con.close()
    return {k: {"step": s, "attempt": a, "hash": h, "detail": d, "data": json.loads(data)}
            for k, s, a, h, d, data in rows}


# --- routing -----------------------------------------------------------------------------------


def test_the_first_matching_expert_takes_a_row_and_the_step_as_written_the_rest(tmp_path, models):
    main = Recorder(first_label)
    big = Recorder(lambda r: {"label": "b"})
    models["fake:big"] = FakeModel("big", script=big)
    job = make_job(tmp_path, [reply(experts=[GERMAN, BIG])], models={"big": "fake:big"})
    db = tmp_path / "s.db"
    r = corral.run(job, model=FakeModel(script=main), store=db)
    assert (r.status, r.written) == ("finished", 5)
    out = {x["id"]: x["reply"] for x in read_csv(tmp_path / "out" / "o.csv")}
    # German rows: the german expert's labels; French: the big model; the rest: the step's labels
    assert out == {"r1": "ja", "r4": "ja", "r2": "b", "r3": "a", "r5": "a"}
    # each expert's own prompt, labels and model reached the request
    german = [q for q in main.seen if "Antworte auf Deutsch." in q.messages[0].content]
    assert sorted(plain(q.messages[1].content) for q in german) == ["Meine Rechnung ist falsch", "Paket verloren"]
    assert all(labels_of(q) == ["ja", "nein"] for q in german)
    rest = [q for q in main.seen if q not in german]
    assert sorted(plain(q.messages[1].content) for q in rest) == ["My invoice is wrong", "Where is my parcel"]
    assert all(labels_of(q) == ["a", "b", "c"] and "Deutsch" not in q.messages[0].content for q in rest)
    assert big.users() == ["FR: Ma facture est fausse"]  # the big model saw the French row only
    assert labels_of(big.seen[0]) == ["a", "b", "c"]  # (the step's labels: the expert kept them)
    # one route event per (record, step), with the route's name and why
    ev = route_events(db, r.run)
    assert {k: e["data"] for k, e in ev.items()} == {
        "r1": {"route": "german"}, "r4": {"route": "german"}, "r2": {"route": "big"},
        "r3": {"route": "default"}, "r5": {"route": "default"}}
    assert ev["r1"]["detail"] == "expert `german`: when lang == 'de'"
    assert ev["r3"]["detail"] == "default: no expert's when: is true"
    assert all(e["step"] == "reply" and e["attempt"] == 0 and e["hash"] is None for e in ev.values())
    # the ledger attributes the expert's calls to its step, on the expert's model
    con = sqlite3.connect(db)
    try:
        assert dict(con.execute("SELECT key, model FROM ledger WHERE run_id=? AND step='reply'", (r.run,))) == {
            "r1": "fake", "r4": "fake", "r2": "fake:big", "r3": "fake", "r5": "fake"}
    finally:
        con.close()


def test_corral_show_prints_the_route_as_a_decision(tmp_path):
    job = make_job(tmp_path, [reply(experts=[GERMAN])])
    db = tmp_path / "s.db"
    r = corral.run(job, model=FakeModel(script=first_label), store=db)
    res = CliRunner().invoke(cli_main, ["show", r.run, "r1", "--store", str(db)])
    assert res.exit_code == 0, res.output
    assert "» route: step `reply` -> expert `german`: when lang == 'de'" in res.output
    assert res.output.index("» route:") < res.output.index("step reply · attempt 1")  # before its calls
    res = CliRunner().invoke(cli_main, ["show", r.run, "r3", "--json", "--store", str(db)])
    trace = json.loads(res.output)["trace"]
    assert trace[0]["outcome"] == "route" and trace[0]["data"] == {"route": "default"}
    assert not any(c["outcome"] == "route" for c in json.loads(res.output)["calls"])  # not a call


def test_an_experts_when_reads_an_earlier_steps_answer(tmp_path):
    steps = [
        {"name": "topic", "task": "classify", "input": "{text}", "labels": ["billing", "other"]},
        reply(experts=[{"name": "money", "when": "topic == 'billing'", "labels": ["refund", "none"]}]),
    ]
    job = make_job(tmp_path, steps)

    def answer(q: Request) -> dict[str, str]:
        labels = labels_of(q)
        if labels == ["billing", "other"]:
            text = q.messages[1].content
            return {"label": "billing" if "invoice" in text or "Rechnung" in text or "facture" in text else "other"}
        return {"label": labels[0]}

    db = tmp_path / "s.db"
    r = corral.run(job, model=FakeModel(script=answer), store=db)
    out = {x["id"]: (x["topic"], x["reply"]) for x in read_csv(tmp_path / "out" / "o.csv")}
    assert out == {"r1": ("billing", "refund"), "r2": ("billing", "refund"), "r3": ("billing", "refund"),
                   "r4": ("other", "a"), "r5": ("other", "a")}
    assert {k: e["data"]["route"] for k, e in route_events(db, r.run).items()} == {
        "r1": "money", "r2": "money", "r3": "money", "r4": "default", "r5": "default"}


def test_an_experts_when_over_a_step_that_did_not_run_is_false(tmp_path):
    steps = [
        {"name": "topic", "task": "classify", "input": "{text}", "labels": ["x", "y"], "when": "lang == 'en'"},
        reply(experts=[{"name": "by_topic", "when": "topic == 'x' or lang == 'de'", "labels": ["t", "u"]}]),
    ]
    job = make_job(tmp_path, steps)
    db = tmp_path / "s.db"
    r = corral.run(job, model=FakeModel(script=first_label), store=db)
    routes = {k: e["data"]["route"] for k, e in route_events(db, r.run).items()}
    # `topic` ran for the English rows only: for the others the expert's when: is false
    assert routes == {"r3": "by_topic", "r5": "by_topic", "r1": "default", "r2": "default", "r4": "default"}


def test_a_step_whose_own_when_is_false_routes_nothing(tmp_path):
    job = make_job(tmp_path, [reply(when="lang != 'fr'", experts=[GERMAN])])
    db = tmp_path / "s.db"
    r = corral.run(job, model=FakeModel(script=first_label), store=db)
    assert set(route_events(db, r.run)) == {"r1", "r3", "r4", "r5"}
    assert r.written == 5


def test_an_experts_when_that_fails_on_a_row_quarantines_it_naming_the_expert(tmp_path):
    job = make_job(tmp_path, [reply(experts=[{"name": "num", "when": "int(lang) > 1", "labels": ["x", "y"]}])])
    db = tmp_path / "s.db"
    r = corral.run(job, model=FakeModel(script=first_label), store=db)
    assert (r.quarantined, r.written, r.calls_made) == (5, 0, 0)
    q = read_csv(tmp_path / "out" / "o.quarantine.csv")
    assert q[0]["_reason"].startswith("step `reply`: expert `num`: when `int(lang) > 1` could not be evaluated")
    assert route_events(db, r.run) == {}


def test_a_rerun_replays_every_route_and_pays_nothing(tmp_path):
    job = make_job(tmp_path, [reply(experts=[GERMAN])])
    db = tmp_path / "s.db"
    first = corral.run(job, model=FakeModel(script=first_label), store=db)
    fake = FakeModel(script=first_label)
    again = corral.run(job, model=fake, store=db)
    assert again.run == first.run and fake.calls == 0


# --- identity ----------------------------------------------------------------------------------


def test_experts_are_part_of_the_steps_identity_and_a_dump_loads_back(tmp_path, models):
    plain = make_job(tmp_path, [reply()])
    empty = make_job(tmp_path, [reply(experts=[])])
    assert plain.spec_hash() == empty.spec_hash()  # no experts: the run id jobs had before
    assert "experts" not in plain.model_dump(mode="json")["steps"][0]
    one = make_job(tmp_path, [reply(experts=[GERMAN])])
    other = make_job(tmp_path, [reply(experts=[{**GERMAN, "instructions": "Auf Deutsch, bitte."}])])
    assert len({plain.spec_hash(), one.spec_hash(), other.spec_hash()}) == 3
    # `model:` is kept as the strategy it is short for, whichever way the YAML spelled it
    job = make_job(tmp_path, [reply(experts=[BIG])], models={"big": "fake:big"})
    dumped = job.model_dump(mode="json")
    expert = dumped["steps"][0]["experts"][0]
    assert expert == {"name": "big", "when": "lang in ['de', 'fr']", "input": "FR: {text}",
                      "strategy": {"name": "single", "model": "big"}}
    back = Job.from_dict(dumped, base_dir=tmp_path)
    assert back.spec_hash() == job.spec_hash()
    assert back.steps[0].routes()[0].step.strategy.model == "big"
    spelled = make_job(tmp_path, [reply(experts=[{**{k: v for k, v in BIG.items() if k != "model"},
                                                   "strategy": {"name": "single", "model": "big"}}])],
                       models={"big": "fake:big"})
    assert spelled.spec_hash() == job.spec_hash()
    # a key the expert sets to its default, against its step's value, is kept in the dump
    skip = make_job(tmp_path, [reply(on_empty="skip", experts=[{**GERMAN, "on_empty": "quarantine"}])])
    assert skip.model_dump(mode="json")["steps"][0]["experts"][0]["on_empty"] == "quarantine"
    same = Job.from_dict(skip.model_dump(mode="json"), base_dir=tmp_path)
    assert same.steps[0].routes()[0].step.on_empty == "quarantine"
    assert skip.spec_hash() != make_job(tmp_path, [reply(on_empty="skip", experts=[GERMAN])]).spec_hash()


def test_an_expert_is_a_full_step_of_its_task_with_the_steps_name():
    job = Job.from_dict({"name": "t", "source": "in.csv", "sink": "o.csv", "steps": [
        reply(instructions="base", max_tokens=64, experts=[GERMAN, {"name": "hot", "when": "lang == 'en'",
                                                                    "temperature": 0.5}])]})
    step = job.steps[0]
    german, hot = (e.step for e in step.routes())
    assert type(german) is type(step) and german.name == "reply" and german.when is None
    assert (german.instructions, german.max_tokens) == ("Antworte auf Deutsch.", 64)
    assert list(german.labels) == ["ja", "nein"]
    assert (hot.instructions, hot.temperature, list(hot.labels)) == ("base", 0.5, ["a", "b", "c"])
    assert step.variants() == [step, german, hot]


# --- job errors: one line each, naming the step and the expert ---------------------------------


@pytest.mark.parametrize("expert,says", [
    ({"name": "g", "when": "lang == 'de'", "lables": ["x"]},
     "steps[0] (step `reply`): unknown key `lables` in expert `g`; did you mean `labels`?"),
    ({"name": "g", "labels": ["x", "y"]}, "expert `g` needs `when:`"),
    ({"when": "lang == 'de'"}, "experts[0] needs `name:`"),
    ({"name": "1st", "when": "lang == 'de'"}, "expert name `1st` must start with a letter or _"),
    ({"name": "default", "when": "lang == 'de'"}, "expert name `default` is taken"),
    ({"name": "system1", "when": "lang == 'de'"}, "expert name `system1` is taken"),
    ({"name": "g", "when": "lang =="}, "expert `g`: when: `lang ==` is not a valid expression"),
    ({"name": "g", "when": "lang == 'de'", "task": "extract"}, "expert `g` cannot set `task`: an expert runs its step's task"),
    ({"name": "g", "when": "lang == 'de'", "mode": "batch"}, "expert `g` cannot set `mode`: `mode:` is the step's"),
    ({"name": "g", "when": "lang == 'de'", "experts": []}, "expert `g` cannot set `experts`: experts do not nest"),
    ({"name": "g", "when": "lang == 'de'", "system1": {}}, "expert `g` cannot set `system1`: System 1 is the step's"),
    ({"name": "g", "when": "lang == 'de'", "model": "nope"},
     "step `reply`: expert `g`: model `nope` is neither a key of `models:` nor an installed model"),
    ({"name": "g", "when": "lang == 'de'", "model": {"name": "fake"}}, "expert `g`: `model:` is a model name"),
    ({"name": "g", "when": "lang == 'de'", "temperature": 5}, "expert `g` temperature: Input should be less than or equal to 2"),
    ({"name": "g", "when": "lang == 'de'", "strategy": "refine"}, "expert `g`: strategy `refine` has nothing to check answers with"),
    ({"name": "g", "when": "lang == 'de'", "multi_label": True}, "expert `g` writes the columns `reply` (list), its step `reply` (string)"),
])
def test_a_bad_expert_is_one_line_naming_the_step_and_the_expert(tmp_path, expert, says):
    with pytest.raises(JobSpecError) as e:
        make_job(tmp_path, [reply(experts=[expert])])
    msg = str(e.value)
    assert says in msg, msg
    assert "\n" not in msg and "step `reply`" in msg


def test_two_experts_of_one_name_and_a_list_that_is_not_of_mappings(tmp_path):
    with pytest.raises(JobSpecError, match="two experts are named `g`"):
        make_job(tmp_path, [reply(experts=[{"name": "g", "when": "true"}, {"name": "g", "when": "false"}])])
    with pytest.raises(JobSpecError, match="`experts:` is a list of mappings"):
        make_job(tmp_path, [reply(experts=["german"])])


def test_an_extract_expert_must_keep_its_steps_fields(tmp_path):
    step = {"name": "ex", "task": "extract", "input": "{text}", "fields": {"amount": {"type": "number"}},
            "experts": [{"name": "g", "when": "lang == 'de'", "fields": {"betrag": {"type": "number"}}}]}
    with pytest.raises(JobSpecError) as e:
        make_job(tmp_path, [step])
    assert "expert `g` writes the columns `betrag` (number), its step `amount` (number)" in str(e.value)
    same = {**step, "experts": [{"name": "g", "when": "lang == 'de'",
                                 "fields": {"amount": {"type": "number", "description": "Betrag in Euro"}}}]}
    assert make_job(tmp_path, [same]).steps[0].routes()[0].step.fields["amount"].description == "Betrag in Euro"


def test_an_expert_reading_a_name_that_is_not_there_stops_the_run_before_any_call(tmp_path):
    job = make_job(tmp_path, [reply(experts=[{"name": "g", "when": "lnag == 'de'"}])])
    fake = FakeModel()
    with pytest.raises(SourceError) as e:
        corral.run(job, model=fake, store=tmp_path / "s.db")
    assert "step `reply`: expert `g`: when: uses `lnag`, which is not a column of in.csv" in str(e.value)
    assert "did you mean `lang`?" in str(e.value) and fake.calls == 0
    job = make_job(tmp_path, [reply(experts=[{"name": "g", "when": "lang == 'de'", "input": "{txt}"}])])
    with pytest.raises(SourceError, match=r"step `reply`: expert `g` uses \{txt\}"):
        corral.run(job, model=fake, store=tmp_path / "s.db")


def test_an_experts_model_must_be_able_to_do_what_the_expert_asks(tmp_path):
    job = make_job(tmp_path, [reply(experts=[{"name": "g", "when": "lang == 'de'", "min_confidence": 0.5}])])
    with pytest.raises(UserError) as e:
        corral.run(job, model=FakeModel(), store=tmp_path / "s.db")
    assert "step `reply` (expert `g`): `min_confidence` needs a confidence" in str(e.value)
