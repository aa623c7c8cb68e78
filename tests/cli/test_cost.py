"""``corral cost``: the ledger rolled up across runs by step, tag, model, strategy and kind, on
real runs (the engine, the SQLite store, scripted fake models), compared with the ledger's own
sums; unknown prices stay unknown; bad input is one line and exit 2."""

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
from corral._cost import cost_report
from corral._kinds import CALL_KINDS, derive_kind
from corral.cli import main
from corral.models.base import Request
from corral.store import open_store
from corral.testing import plain

from ..conftest import scripted_models, write, write_csv

D = Decimal


@pytest.fixture
def models(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    return scripted_models(monkeypatch)


def user_text(r: Request) -> str:
    return plain(r.messages[1].content)


def job(tmp: Path, rows: dict[str, str], steps: list[dict[str, Any]], name: str = "costs", **extra: Any) -> Job:
    write_csv(tmp / "in.csv", ["id", "text"], rows.items())
    return Job.from_dict({"name": name, "source": "in.csv", "key": "id", "steps": steps,
                          "sink": f"out/{name}.csv", **extra}, base_dir=tmp)


def ledger_sums(db: Path, group: str = "1") -> dict[Any, tuple[int, int, int, int, Decimal | None]]:
    """The ledger summed by ``group`` (SQL) with SQLite alone: paid calls, replays, paid input and
    output tokens, paid cost (None when a paid row has no price)."""
    con = sqlite3.connect(db)
    try:
        rows = con.execute(
            f"SELECT {group}, SUM(replayed=0), SUM(replayed=1), SUM(CASE WHEN replayed=0 THEN input_tokens ELSE 0 END), "
            "SUM(CASE WHEN replayed=0 THEN output_tokens ELSE 0 END), SUM(cost_nanos), "
            f"SUM(replayed=0 AND cost_nanos IS NULL) FROM ledger GROUP BY {group}").fetchall()
    finally:
        con.close()
    return {r[0]: (r[1], r[2], r[3], r[4], None if r[6] else D(r[5] or 0) / 10**9) for r in rows}


def cost_json(db: Path, *args: str) -> dict[str, Any]:
    res = CliRunner().invoke(main, ["cost", *args, "--json", "--store", str(db)])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def by_group(lines: list[dict[str, Any]], *dims: str) -> dict[Any, dict[str, Any]]:
    return {(ln[dims[0]] if len(dims) == 1 else tuple(ln[d] for d in dims)): ln for ln in lines}


def cascade_run(tmp: Path, models: dict[str, Any]) -> tuple[Path, corral.RunResult]:
    """A run of :func:`cascade_job` in store ``tmp/s.db``."""
    db = tmp / "s.db"
    return db, corral.run(cascade_job(tmp, models), model=FakeModel(), store=db)


def cascade_job(tmp: Path, models: dict[str, Any]) -> Job:
    """A cascade (a vote of 3 on `cheap`, then `strong`) over three rows: `easy one` agrees at
    once, `easy two` answers with no JSON first (the step retries), `hard one` is disputed and
    escalates."""

    def cheap(r: Request) -> Any:
        text = user_text(r)
        if text == "easy two" and r.sample == 0:
            return "not JSON at all"
        if text.startswith("easy"):
            return {"label": "a"}
        return {"label": "a" if r.sample % 2 == 0 else "b"}

    models["fake:cheap"] = FakeModel("cheap", script=cheap, price_per_call="0.001")
    models["fake:strong"] = FakeModel("strong", script=lambda r: {"label": "c"}, price_per_call="0.01")
    step = {"name": "cat", "task": "classify", "input": "{text}", "labels": ["a", "b", "c"], "strategy": {
        "name": "cascade", "threshold": 0.8,
        "stages": [{"name": "vote", "samples": 3, "model": "cheap"}, {"name": "single", "model": "strong"}]}}
    return job(tmp, {"e1": "easy one", "e2": "easy two", "h1": "hard one"}, [step],
               models={"cheap": "fake:cheap", "strong": "fake:strong"}, tags={"team": "growth"})


def test_kinds_of_a_cascade_with_a_retry_and_an_escalation(tmp_path, models):
    db, r = cascade_run(tmp_path, models)
    assert (r.written, r.calls_made) == (3, 9)
    rep = cost_json(db, "--by", "kind")
    kinds = by_group(rep["lines"], "kind")
    # e1: first try + 1 vote sample; e2: first try, its retry, 1 vote sample; h1: first try, 2
    # vote samples, then the strong stage
    assert {k: v["calls"] for k, v in kinds.items()} == {"first try": 3, "retry": 1, "vote sample": 4, "escalation": 1}
    assert kinds["escalation"]["cost"] == "0.01" and kinds["first try"]["cost"] == "0.003"
    sums = ledger_sums(db, "kind")
    assert {k: (v["calls"], v["input_tokens"], v["output_tokens"], D(v["cost"])) for k, v in kinds.items()} == {
        k: (s[0], s[2], s[3], s[4]) for k, s in sums.items()}
    t = rep["total"]
    assert (t["calls"], D(t["cost"]), t["written"], D(t["per_row"])) == (9, D("0.018"), 3, D("0.006"))
    assert D(rep["extra"]["cost"]) == D("0.015") and rep["extra"]["calls"] == 6  # beyond the first try
    assert rep["retries"]["calls"] == 1 and D(rep["retries"]["cost"]) == D("0.001")
    assert rep["deliberation"]["calls"] == 5 and D(rep["deliberation"]["cost"]) == D("0.014")
    assert D(rep["first_try"]["cost"]) + D(rep["extra"]["cost"]) == D(t["cost"])
    # the other dimensions sum to the same ledger
    (s,) = ledger_sums(db).values()
    for dims in (("step",), ("model",), ("strategy",), ("tag",), ("step", "model", "kind")):
        lines = cost_json(db, "--by", ",".join(dims))["lines"]
        assert sum(ln["calls"] for ln in lines) == s[0] == 9
        assert sum(D(ln["cost"]) for ln in lines) == s[4]
        assert sum(ln["input_tokens"] for ln in lines) == s[2]
    models_ = by_group(cost_json(db, "--by", "model")["lines"], "model")
    assert {m: (v["calls"], v["cost"]) for m, v in models_.items()} == {
        "fake:cheap": (8, "0.008"), "fake:strong": (1, "0.01")}
    assert [ln["tag"] for ln in cost_json(db, "--by", "tag")["lines"]] == ["team=growth"]


def test_kinds_written_before_the_kind_column_are_guessed_from_the_trace(tmp_path, models):
    db, r = cascade_run(tmp_path, models)
    recorded = {k: v["calls"] for k, v in by_group(cost_json(db, "--by", "kind")["lines"], "kind").items()}
    con = sqlite3.connect(db)
    con.execute("UPDATE ledger SET kind=NULL")  # a store written before m005
    con.commit()
    con.close()
    guessed = {k: v["calls"] for k, v in by_group(cost_json(db, "--by", "kind")["lines"], "kind").items()}
    assert recorded == {"first try": 3, "retry": 1, "vote sample": 4, "escalation": 1}
    # the one ambiguity: a vote's retry reads like one of its samples
    assert guessed == {"first try": 3, "vote sample": 5, "escalation": 1}
    assert derive_kind("critic", "refine", 1, False) == "critique"
    assert derive_kind("judge", "best_of", 3, False) == "judge"
    assert derive_kind("sample", "cascade/stage 2 (single on strong)", 3, False) == "escalation"
    assert derive_kind(None, "single", 1, False) == "retry"
    assert derive_kind(None, "single", 0, True) == "System 1"
    assert derive_kind("calibrate", "single", 0, True) == "calibration"


def test_refine_critique_and_best_of_judge(tmp_path, models):
    judged: dict[str, int] = {}

    def critic(r: Request) -> dict[str, Any]:
        answer = json.loads(r.messages[-1].content.split("Answer:\n", 1)[1])
        return {"ok": answer["amount"] >= 10, "problems": [] if answer["amount"] >= 10 else ["double it"]}

    def judge(r: Request) -> dict[str, Any]:
        key = r.messages[-1].content.split("Answer:")[0]
        judged[key] = judged.get(key, 0) + 1
        return {"score": 3 if judged[key] == 1 else 9, "why": "ok"}  # the second branch passes

    models["fake:critic"] = FakeModel("critic", script=critic, price_per_call="0.002")
    models["fake:judge"] = FakeModel("judge", script=judge, price_per_call="0.003")

    def main_script(r: Request) -> dict[str, Any]:
        if "amount" in (r.schema or {}).get("properties", {}):
            return {"amount": 10.0 if len(r.messages) > 2 else 5.0}  # the repair doubles it
        return {"label": "a"}

    steps = [
        {"name": "amt", "task": "extract", "input": "{text}", "fields": {"amount": "number"},
         "strategy": {"name": "refine", "critic": "Check the amount.", "critic_model": "checker"}},
        {"name": "cat", "task": "classify", "input": "{text}", "labels": ["a", "b"],
         "strategy": {"name": "best_of", "n": 3, "judge": "Score it.", "judge_model": "scorer"}},
    ]
    j = job(tmp_path, {"r1": "pay 5", "r2": "pay 6"}, steps, models={"checker": "fake:critic", "scorer": "fake:judge"})
    db = tmp_path / "s.db"
    r = corral.run(j, model=FakeModel(script=main_script, price_per_call="0.001"), store=db)
    assert r.written == 2
    lines = by_group(cost_json(db, "--by", "step,kind")["lines"], "step", "kind")
    # per row: refine = answer, critic, repair, critic; best_of = branch, judge, branch, judge
    assert {k: v["calls"] for k, v in lines.items()} == {
        ("amt", "first try"): 2, ("amt", "critique"): 6, ("cat", "first try"): 2,
        ("cat", "judge"): 4, ("cat", "vote sample"): 2}
    assert lines[("amt", "critique")]["cost"] == str(D("0.002") * 4 + D("0.001") * 2)
    assert D(lines[("cat", "judge")]["cost"]) == D("0.012")
    sums = ledger_sums(db, "kind")
    kinds = by_group(cost_json(db, "--by", "kind")["lines"], "kind")
    assert {k: (v["calls"], D(v["cost"])) for k, v in kinds.items()} == {k: (s[0], s[4]) for k, s in sums.items()}


def test_replays_across_runs_cost_nothing_new_and_tags_split_the_spend(tmp_path):
    rows = {f"r{i}": f"text number {i}" for i in range(6)}
    step = {"name": "cat", "task": "classify", "input": "{text}", "labels": ["a", "b"]}
    model = {"name": "fake", "price_per_call": 0.001}
    db = tmp_path / "s.db"
    first = corral.run(job(tmp_path, rows, [step], name="nightly", model=model, tags={"team": "a"}), store=db)
    # another job over the same rows with the same prompts: every answer is in the store
    again = corral.run(job(tmp_path, rows, [step], name="rerun", model=model, tags={"team": "b", "env": "dev"}), store=db)
    assert (first.calls_made, again.calls_made, again.calls_replayed) == (6, 0, 6)
    rep = cost_json(db, "--by", "tag")
    tags = by_group(rep["lines"], "tag")
    assert {t: (v["calls"], v["cost"], v["replayed"], v["replay_value"]) for t, v in tags.items()} == {
        "team=a": (6, "0.006", 0, "0"), "env=dev": (0, "0", 6, "0.006"), "team=b": (0, "0", 6, "0.006")}
    t = rep["total"]
    assert (t["calls"], t["replayed"], t["cost"], t["replay_value"], t["written"]) == (6, 6, "0.006", "0.006", 12)
    assert D(t["per_row"]) == D("0.0005")  # what was paid over every row written
    assert by_group(rep["kinds"], "kind")["replay"]["replayed"] == 6
    (s,) = ledger_sums(db).values()
    assert (s[0], s[1], s[4]) == (t["calls"], t["replayed"], D(t["cost"]))
    # RUN by job name (its runs), by id prefix, and --since
    assert cost_json(db, "rerun")["total"]["calls"] == 0
    assert cost_json(db, first.run[:6])["total"]["calls"] == 6
    assert len(cost_json(db, "nightly", "rerun")["runs"]) == 2
    assert cost_json(db, "--since", "2999-01-01")["total"]["calls"] == 0
    assert cost_json(db, "--since", "2000-01-01T00:00")["total"]["calls"] == 6
    # the store API the run page uses: one run
    st = open_store(db)
    try:
        info = st.get_run(again.run)
        assert info is not None
        one = cost_report(st, [info], by=["step"])
    finally:
        st.close()
    assert one.total.replayed == 6 and one.total.cost == 0 and one.total.replay_value == D("0.006")


def test_unknown_price_is_unknown_never_zero(tmp_path):
    rows = {"r1": "one", "r2": "two"}
    step = {"name": "cat", "task": "classify", "input": "{text}", "labels": ["a", "b"]}
    db = tmp_path / "s.db"
    corral.run(job(tmp_path, rows, [step], name="priced", model={"name": "fake", "price_per_call": 0.5}), store=db)
    corral.run(job(tmp_path, {"r3": "three"}, [step], name="free", model={"name": "fake", "price_per_call": None}), store=db)
    rep = cost_json(db, "--by", "model")
    assert rep["total"]["cost"] is None and rep["total"]["per_row"] is None and rep["total"]["unpriced"] == 1
    assert rep["total"]["calls"] == 3
    assert cost_json(db, "priced")["total"]["cost"] == "1.0"
    res = CliRunner().invoke(main, ["cost", "--store", str(db)])
    assert res.exit_code == 0, res.output
    assert "Total           3 paid calls" in res.output and "?" in res.output
    assert "1 paid call without a price" in res.output and "$0 per row" not in res.output


def test_system1_audits_are_their_own_kind(tmp_path):
    pytest.importorskip("sklearn")
    from ..engine.test_system1 import TOPICS, make, texts

    rnd = random.Random(0)
    lab = [(t, rnd.choice(sorted(TOPICS)) if rnd.random() < 0.08 else k) for t, k in texts(600, seed=2)]
    j = make(tmp_path, texts(200, seed=1), {"labels": "labels.csv", "label_column": "topic", "min_rows": 100}, labels=lab)
    r = corral.run(j)
    (s1,) = r.system1
    assert s1["audited"] > 0
    st = open_store(r.store)
    try:
        rep = cost_report(st, by=["kind"])
        audited = sum(1 for x in st.routes(r.run) if x.route == "audit")
    finally:
        st.close()
    assert rep.kind("System 1").calls == audited == s1["audited"]
    assert rep.first_try.calls + rep.kind("System 1").calls + rep.retries.calls == r.calls_made


def test_human_table_and_the_lines_of_extra_thinking(tmp_path, models):
    db, _ = cascade_run(tmp_path, models)
    res = CliRunner().invoke(main, ["cost", "--by", "step,kind", "--store", str(db)])
    assert res.exit_code == 0, res.output
    out = res.output
    assert "Cost of 1 run · by step, kind" in out
    assert "Extra thinking  6 calls, $0.015000 (83.3% of the cost): every call beyond the first try" in out
    assert "Retries         1 call, $0.001000 (5.6% of the cost)" in out
    assert "cat   escalation       1         68           3  $0.010000  $0.003333         0            $0" in out
    assert "Retries" in out and "Deliberation" in out and "Replays" in out
    assert "escalation" in out and "$0.010000" in out
    res = CliRunner().invoke(main, ["cost", "--by", "", "--store", str(db)])
    assert res.exit_code == 0 and "Total" in res.output


@pytest.mark.parametrize("args, message", [
    (["--by", "stepp"], "--by: `stepp` is not a field to group by; use a comma-separated list of: step, tag"),
    (["--since", "last week"], "--since: `last week` is not a date; write it like 2024-06-01"),
    (["nosuchrun"], "no run matches `nosuchrun`"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    write(tmp_path / "x.txt", "")
    db = tmp_path / "s.db"
    corral.run(job(tmp_path, {"r1": "one"}, [{"name": "cat", "task": "classify", "input": "{text}",
                                              "labels": ["a", "b"]}], model="fake"), store=db)
    res = CliRunner().invoke(main, ["cost", *args, "--store", str(db)])
    assert res.exit_code == 2
    assert message in res.output and len(res.output.strip().splitlines()) == 1


def test_a_missing_store_is_one_line_and_exit_2(tmp_path):
    res = CliRunner().invoke(main, ["cost", "--store", str(tmp_path / "nope.db")])
    assert res.exit_code == 2 and "no store" in res.output


def test_the_kinds_are_documented():
    from ..test_docs import DOCS, sections, text

    body = next(v for k, v in sections(text(DOCS / "cli.md")).items() if k.strip("` ") == "corral cost")
    for kind in CALL_KINDS:
        assert f"`{kind}`" in body, kind
