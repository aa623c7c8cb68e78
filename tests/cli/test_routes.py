"""`corral routes`: per step with routes, per route, the rows, calls, cost and (with a labels
file) accuracy of a run, read back from a real SQLite store; System 1's routes by the same
trace contract; the failure paths."""

from __future__ import annotations

import json
import random
import sqlite3
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import corral
from corral import FakeModel, Job
from corral.cli import main
from corral.models.base import Request
from corral.store import open_store
from corral.store.base import AttemptRecord

from ..conftest import write

#: id -> (lang, text, gold label of `reply`)
ROWS = {
    "r1": ("de", "Rechnung falsch", "ja"),
    "r2": ("de", "Paket weg", "nein"),
    "r3": ("en", "invoice wrong", "a"),
    "r4": ("en", "parcel lost", "b"),
    "r5": ("en", "app broken", "a"),
    "r6": ("fr", "facture", "a"),
}

GERMAN = {"name": "german", "when": "lang == 'de'", "labels": ["ja", "nein"], "instructions": "Deutsch."}
VOTE = {"name": "careful", "when": "lang == 'fr'", "strategy": {"name": "vote", "samples": 3, "adaptive": False}}


def make_job(tmp_path: Path, experts: list[dict[str, Any]] | None = None, **extra: Any) -> Job:
    write(tmp_path / "in.csv", "id,lang,text\n" + "".join(f"{k},{lang},{t}\n" for k, (lang, t, _) in ROWS.items()))
    step: dict[str, Any] = {"name": "reply", "task": "classify", "input": "{text}", "labels": ["a", "b", "c"]}
    if experts is not None:
        step["experts"] = experts
    d = {"name": "t", "source": "in.csv", "key": "id", "steps": [step], "sink": "out/o.csv", **extra}
    return Job.from_dict(d, base_dir=tmp_path)


def first_label(request: Request) -> dict[str, str]:
    return {"label": request.schema["properties"]["label"]["enum"][0]}  # type: ignore[index]


def cli(*args: str) -> Any:
    return CliRunner().invoke(main, list(args))


def routes_json(run: str, db: Path, *more: str) -> dict[str, Any]:
    res = cli("routes", run, "--json", "--store", str(db), *more)
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


@pytest.fixture
def routed(tmp_path: Path) -> tuple[str, Path]:
    """A run whose step `reply` routes German rows to `german`, the French one to `careful`
    (a vote of 3), the rest to `default`; each call costs $0.001."""
    job = make_job(tmp_path, [GERMAN, VOTE])
    db = tmp_path / "s.db"
    r = corral.run(job, model=FakeModel(script=first_label, price_per_call="0.001"), store=db)
    assert r.written == 6
    return r.run, db


def test_routes_counts_rows_calls_and_cost_per_route(routed):
    run, db = routed
    out = routes_json(run, db)
    assert (out["run"], out["job"], out["labels"], out["unscored"]) == (run, "t", None, [])
    [step] = out["steps"]
    assert (step["step"], step["rows"], step["system1_rows"], step["system1_share"]) == ("reply", 6, 0, 0.0)
    by = {r["route"]: r for r in step["routes"]}
    assert [r["route"] for r in step["routes"]] == ["german", "careful", "default"]  # experts first
    assert (by["german"]["rows"], by["german"]["calls"], by["german"]["replayed"]) == (2, 2, 0)
    assert (by["careful"]["rows"], by["careful"]["calls"]) == (1, 3)  # the vote's three samples
    assert (by["default"]["rows"], by["default"]["calls"]) == (3, 3)
    assert by["german"]["cost"] == pytest.approx(0.002) and by["careful"]["cost"] == pytest.approx(0.003)
    assert by["default"]["share"] == 0.5
    assert all(r["labeled"] is None and r["accuracy"] is None for r in step["routes"])
    res = cli("routes", run, "--store", str(db))
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0] == f"Routes of run {run} · job t"
    assert "step reply: 6 rows routed" in lines
    header = next(ln for ln in lines if ln.startswith("route"))
    assert header.split() == ["route", "rows", "share", "calls", "replayed", "cost"]
    assert next(ln for ln in lines if ln.startswith("careful")).split() == ["careful", "1", "16.7%", "3", "0", "$0.0030"]


def test_a_rerun_counts_the_same_rows_once_and_its_replays(routed, tmp_path):
    run, db = routed
    job = make_job(tmp_path, [GERMAN, VOTE])
    con = sqlite3.connect(db)  # the rows worked again, as after a crash: routed again, replayed
    with con:
        con.execute("UPDATE records SET state='pending', outputs=NULL WHERE run_id=? AND key IN ('r1','r6')", (run,))
        con.execute("UPDATE runs SET status='interrupted' WHERE id=?", (run,))
    con.close()
    again = corral.run(job, model=FakeModel(script=first_label, price_per_call="0.001"), store=db)
    assert again.run == run
    by = {r["route"]: r for r in routes_json(run, db)["steps"][0]["routes"]}
    assert (by["german"]["rows"], by["german"]["calls"], by["german"]["replayed"]) == (2, 2, 1)
    assert (by["careful"]["rows"], by["careful"]["calls"], by["careful"]["replayed"]) == (1, 3, 3)
    assert by["german"]["cost"] == pytest.approx(0.002)  # a replay costs nothing


def test_routes_with_labels_gives_each_routes_accuracy(routed, tmp_path):
    run, db = routed
    labels = write(tmp_path / "labels.csv", "id,reply\n" + "".join(f"{k},{g}\n" for k, (_, _, g) in ROWS.items()))
    out = routes_json(run, db, "--labels", str(labels))
    [step] = out["steps"]
    assert step["scored"] is True and out["labels"] == str(labels)
    by = {r["route"]: r for r in step["routes"]}
    # the scripted model answers each row's first label: ja, ja | a (French) | a, a, a
    assert (by["german"]["labeled"], by["german"]["correct"], by["german"]["accuracy"]) == (2, 1, 0.5)
    assert (by["careful"]["labeled"], by["careful"]["correct"]) == (1, 1)
    assert (by["default"]["labeled"], by["default"]["correct"]) == (3, 2)
    res = cli("routes", run, "--labels", str(labels), "--store", str(db))
    assert res.exit_code == 0, res.output
    rows = {ln.split()[0]: ln.split() for ln in res.output.splitlines() if ln.split()}
    assert rows["route"][-3:] == ["labeled", "correct", "accuracy"]
    assert rows["german"][-3:] == ["2", "1", "50.0%"] and rows["default"][-3:] == ["3", "2", "66.7%"]


def test_labels_without_the_step_or_with_blank_cells(routed, tmp_path):
    run, db = routed
    other = write(tmp_path / "other.csv", "id,mood\nr1,x\n")
    out = routes_json(run, db, "--labels", str(other))
    assert out["unscored"] == ["reply"] and out["steps"][0]["scored"] is False
    res = cli("routes", run, "--labels", str(other), "--store", str(db))
    assert "step reply: the labels file has no column for it, so no accuracy" in res.output
    some = write(tmp_path / "some.csv", "id,reply\nr1,ja\nr3,\nr4,b\n")  # r3's cell is blank: not labeled
    by = {r["route"]: r for r in routes_json(run, db, "--labels", str(some))["steps"][0]["routes"]}
    assert (by["german"]["labeled"], by["german"]["correct"]) == (1, 1)
    assert (by["default"]["labeled"], by["default"]["correct"], by["careful"]["labeled"]) == (1, 0, 0)
    assert by["careful"]["accuracy"] is None


def test_an_unknown_price_is_unknown_never_zero(tmp_path):
    job = make_job(tmp_path, [GERMAN])
    db = tmp_path / "s.db"
    r = corral.run(job, model=FakeModel(script=first_label, price_per_call=None), store=db)
    by = {x["route"]: x for x in routes_json(r.run, db)["steps"][0]["routes"]}
    assert by["german"]["cost"] is None and by["german"]["calls"] == 2
    res = cli("routes", r.run, "--store", str(db))
    assert next(ln for ln in res.output.splitlines() if ln.startswith("german")).split()[-1] == "unknown"


def test_a_run_without_routes_says_so_in_one_line(tmp_path):
    job = make_job(tmp_path)
    db = tmp_path / "s.db"
    r = corral.run(job, model=FakeModel(script=first_label), store=db)
    res = cli("routes", r.run, "--store", str(db))
    assert res.exit_code == 0
    assert res.output.strip().splitlines() == [
        f"run {r.run} (job t) has no routes: none of its steps has `experts:` or System 1 (see docs/jobs.md)"]
    out = routes_json(r.run, db, "--labels", "nothing.csv")  # no routes: the labels are not read
    assert out["steps"] == [] and out["run"] == r.run


def test_system1_routes_read_by_the_same_contract(tmp_path):
    """System 1 writes `route` events too (`system1`: answered with no call, `audit`: sure, and
    asked all the same): their rows, the share System 1 took, and `corral show`'s line."""
    job = make_job(tmp_path)
    db = tmp_path / "s.db"
    r = corral.run(job, model=FakeModel(script=first_label, price_per_call="0.001"), store=db)
    events = []
    for k, route in (("r1", "system1"), ("r2", "system1"), ("r3", "audit"), ("r4", "default")):
        data = {"route": route, "p": 0.97, "threshold": 0.9, "answer": {"label": "a"}}
        events.append(AttemptRecord(r.run, k, "reply", 0, None, "route", f"{route}: p 0.97 >= threshold 0.90",
                                    json.dumps(data)))
    st = open_store(db)
    try:
        st.commit([], events, [])
        assert [x.route for x in st.routes(r.run)] == ["system1", "system1", "audit", "default"]
        assert st.routes(r.run)[0].data["p"] == 0.97
        spend = {x.key: x for x in st.record_spend(r.run, ["reply"])}
        assert spend["r1"].calls == 1 and spend["r1"].cost == Decimal("0.001")
        assert st.record_spend(r.run, ["other"]) == []
    finally:
        st.close()
    step = routes_json(r.run, db)["steps"][0]
    assert (step["rows"], step["system1_rows"], step["system1_share"]) == (4, 2, 0.5)
    assert [x["route"] for x in step["routes"]] == ["system1", "audit", "default"]
    res = cli("routes", r.run, "--store", str(db))
    assert "step reply: 4 rows routed; System 1 took 2 (50.0%) without a call" in res.output
    res = cli("show", r.run, "r1", "--store", str(db))
    assert '» route: step `reply` -> system1: p 0.97 >= threshold 0.90 (answer {"label": "a"})' in res.output
    # a detail that says nothing of them: the data's probability and threshold are added
    st = open_store(db)
    try:
        st.commit([], [AttemptRecord(r.run, "r5", "reply", 0, None, "route", None,
                                     json.dumps({"route": "system1", "p": 0.97, "threshold": 0.9}))], [])
    finally:
        st.close()
    res = cli("show", r.run, "r5", "--store", str(db))
    assert "» route: step `reply` -> system1 (p 0.97, threshold 0.90)" in res.output


@pytest.mark.parametrize("args,says", [
    (["routes", "nope"], "error: no run matches `nope` — list runs with `corral runs`"),
    (["routes", "RUN", "--labels", "missing.csv"], "error: labels file not found: missing.csv"),
    (["routes", "RUN", "--labels", "LABELS", "--key-column", "ident"], "labels file labels.csv has no key column `ident`"),
    (["routes", "RUN", "--labels", "FOREIGN"], "has none of the labeled keys (e.g. zz1)"),
])
def test_routes_failures_are_one_line_and_exit_2(routed, tmp_path, args, says):
    run, db = routed
    labels = write(tmp_path / "labels.csv", "id,reply\nr1,ja\n")
    foreign = write(tmp_path / "foreign.csv", "id,reply\nzz1,ja\n")
    argv = [{"RUN": run, "LABELS": str(labels), "FOREIGN": str(foreign)}.get(a, a) for a in args]
    res = cli(*argv, "--store", str(db))
    assert res.exit_code == 2, res.output
    assert says in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    if args[1] == "nope":  # the same error as `corral show`
        assert res.stderr == cli("show", "nope", "r1", "--store", str(db)).stderr


def test_experts_and_system1_on_one_step_each_row_has_one_route(tmp_path):
    """System 1 answers only rows on the step as written: an expert's rows are the expert's (it
    may have other labels, which System 1 never learned); `corral routes` counts both."""
    pytest.importorskip("sklearn")
    from ..engine.test_system1 import TOPICS, make, texts

    rnd = random.Random(0)
    labeled = [(t, rnd.choice(sorted(TOPICS)) if rnd.random() < 0.08 else k) for t, k in texts(600, seed=2)]
    job = make(tmp_path, texts(300, seed=1), {"labels": "labels.csv", "label_column": "topic", "min_rows": 100},
               labels=labeled)
    spec = job.model_dump(mode="json")
    spec["steps"][0]["experts"] = [{"name": "sevens", "when": "id[-1] == '7'", "instructions": "Rows ending in 7."}]
    job = Job.from_dict(spec, base_dir=tmp_path)
    assert job.steps[0].routes()[0].step.system1 is None  # the expert has no System 1 of its own
    r = corral.run(job)
    assert r.written == 300 and r.system1[0]["taken"] > 0
    out = routes_json(r.run, Path(r.store or ""))
    [step] = out["steps"]
    by = {x["route"]: x for x in step["routes"]}
    assert by["sevens"]["rows"] == 30 and by["sevens"]["calls"] == 30  # all asked, none by System 1
    assert set(by) <= {"sevens", "system1", "audit", "default"} and step["rows"] == 300
    assert step["system1_rows"] == r.system1[0]["taken"] == by["system1"]["rows"] and by["system1"]["calls"] == 0
