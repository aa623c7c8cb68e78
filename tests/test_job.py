from __future__ import annotations

from pathlib import Path

import pytest

from corral import ClassifyStep, ExtractStep, Job
from corral.errors import JobSpecError

from .conftest import write

BASE = {
    "name": "t",
    "source": "in.csv",
    "steps": [{"name": "spam", "task": "classify", "input": "{text}", "labels": ["spam", "ham"]}],
    "sink": "out.csv",
}


def job(**over):
    d = {**BASE, **over}
    return Job.from_dict(d, origin="job.yaml")


def test_minimal_job_defaults():
    j = job()
    assert j.model.name == "local"
    assert j.key is None
    assert isinstance(j.steps[0], ClassifyStep)
    assert j.steps[0].labels == {"spam": "", "ham": ""}
    assert j.source.path == "in.csv" and j.sink.path == "out.csv"


def test_unknown_top_level_key_names_nearest():
    with pytest.raises(JobSpecError) as e:
        job(sinc="x.csv")
    msg = str(e.value)
    assert "unknown key `sinc`" in msg
    assert "did you mean `sink`" in msg
    assert msg.startswith("job.yaml:")


def test_unknown_step_key_names_step_and_nearest():
    steps = [{"name": "spam", "task": "classify", "input": "{t}", "lables": ["a", "b"]}]
    with pytest.raises(JobSpecError) as e:
        job(steps=steps)
    msg = str(e.value)
    assert "unknown key `lables`" in msg
    assert "step `spam`" in msg
    assert "did you mean `labels`" in msg


def test_unknown_field_spec_key():
    steps = [{"name": "x", "task": "extract", "input": "{t}", "fields": {"a": {"type": "string", "nulable": True}}}]
    with pytest.raises(JobSpecError) as e:
        job(steps=steps)
    assert "did you mean `nullable`" in str(e.value)


def test_unknown_task_suggests():
    with pytest.raises(JobSpecError) as e:
        job(steps=[{"name": "x", "task": "clasify", "input": "{t}", "labels": ["a", "b"]}])
    assert "unknown task `clasify`" in str(e.value)
    assert "did you mean `classify`" in str(e.value)


def test_missing_required_key():
    d = dict(BASE)
    del d["sink"]
    with pytest.raises(JobSpecError) as e:
        Job.from_dict(d, origin="j")
    assert "missing `sink`" in str(e.value)


def test_duplicate_step_names():
    s = BASE["steps"][0]
    with pytest.raises(JobSpecError, match="two steps are named `spam`"):
        job(steps=[s, s])


def test_labels_need_two():
    with pytest.raises(JobSpecError, match="at least two labels"):
        job(steps=[{"name": "x", "task": "classify", "input": "{t}", "labels": ["only"]}])


def test_extract_fields_and_shorthand():
    j = job(
        steps=[
            {
                "name": "d",
                "task": "extract",
                "input": "{t}",
                "fields": {
                    "amount": "number",
                    "when": {"type": "date", "nullable": True},
                    "urgency": {"type": "enum", "values": ["low", "high"]},
                    "tags": {"type": "list", "items": "string"},
                },
            }
        ]
    )
    step = j.steps[0]
    assert isinstance(step, ExtractStep)
    schema = step.output_schema()
    assert schema["required"] == ["amount", "when", "urgency", "tags"]
    assert schema["properties"]["amount"] == {"type": "number"}
    assert schema["properties"]["when"]["anyOf"][1] == {"type": "null"}
    assert schema["properties"]["urgency"] == {"enum": ["low", "high"]}


def test_enum_needs_values():
    with pytest.raises(JobSpecError, match="needs `values"):
        job(steps=[{"name": "d", "task": "extract", "input": "{t}", "fields": {"u": {"type": "enum"}}}])


def test_model_ref_forms():
    assert str(job(model="local:/m.gguf").model) == "local:/m.gguf"
    ref = job(model={"name": "fake", "latency": 0.1}).model
    assert ref.name == "fake" and ref.options == {"latency": 0.1}


def test_spec_hash_ignores_sink_budget_tags_but_not_steps():
    a = job()
    assert a.spec_hash() == job(sink="other.parquet", tags={"team": "x"}, budget={"max_calls": 3}).spec_hash()
    changed = [{**BASE["steps"][0], "instructions": "be careful"}]
    assert a.spec_hash() != job(steps=changed).spec_hash()


def test_yaml_load_relative_base_dir(tmp_path: Path):
    p = write(
        tmp_path / "jobs" / "j.yaml",
        "name: j\nsource: data.csv\nsteps:\n  - name: s\n    task: classify\n    input: '{x}'\n"
        "    labels: {a: first, b: second}\nsink: out/o.csv\n",
    )
    j = Job.load(p)
    assert j.base_dir == (tmp_path / "jobs").resolve()
    assert j.steps[0].labels == {"a": "first", "b": "second"}


def test_yaml_errors_are_one_line(tmp_path: Path):
    p = write(tmp_path / "bad.yaml", "name: j\nsteps: [\n")
    with pytest.raises(JobSpecError) as e:
        Job.load(p)
    assert "not valid YAML" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(JobSpecError, match="job file not found"):
        Job.load(tmp_path / "nope.yaml")
    p2 = write(tmp_path / "list.yaml", "- a\n- b\n")
    with pytest.raises(JobSpecError, match="must be a mapping"):
        Job.load(p2)


def test_bad_template():
    with pytest.raises(JobSpecError, match="empty placeholder"):
        job(steps=[{"name": "x", "task": "classify", "input": "{}", "labels": ["a", "b"]}])


def test_parse_remembers_valid_texts_per_schema_without_sharing_answers():
    from corral.errors import InvalidOutput
    from corral.models.base import Completion

    ab = ClassifyStep(name="c", input="{t}", labels=["a", "b"])
    xy = ClassifyStep(name="d", input="{t}", labels=["x", "y"])
    text = '{"label": "a"}'
    first = ab.parse(Completion(text))
    first["label"] = "changed"  # a caller may change its answer (reasoning is popped, say)
    assert ab.parse(Completion(text)) == {"label": "a"}  # a fresh answer each time
    # a text that passed one schema is still checked against another
    with pytest.raises(InvalidOutput, match="breaks the schema"):
        xy.parse(Completion(text))
    with pytest.raises(InvalidOutput):
        ab.parse(Completion('{"label": "c"}'))


def test_parse_step_looks_the_task_up_when_validated():
    from corral.tasks import StepSpecError, parse_step

    step = parse_step({"name": "x", "task": "extract", "input": "{t}", "fields": {"a": "string"}})
    assert isinstance(step, ExtractStep) and parse_step(step) is step
    with pytest.raises(StepSpecError, match=r"unknown task `extrct`; did you mean `extract`\? Tasks: classify, "):
        parse_step({"name": "x", "task": "extrct", "input": "{t}"})
    with pytest.raises(StepSpecError, match=r"unknown key `lables` in task `classify`; did you mean `labels`\?"):
        parse_step({"name": "x", "task": "classify", "input": "{t}", "lables": ["a", "b"]})


def test_every_bad_step_is_counted_and_the_first_said_where_it_is():
    steps = [{"name": "a", "task": "clasify", "input": "{t}"},
             {"name": "b", "task": "classify", "input": "{t}", "labels": ["x", "y"], "max_tokens": 0}]
    with pytest.raises(JobSpecError) as e:
        job(steps=steps)
    msg = str(e.value)
    assert msg.startswith("job.yaml: unknown task `clasify` in steps[0] (step `a`); did you mean `classify`?")
    assert msg.endswith("(and 1 more problem)")


def test_steps_built_in_python_are_kept_as_they_are():
    step = ClassifyStep(name="spam", input="{text}", labels=["spam", "ham"])
    j = Job(name="t", source="in.csv", sink="out.csv", steps=[step])
    assert j.steps[0] is step
    assert Job.from_dict(j.model_dump(mode="json")).spec_hash() == j.spec_hash()
