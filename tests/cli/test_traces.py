"""`corral show` renders a record's trace (calls and the strategy's decisions), and `corral export
traces` turns the accepted answers of written records into chat-format JSONL: real runs with
scripted fake models, read back through the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

import corral
from corral import FakeModel, Job
from corral.cli import main
from corral.models.base import Request
from corral.testing import plain

from ..conftest import write

SYSTEM = "You classify text"


def make_job(tmp_path: Path, rows: dict[str, str], steps: list[dict[str, Any]], **extra: Any) -> Job:
    data = "id,text\n" + "".join(f"{k},{v}\n" for k, v in rows.items())
    write(tmp_path / "in.csv", data)
    d = {"name": "tr", "source": "in.csv", "key": "id", "steps": steps, "sink": "out/o.jsonl", **extra}
    return Job.from_dict(d, base_dir=tmp_path)


def cli(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def show(run: str, key: str, *extra: str) -> str:
    res = cli("show", run, key, *extra)
    assert res.exit_code == 0, res.output
    return res.stdout


def user(request: Request) -> str:
    return plain(next(m.content for m in request.messages if m.role == "user"))


def is_repair(request: Request) -> bool:
    return any(m.role == "assistant" for m in request.messages)


def sink(tmp_path: Path) -> dict[str, dict[str, Any]]:
    lines = (tmp_path / "out" / "o.jsonl").read_text(encoding="utf-8").splitlines()
    return {r["id"]: r for r in map(json.loads, lines)}


# --- corral show -----------------------------------------------------------------------------


def cascade_run(tmp_path: Path) -> str:
    """Vote (temperature 0.7) then a single call (the step's temperature, 0)."""

    def script(req: Request) -> dict[str, Any]:
        text = user(req)
        if req.temperature == 0:  # stage 2
            return {"label": "b"}
        if text == "split":  # votes a, b, a, b, a: agreement 0.60 < 0.9
            return {"label": "ab"[req.sample % 2]}
        if text == "bad":
            return {"label": "c"}  # fails the check
        return {"label": "a"}

    job = make_job(
        tmp_path, {"easy": "easy", "split": "split", "bad": "bad"},
        [{
            "name": "topic", "task": "classify", "input": "{text}", "labels": ["a", "b", "c"],
            "checks": ["label != 'c'"],
            "strategy": {"name": "cascade", "threshold": 0.9,
                         "stages": [{"name": "vote", "samples": 5}, {"name": "single"}]},
        }],
    )
    fake = FakeModel(script=script)
    r = corral.run(job, model=fake)
    assert r.written == 3 and r.status == "finished"
    return r.run


def test_show_cascade_renders_votes_escalations_checks_and_the_accepted_answer(tmp_path):
    run = cascade_run(tmp_path)

    out = show(run, "split")
    assert "» vote: a 3, b 2 -> a (agreement 0.60; stopped: no leader can be overtaken with 0 samples left)" in out
    assert "» escalate: stage 1 -> stage 2: confidence 0.60 < threshold 0.9" in out
    assert '» accepted: {"label": "b"} (6 calls)' in out
    assert "step topic · attempt 1 · sample · ok · paid call" in out
    assert "strategy cascade/stage 1 (vote) · model fake" in out
    assert "strategy cascade/stage 2 (single) · model fake" in out
    # the identical prompt is printed once, then referred to
    assert out.count(SYSTEM) == 1
    assert out.count("(same prompt as attempt 1)") == 5
    assert '[parsed answer] {"label": "a"}' in out
    # decisions come where they happened: the vote after the samples, before stage 2's call
    assert out.index("attempt 5 ·") < out.index("» vote:") < out.index("» escalate:") < out.index("attempt 6 ·")

    full = show(run, "split", "--full")
    assert full.count(SYSTEM) == 6 and "same prompt as" not in full

    out = show(run, "bad")
    assert "[failed checks]\n- check `label != 'c'` failed (label = \"c\")" in out
    assert "» vote: c 2 -> c (agreement 1.00; stopped: agreement 1.00 >= 1 after 2 answers)" in out
    assert (
        "» escalate: stage 1 -> stage 2: checks failed: check `label != 'c'` failed (label = \"c\") "
        "(confidence 1.00, threshold 0.9)"
    ) in out
    assert "detail: check" not in out  # the failed checks are not repeated as the detail

    out = show(run, "easy")
    assert "» cascade: stage 1 accepted (confidence 1.00 >= threshold 0.9; checks passed)" in out
    assert '» accepted: {"label": "a"} (confidence 1.00, 2 calls)' in out
    assert "escalate:" not in out


def test_show_json_is_unchanged(tmp_path):
    run = cascade_run(tmp_path)
    res = cli("show", run, "split", "--json", "--full")
    rec = json.loads(res.stdout)
    assert {"run", "key", "state", "calls", "trace"} <= set(rec)
    outcomes = [c["outcome"] for c in rec["trace"]]
    assert outcomes == ["ok"] * 5 + ["vote", "escalate", "ok"]
    # stage 2's single answer was accepted as it is: the acceptance is on that call's row
    assert rec["trace"][-1]["data"]["accepted"] is True and rec["trace"][-1]["data"]["calls"] == 6
    assert not any((c["data"] or {}).get("accepted") for c in rec["trace"][:-1])
    assert [c["outcome"] for c in rec["calls"]] == ["ok"] * 6
    assert rec["trace"][5]["data"]["fields"] == {"label": {'"a"': 3, '"b"': 2}}


def refine_run(tmp_path: Path) -> str:
    """Refine with a check and a critic: `fixable` is repaired once, `stubborn` never is."""

    def script(req: Request) -> dict[str, Any]:
        if "ok" in (req.schema or {}).get("properties", {}):  # the critic
            return {"ok": True, "problems": []}
        if user(req) == "fixable" and is_repair(req):
            return {"amount": 5}
        return {"amount": -5}

    job = make_job(
        tmp_path, {"fixable": "fixable", "stubborn": "stubborn"},
        [{
            "name": "ex", "task": "extract", "input": "{text}", "fields": {"amount": "number"},
            "checks": ["amount >= 0"],
            "strategy": {"name": "refine", "rounds": 1, "critic": "Check the amount."},
        }],
    )
    r = corral.run(job, model=FakeModel(script=script))
    assert r.written == 1 and r.review == 1
    return r.run


def test_show_refine_renders_failed_checks_critiques_and_the_repair(tmp_path):
    run = refine_run(tmp_path)

    out = show(run, "fixable")
    assert "step ex · attempt 1 · sample · checks · paid call" in out
    assert "[failed checks]\n- check `amount >= 0` failed (amount = -5)" in out
    assert "» critique of answer 1: check `amount >= 0` failed (amount = -5)" in out
    # the repair repeats the step's prompt, then adds the answer and its problems
    assert "step ex · attempt 2 · repair · ok · paid call" in out
    assert "(same prompt as attempt 1) (then:)\n[assistant]\n{\"amount\": -5}\n[user]\nThat answer has problems:" in out
    assert "step ex · attempt 3 · critic · ok · paid call" in out
    assert "» critique: accepted after 1 repair" in out
    assert '» accepted: {"amount": 5} (3 calls)' in out
    assert out.index("» critique of answer 1") < out.index("attempt 2 ·") < out.index("» critique: accepted")

    out = show(run, "stubborn")
    assert "state: review   reason: step `ex`: check `amount >= 0` failed (amount = " in out
    assert out.count("» critique of answer") == 2
    assert "» critique of answer 2: check `amount >= 0` failed (amount = " in out
    assert "» accepted" not in out


def test_show_best_of_and_budget_lines(tmp_path):
    def script(req: Request) -> dict[str, Any]:
        if "score" in (req.schema or {}).get("properties", {}):
            return {"score": 3 if req.sample == 1 else 8, "why": "looks right"}
        return {"label": "a"}

    job = make_job(
        tmp_path, {"k1": "one"},
        [{"name": "topic", "task": "classify", "input": "{text}", "labels": ["a", "b"],
          "strategy": {"name": "best_of", "n": 2, "judge": "Is it right?", "judge_pass": 5, "stop_early": False}}],
    )
    run = corral.run(job, model=FakeModel(script=script)).run
    out = show(run, "k1")
    assert "step topic · attempt 2 · judge · ok" in out
    assert "» best_of: branch 1 failed, judge 3/10; branch 2 passed, judge 8/10 -> kept branch 2" in out


def test_show_budget_stop(tmp_path):
    job = make_job(
        tmp_path, {"k1": "one"},
        [{"name": "topic", "task": "classify", "input": "{text}", "labels": ["a", "b"],
          "strategy": {"name": "vote", "samples": 5, "adaptive": False}}],
        budget={"per_record": {"max_calls": 2}},
    )
    r = corral.run(job, model=FakeModel(script=lambda req: {"label": "a"}))
    assert r.review == 1
    out = show(r.run, "k1")
    assert '» budget: record max_calls 2 reached; best answer so far {"label": "a"}' in out


def test_a_plugin_strategys_decisions_render_as_decisions_in_its_own_words(monkeypatch):
    """An outcome outside the closed set of call outcomes is a decision: the registered strategy
    that declares it describes it; one nobody declares gets the default `event: detail` line."""
    from decimal import Decimal
    from typing import ClassVar

    from rich.console import Console

    from corral import report
    from corral.store.base import TraceEvent
    from corral.strategies.base import Strategy

    class Streak(Strategy):
        decisions: ClassVar[frozenset[str]] = frozenset({"streak"})

        @classmethod
        def describe(cls, event: TraceEvent) -> list[str]:
            return [f"streak of {event.info['length']}", "second line"]

        async def solve(self, ctx: Any) -> Any:  # pragma: no cover - never run
            raise NotImplementedError

    monkeypatch.setattr(report, "strategy_classes", lambda: {"streak": Streak, **corral_classes()})

    def event(outcome: str, **data: Any) -> TraceEvent:
        return TraceEvent("s", 0, outcome, "the detail", None, None, None, None, None, None,
                          Decimal(0) if outcome == "ok" else None, data or None)

    assert event("streak").kind == "decision" and event("ok").kind == "call"
    assert report.decision_lines(event("streak", length=3)) == ["streak of 3", "second line"]
    assert report.decision_lines(event("hunch")) == ["hunch: the detail"]
    assert report.decision_lines(event("vote")) == ["vote: the detail"]  # a vote without tallies
    out = Console(record=True, width=200)
    from corral.store.base import RecordRow, RunInfo

    info = RunInfo("r1", "j", "h", "f", {}, "finished", None, 0.0, 0.0, 1, True, {})
    report.print_record(out, info, RecordRow("k", 0, None, {}, "done", None, None, 1),
                        [event("streak", length=2), event("hunch")])
    text = out.export_text()
    assert "» streak of 2\n    second line" in text and "» hunch: the detail" in text
    assert "attempt" not in text  # neither is printed as a model call


def corral_classes() -> dict[str, type]:
    from corral._registry import strategy_classes

    return strategy_classes()


# --- corral export traces --------------------------------------------------------------------

ROWS = {"r1": "refund please", "r2": "cannot log in", "r3": "hold me", "r4": "garbage", "r5": "hello there"}


def export_run(tmp_path: Path) -> tuple[str, dict[str, dict[str, Any]]]:
    """Two steps: `topic` (vote, reasoning: true) and `facts` (extract, only when topic is `a`).
    r3 fails a check (review), r4 gets no usable answer (quarantined)."""

    def script(req: Request) -> dict[str, Any] | str:
        text = user(req)
        if text == "garbage":
            return "not json at all"
        if "label" in (req.schema or {}).get("properties", {}):
            label = "b" if text == "cannot log in" else "a"
            return {"reasoning": f"the text says {text!r}", "label": label}
        return {"who": text.split()[0], "n": len(text)}

    job = make_job(
        tmp_path, ROWS,
        [
            {"name": "topic", "task": "classify", "input": "{text}", "labels": ["a", "b"], "reasoning": True,
             "strategy": {"name": "vote", "samples": 3}},
            {"name": "facts", "task": "extract", "input": "{text}", "when": "topic == 'a'",
             "fields": {"who": "string", "n": "integer"}, "checks": ["who != 'hold'"]},
        ],
    )
    r = corral.run(job, model=FakeModel(script=script))
    assert (r.written, r.review, r.quarantined) == (3, 1, 1)
    return r.run, sink(tmp_path)


def jsonl(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def test_export_sft_lines_match_the_sink(tmp_path):
    run, rows = export_run(tmp_path)
    res = cli("export", "traces", run, "--format", "sft")
    assert res.exit_code == 0, res.output
    lines = jsonl(res.stdout)
    # r1 and r5: topic + facts; r2: topic only (facts not run); r3 (review) and r4 (quarantined): none
    assert [(x["metadata"]["key"], x["metadata"]["step"]) for x in lines] == [
        ("r1", "topic"), ("r1", "facts"), ("r2", "topic"), ("r5", "topic"), ("r5", "facts"),
    ]
    for x in lines:
        assert [m["role"] for m in x["messages"]] == ["system", "user", "assistant"]
        assert set(x["metadata"]) == {"run", "key", "step", "strategy", "confidence", "calls"}
        meta = x["metadata"]
        assert meta["run"] == run
        assert x["messages"][1]["content"] == f"<text>{ROWS[meta['key']]}</text>"  # as it was sent
        answer = json.loads(x["messages"][2]["content"])
        row = rows[meta["key"]]
        if meta["step"] == "topic":
            assert x["messages"][0]["content"].startswith(SYSTEM)
            assert answer == {"label": row["topic"]}  # no reasoning without --reasoning
            # ... and the prompt does not ask for it either
            assert "reasoning" not in x["messages"][0]["content"]
            assert meta["strategy"] == "vote" and meta["confidence"] == 1.0 and meta["calls"] == 2
        else:
            assert answer == {"who": row["who"], "n": row["n"]}
            assert meta["strategy"] == "single" and meta["confidence"] is None and meta["calls"] == 1
        assert x["messages"][2]["content"] == json.dumps(answer, separators=(",", ":"))  # compact
    assert res.stderr.strip() == "wrote 5 examples from 3 records to stdout"


def test_export_step_reasoning_and_output_file(tmp_path):
    run, rows = export_run(tmp_path)
    target = tmp_path / "exports" / "topic.jsonl"
    res = cli("export", "traces", "tr", "--step", "topic", "--reasoning", "-o", str(target))
    assert res.exit_code == 0, res.output
    assert res.stdout == ""
    assert res.stderr.strip() == (
        f"wrote 3 examples from 3 records to {target} (3 with reasoning, 0 without)"
    )
    lines = jsonl(target.read_text(encoding="utf-8"))
    assert [x["metadata"]["key"] for x in lines] == ["r1", "r2", "r5"]
    for x in lines:
        content = x["messages"][2]["content"]
        assert content.startswith('{"reasoning":"the text says ')
        answer = json.loads(content)
        assert list(answer) == ["reasoning", "label"]
        assert answer["label"] == rows[x["metadata"]["key"]]["topic"]
    assert sorted(p.name for p in target.parent.iterdir()) == ["topic.jsonl"]  # no temporary left

    # a step without reasoning is exported without the key; a rerun replaces the file
    res = cli("export", "traces", run, "--step", "facts", "--reasoning", "--output", str(target))
    assert res.exit_code == 0, res.output
    assert "(0 with reasoning, 2 without)" in res.stderr
    lines = jsonl(target.read_text(encoding="utf-8"))
    assert [x["metadata"]["step"] for x in lines] == ["facts", "facts"]
    assert all("reasoning" not in json.loads(x["messages"][2]["content"]) for x in lines)


def test_export_errors_are_one_line_with_exit_2(tmp_path):
    run, _ = export_run(tmp_path)
    res = cli("export", "traces", "ffffffffff")
    assert res.exit_code == 2
    assert res.stderr.strip().splitlines() == ["error: no run matches `ffffffffff` — list runs with `corral runs`"]

    res = cli("export", "traces", run, "--step", "nope")
    assert res.exit_code == 2
    assert res.stderr.strip().splitlines() == [
        f"error: run {run} has no step `nope` — its steps are: topic, facts"
    ]
    assert res.stdout == ""

    res = cli("export", "traces", run, "--format", "csv")
    assert res.exit_code == 2 and "'csv' is not 'sft'" in res.stderr

    target = tmp_path / "t.jsonl"
    res = cli("export", "traces", run, "--step", "nope", "-o", str(target))
    assert res.exit_code == 2 and not target.exists()


def test_export_includes_a_filters_no_answers_from_skipped_records(tmp_path):
    job = make_job(tmp_path, {"k1": "keep me", "k2": "drop me", "k3": "keep too"}, [
        {"name": "wanted", "task": "filter", "input": "{text}", "question": "Is it worth keeping?"},
    ])
    fake = FakeModel(script=lambda r: {"reason": "said so", "keep": "drop" not in user(r)})
    r = corral.run(job, model=fake)
    assert (r.written, r.skipped) == (2, 1)
    res = cli("export", "traces", r.run)
    assert res.exit_code == 0, res.output
    lines = jsonl(res.stdout)
    got = {x["metadata"]["key"]: json.loads(x["messages"][2]["content"]) for x in lines}
    assert set(got) == {"k1", "k2", "k3"}
    assert [v["keep"] for k, v in sorted(got.items())] == [True, False, True]


def test_status_breaks_spend_down_by_step_strategy_and_model(tmp_path):
    run = cascade_run(tmp_path)
    res = cli("status", run, "--json")
    assert res.exit_code == 0, res.output
    obj = json.loads(res.stdout)
    by = {(m["step"], m["strategy"]): m for m in obj["by_step"]}
    # easy: 2 votes; split: 5 votes + 1 escalated call; bad: 2 votes (failing the check) + 1
    assert by[("topic", "cascade/stage 1 (vote)")]["calls"] == 2 + 5 + 2
    assert by[("topic", "cascade/stage 2 (single)")]["calls"] == 2
    assert sum(m["calls"] for m in obj["by_step"]) == obj["calls"]["made"] == 11
    assert all(m["model"] == "fake" and m["replayed"] == 0 for m in obj["by_step"])
    text = cli("status", run).stdout
    assert "By step, strategy and model" in text and "cascade/stage 2 (single)" in text
