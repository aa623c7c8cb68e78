"""``corral eval --html``: the evaluation as one self-contained HTML page.

Everything is inline: the CSS, and the plots drawn here as SVG (a reliability diagram per run and
step, a coverage-vs-accuracy plot per step with a line per run). No script, no font, no request
to the network: the page opens the same offline, from a mail attachment or a CI artifact.
"""

from __future__ import annotations

from pathlib import Path

from corral._eval_scoring import Calibration, Evaluation
from corral._eval_tables import (
    ReportTable,
    detail_tables,
    missing_confidences,
    run_title,
    summary_table,
)
from corral._html import COLORS, Frame, H, M, page, table, write_atomic
from corral._html import e as _e

_FRAME = Frame()  # the unit square of both plots


def _table(t: ReportTable) -> str:
    return table(t.title, t.headers, t.rows)


def _axes(x_label: str, y_label: str) -> list[str]:
    """Frame, ticks at 0, 0.2 .. 1 and axis labels of a unit square plot."""
    return _FRAME.axes(x_label, y_label)


def _xy(vx: float, vy: float) -> tuple[float, float]:
    return _FRAME.xy(vx, vy)


def _svg(parts: list[str], label: str) -> str:
    return _FRAME.svg(parts, label)


def reliability_svg(c: Calibration, color: str = COLORS[0]) -> str:
    """Bars: the accuracy of each confidence bin; the dashed diagonal: perfect calibration; the
    dots: each bin's mean confidence (a dot right of its bar's top is overconfidence)."""
    parts = _axes("confidence", "accuracy")
    for b in c.bins:
        if not b.count or b.accuracy is None:
            continue
        xa, ya = _xy(b.lo, b.accuracy)
        xb, yb = _xy(b.hi, 0.0)
        parts.append(f'<rect x="{xa + 1:.1f}" y="{ya:.1f}" width="{xb - xa - 2:.1f}" height="{yb - ya:.1f}" '
                     f'fill="{color}" fill-opacity="0.55"><title>{b.lo:.1f}–{b.hi:.1f}: {b.count} rows, '
                     f'accuracy {b.accuracy:.1%}</title></rect>')
        parts.append(f'<text x="{(xa + xb) / 2:.1f}" y="{ya - 3:.1f}" text-anchor="middle">{b.count}</text>')
        if b.mean_confidence is not None:
            cx, cy = _xy(b.mean_confidence, b.accuracy)
            parts.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="3" fill="#111827"/>')
    (x0, y0), (x1, y1) = _xy(0, 0), _xy(1, 1)
    parts.append(f'<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y1}" stroke="#6b7280" stroke-dasharray="4 3"/>')
    return _svg(parts, "reliability diagram")


def coverage_svg(curves: list[tuple[str, Calibration]]) -> str:
    """Accuracy of the most confident k% of the rows against k, a line per run."""
    parts = _axes("coverage (most confident share of rows)", "accuracy")
    for i, (name, c) in enumerate(curves):
        color = COLORS[i % len(COLORS)]
        pts = c.curve
        step = max(1, len(pts) // 400)
        sample = pts[::step] + ([pts[-1]] if (len(pts) - 1) % step else [])
        xy = " ".join("{:.1f},{:.1f}".format(*_xy(x, y)) for x, y in sample)
        parts.append(f'<polyline points="{xy}" fill="none" stroke="{color}" stroke-width="2"/>')
        ly = H - M - 12 - 15 * (len(curves) - 1 - i)  # bottom left: the curves start high
        parts.append(f'<line x1="{M + 10}" y1="{ly}" x2="{M + 28}" y2="{ly}" stroke="{color}" stroke-width="2"/>')
        parts.append(f'<text x="{M + 32}" y="{ly + 4}">{_e(name)}</text>')
    return _svg(parts, "coverage versus accuracy")


DEFINITIONS = """
<dl>
<dt>accuracy (label steps)</dt><dd>answers equal to the label (text after strip and casefold, lists as sets, yes/no as booleans), over answered labeled rows.</dd>
<dt>macro-F1</dt><dd>the mean over labels (seen in gold or answers) of 2·TP / (2·TP + FP + FN).</dd>
<dt>exact</dt><dd>the answer as text is the gold text character for character, over answered rows whose gold has a value.</dd>
<dt>normalised</dt><dd>equal after NFKC, casefold, punctuation removed and whitespace collapsed; numbers compared as numbers ($1,234.50 = 1234.5); same rows as exact.</dd>
<dt>null-aware</dt><dd>over all answered rows: an empty gold cell is right only when the answer is null, a gold value when it matches normalised.</dd>
<dt>ECE</dt><dd>expected calibration error over 10 equal-width confidence bins: the sum of (bin rows / rows) × |accuracy − mean confidence|.</dd>
<dt>coverage vs accuracy</dt><dd>rows sorted by confidence, highest first: the accuracy of the top k as a share k of the rows.</dd>
</dl>
"""


def render(ev: Evaluation) -> str:
    """The page's HTML text."""
    body = [f"<h1>corral eval · job {_e(ev.job)}</h1>",
            f'<p class="meta">labels {_e(ev.labels)} · {ev.labeled:,} labeled rows · key column '
            f"{_e(ev.key_column)} · {len(ev.runs)} run{'s' if len(ev.runs) != 1 else ''}</p>"]
    notes = ev.notes + missing_confidences(ev)
    if ev.unscored_steps:
        notes.append(f"not scored (no gold column): {', '.join(ev.unscored_steps)}")
    if notes:
        body.append('<ul class="notes">' + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>")
    body.append("<h2>Summary</h2>" + _table(summary_table(ev)))
    steps = list(dict.fromkeys(s.step for r in ev.runs for s in r.steps))
    for name in steps:
        scored = [(r, s) for r in ev.runs for s in r.steps if s.step == name
                  and s.calibration is not None and s.calibration.with_confidence]
        body.append(f"<h2>Step {_e(name)}: confidence</h2>")
        if not scored:
            body.append('<p class="meta">No recorded confidences for this step\'s answers: no reliability '
                        "diagram (the model returned no log-probabilities and the strategy measured none).</p>")
            continue
        figs: list[str] = []
        curves: list[tuple[str, Calibration]] = []
        for r, s in scored:
            c = s.calibration
            assert c is not None
            curves.append((run_title(r), c))
            figs.append(f"<figure>{reliability_svg(c, COLORS[ev.runs.index(r) % len(COLORS)])}<figcaption>"
                        f"Reliability, run {_e(r.run)}: ECE {c.ece:.3f} over {c.with_confidence:,} answers"
                        "</figcaption></figure>")
        figs.append(f"<figure>{coverage_svg(curves)}<figcaption>Coverage vs accuracy: answer only the "
                    "most confident rows, send the rest to review.</figcaption></figure>")
        body.append('<div class="plots">' + "".join(figs) + "</div>")
    for r in ev.runs:
        body.append(f"<h2>Run {_e(run_title(r))}</h2>")
        body.extend(_table(t) for t in detail_tables(r, top=20))
    body.append("<h2>Definitions</h2>" + DEFINITIONS)
    return page(f"corral eval · {ev.job}", body)


def write(ev: Evaluation, path: Path) -> None:
    """Write the page to ``path`` (a temporary file beside it, renamed once complete)."""
    write_atomic(path, render(ev))
