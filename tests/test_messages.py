"""A new user's first mistakes get one line that says how to fix them, and the first things they
read (README, docs) say what Corral really does."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

import corral
from corral import FakeModel, Job
from corral._registry import task_classes
from corral.cli import main
from corral.engine import make_model
from corral.errors import JobSpecError, ModelNotFoundError
from corral.models.base import Request

from .conftest import ROOT, corral_bin, write

README = ROOT / "README.md"
DOCS = ROOT / "docs"

STEP_RULE = (
    "must start with a letter or _ and use only letters, digits and _ "
    "(it becomes a column name and a {placeholder})"
)


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([corral_bin(), *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "200"})


def one_line_error(p: subprocess.CompletedProcess) -> str:
    """The single stderr line of a usage error (exit 2), without its `error: ` prefix."""
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("error: "), lines[0]
    return lines[0].removeprefix("error: ")


def job_dict(step_name: str = "mood", **extra) -> dict:
    return {
        "name": "t",
        "source": "in.csv",
        "steps": [{"name": step_name, "task": "classify", "input": "{text}", "labels": ["a", "b"]}],
        "sink": "out/o.csv",
        **extra,
    }


# --- a bad step name --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["my step", "1st", "a-b", "a.b", "été", "x\n", ""])
def test_bad_step_name_says_what_a_name_may_be(name):
    with pytest.raises(JobSpecError) as e:
        Job.from_dict(job_dict(name), origin="job.yaml")
    msg = str(e.value)
    assert f"step name `{name}` {STEP_RULE}" in msg
    assert "pattern" not in msg and "^[" not in msg and "A-Za-z" not in msg


@pytest.mark.parametrize("name", ["mood", "_private", "Step_2", "a"])
def test_good_step_names_are_accepted(name):
    assert Job.from_dict(job_dict(name)).steps[0].name == name


def test_bad_step_name_from_the_command_line(tmp_path):
    write(tmp_path / "in.csv", "text\nhello\n")
    write(tmp_path / "job.yaml", yaml.safe_dump(job_dict("my step")))
    line = one_line_error(cli("run", "job.yaml", "--model", "fake", cwd=tmp_path))
    assert line == f"job.yaml: steps[0] (step `my step`).name: step name `my step` {STEP_RULE}"


# --- a misspelled model option ----------------------------------------------------------------


def test_misspelled_fake_option_suggests_the_right_one():
    with pytest.raises(ModelNotFoundError) as e:
        make_model({"name": "fake", "latncy": 0.1})
    msg = str(e.value)
    assert msg.startswith("model `fake`: unknown option `latncy`; did you mean `latency`? Valid options: ")
    valid = msg.split("Valid options: ", 1)[1]
    for option in ("accuracy", "error_rate", "latency", "seed", "truth"):
        assert option in valid
    assert "arg" not in re.findall(r"\w+", valid)  # NAME:ARG is not an option
    # the keys every model mapping takes are valid too, and named as such
    assert "for every model: " in valid and "rpm" in valid and "max_retries" in valid
    assert "TypeError" not in msg and "__init__" not in msg and "keyword argument" not in msg


def test_misspelled_openai_option_suggests_the_right_one():
    with pytest.raises(ModelNotFoundError) as e:
        make_model({"name": "openai:x", "timout": 5})
    msg = str(e.value)
    assert msg.startswith("model `openai:x`: unknown option `timout`; did you mean `timeout`? Valid options: ")
    assert "base_url" in msg and "api_key_env" in msg


def test_unknown_option_without_a_near_name_and_several_unknown():
    with pytest.raises(ModelNotFoundError) as e:
        make_model({"name": "fake", "zzzz": 1})
    assert str(e.value).startswith("model `fake`: unknown option `zzzz`. Valid options: ")
    with pytest.raises(ModelNotFoundError) as e:
        make_model({"name": "anthropic:claude-haiku-4-5", "structure": "tool", "qqq": 1, "www": 2})
    msg = str(e.value)
    assert msg.startswith(
        "model `anthropic:claude-haiku-4-5`: unknown option `structure`; did you mean `structured`? "
        "(and 2 more: `qqq`, `www`) Valid options: "
    )


def test_valid_options_and_engine_keys_still_build_the_model():
    m = make_model({"name": "fake", "latency": 0.0, "seed": 3, "rpm": 600, "max_retries": 2})
    assert isinstance(m, FakeModel)
    # a wrong value (not a wrong name) is still reported by the model itself
    with pytest.raises(ModelNotFoundError, match="error_rate must be between 0 and 1"):
        make_model({"name": "fake", "error_rate": 2})


def test_misspelled_model_option_from_the_command_line(tmp_path):
    write(tmp_path / "in.csv", "text\nhello\n")
    write(tmp_path / "job.yaml", yaml.safe_dump(job_dict()))
    line = one_line_error(cli("run", "job.yaml", "--model", "{name: fake, latncy: 0.1}", cwd=tmp_path))
    assert line.startswith("model `fake`: unknown option `latncy`; did you mean `latency`? Valid options: ")


# --- a folder given as the job file -----------------------------------------------------------


def test_a_folder_as_the_job_file_names_the_files_in_it(tmp_path):
    write(tmp_path / "jobs" / "b.yml", "name: b\n")
    write(tmp_path / "jobs" / "a.yaml", "name: a\n")
    write(tmp_path / "jobs" / "notes.txt", "x\n")
    line = one_line_error(cli("run", "jobs/", cwd=tmp_path))
    assert line == "jobs/ is a folder; give the job file, e.g. jobs/a.yaml (YAML files in it: a.yaml, b.yml)"
    assert "not found" not in line
    # without the trailing slash it reads the same
    assert one_line_error(cli("run", "jobs", cwd=tmp_path)) == line


def test_an_empty_folder_as_the_job_file(tmp_path):
    (tmp_path / "empty").mkdir()
    line = one_line_error(cli("run", "empty", cwd=tmp_path))
    assert line == "empty/ is a folder, with no .yaml file in it; give the job file, e.g. examples/tickets.yaml"
    with pytest.raises(JobSpecError, match="is a folder"):
        corral.run(tmp_path / "empty")


# --- corral runs: the row columns add up --------------------------------------------------------

ROWS = "id,body\n" + "".join(f"M{i},{'BROKEN ' if i == 5 else ''}message {i}\n" for i in range(1, 11))


def _script(req: Request) -> dict | str:
    text = req.messages[-1].content
    if "BROKEN" in text:
        return "not json"
    n = int(re.search(r"message (\d+)", text).group(1))
    if "keep" in (req.schema or {}).get("properties", {}):
        return {"reason": "odd" if n % 2 else "even", "keep": n % 2 == 0 or n == 9}
    return {"label": "b" if n in (4, 9) else "a"}


def _run_with_every_state(tmp_path: Path) -> corral.RunResult:
    write(tmp_path / "in.csv", ROWS)
    job = Job.from_dict({
        "name": "states", "source": "in.csv", "key": "id", "sink": "out/o.csv",
        "steps": [
            {"name": "keep", "task": "filter", "input": "{body}", "question": "Keep it?", "max_attempts": 1},
            {"name": "cat", "task": "classify", "input": "{body}", "labels": ["a", "b"],
             "checks": ["label == 'a'"], "max_attempts": 1},
        ],
    }, base_dir=tmp_path)
    r = corral.run(job, model=FakeModel(script=_script))
    # M5 quarantined; M1, M3, M7 skipped; M4 and M9 fail the check (review); M2, M6, M8, M10 written
    assert (r.rows_in, r.written, r.quarantined, r.review, r.skipped, r.pending) == (10, 4, 1, 2, 3, 0)
    return r


def test_runs_table_has_review_and_skipped_columns_that_add_up(tmp_path):
    r = _run_with_every_state(tmp_path)
    out = CliRunner().invoke(main, ["runs"])
    assert out.exit_code == 0, out.output
    lines = [ln for ln in out.output.splitlines() if "│" in ln or "┃" in ln]
    header = [c.strip() for c in re.split(r"[│┃]", lines[0])[1:-1]]
    assert header[:3] == ["run", "job", "status"]
    row = next([c.strip() for c in re.split(r"[│┃]", ln)[1:-1]] for ln in lines[1:] if r.run in ln)
    cells = dict(zip(header, row))
    counts = {k: int(cells[k].replace(",", "")) for k in ("in", "written", "quarantined", "review", "skipped", "pending")}
    assert counts == {"in": 10, "written": 4, "quarantined": 1, "review": 2, "skipped": 3, "pending": 0}
    assert counts["in"] == sum(v for k, v in counts.items() if k != "in")


def test_runs_json_rows_add_up(tmp_path):
    r = _run_with_every_state(tmp_path)
    out = CliRunner().invoke(main, ["runs", "--json"])
    assert out.exit_code == 0, out.output
    (obj,) = [x for x in json.loads(out.output) if x["run"] == r.run]
    rows = obj["rows"]
    assert (rows["review"], rows["skipped"]) == (2, 3)
    assert rows["in"] == rows["written"] + rows["quarantined"] + rows["review"] + rows["skipped"] + rows["pending"]


def test_export_traces_help_says_skipped_rows_are_exported():
    out = CliRunner().invoke(main, ["export", "traces", "--help"])
    assert out.exit_code == 0
    text = " ".join(out.output.split())
    assert "a filter skipped" in text
    assert "Rows in review or quarantine are left out" in text


# --- the docs say what the code does ------------------------------------------------------------


def doc(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def test_docs_no_longer_say_review_and_skipped_are_unused():
    for name in ("concepts.md", "cli.md"):
        flat = " ".join(doc(name).split()).lower()
        assert "no built-in step" not in flat, name
        assert "uses it yet" not in flat, name
    states = {m.group(1): m.group(2) for m in re.finditer(r"^\| `(\w+)` \| (.+?) \| (?:yes|no) \|$", doc("concepts.md"), re.M)}
    assert "filter" in states["skipped"]
    assert "checks" in states["review"] and "per-record budget" in states["review"]


def test_cli_doc_has_the_failed_status_and_exit_code_4():
    from corral import cli

    text = doc("cli.md")
    row = next(ln for ln in text.splitlines() if ln.startswith(f"| `{cli.EXIT_REFUSED}` |"))
    assert "credentials" in row and "quota" in row and "`failed`" in row
    status = next(ln for ln in text.splitlines() if ln.startswith("| `status` |"))
    for s in ("finished", "stopped", "interrupted", "failed", "running"):
        assert f"`{s}`" in status, s
    assert "`account out of quota: ...`" in text and "`authentication failed: ...`" in text


def test_cli_doc_runs_section_names_the_review_and_skipped_columns():
    body = doc("cli.md").split("## corral runs", 1)[1].split("\n## ", 1)[0]
    assert "quarantined, review, skipped, pending" in " ".join(body.split())


def test_errors_doc_lists_the_current_tasks():
    lists = re.findall(r"Tasks: ([\w, ]+)\.", doc("errors.md"))
    assert lists, "docs/errors.md no longer shows the unknown-task message"
    assert set(task_classes()) >= {"classify", "extract", "normalize", "match", "map", "filter"}
    for listed in lists:
        assert listed == ", ".join(sorted(task_classes()))


def test_errors_doc_shows_the_real_unknown_task_and_model_option_messages(tmp_path):
    data = job_dict("x")
    data["steps"][0]["task"] = "clasify"
    with pytest.raises(JobSpecError) as e:
        Job.from_dict(data, origin="nosteps.yaml")
    assert f"error: {e.value}" in doc("errors.md")
    with pytest.raises(ModelNotFoundError) as e:
        make_model({"name": "fake", "latncy": 0.1})
    assert f"error: {e.value}" in doc("errors.md")


# --- README first screen, providers.md and the hosted install ------------------------------------


def first_screen() -> str:
    return "\n".join(README.read_text(encoding="utf-8").splitlines()[:40])


def test_readme_first_screen_says_how_to_install_and_run_for_a_hosted_model():
    first = first_screen()
    assert "make install-hosted" in first
    assert ".venv/bin/corral run" in first and "source .venv/bin/activate" in first
    assert "OPENAI_API_KEY" in first
    assert "SmolLM2-135M" in first and "not for the quality" in first


def test_readme_hosted_model_example_builds_that_model():
    pytest.importorskip("openai")
    from corral.models.openai import OpenAIModel

    block = re.search(r"```yaml\n(model:\n.*?)```", first_screen(), re.S)
    assert block, "the README's first screen has no `model:` example"
    assert len(block.group(1).strip().splitlines()) == 3
    spec = yaml.safe_load(block.group(1))["model"]
    m = make_model(spec)
    assert isinstance(m, OpenAIModel)
    assert spec["name"].startswith("openai:") and m.base_url == spec["base_url"].rstrip("/")
    # a job with that model is a valid job
    assert Job.from_dict({**job_dict(), "model": spec}).model.name == "openai"


def test_make_install_hosted_leaves_out_llama_cpp(tmp_path):
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    venv = tmp_path / "v"
    p = subprocess.run(["make", "-n", "install-hosted", f"VENV={venv}"], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    installs = [ln for ln in p.stdout.splitlines() if "pip install" in ln and "-e" in ln]
    assert installs and all("'.[openai,anthropic]'" in ln for ln in installs), p.stdout
    assert not re.search(r"local|dev|llama|CMAKE", "\n".join(installs))
    assert f"{venv} " in p.stdout or f"{venv}/bin/python" in p.stdout  # it makes the .venv too


def test_install_instructions_do_not_read_as_if_corral_were_on_a_package_index():
    from corral.models import anthropic, local, openai

    for path in [README, *DOCS.glob("*.md")]:
        assert "pip install 'corral[" not in path.read_text(encoding="utf-8"), path.name
    providers = doc("providers.md")
    assert "pip install -e '.[openai]'" in providers and "make install-hosted" in providers
    for mod in (openai, anthropic, local):
        assert "corral[" not in mod._INSTALL_HINT and "in the Corral checkout" in mod._INSTALL_HINT


def test_bad_job_name_says_what_a_name_may_be(tmp_path):
    from corral import Job
    from corral.errors import JobSpecError

    with pytest.raises(JobSpecError) as e:
        Job.from_dict({"name": "my job", "source": "in.csv", "sink": "o.csv",
                       "steps": [{"name": "c", "task": "classify", "input": "{t}", "labels": ["a", "b"]}]})
    msg = str(e.value)
    assert "job name `my job` must start with a letter or digit" in msg
    assert "^[" not in msg  # no raw pattern
