"""What the CLI prints about runs: the live progress, a run's summary and spend, one record's
trace, and report tables. The commands in :mod:`corral.cli` decide what to show; this module
decides how it reads, on a terminal (rich) and off one (plain lines a log or a pipe keeps as
they are). A strategy's decisions read as its :meth:`Strategy.describe` says.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shlex
import time
from collections import Counter
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from corral._registry import strategy_classes
from corral._result import RunResult
from corral._route_model import router_line
from corral._system1 import summary_line
from corral._trace_text import compact, conf, route_line
from corral.models.local import BUNDLED_ID
from corral.store import STORE_ENV, Store, default_store_path, is_store_url, shown_store
from corral.store.base import RecordRow, RunInfo, StepSpend, TraceEvent
from corral.strategies.base import Strategy

__all__ = [
    "PLAIN_PROGRESS_S", "PlainProgress", "ProgressView", "count", "decision_lines", "money",
    "print_record", "print_spend", "print_summary", "print_table", "reason_kind", "shown",
    "store_flag",
]


def store_flag(store: str | None) -> str:
    """`` --store PATH`` when read-only commands run here would not find the run's store."""
    if not store or os.environ.get(STORE_ENV):
        return ""
    with contextlib.suppress(OSError):
        if not is_store_url(store) and Path(store).resolve() == default_store_path().resolve():
            return ""
    return " --store " + shlex.quote(shown(store))


def shown(path: str) -> str:
    """A path as the user would type it here: relative to the working directory when inside it
    (a Postgres URL whole, with its password masked)."""
    if is_store_url(path):
        return shown_store(path)
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return path


def _states(ev: dict[str, Any]) -> str:
    """What a progress event says beyond the row count: states, calls, spend."""
    parts = [f"written {ev['done']:,}"]
    for state in ("quarantined", "review", "skipped"):
        if ev[state]:
            parts.append(f"{state} {ev[state]:,}")
    calls = f"calls {ev['made']:,}"
    if ev["replayed"]:
        calls += f" (+{ev['replayed']:,} replayed)"
    parts.append(calls)
    if ev.get("cost") is not None:
        parts.append(f"${ev['cost']:.4f}")
    return " · ".join(parts)


def _eta(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class _Rate:
    """Rows per second since the first progress event that saw rows moving."""

    def __init__(self) -> None:
        self.first: int | None = None
        self.t0 = time.monotonic()

    def __call__(self, finished: int) -> float:
        if self.first is None:
            self.first, self.t0 = finished, time.monotonic()
        dt = time.monotonic() - self.t0
        return (finished - self.first) / dt if dt > 0.5 else 0.0


class ProgressView:
    """Progress bar on stderr (a terminal): rows done of rows in, rows/s, ETA, states so far.
    Notices (a provider down, back again) are printed above the bar."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.bar = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[count]}"),
            TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[states]}"),
            console=console,
            transient=True,
        )
        self.task = self.bar.add_task("starting", total=None, rate="", states="", count="")
        self.rate = _Rate()

    def __enter__(self) -> ProgressView:
        self.bar.start()
        return self

    def __exit__(self, *a: Any) -> None:
        self.bar.stop()

    def update(self, ev: dict[str, Any]) -> None:
        phase = ev.get("phase")
        if phase == "fingerprint":
            self.bar.update(self.task, description="reading input")
        elif phase == "ingest":
            self.bar.update(self.task, description=f"loading rows ({ev['rows']:,})")
        elif phase == "notice":
            self.bar.console.print(ev["message"], markup=False, highlight=False)
        elif phase in ("run", "batch"):
            finished = ev["done"] + ev["quarantined"] + ev["review"] + ev["skipped"]
            rate = self.rate(finished)
            self.bar.update(
                self.task, description="paused: provider unreachable" if ev.get("paused") else "rows",
                total=ev["in"], completed=finished, count=f"{finished:,}/{ev['in']:,}",
                rate=f"{rate:,.1f} rows/s" if rate else "", states=_states(ev),
            )


#: seconds between progress lines when stderr is not a terminal (cron, CI, nohup, a pipe)
PLAIN_PROGRESS_S = float(os.environ.get("CORRAL_PROGRESS_S", "10") or 10)


class PlainProgress:
    """Progress as plain lines on stderr when it is not a terminal: one when the run starts, one
    every ``CORRAL_PROGRESS_S`` seconds (default 10) while it runs, and every notice at once, so
    a slow run and a hung one look different in a log."""

    def __init__(self, console: Console, every_s: float | None = None) -> None:
        self.console = console
        self.every_s = PLAIN_PROGRESS_S if every_s is None else every_s
        self.last = time.monotonic()
        self.rate = _Rate()
        self.latest: dict[str, Any] | None = None

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *a: Any) -> None:
        return None

    def _line(self, text: str) -> None:
        self.console.file.write(text.rstrip() + "\n")
        self.console.file.flush()

    def update(self, ev: dict[str, Any]) -> None:
        phase = ev.get("phase")
        if phase == "start":
            where = f" · store {shown(ev['store'])}" if ev.get("store") else ""
            self._line(f"corral: run {ev['run']} · job {ev['job']} · model {ev['model']}{where}")
        elif phase == "notice":
            self._line(f"corral: {ev['message']}")
        elif phase == "ingest":
            now = time.monotonic()
            if now - self.last >= self.every_s:
                self.last = now
                self._line(f"corral: loading rows ({ev['rows']:,} so far)")
        elif phase in ("run", "batch"):
            finished = ev["done"] + ev["quarantined"] + ev["review"] + ev["skipped"]
            rate = self.rate(finished)
            now = time.monotonic()
            if now - self.last < self.every_s:
                return
            self.last = now
            total = ev["in"]
            pct = f" ({finished / total:.1%})" if total else ""
            text = f"corral: {finished:,}/{total:,} rows{pct}"
            if rate:
                text += f" · {rate:,.1f} rows/s"
                left = total - finished
                if left > 0:
                    text += f" · ETA {_eta(left / rate)}"
            text += " · " + _states(ev)
            if ev.get("paused"):
                text += " · paused: provider unreachable"
            if phase == "batch":
                text += f" · {ev['open']:,} provider batches open"
            self._line(text)


def money(cost: Any) -> str:
    """A cost in dollars, or why it is unknown."""
    if cost is None:
        return "unknown (a model without prices was used)"
    return f"${float(cost):,.4f}"


#: what the default model is, said plainly wherever it answers
_BUNDLED_NOTE = "the bundled SmolLM2-135M (a tiny offline model for trying Corral, not for quality)"


def print_summary(console: Console, r: RunResult, store: Store | None) -> None:
    """The run's summary as aligned ``Label  value`` lines (no padding, no rules, so a log or a
    pipe gets exactly the text)."""
    lines: list[tuple[str, str]] = []
    head = f"run {r.run} · job {r.job} · {r.status}"
    if r.stop_reason and r.status != "finished":
        head += f" ({r.stop_reason})"
    lines.append(("Run", head))
    rows = (
        f"{r.rows_in:,} in = {r.written:,} written + {r.quarantined:,} quarantined + "
        f"{r.review:,} review + {r.skipped:,} skipped + {r.pending:,} pending"
    )
    lines.append(("Rows", rows + ("" if r.accounted else "  (does not add up)")))
    lines.append(("Calls", f"{r.calls_made:,} made, {r.calls_replayed:,} replayed from the store"))
    cache = [f"{r.cached_input_tokens:,} read from the provider's prompt cache"] if r.cached_input_tokens else []
    cache += [f"{r.cache_write_tokens:,} written to it"] if r.cache_write_tokens else []
    cached = f" ({', '.join(cache)})" if cache else ""
    lines.append(("Tokens", f"{r.input_tokens:,} input{cached}, {r.output_tokens:,} output"))
    lines.append(("Cost", money(r.cost_usd)))
    for rt in r.routers:
        lines.append(("Router" if len(r.routers) == 1 else f"Router {rt['step']}", router_line(rt)))
    for s1 in r.system1:
        lines.append(("System 1" if len(r.system1) == 1 else f"System 1 {s1['step']}", summary_line(s1)))
    if r.model:
        lines.append(("Model", r.model + (f": {_BUNDLED_NOTE}" if r.model == BUNDLED_ID else "")))
    lines.append(("Elapsed", f"{r.elapsed_s:,.1f} s"))
    if r.store:
        lines.append(("Store", shown(r.store)))
    if r.outputs:
        lines.append(("Output", r.outputs.get("sink", "")))
        lines.append(("Quarantine", r.outputs.get("quarantine", "") + f" ({count(r.quarantined, 'row')})"))
        if "review" in r.outputs:
            lines.append(("Review", r.outputs["review"] + f" ({count(r.review, 'row')})"))
        if "skipped" in r.outputs:
            lines.append(("Skipped", r.outputs["skipped"] + f" ({count(r.skipped, 'row')})"))
    elif r.pending:
        lines.append(("Output", "not written yet: rows are still pending"))
    width = max(len(k) for k, _ in lines)
    for k, v in lines:
        console.print(f"{k:<{width}}  {v}".rstrip(), markup=False, highlight=False)
    for warning in r.monitor.get("warnings", []):
        console.print(f"Monitor     {warning} (against run {r.monitor.get('compared_with')})",
                      markup=False, highlight=False)
    if store is None:
        return
    flag = store_flag(r.store)
    for state, title, n_state in (("quarantined", "Quarantined", r.quarantined), ("review", "Held for review", r.review)):
        if not n_state:
            continue
        reasons: Counter[str] = Counter()
        example: dict[str, str] = {}
        for chunk in store.iter_records(r.run, state):
            for rec in chunk:
                reason = reason_kind(rec.reason or "")
                reasons[reason] += 1
                example.setdefault(reason, rec.key)
        console.print(f"{title}, by reason:", markup=False, highlight=False)
        for reason, n in reasons.most_common(5):
            console.print(
                f"  {n:>6,}  {reason}   e.g. corral show {r.run} {shlex.quote(example[reason])}{flag}",
                markup=False, highlight=False,
            )


def reason_kind(reason: str) -> str:
    """A quarantine or review reason with its row-specific parts taken out, so that the summary
    counts rows by the kind of reason (malformed rows together, confidences under one bar)."""
    # group "line 17: expected 4 fields" style reasons by their text after the location
    if reason.startswith("malformed input: line"):
        return "malformed input row"
    # "confidence 0.61 < 0.70" and "confidence 0.54 < 0.70" are one reason: under min_confidence
    reason = _CONFIDENCE.sub(r"confidence under \1", reason)
    # injection flags by column and pattern, whatever words matched
    reason = _INJECTION.sub(r"\1", reason)
    return reason.split(" (after")[0][:120]


_CONFIDENCE = re.compile(r"confidence (?:[0-9.]+|unknown) < ([0-9.]+)")
_INJECTION = re.compile(r'^(injection: column `[^`]*`: [a-z ]+): "[^"]*"')


def print_table(console: Console, t: Any) -> None:
    """A report table: a rich table on a terminal; aligned plain lines otherwise (piped output
    stays greppable, with no trailing spaces)."""
    if console.is_terminal:
        from rich.text import Text

        console.print(Text(t.title, style="bold"))  # above the table: a title in it wraps to its width
        table = Table()
        for i, h in enumerate(t.headers):
            table.add_column(h, justify="left" if i == 0 else "right")
        for row in t.rows:
            table.add_row(*(Text(c) for c in row))
        console.print(table)
        return
    widths = [max(len(r[i]) for r in [t.headers, *t.rows]) for i in range(len(t.headers))]
    click.echo(t.title)
    for row in [t.headers, *t.rows]:
        cells = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))]
        click.echo("  ".join(cells).rstrip())


def print_spend(console: Console, spend: list[StepSpend]) -> None:
    """Calls, tokens and cost by step, strategy (and stage) and model: what each extra call bought."""
    t = Table(title="By step, strategy and model", title_justify="left", box=None, pad_edge=False)
    for col in ("step", "strategy", "model", "calls", "replayed", "tokens in", "tokens out", "cost"):
        t.add_column(col, justify="right" if col not in ("step", "strategy", "model") else "left")
    for m in spend:
        t.add_row(
            m.step, m.strategy or "", m.model, f"{m.calls:,}", f"{m.replayed:,}",
            f"{m.input_tokens:,}", f"{m.output_tokens:,}", money(m.cost),
        )
    console.print(t)


def _rule(console: Console, title: str, style: str = "rule.line") -> None:
    """A titled rule across a terminal; off a terminal a short ``── title ──`` line, not 200
    columns of dashes."""
    if console.is_terminal:
        console.rule(title, style=style)
    else:
        console.print(f"── {title} ──", markup=False, highlight=False)


def print_record(
    console: Console, info: RunInfo, rec: RecordRow, trace: list[TraceEvent], full: bool = False
) -> None:
    """``corral show``: a record's input, state and outputs, then its trace in order: each call
    (a prompt already printed for the step is not printed again unless ``full``) and each
    decision as one bold line."""
    _rule(console, f"run {info.id} · record {rec.key}")
    console.print(f"state: {rec.state}" + (f"   reason: {rec.reason}" if rec.reason else ""), markup=False)
    if rec.line:
        console.print(f"source line: {rec.line}")
    console.print("input:", markup=False)
    for k, v in (rec.data or {}).items():
        console.print(f"  {k}: {v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)}", markup=False)
    if rec.outputs:
        console.print("outputs:", markup=False)
        for k, v in rec.outputs.items():
            console.print(f"  {k}: {json.dumps(v, ensure_ascii=False)}", markup=False)
    prompts: dict[str, list[tuple[int, list[dict[str, Any]]]]] = {}  # step -> prompts printed in full
    for c in trace:
        if c.kind == "decision":
            for i, line in enumerate(decision_lines(c)):
                console.print(("» " if i == 0 else "    ") + line, style="bold" if i == 0 else None, markup=False)
            continue
        _print_call(console, c, prompts.setdefault(c.step, []), full)
        if c.info.get("accepted") is True:  # this call's answer was accepted as it is
            line = decision_lines(dataclasses.replace(c, outcome="accepted"))[0]
            console.print("» " + line, style="bold", markup=False)


def _print_call(console: Console, c: TraceEvent, seen: list[tuple[int, list[dict[str, Any]]]], full: bool) -> None:
    data = c.info
    resp = c.response
    number = c.attempt + 1
    tag = "replayed" if c.replayed else "paid call" if c.replayed is False else "no response"
    head = [f"step {c.step}", f"attempt {number}"]
    if data.get("role"):
        head.append(str(data["role"]))
    _rule(console, " · ".join([*head, c.outcome, tag]), style="dim")
    about = []
    if data.get("strategy"):
        about.append(f"strategy {data['strategy']}")
    model = data.get("model") or (resp or {}).get("model")
    if model and c.request:
        about.append(f"model {model}")
    if data.get("confidence") is not None:
        about.append(f"confidence {conf(data['confidence'])}")
    if about:
        console.print(" · ".join(about), markup=False)
    packed = data.get("pack") or (c.request or {}).get("pack")
    if isinstance(packed, dict) and packed.get("size"):
        where = f"row {packed.get('id')} of {packed['size']} in one call ({str(packed.get('call', ''))[:15]}…)"
        console.print(f"packed: {where}" + (f"; {packed['alone']}" if packed.get("alone") else ""),
                      markup=False)
    problems = [str(p) for p in data.get("problems") or []]
    if c.detail and c.detail != "; ".join(problems):
        console.print(f"detail: {c.detail}", markup=False)
    req = c.request
    if req:
        messages = list(req["messages"])
        shown = same = 0
        if not full:
            for n, earlier in seen:
                if len(earlier) <= len(messages) and messages[: len(earlier)] == earlier and len(earlier) > shown:
                    shown, same = len(earlier), n
            if shown:
                rest = " (then:)" if shown < len(messages) else ""
                console.print(f"(same prompt as attempt {same}){rest}", style="dim", markup=False)
        if shown < len(messages):
            if shown == 0:
                seen.append((number, messages))
            for m in messages[shown:]:
                console.print(f"[{m['role']}]", markup=False)
                console.print(m["content"], markup=False)
    if resp:
        usage = resp["usage"]
        console.print(
            f"[response · finish {resp['finish_reason']} · {usage['input_tokens']} in / {usage['output_tokens']} out tokens]",
            markup=False,
        )
        console.print(resp["text"], markup=False)
        answer = data.get("answer")
        if answer is None and c.outcome == "ok":
            try:
                answer = json.loads(resp["text"], strict=False)
            except ValueError:
                pass
        if answer is not None:
            console.print("[parsed answer] " + json.dumps(answer, ensure_ascii=False), markup=False)
    reasoning = data.get("reasoning") or (resp or {}).get("reasoning")
    if reasoning:
        console.print("[reasoning]", markup=False)
        console.print(str(reasoning), markup=False)
    for line in _grounding_lines(data.get("grounding"), data.get("answer")):
        console.print(line, markup=False)
    if problems:
        console.print("[failed checks]", markup=False)
        for p in problems:
            console.print(f"- {p}", markup=False)


def _grounding_lines(g: Any, answer: Any) -> list[str]:
    """Where each grounded field's value was found in the call's rendered input (character
    offsets), or that it was not; and the values ``on_ungrounded: null`` set to null."""
    if not isinstance(g, dict):
        return []
    answer = answer if isinstance(answer, dict) else {}
    lines = []
    for name, where in (g.get("spans") or {}).items():
        value = answer.get(name)
        pairs = zip(where, value) if isinstance(where, list) and isinstance(value, list) else [(where, value)]
        for w, v in pairs:
            if isinstance(w, dict):
                s, e = w.get("span") or [0, 0]
                lines.append(f"[grounded] {name}: found `{w.get('found')}` at {s}-{e} of the input")
            elif v is not None:
                shown = v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)
                lines.append(f"[grounded] {name} `{shown}`: not found in the input")
    for name, v in (g.get("nulled") or {}).items():
        for item in v if isinstance(v, list) else [v]:
            shown = item if isinstance(item, str) else json.dumps(item, ensure_ascii=False)
            lines.append(f"[grounded] {name} `{shown}`: not found in the input; set to null")
    return lines


def count(n: int, what: str) -> str:
    """``1 row``, ``1,200 rows``."""
    return f"{n:,} {what}" + ("" if n == 1 else "s")


def decision_lines(ev: TraceEvent) -> list[str]:
    """A decision as one short line (and, for some, indented lines under it): the engine's own
    (the accepted answer, a budget stop, a route) here; a strategy's as the registered strategy that
    writes that outcome describes it (the default line for a plugin's that says nothing)."""
    d = ev.info
    if ev.outcome == "budget":
        best = d.get("answer")
        tail = f"; best answer so far {compact(best)}" if best is not None else "; no answer yet"
        return [f"budget: {(ev.detail or '').removeprefix('budget: ')}{tail}"]
    if ev.outcome == "route":
        return [route_line(ev.step_name, ev.detail, d)]
    if ev.outcome == "accepted" and "answer" in d:
        notes = []
        if d.get("confidence") is not None:
            notes.append(f"confidence {conf(d['confidence'])}")
        if d.get("calls") is not None:
            notes.append(f"{d['calls']} call{'s' * (d['calls'] != 1)}")
        return [f"accepted: {compact(d['answer'])}" + (f" ({', '.join(notes)})" if notes else "")]
    return _author(ev.outcome).describe(ev)


def _author(outcome: str) -> type[Strategy]:
    """The registered strategy that writes decisions with this outcome (the base class when none
    claims it, which prints the outcome and its detail)."""
    for cls in strategy_classes().values():
        if issubclass(cls, Strategy) and outcome in cls.decisions:
            return cls
    return Strategy
