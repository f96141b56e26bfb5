"""Score a labeled set through the engine (the one inference path), then calibrate or report."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from linesight.config.manifest import Thresholds
from linesight.errors import DataError
from linesight.export.bundle import load_bundle, rewrite_manifest
from linesight.export.engine import Engine
from linesight.export.images import read_image
from linesight.trainer import metrics as M
from linesight.trainer.data import Sample, fingerprint, open_dataset, read_mask
from linesight.trainer.progress import Progress
from linesight.trainer.report import ReportRecord, advice, write_report

log = logging.getLogger(__name__)

POLICIES = ("no_false_reject", "no_miss", "fewest_errors", "f1_optimal")


def score_samples(engine: Engine, samples: list[Sample], keep_images: bool = False) -> tuple[list[ReportRecord], list[str]]:
    """Every test image through Engine.predict; unreadable images are reported and skipped."""
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
        pred = engine.predict(img)
        records.append(ReportRecord(path=str(s.path), label=s.label, defect_type=s.defect_type, score=pred.score,
                                    image=img if keep_images else None, anomaly_map=pred.anomaly_map,
                                    mask=mask if s.label else np.zeros(img.shape[:2], np.uint8)))
        prog(i + 1)
    return records, skipped


def _labeled(dataset: str | Path) -> list[Sample]:
    ds = open_dataset(dataset)
    if not ds.test:
        raise DataError(f"{ds.root} has no test/ folder with labeled images (test/good, test/<defect type>)")
    return ds.test


def calibrate(bundle_path: str | Path, dataset: str | Path, policy: str = "f1_optimal") -> Thresholds:
    """Choose thresholds on labeled data and write them into the bundle's manifest."""
    if policy not in POLICIES:
        raise DataError(f"unknown threshold policy {policy!r}; choose one of {', '.join(POLICIES)}")
    engine = Engine(bundle_path)
    samples = _labeled(dataset)
    records, _ = score_samples(engine, samples)
    scores = np.array([r.score for r in records])
    labels = np.array([r.label for r in records])
    if labels.sum() == 0:
        raise DataError(f"{dataset}: calibration needs defective images too (only good ones found)")
    cands = M.image_thresholds(scores, labels)
    if policy not in cands:
        raise DataError(f"{dataset}: policy {policy!r} needs both good and defective test images; "
                        f"possible here: {', '.join(cands)}")
    has_masks = any(r.label and r.mask is not None and r.mask.any() for r in records)
    pixel = M.pixel_threshold([r.anomaly_map for r in records], [r.mask for r in records]) if has_masks else cands[policy]
    fp = fingerprint([s.path for s in samples], Path(dataset))
    th = Thresholds(image=float(cands[policy]), pixel=float(pixel), policy=policy,
                    source=f"calibrated on {len(records)} labeled images of {Path(dataset).name} (fingerprint {fp[:12]})",
                    candidates={k: float(v) for k, v in cands.items()})
    manifest = engine.manifest.model_copy(deep=True)
    manifest.thresholds = th
    rewrite_manifest(bundle_path, manifest)
    log.info("thresholds written: image %.4f (%s), pixel %.4f", th.image, policy, th.pixel)
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
    engine = Engine(bundle)
    for g in bundle.manifest.golden:
        img = cv2.imdecode(np.frombuffer(bundle.golden[g.file.removeprefix("golden/")], np.uint8), cv2.IMREAD_UNCHANGED)
        g.score = engine.predict(img).score
    write_bundle(bundle_path, bundle)
    log.info("domain %s written to %s; golden scores re-recorded", mode, bundle_path)


def evaluate(bundle_path: str | Path, dataset: str | Path, outdir: str | Path) -> dict:
    """Metrics at the bundle's thresholds, metrics.json and report.html in outdir."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    bundle = load_bundle(bundle_path)
    engine = Engine(bundle)
    samples = _labeled(dataset)
    records, skipped = score_samples(engine, samples, keep_images=True)
    m = bundle.manifest
    has_masks = any(r.label and r.mask is not None and r.mask.any() for r in records)
    metrics = M.summarize(records, threshold=m.thresholds.image, with_pixels=has_masks)
    metrics["thresholds"] = {**metrics.get("thresholds", {}), "bundle": m.thresholds.model_dump()}
    metrics["skipped"] = skipped
    metrics["model"] = {"id": m.model.id, "version": m.model.version, "backbone": m.backbone.name,
                        "weights": m.backbone.weights.model_dump(), "warnings": m.warnings}
    notes = list(m.warnings)
    if "calibrated on" in m.thresholds.source and Path(dataset).name in m.thresholds.source:
        notes.append("thresholds were calibrated on this same labeled set: precision/recall at the threshold are "
                     "optimistic; AUROC/AUPRO do not depend on the threshold")
    metrics["advice"] = advice(metrics)
    (outdir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    provenance = {"model": f"{m.model.id} v{m.model.version}", "backbone": m.backbone.name,
                  "weights": f"{m.backbone.weights.source} ({m.backbone.weights.detail})",
                  "input size": "x".join(map(str, m.preprocess["input_size"])), "bank": f"{m.memory.n_bank} x "
                  f"{m.features.embedding_dim}", "k": m.scoring.k, "threshold": f"{m.thresholds.image:.4f} "
                  f"({m.thresholds.policy}; {m.thresholds.source})", "dataset": str(dataset),
                  "engine": engine.provider}
    training = m.backbone.weights.training or {}
    if m.backbone.weights.source == "self":
        notes.append("features were learned from good images + synthetic defects only: no real defect was seen "
                      "in training, early stopping or the default thresholds")
    write_report(outdir, metrics, records, title=f"linesight evaluation: {m.model.id} v{m.model.version}",
                 notes=notes, provenance=provenance, loss_curve=training.get("loss_curve"))
    log.info("evaluation written to %s", outdir)
    return metrics
