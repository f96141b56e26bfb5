"""The one inference path: preprocessing -> ONNX features -> faiss kNN -> score, map, verdict, regions.

Calibration, evaluation, `predict` and the daemon all call this; nothing else scores images.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import faiss
import numpy as np

from linesight.errors import BundleError
from linesight.export.bundle import Bundle, load_bundle
from linesight.export.domain import Domain
from linesight.export.features import OnnxFeatures
from linesight.export.preprocess import PreprocessSpec, preprocess_batch

log = logging.getLogger(__name__)


@dataclass
class Region:
    bbox: tuple[int, int, int, int]  # x, y, w, h in original image pixels
    area_px: int
    max_score: float
    mean_score: float

    def to_dict(self) -> dict:
        return {"bbox": list(self.bbox), "area_px": self.area_px,
                "max_score": round(self.max_score, 4), "mean_score": round(self.mean_score, 4)}


@dataclass
class Prediction:
    score: float
    verdict: str  # "OK" | "NG"
    threshold: float
    anomaly_map: np.ndarray  # float32, original image size
    regions: list[Region] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)
    nearest: dict | None = None  # the bank row closest to the worst patch, and where it came from
    features: np.ndarray | None = None  # (D, h, w) patch features of the whole-image view, when asked for

    def to_dict(self) -> dict:
        return {"score": round(self.score, 4), "verdict": self.verdict, "threshold": round(self.threshold, 4),
                "regions": [r.to_dict() for r in self.regions], "timings_ms": self.timings_ms}


class Engine:
    """Runs a bundle. Thread-compatible: one Engine per inference thread."""

    def __init__(self, bundle: Bundle | str | Path, *, threads: int | None = None, prefer_gpu: bool = True):
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        m = self.bundle.manifest
        self.manifest = m
        self.spec = PreprocessSpec.from_dict(m.preprocess)
        self.features = OnnxFeatures(self.bundle.onnx, threads=threads, prefer_gpu=prefer_gpu,
                                     where=f"bundle {self.bundle.path}")
        self.provider = self.features.provider
        if self.features.channels != m.features.embedding_dim:
            raise BundleError(f"bundle {self.bundle.path}: ONNX output has {self.features.channels} channels, "
                              f"manifest says {m.features.embedding_dim}")
        threads = threads or int(os.environ.get("LINESIGHT_THREADS", "0")) or None
        if threads:
            faiss.omp_set_num_threads(threads)
        self.domain = Domain(m.domain, self.bundle.extras)
        self.locations, self.train_images = self._provenance()
        self.index = faiss.IndexFlatL2(m.features.embedding_dim)
        self.index.add(self.bundle.bank)
        log.info("engine ready", extra={"model": self.bundle.label, "provider": self.provider,
                                         "bank": int(self.bundle.bank.shape[0])})

    def _provenance(self) -> tuple[np.ndarray | None, list[str]]:
        """Where each bank row came from (bundles written before this existed have no such files)."""
        import io
        import json

        from linesight.export.bundle import LOCATIONS_FILE, TRAIN_IMAGES_FILE

        extras = self.bundle.extras
        if LOCATIONS_FILE not in extras:
            return None, []
        try:
            loc = np.load(io.BytesIO(extras[LOCATIONS_FILE]), allow_pickle=False)
            names = json.loads(extras.get(TRAIN_IMAGES_FILE, b"[]"))
        except (ValueError, json.JSONDecodeError) as exc:
            raise BundleError(f"bundle {self.bundle.path}: bad {LOCATIONS_FILE}/{TRAIN_IMAGES_FILE}: {exc}") from exc
        if loc.shape != (self.bundle.bank.shape[0], 3):
            raise BundleError(f"bundle {self.bundle.path}: {LOCATIONS_FILE} has shape {loc.shape}, "
                              f"expected ({self.bundle.bank.shape[0]}, 3)")
        return loc, names

    def nearest_normal(self, row: int, distance: float) -> dict:
        """Evidence for an engineer: 'this looked most like that normal patch, and was still this far'."""
        out = {"row": int(row), "distance": float(distance), "image_index": None, "image_name": None,
               "patch_yx": None}
        if self.locations is not None:
            i, y, x = (int(v) for v in self.locations[row])
            out.update(image_index=i, image_name=self.train_images[i] if i < len(self.train_images) else None,
                       patch_yx=(y, x))
        return out

    @property
    def threshold(self) -> float:
        return self.manifest.thresholds.image

    @property
    def pixel_threshold(self) -> float:
        return self.manifest.thresholds.pixel

    def patch_scores(self, feats: np.ndarray, inside: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(B, D, h, w) -> per-patch scores (B, h, w) and image scores (B,); see _score."""
        patch, image, _ = self._score(feats, inside)
        return patch, image

    def _score(self, feats: np.ndarray, inside: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, list]:
        """Patch scores, image scores and, per image, (nearest bank row, distance) of the worst patch.

        `inside` (B, h, w) bool: patches outside the domain score 0, so they cannot raise a verdict.
        """
        b, d, h, w = feats.shape
        flat = np.ascontiguousarray(feats.transpose(0, 2, 3, 1).reshape(-1, d), dtype=np.float32)
        sc = self.manifest.scoring
        dist, idx = self.index.search(flat, sc.k)
        dist = np.sqrt(np.maximum(dist, 0.0))
        patch = dist.mean(axis=1).reshape(b, h * w)
        if inside is not None:
            patch = patch * inside.reshape(b, h * w)
        top = patch.argmax(axis=1)
        image = patch[np.arange(b), top]
        nn, d0 = idx[:, 0].reshape(b, h * w), dist[:, 0].reshape(b, h * w)
        worst = [(int(nn[i, t]), float(d0[i, t])) for i, t in enumerate(top)]  # evidence: bank row, distance
        if sc.reweight:
            image = image * self._reweight(flat.reshape(b, h * w, d), top, nn)
        return patch.reshape(b, h, w), image, worst

    def _reweight(self, flat: np.ndarray, top: np.ndarray, nn: np.ndarray) -> np.ndarray:
        """anomalib's weighting: a far patch whose nearest normal has close neighbours is less anomalous."""
        bank = self.bundle.bank
        k = min(self.manifest.scoring.reweight_neighbors, bank.shape[0])
        rows = np.arange(len(top))
        nearest = bank[nn[rows, top]]
        _, support = self.index.search(nearest, k)
        feats = flat[rows, top]
        d = np.linalg.norm(bank[support] - feats[:, None, :], axis=2)
        e = np.exp(d - d.max(axis=1, keepdims=True))
        return 1.0 - e[:, 0] / e.sum(axis=1)

    def anomaly_map(self, patch: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """Patch grid -> input size (bilinear) -> Gaussian sigma -> original (h, w)."""
        up = cv2.resize(patch.astype(np.float32), (self.spec.width, self.spec.height), interpolation=cv2.INTER_LINEAR)
        sigma = self.manifest.scoring.sigma
        if sigma > 0:
            up = cv2.GaussianBlur(up, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT)
        h, w = size
        return cv2.resize(up, (w, h), interpolation=cv2.INTER_LINEAR) if (h, w) != up.shape else up

    def regions(self, amap: np.ndarray) -> list[Region]:
        mask = (amap >= self.pixel_threshold).astype(np.uint8)
        n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        out = []
        for i in range(1, n):
            x, y, w, h, area = (int(v) for v in stats[i])
            vals = amap[y:y + h, x:x + w][labels[y:y + h, x:x + w] == i]
            out.append(Region((x, y, w, h), area, float(vals.max()), float(vals.mean())))
        return sorted(out, key=lambda r: -r.max_score)

    def predict(self, image: np.ndarray) -> Prediction:
        return self.predict_batch([image])[0]

    def predict_batch(self, images: list[np.ndarray], *, regions: bool = True,
                      keep_features: bool = False) -> list[Prediction]:
        """`regions=False` when the caller measures regions itself (the daemon's defect analysis);
        `keep_features=True` keeps each image's patch features (region embeddings for defect typing)."""
        t0 = time.perf_counter()
        batch = preprocess_batch(images, self.spec)
        masks = [self.domain.of(img) for img in images] if self.domain.active else None
        t1 = time.perf_counter()
        feats = self.features(batch)
        t2 = time.perf_counter()
        inside = None
        if masks is not None:
            gh, gw = feats.shape[2:]
            inside = np.stack([cv2.resize(m.astype(np.float32), (gw, gh), interpolation=cv2.INTER_AREA) >= 0.5
                               for m in masks])
        patch, scores, worst = self._score(feats, inside)
        t3 = time.perf_counter()
        results = []
        for i, (img, p, s) in enumerate(zip(images, patch, scores)):
            amap = self.anomaly_map(p, img.shape[:2])
            if masks is not None:
                amap *= masks[i]
            score = float(s)
            verdict = "NG" if score >= self.threshold else "OK"
            found = self.regions(amap) if regions and verdict == "NG" else []
            results.append(Prediction(score, verdict, self.threshold, amap, found,
                                      nearest=self.nearest_normal(*worst[i]),
                                      features=feats[i].copy() if keep_features else None))
        t4 = time.perf_counter()
        n = len(images)
        timings = {"preprocess": (t1 - t0) * 1e3 / n, "features": (t2 - t1) * 1e3 / n,
                   "knn": (t3 - t2) * 1e3 / n, "postprocess": (t4 - t3) * 1e3 / n, "total": (t4 - t0) * 1e3 / n}
        for r in results:
            r.timings_ms = {k: round(v, 3) for k, v in timings.items()}
        return results

    def check_golden(self, tolerance: float = 1e-3) -> list[str]:
        """Score the bundle's golden images; return the mismatches (empty = the bundle behaves as recorded)."""
        problems = []
        for g in self.manifest.golden:
            data = self.bundle.golden.get(g.file.removeprefix("golden/"))
            if data is None:
                problems.append(f"golden image {g.file} missing")
                continue
            img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
            got = self.predict(img).score
            if abs(got - g.score) > tolerance * max(1.0, abs(g.score)):
                problems.append(f"golden image {g.file}: score {got:.5f}, manifest recorded {g.score:.5f}")
        return problems
