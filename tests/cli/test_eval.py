"""`corral eval` and `corral.evaluate`: a run's answers scored against examples/data/tickets_labels.csv.

The fake model in noisy-labeler mode answers the classify step with a known accuracy and a
confidence per answer (``logprobs``); a scripted fake model gives extract answers whose exact,
normalised and null-aware scores the test knows. Every figure is computed here again from the
files the run wrote (the sink, the review output) and from the store's tables read with sqlite3.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import sqlite3
import subprocess
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

import corral
from corral.cli import main
from corral.models.base import Request
from corral.testing import plain

from ..conftest import ROOT, write

EXAMPLES = ROOT / "examples"
LABELS = ["account", "billing", "other", "shipping", "technical"]


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def proj(tmp_path: Path) -> Path:
    """examples/tickets.yaml and its data in a folder of their own, with the truth file of the fake
    model's noisy labeler (input text -> category)."""
    d = tmp_path / "proj"
    (d / "data").mkdir(parents=True)
    shutil.copy(EXAMPLES / "tickets.yaml", d / "tickets.yaml")
    for name in ("tickets.csv", "tickets_labels.csv"):
        shutil.copy(EXAMPLES / "data" / name, d / "data" / name)
    labels = {r["ticket_id"]: r for r in read_csv(d / "data" / "tickets_labels.csv")}
    with (d / "truth.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for r in read_csv(d / "data" / "tickets.csv"):
            if r["ticket_id"] in labels:
                w.writerow([f"Subject: {r['subject']}\n\n{r['body']}", labels[r["ticket_id"]]["category"]])
    return d


def model(proj: Path, accuracy: float = 0.8, name: str = "fake") -> str:
    return json.dumps({"name": name, "truth": str(proj / "truth.csv"), "accuracy": accuracy, "logprobs": True})


def cli(*args: str) -> Any:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def run_job(job: Path, m: str, *extra: str) -> dict[str, Any]:
    r = cli("run", str(job), "--model", m, "--json", *extra)
    assert r.exit_code in (0, 3), r.output
    return json.loads(r.stdout)


def eval_json(job: Path, *args: str) -> dict[str, Any]:
    r = cli("eval", str(job), "--labels", str(job.parent / "data" / "tickets_labels.csv"), "--json", *args)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def labels_of(proj: Path) -> dict[str, dict[str, str]]:
    return {r["ticket_id"]: r for r in read_csv(proj / "data" / "tickets_labels.csv")}


def macro_f1(pairs: list[tuple[str, str]]) -> float:
    classes = {g for g, _ in pairs} | {p for _, p in pairs}
    f1s = []
    for c in classes:
        tp = sum(g == c and p == c for g, p in pairs)
        fp = sum(g != c and p == c for g, p in pairs)
        fn = sum(g == c and p != c for g, p in pairs)
        f1s.append(2 * tp / (2 * tp + fp + fn))
    return sum(f1s) / len(f1s)


def confidences(store: Path, run: str, step: str) -> dict[str, float]:
    """key -> the confidence recorded with the step's accepted answer, read from the attempts table."""
    db = sqlite3.connect(store)
    try:
        rows = db.execute("SELECT key, data FROM attempts WHERE run_id=? AND step=? AND data IS NOT NULL",
                          (run, step)).fetchall()
    finally:
        db.close()
    out = {}
    for key, data in rows:
        d = json.loads(data)
        if d.get("accepted") and "confidence" in d:
            out[key] = d["confidence"]
    return out


# --- label steps: accuracy, macro-F1, confusions, calibration ----------------------------------


def test_label_step_scores_match_the_sink(proj: Path, tmp_path: Path):
    job = proj / "tickets.yaml"
    ran = run_job(job, model(proj))
    ev = eval_json(job, "--model", model(proj))
    assert ev["notes"] == []  # every labeled row was final: nothing ran again
    [r] = ev["runs"]
    assert r["run"] == ran["run"] and r["status"] == "finished"

    labels = labels_of(proj)
    sink = {row["ticket_id"]: row for row in read_csv(proj / "out" / "tickets.csv")}
    pairs = [(labels[k]["category"], sink[k]["category"]) for k in labels]
    assert len(pairs) == 243 == r["rows"] == ev["labeled_rows"]
    right = sum(g == p for g, p in pairs)
    cat = next(s for s in r["steps"] if s["step"] == "category")
    assert cat["kind"] == "labels" and cat["answered"] == 243
    assert cat["correct"] == right
    assert cat["accuracy"] == pytest.approx(right / 243, abs=1e-6)
    assert 0.7 < right / 243 < 0.9  # the noisy labeler's accuracy 0.8
    assert cat["labels"]["macro_f1"] == pytest.approx(macro_f1(pairs), abs=1e-6)
    confused = Counter((g, p) for g, p in pairs if g != p)
    got = {(c["gold"], c["predicted"]): c["count"] for c in cat["labels"]["confusions"]}
    assert got == dict(confused)
    top = cat["labels"]["confusions"][0]
    assert top["count"] == max(confused.values())
    assert cat["groups"] == [{"group": "written", "rows": 243, "answered": 243, "correct": right,
                              "accuracy": round(right / 243, 6)}]

    # the calls of the labeled rows: one per step and row, as the ledger says
    db = sqlite3.connect(tmp_path / "store" / "corral.db")
    keys = list(labels)
    n = db.execute(f"SELECT COUNT(*) FROM ledger WHERE run_id=? AND key IN ({','.join('?' * len(keys))})",
                   (r["run"], *keys)).fetchone()[0]
    db.close()
    assert r["calls"] == n == 2 * 243
    correct_rows = r["correct"]
    assert r["calls_per_correct_row"] == pytest.approx(n / correct_rows, abs=1e-3)


def test_ece_and_reliability_come_from_the_recorded_confidences(proj: Path, tmp_path: Path):
    job = proj / "tickets.yaml"
    ran = run_job(job, model(proj))
    ev = eval_json(job, "--model", model(proj))
    cat = next(s for s in ev["runs"][0]["steps"] if s["step"] == "category")
    conf = confidences(tmp_path / "store" / "corral.db", ran["run"], "category")
    labels = labels_of(proj)
    sink = {row["ticket_id"]: row for row in read_csv(proj / "out" / "tickets.csv")}
    pts = [(conf[k], labels[k]["category"] == sink[k]["category"]) for k in labels]
    bins: list[list[tuple[float, bool]]] = [[] for _ in range(10)]
    for c, ok in pts:
        bins[min(9, int(c * 10))].append((c, ok))
    ece = sum(len(b) / len(pts) * abs(sum(ok for _, ok in b) / len(b) - sum(c for c, _ in b) / len(b))
              for b in bins if b)
    cal = cat["calibration"]
    assert cal["with_confidence"] == 243 and cal["without_confidence"] == 0
    assert cal["ece"] == pytest.approx(ece, abs=1e-6)
    assert cal["ece"] < 0.15  # the simulated confidence is the answer's true chance of being right
    for b, mine in zip(cal["reliability"], bins):
        assert b["count"] == len(mine)
        if mine:
            assert b["accuracy"] == pytest.approx(sum(ok for _, ok in mine) / len(mine), abs=1e-6)
            assert b["mean_confidence"] == pytest.approx(sum(c for c, _ in mine) / len(mine), abs=1e-6)
    ranked = sorted(pts, key=lambda p: -p[0])
    curve = {round(p["coverage"], 1): p["accuracy"] for p in cal["coverage_accuracy"]}
    k = round(0.5 * len(ranked))
    assert curve[0.5] == pytest.approx(sum(ok for _, ok in ranked[:k]) / k, abs=1e-6)
    assert curve[1.0] == pytest.approx(cat["accuracy"], abs=1e-6)
    assert curve[0.5] > curve[1.0]  # the confident half is the more accurate half
    # the extract step's fake answers carry no confidence, and the report says so
    details = next(s for s in ev["runs"][0]["steps"] if s["step"] == "details")
    assert details["calibration"]["ece"] is None and details["calibration"]["with_confidence"] == 0
    text = cli("eval", str(job), "--labels", str(proj / "data" / "tickets_labels.csv"), "--model", model(proj))
    assert "step details: no recorded confidences" in text.stdout
    assert "reliability (ECE" in text.stdout


def test_review_queue_accuracy_by_group(proj: Path):
    spec = yaml.safe_load((proj / "tickets.yaml").read_text())
    spec["steps"][0]["checks"] = ["label != 'other'"]  # every `other` answer is held for review
    job = write(proj / "review.yaml", yaml.safe_dump(spec, sort_keys=False))
    run_job(job, model(proj))
    ev = eval_json(job, "--model", model(proj))
    labels = labels_of(proj)
    cat = next(s for s in ev["runs"][0]["steps"] if s["step"] == "category")
    groups = {g["group"]: g for g in cat["groups"]}
    for name, path in (("written", "tickets.csv"), ("held", "tickets.review.csv")):
        rows = [r for r in read_csv(proj / "out" / path) if r["ticket_id"] in labels]
        right = sum(labels[r["ticket_id"]]["category"] == r["category"] for r in rows)
        assert groups[name]["rows"] == groups[name]["answered"] == len(rows) > 0
        assert groups[name]["correct"] == right
    held = read_csv(proj / "out" / "tickets.review.csv")
    assert all(r["category"] == "other" for r in held)
    # the held rows of step details never reached it: no answer to score
    details = next(s for s in ev["runs"][0]["steps"] if s["step"] == "details")
    dg = {g["group"]: g for g in details["groups"]}
    assert dg["held"]["answered"] == 0 and dg["held"]["rows"] == groups["held"]["rows"]


# --- fields: exact, normalised, null-aware ---------------------------------------------------


def scripted(proj: Path) -> tuple[corral.FakeModel, dict[str, dict[str, Any]]]:
    """A fake model that answers every label right and the fields with known slips: the answers."""
    labels = labels_of(proj)
    text_of = {f"Subject: {r['subject']}\n\n{r['body']}": r["ticket_id"] for r in read_csv(proj / "data" / "tickets.csv")}
    answers: dict[str, dict[str, Any]] = {}
    for i, (k, g) in enumerate(labels.items()):
        oid = g["order_id"] or None
        amount = float(g["amount"]) if g["amount"] else None
        if i % 5 == 1 and oid:
            oid = f" {oid.lower()}. "  # normalised right, exact wrong
        if i % 7 == 2:
            oid = None  # a missed value (or a right null)
        if i % 11 == 3 and amount is None:
            amount = 12.5  # spurious
        answers[k] = {"order_id": oid, "amount": amount, "urgency": g["urgency"] if i % 3 else "low"}

    def script(req: Request) -> dict[str, Any]:
        user = plain("\n".join(m.content for m in req.messages if m.role == "user")).strip()
        k = text_of[user]
        props = (req.schema or {}).get("properties", {})
        if "label" in props:
            return {"label": labels[k]["category"] if k in labels else "other"}
        return answers.get(k, {"order_id": None, "amount": None, "urgency": "low"})

    return corral.FakeModel(script=script), answers


def without_field_rules(proj: Path) -> None:
    """The job without its fields' pattern/grounding rules: the scripted slips below are meant to
    reach the sink, since eval's arithmetic (not the rules) is under test."""
    p = proj / "tickets.yaml"
    rules = ("pattern:", "grounded:", "on_ungrounded:", "minimum:")
    p.write_text("\n".join(ln for ln in p.read_text().splitlines() if not ln.strip().startswith(rules)) + "\n")


def test_fields_exact_normalised_and_null_aware(proj: Path, tmp_path: Path):
    without_field_rules(proj)
    fake, answers = scripted(proj)
    result = corral.evaluate(proj / "tickets.yaml", labels=proj / "data" / "tickets_labels.csv", model=fake,
                             store=tmp_path / "store" / "corral.db")
    assert isinstance(result, corral.Evaluation)
    [r] = result.runs
    assert r.job == "tickets.eval" and r.rows == 243  # the labeled rows were run (no run existed)
    assert result.notes and "ran the 243 labeled rows" in result.notes[0]
    labels = labels_of(proj)
    details = r.step("details")
    assert details.kind == "fields"
    by = {f.column: f for f in details.fields}
    for col in ("order_id", "amount", "urgency"):
        gold = {k: labels[k][col] for k in labels}
        with_value = [k for k in labels if gold[k] != ""]

        def text(v: Any) -> str:
            return "" if v is None else str(v)

        def norm(v: Any) -> Any:
            if v is None or v == "":
                return None
            try:
                return float(v)
            except ValueError:
                return "".join(c for c in str(v).casefold() if c.isalnum() or c == " ").split()

        exact = sum(text(answers[k][col]) == gold[k] for k in with_value)
        normalised = sum(norm(answers[k][col]) == norm(gold[k]) for k in with_value)
        null_aware = sum((answers[k][col] is None) if gold[k] == "" else norm(answers[k][col]) == norm(gold[k])
                         for k in labels)
        f = by[col]
        assert (f.answered, f.with_value) == (243, len(with_value)), col
        assert (f.exact, f.normalised, f.null_aware) == (exact, normalised, null_aware), col
        assert f.missed == sum(answers[k][col] is None for k in with_value)
        assert f.spurious == sum(answers[k][col] is not None for k in labels if gold[k] == "")
    # amounts like 349.00 in the labels are answered as numbers (349.0): exact misses, normalised not
    assert by["amount"].exact < by["amount"].normalised == by["amount"].with_value
    assert by["order_id"].exact < by["order_id"].normalised
    assert by["amount"].spurious > 0 and by["order_id"].missed > 0
    cat = r.step("category")
    assert cat.labels is not None and cat.labels.accuracy == 1.0 and cat.labels.macro_f1 == 1.0
    assert cat.labels.confusions == []
    assert cat.calibration is not None and cat.calibration.ece is None  # no logprobs: no ECE
    row_right = sum(all(((answers[k][c] is None) if labels[k][c] == "" else
                         str(answers[k][c]).strip(" .").upper() == labels[k][c].upper()
                         or (labels[k][c].replace(".", "", 1).isdigit() and answers[k][c] is not None
                             and math.isclose(float(answers[k][c]), float(labels[k][c]))))
                        for c in ("order_id", "amount", "urgency")) for k in labels)
    assert details.correct == row_right == r.correct


# --- several runs, running what is missing, budgets -----------------------------------------------


def test_runs_side_by_side(proj: Path):
    job = proj / "tickets.yaml"
    labels = labels_of(proj)
    a = run_job(job, model(proj, 0.7))
    sink_a = {r["ticket_id"]: r["category"] for r in read_csv(proj / "out" / "tickets.csv")}
    b = run_job(job, model(proj, 0.95, "fake:strong"))
    sink_b = {r["ticket_id"]: r["category"] for r in read_csv(proj / "out" / "tickets.csv")}
    assert a["run"] != b["run"]
    ev = eval_json(job, "--run", a["run"], "--run", b["run"])
    assert [r["run"] for r in ev["runs"]] == [a["run"], b["run"]]
    for r, sink in zip(ev["runs"], (sink_a, sink_b)):
        cat = next(s for s in r["steps"] if s["step"] == "category")
        assert cat["correct"] == sum(sink[k] == labels[k]["category"] for k in labels)
    acc = [next(s for s in r["steps"] if s["step"] == "category")["accuracy"] for r in ev["runs"]]
    assert acc[0] < acc[1]
    # plain text (not a terminal): one table with a column per run, no trailing spaces
    out = cli("eval", str(job), "--labels", str(proj / "data" / "tickets_labels.csv"), "--run", a["run"], "--run", b["run"])
    assert out.exit_code == 0, out.output
    lines = out.stdout.splitlines()
    assert all(line == line.rstrip() for line in lines)
    header = lines[1]
    assert a["run"] in header and b["run"] in header
    acc_line = next(line for line in lines if line.startswith("category: accuracy"))
    assert f"{acc[0]:.1%}" in acc_line and f"{acc[1]:.1%}" in acc_line


def test_missing_rows_are_run_unless_no_run(proj: Path):
    job = proj / "tickets.yaml"
    labels = labels_of(proj)
    first = [r["ticket_id"] for r in read_csv(proj / "data" / "tickets.csv")[:40]]
    labeled_first = sum(k in labels for k in first)
    pre = run_job(job, model(proj), "--limit", "40")
    assert pre["status"] == "preview"
    # --no-run: the preview run as it is; the rows it never loaded are not answered
    ev = eval_json(job, "--model", model(proj), "--no-run")
    [r] = ev["runs"]
    assert r["run"] == pre["run"] and r["not_in_run"] == 243 - labeled_first
    cat = next(s for s in r["steps"] if s["step"] == "category")
    assert cat["answered"] == labeled_first
    assert {g["group"]: g["rows"] for g in cat["groups"]} == {"written": labeled_first, "not in run": 243 - labeled_first}
    assert "no final state" in ev["notes"][0]
    # by default the labeled rows run; the answers the preview paid for are replayed, not bought again
    ev = eval_json(job, "--model", model(proj))
    [r] = ev["runs"]
    assert r["job"] == "tickets.eval" and r["not_in_run"] == 0 and r["not_final"] == 0
    made, replayed = 2 * (243 - labeled_first), 2 * labeled_first
    assert ev["notes"] == [f"ran the 243 labeled rows as run {r['run']} ({made:,} calls made, {replayed:,} replayed from the store)"]
    # a second eval scores the same run and makes no call
    again = eval_json(job, "--model", model(proj))
    assert again["runs"][0]["run"] == r["run"] and "(no call made)" in again["notes"][0]
    assert again["runs"][0]["steps"] == r["steps"]


def test_the_jobs_budget_applies_to_the_labeled_rows(proj: Path):
    spec = yaml.safe_load((proj / "tickets.yaml").read_text())
    spec["budget"] = {"max_calls": 100}
    job = write(proj / "budget.yaml", yaml.safe_dump(spec, sort_keys=False))
    ev = eval_json(job, "--model", model(proj))
    [r] = ev["runs"]
    assert r["status"] == "stopped" and r["calls"] <= 100
    assert r["not_final"] > 0
    assert "stopped" in ev["notes"][0] and "max_calls" in ev["notes"][0]
    cat = next(s for s in r["steps"] if s["step"] == "category")
    assert cat["answered"] < 243 and {g["group"] for g in cat["groups"]} >= {"not final"}


# --- bad input: one line with the fix, exit 2 -------------------------------------------------------


@pytest.mark.parametrize("case, fix", [
    ("no labels option", "--labels FILE is required"),
    ("labels not found", "labels file not found"),
    ("not a table", "must be .csv, .tsv or .jsonl"),
    ("no key column", "give --key-column"),
    ("no gold column", "name its gold columns like the sink's"),
    ("no overlap", "no labeled key is in the source"),
    ("unknown run", "no run matches `nope`"),
    ("no run yet and --no-run", "leave out --no-run"),
    ("bad model", "--model"),
    ("job without a key", "give --key-column"),
    ("run without the labeled keys", "has none of the labeled keys"),
])
def test_bad_input_is_one_line_with_the_fix(proj: Path, case: str, fix: str):
    job = str(proj / "tickets.yaml")
    labels = str(proj / "data" / "tickets_labels.csv")
    args = ["--labels", labels, "--model", "fake"]
    if case == "no labels option":
        args = []
    elif case == "labels not found":
        args = ["--labels", str(proj / "nothere.csv")]
    elif case == "not a table":
        args = ["--labels", str(write(proj / "labels.txt", "x"))]
    elif case == "no key column":
        args = ["--labels", str(write(proj / "l.csv", "id,category\nT-1001,billing\n"))]
    elif case == "no gold column":
        args = ["--labels", str(write(proj / "l.csv", "ticket_id,colour\nT-1001,blue\n")), "--model", "fake"]
    elif case == "no overlap":
        args = ["--labels", str(write(proj / "l.csv", "ticket_id,category\nX-1,billing\n")), "--model", "fake"]
    elif case == "unknown run":
        run_job(proj / "tickets.yaml", "fake", "--limit", "2")
        args = ["--labels", labels, "--run", "nope"]
    elif case == "no run yet and --no-run":
        args += ["--no-run"]
    elif case == "bad model":
        args = ["--labels", labels, "--model", "{name: fake"]
    elif case == "job without a key":
        spec = yaml.safe_load((proj / "tickets.yaml").read_text())
        del spec["key"]
        job = str(write(proj / "nokey.yaml", yaml.safe_dump(spec, sort_keys=False)))
    elif case == "run without the labeled keys":
        ran = run_job(proj / "tickets.yaml", "fake", "--limit", "2")
        args = ["--labels", str(write(proj / "l.csv", "ticket_id,category\nX-1,billing\n")), "--run", ran["run"]]
    r = cli("eval", job, *args)
    if case == "no run yet and --no-run":
        assert not (proj.parent / "store" / "corral.db").exists()  # no empty store left behind
    assert r.exit_code == 2, r.output
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fix in lines[0], r.stderr


def test_docs_list_every_json_field():
    """Every key of the JSON object is explained in docs/cli.md's `corral eval` section."""
    doc = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    section = doc.split("## corral eval", 1)[1].split("\n## ", 1)[0]
    from corral._eval_scoring import (
        Bin,
        Calibration,
        Confusion,
        Evaluation,
        FieldScore,
        Group,
        LabelScore,
        RunEval,
        Spend,
        StepEval,
    )

    spend = Spend()
    cal = Calibration(1, 0, 0.1, [Bin(0.0, 0.1, 1, 0.05, 1.0)], [(1.0, 1.0)])
    step = StepEval("s", "extract", "fields", {"a": "a"}, labels=LabelScore("a", 1, 1, 1, 1.0, [{"label": "x", "support": 1, "predicted": 1, "f1": 1.0}], [Confusion("a", "b", 1)]),
                    fields=[FieldScore("a")], groups=[Group("written")], calibration=cal, spend=spend)
    ev = Evaluation("j", "l.csv", "k", 1, [RunEval("r", "j", "fake", "finished", 1, 0, 0, 1, [step], spend)])

    def keys(obj: Any) -> set[str]:
        if isinstance(obj, dict):
            return set(obj) | {k for v in obj.values() for k in keys(v)}
        if isinstance(obj, list):
            return {k for v in obj for k in keys(v)}
        return set()

    missing = sorted(k for k in keys(ev.to_json()) - {"a"} if f"`{k}`" not in section)
    assert not missing, f"JSON fields of corral eval not in docs/cli.md: {missing}"


# --- the HTML report in a real browser ---------------------------------------------------------------


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium): the HTML report is not opened")
    return exe


def browse(exe: str, page: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [exe, "--headless", "--disable-gpu", "--no-sandbox", "--enable-logging=stderr", "--v=0",
         "--user-data-dir=" + str(page.parent / "chromium-profile"), *args, page.as_uri()],
        capture_output=True, text=True, timeout=120,
    )


def console_errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


def test_console_check_catches_a_failing_page(tmp_path: Path):
    """The browser check below can fail: a page with a script error is caught."""
    exe = chromium()
    bad = write(tmp_path / "bad.html", "<!DOCTYPE html><p>x</p><script>throw new Error('boom')</script>")
    p = browse(exe, bad, "--dump-dom")
    assert any("boom" in line for line in console_errors(p.stderr)), p.stderr


def test_html_report_opens_in_chromium(proj: Path, tmp_path: Path):
    exe = chromium()
    job = proj / "tickets.yaml"
    run_job(job, model(proj, 0.7))
    run_job(job, model(proj, 0.95, "fake:strong"))
    ids = [r["run"] for r in json.loads(cli("runs", "--json").stdout)]
    page = tmp_path / "report" / "eval.html"
    r = cli("eval", str(job), "--labels", str(proj / "data" / "tickets_labels.csv"), "--html", str(page),
            *(x for i in ids for x in ("--run", i)))
    assert r.exit_code == 0, r.output
    assert f"HTML report: {page}" in r.stderr
    html = page.read_text(encoding="utf-8")
    # self-contained: no script, no stylesheet or image fetched from anywhere
    assert "<script" not in html and "<link" not in html and "src=" not in html and "@import" not in html
    assert "https://" not in html and html.count("http://") == html.count('xmlns="http://www.w3.org/2000/svg"')
    assert html.count("<svg") == 3  # a reliability diagram per run, one coverage plot for step category
    dom = browse(exe, page, "--dump-dom")
    assert dom.returncode == 0, dom.stderr
    assert not console_errors(dom.stderr), console_errors(dom.stderr)
    assert "Reliability, run" in dom.stdout and "<polyline" in dom.stdout and "macro-F1" in dom.stdout
    shot = tmp_path / "report" / "eval.png"
    p = browse(exe, page, f"--screenshot={shot}", "--window-size=1200,1600")
    assert p.returncode == 0 and shot.stat().st_size > 10_000, p.stderr
    assert not console_errors(p.stderr)
    kept = Path(tempfile.gettempdir()) / "corral-eval-report.png"
    shutil.copy(shot, kept)
    print(f"screenshot of the eval report: {kept}")


def test_filter_step_scored_as_yes_no_labels(proj: Path):
    """A filter's answer is its label (yes/no in the labels file); the rows it skips are a group of
    their own, and the step after it has no answer for them."""
    spec = yaml.safe_load((proj / "tickets.yaml").read_text())
    spec["steps"] = [{"name": "is_billing", "task": "filter", "input": spec["steps"][0]["input"],
                      "question": "Is this ticket about billing?"}, spec["steps"][0]]
    job = write(proj / "filter.yaml", yaml.safe_dump(spec, sort_keys=False))
    labels = labels_of(proj)
    with (proj / "filter_labels.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["ticket_id", "is_billing", "category"])
        for k, g in labels.items():
            w.writerow([k, "yes" if g["category"] == "billing" else "no", g["category"]])
    run_job(job, model(proj))
    r = cli("eval", str(job), "--labels", str(proj / "filter_labels.csv"), "--model", model(proj), "--json")
    assert r.exit_code == 0, r.output
    [run] = json.loads(r.stdout)["runs"]
    kept = {row["ticket_id"]: row for row in read_csv(proj / "out" / "tickets.csv")}
    skipped = {row["ticket_id"] for row in read_csv(proj / "out" / "tickets.skipped.csv")}
    assert kept and skipped and len(kept) + len(skipped) == 243
    flt = next(s for s in run["steps"] if s["step"] == "is_billing")
    assert flt["kind"] == "labels" and flt["answered"] == 243
    right = sum((labels[k]["category"] == "billing") == (k in kept) for k in labels)
    assert flt["correct"] == right
    pairs = [("yes" if labels[k]["category"] == "billing" else "no", "yes" if k in kept else "no") for k in labels]
    assert flt["labels"]["macro_f1"] == pytest.approx(macro_f1(pairs), abs=1e-6)
    groups = {g["group"]: g for g in flt["groups"]}
    assert groups["written"]["rows"] == len(kept) and groups["skipped"]["rows"] == len(skipped)
    assert groups["skipped"]["correct"] == sum(labels[k]["category"] != "billing" for k in skipped)
    cat = next(s for s in run["steps"] if s["step"] == "category")
    assert cat["answered"] == len(kept)
    assert cat["correct"] == sum(kept[k]["category"] == labels[k]["category"] for k in kept)
    assert {g["group"]: g["answered"] for g in cat["groups"]} == {"written": len(kept), "skipped": 0}
    # a row is correct when right at every step it reached: a rightly skipped row is correct
    assert run["correct"] == sum(
        (labels[k]["category"] == "billing") == (k in kept) and (k not in kept or kept[k]["category"] == labels[k]["category"])
        for k in labels)
