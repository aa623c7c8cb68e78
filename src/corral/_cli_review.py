"""``corral review``: work the review queue of a run from the terminal (a thin layer over
:mod:`corral._review`)."""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from typing import Any

import click

from corral import _review as rv
from corral._cli_store import store_option
from corral.store import STORE_ENV, shown_store
from corral.store.base import RunInfo, Store

_store_option = store_option()
_json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
_by_option = click.option("--by", "who", metavar="NAME", default=None,
                          help=f"Who decides (default: ${rv.REVIEWER_ENV}, else the OS user).")
_note_option = click.option("--note", metavar="TEXT", default=None, help="A note kept with the decision.")
_job_option = click.option(
    "--job", "job_file", metavar="JOB", type=click.Path(path_type=Path), default=None,
    help="The run's job file, to write its sinks (default: the job the run keeps, read from the folder it ran from).",
)


@click.group("review")
def review() -> None:
    """Work a run's review queue: the rows held for a person, with their reasons.

    \b
      list     the held rows and the decisions made (who, when)
      show     one held row: its input, answers, reason and trace
      accept   write the held answers to the sink
      edit     write a corrected answer (checked against the step's schema and checks)
      reject   quarantine the row
      export   accepted and edited rows as labels for corral eval and System 1

    After a decision the run's sinks are written again. RUN is an id, a prefix of one, or a
    job name (its latest run).
    """


def _say(message: str) -> None:
    click.echo(message, err=True)


def _hint(store: Path | None) -> str:
    """`` --store PATH`` for the commands suggested, when the store was named on the command line."""
    return f" --store {shlex.quote(shown_store(store))}" if store is not None and not os.environ.get(STORE_ENV) else ""


_VERB = {"accept": "accepted", "edit": "edited", "reject": "rejected"}
#: a record's state in the words of the run's summary
_STATE = {"done": "written"}


def _decided_line(d: rv.Decision) -> str:
    """``accepted by alice at 2025-06-01 13:45:01+02:00; note: ...``."""
    line = f"{_VERB[d.action]} by {d.who} at {rv.when(d.at)}"
    if d.action == "edit" and d.outputs:
        line += f", wrote {_answers(d.outputs)}"
    return line + (f"; note: {d.note}" if d.note else "")


def _answers(outputs: dict[str, Any]) -> str:
    return ", ".join(f"{k} = {json.dumps(v, ensure_ascii=False)}" for k, v in outputs.items()) or "(none)"


@review.command("list")
@click.argument("run")
@_json_option
@_store_option
def list_cmd(run: str, as_json: bool, store: Path | None) -> None:
    """List the rows RUN holds for review (key, why, the answers held) and the decisions made on
    its rows: what, by whom and when."""
    from corral.cli import _run_of

    with _run_of(store, run) as (st, info):
        rows = rv.held(st, info, decided=True)
        waiting = [r for r in rows if r.decision is None]
        decided = [r for r in rows if r.decision is not None]
        if as_json:
            click.echo(json.dumps({"run": info.id, "job": info.job_name, "status": info.status,
                                   "held": [r.to_json() for r in waiting],
                                   "decided": [r.to_json() for r in decided]}, default=str))
            return
        click.echo(f"run {info.id} · job {info.job_name} · {len(waiting):,} held for review · "
                   f"{len(decided):,} decided")
        width = max([len(r.key) for r in rows] + [3])
        if waiting:
            click.echo("\nHeld for review:")
            for r in waiting:
                click.echo(f"  {r.key:<{width}}  {r.reason or '(no reason)'}")
                click.echo(f"  {'':<{width}}  answers: {_answers(r.answers)}"
                           + (f"; no answer yet: {', '.join(r.missing)}" if r.missing else ""))
        if decided:
            click.echo("\nDecided:")
            table = [("key", "decision", "by", "when", "now", "note")]
            for r in decided:
                d = r.decision
                assert d is not None
                table.append((r.key, _VERB[d.action], d.who, rv.when(d.at), _STATE.get(r.state, r.state),
                              d.note or ""))
            widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
            for row in table:
                click.echo(("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths))).rstrip())
        if waiting:
            flag = _hint(store)
            first = shlex.quote(waiting[0].key)
            click.echo(f"\nSee one: corral review show {info.id} {first}{flag}\n"
                       f"Decide:  corral review accept|reject {info.id} {first}{flag}, "
                       f"or edit it with --set FIELD=VALUE")
        elif not decided:
            click.echo("No row of this run was held for review.")


@review.command("show")
@click.argument("run")
@click.argument("key")
@click.option("--full", is_flag=True, help="Print every call's prompt in full.")
@_json_option
@_store_option
def show_cmd(run: str, key: str, full: bool, as_json: bool, store: Path | None) -> None:
    """Show one held (or decided) row of RUN: its input, why it was held, its answers, its
    trace as `corral show` prints it, and the decision made on it."""
    from corral import report
    from corral.cli import _out, _run_of

    with _run_of(store, run) as (st, info):
        row = rv.held_row(st, info, key)
        trace = st.record_calls(info.id, key)
        if as_json:
            click.echo(json.dumps({"run": info.id, **row.to_json(),
                                   "trace": [ev.to_json() for ev in trace]}, default=str))
            return
        rec = st.record(info.id, key)
        assert rec is not None
        out = _out()
        report.print_record(out, info, rec, trace, full=full)
        out.print("", markup=False)
        if row.decision is not None:
            out.print(f"Decision: {_decided_line(row.decision)}", markup=False)
            out.print(f"Held because: {row.reason}", markup=False)
        else:
            out.print(f"Held because: {row.reason}", markup=False)
            if row.missing:
                out.print(f"No answer yet for: {', '.join(row.missing)} (edit to give it)", markup=False)
            q = shlex.quote(key)
            out.print(f"Decide: corral review accept {info.id} {q} | reject {info.id} {q} --note TEXT | "
                      f"edit {info.id} {q} --set FIELD=VALUE", markup=False)


def _report(st: Store, info: RunInfo, made: list[rv.Decision], as_json: bool,
            left: list[rv.HeldRow] | None = None) -> None:
    """Say what was decided (and written: the decisions wrote the sinks, once)."""
    after = st.get_run(info.id) if made else None
    outputs = after.outputs if after is not None and after.status in ("finished", "preview") else None
    outputs = outputs if isinstance(outputs, dict) else None
    if as_json:
        click.echo(json.dumps({"run": info.id, "decisions": [rv.decision_json(d) for d in made],
                               "left_held": [r.key for r in left or []], "outputs": outputs}, default=str))
        return
    for d in made:
        click.echo(f"{d.key}: {_decided_line(d)} → {_STATE.get(d.state, d.state)}")
    if left:
        click.echo(f"left held: {len(left):,} rows held before a step answered "
                   f"({', '.join(r.key for r in left[:5])}{', ...' if len(left) > 5 else ''}): edit or reject them")
    if outputs is not None:
        shown = ", ".join(f"{path} ({kind})" for kind, path in outputs.items())
        _say(f"wrote {shown}")
    elif made:
        _say(f"run {info.id} is {info.status}: its sinks are written when `corral run` finishes it")


def _decide_several(run: str, keys: tuple[str, ...], every: bool, action: str, who: str | None,
                    note: str | None, job: Path | None, as_json: bool, store: Path | None) -> None:
    from corral.cli import _fail, _run_of

    if every == bool(keys):
        _fail(f"give the keys of the rows to {action}, or --all for every held row (not both)")
    with _run_of(store, run) as (st, info):
        made, left = rv.decide_many(st, info, None if every else list(keys), action, who=who, note=note,
                                    job=job)
        if every and not made and not left:
            _say(f"run {info.id} holds no row for review")
        _report(st, info, made, as_json, left)


@review.command("accept")
@click.argument("run")
@click.argument("keys", nargs=-1, metavar="[KEY]...")
@click.option("--all", "every", is_flag=True, help="Accept every held row (those held before a step answered stay held).")
@_by_option
@_note_option
@_job_option
@_json_option
@_store_option
def accept_cmd(run: str, keys: tuple[str, ...], every: bool, who: str | None, note: str | None,
               job_file: Path | None, as_json: bool, store: Path | None) -> None:
    """Accept held rows of RUN: their held answers are written to the sink (the rows become
    written); the sinks are written once for all of them."""
    _decide_several(run, keys, every, "accept", who, note, job_file, as_json, store)


@review.command("reject")
@click.argument("run")
@click.argument("keys", nargs=-1, metavar="[KEY]...")
@click.option("--all", "every", is_flag=True, help="Reject every held row.")
@_by_option
@_note_option
@_job_option
@_json_option
@_store_option
def reject_cmd(run: str, keys: tuple[str, ...], every: bool, who: str | None, note: str | None,
               job_file: Path | None, as_json: bool, store: Path | None) -> None:
    """Reject held rows of RUN: they are quarantined, their reason `rejected in review by NAME`
    with the note and the reason they were held."""
    _decide_several(run, keys, every, "reject", who, note, job_file, as_json, store)


@review.command("edit")
@click.argument("run")
@click.argument("key")
@click.option("--set", "sets", metavar="FIELD=VALUE", multiple=True,
              help="A corrected value: FIELD is STEP.FIELD, a field only one step has, or a step whose answer has one field (a classify step's label). Repeat it.")
@click.option("--answer", "answer_json", metavar="JSON", default=None,
              help='The corrected values as one JSON object, named as --set names them: \'{"category": "billing"}\'.')
@_by_option
@_note_option
@_job_option
@_json_option
@_store_option
def edit_cmd(run: str, key: str, sets: tuple[str, ...], answer_json: str | None, who: str | None,
             note: str | None, job_file: Path | None, as_json: bool, store: Path | None) -> None:
    """Write a corrected answer for one held row of RUN. The corrected answer is checked as a
    model's is (the step's output schema, field rules and checks); one that fails is refused
    (exit 2) and nothing is written."""
    from corral.cli import _fail, _run_of

    answer: dict[str, Any] = {}
    if answer_json is not None:
        try:
            parsed = json.loads(answer_json)
        except ValueError as e:
            _fail(f"--answer is not JSON ({e}); write it like '{{\"category\": \"billing\"}}'")
        if not isinstance(parsed, dict):
            _fail("--answer must be a JSON object, like '{\"category\": \"billing\"}'")
        answer.update(parsed)
    for item in sets:
        name, eq, value = item.partition("=")
        if not eq or not name.strip():
            _fail(f"--set {item!r} is not FIELD=VALUE; write it like --set category=billing")
        answer[name.strip()] = value
    if not answer:
        _fail("give the corrected answer: --set FIELD=VALUE (repeat it) or --answer JSON")
    with _run_of(store, run) as (st, info):
        made = rv.decide(st, info, key, "edit", who=who, answer=answer, note=note, job=job_file)
        _report(st, info, [made], as_json)


@review.command("export")
@click.argument("run")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The labels file to write (.csv, .tsv or .jsonl), replaced whole.")
@_job_option
@_json_option
@_store_option
def export_cmd(run: str, output: Path, job_file: Path | None, as_json: bool, store: Path | None) -> None:
    """Write the rows of RUN people accepted or edited as labels: the key column, the input
    columns and gold columns named as the sink's, which `corral eval --labels` and a step's
    `system1: labels:` read."""
    from corral.cli import _run_of

    with _run_of(store, run) as (st, info):
        n = rv.export_labels(st, info, output, job_file)
    if as_json:
        click.echo(json.dumps({"run": info.id, "file": str(output), "rows": n}))
        return
    _say(f"wrote {n:,} labeled row{'s' * (n != 1)} (accepted or edited in review) to {output}")
