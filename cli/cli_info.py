"""`linesight info`: a verified bundle on one screen (what it sees, how it decides, what to watch), or --json.

An engineer checking a bundle before deploying it asks: which model, trained on what, with which views,
frame preparation and domain, which thresholds chosen how, and what warnings. The text answers in that order;
`--json` is the whole manifest plus the identity the daemon reports, for scripts.
"""
from __future__ import annotations

from linesight.config.manifest import Rate, Thresholds
from linesight.export.bundle import Bundle


def info_dict(bundle: Bundle) -> dict:
    """The whole manifest (every field) plus identity, digest and the verification result."""
    return bundle.manifest.model_dump(mode="json", by_alias=True) | {
        "identity": bundle.identity, "digest": bundle.digest, "verified": True}


def _rate(r: Rate, parts: str) -> str:
    lo, hi = r.ci95
    return f"{r.count} of {r.n} {parts} ({100 * r.rate:.3g} %, 95 % CI {100 * lo:.3g}-{100 * hi:.3g} %)"


def _thresholds(th: Thresholds) -> list[str]:
    how = "calibrated on labeled images" if th.calibrated else "not calibrated on labeled images"
    out = [f"image {th.image:.6g} (NG at or above; policy {th.policy}), pixel {th.pixel:.6g}; {how}",
           f"chosen on: {th.source}"]
    if th.candidates:
        out.append("candidates: " + ", ".join(f"{k} {v:.6g}" for k, v in th.candidates.items()))
    c = th.calibration
    if c is not None:
        t = c.target
        target = f"false reject <= {100 * t.max_false_reject:.3g} %" + (
            f", escape <= {100 * t.max_escape:.3g} %" if t.max_escape is not None else "")
        out += [(f"calibration target: {target}, good pixels flagged <= {100 * t.max_false_pixel_area:.3g} %"
                f" -> {'met' if c.met else 'NOT met'}{' (written with --force)' if c.forced else ''}"),
                f"false reject: {_rate(c.false_reject, 'good parts')}",
                f"escape: {_rate(c.escape, 'defective parts')}",
                f"good pixels flagged: {100 * c.false_pixel_area:.3g} %"]
    return out


def _types(bundle: Bundle) -> list[str]:
    from linesight.export.type_classifier import TypeClassifier

    clf = TypeClassifier.from_bundle(bundle)
    if clf is None:
        return ["no learned classifier: regions are typed by the shape rules (add one: linesight types)"]
    cv = clf.info.get("cv") or {}
    acc = f", cross-validated accuracy {cv['accuracy']:.3f}" if "accuracy" in cv else ""
    return [f"learned ({clf.method}): {', '.join(clf.labels)}; unknown below similarity {clf.floor:.3g}{acc}"]


def info_text(bundle: Bundle, where: str) -> str:
    """Human-readable summary of every part of the manifest that changes how parts are judged."""
    m = bundle.manifest
    w = m.backbone.weights
    pre = m.preprocess
    size = "x".join(map(str, pre.input_size))
    scales = [f"{s.name}: " + ("whole frame" if s.mode == "whole" else
                               f"tiles at {s.pixels_per_input:g} frame px per input px, overlap {s.overlap} px")
              + f", bank {s.n_bank} rows of {s.n_patches} patches" for s in m.scales] or [
        f"whole frame, bank {m.memory.n_bank} rows (single-scale bundle)"]
    plan = ["none recorded"]
    if m.plan is not None:
        p = m.plan
        size_px = (f"defects {p.defect_size_px[0]:g}-{p.defect_size_px[1]:g} px" if p.defect_size_px
                   else "no defect size given")
        plan = [f"typical frame {p.frame_hw[1]}x{p.frame_hw[0]} px, {size_px}"
                + (f" ({p.px_per_mm:g} px/mm)" if p.px_per_mm else "") + f", scale fusion {p.fusion}",
                *(f"- {r}" for r in p.reasoning)]
    d = m.domain
    domain = {"none": "whole image inspected",
              "mask": f"ROI mask {d.mask_file} (white = inspected)",
              "auto": f"automatic foreground (part {'darker' if d.auto_polarity == 'dark' else 'brighter'} than "
                      "the background)"}[d.mode] + (f", shrunk by {d.erode_px} px" if d.erode_px else "")
    ph, al = m.frame.photometric, m.frame.align
    frame = [f"lighting: {ph.mode}"
             + (f" (clip {ph.clahe_clip:g}, {ph.clahe_tile} tiles)" if ph.mode == "clahe" else ""),
             f"alignment: {al.mode}" + (f" ({al.method}, max shift {100 * al.max_shift_frac:g} %, max angle "
                                        f"{al.max_angle_deg:g} deg, min quality {al.min_quality:g}, on failure "
                                        f"{al.on_failure})" if al.mode != "none" else "")]
    ds = m.dataset
    sections = [
        ("bundle", [f"{where}: verified (every file's sha256 matches the manifest)"]),
        ("model", [f"{m.model.id} v{m.model.version}, written {m.model.created_at}"]),
        ("hash", [f"{bundle.identity['hash']} (in every verdict); manifest sha256 {bundle.digest}"]),
        ("backbone", [f"{m.backbone.name} ({', '.join(m.backbone.layers)}); weights {w.source}"
                      + ("" if w.pretrained else " - NOT pretrained: accuracy will be poor")
                      + (f": {w.detail}" if w.detail else "")]),
        ("input", [f"{size} px, {pre.resize}, colour {pre.color}"]),
        ("features", [(f"{m.features.embedding_dim}-dim patches on a {m.features.grid[0]}x{m.features.grid[1]} grid "
                      f"(one per {m.features.stride} input px)")]),
        ("scoring", [f"kNN {m.scoring.index}" + (f" (nprobe {m.scoring.nprobe})" if m.scoring.index == "ivf" else "")
                     + f", k {m.scoring.k}, map blur sigma {m.scoring.sigma:g}, "
                     f"reweight {'on' if m.scoring.reweight else 'off'}; "
                     f"coreset {100 * m.memory.coreset_ratio:g} %"]),
        ("scales", scales),
        ("plan", plan),
        ("domain", [domain]),
        ("frame prep", frame),
        ("types", _types(bundle)),
        ("thresholds", _thresholds(m.thresholds)),
        ("trained on", [f"{ds.name}: {ds.n_train} images for the bank, {ds.n_holdout} held out, "
                        f"{len(ds.skipped)} skipped; fingerprint {ds.fingerprint[:12]}"
                        + ("; augmented" if ds.augment else "")]),
        ("golden", [f"{len(m.golden)} images with recorded scores (checked at every load by the daemon)"]),
        ("onnx", [(f"opset {m.onnx.opset}, parity max diff {m.onnx.parity_max_abs_diff:.3g} (tolerance "
                  f"{m.onnx.parity_tolerance:.3g})")]),
        ("software", [", ".join(f"{k} {v}" for k, v in m.software.items())]),
        ("warnings", list(m.warnings) or ["none"]),
    ]
    return "\n".join(f"{(name if i == 0 else ''):<11} {line}" for name, lines in sections
                     for i, line in enumerate(lines))
