"""A run's page: ``corral report RUN --html FILE`` writes it, ``corral serve`` serves it live.

What it shows, each from one reader:

- rows by state (:func:`corral._result.summarize`, the summary ``corral status`` prints): in =
  written + quarantined + review + skipped + pending;
- cost by step and by tag (:func:`corral._cost.cost_report`, what ``corral cost`` prints), with
  the run's total;
- a histogram per step of the accepted answers' confidences (:meth:`Store.answer_confidences`);
- each output field's label mix against the previous run of the same job
  (:func:`corral._monitor.profile` and :func:`corral._monitor.previous_run`);
- throughput over time: answers accepted and calls made per second or minute
  (:meth:`Store.activity`, from the trace's and the ledger's timestamps);
- the quarantined and held rows with their reasons, counted by kind of reason, the first
  :data:`ROWS_SHOWN` of each listed (``corral serve`` pages through the rest).

The page is one self-contained HTML document: inline CSS and SVG, no script, nothing fetched.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from urllib.parse import quote

from corral import _monitor
from corral._cost import CostReport, cost_report
from corral._html import (
    COLORS,
    STATE_COLORS,
    bars_svg,
    e,
    lines_svg,
    page,
    paired_bars_svg,
    stacked_bar_svg,
    table,
    write_atomic,
)
from corral._monitor import FieldProfile
from corral._result import RunResult, summarize
from corral.report import reason_kind
from corral.store.base import ActivityBin, AnswerConfidence, RecordRow, RunInfo, Store
from corral.store.leases import live_status

#: quarantined and held rows listed per state (the rest are counted, and paged when served)
ROWS_SHOWN = 200
#: confidence histogram bins over [0, 1]
CONFIDENCE_BINS = 10
#: the states drawn, in the summary's order
STATE_ORDER = ("done", "quarantined", "review", "skipped", "pending", "leased")
STATE_NAMES = {"done": "written", "review": "held for review"}


@dataclass
class Listed:
    """A state's rows on the page: the reasons counted over all of them, and one page of rows."""

    state: str
    total: int
    reasons: Counter[str]
    rows: list[RecordRow]
    offset: int = 0


@dataclass
class RunPage:
    """What a run's page shows, read from the store (see the module docstring)."""

    info: RunInfo
    summary: RunResult
    counts: dict[str, int]
    confidences: dict[str, list[AnswerConfidence]]  # step -> its answers' confidences
    activity: list[ActivityBin]
    listed: list[Listed]
    #: the run's ledger rolled up as ``corral cost`` does it: by step, by tag (and by kind)
    cost: dict[str, CostReport] = field(default_factory=dict)
    cost_total: Decimal | None = None
    #: each label field (``step`` or ``step.field``) -> (its mix now, the previous run's or None)
    mix: dict[str, tuple[FieldProfile, FieldProfile | None]] = field(default_factory=dict)
    previous: RunInfo | None = None
    drift_limit: float = 0.0
    warnings: list[str] = field(default_factory=list)
    built_at: float = field(default_factory=time.time)


def _listed(st: Store, run_id: str, state: str, total: int, offset: int, limit: int) -> Listed:
    reasons: Counter[str] = Counter()
    rows: list[RecordRow] = []
    i = 0
    for chunk in st.iter_records(run_id, state):
        for rec in chunk:
            reasons[reason_kind(rec.reason or "")] += 1
            if offset <= i < offset + limit:
                rows.append(rec)
            i += 1
    return Listed(state, total, reasons, rows, offset)


def build(st: Store, info: RunInfo, *, offsets: dict[str, int] | None = None,
          limit: int = ROWS_SHOWN) -> RunPage:
    """Read everything the page shows; ``offsets`` (state -> first row listed) pages through
    the quarantined and held rows."""
    offsets = offsets or {}
    summary = summarize(st, info, status=live_status(st, info))
    counts = st.counts(info.id)
    confidences: dict[str, list[AnswerConfidence]] = {}
    for a in st.answer_confidences(info.id):
        confidences.setdefault(a.step, []).append(a)
    listed = [_listed(st, info.id, s, counts.get(s, 0), max(0, offsets.get(s, 0)), limit)
              for s in ("quarantined", "review") if counts.get(s)]
    pg = RunPage(info, summary, counts, confidences, st.activity(info.id), listed)
    _add_cost(st, pg)
    _add_mix(st, pg)
    return pg


def _add_cost(st: Store, pg: RunPage) -> None:
    """Cost by step, by tag and by kind from the ledger, rolled up by ``corral cost``'s own
    :func:`~corral._cost.cost_report`; its total is the page's."""
    for by in ("step", "tag", "kind"):
        pg.cost[by] = cost_report(st, [pg.info], by=(by,))
    pg.cost_total = pg.cost["step"].total.cost


def _add_mix(st: Store, pg: RunPage) -> None:
    """Each label field's mix, this run against the job's previous run, as monitoring compares
    them (:func:`corral._monitor.profile`, :func:`corral._monitor.previous_run`)."""
    now = _monitor.profile(st, pg.info)
    pg.previous = _monitor.previous_run(st, pg.info)
    before = _monitor.profile(st, pg.previous) if pg.previous is not None else None
    for name, f in now.fields.items():
        if f.is_label:
            prev = before.fields.get(name) if before is not None else None
            pg.mix[name] = (f, prev if prev is not None and prev.is_label else None)
    pg.drift_limit = _monitor.spec_of(pg.info).label_drift
    pg.warnings = [str(w) for w in (pg.info.spec or {}).get(_monitor.WARNED) or []]


def cost_total(st: Store, run: RunInfo | str) -> Decimal | None:
    """The run's total cost as its page shows it (None: some call's price is unknown): to check
    it against ``corral cost`` and the ledger."""
    if not isinstance(run, RunInfo):
        from corral._eval import resolve_run

        run = resolve_run(st, run)
    return build(st, run, limit=0).cost_total


# --- rendering -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Links:
    """Where a served page links to (``corral serve``); a written page links nowhere."""

    record: Callable[[str, str], str]  # (run, key) -> the record's page
    review: Callable[[str], str]  # run -> its review queue
    more: Callable[[str, str, int], str]  # (run, state, offset) -> the run page from that row
    index: str = "/"


def served_links(prefix: str = "") -> Links:
    """The links of :mod:`corral._serve`'s routes."""
    return Links(
        record=lambda run, key: f"{prefix}/run/{quote(run)}/record/{quote(key, safe='')}",
        review=lambda run: f"{prefix}/run/{quote(run)}/review",
        more=lambda run, state, offset: f"{prefix}/run/{quote(run)}?{state}={offset}#{state}",
        index=f"{prefix}/",
    )


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _figures(pg: RunPage) -> str:
    s = pg.summary
    items = [
        ("rows in", f"{s.rows_in:,}", "rows-in"), ("written", f"{s.written:,}", "written"),
        ("quarantined", f"{s.quarantined:,}", "quarantined"), ("held for review", f"{s.review:,}", "review"),
        ("paid calls", f"{s.calls_made:,}", "calls"),
        ("cost", "unknown" if pg.cost_total is None else f"${float(pg.cost_total):,.4f}", "cost-total"),
    ]
    cells = "".join(f'<div><span>{e(k)}</span><b class="figure-big" id="fig-{i}">{e(v)}</b></div>'
                    for k, v, i in items)
    return f'<div class="figures">{cells}</div>'


def _states(pg: RunPage) -> list[str]:
    s = pg.summary
    parts = [(STATE_NAMES.get(st, st), pg.counts.get(st, 0), STATE_COLORS[st])
             for st in STATE_ORDER if pg.counts.get(st)]
    out = ["<h2>Rows by state</h2>",
           f'<p class="meta" id="rows-equation">{s.rows_in:,} in = {s.written:,} written + '
           f"{s.quarantined:,} quarantined + {s.review:,} review + {s.skipped:,} skipped + "
           f"{s.pending:,} pending{'' if s.accounted else ' (does not add up)'}</p>"]
    if parts:
        out.append(stacked_bar_svg(parts, label="rows by state"))
    rows = [(STATE_NAMES.get(st, st), f"{pg.counts.get(st, 0):,}",
             f"{pg.counts.get(st, 0) / max(1, s.rows_in):.1%}") for st in STATE_ORDER if pg.counts.get(st)]
    out.append(table("", ("state", "rows", "share"), rows, cls="states"))
    return out


def _cost(pg: RunPage) -> list[str]:
    s = pg.summary
    total = pg.cost["step"].total if pg.cost else None
    out = ["<h2>Cost</h2>",
           f'<p class="meta" id="cost-line">total <b id="cost-total" data-usd="{e(_exact(pg.cost_total))}">'
           f"{e(_dollars(pg.cost_total))}</b> · "
           f"{_n(s.calls_made, 'paid call')}, {s.calls_replayed:,} replayed from the store · "
           f"{s.input_tokens:,} input and {_n(s.output_tokens, 'output token')} paid for"
           + (f" · {_dollars(total.per_row)} per written row" if total is not None and total.per_row is not None else "")
           + (f" · {_n(total.unpriced, 'paid call')} without a price" if total is not None and total.unpriced else "")
           + "</p>"]
    titles = {"step": "By step", "tag": "By tag", "kind": "By kind of call"}
    for by, rep in pg.cost.items():
        lines = rep.kinds if by == "kind" else rep.lines
        if not lines:
            continue
        rows = [(ln.group.get(by, ""), f"{ln.calls:,}", f"{ln.replayed:,}", f"{ln.input_tokens:,}",
                 f"{ln.output_tokens:,}", _dollars(ln.cost), _dollars(ln.per_row)) for ln in lines]
        out.append(table(titles[by], (by, "paid calls", "replayed", "tokens in", "tokens out", "cost",
                                      "per written row"), rows, cls=f"cost-by-{by}"))
        if by == "kind" and rep.extra.calls:
            x = rep.extra
            out.append(f'<p class="meta">beyond the first try: {x.calls:,} calls, {e(_dollars(x.cost))} '
                       "(retries and deliberation: what the extra thinking cost)</p>")
    return out


def _n(count: int, word: str, many: str | None = None) -> str:
    """``1 call``, ``2 calls``: a count and its noun."""
    return f"{count:,} {word if count == 1 else many or word + 's'}"


def _exact(v: Decimal | None) -> str:
    """Money exactly, as ``corral cost --json`` writes it (``unknown`` when a price is not known)."""
    return "unknown" if v is None else str(v)


def _dollars(v: Decimal | None) -> str:
    """Money as the page shows it: ``$0.0600``; ``unknown`` (a price is not known), never $0."""
    return "unknown" if v is None else f"${float(v):,.4f}"


def _confidence(pg: RunPage) -> list[str]:
    out = ["<h2>Confidence of the answers</h2>"]
    if not pg.confidences:
        return [*out, '<p class="meta">No answers yet.</p>']
    figs = []
    edges = [b / CONFIDENCE_BINS for b in range(CONFIDENCE_BINS + 1)]
    for step, answers in pg.confidences.items():
        known = [a for a in answers if a.confidence is not None]
        if not known:
            out.append(f'<p class="meta">step {e(step)}: {_n(len(answers), "answer")}, none with a confidence '
                       "(the model gave no log-probabilities and the strategy measured none)</p>")
            continue
        written = [0.0] * CONFIDENCE_BINS
        held = [0.0] * CONFIDENCE_BINS
        for a in known:
            assert a.confidence is not None
            b = min(CONFIDENCE_BINS - 1, max(0, int(a.confidence * CONFIDENCE_BINS)))
            (written if a.accepted else held)[b] += 1
        series = [("accepted", written, STATE_COLORS["done"])]
        if any(held):
            series.append(("not accepted by the run (held or quarantined)", held, STATE_COLORS["review"]))
        svg = bars_svg(edges, series, x_label="confidence", y_label="answers",
                       label=f"confidence histogram, step {step}")
        n_acc = sum(a.accepted for a in known)
        mean = sum(a.confidence or 0.0 for a in known if a.accepted) / n_acc if n_acc else None
        none = len(answers) - len(known)
        figs.append(f'<figure class="confidence">{svg}<figcaption>step {e(step)}: {_n(n_acc, "accepted answer")}'
                    + (f", mean confidence {mean:.2f}" if mean is not None else "")
                    + (f"; {len(known) - n_acc:,} not accepted" if len(known) > n_acc else "")
                    + (f"; {none:,} without a confidence" if none else "") + "</figcaption></figure>")
    if figs:
        out.append('<div class="plots">' + "".join(figs) + "</div>")
    return out


def _mix(pg: RunPage) -> list[str]:
    prev = pg.previous
    against = (f"against the previous run of job {pg.info.job_name}: run {prev.id}, finished "
               f"{_when(prev.updated_at)} (its last finished run before this one that monitoring did not warn about)"
               if prev is not None else "no previous finished run of this job to compare with")
    out = ["<h2>Label mix</h2>", f'<p class="meta" id="mix-against">{e(against)}</p>']
    if pg.warnings:
        out.append('<ul class="notes warnings">' + "".join(f"<li>warning: {e(w)}</li>" for w in pg.warnings) + "</ul>")
    if not pg.mix:
        return [*out, '<p class="meta">No label fields (text fields with few distinct values) answered yet.</p>']
    figs = []
    for name, (now, before) in pg.mix.items():
        a = now.mix()
        b = before.mix() if before is not None else {}
        labels = list(dict.fromkeys([*a, *b]))
        series = [(f"this run ({sum(now.labels.values()):,})", [a.get(k, 0.0) for k in labels], COLORS[0])]
        if before is not None:
            series.append((f"previous ({sum(before.labels.values()):,})", [b.get(k, 0.0) for k in labels], COLORS[6]))
        svg = paired_bars_svg(labels, series, label=f"label mix of {name}")
        note = f"{name}: {_n(len(labels), 'label')}"
        if before is not None:
            d = _monitor.distance(a, b)
            flag = " — over the job's label_drift" if d > pg.drift_limit else ""
            note += f"; distance from the previous run {d:.2f} (label_drift {pg.drift_limit:g}){flag}"
        figs.append(f'<figure class="mix">{svg}<figcaption>{e(note)}</figcaption></figure>')
    out.append('<div class="plots">' + "".join(figs) + "</div>")
    return out


def _throughput(pg: RunPage) -> list[str]:
    out = ["<h2>Throughput</h2>"]
    bins = pg.activity
    if not bins:
        return [*out, '<p class="meta">No calls or answers yet.</p>']
    span = bins[-1].start + bins[-1].width_s - bins[0].start
    unit, per = ("s", 1.0) if span < 180 else ("min", 60.0) if span < 3 * 3600 else ("h", 3600.0)
    t0 = bins[0].start

    def pts(get: Callable[[ActivityBin], int]) -> list[tuple[float, float]]:
        return [((b.start - t0 + b.width_s / 2) / per, get(b) / b.width_s * per) for b in bins]

    series = [(f"answers per {unit}", pts(lambda b: b.answers)), (f"paid calls per {unit}", pts(lambda b: b.calls))]
    if any(b.replayed for b in bins):
        series.append((f"replayed calls per {unit}", pts(lambda b: b.replayed)))
    answers = sum(b.answers for b in bins)
    said = (f"{_n(answers, 'answer')} accepted and {_n(sum(b.calls for b in bins), 'paid call')} from {_when(t0)} "
            + (f"over {span:,.0f} s" if len(bins) > 1 else f"within {span:,.0f} s"))
    if len(bins) < 2:
        return [*out, f'<p class="meta" id="throughput">{e(said)} (too short a run to plot)</p>']
    svg = lines_svg(series, x_label=f"time since the first call ({unit})", y_label=f"per {unit}",
                    label="throughput over time", x_fmt="{:.3g}".format)
    out.append(f'<div class="plots"><figure class="throughput">{svg}<figcaption id="throughput">{e(said)} '
               "(a resumed run's pause shows as a gap)</figcaption></figure></div>")
    return out


def _rows(pg: RunPage, links: Links | None) -> list[str]:
    out: list[str] = []
    for ls in pg.listed:
        title = "Quarantined rows" if ls.state == "quarantined" else "Rows held for review"
        out.append(f'<h2 id="{ls.state}">{title} ({ls.total:,})</h2>')
        if links is not None and ls.state == "review":
            out.append(f'<p><a href="{e(links.review(pg.info.id))}">Work the review queue</a></p>')
        out.append(table("By reason", ("reason", "rows"),
                         [(r, f"{n:,}") for r, n in ls.reasons.most_common()], cls=f"reasons-{ls.state}",
                         text_cols=(0,)))
        rows = []
        for rec in ls.rows:
            key = e(rec.key)
            if links is not None:
                key = f'<a href="{e(links.record(pg.info.id, rec.key))}">{key}</a>'
            rows.append((key, e(rec.line if rec.line is not None else ""), e(rec.reason or "")))
        shown = f"rows {ls.offset + 1:,}–{ls.offset + len(ls.rows):,} of {ls.total:,}" if ls.rows else "no rows here"
        out.append(table(shown, ("key", "line", "reason"), rows, raw=True, cls=f"rows-{ls.state}",
                         text_cols=(2,)))
        rest = ls.total - ls.offset - len(ls.rows)
        if rest > 0 and links is not None and ls.rows:
            out.append(f'<p><a class="more" href="{e(links.more(pg.info.id, ls.state, ls.offset + len(ls.rows)))}">'
                       f"next {min(rest, len(ls.rows)):,} of the {rest:,} more</a></p>")
        elif rest > 0:
            out.append(f'<p class="meta">and {rest:,} more: <code>corral review list {e(pg.info.id)}</code> '
                       "or <code>corral serve</code> lists them all</p>")
    return out


def render(pg: RunPage, links: Links | None = None) -> str:
    """The page's HTML text; with ``links``, the served page (records and the queue linked)."""
    info, s = pg.info, pg.summary
    body = []
    if links is not None:
        body.append(f'<nav><a href="{e(links.index)}">all runs</a>'
                    + (f'<a href="{e(links.review(info.id))}">review queue ({s.review:,})</a>' if s.review else "")
                    + "</nav>")
    body.append(f"<h1>Run {e(info.id)} · job {e(info.job_name)}</h1>")
    meta = [f"status {s.status}" + (f" ({info.stop_reason})" if info.stop_reason and s.status != "finished" else ""),
            f"started {_when(info.created_at)}", f"updated {_when(info.updated_at)}",
            f"elapsed {s.elapsed_s:,.1f} s"]
    if info.tags:
        meta.append("tags " + ", ".join(f"{k}={v}" for k, v in sorted(info.tags.items())))
    body.append(f'<p class="meta">{e(" · ".join(meta))}</p>')
    body.append(_figures(pg))
    body += _states(pg) + _cost(pg) + _confidence(pg) + _mix(pg) + _throughput(pg) + _rows(pg, links)
    body.append(f'<p class="meta">Corral · page built {e(_when(pg.built_at))}</p>')
    return page(f"corral · run {info.id} · {info.job_name}", body)


def write(st: Store, info: RunInfo, path: Path) -> RunPage:
    """Write the run's page to ``path`` (atomically); what it shows."""
    pg = build(st, info)
    write_atomic(path, render(pg))
    return pg
