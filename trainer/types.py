"""Learn defect types from labeled example images (MVTec layout) and cross-validate them, grouped by image.

Why grouped by image: regions of one image share lighting and texture, so a fold that trains on one
region of an image and tests on its neighbour would flatter the classifier. Folds are drawn per type
(stratified) from whole images.

Ground-truth regions are the 8-connected components of each `ground_truth/<type>/<stem>_mask.png`;
components smaller than `min_region_px` (default 16 px) are ignored: in magnetic_tile they are 1-3 px
annotation specks (JPEG/label noise), not defects anyone would type.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np

from linesight.errors import DataError
from linesight.export.bundle import load_bundle, new_revision, sha256, write_bundle
from linesight.export.engine import Engine
from linesight.export.images import read_image
from linesight.export.type_classifier import METHODS, UNKNOWN, embed_regions
from linesight.trainer.data import fingerprint, open_dataset, read_mask
from linesight.trainer.progress import Progress
from linesight.trainer.type_training import fit_classifier

log = logging.getLogger(__name__)

MIN_REGION_PX = 16


@dataclass
class LabeledRegions:
    """Region embeddings of a labeled set: one row per ground-truth region."""

    embeddings: np.ndarray  # (N, E)
    labels: list[str]
    groups: np.ndarray  # (N,) image index
    images: list[str]  # image names by index
    geometry: dict  # preprocess geometry of the features: input_hw, resize
    skipped: list[str] = field(default_factory=list)
    fingerprint: str = ""


def gt_regions(mask: np.ndarray, min_region_px: int = MIN_REGION_PX) -> list[np.ndarray]:
    """Boolean masks of the 8-connected ground-truth components of at least `min_region_px` pixels."""
    n, lab, stats, _ = cv2.connectedComponentsWithStats((mask > 0).astype(np.uint8), connectivity=8)
    return [lab == i for i in range(1, n) if stats[i, cv2.CC_STAT_AREA] >= min_region_px]


def collect_regions(engine: Engine, dataset: str | Path, *, min_region_px: int = MIN_REGION_PX,
                    min_cover: float = 0.25, batch: int = 8) -> LabeledRegions:
    """Every defective test image with a mask -> engine features (the one inference path) -> region embeddings."""
    ds = open_dataset(dataset)
    samples = [s for s in ds.test if s.label == 1 and s.mask_path is not None]
    if not samples:
        raise DataError(f"{ds.root}: no labeled defect examples (need test/<type>/*.png with "
                        "ground_truth/<type>/<stem>_mask.png)")
    pre = engine.manifest.preprocess
    geometry = {"input_hw": pre.input_size, "resize": pre.resize}
    emb, labels, groups, names, skipped = [], [], [], [], []
    prog = Progress("type examples", len(samples))
    for s0 in range(0, len(samples), batch):
        chunk, imgs, masks = samples[s0:s0 + batch], [], []
        for s in list(chunk):
            try:
                img = read_image(s.path)
                masks.append(read_mask(s, img.shape[:2]))
                imgs.append(img)
            except DataError as exc:
                log.warning("skipping %s: %s", s.path, exc)
                skipped.append(f"{s.path.name}: {exc}")
                chunk.remove(s)
        preds = engine.predict_batch(imgs, regions=False, keep_features=True) if imgs else []
        for s, m, p in zip(chunk, masks, preds):
            regions = gt_regions(m, min_region_px)
            if not regions:
                skipped.append(f"{s.defect_type}/{s.path.name}: no ground-truth region of >= {min_region_px} px")
                continue
            names.append(f"{s.defect_type}/{s.path.name}")
            e = embed_regions(p.features, regions, min_cover=min_cover, view=p.view, **geometry)
            emb.append(e)
            labels += [s.defect_type] * len(e)
            groups += [len(names) - 1] * len(e)
        prog(min(s0 + batch, len(samples)))
    if not emb:
        raise DataError(f"{ds.root}: no usable ground-truth region in any defect mask")
    fp = fingerprint([s.path for s in samples] + [s.mask_path for s in samples], ds.root)
    return LabeledRegions(np.concatenate(emb), labels, np.asarray(groups), names, geometry, skipped, fp)


def image_folds(labels: list[str], groups: np.ndarray, folds: int, seed: int = 0) -> np.ndarray:
    """Fold index per image: images of each type (an image's majority type) shuffled and dealt round-robin."""
    n_img = int(groups.max()) + 1
    kind = [""] * n_img
    for g in range(n_img):
        idx = np.flatnonzero(groups == g)
        vals, counts = np.unique([labels[i] for i in idx], return_counts=True)
        kind[g] = str(vals[np.argmax(counts)])
    rng = np.random.default_rng(seed)
    fold = np.zeros(n_img, np.int32)
    offset = 0
    for t in sorted(set(kind)):
        imgs = np.array([g for g in range(n_img) if kind[g] == t])
        rng.shuffle(imgs)
        fold[imgs] = (np.arange(len(imgs)) + offset) % folds  # offset: small types do not all land in fold 0
        offset += len(imgs)
    return fold


def cross_validate(data: LabeledRegions, *, folds: int = 5, method: str = "knn", seed: int = 0,
                   floor_quantile: float = 0.02) -> dict:
    """Region-level CV, folds grouped by image. Unknown answers count as errors in `accuracy`."""
    if method not in METHODS:
        raise DataError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    n_img = int(data.groups.max()) + 1
    if folds < 2 or folds > n_img:
        raise DataError(f"--folds {folds}: need 2 <= folds <= number of labeled images ({n_img})")
    types = sorted(set(data.labels))
    y = np.array(data.labels)
    fold_of = image_folds(data.labels, data.groups, folds, seed)[data.groups]
    pred = np.empty(len(y), dtype=object)
    conf = np.zeros(len(y))
    for f in range(folds):
        test = fold_of == f
        if not test.any():
            continue
        train = ~test
        clf = fit_classifier(data.embeddings[train], list(y[train]), data.groups[train], method=method,
                             floor_quantile=floor_quantile)
        answers = clf.predict_embeddings(data.embeddings[test])
        pred[test] = [a.type for a in answers]
        conf[test] = [a.confidence for a in answers]
    cols = [*types, UNKNOWN]
    matrix = [[int(np.sum((y == t) & (pred == c))) for c in cols] for t in types]
    answered = pred != UNKNOWN
    recall = {t: round(float(np.mean(pred[y == t] == t)), 4) for t in types}
    return {
        "method": method, "folds": folds, "grouped_by": "image", "seed": seed,
        "n_regions": int(len(y)), "n_images": n_img,
        "per_type_regions": {t: int(np.sum(y == t)) for t in types},
        "accuracy": round(float(np.mean(pred == y)), 4),
        "balanced_accuracy": round(float(np.mean(list(recall.values()))), 4),
        "accuracy_answered": round(float(np.mean(pred[answered] == y[answered])), 4) if answered.any() else None,
        "unknown_rate": round(float(np.mean(~answered)), 4),
        "per_type_recall": recall,
        "confusion": {"rows": types, "cols": cols, "matrix": matrix},
        "mean_confidence": round(float(conf[answered].mean()), 4) if answered.any() else None,
    }


def format_cv_table(cv: dict) -> str:
    """Plain-text CV table (what `linesight types` prints)."""
    rows, cols, mat = cv["confusion"]["rows"], cv["confusion"]["cols"], cv["confusion"]["matrix"]
    w = max(8, *(len(c) for c in cols)) + 1
    lines = [f"type classifier CV ({cv['method']}, {cv['folds']} folds grouped by image): "
             f"{cv['n_regions']} regions from {cv['n_images']} images",
             f"accuracy {cv['accuracy']:.3f}  balanced {cv['balanced_accuracy']:.3f}  "
             f"unknown rate {cv['unknown_rate']:.3f}  accuracy of answered "
             f"{'n/a' if cv['accuracy_answered'] is None else format(cv['accuracy_answered'], '.3f')}",
             "", "true \\ predicted".ljust(18) + "".join(c.rjust(w) for c in cols) + "recall".rjust(9)]
    for t, row in zip(rows, mat):
        lines.append(t.ljust(18) + "".join(str(v).rjust(w) for v in row) + f"{cv['per_type_recall'][t]:9.3f}")
    return "\n".join(lines)


def train_types(bundle_path: str | Path, dataset: str | Path, *, folds: int = 5, method: str = "knn",
                report_dir: str | Path | None = None, seed: int = 0, min_region_px: int = MIN_REGION_PX) -> dict:
    """Embed the labeled regions, cross-validate, fit on all of them and store the classifier in the bundle.

    Only the types/* files of the bundle change (write_bundle re-hashes them); nothing else is re-recorded.
    """
    from linesight.outputs import output_folder

    if report_dir is not None:  # before any work: a bad report path must not cost a whole run
        output_folder(report_dir, "types")
    bundle = load_bundle(bundle_path)
    engine = Engine(bundle)
    data = collect_regions(engine, dataset, min_region_px=min_region_px)
    cv = cross_validate(data, folds=folds, method=method, seed=seed)
    info = {"backbone_sha256": sha256(bundle.onnx), "dataset": Path(dataset).name,
            "dataset_fingerprint": data.fingerprint, "min_region_px": min_region_px,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "per_type_regions": cv["per_type_regions"], "n_images": cv["n_images"], "cv": cv}
    clf = fit_classifier(data.embeddings, data.labels, data.groups, method=method, info=info, **data.geometry)
    for name in [n for n in bundle.extras if n.startswith("types/")]:  # a previous classifier, whatever its files
        del bundle.extras[name]
    bundle.extras.update(clf.to_extras())
    new_revision(bundle.manifest, f"defect types learned ({method})")
    write_bundle(bundle_path, bundle)
    result = {"bundle": str(bundle_path), "floor": clf.floor, "types": clf.labels, "cv": cv, "skipped": data.skipped}
    if report_dir is not None:
        out = Path(report_dir)
        (out / "types_cv.json").write_text(json.dumps(result, indent=2))
        (out / "types_cv.txt").write_text(format_cv_table(cv) + "\n")
    log.info("type classifier stored", extra={"bundle": str(bundle_path), "method": method,
                                              "accuracy": cv["accuracy"], "regions": cv["n_regions"]})
    return result
