"""``corral cost``: the command line of :mod:`corral._cost` (registered in :mod:`corral.cli`)."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from pathlib import Path

import click
from rich.console import Console

from corral import _cost
from corral._cli_store import store_option
from corral.report import count

__all__ = ["cost_cmd", "print_cost"]


@click.command("cost")
@click.argument("runs", metavar="RUN", nargs=-1)
@click.option("--since", metavar="DATE", default=None, help="Only calls made (and rows written) at or after DATE: 2024-06-01, 2024-06-01T18:30, local time unless a zone is given.")
@click.option("--by", "by", metavar="FIELDS", default="step", show_default=True, help="Group by these, comma-separated: step, tag, model, strategy, kind (`--by ''`: the totals only).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@store_option()
def cost_cmd(runs: tuple[str, ...], since: str | None, by: str, as_json: bool, store: Path | None) -> None:
    """What runs' model calls cost, from the ledger: grouped by step, tag, model, strategy
    and/or kind (first try, retry, vote sample, critique, judge, escalation, System 1,
    calibration, replay), with the cost per written row and what everything beyond the first
    try cost. RUN: a run id, a prefix of one, or a job name (every run of that job); default:
    every run in the store. Unknown prices are shown as `?`, never as zero."""
    from corral.cli import _out, _reading

    with _reading(store) as st:
        dims = _cost.parse_by(by)
        when = _cost.parse_since(since) if since is not None else None
        rep = _cost.cost_report(st, _cost.resolve_runs(st, runs), by=dims, since=when)
    if as_json:
        click.echo(json.dumps(rep.to_json()))
        return
    print_cost(_out(), rep)


def usd(x: Decimal | None) -> str:
    """A cost in dollars: ``?`` when unknown; under a dollar with six places."""
    if x is None:
        return "?"
    if x == 0:
        return "$0"
    return f"${float(x):,.4f}" if abs(x) >= 1 else f"${float(x):,.6f}"


def print_cost(console: Console, rep: _cost.CostReport) -> None:
    """The report: a table of its groups (a rich table on a terminal, aligned plain lines
    otherwise), then the totals and the kinds as ``Label  value`` lines."""
    n = len(rep.runs)
    title = f"Cost of {count(n, 'run')}"
    if rep.since is not None:
        title += f" since {dt.datetime.fromtimestamp(rep.since).isoformat(' ', 'minutes')}"
    if rep.by:
        title += f" · by {', '.join(rep.by)}"
        head = [*rep.by, "calls", "tokens in", "tokens out", "cost", "per row", "replayed", "replay value"]
        rows = [[*(x.group[d] or "-" for d in rep.by), f"{x.calls:,}", f"{x.input_tokens:,}",
                 f"{x.output_tokens:,}", usd(x.cost), usd(x.per_row), f"{x.replayed:,}", usd(x.replay_value)]
                for x in rep.lines]
        _table(console, title, head, rows, len(rep.by))
        if "tag" in rep.by:
            console.print("(a run with several tags counts in the line of each)", markup=False)
        console.print()
    else:
        console.print(title, markup=False)
    t = rep.total

    def spent(line: _cost.CostLine, what: str = "") -> str:
        share = "" if line.cost is None or not t.cost else f" ({float(line.cost / t.cost):.1%} of the cost)"
        return f"{count(line.calls, 'call')}, {usd(line.cost)}{share}{what}"

    lines = [
        ("Total", f"{count(t.calls, 'paid call')}, {t.input_tokens:,} input + {t.output_tokens:,} output "
                  f"tokens, {usd(t.cost)}"),
        ("Written", f"{count(t.written, 'row')}, {usd(t.per_row)} per row"),
        ("First tries", spent(rep.first_try)),
        ("Retries", spent(rep.retries)),
        ("Deliberation", spent(rep.deliberation, ": vote samples, critiques, judges, escalations")),
        ("Extra thinking", spent(rep.extra, ": every call beyond the first try")),
        ("Replays", f"{count(t.replayed, 'call')} answered from the store at no new cost "
                    f"(first paid {usd(t.replay_value)})"),
    ]
    if rep.kinds:
        lines.append(("By kind", "; ".join(f"{k.group['kind']} {k.calls + k.replayed:,} {usd(k.cost)}"
                                           for k in rep.kinds)))
    width = max(len(k) for k, _ in lines)
    for k, v in lines:
        console.print(f"{k:<{width}}  {v}", markup=False, highlight=False)
    if t.unpriced:
        console.print(f"?: {count(t.unpriced, 'paid call')} without a price (a model without prices): the "
                      "cost is unknown, never counted as zero; give the model `prices:` to know it",
                      markup=False, highlight=False)


def _table(console: Console, title: str, head: list[str], rows: list[list[str]], left: int) -> None:
    """A table whose first ``left`` columns are left-aligned and the others right-aligned."""
    if console.is_terminal:
        from rich.table import Table
        from rich.text import Text

        console.print(Text(title, style="bold"))
        table = Table()
        for i, h in enumerate(head):
            table.add_column(h, justify="left" if i < left else "right")
        for row in rows:
            table.add_row(*(Text(c) for c in row))
        console.print(table)
        return
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    console.print(title, markup=False, highlight=False)
    for row in [head, *rows]:
        cells = [c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))]
        console.print("  ".join(cells).rstrip(), markup=False, highlight=False)
