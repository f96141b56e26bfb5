"""Score a labeled set through the engine (the one inference path), then calibrate or report.

The evaluation report explains itself with the daemon's own defect analysis (`export.analysis`):
measured regions per ground-truth type, learned-type figures, causes/actions from a knowledge base and
each gallery image's basis. `baseline` scores a second bundle (by default a random-init one fitted in
the same run) on the same images, so the report's numbers stand next to a reference measured alongside.
"""
from __future__ import annotations

import json
import logging
import statistics
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from linesight.config.inspection import MAX_REGIONS
from linesight.config.manifest import CalibrationResult, CalibrationTarget, Thresholds
from linesight.errors import DataError, LinesightError, validation_problems
from linesight.export.bundle import load_bundle, new_revision, rewrite_manifest
from linesight.export.engine import Engine
from linesight.export.images import read_image
from linesight.trainer import compare as C
from linesight.trainer import metrics as M
from linesight.trainer.calibration import ThresholdRefused, choose_image_threshold
from linesight.trainer.data import Sample, fingerprint, open_dataset, read_mask
from linesight.trainer.progress import Progress
from linesight.trainer.report import ReportRecord, advice, write_report

if TYPE_CHECKING:
    from linesight.config.inspection import InspectionSpec, KnowledgeBase
    from linesight.export.prediction import Prediction

log = logging.getLogger(__name__)
STALE_THRESHOLDS = "thresholds were calibrated before the domain changed: recalibrate (linesight calibrate)"


def score_samples(engine: Engine, samples: list[Sample], keep_images: bool = False,
                  analyse: Callable[[np.ndarray, Prediction], dict] | None = None,
                  keep_features: bool = False) -> tuple[list[ReportRecord], list[str]]:
    """Every test image through the engine; unreadable images are reported and skipped.

    `analyse(image, prediction)` (optional) returns the image's defect analysis (to_header_dict form),
    kept on the record; `keep_features` hands the patch features to it (learned types).
    """
    records, skipped = [], []
    prog = Progress("scoring", len(samples))
    for i, s in enumerate(samples):
        try:
            img = read_image(s.path)
            mask = read_mask(s, img.shape[:2])
        except DataError as exc:
            log.warning("skipping %s: %s", s.path, exc)
            skipped.append(f"{s.path.name}: {exc}")
            continue
        pred = engine.predict_batch([img], regions=False, keep_features=keep_features)[0]
        records.append(ReportRecord(path=str(s.path), label=s.label, defect_type=s.defect_type, score=pred.score,
                                    image=img if keep_images else None, anomaly_map=pred.anomaly_map,
                                    mask=mask if s.label else np.zeros(img.shape[:2], np.uint8),
                                    analysis=analyse(img, pred) if analyse is not None else None))
        prog(i + 1)
    return records, skipped


def _labeled(dataset: str | Path) -> list[Sample]:
    ds = open_dataset(dataset)
    if not ds.test:
        raise DataError(f"{ds.root} has no test/ folder with labeled images (test/good, test/<defect type>)")
    return ds.test


def calibrate(bundle_path: str | Path, dataset: str | Path, target: CalibrationTarget | None = None, *,
              policy: str | None = None, force: bool = False) -> Thresholds:
    """Choose thresholds on labeled data by the line's targets (or a named `policy`) and write them into the
    bundle's manifest with the rates they achieve. A threshold breaking a target raises ThresholdRefused and
    is not written, unless `force`."""
    target = target or CalibrationTarget()
    engine = Engine(bundle_path)
    samples = _labeled(dataset)
    records, _ = score_samples(engine, samples)
    scores = np.array([r.score for r in records])
    labels = np.array([r.label for r in records])
    if labels.sum() == 0:
        raise DataError(f"{dataset}: calibration needs defective images too (only good ones found)")
    if labels.sum() == labels.size:
        raise DataError(f"{dataset}: calibration needs good images in test/good: without them the false-reject "
                        "rate (good parts scrapped) cannot be measured")
    choice = choose_image_threshold(scores, labels, target, policy)
    if choice.refusal and not force:
        raise ThresholdRefused(f"{choice.refusal}; not written: loosen the target or pass --force to write it")
    pixel, area = M.pixel_threshold_for_area([r.anomaly_map for r in records if r.label == 0],
                                             target.max_false_pixel_area)
    fp = fingerprint([s.path for s in samples], Path(dataset))
    th = Thresholds(image=choice.threshold, pixel=float(pixel), policy=choice.policy, calibrated=True,
                    source=f"calibrated on {len(records)} labeled images of {Path(dataset).name} "
                           f"(fingerprint {fp[:12]})",
                    candidates={k: float(v) for k, v in M.image_thresholds(scores, labels).items()},
                    calibration=CalibrationResult(target=target, false_reject=choice.false_reject,
                                                  escape=choice.escape, false_pixel_area=area,
                                                  met=choice.refusal is None, forced=choice.refusal is not None))
    manifest = engine.manifest.model_copy(deep=True)
    manifest.thresholds = th
    manifest.warnings = [w for w in manifest.warnings if w != STALE_THRESHOLDS]
    new_revision(manifest, f"thresholds calibrated ({choice.policy}{', forced' if choice.refusal else ''})")
    rewrite_manifest(bundle_path, manifest)
    if choice.refusal:
        log.warning("thresholds written despite: %s", choice.refusal)
    log.info("thresholds written: image %.4f (%s, false reject %.3g %%, escape %.3g %%), pixel %.4f",
             th.image, choice.policy, 100 * choice.false_reject.rate, 100 * choice.escape.rate, th.pixel)
    return th


def set_domain(bundle_path: str | Path, mode: str, *, mask: str | Path | None = None, dark: bool = False,
               erode_px: int = 0) -> None:
    """Store an ROI (mask image) or automatic foreground in the bundle and re-record the golden scores,
    which change with the domain. Thresholds stay: scores can only drop; recalibrate for the best choice."""
    import cv2

    from linesight.config.manifest import DomainInfo
    from linesight.export.bundle import write_bundle

    bundle = load_bundle(bundle_path)
    bundle.extras.pop("roi_mask.png", None)
    info = DomainInfo(mode=mode, auto_polarity="dark" if dark else "bright", erode_px=erode_px)
    if mode == "mask":
        if mask is None:
            raise DataError("--mask PNG is needed for an ROI mask (white = inspect, black = ignore)")
        m = read_image(mask)
        m = m if m.ndim == 2 else m[..., 0]
        if not (m > 0).any():
            raise DataError(f"ROI mask {mask} is all black: nothing would be inspected")
        bundle.extras["roi_mask.png"] = cv2.imencode(".png", ((m > 0) * 255).astype(np.uint8))[1].tobytes()
        info.mask_file = "roi_mask.png"
    bundle.manifest.domain = info
    if bundle.manifest.thresholds.calibrated and STALE_THRESHOLDS not in bundle.manifest.warnings:
        bundle.manifest.warnings.append(STALE_THRESHOLDS)
        log.warning("%s", STALE_THRESHOLDS.upper())
    new_revision(bundle.manifest, f"domain {mode}")
    engine = Engine(bundle)
    for g in bundle.manifest.golden:
        img = cv2.imdecode(np.frombuffer(bundle.golden[g.file.removeprefix("golden/")], np.uint8), cv2.IMREAD_UNCHANGED)
        g.score = engine.predict(img).score
    write_bundle(bundle_path, bundle)
    log.info("domain %s written to %s; golden scores re-recorded", mode, bundle_path)


def _analyser(engine: Engine, spec: InspectionSpec | None, kb: KnowledgeBase | None,
              classifier) -> Callable[[np.ndarray, Prediction], dict]:
    """The daemon's chain (measure -> type -> grade -> advise) for one evaluated image, as a header dict."""
    from linesight.export import analysis as A

    def run(img: np.ndarray, pred: Prediction) -> dict:
        a = A.analyze(pred, engine.pixel_threshold, img, spec=spec, kb=kb, evidence=pred.nearest,
                      max_regions=MAX_REGIONS, classifier=classifier)
        return A.to_header_dict(a)

    return run


def _median(vals: list[float]) -> float | None:
    return round(float(statistics.median(vals)), 2) if vals else None


def type_summary(records: list[ReportRecord]) -> dict[str, dict]:
    """Per ground-truth type: what the analysis measured on its images (regions, sizes, types, advice)."""
    out: dict[str, dict] = {}
    for t in sorted({r.defect_type for r in records}):
        recs = [r for r in records if r.defect_type == t and r.analysis is not None]
        regions = [g for r in recs for g in r.analysis["regions"]]
        rule = Counter(g["shape_type"] for g in regions)
        final = Counter(g["type"] for g in regions)
        learned = [g for g in regions if g.get("learned_type") is not None]
        adv: dict[str, dict] = {}
        for r in recs:
            for a in r.analysis["advice"]:
                e = adv.setdefault(a["entry"], {"entry": a["entry"], "images": 0, "causes": a["causes"],
                                                "actions": a["actions"]})
                e["images"] += 1
        top_rule = rule.most_common(1)[0] if rule else None
        out[t] = {
            "images": len(recs), "images_with_regions": sum(1 for r in recs if r.analysis["regions"]),
            "regions": len(regions),
            "median_area_px": _median([g["area_px"] for g in regions]),
            "median_length_px": _median([g["length_px"] for g in regions]),
            "median_elongation": _median([g["elongation"] for g in regions]),
            "rule_types": dict(rule.most_common()),
            "rule_type_agreement": None if top_rule is None else
            {"type": top_rule[0], "share": round(top_rule[1] / len(regions), 3)},
            "final_types": dict(final.most_common()),
            "learned_regions": len(learned),
            "learned_matches_folder": round(sum(g["type"] == t and g["type_source"] == "learned" for g in learned)
                                            / len(learned), 3) if learned else None,
            "learned_unknown": sum(g["learned_type"] == "unknown" for g in learned),
            "advice": sorted(adv.values(), key=lambda e: -e["images"]),
        }
    return out


def _pixel_metrics(records: list[ReportRecord], threshold: float, policy: str | None = None) -> dict:
    has_masks = any(r.label and r.mask is not None and r.mask.any() for r in records)
    return M.summarize(records, threshold=threshold, threshold_policy=policy, with_pixels=has_masks)


def _open_previous(old: str) -> Callable[[list[Sample], dict], C.Comparison]:
    """Open `--compare OLD` before any scoring, so a wrong path fails at once. The returned step compares it
    with the new metrics: a previous metrics.json as it is, a bundle scored on the same images at its own
    threshold."""
    path = C.metrics_file(old)
    if path is not None:
        previous = C.read_metrics(path)
        return lambda samples, new: C.compare(previous, new, f"previous evaluation {path}")
    try:
        bundle = load_bundle(old)
    except LinesightError as exc:
        raise DataError(f"--compare {old}: not a metrics.json, an evaluation folder or a bundle ({exc})") from None

    def score(samples: list[Sample], new: dict) -> C.Comparison:
        records, _ = score_samples(Engine(bundle), samples)
        m = bundle.manifest
        return C.compare(_pixel_metrics(records, m.thresholds.image, m.thresholds.policy), new,
                         f"bundle {old} ({m.model.id} v{m.model.version}), scored on the same images in this run")

    return score


def _headline(m: dict) -> dict:
    keys = ("image_auroc", "pixel_auroc", "aupro")
    return {**{k: m.get(k) for k in keys},
            "per_type": {t: {k: d.get(k) for k in keys} for t, d in m.get("per_type", {}).items()}}


def baseline_bundle(bundle_path: str | Path, dataset: str | Path, baseline: str, workdir: Path) -> tuple[Path, str]:
    """`random`: fit a random-init bundle with the evaluated bundle's recipe on DATASET's train/good;
    anything else is the path of another bundle. -> (bundle path, description)."""
    if baseline != "random":
        p = Path(baseline)
        if not p.exists():
            raise DataError(f"--baseline {baseline}: neither 'random' nor an existing bundle path")
        return p, f"bundle {p}"
    from pydantic import ValidationError

    from linesight.config.fit import FitConfig
    from linesight.trainer.fit import fit

    m = load_bundle(bundle_path).manifest
    if not open_dataset(dataset).train:
        raise DataError(f"--baseline random fits on {dataset}/train/good, which holds no images; pass "
                        "--baseline PATH to compare with an existing bundle instead")
    try:
        cfg = FitConfig(model_id=f"{m.model.id}-random-baseline", backbone=m.backbone.name, weights="none",
                        input_size=m.preprocess.input_size[0], embedding_dim=m.features.embedding_dim,
                        coreset={"ratio": m.memory.coreset_ratio}, k=m.scoring.k, reweight=m.scoring.reweight,
                        sigma=m.scoring.sigma, seed=m.memory.seed,
                        views={"resize": m.preprocess.resize,
                               "scales": [s.pixels_per_input or 0 for s in m.scales] if m.scales else None,
                               "tile_overlap": next((s.overlap for s in m.scales if s.mode == "tiles"), None)},
                        frame={"photometric": {"mode": m.frame.photometric.mode},
                               "align": m.frame.align.model_dump(exclude={"reference_file"})})
    except ValidationError as exc:
        raise DataError(f"--baseline random: cannot copy the recipe of {bundle_path} "
                        f"({validation_problems(exc, 'recipe')}); fit a baseline yourself and pass --baseline PATH"
                        ) from exc
    out = workdir / "random-baseline"
    log.info("fitting the random-init baseline (%s, %d px, dim %d)", cfg.backbone, cfg.input_size, cfg.embedding_dim)
    fit(dataset, out, cfg)
    return out, (f"random-init {cfg.backbone} fitted in this run on {Path(dataset).name}/train/good "
                 f"(input {cfg.input_size}, dim {cfg.embedding_dim}, coreset {cfg.coreset.ratio}, k {cfg.k}, "
                 f"scales {cfg.views.scales or [0]}, {cfg.views.resize}; domain none)")


def evaluate(bundle_path: str | Path, dataset: str | Path, outdir: str | Path, *, spec: str | Path | None = None,
             knowledge: str | Path | None = None, baseline: str | None = None, compare: str | None = None) -> dict:
    """Metrics at the bundle's thresholds, metrics.json and report.html in outdir.

    `spec` / `knowledge`: inspection spec and knowledge base YAML for the defect analysis (grades,
    likely causes); `baseline`: "random" or a bundle path, evaluated on the same images alongside;
    `compare`: a previous evaluation (metrics.json, its folder or report.html) or a bundle, shown old vs new.
    """
    from linesight.config.inspection import load_inspection_spec, load_knowledge_base
    from linesight.export.type_classifier import TypeClassifier
    from linesight.outputs import output_folder

    previous = _open_previous(compare) if compare is not None else None
    outdir = output_folder(outdir, "evaluate")
    insp = load_inspection_spec(spec) if spec else None
    kb = load_knowledge_base(knowledge, insp) if knowledge else None
    bundle = load_bundle(bundle_path)
    engine = Engine(bundle)
    classifier = TypeClassifier.from_bundle(bundle)
    samples = _labeled(dataset)
    records, skipped = score_samples(engine, samples, keep_images=True, keep_features=classifier is not None,
                                     analyse=_analyser(engine, insp, kb, classifier))
    m = bundle.manifest
    metrics = _pixel_metrics(records, m.thresholds.image, m.thresholds.policy)
    metrics["dataset"] = {"path": str(dataset), "fingerprint": fingerprint([s.path for s in samples], Path(dataset))}
    metrics["thresholds"] = {**metrics.get("thresholds", {}), "bundle": m.thresholds.model_dump()}
    metrics["skipped"] = skipped
    # every image's score: threshold previews (the UI's Models page) re-apply the calibration rule to these
    metrics["scores"] = [{"file": Path(r.path).name, "label": int(r.label), "defect_type": r.defect_type,
                          "score": float(r.score)} for r in records]
    metrics["model"] = {"id": m.model.id, "version": m.model.version, "backbone": m.backbone.name,
                        "weights": m.backbone.weights.model_dump(), "warnings": m.warnings}
    notes = list(m.warnings)
    if "calibrated on" in m.thresholds.source and Path(dataset).name in m.thresholds.source:
        notes.append("thresholds were calibrated on this same labeled set: precision/recall at the threshold are "
                     "optimistic; AUROC/AUPRO do not depend on the threshold")
    metrics["advice"] = advice(metrics)
    metrics["analysis"] = {
        "pixel_threshold": engine.pixel_threshold, "spec": None if spec is None else str(spec),
        "knowledge": None if knowledge is None else str(knowledge),
        "classifier": None if classifier is None else {
            "method": classifier.method, "types": classifier.labels, "unknown_floor": classifier.floor,
            "dataset": classifier.info.get("dataset"), "cv": classifier.info.get("cv")},
        "per_type": type_summary(records)}
    if baseline is not None:
        with tempfile.TemporaryDirectory(prefix="linesight-baseline-") as tmp:
            path, what = baseline_bundle(bundle_path, dataset, baseline, Path(tmp))
            base_engine = Engine(path)
            base_records, _ = score_samples(base_engine, samples)
            bm = base_engine.manifest
            metrics["baseline"] = {"what": what, "model": f"{bm.model.id} v{bm.model.version}",
                                   "weights": bm.backbone.weights.source,
                                   **_headline(_pixel_metrics(base_records, bm.thresholds.image))}
            del base_records
    comparison = previous(samples, metrics) if previous is not None else None
    if comparison is not None:
        metrics["compare"] = comparison.to_dict()
    (outdir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    provenance = {"model": f"{m.model.id} v{m.model.version}", "backbone": m.backbone.name,
                  "weights": f"{m.backbone.weights.source} ({m.backbone.weights.detail})",
                  "input size": "x".join(map(str, m.preprocess.input_size)), "bank": f"{m.memory.n_bank} x "
                  f"{m.features.embedding_dim}", "k": m.scoring.k, "threshold": f"{m.thresholds.image:.4f} "
                  f"({m.thresholds.policy}; {m.thresholds.source})", "dataset": str(dataset),
                  "engine": engine.provider}
    training = m.backbone.weights.training or {}
    if m.backbone.weights.source == "self":
        notes.append("features were learned from good images + synthetic defects only: no real defect was seen "
                      "in training, early stopping or the default thresholds")
    write_report(outdir, metrics, records, title=f"linesight evaluation: {m.model.id} v{m.model.version}",
                 notes=notes, provenance=provenance, loss_curve=training.get("loss_curve"),
                 pixel_threshold=engine.pixel_threshold, comparison=comparison)
    log.info("evaluation written to %s", outdir)
    return metrics
