"""Inline SVG charts for the evaluation report: large, ticked, legends in their own margin so no curve hides.

No matplotlib and nothing external: every chart is a string of SVG the report embeds, so report.html opens
offline on a line PC. Each function takes plain scores/labels (or a metrics curve) and returns the SVG, or
one sentence saying why the chart cannot be drawn.
"""
from __future__ import annotations

import html
import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from linesight.trainer import metrics as M

GOOD, DEFECT, WRONG, CHOSEN = "#2e86de", "#e67e22", "#c0392b", "#8e0000"
FR_COLOUR, ESCAPE_COLOUR, ALT_COLOUR = "#2e86de", "#d35400", "#7f8c8d"


def _e(x) -> str:
    return html.escape(str(x))


def pct(v: float) -> str:
    """A rate as an engineer reads it: whole percent on the axis, one decimal when small."""
    return f"{100 * v:.0f}%" if v == 0 or v >= 0.1 else f"{100 * v:.1f}%"


def nice_ticks(lo: float, hi: float, n: int = 6) -> list[float]:
    """Round tick values (1, 2 or 5 x 10^k apart) covering [lo, hi]."""
    span = hi - lo
    if not span > 0 or not math.isfinite(span):
        return [lo]
    raw = span / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [round(first + i * step, 12) for i in range(int((hi - first) / step + 1e-9) + 1)]


@dataclass(frozen=True)
class Legend:
    """One legend entry: a swatch (line, dash, dot or area) in a colour, and what it means."""
    label: str
    colour: str
    style: str = "line"


@dataclass(frozen=True)
class Plot:
    """Data limits mapped onto an SVG canvas; the right margin holds the legend, outside the data."""
    xlim: tuple[float, float]
    ylim: tuple[float, float]
    w: int = 640
    h: int = 420
    left: int = 70
    right: int = 230
    top: int = 40
    bottom: int = 56

    def x(self, v: float) -> float:
        lo, hi = self.xlim
        return self.left + (v - lo) / ((hi - lo) or 1.0) * (self.w - self.left - self.right)

    def y(self, v: float) -> float:
        lo, hi = self.ylim
        return self.h - self.bottom - (v - lo) / ((hi - lo) or 1.0) * (self.h - self.top - self.bottom)

    def pts(self, xs, ys) -> str:
        return " ".join(f"{self.x(float(a)):.1f},{self.y(float(b)):.1f}" for a, b in zip(xs, ys))

    def vline(self, v: float, colour: str, dash: str = "", width: float = 2, label: str = "", row: int = 0) -> str:
        """A vertical marker across the plot; its label sits above the frame, `row` lines higher."""
        d = f' stroke-dasharray="{dash}"' if dash else ""
        text = (f'<text x="{self.x(v):.1f}" y="{self.top - 5 - 15 * row}" text-anchor="middle" fill="{colour}" '
                f'font-weight="bold">{_e(label)}</text>') if label else ""
        return (f'<line x1="{self.x(v):.1f}" y1="{self.top}" x2="{self.x(v):.1f}" y2="{self.h - self.bottom}" '
                f'stroke="{colour}" stroke-width="{width}"{d}/>{text}')

    def render(self, body: list[str], *, title: str, xlabel: str, ylabel: str, legend: Sequence[Legend],
               cls: str, xfmt=lambda v: f"{v:.4g}", yfmt=lambda v: f"{v:.3g}",
               yticks: Sequence[tuple[float, str]] | None = None) -> str:
        x0, x1, y0, y1 = self.left, self.w - self.right, self.top, self.h - self.bottom
        grid = []
        for v in nice_ticks(*self.xlim):
            grid.append(f'<line x1="{self.x(v):.1f}" y1="{y0}" x2="{self.x(v):.1f}" y2="{y1}" stroke="#eee"/>'
                        f'<text x="{self.x(v):.1f}" y="{y1 + 16}" text-anchor="middle">{_e(xfmt(v))}</text>')
        for v, text in yticks if yticks is not None else ((v, yfmt(v)) for v in nice_ticks(*self.ylim)):
            grid.append(f'<line x1="{x0}" y1="{self.y(v):.1f}" x2="{x1}" y2="{self.y(v):.1f}" stroke="#eee"/>'
                        f'<text x="{x0 - 6}" y="{self.y(v) + 4:.1f}" text-anchor="end">{_e(text)}</text>')
        keys, ly, lx = [], self.top + 8, x1 + 16
        for item in legend:
            swatch = {"dash": f'<line x1="{lx}" y1="{ly}" x2="{lx + 26}" y2="{ly}" stroke="{item.colour}" '
                              f'stroke-width="2" stroke-dasharray="5 3"/>',
                      "dot": f'<circle cx="{lx + 13}" cy="{ly}" r="5" fill="{item.colour}"/>',
                      "ring": f'<circle cx="{lx + 13}" cy="{ly}" r="5" fill="none" stroke="{item.colour}" '
                              f'stroke-width="2"/>',
                      "area": f'<rect x="{lx}" y="{ly - 6}" width="26" height="12" fill="{item.colour}" '
                              f'fill-opacity="0.4" stroke="{item.colour}"/>'}.get(
                item.style, f'<line x1="{lx}" y1="{ly}" x2="{lx + 26}" y2="{ly}" stroke="{item.colour}" '
                            f'stroke-width="3"/>')
            lines = textwrap.wrap(item.label, max(8, (self.right - 56) // 7))  # ~7 px per character at 12 px
            text = "".join(f'<tspan x="{lx + 34}" dy="{0 if i == 0 else 15}">{_e(t)}</tspan>'
                           for i, t in enumerate(lines))
            keys.append(f'{swatch}<text x="{lx + 34}" y="{ly + 4}">{text}</text>')
            ly += 15 * len(lines) + 9
        return (f'<svg class="chart {cls}" xmlns="http://www.w3.org/2000/svg" width="{self.w}" height="{self.h}" '
                f'viewBox="0 0 {self.w} {self.h}" font-size="12" font-family="sans-serif">'
                f'<text x="{(x0 + x1) / 2}" y="16" text-anchor="middle" font-size="15" font-weight="bold">'
                f'{_e(title)}</text>' + "".join(grid)
                + f'<rect x="{x0}" y="{y0}" width="{x1 - x0}" height="{y1 - y0}" fill="none" stroke="#888"/>'
                + "".join(body) + "".join(keys)
                + f'<text x="{(x0 + x1) / 2}" y="{self.h - 12}" text-anchor="middle">{_e(xlabel)}</text>'
                f'<text x="16" y="{(y0 + y1) / 2}" text-anchor="middle" transform="rotate(-90 16 {(y0 + y1) / 2})">'
                f'{_e(ylabel)}</text></svg>')


def _unavailable(what: str, exc: Exception) -> str:
    return f"<p class='na'>{_e(what)} not available: {_e(exc)}</p>"


def _span(values: Sequence[float]) -> tuple[float, float]:
    lo, hi = float(min(values)), float(max(values))
    pad = 0.03 * ((hi - lo) or abs(hi) or 1.0)
    return lo - pad, hi + pad


# ---------------------------------------------------------------- operating-point charts
def tradeoff_svg(scores, labels, threshold: float, alternatives: Sequence[tuple[str, float]] = ()) -> str:
    """False-reject and escape rate against the threshold, one chart: the trade-off an operating point is
    picked from. The chosen threshold is a solid line; alternatives are lettered dashed lines."""
    try:
        u, fr, esc = M.rate_curves(scores, labels)
    except M.MetricError as exc:
        return _unavailable("The false-reject / escape chart", exc)
    merged: dict[float, list[str]] = {}
    for name, t in alternatives:
        merged.setdefault(float(t), []).append(name)
    xlo, xhi = _span([*u, threshold, *merged])
    p = Plot((xlo, xhi), (0.0, 1.0), w=960, h=480, right=300, top=58)
    edges = np.r_[xlo, u, xhi]
    xs = np.repeat(edges, 2)[1:-1]
    body = [(f'<polyline class="fr" points="{p.pts(xs, np.repeat(np.r_[fr, 0.0], 2))}" fill="none" '
            f'stroke="{FR_COLOUR}" stroke-width="2.5"/>'),
            (f'<polyline class="escape" points="{p.pts(xs, np.repeat(np.r_[esc, 1.0], 2))}" fill="none" '
            f'stroke="{ESCAPE_COLOUR}" stroke-width="2.5"/>')]
    legend = [Legend("false-reject rate (good parts rejected)", FR_COLOUR),
              Legend("escape rate (defective parts passed)", ESCAPE_COLOUR)]
    for i, (t, names) in enumerate(sorted(merged.items())):
        letter = "ABCDEFGH"[i % 8]
        body.append(p.vline(t, ALT_COLOUR, "5 3", 1.5, letter))
        legend.append(Legend(f"{letter}: {' = '.join(names)} {t:.4g}", ALT_COLOUR, "dash"))
    body.append(p.vline(threshold, CHOSEN, width=2.5, label="chosen", row=1))
    j = int(np.searchsorted(u, threshold, "left"))  # threshold in (u[j-1], u[j]]
    at_fr, at_esc = (float(fr[j]), float(esc[j])) if j < u.size else (0.0, 1.0)
    for v, colour in ((at_fr, FR_COLOUR), (at_esc, ESCAPE_COLOUR)):
        body.append(f'<circle cx="{p.x(threshold):.1f}" cy="{p.y(v):.1f}" r="5" fill="{colour}" stroke="#fff"/>')
    legend.append(Legend(f"chosen {threshold:.4g}: rejects {pct(at_fr)}, passes {pct(at_esc)}", CHOSEN))
    return p.render(body, title="False rejects and escapes vs threshold", cls="tradeoff",
                    xlabel="threshold (image score; at or above = NG)", ylabel="share of parts",
                    legend=legend, yfmt=pct)


def strip_svg(scores, labels, types, threshold: float | None) -> str:
    """Every image's score as a dot, one row per type (good first): where each type sits against the
    threshold, and which images land on the wrong side (red rings). Boxes span the middle half."""
    s, y, t = np.asarray(scores, float), np.asarray(labels), np.asarray([str(v) for v in types])
    if s.size == 0:
        return "<p class='na'>Per-type score chart not available: no images were scored.</p>"
    rows = (["good"] if (y == 0).any() else []) + sorted(set(t[y == 1]))
    lim = _span([*s, *([threshold] if threshold is not None else [])])
    p = Plot(lim, (-0.5, len(rows) - 0.5), w=960, h=110 + 52 * len(rows), left=190, right=300, top=54)
    rng = np.random.default_rng(0)  # fixed jitter: the same report draws the same picture
    body, ticks = [], []
    for r, name in enumerate(rows):
        sel = (y == 0) if name == "good" else ((y == 1) & (t == name))
        v = s[sel]
        row = len(rows) - 1 - r  # first row on top
        colour = GOOD if name == "good" else DEFECT
        if threshold is None:
            wrong = np.zeros(v.size, bool)
        else:
            wrong = v >= threshold if name == "good" else v < threshold
        q1, med, q3 = np.percentile(v, (25, 50, 75))
        body.append(f'<rect x="{p.x(q1):.1f}" y="{p.y(row + 0.32):.1f}" width="{max(p.x(q3) - p.x(q1), 1):.1f}" '
                    f'height="{p.y(row - 0.32) - p.y(row + 0.32):.1f}" fill="{colour}" fill-opacity="0.12" '
                    f'stroke="{colour}"/><line x1="{p.x(med):.1f}" y1="{p.y(row + 0.32):.1f}" x2="{p.x(med):.1f}" '
                    f'y2="{p.y(row - 0.32):.1f}" stroke="{colour}" stroke-width="2"/>')
        for val, bad, dy in zip(v, wrong, rng.uniform(-0.25, 0.25, v.size)):
            ring = f' stroke="{WRONG}" stroke-width="2"' if bad else ""
            body.append(f'<circle class="pt-{"wrong" if bad else "ok"}" cx="{p.x(val):.1f}" cy="{p.y(row + dy):.1f}" '
                        f'r="3" fill="{colour}" fill-opacity="0.6"{ring}/>')
        what = "rejected" if name == "good" else "missed"
        ticks.append((row, f"{name}: {int(wrong.sum())}/{v.size} {what}" if threshold is not None
                      else f"{name} ({v.size})"))
    legend = [Legend("good image", GOOD, "dot"), Legend("defective image", DEFECT, "dot"),
              Legend("wrong verdict at the threshold", WRONG, "ring")]
    if threshold is not None:
        body.append(p.vline(threshold, CHOSEN, width=2.5, label=f"threshold {threshold:.4g}"))
    return p.render(body, title="Scores per type", cls="strip", xlabel="image score", ylabel="",
                    legend=legend, yticks=ticks)


# ---------------------------------------------------------------- ML charts
def roc_svg(scores, labels) -> str:
    try:
        fpr, tpr, _ = M.roc_curve(scores, labels)
    except M.MetricError as exc:
        return _unavailable("ROC", exc)
    auc = M.auroc(scores, labels)
    p = Plot((0.0, 1.0), (0.0, 1.0), w=600, h=420, right=220)
    body = [f'<polyline points="{p.pts([0, 1], [0, 1])}" fill="none" stroke="#aaa" stroke-dasharray="4 3"/>',
            f'<polyline id="roc" points="{p.pts(fpr, tpr)}" fill="none" stroke="{WRONG}" stroke-width="2.5"/>']
    return p.render(body, title="ROC curve", cls="roc", xlabel="good parts rejected (false-positive rate)",
                    ylabel="defects caught (true-positive rate)", yfmt=pct, xfmt=pct,
                    legend=[Legend(f"ROC, AUROC {auc:.4f}", WRONG), Legend("chance", "#aaa", "dash")])


def pr_svg(scores, labels, threshold: float | None) -> str:
    """Precision vs recall of the NG class, the chosen threshold marked: what share of rejects are real."""
    try:
        recall, precision, _ = M.pr_curve(scores, labels)
    except M.MetricError as exc:
        return _unavailable("The precision-recall curve", exc)
    y = np.asarray(labels)
    share = float((y == 1).mean())
    p = Plot((0.0, 1.0), (0.0, 1.0), w=600, h=420, right=220)
    body = [f'<polyline points="{p.pts([0, 1], [share, share])}" fill="none" stroke="#aaa" stroke-dasharray="4 3"/>',
            (f'<polyline class="pr" points="{p.pts(recall, precision)}" fill="none" stroke="#8e44ad" '
            f'stroke-width="2.5"/>')]
    legend = [Legend(f"PR curve, average precision {M.average_precision(scores, labels):.3f}", "#8e44ad"),
              Legend(f"chance (defect share {share:.2f})", "#aaa", "dash")]
    if threshold is not None:
        c = M.confusion(scores, labels, threshold)
        prec = c["precision"] if c["tp"] + c["fp"] else 1.0
        body.append(f'<circle cx="{p.x(c["recall"]):.1f}" cy="{p.y(prec):.1f}" r="6" fill="{CHOSEN}" '
                    f'stroke="#fff"/>')
        legend.append(Legend(f"threshold: recall {c['recall']:.2f}, precision {prec:.2f}", CHOSEN, "dot"))
    return p.render(body, title="Precision-recall curve", cls="pr", legend=legend, yfmt=pct, xfmt=pct,
                    xlabel="recall: defects caught", ylabel="precision: rejects that are defective")


def pro_svg(curve: dict | None, aupro: float | None, fpr_limit: float) -> str:
    """Per-region overlap vs the share of good pixels flagged, up to the FPR limit AUPRO integrates."""
    if not curve:
        return "<p class='na'>PRO curve not available: it needs defective images with ground-truth masks.</p>"
    fpr, pro = curve["fpr"], curve["pro"]
    p = Plot((0.0, fpr_limit), (0.0, 1.0), w=600, h=420, right=220)
    area = p.pts([0.0, *fpr, fpr[-1]], [0.0, *pro, 0.0])
    body = [f'<polygon points="{area}" fill="#16a085" fill-opacity="0.15" stroke="none"/>',
            f'<polyline class="pro" points="{p.pts(fpr, pro)}" fill="none" stroke="#16a085" stroke-width="2.5"/>']
    label = f"PRO, AUPRO {aupro:.3f}" if aupro is not None else "PRO"
    return p.render(body, title="Per-region overlap (PRO) curve", cls="pro", xfmt=pct, yfmt=pct,
                    xlabel="good pixels flagged (pixel false-positive rate)",
                    ylabel="mean share of each defect covered", legend=[Legend(label, "#16a085", "area")])


def hist_svg(scores, labels, threshold: float | None, bins: int = 30) -> str:
    s, y = np.asarray(scores, float), np.asarray(labels)
    lo, hi = _span([*s, *([threshold] if threshold is not None and np.isfinite(threshold) else [])])
    edges = np.linspace(lo, hi, bins + 1)
    fr = {c: np.histogram(s[y == c], edges)[0] / max((y == c).sum(), 1) for c in (0, 1)}
    p = Plot((lo, hi), (0.0, max(float(max(f.max() for f in fr.values())), 1e-9) * 1.05), w=600, h=420, right=220)
    body, legend = [], []
    for c, col, name in ((0, GOOD, "good"), (1, DEFECT, "defective")):
        if not (y == c).any():
            continue
        xs, ys = np.repeat(edges, 2)[1:-1], np.repeat(fr[c], 2)
        body.append(f'<polygon class="hist-{name}" points="{p.pts(np.r_[lo, xs, hi], np.r_[0, ys, 0])}" '
                    f'fill="{col}" fill-opacity="0.4" stroke="{col}"/>')
        legend.append(Legend(f"{name} (n={(y == c).sum()})", col, "area"))
    if threshold is not None and np.isfinite(threshold):
        body.append(p.vline(threshold, CHOSEN, "5 3"))
        legend.append(Legend(f"threshold {threshold:.4g}", CHOSEN, "dash"))
    return p.render(body, title="Score distribution", cls="hist", xlabel="image score", ylabel="fraction of class",
                    legend=legend, yfmt=pct)


def loss_svg(loss: Sequence[float]) -> str:
    v = np.asarray(loss, float)
    v = v[np.isfinite(v)]
    if v.size < 2:
        return "<p class='na'>Loss curve: fewer than two finite values.</p>"
    p = Plot((0.0, float(v.size - 1)), (float(v.min()), float(v.max()) if v.max() > v.min() else float(v.min()) + 1),
             w=600, h=420, right=220)
    body = [f'<polyline points="{p.pts(np.arange(v.size), v)}" fill="none" stroke="#27ae60" stroke-width="2"/>']
    return p.render(body, title="Training loss", cls="loss", xlabel="step", ylabel="loss",
                    legend=[Legend("self-supervised loss", "#27ae60")])
