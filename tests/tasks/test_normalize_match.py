"""The normalize and match tasks: per-row reference schemas, narrowing, shortcuts, clean mode,
blocking, reference matching, error messages, and the example jobs."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

import corral
from corral import FakeModel, Job
from corral.errors import JobSpecError, SourceError
from corral.models.base import Request
from corral.testing import plain

from ..conftest import ROOT, corral_bin, write

VENDORS = [
    "Acme Corporation", "Globex Inc", "Initech LLC", "Umbrella Pharmaceuticals", "Stark Industries",
    "Wayne Enterprises", "Wonka Industries", "Cyberdyne Systems", "Soylent Corp", "Tyrell Corporation",
    "Hooli", "Pied Piper", "Vandelay Industries", "Dunder Mifflin Paper Company", "Oceanic Airlines",
    "Massive Dynamic", "Monarch Solutions", "Nakatomi Trading", "Gringotts Bank", "Duff Brewery",
    "Krusty Burger", "Bluth Company", "Prestige Worldwide", "Sterling Cooper", "Los Pollos Hermanos",
]


def read_csv(p: Path) -> list[dict[str, str]]:
    with open(p, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def csv_text(header: list[str], rows: list[list[Any]]) -> str:
    out = [",".join(header)]
    for r in rows:
        out.append(",".join(f'"{v}"' if "," in str(v) else str(v) for v in r))
    return "\n".join(out) + "\n"


def make_job(tmp_path: Path, steps: list[dict[str, Any]], data: str, key: str | None = "id") -> Job:
    write(tmp_path / "in.csv", data)
    d: dict[str, Any] = {"name": "t", "source": "in.csv", "steps": steps, "sink": "out/o.csv"}
    if key:
        d["key"] = key
    return Job.from_dict(d, base_dir=tmp_path)


def vendors_file(tmp_path: Path) -> Path:
    return write(tmp_path / "ref" / "vendors.csv", csv_text(["vid", "name"], [[f"V{i}", v] for i, v in enumerate(VENDORS)]))


def enum_of(request: Request, field: str = "value") -> list[Any]:
    assert request.schema is not None
    return request.schema["properties"][field]["enum"]


def user_text(request: Request) -> str:
    return plain(next(m.content for m in request.messages if m.role == "user"))


def first_entry(field: str = "value"):
    """A script that answers the first candidate (the closest one)."""

    def script(request: Request) -> dict[str, Any]:
        return {field: enum_of(request, field)[0]} | ({"reason": "closest"} if field == "match" else {})

    return script


VENDOR_STEP = {
    "name": "vendor_name", "task": "normalize", "input": "{vendor}",
    "reference": {"path": "ref/vendors.csv", "column": "name"}, "candidates": 5,
}


# --- normalize: reference mode ------------------------------------------------------------


def test_reference_mode_gives_each_row_its_own_enum_of_the_closest_entries(tmp_path):
    vendors_file(tmp_path)
    data = csv_text(["id", "vendor"], [[1, "Globx Inc."], [2, "stark ind"], [3, "Pied-Piper"]])
    job = make_job(tmp_path, [VENDOR_STEP], data)
    seen: list[Request] = []

    def script(request: Request) -> dict[str, Any]:
        seen.append(request)
        return {"value": enum_of(request)[0]}

    r = corral.run(job, model=FakeModel(script=script))
    assert (r.written, r.quarantined) == (3, 0)
    assert len(seen) == 3
    for req in seen:
        options = enum_of(req)
        assert len(options) == 5 + 1 and options[-1] is None  # narrowed to 5, plus "none"
        for entry in options[:-1]:
            assert f"- {entry}" in user_text(req)  # the prompt lists exactly what the schema allows
    rows = read_csv(tmp_path / "out" / "o.csv")
    assert [x["vendor_name"] for x in rows] == ["Globex Inc", "Stark Industries", "Pied Piper"]


def test_rapidfuzz_narrowing_puts_the_right_entry_first(tmp_path):
    vendors_file(tmp_path)
    step = make_job(tmp_path, [VENDOR_STEP], "id,vendor\n1,x\n").steps[0]
    step.bind(tmp_path)
    for messy, right in [
        ("GLOBEX INC.", "Globex Inc"), ("wayne enterprises inc", "Wayne Enterprises"),
        ("Dunder-Mifflin", "Dunder Mifflin Paper Company"), ("Tyrell Corp", "Tyrell Corporation"),
        ("Los Polos Hermanos", "Los Pollos Hermanos"),
    ]:
        options = enum_of(step.render({"vendor": messy}))
        assert options[0] == right, (messy, options)
        assert len(options) == 6


def test_an_answer_outside_the_candidates_is_retried_then_quarantined(tmp_path):
    vendors_file(tmp_path)
    job = make_job(tmp_path, [VENDOR_STEP], "id,vendor\n1,Globx\n")
    fake = FakeModel(script=lambda request: {"value": "Globex International"})  # not an entry
    r = corral.run(job, model=fake)
    assert (r.written, r.quarantined) == (0, 1)
    assert fake.calls == 3  # max_attempts
    q = read_csv(tmp_path / "out" / "o.quarantine.csv")
    assert "breaks the schema at value" in q[0]["_reason"] and "after 3 attempts" in q[0]["_reason"]


def test_a_value_that_already_is_an_entry_makes_no_call(tmp_path):
    vendors_file(tmp_path)
    data = csv_text(["id", "vendor"], [[1, "Globex Inc"], [2, " Hooli "], [3, ""], [4, "hooli"]])
    job = make_job(tmp_path, [VENDOR_STEP], data)
    fake = FakeModel(script=lambda request: {"value": None})
    r = corral.run(job, model=fake)
    assert r.written == 4
    assert fake.calls == 1  # only "hooli": case counts by default
    rows = {x["id"]: x["vendor_name"] for x in read_csv(tmp_path / "out" / "o.csv")}
    assert rows == {"1": "Globex Inc", "2": "Hooli", "3": "", "4": ""}

    insensitive = {**VENDOR_STEP, "case_sensitive": False}
    job = Job.from_dict({**job.model_dump(), "steps": [insensitive], "sink": "out/ci.csv"}, base_dir=tmp_path)
    fake = FakeModel(script=lambda request: {"value": None})
    corral.run(job, model=fake)
    assert fake.calls == 0
    rows = {x["id"]: x["vendor_name"] for x in read_csv(tmp_path / "out" / "ci.csv")}
    assert rows["4"] == "Hooli"


def test_inline_reference_and_keep_unmatched(tmp_path):
    step = {
        "name": "cur", "task": "normalize", "input": "{c}", "reference": ["USD", "EUR", "GBP"],
        "keep_unmatched": True,
    }
    job = make_job(tmp_path, [step], "id,c\n1,usd\n2,dollars?\n3,EUR\n")

    def script(request: Request) -> dict[str, Any]:
        return {"value": "USD" if "usd" in user_text(request) else None}

    fake = FakeModel(script=script)
    corral.run(job, model=fake)
    assert fake.calls == 2
    rows = {x["id"]: x["cur"] for x in read_csv(tmp_path / "out" / "o.csv")}
    assert rows == {"1": "USD", "2": "dollars?", "3": "EUR"}


def test_min_count_keeps_only_the_frequent_values_of_a_column(tmp_path):
    cities = ["Springfield"] * 4 + ["Shelbyville"] * 3 + ["Sprngfield", "Capital City"]
    data = csv_text(["id", "city"], [[i, c] for i, c in enumerate(cities)])
    step = {
        "name": "town", "task": "normalize", "input": "{city}",
        "reference": {"path": "in.csv", "column": "city", "min_count": 2},
    }
    job = make_job(tmp_path, [step], data)
    seen: list[list[Any]] = []

    def script(request: Request) -> dict[str, Any]:
        seen.append(enum_of(request))
        return {"value": enum_of(request)[0]}

    fake = FakeModel(script=script)
    corral.run(job, model=fake)
    assert fake.calls == 2  # the two values seen once; the frequent ones are already canonical
    assert all(options == ["Springfield", "Shelbyville", None] for options in seen)
    rows = [x["town"] for x in read_csv(tmp_path / "out" / "o.csv")]
    assert rows[:7] == cities[:7] and rows[7] == "Springfield"


# --- normalize: free mode -----------------------------------------------------------------


def test_free_mode_writes_the_value_and_its_span(tmp_path):
    steps = [
        {"name": "day", "task": "normalize", "input": "{d}", "to": "date"},
        {"name": "total", "task": "normalize", "input": "{a}", "to": "number"},
    ]
    job = make_job(tmp_path, steps, csv_text(["id", "d", "a"], [[1, "paid on March 5, 2024", "$1,250.50 total"], [2, "", ""]]))
    answers = {
        "paid on March 5, 2024": [{"value": "March 5", "span": "March 5"}, {"value": "2024-03-05", "span": "March 5, 2024"}],
        "$1,250.50 total": [{"value": 1250.5, "span": "$1,250.50"}],
    }

    def script(request: Request) -> dict[str, Any]:
        assert request.schema is not None and set(request.schema["properties"]) == {"value", "span"}
        return answers[user_text(request)].pop(0)

    fake = FakeModel(script=script)
    r = corral.run(job, model=fake)
    assert (r.written, r.quarantined) == (2, 0)
    assert fake.calls == 3  # "March 5" is not a date: retried once; empty values make no call
    rows = read_csv(tmp_path / "out" / "o.csv")
    assert list(rows[0])[-4:] == ["day", "day_span", "total", "total_span"]
    assert (rows[0]["day"], rows[0]["day_span"]) == ("2024-03-05", "March 5, 2024")
    assert (rows[0]["total"], rows[0]["total_span"]) == ("1250.5", "$1,250.50")
    assert rows[1]["day"] == rows[1]["total"] == ""


# --- normalize: clean mode ----------------------------------------------------------------


DIRTY = csv_text(
    ["id", "city", "state", "kind"],
    [
        [1, "birmingham", "al", "acute care"],
        [2, "birmingham", "al", "acute care"],
        [3, "birminghxm", "al", "acute care"],
        [4, "huntsville", "xl", "acute care"],
        [5, "huntsville", "al", "acxte care"],
        [6, "huntsville", "ak", "critical access"],
        [7, "dothan", "ak", "critical access"],
        [8, "dothan", "al", ""],
    ],
)
CLEAN = {"city": "birmingham", "state": "al", "kind": "acute care"}


def clean_job(tmp_path: Path, **step: Any) -> Job:
    base = {"name": "fix", "task": "normalize", "clean": ["city", "state", "kind"]}
    return make_job(tmp_path, [{**base, **step}], DIRTY)


def typo_fixer(calls: list[str]):
    """Answers the candidate closest to the value (the first), and logs the column asked about."""

    def script(request: Request) -> dict[str, Any]:
        text = user_text(request)
        calls.append(text.split("Column: ")[1].split("\n")[0])
        return {"value": enum_of(request)[0]}

    return script


def test_clean_mode_fixes_each_column_against_its_own_frequent_values(tmp_path):
    job = clean_job(tmp_path)
    job.steps[0].bind(tmp_path, job.source)  # the job's own source is the default reference
    asked: list[str] = []
    fake = FakeModel(script=typo_fixer(asked))
    r = corral.run(job, model=fake)
    assert (r.written, r.quarantined) == (8, 0)
    # one call per column that is not already canonical: rows 3, 4 and 5 have one typo each
    assert sorted(asked) == ["city", "kind", "state"] and fake.calls == 3
    rows = read_csv(tmp_path / "out" / "o.csv")
    assert list(rows[0])[-3:] == ["fix_city", "fix_state", "fix_kind"]
    for row in rows:
        for col in ("city", "state", "kind"):
            expected = row[col] if "x" not in row[col] else CLEAN[col]
            assert row[f"fix_{col}"] == expected, (row, col)


def test_clean_mode_rows_already_canonical_are_answered_with_a_shortcut(tmp_path):
    job = clean_job(tmp_path, reference={"path": "in.csv", "min_count": 2})
    r = corral.run(job, model=FakeModel(script=typo_fixer([])))
    out = subprocess.run(
        [corral_bin(), "show", r.run, "1", "--json"], capture_output=True, text=True, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    calls = json.loads(out.stdout)["calls"]
    assert [(c["step"], c["outcome"]) for c in calls] == [("fix", "shortcut")]
    assert "3 already canonical" in calls[0]["detail"]
    out = subprocess.run(
        [corral_bin(), "show", r.run, "8", "--json"], capture_output=True, text=True, cwd=tmp_path
    )
    assert "2 already canonical, 1 empty" in json.loads(out.stdout)["calls"][0]["detail"]


def test_clean_mode_per_column_references_and_keep_unmatched_false(tmp_path):
    job = clean_job(
        tmp_path,
        clean={"city": {"path": "in.csv", "min_count": 2}, "state": ["al", "ak"], "kind": None},
        reference={"path": "in.csv", "min_count": 3},
        keep_unmatched=False,
    )
    asked: list[str] = []

    def script(request: Request) -> dict[str, Any]:
        asked.append(user_text(request))
        return {"value": None}  # "none of these"

    corral.run(job, model=FakeModel(script=script))
    rows = {x["id"]: x for x in read_csv(tmp_path / "out" / "o.csv")}
    # kind uses the step's min_count 3: "critical access" (seen twice) is not canonical there
    assert rows["6"]["fix_kind"] == "" and rows["6"]["fix_state"] == "ak"
    assert rows["3"]["fix_city"] == ""  # keep_unmatched: false
    assert any("Column: kind\nValue: critical access" in a for a in asked)


def test_clean_mode_without_a_known_source_says_how_to_fix_it(tmp_path):
    step = clean_job(tmp_path).steps[0]
    with pytest.raises(SourceError, match=r"name the file: `reference: \{path: FILE"):
        step.bind(tmp_path)


def test_clean_mode_checks_the_columns_before_the_run(tmp_path):
    job = clean_job(tmp_path, clean=["city", "stat"], reference={"path": "in.csv"})
    with pytest.raises(SourceError, match=r"column `stat` is not in in.csv; did you mean `state`\?"):
        corral.run(job, model=FakeModel())


# --- normalize: errors ----------------------------------------------------------------------


def test_a_missing_reference_file_or_column_is_one_clear_error(tmp_path):
    job = make_job(tmp_path, [{**VENDOR_STEP, "reference": {"path": "ref/nope.csv", "column": "name"}}], "id,vendor\n1,a\n")
    with pytest.raises(SourceError) as e:
        corral.run(job, model=FakeModel())
    msg = str(e.value)
    assert "step `vendor_name`" in msg and "nope.csv" in msg and "fix `reference.path`" in msg
    assert "\n" not in msg

    vendors_file(tmp_path)
    job = make_job(tmp_path, [{**VENDOR_STEP, "reference": {"path": "ref/vendors.csv", "column": "nmae"}}], "id,vendor\n1,a\n")
    with pytest.raises(SourceError, match=r"column `nmae` is not in vendors.csv; did you mean `name`\? Columns: vid, name\. Fix `reference.column`"):
        corral.run(job, model=FakeModel())


@pytest.mark.parametrize(
    "step,message",
    [
        ({}, "needs `input:`"),
        ({"input": "{v}", "reference": {"path": "x.csv"}}, "`reference` needs `column`"),
        ({"input": "{v}", "reference": ["a"], "to": "date"}, "`to` is for free mode"),
        ({"clean": ["a"], "reference": ["x"]}, "with `clean`, `reference` is a file"),
        ({"input": "{v}", "reference": [True, "b"]}, "YAML boolean"),
        ({"input": "{v}", "reference": ["a"], "candidate": 3}, "unknown key `candidate`.*did you mean `candidates`"),
        ({"input": "{v}", "reference": {"path": "x.csv", "colum": "a"}}, "unknown key `colum` in `reference`; did you mean `column`"),
        ({"clean": {"City": {"min_cont": 3}}}, "unknown key `min_cont` in `clean.City`; did you mean `min_count`"),
        ({"clean": ["a"], "reference": {"path": "x.csv", "column": "a"}}, "leave out `reference.column`"),
    ],
)
def test_normalize_spec_errors(step, message):
    with pytest.raises(JobSpecError, match=message):
        Job.from_dict({"name": "t", "source": "x.csv", "sink": "o.csv", "steps": [{"name": "n", "task": "normalize", **step}]})


# --- match ----------------------------------------------------------------------------------


PAIRS = csv_text(
    ["id", "a", "pa", "b", "pb"],
    [
        [1, "Apple iPhone 13 128GB Midnight", 699, "iPhone 13 128 GB (Apple) Midnight", 699],
        [2, "Instant Pot Duo 6qt", 89, "Logitech MX Master 3S mouse", 99],
        [3, "Sony WH-1000XM5 headphones", 349, "Sony WH-1000XM4 Wireless Headphones", 279],
    ],
)
PAIR_STEP = {"name": "same", "task": "match", "left": "{a}, ${pa}", "right": "{b}, ${pb}"}


def test_match_pairs_write_same_and_reason(tmp_path):
    job = make_job(tmp_path, [PAIR_STEP], PAIRS)

    def script(request: Request) -> dict[str, Any]:
        assert user_text(request).startswith("A: ")
        return {"same": "iPhone" in user_text(request), "reason": "same model"}

    fake = FakeModel(script=script)
    corral.run(job, model=fake)
    assert fake.calls == 3  # no blocking unless `block:` is given
    rows = read_csv(tmp_path / "out" / "o.csv")
    assert list(rows[0])[-2:] == ["same", "same_reason"]
    assert [x["same"] for x in rows] == ["true", "false", "false"]


def test_match_blocking_answers_dissimilar_pairs_without_a_call(tmp_path):
    job = make_job(tmp_path, [{**PAIR_STEP, "block": {"threshold": 0.5}}], PAIRS)
    fake = FakeModel(script=lambda request: {"same": True, "reason": "looks alike"})
    r = corral.run(job, model=fake)
    assert fake.calls == 2 and r.written == 3
    rows = {x["id"]: x for x in read_csv(tmp_path / "out" / "o.csv")}
    assert rows["2"]["same"] == "false"
    assert rows["2"]["same_reason"].startswith("blocked: similarity 0.") and rows["2"]["same_reason"].endswith("< 0.5")
    out = subprocess.run([corral_bin(), "show", r.run, "2", "--json"], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    calls = json.loads(out.stdout)["calls"]
    assert [c["outcome"] for c in calls] == ["shortcut"]
    assert calls[0]["detail"].startswith("blocked: similarity")


CATALOG = csv_text(
    ["sku", "brand", "name", "price"],
    [
        ["P-100", "Apple", "iPhone 13 128GB Midnight", 699],
        ["P-101", "Apple", "iPhone 13 256GB Midnight", 799],
        ["P-103", "Sony", "WH-1000XM4 Wireless Headphones", 279],
        ["P-104", "Sony", "WH-1000XM5 Wireless Headphones", 349],
        ["P-106", "Instant Pot", "Duo 7-in-1 6 Quart", 89],
        ["P-107", "Logitech", "MX Master 3S Wireless Mouse", 99],
    ],
)
REF_STEP = {
    "name": "sku", "task": "match", "left": "{a}",
    "reference": {"path": "catalog.csv", "key": "sku", "fields": ["brand", "name"]}, "candidates": 2,
}


def test_match_reference_picks_a_key_among_the_closest_entries(tmp_path):
    write(tmp_path / "catalog.csv", CATALOG)
    job = make_job(tmp_path, [REF_STEP], PAIRS)
    seen: dict[str, Request] = {}

    def script(request: Request) -> dict[str, Any]:
        seen[user_text(request).split("\n")[0]] = request
        return {"match": enum_of(request, "match")[0], "reason": "closest"}

    r = corral.run(job, model=FakeModel(script=script))
    assert r.written == 3
    assert {k: enum_of(q, "match") for k, q in seen.items()} == {
        "Record: Apple iPhone 13 128GB Midnight": ["P-100", "P-101", None],
        "Record: Instant Pot Duo 6qt": ["P-106", "P-101", None],
        "Record: Sony WH-1000XM5 headphones": ["P-104", "P-103", None],  # the tie broken right
    }
    text = user_text(seen["Record: Apple iPhone 13 128GB Midnight"])
    assert "- P-100: brand: Apple; name: iPhone 13 128GB Midnight" in text
    rows = read_csv(tmp_path / "out" / "o.csv")
    assert [(x["sku"], x["sku_reason"]) for x in rows] == [("P-100", "closest"), ("P-106", "closest"), ("P-104", "closest")]


def test_match_reference_rejects_keys_outside_the_candidates_and_blocks(tmp_path):
    write(tmp_path / "catalog.csv", CATALOG)
    ref = {**REF_STEP["reference"], "fields": None, "template": "{brand} {name}"}
    job = make_job(tmp_path, [{**REF_STEP, "reference": ref, "block": {"threshold": 0.6}}], PAIRS)
    fake = FakeModel(script=lambda request: {"match": "P-101", "reason": "the 256GB one"})
    r = corral.run(job, model=fake)
    # P-101 is a candidate of row 1 only: row 3 never lists it, and row 2 lists it below the
    # blocking threshold, which drops it; both are retried and quarantined
    assert (r.written, r.quarantined) == (1, 2)
    rows = read_csv(tmp_path / "out" / "o.csv")
    assert (rows[0]["id"], rows[0]["sku"]) == ("1", "P-101")

    job = make_job(tmp_path, [{**REF_STEP, "block": {"threshold": 0.9}}], "id,a\n1,Banana bread\n")
    fake = FakeModel()
    corral.run(job, model=fake)
    assert fake.calls == 0
    row = read_csv(tmp_path / "out" / "o.csv")[0]
    assert row["sku"] == "" and row["sku_reason"].startswith("blocked: best similarity")


def test_match_reference_errors(tmp_path):
    write(tmp_path / "catalog.csv", CATALOG)
    job = make_job(tmp_path, [{**REF_STEP, "reference": {"path": "catalog.csv", "key": "id"}}], PAIRS)
    with pytest.raises(SourceError, match=r"step `sku`: column `id` is not in catalog.csv.*Fix `reference.key`"):
        corral.run(job, model=FakeModel())
    write(tmp_path / "dup.csv", "sku,name\nA,x\nA,y\n")
    job = make_job(tmp_path, [{**REF_STEP, "reference": {"path": "dup.csv", "key": "sku"}}], PAIRS)
    with pytest.raises(SourceError, match="duplicate key `A`"):
        corral.run(job, model=FakeModel())
    for step, message in [
        ({"left": "{a}"}, "exactly one of `right:`"),
        ({"left": "{a}", "right": "{b}", "reference": ["x"]}, "exactly one of `right:`"),
        ({"left": "{a}", "right": "{b}", "input": "{a}"}, "does not use `input`"),
        ({"left": "{a}", "right": "{b}", "block": {"threshold": 2}}, "threshold"),
        ({"left": "{a}", "right": "{b}", "block": {"treshold": 0.3}}, "did you mean `threshold`"),
        ({"left": "{a}", "reference": {"path": "c.csv", "field": ["a"]}}, "did you mean `fields`"),
        ({"left": "{a}", "reference": {"path": "c.csv"}}, "`reference` needs `key`"),
    ]:
        with pytest.raises(JobSpecError, match=message):
            Job.from_dict({"name": "t", "source": "x.csv", "sink": "o.csv", "steps": [{"name": "m", "task": "match", **step}]})


def test_match_block_shorthand():
    job = Job.from_dict({"name": "t", "source": "x.csv", "sink": "o.csv", "steps": [{**PAIR_STEP, "block": 0.3}]})
    assert job.steps[0].block.threshold == 0.3


def test_match_templates_are_checked_against_the_source(tmp_path):
    job = make_job(tmp_path, [{**PAIR_STEP, "right": "{bb}"}], PAIRS)
    with pytest.raises(SourceError, match=r"\{bb\}.*did you mean `b`"):
        corral.run(job, model=FakeModel())


# --- the hospital data set ------------------------------------------------------------------


def test_clean_mode_on_the_hospital_typos_with_a_closest_candidate_model(tmp_path):
    """The design's reach on real dirty data: a model that always picks the closest candidate
    fixes most injected typos of the columns listed, asking only about the values that are rare."""
    from ..conftest import shared

    dirty = shared("hospital_errors", "hospital.csv")
    truth: dict[int, dict[str, str]] = {}
    for x in read_csv(shared("hospital_errors", "hospital_clean.csv")):
        truth.setdefault(int(x["tid"]), {})[x["attribute"]] = x["correct_val"]
    clean = {
        "City": None, "CountyName": None, "HospitalName": None, "Address1": None, "PhoneNumber": None,
        "State": ["al", "ak"], "EmergencyService": ["yes", "no"],
        "HospitalType": {"min_count": 10}, "HospitalOwner": {"min_count": 5}, "Condition": {"min_count": 5},
    }
    job = Job.from_dict(
        {"name": "h", "source": str(dirty), "sink": "out/h.csv",
         "steps": [{"name": "fix", "task": "normalize", "clean": clean, "reference": {"min_count": 3}}]},
        base_dir=tmp_path,
    )
    job.steps[0].bind(tmp_path, job.source)
    fake = FakeModel(script=first_entry())
    r = corral.run(job, model=fake)
    assert r.written == 1000
    rows = read_csv(tmp_path / "out" / "h.csv")
    typos = fixed = 0
    for i, row in enumerate(rows):
        for col in clean:
            if row[col] != truth[i][col]:
                typos += 1
                fixed += row[f"fix_{col}"] == truth[i][col]
    assert typos > 250 and fixed / typos > 0.95
    assert fake.calls < 2 * typos  # most cells are answered without a call


# --- the example jobs ------------------------------------------------------------------------


@pytest.mark.parametrize("name,sink", [("normalize", "invoices.csv"), ("match", "products.csv")])
def test_example_job_runs_with_the_fake_model(tmp_path, name, sink):
    ex = tmp_path / "examples"
    shutil.copytree(ROOT / "examples", ex, ignore=shutil.ignore_patterns("out", ".corral"))
    p = subprocess.run(
        [corral_bin(), "run", f"examples/{name}.yaml", "--model", "fake", "--json"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert p.returncode == 0, p.stderr
    s = json.loads(p.stdout)
    assert s["rows"]["in"] == s["rows"]["written"] > 0
    rows = read_csv(ex / "out" / sink)
    assert len(rows) == s["rows"]["in"]
    if name == "normalize":
        assert {"vendor_name", "iso_date", "iso_date_span", "total", "fixed_city", "fixed_category"} <= set(rows[0])
        canonical = {x["name"] for x in read_csv(ex / "data" / "vendors_canonical.csv")}
        assert {x["vendor_name"] for x in rows} <= canonical | {""}
        assert {x["fixed_city"] for x in rows} >= {"Springfield", "Shelbyville", "Capital City"}
    else:
        assert {"same", "same_reason", "catalog", "catalog_reason"} <= set(rows[0])
        skus = {x["sku"] for x in read_csv(ex / "data" / "products_catalog.csv")}
        assert {x["catalog"] for x in rows} <= skus | {""}
        assert any(x["same_reason"].startswith("blocked:") for x in rows)


def test_editing_a_reference_file_starts_a_new_run_and_keeps_unchanged_answers(tmp_path):
    vendors_file(tmp_path)
    data = csv_text(["id", "vendor"], [[1, "Globx Inc."], [2, "stark ind"]])
    job = make_job(tmp_path, [VENDOR_STEP], data)
    fake = FakeModel(script=lambda r: {"value": enum_of(r)[0]})
    first = corral.run(job, model=fake)
    again = corral.run(make_job(tmp_path, [VENDOR_STEP], data), model=fake)
    assert again.run == first.run and fake.calls == 2  # same file: the same run, replayed
    # a new entry in the reference list: a new run, since answers may now differ
    ref = tmp_path / "ref" / "vendors.csv"
    ref.write_text(ref.read_text(encoding="utf-8") + "V99,Globx Trading\n", encoding="utf-8")
    edited = corral.run(make_job(tmp_path, [VENDOR_STEP], data), model=fake)
    assert edited.run != first.run and edited.written == 2
    # a row whose candidates did not change asks the same question: replayed, not paid again
    assert edited.calls_replayed >= 1 and edited.calls_made + edited.calls_replayed == 2
