"""`corral review`: a real run (fake model, a check that holds rows) worked through the CLI --
accept, edit and reject reach the sink, review and quarantine files, the decisions are listed with
who and when, survive a rerun, and export as labels `corral eval` reads."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import corral
from corral import _review
from corral.cli import main
from corral.store import open_store
from corral.store.base import ReviewDecision
from tests.conftest import write, write_csv

ROWS = [
    ("t1", "my invoice is wrong"),
    ("t2", "the parcel never arrived"),
    ("t3", "cannot log in to my account"),
    ("t4", "refund please"),
    ("t5", "app crashes on start"),
    ("t6", "where is my order"),
]
#: the fake model answers `shipping` for these rows, which the check holds for review
HELD = ["t1", "t2", "t4", "t5"]

STEP = """  - name: category
    task: classify
    input: "{text}"
    labels: [billing, shipping, technical, account]
    checks: ["label != 'shipping'"]
"""
URGENCY = """  - name: urgency
    task: classify
    input: "{text}"
    labels: [low, high]
"""


def make_job(tmp_path: Path, steps: str = STEP, name: str = "tickets") -> Path:
    write_csv(tmp_path / "data.csv", ["id", "text"], ROWS)
    return write(tmp_path / "job.yaml", f"name: {name}\nsource: data.csv\nkey: id\nmodel: fake\n"
                 f"steps:\n{steps}sink: out/tickets.csv\n")


def read(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return {r.get("id") or r["_key"]: r for r in csv.DictReader(f)}


def cli(*args: str, code: int = 0, env: dict[str, str] | None = None) -> Any:
    r = CliRunner().invoke(main, list(args), env=env)
    assert r.exit_code == code, (r.output, r.stderr if hasattr(r, "stderr") else "")
    return r


@pytest.fixture
def held_run(tmp_path: Path) -> tuple[Path, str]:
    job = make_job(tmp_path)
    res = corral.run(job)
    assert res.status == "finished" and res.review == len(HELD)
    return job, res.run


def test_accept_edit_reject_reach_the_sink_review_and_quarantine_files(tmp_path, held_run):
    job, run = held_run
    out = tmp_path / "out"
    assert set(read(out / "tickets.review.csv")) == set(HELD)
    assert set(read(out / "tickets.csv")) == {"t3", "t6"}

    listed = cli("review", "list", run).output
    assert "4 held for review · 0 decided" in listed
    assert "t1" in listed and "check `label != 'shipping'` failed" in listed

    r = cli("review", "accept", run, "t1", "--by", "alice")
    assert "t1: accepted by alice at " in r.output and "→ written" in r.output
    cli("review", "edit", run, "t2", "--set", "category=billing", "--by", "bob", "--note", "an invoice")
    r = cli("review", "reject", run, "t4", "--note", "spam", "--by", "carol")
    assert "→ quarantined" in r.output

    sink = read(out / "tickets.csv")
    assert set(sink) == {"t1", "t2", "t3", "t6"}
    assert sink["t1"]["category"] == "shipping" and sink["t2"]["category"] == "billing"
    assert set(read(out / "tickets.review.csv")) == {"t5"}
    q = read(out / "tickets.quarantine.csv")
    assert set(q) == {"t4"}
    assert q["t4"]["_reason"].startswith("rejected in review by carol: spam (held: step `category`: check")

    # who decided and when, plainly
    listed = cli("review", "list", run).output
    assert "1 held for review · 3 decided" in listed
    lines = {ln.split()[0]: ln for ln in listed.split("Decided:")[1].splitlines()[1:] if ln.strip()}
    assert lines["key"].split() == ["key", "decision", "by", "when", "now", "note"]
    when = _review.when(_review.decisions(open_store(), run, "t1")[0].at)
    assert lines["t1"].split()[:3] == ["t1", "accepted", "alice"] and when in lines["t1"]
    assert lines["t2"].split()[:3] == ["t2", "edited", "bob"] and lines["t2"].rstrip().endswith("an invoice")
    assert lines["t4"].split()[:3] == ["t4", "rejected", "carol"] and "quarantined" in lines["t4"]

    data = json.loads(cli("review", "list", run, "--json").output)
    assert [h["key"] for h in data["held"]] == ["t5"]
    decided = {d["key"]: d for d in data["decided"]}
    assert decided["t2"]["decision"]["who"] == "bob" and decided["t2"]["decision"]["when"] == _review.when(
        decided["t2"]["decision"]["at"])
    assert decided["t2"]["decision"]["outputs"] == {"category": "billing"}
    assert decided["t2"]["decision"]["prev_state"] == "review"
    assert decided["t4"]["state"] == "quarantined"

    # the counts stay whole and `corral status` shows the new ones
    status = json.loads(cli("status", run, "--json").output)
    assert status["rows"] == {"in": 6, "written": 4, "quarantined": 1, "review": 1, "skipped": 0, "pending": 0}

    # `show` prints the trace with the decision in it
    shown = cli("review", "show", run, "t2").output
    assert "reviewed: edited by bob at" in shown and "Decision: edited by bob" in shown
    assert "Held because: step `category`" in shown
    shown = json.loads(cli("review", "show", run, "t5", "--json").output)
    assert shown["state"] == "review" and shown["input"]["text"] == "app crashes on start"
    assert shown["answers"] == {"category": "shipping"} and shown["trace"]


def test_bad_decisions_are_one_line_and_exit_2_and_write_nothing(tmp_path, held_run):
    job, run = held_run
    review_file = tmp_path / "out" / "tickets.review.csv"
    before = review_file.read_text()
    cli("review", "reject", run, "t4", "--by", "carol")
    before = review_file.read_text()
    cases = [
        (["edit", run, "t2", "--set", "category=shipping"], "does not pass the step's checks"),
        (["edit", run, "t2", "--set", "category=nope"], "breaks the schema at label: 'nope' is not one of"),
        (["edit", run, "t2", "--set", "categry=billing"], "no step or answer field is named `categry`; did you mean"),
        (["edit", run, "t2", "--answer", "{not json"], "--answer is not JSON"),
        (["edit", run, "t2"], "give the corrected answer"),
        (["edit", run, "t2", "--set", "category"], "is not FIELD=VALUE"),
        (["accept", run, "nope"], "has no record with key `nope`"),
        (["accept", run, "t3"], "record `t3` of run"),  # written by the run: never held
        (["accept", run, "t4"], "was rejected by carol at"),
        (["accept", run], "give the keys of the rows to accept, or --all"),
        (["accept", "no-such-run", "t1"], "no run matches `no-such-run`"),
        (["export", run, "-o", "labels.parquet"], "must end in .csv, .tsv, .jsonl"),
    ]
    for args, message in cases:
        r = CliRunner().invoke(main, ["review", *args])
        assert r.exit_code == 2, (args, r.output)
        err = r.stderr.strip()
        assert len(err.splitlines()) == 1 and err.startswith("error: ") and message in err, (args, err)
    assert review_file.read_text() == before
    assert [d.key for d in _review.decisions(open_store(), run)] == ["t4"]


def test_decisions_survive_a_rerun_of_the_job(tmp_path, held_run):
    job, run = held_run
    cli("review", "accept", run, "t1", "--by", "alice")
    cli("review", "edit", run, "t2", "--answer", '{"category": "billing"}', "--by", "bob")
    cli("review", "reject", run, "t4", "--by", "carol")
    again = corral.run(job)
    assert again.run == run and (again.calls_made, again.calls_replayed) == (len(ROWS), 0)  # none asked again
    assert (again.written, again.quarantined, again.review) == (4, 1, 1)
    sink = read(tmp_path / "out" / "tickets.csv")
    assert sink["t2"]["category"] == "billing" and "t1" in sink
    assert set(read(tmp_path / "out" / "tickets.quarantine.csv")) == {"t4"}
    assert set(read(tmp_path / "out" / "tickets.review.csv")) == {"t5"}
    assert [d.action for d in _review.decisions(open_store(), run)] == ["accept", "edit", "reject"]


def test_export_is_a_labels_file_corral_eval_reads(tmp_path, held_run):
    job, run = held_run
    cli("review", "accept", run, "t1", "--by", "alice")
    cli("review", "edit", run, "t2", "--set", "label=billing", "--by", "bob")
    cli("review", "reject", run, "t4")
    r = cli("review", "export", run, "-o", "labels.csv", "--json")
    assert json.loads(r.output) == {"run": run, "file": "labels.csv", "rows": 2}
    with open(tmp_path / "labels.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["id", "text", "category", "_decision", "_by", "_when"]
    assert [(x["id"], x["category"], x["_decision"], x["_by"]) for x in rows] == [
        ("t1", "shipping", "accept", "alice"), ("t2", "billing", "edit", "bob")]
    ev = json.loads(cli("eval", str(job), "--labels", "labels.csv", "--no-run", "--json").output)
    assert ev["labeled_rows"] == 2 and ev["key_column"] == "id"
    [scored] = ev["runs"]
    assert scored["run"] == run and scored["rows"] == 2 and scored["correct"] == 2
    assert set(ev["unused_columns"]) == {"text", "_decision", "_by", "_when"}


def test_accept_all_writes_the_sinks_once(tmp_path, held_run, monkeypatch):
    job, run = held_run
    real = _review.write_outputs
    calls: list[str] = []

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append("write")
        return real(*args, **kwargs)

    monkeypatch.setattr(_review, "write_outputs", counting)
    data = json.loads(cli("review", "accept", run, "--all", "--json").output)
    assert [d["key"] for d in data["decisions"]] == HELD and data["left_held"] == []
    assert calls == ["write"]
    assert set(read(tmp_path / "out" / "tickets.csv")) == {k for k, _ in ROWS}
    assert read(tmp_path / "out" / "tickets.review.csv") == {}
    r = CliRunner().invoke(main, ["review", "accept", run, "--all"])
    assert r.exit_code == 0 and "holds no row for review" in r.stderr


def test_a_row_held_before_a_later_step_answered_is_edited_not_accepted(tmp_path):
    job = make_job(tmp_path, STEP + URGENCY)
    run = corral.run(job).run
    r = CliRunner().invoke(main, ["review", "accept", run, "t1"])
    assert r.exit_code == 2 and "held before step `urgency` answered" in r.stderr
    assert "--set urgency.FIELD=VALUE" in r.stderr
    data = json.loads(cli("review", "accept", run, "--all", "--json").output)
    assert data["decisions"] == [] and data["left_held"] == HELD
    r = CliRunner().invoke(main, ["review", "edit", run, "t1", "--set", "category=billing"])
    assert r.exit_code == 2 and "step `urgency` still has no answer" in r.stderr
    cli("review", "edit", run, "t1", "--set", "category=billing", "--set", "urgency=high")
    sink = read(tmp_path / "out" / "tickets.csv")
    assert (sink["t1"]["category"], sink["t1"]["urgency"]) == ("billing", "high")


def test_the_reviewer_defaults_to_corral_reviewer(held_run):
    job, run = held_run
    cli("review", "accept", run, "t1", env={"CORRAL_REVIEWER": "dana"})
    assert _review.decisions(open_store(), run)[0].who == "dana"


def test_a_run_stored_before_runs_kept_their_folder_needs_job(tmp_path, held_run):
    job, run = held_run
    st = open_store()
    info = st.get_run(run)
    assert info is not None and info.spec["job_dir"] == str(tmp_path.resolve())
    st.update_run(run, spec={k: v for k, v in info.spec.items() if k != "job_dir"})
    st.close()
    r = CliRunner().invoke(main, ["review", "accept", run, "t1"])
    assert r.exit_code == 2 and "give its job file with --job JOB.yaml" in r.stderr
    other = write(tmp_path / "other.yaml", job.read_text().replace("name: tickets", "name: other"))
    r = CliRunner().invoke(main, ["review", "accept", run, "t1", "--job", str(other)])
    assert r.exit_code == 2 and "is not the job run" in r.stderr
    cli("review", "accept", run, "t1", "--job", str(job))
    assert "t1" in read(tmp_path / "out" / "tickets.csv")


def test_a_source_that_moved_says_how_to_fix_it(tmp_path, held_run):
    job, run = held_run
    (tmp_path / "data.csv").rename(tmp_path / "moved.csv")
    r = CliRunner().invoke(main, ["review", "accept", run, "t1"])
    assert r.exit_code == 2
    assert "put the source back where the job reads it, or give the job file with --job" in r.stderr
    assert _review.decisions(open_store(), run) == []  # nothing decided when the sinks cannot be written


def test_the_store_applies_a_decision_only_to_a_held_record(held_run):
    job, run = held_run
    st = open_store()
    d = ReviewDecision(run, "t3", "accept", "x", 0.0, "done", {"category": "account"}, None)
    assert st.apply_decisions([d], []) == []  # t3 was written by the run: not held
    held = ReviewDecision(run, "t1", "accept", "x", 1.0, "done", {"category": "shipping"}, None)
    [applied] = st.apply_decisions([held, held], [])  # the second finds it decided already
    assert applied.prev_state == "review" and applied.prev_reason and applied.id is not None
    assert st.decisions(run) == [applied]
    st.delete_run(run)
    assert st.decisions(run) == []


def test_export_is_a_labels_file_system1_learns_from(tmp_path):
    """Rows accepted in review, exported, are what a step's `system1: labels:` reads."""
    pytest.importorskip("sklearn")
    words = {"billing": "invoice refund charged", "shipping": "parcel courier tracking", "account": "password login"}
    rows = [(f"r{i}", f"message {i}: my {words[k]} please") for i, k in enumerate(sorted(words) * 10)]
    write_csv(tmp_path / "in.csv", ["id", "text"], rows)
    step = ("  - name: topic\n    task: classify\n    input: \"{text}\"\n"
            "    labels: [account, billing, shipping]\n")
    head = "source: in.csv\nkey: id\nmodel: fake\nsink: out/o.csv\nsteps:\n"
    held = write(tmp_path / "held.yaml", "name: held\n" + head + step + "    checks: [\"label == 'none'\"]\n")
    run = corral.run(held)
    assert run.review == 30
    cli("review", "accept", run.run, "--all", "--by", "alice")
    cli("review", "export", run.run, "-o", "reviewed.csv")
    learn = write(tmp_path / "learn.yaml", "name: learn\n" + head + step
                  + "    system1: {labels: reviewed.csv, min_rows: 20}\n")
    r = corral.run(learn)
    (s1,) = r.system1
    assert s1["source"] == "labels" and s1["learned_from"] == 30 and not s1["notes"], s1
