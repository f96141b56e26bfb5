"""fit: good images -> torch backbone -> ONNX -> (same engine code) features -> coreset bank -> bundle."""
from __future__ import annotations

import json
import logging
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np
import torch

from linesight import __version__
from linesight.config.fit import FitConfig
from linesight.config.manifest import (
    BUNDLE_SCHEMA,
    BackboneInfo,
    DatasetInfo,
    DomainInfo,
    FeatureInfo,
    GoldenImage,
    Manifest,
    MemoryInfo,
    ModelInfo,
    OnnxInfo,
    PlanInfo,
    ScaleInfo,
    ScoringInfo,
    Thresholds,
    WeightsInfo,
)
from linesight.errors import DataError
from linesight.export.bundle import (
    BANK_FILE,
    ROI_FILE,
    TRAIN_IMAGES_FILE,
    Bundle,
    bank_bytes,
    check_target,
    load_bundle,
    write_bundle,
)
from linesight.export.domain import Domain
from linesight.export.engine import Engine
from linesight.export.features import OnnxFeatures
from linesight.export.frame_prep import FramePrep, prepare_frame_info
from linesight.export.preprocess import preprocess_batch
from linesight.trainer import onnx_export
from linesight.trainer.augment import augment, augment_sources
from linesight.trainer.backbones import BACKBONES, NOT_PRETRAINED, build_backbone, input_spec, load_weights
from linesight.trainer.compute import (
    check_features,
    check_set,
    choose_index,
    fused_scores,
    int8_candidate,
    int8_verdict,
)
from linesight.trainer.data import fingerprint, holdout_split, load_images, open_dataset
from linesight.trainer.features import PatchFeatures
from linesight.trainer.patches import coreset_banks, extract
from linesight.trainer.plan import make_plan

log = logging.getLogger(__name__)


def software_versions() -> dict[str, str]:
    import faiss
    import onnx
    import onnxruntime

    return {"linesight": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "numpy": np.__version__,
            "faiss": faiss.__version__, "opencv": cv2.__version__}


def plan_scales(cfg: FitConfig, frames: list[np.ndarray]) -> tuple[list[ScaleInfo], PlanInfo]:
    """The views to build banks for, coarsest first: a plan from the defect size range, explicit scales,
    or the single whole-frame view."""
    hw = tuple(int(np.median([f.shape[k] for f in frames])) for k in (0, 1))
    defect_px = None
    if cfg.views.defect_size is not None:
        defect_px = tuple(v * (cfg.views.px_per_mm or 1.0) for v in cfg.views.defect_size)
        scales, why = make_plan(hw, defect_px, cfg.input_size, letterbox=cfg.views.resize == "letterbox",
                                overlap=cfg.overlap)
    elif cfg.views.scales is not None:
        scales, why = [], ["explicit scales from the configuration"]
        for r in cfg.views.scales:
            scales.append(ScaleInfo(name="whole", mode="whole", bank_file="", n_bank=1) if r == 0 else
                          ScaleInfo(name=f"tiles@{r:g}", mode="tiles", pixels_per_input=r,
                                    overlap=cfg.overlap, bank_file="", n_bank=1))
    else:
        scales, why = [ScaleInfo(name="whole", mode="whole", bank_file="", n_bank=1)], ["single whole-frame view"]
    names = [s.name for s in scales]
    if len(set(names)) != len(names):
        raise DataError(f"scales {names}: each scale must be different")
    scales.sort(key=lambda s: -(s.pixels_per_input or float("inf")))  # coarsest (whole) first
    for line in why:
        log.info("plan: %s", line)
    return scales, PlanInfo(defect_size_px=defect_px, px_per_mm=cfg.views.px_per_mm, frame_hw=hw, reasoning=why)


def prepare_frames(prep: FramePrep, images: list[np.ndarray], paths: list[Path],
                   skipped: list[str]) -> tuple[list[np.ndarray], list[Path]]:
    """Training images through the engine's frame preparation; ones that do not register stay out of the bank."""
    if not prep.active:
        return images, paths
    out, kept = [], []
    for img, path in zip(images, paths):
        frame, report = prep(img)
        if report.failure or report.unaligned:
            log.warning("%s does not register to the alignment reference: left out of the bank", path.name)
            skipped.append(f"{path.name}: does not register to the alignment reference")
            continue
        out.append(frame)
        kept.append(path)
    if not out:
        raise DataError("no training image registers to the alignment reference; set frame.align.mode none")
    return out, kept


def domain_of(cfg: FitConfig) -> tuple[DomainInfo, dict[str, bytes]]:
    info = DomainInfo(mode=cfg.domain.mode, auto_polarity="dark" if cfg.domain.dark else "bright",
                      erode_px=cfg.domain.erode)
    if cfg.domain.mode != "mask":
        return info, {}
    from linesight.export.images import read_image

    m = read_image(cfg.domain.mask)
    m = m if m.ndim == 2 else m[..., 0]
    if not (m > 0).any():
        raise DataError(f"ROI mask {cfg.domain.mask} is all black: nothing would be inspected")
    info.mask_file = ROI_FILE
    return info, {ROI_FILE: cv2.imencode(".png", ((m > 0) * 255).astype(np.uint8))[1].tobytes()}


def next_version(out: Path, model_id: str) -> int:
    if not out.exists():
        return 1
    try:
        old = load_bundle(out).manifest.model
    except Exception:  # an unreadable old bundle is simply replaced
        return 1
    return old.version + 1 if old.id == model_id else 1


def build_model(cfg: FitConfig, weights: str, dataset: str | Path | None = None) -> tuple[PatchFeatures, WeightsInfo]:
    """The feature module: loaded weights, or (weights "self" / adapt "self") trained on DATASET's good images."""
    torch.manual_seed(cfg.seed)
    if weights == "self" or cfg.adapt == "self":
        if dataset is None:
            raise ValueError("build_model(): self-supervised weights need the dataset")
        from linesight.trainer.selfsup import self_supervised_model

        module, info, _ = self_supervised_model(cfg, dataset, init="none" if weights == "self" else weights)
        return module, info
    backbone = build_backbone(cfg.backbone)
    w = load_weights(backbone, cfg.backbone, weights)
    module = PatchFeatures(backbone, BACKBONES[cfg.backbone].channels, cfg.embedding_dim).eval()
    return module, WeightsInfo(source=w.source, pretrained=w.pretrained, detail=w.detail, sha256=w.sha256,
                               package=w.package)


def fit(dataset: str | Path, out: str | Path, cfg: FitConfig, module: PatchFeatures | None = None,
        weights_info: WeightsInfo | None = None, force: bool = False) -> Bundle:
    """Train a bundle from the good images of `dataset` and write it to `out` (folder or .zip).

    `module`/`weights_info` let a caller (self-supervised training) hand in its own trained backbone.
    `out` may only hold a bundle already (or, with `force`, a non-bundle .zip): checked before any work.
    """
    t_start = time.monotonic()
    check_target(out, force)
    if cfg.input_size % 16:
        raise DataError(f"input size {cfg.input_size} must be a multiple of 16 (the layer3 stride)")
    if module is None:  # first: a missing weights file or an offline download fails before any work
        module, weights_info = build_model(cfg, cfg.weights, dataset)
    if weights_info is None:
        raise ValueError("fit(): pass weights_info with a caller-built module")
    ds = open_dataset(dataset)
    if len(ds.train) < 3:
        raise DataError(f"{ds.root}: need at least 3 good training images, found {len(ds.train)}")
    bank_paths, hold_paths = holdout_split(ds.train, cfg.holdout_fraction, cfg.seed)
    log.info("dataset %s: %d good images for the bank, %d held out", ds.name, len(bank_paths), len(hold_paths))
    bank_imgs, bank_paths, skipped = load_images(bank_paths)
    hold_imgs, hold_paths, skipped2 = load_images(hold_paths)
    skipped += skipped2
    if len(bank_imgs) < 1:
        raise DataError(f"{ds.root}: none of the training images could be read")

    warnings = [] if weights_info.pretrained else [NOT_PRETRAINED]
    frame_info, frame_extras = prepare_frame_info(bank_imgs, cfg.frame)
    bank_imgs, bank_paths = prepare_frames(FramePrep(frame_info, frame_extras), bank_imgs, bank_paths, skipped)
    sources = augment_sources(len(bank_imgs), cfg.augment)
    bank_imgs = augment(bank_imgs, cfg.augment)
    spec = input_spec(cfg.backbone, cfg.input_size, cfg.views.resize)
    log.info("exporting %s to ONNX", cfg.backbone)
    onnx_bytes = onnx_export.export_onnx(module, spec.height, spec.width)
    probe = preprocess_batch(bank_imgs[:4], spec)
    diff, tol = onnx_export.parity(module, onnx_bytes, probe)
    int8, int8_info = int8_candidate(cfg, onnx_bytes, bank_imgs, hold_imgs, spec) if cfg.quantize.mode == "int8" \
        else (None, None)

    features = OnnxFeatures(onnx_bytes, where="exported graph")
    grid_h, grid_w = features(probe[:1]).shape[2:]
    stride = spec.height // grid_h
    domain, extras = domain_of(cfg)
    extras.update(frame_extras)
    masks = [Domain(domain, extras).of(f) for f in bank_imgs] if domain.mode != "none" else [None] * len(bank_imgs)
    scales, plan = plan_scales(cfg, bank_imgs)
    banks, rows, scales, coreset_s = coreset_banks(features, bank_imgs, masks, scales, spec, stride, cfg, extras)
    check = check_set(hold_imgs, FramePrep(frame_info, frame_extras),
                      Domain(domain, extras) if domain.mode != "none" else None, cfg.seed)
    graphs = {"float32": onnx_bytes, **({"int8": int8} if int8 is not None else {})}
    check_feats = {p: [check_features(OnnxFeatures(g, where=f"{p} graph"), check, sc, spec, stride, cfg.batch_size)
                       for sc in scales] for p, g in graphs.items()}
    precision = "float32"
    if int8 is not None:  # the int8 bank: the same rows, through the graph the engine will run
        run8 = OnnxFeatures(int8, where="int8 graph")
        banks8 = {sc.bank_file: np.ascontiguousarray(extract(run8, bank_imgs, masks, sc, spec, stride,
                                                              cfg.batch_size)[0][rows[sc.bank_file]]) for sc in scales}
        int8_verdict(int8_info, *(fused_scores([b[sc.bank_file] for sc in scales], check_feats[p], check.labels, cfg.k)
                                  for b, p in ((banks, "float32"), (banks8, "int8"))), check.labels)
        if int8_info.kept:
            precision, onnx_bytes, banks = "int8", int8, banks8
    if int8_info is not None:
        log.info("int8: %s", int8_info.reason)
        if not int8_info.kept:
            warnings.append(f"int8 refused, the float graph runs: {int8_info.reason}")
    for k, sc in enumerate(scales):
        index, stored, warning = choose_index(banks[sc.bank_file], *check_feats[precision][k], len(check.frames),
                                              cfg, where=f"scale {sc.name}")
        files = {"ivf_file": f"banks/scale{k}_ivf_centroids.npy" if index.kind == "ivf" else None,
                 "hnsw_file": f"banks/scale{k}_hnsw_graph.npy" if index.kind == "hnsw" else None}
        for name in filter(None, files.values()):
            extras[name] = bank_bytes(stored, stored.dtype.type)
        if k:
            extras[sc.bank_file] = bank_bytes(banks[sc.bank_file])
        warnings += [warning] if warning else []
        scales[k] = sc.model_copy(update={**files, "index": index})
    bank = banks[BANK_FILE]
    names = [bank_paths[src].name + ("" if k < len(bank_paths) else " (augmented copy)")
             for k, src in enumerate(sources)]
    extras[TRAIN_IMAGES_FILE] = json.dumps(names).encode()

    out = Path(out)
    manifest = Manifest(
        schema=BUNDLE_SCHEMA,
        model=ModelInfo(id=cfg.model_id, version=next_version(out, cfg.model_id),
                        created_at=datetime.now(UTC).isoformat(timespec="seconds")),
        backbone=BackboneInfo(name=cfg.backbone, layers=list(BACKBONES[cfg.backbone].layers), weights=weights_info),
        preprocess=spec.to_info(),
        features=FeatureInfo(embedding_dim=cfg.embedding_dim, grid=(grid_h, grid_w), stride=stride),
        memory=MemoryInfo(n_patches=scales[0].n_patches,
                          n_bank=len(bank), coreset_ratio=cfg.coreset.ratio,
                          projection_dim=cfg.coreset.projection_dim, chunk_size=cfg.coreset.chunk, seed=cfg.seed,
                          seconds=round(coreset_s, 2)),
        scoring=ScoringInfo(k=cfg.k, reweight=cfg.reweight, sigma=cfg.sigma, index=scales[0].index.kind,
                            **({"nprobe": scales[0].index.nprobe} if scales[0].index.nprobe else {})),
        thresholds=Thresholds(image=float("inf"), pixel=float("inf"), policy="unset", source="none"),
        domain=domain,
        frame=frame_info,
        scales=scales,
        plan=plan,
        onnx=OnnxInfo(input=onnx_export.INPUT, output=onnx_export.OUTPUT, opset=onnx_export.OPSET,
                      parity_max_abs_diff=diff, parity_tolerance=tol, precision=precision, int8=int8_info),
        dataset=DatasetInfo(name=ds.name, fingerprint=fingerprint(bank_paths + hold_paths, ds.root),
                            n_train=len(bank_paths), n_holdout=len(hold_paths), skipped=skipped,
                            augment=cfg.augment.model_dump() if cfg.augment.active else None,
                            n_bank_images=len(bank_imgs)),
        software=software_versions(),
        warnings=warnings,
    )
    bundle = Bundle(manifest=manifest, onnx=onnx_bytes, bank=bank, extras=extras)
    fusion_statistics(bundle, hold_imgs)
    default_thresholds(bundle, hold_imgs, hold_paths, cfg)
    write_bundle(out, bundle, force)
    log.info("fit done in %.1f s: %s (%d bank rows x %d)", time.monotonic() - t_start, out, *bank.shape)
    for w in warnings:
        log.warning("%s", w.upper())
    return bundle


def fusion_statistics(bundle: Bundle, hold_imgs: list[np.ndarray]) -> None:
    """Per scale: median patch score and mean image score of held-out good images; with several scales the
    engine fuses (score - median) / (good max - median), so no scale dominates by its distance units."""
    m = bundle.manifest
    if not hold_imgs:
        raise DataError("no held-out good image could be read to normalise the scales; add good images or raise "
                        "--holdout")
    per_image = Engine(bundle).scale_scores(hold_imgs)
    for k, sc in enumerate(m.scales):
        cells = np.concatenate([img[k][1] for img in per_image])
        med = float(np.median(cells)) if cells.size else 0.0
        top = float(np.mean([img[k][0] for img in per_image]))
        m.scales[k] = sc.model_copy(update={"good_median": med, "good_max": max(top, med + 1e-6)})
    if len(m.scales) > 1:
        m.plan.fusion = "max_normalised"


def default_thresholds(bundle: Bundle, hold_imgs: list[np.ndarray], hold_paths: list[Path], cfg: FitConfig) -> None:
    """Thresholds from held-out good images only (no defects seen): every held-out good part passes.

    Calibrate on labeled data (`linesight calibrate`) for a better choice. Golden images are held-out
    images stored in the bundle with the scores the engine gave them, so a loader can verify the bundle.
    """
    m = bundle.manifest
    if not hold_imgs:
        raise DataError("no held-out good image could be read to set a default threshold; "
                        "add good images or raise --holdout")
    engine = Engine(bundle)
    scores = [p.score for p in engine.predict_batch(hold_imgs)]
    top = float(max(scores))
    m.thresholds = Thresholds(image=top * 1.0001, pixel=top * 1.0001, policy="no_false_reject",
                              source=f"{len(scores)} held-out good images (no defects seen)",
                              candidates={"no_false_reject": top * 1.0001})
    for img, path, score in list(zip(hold_imgs, hold_paths, scores))[: cfg.golden_images]:
        ok, png = cv2.imencode(".png", img)
        name = f"{path.stem}.png"
        bundle.golden[name] = png.tobytes()
        m.golden.append(GoldenImage(file=f"golden/{name}", score=score))
