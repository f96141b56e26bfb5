"""Self-contained HTML evaluation report (inline SVG charts, PNG gallery) plus derived advice.

The report is what an operator reads before deploying a bundle, so it states the numbers and
the trade-offs plainly; every sentence in `advice` is computed from the metrics, never canned.
No matplotlib: charts are hand-written SVG, gallery images are cv2 PNGs.
"""
from __future__ import annotations

import html
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from linesight.errors import LinesightError
from linesight.export.overlay import overlay
from linesight.trainer.metrics import MetricError, roc_curve

log = logging.getLogger(__name__)
GALLERY_N = 8
PANEL_H = 256  # gallery panels are scaled to at most this height
W, H, PAD = 380, 260, 44  # SVG chart size and margin


@dataclass
class ReportRecord:
    """One evaluated image. image: original (gray/BGR, uint8/uint16); map: float32, same HxW."""
    path: str
    label: int
    defect_type: str
    score: float
    image: np.ndarray | None = field(default=None, repr=False)
    anomaly_map: np.ndarray | None = field(default=None, repr=False)
    mask: np.ndarray | None = field(default=None, repr=False)
    analysis: dict | None = field(default=None, repr=False)  # export.analysis.to_header_dict() of this image


def _e(x) -> str:
    return html.escape(str(x))


def _fmt(v, nd: int = 4) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, (bool, int, np.integer)):
        return str(v)
    return f"{float(v):.{nd}f}" if abs(float(v)) < 1e4 else f"{float(v):.{nd}g}"


def _thr(v) -> str:
    return "n/a" if v is None else f"{float(v):.6g}"


# ---------------------------------------------------------------- advice
def advice(metrics: dict, *, n_train_images: int | None = None, type_auroc_min: float = 0.8) -> list[str]:
    """Plain sentences derived from the metrics: what is weak, by how much, and what to try."""
    out: list[str] = []
    auc, pix = metrics.get("image_auroc"), metrics.get("pixel_auroc")
    n_good, n_def = metrics.get("n_good", 0), metrics.get("n_defect", 0)
    if auc is None:
        out.append("Image AUROC could not be computed: the evaluation set needs both good and defective "
                   f"images (it has {n_good} good, {n_def} defective).")
    elif auc < 0.65:
        out.append(f"The model barely separates good from defective (image AUROC {auc:.2f}; 0.5 is chance): "
                   "check the feature weights (pretrained?), the input size, and that the training set "
                   "really contains only good images.")
    if auc is not None and pix is not None and pix >= 0.9 and auc < 0.8:
        out.append(f"Defects are localised well (pixel AUROC {pix:.2f}) but image scores overlap "
                   f"(image AUROC {auc:.2f}): hot spots on good images drive their scores up; look at the "
                   "false-reject gallery for recurring structures (edges, fixtures) to crop or mask.")
    for t, d in sorted(metrics.get("per_type", {}).items()):
        a = d.get("image_auroc")
        if a is not None and a < type_auroc_min:
            out.append(f"{t} scores overlap good (AUROC {a:.2f}, {d.get('n')} images): try a larger input "
                       "size or a higher-resolution preset.")
    th, at = metrics.get("thresholds", {}), metrics.get("at_thresholds", {})
    nfr, nm = th.get("no_false_reject"), th.get("no_miss")
    if nfr is not None and nm is not None:
        if nfr > nm and "no_miss" in at and "no_false_reject" in at:
            fp, fn = at["no_miss"]["fp"], at["no_false_reject"]["fn"]
            out.append(f"No threshold passes every good image and catches every defect: at the no-miss "
                       f"threshold {_thr(nm)}, {fp} of {n_good} good images ({100 * fp / max(n_good, 1):.1f}%) "
                       f"are rejected; at the no-false-reject threshold {_thr(nfr)}, {fn} of {n_def} "
                       f"defects ({100 * fn / max(n_def, 1):.1f}%) are missed.")
        elif nfr <= nm:
            out.append(f"On this evaluation set every threshold in [{_thr(nfr)}, {_thr(nm)}] passes all good "
                       "images and catches all defects; the margin is only as reliable as the set is "
                       "representative.")
    cm, t0 = metrics.get("confusion_matrix"), metrics.get("chosen_threshold")
    if cm and cm.get("fn", 0) > 0:
        missed = [f"{t} {d['n'] - round(d['recall_at_threshold'] * d['n'])}/{d['n']}"
                  for t, d in sorted(metrics.get("per_type", {}).items()) if d.get("recall_at_threshold", 1) < 1]
        out.append(f"At the chosen threshold {_thr(t0)} ({metrics.get('threshold_policy') or 'given'}), "
                   f"{cm['fn']} defective images are missed ({', '.join(missed)}).")
    if 0 < n_def < 20:
        out.append(f"Only {n_def} defective images were evaluated: one image moves recall by "
                   f"{100 / n_def:.0f} points, so treat these numbers as rough.")
    if 0 < n_good < 20:
        out.append(f"Only {n_good} good images were evaluated: one image moves the false-reject rate by "
                   f"{100 / n_good:.0f} points.")
    if n_train_images is not None and n_train_images < 30:
        out.append(f"Only {n_train_images} training images: the memory bank sees little normal variation; "
                   "add good images covering lighting, position and part-to-part variation.")
    if n_def and pix is None:
        out.append("No ground-truth masks: pixel AUROC and AUPRO were not computed.")
    return out


# ---------------------------------------------------------------- SVG charts
def _svg(body: list[str], xlim, ylim, xlabel: str, ylabel: str, title: str) -> str:
    ticks = []
    for i, f in enumerate((0.0, 0.5, 1.0)):
        x, y = PAD + f * (W - 2 * PAD), H - PAD - f * (H - 2 * PAD)
        ticks.append(f'<text x="{x:.1f}" y="{H - PAD + 14}" text-anchor="middle">'
                     f'{xlim[0] + f * (xlim[1] - xlim[0]):.3g}</text>')
        ticks.append(f'<text x="{PAD - 4}" y="{y + 4:.1f}" text-anchor="end">{ylim[0] + f * (ylim[1] - ylim[0]):.3g}</text>')
    return (f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
            f'viewBox="0 0 {W} {H}" font-size="10" font-family="sans-serif">'
            f'<text x="{W / 2}" y="14" text-anchor="middle" font-size="12">{_e(title)}</text>'
            f'<rect x="{PAD}" y="{PAD}" width="{W - 2 * PAD}" height="{H - 2 * PAD}" fill="none" stroke="#888"/>'
            + "".join(ticks) + "".join(body) +
            f'<text x="{W / 2}" y="{H - 8}" text-anchor="middle">{_e(xlabel)}</text>'
            f'<text x="12" y="{H / 2}" text-anchor="middle" transform="rotate(-90 12 {H / 2})">{_e(ylabel)}</text></svg>')


def _pts(xs, ys, xlim, ylim) -> str:
    sx = (W - 2 * PAD) / ((xlim[1] - xlim[0]) or 1.0)
    sy = (H - 2 * PAD) / ((ylim[1] - ylim[0]) or 1.0)
    return " ".join(f"{PAD + (x - xlim[0]) * sx:.1f},{H - PAD - (y - ylim[0]) * sy:.1f}" for x, y in zip(xs, ys))


def roc_svg(scores, labels) -> str:
    try:
        fpr, tpr, _ = roc_curve(scores, labels)
    except MetricError as e:
        return f"<p>ROC not available: {_e(e)}</p>"
    auc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    lim = (0.0, 1.0)
    return _svg([f'<polyline points="{_pts([0, 1], [0, 1], lim, lim)}" fill="none" stroke="#aaa" stroke-dasharray="4 3"/>',
                 f'<polyline id="roc" points="{_pts(fpr, tpr, lim, lim)}" fill="none" stroke="#c0392b" stroke-width="2"/>',
                 f'<text x="{W - PAD - 6}" y="{H - PAD - 8}" text-anchor="end" font-size="12">AUROC {auc:.4f}</text>'],
                lim, lim, "false positive rate (good rejected)", "true positive rate (defects caught)", "ROC curve")


def hist_svg(scores, labels, threshold: float | None, bins: int = 30) -> str:
    s, y = np.asarray(scores, float), np.asarray(labels)
    lo, hi = float(s.min()), float(s.max())
    if threshold is not None and np.isfinite(threshold):
        lo, hi = min(lo, threshold), max(hi, threshold)
    hi = hi if hi > lo else lo + 1.0
    edges = np.linspace(lo, hi, bins + 1)
    fr = {c: np.histogram(s[y == c], edges)[0] / max((y == c).sum(), 1) for c in (0, 1)}
    ylim = (0.0, max(float(max(f.max() for f in fr.values())), 1e-9) * 1.05)
    body = []
    for c, col, name in ((0, "#2e86de", "good"), (1, "#e67e22", "defective")):
        if not (y == c).any():
            continue
        xs, ys = np.repeat(edges, 2)[1:-1], np.repeat(fr[c], 2)
        pts = _pts(np.r_[lo, xs, hi], np.r_[0, ys, 0], (lo, hi), ylim)
        body.append(f'<polygon class="hist-{name}" points="{pts}" fill="{col}" fill-opacity="0.4" stroke="{col}"/>')
        body.append(f'<text x="{PAD + 6}" y="{PAD + 14 + 14 * c}" fill="{col}">{name} (n={(y == c).sum()})</text>')
    if threshold is not None and np.isfinite(threshold):
        body.append(f'<polyline points="{_pts([threshold] * 2, ylim, (lo, hi), ylim)}" stroke="#c0392b" '
                    f'stroke-width="2" stroke-dasharray="5 3"/><text x="{W - PAD - 6}" y="{PAD + 14}" '
                    f'text-anchor="end" fill="#c0392b">threshold {threshold:.4g}</text>')
    return _svg(body, (lo, hi), ylim, "image score", "fraction of class", "Score distribution")


def loss_svg(loss: list[float]) -> str:
    v = np.asarray(loss, float)
    v = v[np.isfinite(v)]
    if v.size < 2:
        return "<p>Loss curve: fewer than two finite values.</p>"
    xlim, ylim = (0.0, float(v.size - 1)), (float(v.min()), float(v.max()) if v.max() > v.min() else float(v.min()) + 1)
    return _svg([f'<polyline points="{_pts(np.arange(v.size), v, xlim, ylim)}" fill="none" stroke="#27ae60" stroke-width="2"/>'],
                xlim, ylim, "step", "loss", "Training loss")


# ---------------------------------------------------------------- gallery
def _to_bgr8(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.dtype != np.uint8:  # uint16/float: stretch robustly so 10/12-bit data is visible
        lo, hi = np.percentile(img, (0.5, 99.5))
        img = np.clip((img.astype(np.float32) - lo) * (255.0 / max(hi - lo, 1e-6)), 0, 255).astype(np.uint8)
    if img.ndim == 2 or img.shape[2] == 1:
        return cv2.cvtColor(img.reshape(img.shape[:2]), cv2.COLOR_GRAY2BGR)
    return np.ascontiguousarray(img[:, :, :3])


def render_panel(rec: ReportRecord, vmin: float, vmax: float) -> np.ndarray:
    """original | the product's overlay (export.overlay: the same colours as `predict --overlay` and the HMI)
    of the map on the colour scale [vmin, vmax] (mid-scale = the threshold, whose regions get a thin white
    outline), with the ground-truth mask outlined thick white."""
    shape = (rec.image if rec.image is not None else rec.anomaly_map).shape[:2]
    img = _to_bgr8(rec.image) if rec.image is not None else np.zeros((*shape, 3), np.uint8)
    over = img.copy()
    if rec.anomaly_map is not None:
        m = np.asarray(rec.anomaly_map, np.float32)
        if m.shape[:2] != shape:
            m = cv2.resize(m, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
        over = overlay(img, m - vmin, max((vmax - vmin) / 2, 1e-12), alpha=0.5)
    if rec.mask is not None:
        k = (np.asarray(rec.mask) > 0).astype(np.uint8)
        if k.shape[:2] != shape:
            k = cv2.resize(k, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(k, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(over, contours, -1, (255, 255, 255), 2)
    f = min(1.0, PANEL_H / shape[0])
    if f < 1.0:
        size = (max(1, round(shape[1] * f)), PANEL_H)
        img, over = (cv2.resize(x, size, interpolation=cv2.INTER_AREA) for x in (img, over))
    return np.hstack([img, np.full((img.shape[0], 4, 3), 255, np.uint8), over])


def basis_text(a: dict | None) -> str:
    """One line from an image's analysis: score vs threshold, regions, worst region's type, nearest normal."""
    if not a:
        return ""
    b = a.get("basis", {})
    parts = [f"score/threshold {b.get('score_ratio')}", f"{b.get('regions_total', 0)} region(s)"]
    if b.get("grade") is not None:
        parts.append(f"grade {b['grade']} ({b.get('basis')})")
    if b.get("regions"):
        r = b["regions"][0]
        kind = f"{r['type']} {r['confidence']:.2f} ({r.get('type_source', 'rules')}"
        kind += ", learned: unknown)" if r.get("learned_type") == "unknown" else ")"
        parts.append(f"worst region: {kind}, {r['bbox'][2]}x{r['bbox'][3]} px")
    ev = b.get("evidence")
    if ev:
        where = f"{ev['image_name']} patch {ev['patch_yx']}" if ev.get("image_name") else f"bank row {ev['row']}"
        parts.append(f"nearest normal: {where}, distance {ev['distance']:.3g}")
    return " · ".join(parts)


def _gallery(outdir: Path, records: list[ReportRecord], threshold: float | None,
             pixel_threshold: float | None = None) -> str:
    shown = [r for r in records if r.image is not None or r.anomaly_map is not None]
    maps = [r.anomaly_map for r in shown if r.anomaly_map is not None]
    vmin = min((float(np.min(m)) for m in maps), default=0.0)
    vmax = max((float(np.max(m)) for m in maps), default=1.0)
    mid = pixel_threshold if pixel_threshold is not None and np.isfinite(pixel_threshold) else threshold
    if mid is not None and np.isfinite(mid) and mid > vmin:
        vmin = min(vmin, 0.0)
        vmax = 2 * mid - vmin  # the (pixel) threshold sits mid-scale (green); red = well above it
    goods = sorted((r for r in shown if r.label == 0), key=lambda r: -r.score)[:GALLERY_N]
    bads = sorted((r for r in shown if r.label == 1), key=lambda r: r.score)[:GALLERY_N]
    (outdir / "gallery").mkdir(parents=True, exist_ok=True)
    parts = []
    for kind, title, recs in (("good", "Highest-scoring good images (false-reject candidates)", goods),
                              ("defect", "Lowest-scoring defective images (miss candidates)", bads)):
        if not recs:
            continue
        n_wrong = sum((r.score >= threshold) == (r.label == 0) for r in recs) if threshold is not None else 0
        parts.append(f"<h3>{_e(title)}: {n_wrong} of {len(recs)} shown are misclassified</h3><div class='gal'>")
        for i, r in enumerate(recs):
            rel = f"gallery/{kind}_{i:02d}.png"
            if not cv2.imwrite(str(outdir / rel), render_panel(r, vmin, vmax)):
                raise LinesightError(f"report: cannot write {outdir / rel}; check disk space and permissions")
            verdict = "n/a" if threshold is None else ("NG" if r.score >= threshold else "OK")
            basis = basis_text(r.analysis)
            parts.append(f"<figure><img src='{_e(rel)}' alt='{_e(r.path)}'><figcaption>{_e(Path(r.path).name)} "
                         f"&middot; {_e(r.defect_type)} &middot; score {r.score:.4g} &middot; {verdict}"
                         + (f"<br><span class='basis'>{_e(basis)}</span>" if basis else "")
                         + "</figcaption></figure>")
        parts.append("</div>")
    return "".join(parts) or "<p>No images or maps were supplied for the gallery.</p>"


# ---------------------------------------------------------------- analysis and baseline sections
def baseline_section(m: dict) -> str:
    """This bundle next to the baseline scored on the same images in the same run (image/pixel AUROC, AUPRO)."""
    b = m.get("baseline")
    if not b:
        return ""
    keys = (("image_auroc", "image AUROC"), ("pixel_auroc", "pixel AUROC"), ("aupro", "AUPRO"))
    header = ["", *(f"{name} {who}" for _, name in keys for who in ("(this)", "(baseline)"))]
    rows = [["overall", *(_fmt(d.get(k)) for k, _ in keys for d in (m, b))]]
    for t, d in sorted(m.get("per_type", {}).items()):
        bd = b.get("per_type", {}).get(t, {})
        rows.append([t, *(_fmt(x.get(k)) for k, _ in keys for x in (d, bd))])
    return (f"<h2>Baseline, measured in the same run</h2><p>Baseline: {_e(b.get('what'))} "
            f"({_e(b.get('model'))}, weights {_e(b.get('weights'))}), scored on exactly the same test images.</p>"
            + _table(header, rows, "baseline"))


def _cv_section(cv: dict | None, clf: dict) -> str:
    if not cv:
        return "<p>The bundle's classifier carries no cross-validation figures.</p>"
    rows, cols, mat = cv["confusion"]["rows"], cv["confusion"]["cols"], cv["confusion"]["matrix"]
    head = (f"<p>Learned types ({_e(clf.get('method'))}; trained with `linesight types` on "
            f"{_e(clf.get('dataset'))}): {cv['n_regions']} ground-truth regions from {cv['n_images']} images, "
            f"{cv['folds']}-fold cross-validation grouped by image. Accuracy {_fmt(cv['accuracy'], 3)}, balanced "
            f"{_fmt(cv['balanced_accuracy'], 3)}, unknown rate {_fmt(cv['unknown_rate'], 3)} (unknown counts as an "
            f"error).</p>")
    conf = _table(["true \\ predicted", *cols, "recall"],
                  [[t, *row, _fmt(cv["per_type_recall"][t], 3)] for t, row in zip(rows, mat)], "types-cv")
    return head + conf


def analysis_section(a: dict | None) -> str:
    """Per ground-truth type: what the defect analysis measured, learned-type figures, causes/actions."""
    if not a:
        return ""
    per = a.get("per_type", {})
    rows = []
    for t, d in per.items():
        agree = d.get("rule_type_agreement")
        rows.append([t, d["images"], d["images_with_regions"], d["regions"], _fmt(d["median_area_px"], 1),
                     _fmt(d["median_length_px"], 1), _fmt(d["median_elongation"], 2),
                     "n/a" if agree is None else f"{agree['type']} {100 * agree['share']:.0f}%",
                     ", ".join(f"{k} {v}" for k, v in d["final_types"].items()) or "-"])
    parts = [f"<h2>Defect analysis per type</h2><p>The daemon's analysis (export.analysis) run on every test "
             f"image at the pixel threshold {_thr(a.get('pixel_threshold'))}: regions measured per ground-truth "
             f"folder. 'rule type' = the most common shape-rule class and its share (how consistently the "
             f"label-free rules name this folder's regions).</p>",
             _table(["type (folder)", "images", "with regions", "regions", "median area px", "median length px",
                     "median elongation", "rule type (share)", "final types"], rows, "analysis")]
    clf = a.get("classifier")
    if clf:
        parts.append("<h3>Learned defect types</h3>" + _cv_section(clf.get("cv"), clf))
        learned = [[t, d["learned_regions"], _fmt(d["learned_matches_folder"], 3), d["learned_unknown"]]
                   for t, d in per.items() if d["learned_regions"]]
        if learned:
            parts.append("<p>On the measured regions of this run (the classifier may have been trained on these "
                         "very images: trust the cross-validated figures above, not these):</p>"
                         + _table(["type (folder)", "regions typed", "learned = folder", "unknown"], learned,
                                  "learned"))
    else:
        parts.append("<p>No learned type classifier in this bundle (regions are typed by the shape rules); "
                     "`linesight types BUNDLE DATASET` adds one.</p>")
    parts.append("<h3>Likely causes and actions</h3>")
    if not a.get("knowledge"):
        parts.append("<p>No knowledge base given (<code>--knowledge KB.yaml</code>): no causes or actions.</p>")
    else:
        items = [[t, e["entry"], e["images"], "; ".join(e["causes"]), "; ".join(e["actions"])]
                 for t, d in per.items() for e in d["advice"]]
        parts.append(f"<p>Knowledge base {_e(a['knowledge'])}"
                     + (f", inspection spec {_e(a['spec'])}" if a.get("spec") else "")
                     + ": entries that matched, by ground-truth folder (trend conditions cannot hold in an "
                       "offline evaluation).</p>"
                     + (_table(["type (folder)", "entry", "images", "likely causes", "actions"], items, "advice")
                        if items else "<p>No entry matched any evaluated image.</p>"))
    return "".join(parts)


# ---------------------------------------------------------------- page
def _table(header: list[str], rows: list[list], cls: str = "") -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table class='{cls}'><tr>{head}</tr>{body}</table>"


CSS = """body{font-family:sans-serif;margin:24px;max-width:1200px;color:#222}table{border-collapse:collapse;margin:8px 0}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}.warn{background:#fdecea;border:2px solid #c0392b;
padding:10px;margin:8px 0;font-weight:bold}.charts svg{margin-right:16px}.gal figure{display:inline-block;margin:6px}
.gal img{max-width:560px;border:1px solid #ccc}figcaption{font-size:12px;max-width:560px}.basis{color:#555}"""


def write_report(outdir: Path, metrics: dict, records: list[ReportRecord], *, title: str, notes: list[str],
                 provenance: dict, loss_curve: list[float] | None = None,
                 n_train_images: int | None = None, pixel_threshold: float | None = None) -> Path:
    """Write outdir/report.html (+ outdir/gallery/*.png) and return the HTML path."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    thr = metrics.get("chosen_threshold")
    scores, labels = [r.score for r in records], [int(r.label) for r in records]
    m, cm = metrics, metrics.get("confusion_matrix") or {}
    summary = [["images (good / defective)", f"{m.get('n_images')} ({m.get('n_good')} / {m.get('n_defect')})"],
               ["image AUROC", _fmt(m.get("image_auroc"))], ["pixel AUROC", _fmt(m.get("pixel_auroc"))],
               [f"AUPRO (FPR ≤ {m.get('aupro_fpr_limit', 0.3)})", _fmt(m.get("aupro"))], ["F1 max", _fmt(m.get("f1_max"))],
               ["chosen threshold", f"{_thr(thr)} ({m.get('threshold_policy') or 'given'})"],
               ["precision (NG)", _fmt(m.get("precision"))], ["recall (NG)", _fmt(m.get("recall"))],
               ["accuracy", _fmt(m.get("accuracy"))], ["pixel F1-optimal threshold", _thr(m.get("pixel_threshold"))]]
    at = m.get("at_thresholds", {})
    th_rows = [[k, _thr(v), at.get(k, {}).get("fp", "n/a"), at.get(k, {}).get("fn", "n/a")]
               for k, v in m.get("thresholds", {}).items() if isinstance(v, (int, float))]  # skip nested info
    conf = (f"<table class='confusion'><tr><th></th><th>predicted OK</th><th>predicted NG</th></tr>"
            f"<tr><th>good</th><td>{cm.get('tn', 'n/a')}</td><td>{cm.get('fp', 'n/a')}</td></tr>"
            f"<tr><th>defective</th><td>{cm.get('fn', 'n/a')}</td><td>{cm.get('tp', 'n/a')}</td></tr></table>")
    types = [[t, d.get("n"), _fmt(d.get("image_auroc")), _fmt(d.get("pixel_auroc")), _fmt(d.get("aupro")),
              _fmt(d.get("recall_at_threshold")), _fmt(d.get("mean_score"))] for t, d in sorted(m.get("per_type", {}).items())]
    prov = [[k, v if isinstance(v, (str, int, float)) or v is None else json.dumps(v, default=str)]
            for k, v in provenance.items()]
    tips = advice(metrics, n_train_images=n_train_images)
    body = [f"<h1>{_e(title)}</h1>",
            *(f"<div class='warn'>&#9888; {_e(n)}</div>" for n in notes),
            "<h2>Findings</h2>", "<ul>" + "".join(f"<li>{_e(t)}</li>" for t in tips) + "</ul>" if tips else "<p>None.</p>",
            "<h2>Provenance</h2>", _table(["item", "value"], prov, "provenance"),
            "<h2>Summary</h2>", _table(["metric", "value"], summary, "summary"),
            "<h2>Thresholds</h2><p>An image is NG when score &ge; threshold.</p>",
            _table(["policy", "threshold", "good rejected", "defects missed"], th_rows, "thresholds"),
            f"<h2>Confusion matrix at threshold {_e(_thr(thr))}</h2>", conf,
            "<h2>Charts</h2><div class='charts'>", roc_svg(scores, labels) if records else "",
            hist_svg(scores, labels, thr) if records else "",
            loss_svg(loss_curve) if loss_curve is not None else "", "</div>",
            "<h2>Per defect type</h2>",
            _table(["type", "n", "image AUROC (vs good)", "pixel AUROC", "AUPRO", "recall at threshold", "mean score"],
                   types, "per-type"),
            baseline_section(m),
            analysis_section(m.get("analysis")),
            "<h2>Gallery</h2><p>Left: original. Right: anomaly map (JET; pixel threshold = mid-scale green, red = "
            "far above; thin white = regions above the pixel threshold) with the ground-truth outline in thick "
            "white. Under each image: the basis of its verdict (the same fields as the daemon's ZMQ header).</p>",
            _gallery(outdir, records, thr, pixel_threshold)]
    path = outdir / "report.html"
    path.write_text(f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{_e(title)}</title>"
                    f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>", encoding="utf-8")
    log.info("report written", extra={"path": str(path), "n_records": len(records), "n_advice": len(tips)})
    return path
