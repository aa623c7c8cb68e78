"""``corral eval --html``: the evaluation as one self-contained HTML page.

Everything is inline: the CSS, and the plots drawn here as SVG (a reliability diagram per run and
step, a coverage-vs-accuracy plot per step with a line per run). No script, no font, no request
to the network: the page opens the same offline, from a mail attachment or a CI artifact.
"""

from __future__ import annotations

import contextlib
import html
import os
import tempfile
from pathlib import Path

from corral._eval_scoring import Calibration, Evaluation
from corral._eval_tables import (
    ReportTable,
    detail_tables,
    missing_confidences,
    run_title,
    summary_table,
)

COLORS = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563")

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #111827;
       margin: 24px auto; max-width: 1120px; padding: 0 16px; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 17px; margin: 28px 0 8px; border-bottom: 1px solid #e5e7eb; padding-bottom: 4px; }
h3 { font-size: 14px; margin: 18px 0 6px; }
p.meta, ul.notes { color: #4b5563; margin: 4px 0; }
table { border-collapse: collapse; margin: 6px 0 14px; }
th, td { padding: 3px 10px; border-bottom: 1px solid #e5e7eb; text-align: right; white-space: nowrap; }
th { background: #f3f4f6; font-weight: 600; }
th:first-child, td:first-child { text-align: left; }
caption { text-align: left; font-weight: 600; padding: 4px 0; white-space: nowrap; }
.plots { display: flex; flex-wrap: wrap; gap: 18px; }
figure { margin: 0; }
figcaption { font-size: 12px; color: #4b5563; max-width: 340px; }
svg text { font: 11px system-ui, sans-serif; fill: #374151; }
dl { color: #374151; } dt { font-weight: 600; margin-top: 6px; } dd { margin-left: 16px; }
"""

W, H, M = 340, 300, 44  # plot size and margin (px)


def _e(s: object) -> str:
    return html.escape(str(s), quote=True)


def _table(t: ReportTable) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in t.headers)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in t.rows)
    return f"<table><caption>{_e(t.title)}</caption><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _axes(x_label: str, y_label: str) -> list[str]:
    """Frame, ticks at 0, 0.2 .. 1 and axis labels of a unit square plot."""
    x0, y0, x1, y1 = M, H - M, W - 12, 12
    out = [f'<rect x="{x0}" y="{y1}" width="{x1 - x0}" height="{y0 - y1}" fill="#fff" stroke="#9ca3af"/>']
    for i in range(6):
        v = i / 5
        x = x0 + v * (x1 - x0)
        y = y0 - v * (y0 - y1)
        out.append(f'<line x1="{x:.1f}" y1="{y0}" x2="{x:.1f}" y2="{y0 + 4}" stroke="#9ca3af"/>')
        out.append(f'<text x="{x:.1f}" y="{y0 + 16}" text-anchor="middle">{v:.1f}</text>')
        out.append(f'<line x1="{x0 - 4}" y1="{y:.1f}" x2="{x0}" y2="{y:.1f}" stroke="#9ca3af"/>')
        out.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x1}" y2="{y:.1f}" stroke="#f3f4f6"/>')
        out.append(f'<text x="{x0 - 7}" y="{y + 4:.1f}" text-anchor="end">{v:.1f}</text>')
    out.append(f'<text x="{(x0 + x1) / 2:.1f}" y="{H - 8}" text-anchor="middle">{_e(x_label)}</text>')
    out.append(f'<text x="12" y="{(y0 + y1) / 2:.1f}" text-anchor="middle" '
               f'transform="rotate(-90 12 {(y0 + y1) / 2:.1f})">{_e(y_label)}</text>')
    return out


def _xy(vx: float, vy: float) -> tuple[float, float]:
    x0, y0, x1, y1 = M, H - M, W - 12, 12
    return x0 + vx * (x1 - x0), y0 - vy * (y0 - y1)


def _svg(parts: list[str], label: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
            f'role="img" aria-label="{_e(label)}">' + "".join(parts) + "</svg>")


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
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>corral eval · {_e(ev.job)}</title><style>{CSS}</style></head><body>\n"
        + "\n".join(body) + "\n</body></html>\n"
    )


def write(ev: Evaluation, path: Path) -> None:
    """Write the page to ``path`` (a temporary file beside it, renamed once complete)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(render(ev))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
