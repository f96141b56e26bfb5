"""fit: good images -> torch backbone -> ONNX -> (same engine code) features -> coreset bank -> bundle."""
from __future__ import annotations

import contextlib
import io
import json
import logging
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np
import torch

from linesight import __version__
from linesight.config.fit import FitConfig
from linesight.config.manifest import (BUNDLE_SCHEMA, BackboneInfo, DatasetInfo, FeatureInfo, GoldenImage, Manifest,
                                       MemoryInfo, ModelInfo, OnnxInfo, ScoringInfo, Thresholds, WeightsInfo)
from linesight.errors import DataError
from linesight.export.bundle import LOCATIONS_FILE, TRAIN_IMAGES_FILE, Bundle, bank_bytes, load_bundle, write_bundle
from linesight.export.engine import Engine
from linesight.export.features import OnnxFeatures
from linesight.export.preprocess import PreprocessSpec, preprocess_batch
from linesight.trainer import onnx_export
from linesight.trainer.backbones import BACKBONES, NOT_PRETRAINED, build_backbone, load_weights
from linesight.trainer.coreset import greedy_coreset
from linesight.trainer.data import fingerprint, holdout_split, load_images, open_dataset
from linesight.trainer.features import PatchFeatures
from linesight.trainer.progress import Progress

log = logging.getLogger(__name__)


def software_versions() -> dict[str, str]:
    import faiss
    import onnx
    import onnxruntime

    return {"linesight": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "numpy": np.__version__,
            "faiss": faiss.__version__, "opencv": cv2.__version__}


def extract(features: OnnxFeatures, images: list[np.ndarray], spec: PreprocessSpec, batch: int, what: str) -> np.ndarray:
    """All patch embeddings of the images as one (N, D) array, through the exported graph."""
    prog = Progress(what, len(images))
    out = []
    for s in range(0, len(images), batch):
        f = features(preprocess_batch(images[s:s + batch], spec))
        out.append(f.transpose(0, 2, 3, 1).reshape(-1, f.shape[1]))
        prog(min(s + batch, len(images)))
    return np.concatenate(out).astype(np.float32, copy=False)


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
    return module, WeightsInfo(source=w.source, pretrained=w.pretrained, detail=w.detail, sha256=w.sha256)


def fit(dataset: str | Path, out: str | Path, cfg: FitConfig, module: PatchFeatures | None = None,
        weights_info: WeightsInfo | None = None) -> Bundle:
    """Train a bundle from the good images of `dataset` and write it to `out` (folder or .zip).

    `module`/`weights_info` let a caller (self-supervised training) hand in its own trained backbone.
    """
    t_start = time.monotonic()
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
    spec = PreprocessSpec(cfg.input_size, cfg.input_size)
    log.info("exporting %s to ONNX", cfg.backbone)
    with contextlib.redirect_stdout(io.StringIO()):
        onnx_bytes = onnx_export.export_onnx(module, spec.height, spec.width)
    probe = preprocess_batch(bank_imgs[:4], spec)
    diff, tol = onnx_export.parity(module, onnx_bytes, probe)

    features = OnnxFeatures(onnx_bytes, where="exported graph")
    grid_h, grid_w = features(probe[:1]).shape[2:]
    patches = extract(features, bank_imgs, spec, cfg.batch_size, "features")
    n_bank = max(1, int(round(len(patches) * cfg.coreset_ratio)))
    log.info("coreset: %d of %d patches (%.1f%%)", n_bank, len(patches), 100 * cfg.coreset_ratio)
    t0 = time.monotonic()
    picks = greedy_coreset(patches, n_bank, projection_dim=cfg.coreset_projection_dim, chunk_size=cfg.coreset_chunk,
                           seed=cfg.seed, progress=Progress("coreset", n_bank))
    coreset_s = time.monotonic() - t0
    bank = np.ascontiguousarray(patches[picks])
    n_patches = len(patches)
    del patches
    per_image = grid_h * grid_w  # rows of `patches` are image-major, then patch-grid row-major
    locations = np.stack([picks // per_image, (picks % per_image) // grid_w, picks % grid_w], 1).astype(np.int32)

    out = Path(out)
    manifest = Manifest(
        schema=BUNDLE_SCHEMA,
        model=ModelInfo(id=cfg.model_id, version=next_version(out, cfg.model_id),
                        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds")),
        backbone=BackboneInfo(name=cfg.backbone, layers=["layer2", "layer3"], weights=weights_info),
        preprocess=spec.to_dict(),
        features=FeatureInfo(embedding_dim=cfg.embedding_dim, grid=(grid_h, grid_w), stride=spec.height // grid_h),
        memory=MemoryInfo(n_patches=n_patches,
                          n_bank=len(bank), coreset_ratio=cfg.coreset_ratio,
                          projection_dim=cfg.coreset_projection_dim, chunk_size=cfg.coreset_chunk, seed=cfg.seed,
                          seconds=round(coreset_s, 2)),
        scoring=ScoringInfo(k=cfg.k, reweight=cfg.reweight, sigma=cfg.sigma),
        thresholds=Thresholds(image=float("inf"), pixel=float("inf"), policy="unset", source="none"),
        onnx=OnnxInfo(input=onnx_export.INPUT, output=onnx_export.OUTPUT, opset=onnx_export.OPSET,
                      parity_max_abs_diff=diff, parity_tolerance=tol),
        dataset=DatasetInfo(name=ds.name, fingerprint=fingerprint(bank_paths + hold_paths, ds.root),
                            n_train=len(bank_paths), n_holdout=len(hold_paths), skipped=skipped),
        software=software_versions(),
        warnings=warnings,
    )
    bundle = Bundle(manifest=manifest, onnx=onnx_bytes, bank=bank,
                    extras={LOCATIONS_FILE: bank_bytes(locations, np.int32),
                            TRAIN_IMAGES_FILE: json.dumps([p.name for p in bank_paths]).encode()})
    default_thresholds(bundle, hold_imgs, hold_paths, cfg)
    write_bundle(out, bundle)
    log.info("fit done in %.1f s: %s (%d bank rows x %d)", time.monotonic() - t_start, out, *bank.shape)
    for w in warnings:
        log.warning("%s", w.upper())
    return bundle


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
