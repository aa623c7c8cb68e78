"""The documentation stays true: commands, options, job keys, errors and examples are checked
against the code, and every example in it runs or parses."""

from __future__ import annotations

import ast
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import click
import pytest
import yaml
from click.testing import CliRunner

import corral
from corral import errors
from corral._registry import model_names
from corral.cli import main
from corral.io.spec import SinkSpec, SourceSpec

from .conftest import ROOT, corral_bin

README = ROOT / "README.md"
DOCS = ROOT / "docs"
DOC_FILES = [README, *sorted(DOCS.glob("*.md"))]
NO_CHECK = "<!-- no-check -->"


def text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def fenced_blocks(path: Path, *langs: str) -> list[tuple[int, str, bool]]:
    """(line number, body, marked no-check) of each fenced block in one of ``langs``."""
    lines = text(path).splitlines()
    out: list[tuple[int, str, bool]] = []
    i = 0
    while i < len(lines):
        m = re.match(r"^(\s*)```(\w+)\s*$", lines[i])
        if m and m.group(2) in langs:
            start = i
            body: list[str] = []
            i += 1
            while i < len(lines) and not lines[i].strip().startswith("```"):
                body.append(lines[i])
                i += 1
            prev = next((ln.strip() for ln in reversed(lines[:start]) if ln.strip()), "")
            out.append((start + 1, "\n".join(body) + "\n", prev == NO_CHECK))
        i += 1
    return out


def sections(md: str) -> dict[str, str]:
    """Level-2 heading -> the text under it (up to the next level-2 heading)."""
    parts = re.split(r"^## +(.+?)\s*$", md, flags=re.M)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts) - 1, 2)}


# --- (a) every command and option is in docs/cli.md ---------------------------------------


COMMANDS = sorted(main.commands)


def test_there_are_commands():
    assert {"run", "runs", "status", "show"} <= set(COMMANDS)


@pytest.mark.parametrize("name", COMMANDS)
def test_command_has_help_and_a_section_listing_its_options(name):
    result = CliRunner().invoke(main, [name, "--help"])
    assert result.exit_code == 0, result.output
    cmd = main.commands[name]
    assert (cmd.help or "").strip(), f"`corral {name}` has no help text"
    assert len(result.output.strip().splitlines()) > 3

    secs = sections(text(DOCS / "cli.md"))
    heading = next((h for h in secs if h.strip("` ") == f"corral {name}"), None)
    assert heading is not None, f"docs/cli.md has no `## corral {name}` section"
    body = secs[heading]
    for param in cmd.params:
        if isinstance(param, click.Option):
            for opt in param.opts:
                assert f"`{opt}" in body, f"option {opt} of `corral {name}` is not in its docs/cli.md section"
        elif isinstance(param, click.Argument):
            shown = param.human_readable_name
            assert f"`{shown}`" in body, f"argument {shown} of `corral {name}` is not in docs/cli.md"


def test_cli_doc_lists_every_exit_code():
    doc = text(DOCS / "cli.md")
    from corral import cli

    for name in ("EXIT_OK", "EXIT_INTERNAL", "EXIT_USAGE", "EXIT_STOPPED", "EXIT_REFUSED",
                 "EXIT_UNAVAILABLE", "EXIT_TARGET_MISSED", "EXIT_INTERRUPTED"):
        assert f"| `{getattr(cli, name)}` |" in doc, f"exit code {name} is not in docs/cli.md"


def test_cli_doc_explains_every_summary_field():
    doc = text(DOCS / "cli.md")
    obj = corral.RunResult(
        run="r", job="j", status="finished", stop_reason=None, rows_in=0, written=0, quarantined=0,
        review=0, skipped=0, pending=0, calls_made=0, calls_replayed=0, input_tokens=0,
        output_tokens=0, cost_usd=None, elapsed_s=0.0,
    ).to_json()
    for key, value in obj.items():
        if isinstance(value, dict) and value:
            for sub in value:
                assert f"`{key}.{sub}`" in doc, f"summary field {key}.{sub} is not explained"
        else:
            assert f"`{key}`" in doc, f"summary field {key} is not explained in docs/cli.md"


# --- (b) every job key is in docs/jobs.md -----------------------------------------------------


SPEC_CLASSES = [
    corral.Job,
    SourceSpec,
    SinkSpec,
    corral.Budget,
    corral.Task,
    corral.ClassifyStep,
    corral.ExtractStep,
    corral.FieldSpec,
    corral.job.RecordBudget,
    __import__("corral._system1", fromlist=["x"]).System1Spec,
    __import__("corral._route_model", fromlist=["x"]).RouteBySpec,
    *__import__("corral._registry", fromlist=["x"]).strategy_classes().values(),
]


@pytest.mark.parametrize("cls", SPEC_CLASSES, ids=lambda c: c.__name__)
def test_every_job_key_is_documented(cls):
    doc = text(DOCS / "jobs.md")
    missing = [f for f in cls.model_fields if f"`{f}`" not in doc]
    assert not missing, f"{cls.__name__} keys missing from docs/jobs.md: {missing}"


def test_every_format_is_documented():
    from corral.io.base import FORMATS
    from corral.io.spec import _EXT_FORMATS

    doc = text(DOCS / "jobs.md")
    for fmt in FORMATS:
        assert f"`{fmt}`" in doc
    for ext in _EXT_FORMATS:
        assert f"`{ext}`" in doc, f"extension {ext} is not in docs/jobs.md"


def test_every_model_option_is_documented():
    from corral.models.anthropic import AnthropicModel
    from corral.models.fake import FakeModel
    from corral.models.local import LocalModel
    from corral.models.openai import OpenAIModel

    for cls, page in ((FakeModel, "models.md"), (LocalModel, "models.md"),
                      (OpenAIModel, "providers.md"), (AnthropicModel, "providers.md")):
        doc = text(DOCS / page)
        assert cls.Options is not None
        for name, field in cls.Options.model_fields.items():
            documented = re.search(rf"`[^`\n]*\b{name}\b[^`\n]*`", doc)
            assert documented, f"{cls.__name__} option {name} is not in docs/{page}"
            assert field.description, f"{cls.__name__} option {name} has no Field(description=...)"


# --- (c) every exception is in docs/errors.md ---------------------------------------------------


def test_every_exception_is_documented():
    doc = text(DOCS / "errors.md")
    missing = [name for name in errors.__all__ if f"`{name}`" not in doc and name not in doc]
    assert not missing, f"exceptions missing from docs/errors.md: {missing}"


def test_errors_doc_tree_matches_the_module():
    """The tree in docs/errors.md is the one drawn in the errors module's docstring."""

    def tree(lines: list[str]) -> list[str]:
        out = [ln.strip().replace("``", "`") for ln in lines]
        return [ln for ln in out if ln.startswith(("CorralError", "├", "│", "└"))]

    module = tree((errors.__doc__ or "").splitlines())
    block = next(b for _, b, _ in fenced_blocks(DOCS / "errors.md", "text") if "CorralError" in b)
    assert module and tree(block.splitlines()) == module


# --- (d) the README's first screen -------------------------------------------------------------


def test_readme_first_screen_has_the_two_commands():
    first = "\n".join(text(README).splitlines()[:25])
    assert "make demo" in first
    assert "make test" in first


def test_readme_shows_the_minimal_job_as_it_is():
    job = (ROOT / "sms-triage.yaml").read_text(encoding="utf-8").strip()
    assert job in text(README), "README's job example differs from sms-triage.yaml"


def test_readme_rows_default_matches_the_makefile():
    make = text(ROOT / "Makefile")
    m = re.search(r"^ROWS\s*\?=\s*(\d+)", make, re.M) or re.search(r"\$\(or \$\(ROWS\),(\d+)\)", make)
    assert m, "the Makefile no longer has a ROWS default"
    assert f"first {m.group(1)} support tickets" in text(README)


# --- (e) the Python example runs -----------------------------------------------------------------


def test_python_api_example_runs(tmp_path):
    env = {**os.environ, "CORRAL_STORE": str(tmp_path / "store" / "corral.db")}
    p = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "python_api.py")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert p.returncode == 0, p.stderr
    assert '"status": "finished"' in p.stdout
    assert "model calls: 0" in p.stdout  # the rerun replayed everything


# --- (f) every job in the docs parses --------------------------------------------------------


def yaml_blocks() -> list[tuple[str, str, bool]]:
    out = []
    for path in DOC_FILES:
        for line, body, skip in fenced_blocks(path, "yaml", "yml"):
            out.append((f"{path.relative_to(ROOT)}:{line}", body, skip))
    return out


@pytest.mark.parametrize("where,body,skip", yaml_blocks(), ids=[w for w, _, _ in yaml_blocks()])
def test_yaml_examples_are_valid_jobs(where, body, skip):
    if skip:
        pytest.skip("marked <!-- no-check -->: a deliberately partial example")
    data = yaml.safe_load(body)
    if isinstance(data, dict) and "name" in data and "steps" in data:
        job = corral.Job.from_dict(data, origin=where)
        assert job.model.name in model_names(), f"{where}: unknown model {job.model.name}"


def test_there_are_job_examples():
    jobs = [b for _, b, skip in yaml_blocks() if not skip and "steps:" in b and "name:" in b]
    assert len(jobs) >= 4


def test_python_examples_compile():
    for path in DOC_FILES:
        for line, body, skip in fenced_blocks(path, "python"):
            if not skip:
                ast.parse(body, filename=f"{path.name}:{line}")


# --- (g) every `corral ...` command in the README is real -------------------------------------


def readme_commands() -> list[list[str]]:
    cmds = []
    for path in DOC_FILES:
        for _, body, _ in fenced_blocks(path, "bash", "sh", "shell", "console"):
            for raw in body.splitlines():
                line = raw.strip().removeprefix("$ ").strip()
                if not line.startswith("corral ") and line != "corral":
                    continue
                cmds.append(shlex.split(line, comments=True))
    return cmds


def subcommand_path(argv: list[str]) -> list[str]:
    path: list[str] = []
    cmd: click.Command = main
    for arg in argv[1:]:
        if isinstance(cmd, click.Group) and arg in cmd.commands:
            cmd = cmd.commands[arg]
            path.append(arg)
        else:
            break
    return path


def test_readme_has_commands():
    assert len(readme_commands()) >= 5


@pytest.mark.parametrize(
    "path", sorted({tuple(subcommand_path(c)) for c in readme_commands()}), ids=lambda p: " ".join(p) or "corral"
)
def test_documented_commands_exist(path):
    for argv in readme_commands():
        if tuple(subcommand_path(argv)) == path and len(argv) > 1:
            assert path, f"`{' '.join(argv)}` does not name a corral command"
    p = subprocess.run([corral_bin(), *path, "--help"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr


def test_documented_options_exist():
    """Options used in documented commands are options of that command."""
    for argv in readme_commands():
        path = subcommand_path(argv)
        cmd: click.Command = main
        for name in path:
            cmd = cmd.commands[name]  # type: ignore[attr-defined]
        known = {o for p in cmd.params for o in getattr(p, "opts", [])} | {"-h", "--help", "--version"}
        for arg in argv[1 + len(path):]:
            if arg.startswith("-"):
                assert arg.split("=")[0] in known, f"`{' '.join(argv)}`: {arg} is not an option of `corral {' '.join(path)}`"


# --- links between documents -------------------------------------------------------------------


def slug(heading: str) -> str:
    s = heading.strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


def test_links_point_at_existing_files_and_headings():
    for path in DOC_FILES:
        for target in re.findall(r"\]\(([^)\s]+)\)", text(path)):
            if re.match(r"^[a-z]+://", target):
                continue
            file_part, _, anchor = target.partition("#")
            dest = (path.parent / file_part).resolve() if file_part else path
            assert dest.exists(), f"{path.name}: link to missing {target}"
            if anchor and dest.suffix == ".md":
                slugs = {slug(h) for h in re.findall(r"^#+ +(.+?)\s*$", text(dest), re.M)}
                assert anchor in slugs, f"{path.name}: link to missing heading {target}"
