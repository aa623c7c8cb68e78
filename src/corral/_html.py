"""What Corral's HTML pages share: the stylesheet, the colours, escaping, tables, the page shell,
an atomic write, and small SVG plots (a frame with ticks, bars, lines).

The pages (``corral eval --html``, ``corral report --html``, ``corral serve``) are self-contained:
the CSS is inline and the plots are inline SVG drawn here; nothing is fetched from anywhere.
"""

from __future__ import annotations

import contextlib
import html
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

COLORS = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563")
#: a record state -> its colour, wherever states are drawn
STATE_COLORS = {
    "done": "#16a34a", "quarantined": "#dc2626", "review": "#ea580c", "skipped": "#6b7280",
    "pending": "#93c5fd", "leased": "#2563eb",
}

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
td.text, th.text { text-align: left; white-space: normal; max-width: 560px; }
caption { text-align: left; font-weight: 600; padding: 4px 0; white-space: nowrap; }
.plots { display: flex; flex-wrap: wrap; gap: 18px; }
figure { margin: 0; }
figcaption { font-size: 12px; color: #4b5563; max-width: 340px; }
svg text { font: 11px system-ui, sans-serif; fill: #374151; }
dl { color: #374151; } dt { font-weight: 600; margin-top: 6px; } dd { margin-left: 16px; }
nav { margin: 0 0 12px; color: #4b5563; } nav a { margin-right: 12px; }
a { color: #1d4ed8; }
.figure-big { font-size: 20px; font-weight: 600; }
.figures { display: flex; flex-wrap: wrap; gap: 28px; margin: 8px 0 4px; }
.figures div span { display: block; color: #4b5563; font-size: 12px; }
pre { background: #f9fafb; border: 1px solid #e5e7eb; padding: 8px; white-space: pre-wrap;
      word-break: break-word; margin: 4px 0 10px; max-height: 420px; overflow: auto; }
.call { border-left: 3px solid #93c5fd; padding: 2px 0 2px 12px; margin: 10px 0; }
.decision { border-left: 3px solid #111827; padding: 2px 0 2px 12px; margin: 10px 0; font-weight: 600; }
.flash { background: #ecfdf5; border: 1px solid #16a34a; padding: 8px 12px; }
.error { background: #fef2f2; border: 1px solid #dc2626; padding: 8px 12px; }
form.decide { display: inline-block; vertical-align: top; margin: 6px 18px 6px 0; padding: 10px;
              border: 1px solid #e5e7eb; }
form.decide textarea { width: 420px; height: 90px; font: 12px ui-monospace, monospace; }
button { font: inherit; padding: 3px 12px; cursor: pointer; }
"""


def e(s: object) -> str:
    """Text escaped for HTML (quotes too: safe in attributes)."""
    return html.escape(str(s), quote=True)


def table(title: str, headers: Sequence[str], rows: Sequence[Sequence[object]], *,
          raw: bool = False, cls: str = "", text_cols: Sequence[int] = ()) -> str:
    """A ``<table>`` with a caption. Cells are escaped unless ``raw`` (cells already HTML);
    ``text_cols`` are left-aligned and wrap."""
    text = ' class="text"'
    head = "".join(f"<th{text if i in text_cols else ''}>{e(h)}</th>" for i, h in enumerate(headers))

    def cell(i: int, c: object) -> str:
        return f"<td{text if i in text_cols else ''}>{c if raw else e(c)}</td>"

    body = "".join("<tr>" + "".join(cell(i, c) for i, c in enumerate(r)) + "</tr>" for r in rows)
    klass = f' class="{e(cls)}"' if cls else ""
    caption = f"<caption>{e(title)}</caption>" if title else ""
    return f"<table{klass}>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def page(title: str, body: Sequence[str], *, script: str = "") -> str:
    """A whole page: the shell, the stylesheet, ``body``'s parts, and an inline script if any."""
    tail = f"<script>{script}</script>" if script else ""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{e(title)}</title><style>{CSS}</style></head><body>\n"
        + "\n".join(body) + f"\n{tail}</body></html>\n"
    )


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file beside it, renamed once complete (so a
    reader never sees half a page), with the permissions a plain new file would get."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# --- plots -----------------------------------------------------------------------------------

W, H, M = 340, 300, 44  # plot size and margin (px)


class Frame:
    """A plot's frame: data coordinates (``x`` in [x_lo, x_hi], ``y`` in [0, y_hi]) mapped into
    a ``width`` x ``height`` SVG with room for the axes' ticks and labels."""

    def __init__(self, x_lo: float = 0.0, x_hi: float = 1.0, y_hi: float = 1.0, *,
                 width: int = W, height: int = H) -> None:
        self.x_lo, self.x_hi = x_lo, (x_hi if x_hi > x_lo else x_lo + 1)
        self.y_hi = y_hi if y_hi > 0 else 1.0
        self.width, self.height = width, height
        self.x0, self.y0, self.x1, self.y1 = M, height - M, width - 12, 12

    def xy(self, vx: float, vy: float) -> tuple[float, float]:
        fx = (vx - self.x_lo) / (self.x_hi - self.x_lo)
        return self.x0 + fx * (self.x1 - self.x0), self.y0 - vy / self.y_hi * (self.y0 - self.y1)

    def axes(self, x_label: str, y_label: str, *, x_ticks: Sequence[float] | None = None,
             y_ticks: Sequence[float] | None = None,
             x_fmt: Callable[[float], str] = "{:.1f}".format,
             y_fmt: Callable[[float], str] = "{:.1f}".format) -> list[str]:
        """The frame, ticks (six of each by default) with grid lines, and the axes' labels."""
        x0, y0, x1, y1 = self.x0, self.y0, self.x1, self.y1
        xs = x_ticks if x_ticks is not None else [self.x_lo + i / 5 * (self.x_hi - self.x_lo) for i in range(6)]
        ys = y_ticks if y_ticks is not None else [i / 5 * self.y_hi for i in range(6)]
        out = [f'<rect x="{x0}" y="{y1}" width="{x1 - x0}" height="{y0 - y1}" fill="#fff" stroke="#9ca3af"/>']
        for v in xs:
            x = self.xy(v, 0)[0]
            out.append(f'<line x1="{x:.1f}" y1="{y0}" x2="{x:.1f}" y2="{y0 + 4}" stroke="#9ca3af"/>')
            out.append(f'<text x="{x:.1f}" y="{y0 + 16}" text-anchor="middle">{e(x_fmt(v))}</text>')
        for v in ys:
            y = self.xy(self.x_lo, v)[1]
            out.append(f'<line x1="{x0 - 4}" y1="{y:.1f}" x2="{x0}" y2="{y:.1f}" stroke="#9ca3af"/>')
            out.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x1}" y2="{y:.1f}" stroke="#f3f4f6"/>')
            out.append(f'<text x="{x0 - 7}" y="{y + 4:.1f}" text-anchor="end">{e(y_fmt(v))}</text>')
        out.append(f'<text x="{(x0 + x1) / 2:.1f}" y="{self.height - 8}" text-anchor="middle">{e(x_label)}</text>')
        out.append(f'<text x="12" y="{(y0 + y1) / 2:.1f}" text-anchor="middle" '
                   f'transform="rotate(-90 12 {(y0 + y1) / 2:.1f})">{e(y_label)}</text>')
        return out

    def svg(self, parts: list[str], label: str) -> str:
        return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{self.width}" height="{self.height}" '
                f'viewBox="0 0 {self.width} {self.height}" role="img" aria-label="{e(label)}">'
                + "".join(parts) + "</svg>")


def nice_max(v: float) -> float:
    """A round number at or above ``v`` for an axis' top (1, 2, 2.5 or 5 times a power of ten)."""
    if v <= 0:
        return 1.0
    p = 10.0 ** math.floor(math.log10(v))
    return next(m * p for m in (1, 2, 2.5, 5, 10) if m * p >= v * (1 - 1e-12))


def count_fmt(v: float) -> str:
    """An axis count: ``0``, ``250``, ``1.5k``."""
    if v >= 1000:
        return f"{v / 1000:g}k"
    return f"{v:g}"


def bars_svg(edges: Sequence[float], series: Sequence[tuple[str, Sequence[float], str]], *,
             x_label: str, y_label: str, label: str,
             x_fmt: Callable[[float], str] = "{:.1f}".format) -> str:
    """A histogram over bins ``edges[i]..edges[i+1]``: one bar per bin, its ``series`` (name,
    count per bin, colour) stacked, the bin's total above it; a legend when there are several."""
    n = len(edges) - 1
    totals = [sum(counts[i] for _, counts, _ in series) for i in range(n)]
    f = Frame(edges[0], edges[-1], nice_max(max(totals, default=0)))
    parts = f.axes(x_label, y_label, y_fmt=count_fmt, x_fmt=x_fmt)
    for i in range(n):
        base = 0.0
        for name, counts, color in series:
            c = counts[i]
            if not c:
                continue
            xa, ya = f.xy(edges[i], base + c)
            xb, yb = f.xy(edges[i + 1], base)
            tip = f"{x_fmt(edges[i])}–{x_fmt(edges[i + 1])}: {c:,g} {name}"
            parts.append(f'<rect x="{xa + 1:.1f}" y="{ya:.1f}" width="{max(xb - xa - 2, 1):.1f}" '
                         f'height="{yb - ya:.1f}" fill="{color}" fill-opacity="0.7"><title>{e(tip)}</title></rect>')
            base += c
        if totals[i]:
            xa, ya = f.xy(edges[i], totals[i])
            xb = f.xy(edges[i + 1], 0)[0]
            parts.append(f'<text x="{(xa + xb) / 2:.1f}" y="{ya - 3:.1f}" text-anchor="middle">{totals[i]:,g}</text>')
    if len(series) > 1:
        for j, (name, _, color) in enumerate(series):
            ly = f.y1 + 12 + 15 * j
            parts.append(f'<rect x="{f.x0 + 10}" y="{ly - 8}" width="10" height="10" fill="{color}" fill-opacity="0.7"/>')
            parts.append(f'<text x="{f.x0 + 24}" y="{ly + 1}">{e(name)}</text>')
    return f.svg(parts, label)


def lines_svg(series: Sequence[tuple[str, Sequence[tuple[float, float]]]], *, x_label: str,
              y_label: str, label: str, x_fmt: Callable[[float], str] = "{:g}".format) -> str:
    """One polyline per ``(name, points)``, with a legend at the top left."""
    xs = [x for _, pts in series for x, _ in pts]
    top = nice_max(max((y for _, pts in series for _, y in pts), default=0))
    f = Frame(min(xs, default=0.0), max(xs, default=1.0), top)
    parts = f.axes(x_label, y_label, y_fmt=count_fmt, x_fmt=x_fmt)
    for i, (name, pts) in enumerate(series):
        color = COLORS[i % len(COLORS)]
        xy = " ".join("{:.1f},{:.1f}".format(*f.xy(x, y)) for x, y in pts)
        parts.append(f'<polyline points="{xy}" fill="none" stroke="{color}" stroke-width="2"/>')
        ly = f.y1 + 14 + 15 * i
        parts.append(f'<line x1="{f.x0 + 10}" y1="{ly}" x2="{f.x0 + 28}" y2="{ly}" stroke="{color}" stroke-width="2"/>')
        parts.append(f'<text x="{f.x0 + 32}" y="{ly + 4}">{e(name)}</text>')
    return f.svg(parts, label)


def paired_bars_svg(labels: Sequence[str], series: Sequence[tuple[str, Sequence[float], str]], *,
                    label: str, width: int = 420) -> str:
    """Horizontal bars of shares (0..1): per label, one bar per ``series`` (name, share per
    label, colour) side by side, the share written at its end; a legend at the top."""
    row = 6 + 12 * len(series)
    left, right = 130, 44
    height = 26 + row * len(labels)
    scale = width - left - right
    parts = []
    for j, (name, _, color) in enumerate(series):
        x = left + j * 150
        parts.append(f'<rect x="{x}" y="4" width="10" height="10" fill="{color}" fill-opacity="0.8"/>')
        parts.append(f'<text x="{x + 14}" y="13">{e(name)}</text>')
    for i, lab in enumerate(labels):
        y = 24 + i * row
        shown = lab if len(lab) <= 20 else lab[:19] + "…"
        parts.append(f'<text x="{left - 6}" y="{y + row / 2 + 1:.1f}" text-anchor="end">{e(shown)}<title>{e(lab)}</title></text>')
        for j, (name, shares, color) in enumerate(series):
            v = shares[i]
            by = y + 3 + j * 12
            parts.append(f'<rect x="{left}" y="{by}" width="{max(v * scale, 0.5):.1f}" height="10" fill="{color}" '
                         f'fill-opacity="0.8"><title>{e(lab)}, {e(name)}: {v:.1%}</title></rect>')
            parts.append(f'<text x="{left + v * scale + 4:.1f}" y="{by + 9}">{v:.0%}</text>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="{e(label)}">' + "".join(parts) + "</svg>")


def stacked_bar_svg(parts_: Sequence[tuple[str, int, str]], *, width: int = 680, label: str) -> str:
    """One horizontal bar split in ``(name, count, colour)`` segments, with a legend under it."""
    total = sum(n for _, n, _ in parts_) or 1
    out: list[str] = []
    x = 0.0
    for name, n, color in parts_:
        if not n:
            continue
        w = n / total * width
        out.append(f'<rect x="{x:.1f}" y="0" width="{w:.1f}" height="22" fill="{color}">'
                   f"<title>{e(name)}: {n:,}</title></rect>")
        x += w
    lx = 0
    for name, n, color in parts_:
        out.append(f'<rect x="{lx}" y="32" width="10" height="10" fill="{color}"/>')
        text = f"{name} {n:,}"
        out.append(f'<text x="{lx + 14}" y="41">{e(text)}</text>')
        lx += 22 + 7 * len(text)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{max(width, lx)}" height="48" '
            f'viewBox="0 0 {max(width, lx)} 48" role="img" aria-label="{e(label)}">' + "".join(out) + "</svg>")
