"""Self-contained HTML evaluation report (inline SVG charts, PNG gallery, every image in a sortable table).

The report is what an engineer reads before deploying a bundle, so it leads with what the line will see
(false rejects and escapes at the threshold and its alternatives), then the ML figures, in plain words;
every sentence in `advice` is computed from the metrics, never canned. Nothing external: charts are SVG
(trainer.charts), gallery images are cv2 PNGs, and the only script sorts the image table.
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
from linesight.export.overlay import colour_bar, overlay
from linesight.trainer import charts
from linesight.trainer import metrics as M
from linesight.trainer.compare import Comparison

log = logging.getLogger(__name__)
GALLERY_N = 8
PANEL_H = 256  # gallery panels are scaled to at most this height


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
    outline), with the ground-truth mask outlined thick white | the colour bar of that scale."""
    shape = (rec.image if rec.image is not None else rec.anomaly_map).shape[:2]
    img = _to_bgr8(rec.image) if rec.image is not None else np.zeros((*shape, 3), np.uint8)
    over = img.copy()
    half = max((vmax - vmin) / 2, 1e-12)
    if rec.anomaly_map is not None:
        m = np.asarray(rec.anomaly_map, np.float32)
        if m.shape[:2] != shape:
            m = cv2.resize(m, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
        over = overlay(img, m - vmin, half, alpha=0.5)
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
    gap = np.full((img.shape[0], 4, 3), 255, np.uint8)
    return np.hstack([img, gap, over, gap, colour_bar(img.shape[0], half, offset=vmin)])


def basis_text(a: dict | None) -> str:
    """One line in an engineer's words from an image's analysis: score against the threshold, the suspicious
    areas, the worst one's type and size, and the most similar spot in the good training images."""
    if not a:
        return ""
    b = a.get("basis", {})
    n = b.get("regions_total", 0)
    parts = [f"score is {b.get('score_ratio')} x the threshold",
             f"{n or 'no'} area{'' if n == 1 else 's'} above the pixel threshold"]
    if b.get("grade") is not None:
        parts.append(f"grade {b['grade']} (rule {b.get('basis')})")
    if b.get("regions"):
        r = b["regions"][0]
        how = "learned from labeled examples" if r.get("type_source") == "learned" else "shape rules"
        if r.get("learned_type") == "unknown":
            how += "; no labeled example was close"
        parts.append(f"worst area looks like {r['type']} ({100 * r['confidence']:.0f}% sure, {how}), "
                     f"{r['bbox'][2]}x{r['bbox'][3]} px")
    ev = b.get("evidence")
    if ev:
        if ev.get("image_name"):
            y, x = ev["patch_yx"]
            where = f"{ev['image_name']} (model grid cell row {y}, column {x})"
        else:
            where = f"memory-bank entry {ev['row']} (the bundle does not record its training image)"
        parts.append(f"most similar spot in the good training images: {where}, still {ev['distance']:.3g} away "
                     "(0 = identical; the score measures this distance)")
    return " · ".join(parts)


def _verdict(score: float, threshold: float | None) -> str:
    return "n/a" if threshold is None else ("NG" if score >= threshold else "OK")


def _gallery(outdir: Path, records: list[ReportRecord], threshold: float | None,
             pixel_threshold: float | None = None) -> tuple[str, dict[str, str]]:
    """The 8 worst-placed good and defective images as panels -> (HTML, {record path: panel file})."""
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
    parts, panels = [], {}
    for kind, title, recs in (("good", "Highest-scoring good images (false-reject candidates)", goods),
                              ("defect", "Lowest-scoring defective images (escape candidates)", bads)):
        if not recs:
            continue
        n_wrong = sum((r.score >= threshold) == (r.label == 0) for r in recs) if threshold is not None else 0
        parts.append(f"<h3>{_e(title)}: {n_wrong} of {len(recs)} shown are misclassified</h3><div class='gal'>")
        for i, r in enumerate(recs):
            rel = f"gallery/{kind}_{i:02d}.png"
            if not cv2.imwrite(str(outdir / rel), render_panel(r, vmin, vmax)):
                raise LinesightError(f"report: cannot write {outdir / rel}; check disk space and permissions")
            panels[r.path] = rel
            basis = basis_text(r.analysis)
            parts.append(f"<figure><a href='{_e(rel)}'><img src='{_e(rel)}' alt='{_e(r.path)}'></a><figcaption>"
                         f"{_e(Path(r.path).name)} &middot; {_e(r.defect_type)} &middot; score {r.score:.4g} "
                         f"&middot; {_verdict(r.score, threshold)}"
                         + (f"<br><span class='basis'>{_e(basis)}</span>" if basis else "")
                         + "</figcaption></figure>")
        parts.append("</div>")
    return "".join(parts) or "<p>No images or maps were supplied for the gallery.</p>", panels


def images_table(records: list[ReportRecord], threshold: float | None, panels: dict[str, str]) -> str:
    """Every evaluated image in one table (sortable by any column, filterable to the wrong verdicts)."""
    head = ["#", "file", "type", "truth", "score", "score / threshold", "verdict", "correct", "areas", "panel"]
    rows, n_wrong = [], 0
    for i, r in enumerate(records):
        v = _verdict(r.score, threshold)
        ok = v == "n/a" or (v == "NG") == (r.label == 1)
        n_wrong += not ok
        ratio = r.score / threshold if threshold else None
        areas = (r.analysis or {}).get("basis", {}).get("regions_total", "")
        src = Path(r.path)
        link = f"<a href='{_e(src.absolute().as_uri())}'>{_e(src.name)}</a>"
        panel = f"<a href='{_e(panels[r.path])}'>view</a>" if r.path in panels else ""
        rows.append(f"<tr class='{'ok' if ok else 'wrong'}'><td>{i + 1}</td><td data-v='{_e(src.name)}'>{link}</td>"
                    f"<td>{_e(r.defect_type)}</td><td>{'defective' if r.label else 'good'}</td>"
                    f"<td data-v='{r.score!r}'>{r.score:.4g}</td>"
                    f"<td data-v='{'' if ratio is None else repr(ratio)}'>"
                    f"{'n/a' if ratio is None else f'{ratio:.3f}'}</td>"
                    f"<td>{v}</td><td>{'yes' if ok else 'NO'}</td><td>{_e(areas)}</td><td>{panel}</td></tr>")
    return (f"<p>All {len(records)} images ({n_wrong} with a wrong verdict at the threshold). Click a column "
            "heading to sort; the file name opens the original image.</p>"
            "<p><label><input type='checkbox' id='only-wrong'> show only wrong verdicts</label></p><div class='scroll'>"
            "<table class='sortable images'><thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head)
            + "</tr></thead><tbody>" + "".join(rows) + "</tbody></table></div>")


# ---------------------------------------------------------------- production figures and comparison
POLICY_WORDS = {"no_false_reject": "every good part passes", "no_miss": "every defect caught",
                "fewest_errors": "fewest wrong verdicts", "f1_optimal": "best F1 (precision and recall balanced)"}


def _ci(count: int, n: int) -> str:
    """The 95 % Wilson interval of count/n in percent (an exact 0 stays 0, not 1.7e-16)."""
    lo, hi = (0.0 if abs(v) < 1e-12 else 100 * v for v in M.wilson_interval(count, n))
    return f"{lo:.2g}&ndash;{hi:.2g}%"


def _rate(count: int, n: int) -> tuple[str, str, str]:
    """(count of n, percent with its 95 % Wilson interval, ppm) as printed; n = 0 gives n/a."""
    if not n:
        return "n/a", "n/a", "n/a"
    return (f"{count} of {n}", f"{100 * count / n:.1f}% <small>({_ci(count, n)})</small>",
            f"{1e6 * count / n:,.0f}")


def production_section(points: list[M.OperatingPoint], policy: str | None) -> str:
    """False rejects and escapes at the chosen threshold (headline) and at each alternative policy."""
    if not points:
        return ""
    chosen = points[0]

    def kpi(count: int, n: int, what: str, parts: str) -> str:
        if not n:
            return f"<div class='kpi'><b>n/a</b>{what}<br><small>no {parts} evaluated</small></div>"
        return (f"<div class='kpi'><b>{100 * count / n:.1f}%</b>{what}<br><small>{count} of {n} {parts} &middot; "
                f"{1e6 * count / n:,.0f} ppm<br>95% CI {_ci(count, n)}</small></div>")

    kpis = (f"<div class='kpis'>{kpi(chosen.false_rejects, chosen.n_good, 'false-reject rate', 'good parts rejected')}"
            f"{kpi(chosen.escapes, chosen.n_defect, 'escape rate', 'defective parts passed')}<div class='kpi'><b>"
            f"{_thr(chosen.threshold)}</b>threshold<br><small>{_e(policy or 'given')}: NG when score &ge; "
            f"threshold</small></div></div>")
    rows = []
    for i, p in enumerate(points):
        name = (f"<b>chosen</b> (the bundle's, {_e(policy or 'given')})" if i == 0
                else f"{_e(POLICY_WORDS.get(p.name, p.name))} <small>({_e(p.name)})</small>")
        fr, esc = _rate(p.false_rejects, p.n_good), _rate(p.escapes, p.n_defect)
        cls = " class='chosen'" if i == 0 else ""
        rows.append(f"<tr{cls}><td>{name}</td><td>{_thr(p.threshold)}</td>"
                    + "".join(f"<td>{c}</td>" for c in (*fr, *esc)) + "</tr>")
    one = (f" One image moves the false-reject rate by {100 / chosen.n_good:.2g} points and the escape rate by "
           f"{100 / chosen.n_defect:.2g}." if chosen.n_good and chosen.n_defect else "")
    return ("<h2 id='production'>Production figures</h2>" + kpis +
            "<p>What the line would see. <b>False-reject rate</b>: good parts rejected, per good part. "
            "<b>Escape rate</b>: defective parts passed as OK, per defective part (escapes per million parts "
            "shipped = escape rate &times; your line's defect rate). ppm = per million. In brackets: the 95% "
            "confidence interval, the range the true rate is in given how few parts were measured. The alternatives "
            f"are thresholds chosen on this very evaluation set, so their figures are optimistic.{one}</p>"
            "<table class='production'><thead><tr><th>operating point</th><th>threshold</th><th>false rejects"
            "</th><th>false-reject rate</th><th>false-reject ppm</th><th>escapes</th><th>escape rate</th>"
            "<th>escape ppm</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>")


def _cmp_value(v: float | None, kind: str) -> str:
    if v is None:
        return "n/a"
    return f"{100 * v:.1f}%" if kind == "rate" else _thr(v) if kind == "threshold" else f"{v:.4f}"


def _cmp_delta(v: float | None, kind: str) -> str:
    if v is None:
        return "n/a"
    return f"{100 * v:+.1f} pp" if kind == "rate" else f"{v:+.4g}" if kind == "threshold" else f"{v:+.4f}"


def compare_section(c: Comparison | None) -> str:
    """Old vs new, each figure with its change coloured green (better) or red (worse)."""
    if c is None:
        return ""
    rows = "".join(f"<tr class='{r.change or ''}'><td>{_e(r.name)}</td><td>{_cmp_value(r.old, r.kind)}</td>"
                   f"<td>{_cmp_value(r.new, r.kind)}</td><td>{_cmp_delta(r.delta, r.kind)}"
                   f"{'' if r.change in (None, 'same') else f' ({r.change})'}</td></tr>" for r in c.rows)
    notes = "".join(f"<div class='warn'>&#9888; {_e(n)}</div>" for n in c.notes)
    return (f"<h2 id='compare'>Compared with the previous evaluation</h2><p>Old: {_e(c.source)}. Each side at its own "
            "threshold; pp = percentage points.</p>" + notes +
            "<table class='compare'><thead><tr><th>figure</th><th>old</th><th>new</th><th>change</th></tr></thead>"
            "<tbody>" + rows + "</tbody></table>")


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
    parts = [(f"<h2>Defect analysis per type</h2><p>The same analysis the line runs (export.analysis), on every "
             f"test image: the areas above the pixel threshold {_thr(a.get('pixel_threshold'))} measured, grouped by "
             f"the folder the image came from. 'rule type' = the type the shape rules (size, length, elongation; no "
             f"labeled examples needed) give most often to this folder's areas, and how often: a high share means "
             f"the rules name this defect consistently. 'final types' = the types reported, after any learned "
             f"classifier.</p>"),
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


CSS = """\
body{font-family:sans-serif;margin:24px;max-width:1400px;color:#222}table{border-collapse:collapse;margin:8px 0}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}.warn{background:#fdecea;border:2px solid #c0392b;
padding:10px;margin:8px 0;font-weight:bold}.charts svg{margin:0 16px 16px 0;vertical-align:top}
.gal figure{display:inline-block;margin:6px;vertical-align:top}.gal img{max-width:640px;border:1px solid #ccc}
figcaption{font-size:12px;max-width:640px}.basis{color:#555}.kpis{display:flex;gap:16px;margin:12px 0}
.kpi{border:1px solid #ccc;border-radius:6px;padding:10px 18px;min-width:220px}.kpi b{display:block;font-size:28px}
tr.chosen td{background:#fff5d6;font-weight:bold}tr.wrong td{background:#fdecea}tr.better td:last-child{color:#1e8449}
tr.worse td:last-child{color:#c0392b;font-weight:bold}table.sortable th{cursor:pointer;background:#f4f4f4}
table.sortable th:after{content:" ↕";color:#aaa}.explain{color:#444;max-width:1100px}
.scroll{max-height:70vh;overflow:auto;display:inline-block;border:1px solid #ccc}.scroll table{margin:0}
.scroll th{position:sticky;top:0}"""

#: The page's only script: sort the image table by a clicked column, and hide correct verdicts on request.
SORT_JS = """document.querySelectorAll('table.sortable').forEach(function(t){
t.querySelectorAll('th').forEach(function(th,i){th.addEventListener('click',function(){
var b=t.tBodies[0],rows=Array.prototype.slice.call(b.rows),asc=th.getAttribute('data-dir')!=='asc';
t.querySelectorAll('th').forEach(function(h){h.removeAttribute('data-dir');});th.setAttribute('data-dir',asc?'asc':'desc');
function key(r){var c=r.cells[i];return c.hasAttribute('data-v')?c.getAttribute('data-v'):c.textContent;}
rows.sort(function(a,c){var x=key(a),y=key(c),nx=parseFloat(x),ny=parseFloat(y);
var d=(!isNaN(nx)&&!isNaN(ny))?nx-ny:x.localeCompare(y);return asc?d:-d;});
rows.forEach(function(r){b.appendChild(r);});});});});
var w=document.getElementById('only-wrong');if(w){w.addEventListener('change',function(){
document.querySelectorAll('table.images tbody tr.ok').forEach(function(r){r.style.display=w.checked?'none':'';});});}"""

ML_WORDS = ("<p class='explain'><b>Image AUROC</b>: the chance that a randomly picked defective image scores above a "
            "randomly picked good one (1 = always, 0.5 = coin toss); it does not depend on the threshold. "
            "<b>Pixel AUROC</b>: the same for single pixels inside vs outside the ground-truth defect outlines. "
            "<b>AUPRO</b>: how much of each defect's area is flagged, averaged over defects, while flagging at most "
            "{limit} of the good pixels (1 = every defect fully covered). <b>F1 max</b>: the best balance of "
            "precision (rejects that are defective) and recall (defects caught) any threshold reaches.</p>")


def write_report(outdir: Path, metrics: dict, records: list[ReportRecord], *, title: str, notes: list[str],
                 provenance: dict, loss_curve: list[float] | None = None,
                 n_train_images: int | None = None, pixel_threshold: float | None = None,
                 comparison: Comparison | None = None) -> Path:
    """Write outdir/report.html (+ outdir/gallery/*.png) and return the HTML path."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    thr = metrics.get("chosen_threshold")
    scores, labels = [r.score for r in records], [int(r.label) for r in records]
    m, cm = metrics, metrics.get("confusion_matrix") or {}
    points = M.operating_points(scores, labels, thr) if records and thr is not None else []
    limit = m.get("aupro_fpr_limit", 0.3)
    summary = [["images (good / defective)", f"{m.get('n_images')} ({m.get('n_good')} / {m.get('n_defect')})"],
               ["image AUROC", _fmt(m.get("image_auroc"))], ["pixel AUROC", _fmt(m.get("pixel_auroc"))],
               [f"AUPRO (good pixels flagged ≤ {100 * limit:.0f}%)", _fmt(m.get("aupro"))],
               ["F1 max", _fmt(m.get("f1_max"))],
               ["precision at the threshold (rejects that are defective)", _fmt(m.get("precision"))],
               ["recall at the threshold (defects caught)", _fmt(m.get("recall"))],
               ["accuracy at the threshold", _fmt(m.get("accuracy"))],
               ["pixel threshold that would be F1-optimal here", _thr(m.get("pixel_threshold"))]]
    conf = (f"<table class='confusion'><tr><th></th><th>predicted OK</th><th>predicted NG</th></tr>"
            f"<tr><th>good</th><td>{cm.get('tn', 'n/a')}</td><td>{cm.get('fp', 'n/a')}</td></tr>"
            f"<tr><th>defective</th><td>{cm.get('fn', 'n/a')}</td><td>{cm.get('tp', 'n/a')}</td></tr></table>")
    types = [[t, d.get("n"), _fmt(d.get("image_auroc")), _fmt(d.get("pixel_auroc")), _fmt(d.get("aupro")),
              "n/a" if d.get("recall_at_threshold") is None else f"{100 * d['recall_at_threshold']:.1f}%",
              _fmt(d.get("mean_score"))] for t, d in sorted(m.get("per_type", {}).items())]
    prov = [[k, v if isinstance(v, (str, int, float)) or v is None else json.dumps(v, default=str)]
            for k, v in provenance.items()]
    tips = advice(metrics, n_train_images=n_train_images)
    gallery, panels = _gallery(outdir, records, thr, pixel_threshold)
    choose = [charts.tradeoff_svg(scores, labels, thr, [(p.name, p.threshold) for p in points[1:]]),
              charts.strip_svg(scores, labels, [r.defect_type for r in records], thr)] if points else []
    ml_charts = [charts.roc_svg(scores, labels), charts.pr_svg(scores, labels, thr),
                 charts.pro_svg(m.get("pro_curve"), m.get("aupro"), limit),
                 charts.hist_svg(scores, labels, thr)] if records else []
    body = [f"<h1>{_e(title)}</h1>",
            *(f"<div class='warn'>&#9888; {_e(n)}</div>" for n in notes),
            production_section(points, m.get("threshold_policy")),
            compare_section(comparison),
            ("<h2 id='operating-point'>Choosing an operating point</h2>"
            "<p class='explain'>Moving the threshold right rejects fewer good "
            "parts and passes more defective ones. The first chart shows both rates for every threshold (the "
            "chosen one solid, the alternatives of the table above lettered); the second shows every image's "
            "score by type, so you can see which defect types cross the threshold first.</p>"
            "<div class='charts'>"), *choose, "</div>",
            "<h2>Findings</h2>",
            "<ul>" + "".join(f"<li>{_e(t)}</li>" for t in tips) + "</ul>" if tips else "<p>None.</p>",
            "<h2 id='ml'>Model quality (ML figures)</h2>", ML_WORDS.format(limit=f"{100 * limit:.0f}%"),
            _table(["metric", "value"], summary, "summary"),
            f"<h3>Confusion matrix at threshold {_e(_thr(thr))}</h3>", conf,
            "<div class='charts'>", *ml_charts, charts.loss_svg(loss_curve) if loss_curve is not None else "",
            "</div><h2>Per defect type</h2>",
            _table(["type", "n", "image AUROC (vs good)", "pixel AUROC", "AUPRO", "caught at threshold", "mean score"],
                   types, "per-type"),
            baseline_section(m),
            analysis_section(m.get("analysis")),
            ("<h2 id='gallery'>Gallery</h2>"
            "<p class='explain'>Left: the original image. Middle: where the model sees anything "
            "unusual, coloured by the scale on the right (blue = like the good images, green = at the pixel "
            "threshold, red = far above it; thin white outline = areas above the pixel threshold) with the "
            "true defect outline (ground truth) in thick white. Under each image: why it got its verdict.</p>"),
            gallery,
            "<h2 id='images'>All images</h2>", images_table(records, thr, panels),
            "<h2>How this was measured</h2>", _table(["item", "value"], prov, "provenance")]
    path = outdir / "report.html"
    path.write_text(f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{_e(title)}</title>"
                    f"<style>{CSS}</style></head><body>{''.join(body)}<script>{SORT_JS}</script></body></html>",
                    encoding="utf-8")
    log.info("report written", extra={"path": str(path), "n_records": len(records), "n_advice": len(tips)})
    return path
