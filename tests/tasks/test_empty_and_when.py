"""Empty input is never sent (`on_empty:`), and `when:` over a step that did not run.

An empty CSV cell, a blank one, a missing or null JSONL key and a SQLite NULL each end the row in
a visible state with a reason, without a call; a `when:` that reads a step that did not run is
false; quarantined rows keep the answers already paid for; `when:` mistakes are told as such.
"""

from __future__ import annotations

import csv
import json
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest

import corral
from corral import FakeModel, Job
from corral.errors import JobSpecError, SourceError, UserError
from corral.models.base import Request
from corral.testing import plain

from ..conftest import corral_bin, write

REASON = "step `category`: empty input ({text} is empty)"


# --- helpers --------------------------------------------------------------------------------


def make_job(tmp: Path, steps: list[dict], source: Any = "in.csv", key: str | None = "id") -> Job:
    d: dict[str, Any] = {"name": "t", "source": source, "steps": steps, "sink": "out/o.csv"}
    if key:
        d["key"] = key
    return Job.from_dict(d, base_dir=tmp)


def read_csv(p: Path) -> list[dict[str, str]]:
    with open(p, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def show(run: str, key: str, cwd: Path) -> dict:
    p = subprocess.run([corral_bin(), "show", run, key, "--json"], cwd=cwd, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def accounted(r: Any) -> bool:
    return r.rows_in == r.written + r.quarantined + r.review + r.skipped and r.pending == 0


def answer(req: Request) -> dict:
    """A valid answer for whichever step asks."""
    props = (req.schema or {}).get("properties", {})
    if "label" in props:
        return {"label": "billing"}
    if "keep" in props:
        return {"reason": "it does", "keep": True}
    if "amount" in props:
        return {"amount": 12}
    if "summary" in props:
        return {"summary": "s"}
    if "value" in props:
        return {"value": "V", "span": "v"}
    raise AssertionError(f"unexpected request: {props}")


def sent(fake_requests: list[Request]) -> list[str]:
    """The user text of each request, as the row had it (without the tags around its values)."""
    return [plain(r.messages[-1].content) for r in fake_requests]


def recording(log: list[Request]) -> Any:
    def script(req: Request) -> dict:
        log.append(req)
        return answer(req)
    return script


CATEGORY = {"name": "category", "task": "classify", "input": "{text}", "labels": ["billing", "other"]}


def csv_source(tmp: Path, cell: str) -> str:
    write(tmp / "in.csv", f"id,text\nr1,my invoice is wrong\nr2,{cell}\nr3,where is my parcel\n")
    return "in.csv"


def jsonl_source(tmp: Path, row2: dict) -> str:
    rows = [{"id": "r1", "text": "my invoice is wrong"}, {"id": "r2", **row2},
            {"id": "r3", "text": "where is my parcel"}]
    write(tmp / "in.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    return "in.jsonl"


def sqlite_source(tmp: Path) -> dict:
    conn = sqlite3.connect(tmp / "in.db")
    conn.execute("CREATE TABLE tickets (id TEXT, text TEXT)")
    conn.executemany("INSERT INTO tickets VALUES (?, ?)",
                     [("r1", "my invoice is wrong"), ("r2", None), ("r3", "where is my parcel")])
    conn.commit()
    conn.close()
    return {"path": "in.db", "table": "tickets"}


SOURCES = {
    "csv empty cell": lambda tmp: csv_source(tmp, ""),
    "csv blank cell": lambda tmp: csv_source(tmp, "   "),
    "csv quoted blank": lambda tmp: csv_source(tmp, '"  \t "'),
    "jsonl missing key": lambda tmp: jsonl_source(tmp, {}),
    "jsonl null": lambda tmp: jsonl_source(tmp, {"text": None}),
    "jsonl empty string": lambda tmp: jsonl_source(tmp, {"text": " "}),
    "sqlite NULL": sqlite_source,
}


# --- empty input: no call, a visible state ------------------------------------------------


@pytest.mark.parametrize("source", list(SOURCES))
def test_empty_input_is_quarantined_without_a_call(tmp_path, source):
    log: list[Request] = []
    fake = FakeModel(script=recording(log))
    r = corral.run(make_job(tmp_path, [CATEGORY], SOURCES[source](tmp_path)), model=fake)
    assert fake.calls == 2 and r.calls_made == 2  # r1 and r3 only: nothing paid for r2
    assert not any(not text.strip() for text in sent(log))
    assert (r.written, r.quarantined) == (2, 1) and accounted(r)
    q = read_csv(tmp_path / "out" / "o.quarantine.csv")
    assert [(x["id"], x["_reason"], x["category"]) for x in q] == [("r2", REASON, "")]
    assert [x["id"] for x in read_csv(tmp_path / "out" / "o.csv")] == ["r1", "r3"]


STEPS = {
    "classify": CATEGORY,
    "extract": {"name": "category", "task": "extract", "input": "{text}", "fields": {"amount": "number"}},
    "map": {"name": "category", "task": "map", "input": "{text}", "instructions": "Summarize.",
            "fields": {"summary": "string"}},
    "filter": {"name": "category", "task": "filter", "input": "{text}", "question": "Is it billing?"},
    "chunked extract": {"name": "category", "task": "extract", "input": "{text}",
                        "fields": {"amount": {"type": "number", "nullable": True}},
                        "chunking": {"size": 200, "overlap": 20}},
}


@pytest.mark.parametrize("task", list(STEPS))
def test_no_task_sends_an_empty_input(tmp_path, task):
    fake = FakeModel(script=answer)
    r = corral.run(make_job(tmp_path, [STEPS[task]], csv_source(tmp_path, "")), model=fake)
    assert fake.calls == 2 and r.calls_made == 2
    assert (r.written, r.quarantined) == (2, 1) and accounted(r)
    q = read_csv(tmp_path / "out" / "o.quarantine.csv")
    assert [(x["id"], x["_reason"]) for x in q] == [("r2", REASON)]


def test_constant_text_around_empty_placeholders_is_still_empty(tmp_path):
    write(tmp_path / "in.csv", "id,subject,body\nr1,,\nr2,Invoice,\nr3,, \n")
    log: list[Request] = []
    step = {**CATEGORY, "input": "Subject: {subject}\n\nBody: {body}"}
    r = corral.run(make_job(tmp_path, [step]), model=FakeModel(script=recording(log)))
    # only r2 has something to ask about; its empty body renders as an empty tag
    assert [r.messages[-1].content for r in log] == ["Subject: <subject>Invoice</subject>\n\nBody: <body></body>"]
    q = read_csv(tmp_path / "out" / "o.quarantine.csv")
    both = "step `category`: empty input ({subject} and {body} are empty)"
    assert [(x["id"], x["_reason"]) for x in q] == [("r1", both), ("r3", both)]
    assert r.calls_made == 1 and accounted(r)


def test_a_template_without_placeholders_is_never_empty(tmp_path):
    write(tmp_path / "in.csv", "id,text\nr1,\n")
    fake = FakeModel(script=answer)
    r = corral.run(make_job(tmp_path, [{**CATEGORY, "input": "Is today a billing day?"}]), model=fake)
    assert fake.calls == 1 and r.written == 1


def test_on_empty_skip_ends_the_row_skipped_in_the_skipped_output(tmp_path):
    fake = FakeModel(script=answer)
    r = corral.run(make_job(tmp_path, [{**CATEGORY, "on_empty": "skip"}], csv_source(tmp_path, "")),
                   model=fake)
    assert fake.calls == 2 and (r.written, r.skipped, r.quarantined) == (2, 1, 0) and accounted(r)
    # no filter step in the job, yet the skipped row is written where skipped rows go
    sk = read_csv(tmp_path / "out" / "o.skipped.csv")
    assert [(x["id"], x["_reason"]) for x in sk] == [("r2", REASON)]
    assert read_csv(tmp_path / "out" / "o.quarantine.csv") == []
    assert r.outputs["skipped"].endswith("o.skipped.csv")


def test_on_empty_null_gives_a_null_output_and_the_row_goes_on(tmp_path):
    log: list[Request] = []
    steps = [
        {**CATEGORY, "on_empty": "null"},
        {"name": "details", "task": "extract", "input": "{text}", "fields": {"amount": "number"},
         "when": "category == 'billing'", "on_empty": "ask"},
        {"name": "shout", "task": "classify", "input": "{id}", "labels": ["billing", "other"]},
    ]
    r = corral.run(make_job(tmp_path, steps, csv_source(tmp_path, "")), model=FakeModel(script=recording(log)))
    assert (r.written, r.quarantined) == (3, 0) and accounted(r)
    # r2: no category call; details reads a step that did not run (so no call); shout is asked
    assert sent(log).count("r2") == 1 and "" not in sent(log)
    assert r.calls_made == 2 + 2 + 3
    rows = {x["id"]: x for x in read_csv(tmp_path / "out" / "o.csv")}
    assert (rows["r2"]["category"], rows["r2"]["amount"], rows["r2"]["shout"]) == ("", "", "billing")
    rec = show(r.run, "r2", tmp_path)
    calls = [(c["step"], c["outcome"]) for c in rec["calls"]]
    assert calls[:2] == [("category", "empty"), ("details", "not run")]
    assert "empty input ({text} is empty); no call, the step's output is null" in rec["calls"][0]["detail"]
    assert "reads `category`, which did not run" in rec["calls"][1]["detail"]


def test_on_empty_ask_sends_it_as_before(tmp_path):
    log: list[Request] = []
    r = corral.run(make_job(tmp_path, [{**CATEGORY, "on_empty": "ask"}], csv_source(tmp_path, " ")),
                   model=FakeModel(script=recording(log)))
    assert r.calls_made == 3 and r.written == 3 and " " in sent(log)


def test_a_step_reading_only_a_step_that_did_not_run_has_empty_input(tmp_path):
    write(tmp_path / "in.csv", "id,kind,text\nr1,a,pay me 12\nr2,b,hello\n")
    steps = [
        {"name": "details", "task": "extract", "input": "{text}", "fields": {"amount": "number"},
         "when": "kind == 'a'"},
        {**CATEGORY, "input": "amount: {details.amount}"},
    ]
    fake = FakeModel(script=answer)
    corral.run(make_job(tmp_path, steps), model=fake)
    assert fake.calls == 2  # r1: both steps; r2: neither
    q = read_csv(tmp_path / "out" / "o.quarantine.csv")
    assert [(x["id"], x["_reason"]) for x in q] == [
        ("r2", "step `category`: empty input ({details.amount} is empty)")]


def test_normalize_and_match_answer_empty_input_with_null_and_can_quarantine_it(tmp_path):
    write(tmp_path / "in.csv", "id,v\nr1,Jan 5 2024\nr2,\n")
    norm = {"name": "d", "task": "normalize", "input": "Date: {v}", "to": "date"}
    fake = FakeModel(script=lambda req: {"value": "2024-01-05", "span": "Jan 5 2024"})
    r = corral.run(make_job(tmp_path, [norm]), model=fake)
    # constant text around an empty value no longer makes a call
    assert fake.calls == 1 and r.written == 2 and r.quarantined == 0
    assert [x["d"] for x in read_csv(tmp_path / "out" / "o.csv")] == ["2024-01-05", ""]
    fake = FakeModel(script=lambda req: {"value": "2024-01-05", "span": "Jan 5 2024"})
    r = corral.run(make_job(tmp_path, [{**norm, "on_empty": "quarantine"}]), model=fake)
    assert fake.calls == 0 and r.calls_made == 0 and r.calls_replayed == 1  # r1 from the cache
    q = read_csv(tmp_path / "out" / "o.quarantine.csv")
    assert [(x["id"], x["_reason"]) for x in q] == [("r2", "step `d`: empty input ({v} is empty)")]
    m = {"name": "m", "task": "match", "left": "{v}", "reference": ["Jan 5 2024", "Feb 1 2024"],
         "on_empty": "skip"}
    r = corral.run(make_job(tmp_path, [m]), model=FakeModel(script=lambda req: {"match": "Jan 5 2024",
                                                                                "reason": "same"}))
    assert (r.written, r.skipped) == (1, 1) and accounted(r)
    assert read_csv(tmp_path / "out" / "o.skipped.csv")[0]["_reason"] == "step `m`: empty input ({v} is empty)"


def test_a_resumed_run_makes_no_call_for_empty_rows_either(tmp_path):
    job = make_job(tmp_path, [CATEGORY], csv_source(tmp_path, ""))
    r1 = corral.run(job, model=FakeModel(script=answer))
    fake = FakeModel(script=answer)
    r2 = corral.run(job, model=fake)
    assert r2.run == r1.run and fake.calls == 0 and (r2.written, r2.quarantined) == (2, 1)


# --- the option ------------------------------------------------------------------------------


def test_on_empty_yaml_spellings(tmp_path):
    write(tmp_path / "in.csv", "id,text\nr1,\n")
    for spelled, means in (("null", "null"), ("'null'", "null"), ("skip", "skip"), ("ask", "ask")):
        write(tmp_path / "job.yaml", f"""name: t
source: in.csv
key: id
sink: out/o.csv
steps:
  - name: category
    task: classify
    input: "{{text}}"
    labels: [a, b]
    on_empty: {spelled}
""")
        assert Job.load(tmp_path / "job.yaml").steps[0].on_empty == means
    write(tmp_path / "job.yaml", (tmp_path / "job.yaml").read_text().replace("on_empty: ask", "on_empty: drop"))
    with pytest.raises(JobSpecError) as e:
        Job.load(tmp_path / "job.yaml")
    assert "on_empty" in str(e.value) and "quarantine" in str(e.value)


def test_jobs_without_on_empty_keep_their_spec_hash(tmp_path):
    base = {"name": "t", "source": "in.csv", "key": "id", "sink": "o.csv"}

    def h(step: dict) -> str:
        return Job.from_dict({**base, "steps": [step]}, base_dir=tmp_path).spec_hash()

    extract = {"name": "x", "task": "extract", "input": "{text}", "fields": {"amount": "number"}}
    norm = {"name": "n", "task": "normalize", "input": "{text}"}
    # the hashes these jobs had before `on_empty` existed (commit fe4388b)
    assert h(CATEGORY) == PINNED["classify"]
    assert h(extract) == PINNED["extract"]
    assert h(norm) == PINNED["normalize"]
    # the default spelled out is the same job; another value is a new one
    assert h({**CATEGORY, "on_empty": "quarantine"}) == h(CATEGORY)
    assert h({**norm, "on_empty": None}) == h(norm)
    assert h({**extract, "on_empty": "quarantine"}) == h(extract)
    assert len({h(CATEGORY), h({**CATEGORY, "on_empty": "skip"}), h({**CATEGORY, "on_empty": "null"}),
                h({**CATEGORY, "on_empty": "ask"})}) == 4
    assert h({**norm, "on_empty": "quarantine"}) != h(norm)


PINNED = {
    "classify": "4ca8023c64766f89c86fe280249e2a5867aab449a840c42b7e92992dfdf2d31a",
    "extract": "a4e14991ab12c6591af8d77db4e25a07f0cf5db9fda7c79d8a4f670c87e9ff78",
    "normalize": "c92e5110d43c64fb506aaae012002d404847d27dca53fe845352e4b1d957d63a",
}


# --- when: over a step that did not run ------------------------------------------------------

KINDS = "id,kind,text\nK1,a,pay 50\nK2,b,hello\n"


def test_when_over_a_step_that_did_not_run_is_false(tmp_path):
    write(tmp_path / "in.csv", KINDS)
    steps = [
        {"name": "x", "task": "extract", "input": "{text}", "when": "kind == 'a'", "fields": {"amount": "number"}},
        {**CATEGORY, "when": "x.amount > 10"},
        {"name": "nothing", "task": "classify", "input": "{text}", "labels": ["a", "b"], "when": "x == null"},
        {"name": "later", "task": "classify", "input": "{text}", "labels": ["a", "b"],
         "when": "category == 'billing' or kind == 'b'"},
    ]
    fake = FakeModel(script=lambda req: {"amount": 50} if "amount" in req.schema["properties"] else {"label": "billing"}
                     if "billing" in json.dumps(req.schema) else {"label": "a"})
    r = corral.run(make_job(tmp_path, steps), model=fake)
    assert (r.written, r.quarantined) == (2, 0) and accounted(r)
    assert fake.calls == 3  # K1: x, category, later; K2: nothing (every when reads a step that did not run)
    rows = {x["id"]: x for x in read_csv(tmp_path / "out" / "o.csv")}
    assert (rows["K1"]["amount"], rows["K1"]["category"], rows["K1"]["later"]) == ("50", "billing", "a")
    assert (rows["K2"]["amount"], rows["K2"]["category"], rows["K2"]["nothing"], rows["K2"]["later"]) == ("", "", "", "")
    rec = show(r.run, "K2", tmp_path)
    assert [(c["step"], c["outcome"]) for c in rec["calls"]] == [
        ("x", "not run"), ("category", "not run"), ("nothing", "not run"), ("later", "not run")]
    assert "when: kind == 'a' is false" in rec["calls"][0]["detail"]
    assert "when: x.amount > 10 reads `x`, which did not run" in rec["calls"][1]["detail"]


def test_when_that_fails_on_a_row_still_quarantines_with_the_paid_answers(tmp_path):
    write(tmp_path / "in.csv", "id,text\nr1,pay 50\nr2,hello\n")
    steps = [
        {"name": "x", "task": "extract", "input": "{text}",
         "fields": {"amount": {"type": "number", "nullable": True}, "who": "string"}},
        {**CATEGORY, "when": "x.amount > 10"},
    ]
    fake = FakeModel(script=lambda req: ({"amount": 50 if "50" in req.messages[-1].content else None, "who": "me"}
                                         if "amount" in req.schema["properties"] else {"label": "billing"}))
    r = corral.run(make_job(tmp_path, steps), model=fake)
    assert (r.written, r.quarantined) == (1, 1) and fake.calls == 3
    q = read_csv(tmp_path / "out" / "o.quarantine.csv")
    assert list(q[0]) == ["id", "text", "amount", "who", "category", "_key", "_line", "_reason"]
    assert (q[0]["id"], q[0]["amount"], q[0]["who"], q[0]["category"]) == ("r2", "", "me", "")
    assert q[0]["_reason"].startswith("step `category`: when `x.amount > 10` could not be evaluated")


def test_quarantine_output_carries_the_answers_already_paid_for(tmp_path):
    write(tmp_path / "in.csv", "id,text\nr1,pay 50\nr2,hello\n")
    steps = [CATEGORY, {"name": "x", "task": "extract", "input": "{text}", "fields": {"amount": "number"},
                        "max_attempts": 2}]

    def script(req: Request) -> Any:
        if "label" in req.schema["properties"]:
            return {"label": "billing" if "pay" in req.messages[-1].content else "other"}
        return {"amount": 50} if "pay" in req.messages[-1].content else "not json"

    fake = FakeModel(script=script)
    r = corral.run(make_job(tmp_path, steps), model=fake)
    assert (r.written, r.quarantined) == (1, 1) and fake.calls == 2 + 1 + 2
    q = read_csv(tmp_path / "out" / "o.quarantine.csv")
    assert [(x["id"], x["category"], x["amount"]) for x in q] == [("r2", "other", "")]
    assert q[0]["_reason"].startswith("step `x`: response is not JSON")
    # a malformed line still has its columns, all empty
    write(tmp_path / "in.csv", "id,text\nr1,pay 50\nr2,a,b\n")
    corral.run(make_job(tmp_path, steps), model=FakeModel(script=script))
    q = read_csv(tmp_path / "out" / "o.quarantine.csv")
    assert [(x["_key"], x["category"], x["id"]) for x in q] == [("#2", "", "")]
    assert q[0]["_reason"].startswith("malformed input")


# --- when: mistakes are told as when: mistakes -----------------------------------------------


@pytest.mark.parametrize("when, error, says", [
    ("catt == 'billing'", SourceError,
     "step `x`: when: uses `catt`, which is not a column of in.csv or an earlier step; did you mean `cat`?"),
    ("x != null", UserError, "step `x`: when: uses `x`, its own output"),
    ("later == 'a'", UserError, "step `x`: when: uses `later`, the output of a later step"),
])
def test_when_mistakes_are_reported_as_when_mistakes(tmp_path, when, error, says):
    write(tmp_path / "in.csv", "id,text\nr1,hello\n")
    steps = [{"name": "cat", "task": "classify", "input": "{text}", "labels": ["billing", "other"]},
             {"name": "x", "task": "extract", "input": "{text}", "fields": {"amount": "number"}, "when": when},
             {"name": "later", "task": "classify", "input": "{text}", "labels": ["a", "b"]}]
    fake = FakeModel(script=answer)
    with pytest.raises(error) as e:
        corral.run(make_job(tmp_path, steps), model=fake)
    assert says in str(e.value) and "\n" not in str(e.value) and "{" not in str(e.value)
    assert fake.calls == 0


def test_a_template_mistake_is_still_a_placeholder_mistake(tmp_path):
    write(tmp_path / "in.csv", "id,text\nr1,hello\n")
    with pytest.raises(SourceError, match=r"step `cat` uses \{txet\}, which is not a column"):
        corral.run(make_job(tmp_path, [{**CATEGORY, "name": "cat", "input": "{txet}"}]), model=FakeModel())


def test_comprehension_variables_are_not_row_names(tmp_path):
    write(tmp_path / "in.jsonl", json.dumps({"id": "r1", "text": "hi", "tags": ["a", "b"]}) + "\n")
    step = {**CATEGORY, "when": "any(t == 'a' for t in tags)"}
    fake = FakeModel(script=answer)
    r = corral.run(make_job(tmp_path, [step], "in.jsonl"), model=fake)
    assert r.written == 1 and fake.calls == 1
