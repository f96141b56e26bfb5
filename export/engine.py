"""The one inference path: preprocessing -> ONNX features -> faiss kNN -> score, map, verdict, regions.

Calibration, evaluation, `predict` and the daemon all call this; nothing else scores images.
"""
from __future__ import annotations

import io
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import faiss
import numpy as np

from linesight.errors import BundleError
from linesight.config.manifest import ScaleInfo
from linesight.export.analysis import DefectRegion, measure_regions
from linesight.export.bundle import BANK_FILE, Bundle, load_bundle
from linesight.export.domain import Domain
from linesight.export.features import OnnxFeatures
from linesight.export.frame_prep import FramePrep
from linesight.export.images import check_image
from linesight.export.preprocess import PreprocessSpec
from linesight.export.views import View, iter_tiles, make_view, render, sees

log = logging.getLogger(__name__)


@dataclass
class Prediction:
    score: float
    verdict: str  # "OK" | "NG"
    threshold: float
    anomaly_map: np.ndarray  # float32, original image size
    regions: list[DefectRegion] = field(default_factory=list)  # NG only, worst first, at most MAX_REGIONS
    timings_ms: dict[str, float] = field(default_factory=dict)
    nearest: dict | None = None  # the bank row closest to the worst patch, and where it came from
    features: np.ndarray | None = None  # (D, h, w) patch features of the first scale's view, when asked for
    view: View | None = None  # that view's geometry (frame <-> feature grid), with the features
    frame: dict | None = None  # what frame preparation did (alignment shift/angle/quality), when it is on
    failure: str | None = None  # set when the frame could not be inspected as trained (e.g. alignment_failed)
    model: dict | None = None  # identity (id, version, hash) of the bundle that decided: a hot swap cannot relabel it
    pixel_threshold: float | None = None  # that bundle's map threshold

    def to_dict(self) -> dict:
        out = {"score": round(self.score, 4), "verdict": self.verdict, "threshold": round(self.threshold, 4),
               "regions": [r.to_dict() for r in self.regions], "timings_ms": self.timings_ms}
        if self.frame is not None:
            out["frame"] = self.frame
        if self.failure is not None:
            out["failure"] = self.failure
        return out


@dataclass
class _Scale:
    info: ScaleInfo
    bank: np.ndarray
    index: faiss.Index  # exact, or IVF over the stored centroids
    locations: np.ndarray | None
    exact: faiss.IndexFlatL2 | None = None  # IVF only: for the rare query whose probed lists hold < k rows
    quantizer: faiss.IndexFlatL2 | None = None  # IVF only: kept alive alongside its index


@dataclass
class _Seen:
    """One image at one scale: stitched cell scores and the worst cell's evidence."""

    view: View
    cells: np.ndarray  # (gh, gw) raw scores, 0 where not inspected
    use: np.ndarray  # (gh, gw) bool: on the frame and inside the domain
    image: float
    row: int
    distance: float
    features: np.ndarray | None


class Engine:
    """Runs a bundle. Thread-compatible: one Engine per inference thread."""

    MAX_TILES = 16  # tiles per ONNX call: working memory stays bounded whatever the frame size
    MAX_REGIONS = 32  # regions measured per NG frame (a noisy map must not cost unbounded time)

    def __init__(self, bundle: Bundle | str | Path, *, threads: int | None = None, prefer_gpu: bool = True):
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        m = self.bundle.manifest
        self.manifest = m
        try:
            self.spec = PreprocessSpec.from_dict(m.preprocess)
        except (KeyError, ValueError, TypeError) as exc:
            raise BundleError(f"bundle {self.bundle.path}: bad preprocess spec: {exc}") from exc
        self.features = OnnxFeatures(self.bundle.onnx, threads=threads, prefer_gpu=prefer_gpu,
                                     where=f"bundle {self.bundle.path}")
        self.provider = self.features.provider
        if self.features.channels != m.features.embedding_dim:
            raise BundleError(f"bundle {self.bundle.path}: ONNX output has {self.features.channels} channels, "
                              f"manifest says {m.features.embedding_dim}")
        threads = threads or int(os.environ.get("LINESIGHT_THREADS", "0")) or None
        if threads:
            faiss.omp_set_num_threads(threads)
        self.identity = self.bundle.identity
        self.domain = Domain(m.domain, self.bundle.extras)
        self.frame_prep = FramePrep(m.frame, self.bundle.extras)
        self.stride = m.features.stride
        self.train_images = self._train_images()
        self.scales = [self._load_scale(s) for s in (m.scales or [self._legacy_scale()])]
        self.fusion = m.plan.fusion if m.plan is not None else "none"
        if self.fusion == "max_normalised" and any(s.info.good_max is None for s in self.scales):
            raise BundleError(f"bundle {self.bundle.path}: fusion max_normalised needs good_median/good_max "
                              "on every scale")
        self.index, self.locations = self.scales[0].index, self.scales[0].locations  # first scale, for tools
        log.info("engine ready", extra={"model": self.bundle.label, "provider": self.provider,
                                         "scales": [s.info.name for s in self.scales],
                                         "bank": [int(s.bank.shape[0]) for s in self.scales]})

    def _legacy_scale(self) -> ScaleInfo:
        from linesight.export.bundle import LOCATIONS_FILE

        m = self.manifest
        return ScaleInfo(name="whole", mode="whole", bank_file=BANK_FILE, n_patches=m.memory.n_patches,
                         n_bank=m.memory.n_bank,
                         locations_file=LOCATIONS_FILE if LOCATIONS_FILE in self.bundle.extras else None)

    def _array(self, name: str, dtype: type) -> np.ndarray:
        if name == BANK_FILE:
            return self.bundle.bank
        data = self.bundle.extras.get(name)
        if data is None:
            raise BundleError(f"bundle {self.bundle.path}: {name} is named in the manifest but missing")
        try:
            arr = np.load(io.BytesIO(data), allow_pickle=False)
        except ValueError as exc:
            raise BundleError(f"bundle {self.bundle.path}: {name} is not a plain numpy array ({exc})") from exc
        if arr.dtype != dtype:
            raise BundleError(f"bundle {self.bundle.path}: {name} is {arr.dtype}, expected {np.dtype(dtype)}")
        return arr

    def _load_scale(self, info: ScaleInfo) -> _Scale:
        where = f"bundle {self.bundle.path}, scale {info.name}"
        if info.mode == "tiles" and info.pixels_per_input is None:
            raise BundleError(f"{where}: a tiles scale needs pixels_per_input")
        bank = self._array(info.bank_file, np.float32)
        dim = self.manifest.features.embedding_dim
        if bank.ndim != 2 or bank.shape != (info.n_bank, dim):
            raise BundleError(f"{where}: bank {info.bank_file} has shape {bank.shape}, manifest says "
                              f"({info.n_bank}, {dim})")
        loc = None
        if info.locations_file:
            loc = self._array(info.locations_file, np.int32)
            if loc.shape != (bank.shape[0], 3):
                raise BundleError(f"{where}: {info.locations_file} has shape {loc.shape}, expected "
                                  f"({bank.shape[0]}, 3)")
        flat = faiss.IndexFlatL2(dim)
        flat.add(np.ascontiguousarray(bank))
        if self.manifest.scoring.index == "flat":
            return _Scale(info, bank, flat, loc)
        if not info.ivf_file:
            raise BundleError(f"{where}: scoring.index is ivf but the scale has no ivf_file (centroids)")
        cent = self._array(info.ivf_file, np.float32)
        if cent.ndim != 2 or cent.shape[1] != dim:
            raise BundleError(f"{where}: {info.ivf_file} has shape {cent.shape}, expected (nlist, {dim})")
        quantizer = faiss.IndexFlatL2(dim)
        quantizer.add(np.ascontiguousarray(cent))
        ivf = faiss.IndexIVFFlat(quantizer, dim, cent.shape[0])
        ivf.is_trained = True
        ivf.add(np.ascontiguousarray(bank))
        ivf.nprobe = min(self.manifest.scoring.nprobe, cent.shape[0])
        return _Scale(info, bank, ivf, loc, exact=flat, quantizer=quantizer)

    def _train_images(self) -> list[str]:
        from linesight.export.bundle import TRAIN_IMAGES_FILE

        try:
            return json.loads(self.bundle.extras.get(TRAIN_IMAGES_FILE, b"[]"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BundleError(f"bundle {self.bundle.path}: bad {TRAIN_IMAGES_FILE}: {exc}") from exc

    def nearest_normal(self, row: int, distance: float, scale: int = 0) -> dict:
        """Evidence for an engineer: 'this looked most like that normal patch, and was still this far'."""
        out = {"row": int(row), "distance": float(distance), "image_index": None, "image_name": None,
               "patch_yx": None}
        loc = self.scales[scale].locations
        if loc is not None:
            i, y, x = (int(v) for v in loc[row])
            out.update(image_index=i, image_name=self.train_images[i] if i < len(self.train_images) else None,
                       patch_yx=(y, x))
        return out

    def smallest_defect_px(self, frame_hw: tuple[int, int] | None = None) -> float:
        """The smallest defect (frame pixels) the finest scale sees well, for frames of frame_hw (default: the
        typical training frame recorded in the plan)."""
        hw = frame_hw or (self.manifest.plan.frame_hw if self.manifest.plan else (self.spec.height, self.spec.width))
        return min(sees(s.info, hw, self.spec)[0] for s in self.scales)

    @property
    def threshold(self) -> float:
        return self.manifest.thresholds.image

    @property
    def pixel_threshold(self) -> float:
        return self.manifest.thresholds.pixel

    def patch_scores(self, feats: np.ndarray, inside: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(B, D, h, w) features of whole-frame inputs -> patch scores (B, h, w) and image scores (B,) against
        the first scale's bank (a tool for tests and notebooks; predict_batch is the inference path)."""
        b, d, h, w = feats.shape
        cells, rows, _ = self._knn(feats, self.scales[0])
        if inside is not None:
            cells = cells * inside
        flat = cells.reshape(b, -1)
        top = flat.argmax(axis=1)
        image = flat[np.arange(b), top]
        if self.manifest.scoring.reweight:
            fv = feats.transpose(0, 2, 3, 1).reshape(b, h * w, d)[np.arange(b), top]
            image = image * self._reweight(self.scales[0], fv, rows.reshape(b, -1)[np.arange(b), top])
        return cells, image

    def _knn(self, feats: np.ndarray, scale: _Scale) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(B, D, h, w) -> cell scores, nearest bank row, distance to it; each (B, h, w)."""
        b, d, h, w = feats.shape
        flat = np.ascontiguousarray(feats.transpose(0, 2, 3, 1).reshape(-1, d), dtype=np.float32)
        dist, idx = scale.index.search(flat, self.manifest.scoring.k)
        if scale.exact is not None:  # IVF: queries whose probed lists held fewer than k rows -> exact search
            short = np.nonzero(idx[:, -1] < 0)[0]
            if len(short):
                dist[short], idx[short] = scale.exact.search(flat[short], self.manifest.scoring.k)
        dist = np.sqrt(np.maximum(dist, 0.0))
        return dist.mean(axis=1).reshape(b, h, w), idx[:, 0].reshape(b, h, w), dist[:, 0].reshape(b, h, w)

    def _reweight(self, scale: _Scale, feats: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """anomalib's weighting: a far patch whose nearest normal has close neighbours is less anomalous."""
        bank = scale.bank
        k = min(self.manifest.scoring.reweight_neighbors, bank.shape[0])
        _, support = (scale.exact or scale.index).search(np.ascontiguousarray(bank[rows]), k)
        d = np.linalg.norm(bank[support] - feats[:, None, :], axis=2)
        e = np.exp(d - d.max(axis=1, keepdims=True))
        return 1.0 - e[:, 0] / e.sum(axis=1)

    def _see(self, frames: list[np.ndarray], masks: list[np.ndarray | None], scale: _Scale,
             keep_features: bool, timing: dict[str, float]) -> list[_Seen]:
        """All frames at one scale: tiles -> ONNX (bounded batches) -> kNN -> stitched cell scores."""
        t0 = time.perf_counter()
        views = [make_view(f.shape[:2], scale.info, self.spec, self.stride) for f in frames]
        planes = [render(f, v) for f, v in zip(frames, views)]
        use = [v.valid_cells() & (v.cells_of(m) if m is not None else True) for v, m in zip(views, masks)]
        owned = [v.keep() for v in views]
        n = len(frames)
        cells = [np.zeros(v.grid_hw, np.float32) for v in views]
        best = [(-1.0, 0, 0.0, None)] * n  # score, row, distance, feature vector
        kept = [np.zeros((self.manifest.features.embedding_dim, *v.grid_hw), np.float32) for v in views] \
            if keep_features else None
        t_feat = t_knn = 0.0
        for batch, chunk in iter_tiles(planes, views, self.spec, self.MAX_TILES):
            ta = time.perf_counter()
            f = self.features(batch)
            tb = time.perf_counter()
            sc, rows, d0 = self._knn(f, scale)
            t_feat, t_knn = t_feat + tb - ta, t_knn + time.perf_counter() - tb
            for j, (i, t) in enumerate(chunk):
                gy, gx, ty, tx = owned[i][t]
                part = sc[j][ty, tx] * use[i][gy, gx]
                cells[i][gy, gx] = part
                if kept is not None:
                    kept[i][:, gy, gx] = f[j][:, ty, tx]
                y, x = np.unravel_index(int(part.argmax()), part.shape)
                if part[y, x] > best[i][0]:
                    yy, xx = ty.start + y, tx.start + x
                    best[i] = (float(part[y, x]), int(rows[j][yy, xx]), float(d0[j][yy, xx]), f[j][:, yy, xx].copy())
        out = []
        for i in range(n):
            image, row, dist, fv = best[i]
            if self.manifest.scoring.reweight and fv is not None:
                image *= float(self._reweight(scale, fv[None], np.array([row]))[0])
            out.append(_Seen(views[i], cells[i], use[i], image, row, dist, kept[i] if kept is not None else None))
        timing["features"] += t_feat
        timing["knn"] += t_knn
        timing[f"scale:{scale.info.name}"] = (time.perf_counter() - t0)
        return out

    def _normalised(self, x: np.ndarray | float, info: ScaleInfo) -> np.ndarray | float:
        if self.fusion == "none":
            return x
        return np.maximum((x - info.good_median) / max(info.good_max - info.good_median, 1e-6), 0.0)

    def _map(self, cells: np.ndarray, view: View) -> np.ndarray:
        """Cell grid -> plane pixels (bilinear) -> Gaussian sigma (input pixels) -> the frame's size."""
        gh, gw = view.grid_hw
        up = cv2.resize(cells.astype(np.float32), (gw * self.stride, gh * self.stride), interpolation=cv2.INTER_LINEAR)
        sigma = self.manifest.scoring.sigma
        if sigma > 0:
            up = cv2.GaussianBlur(up, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT)
        return view.to_frame(up)

    def regions(self, amap: np.ndarray, image: np.ndarray | None = None) -> list[DefectRegion]:
        """Defect regions of a map: the one region definition (export.analysis.measure_regions)."""
        return measure_regions(amap, self.pixel_threshold, image, max_regions=self.MAX_REGIONS)

    def predict(self, image: np.ndarray) -> Prediction:
        return self.predict_batch([image])[0]

    def scale_scores(self, images: list[np.ndarray]) -> list[list[tuple[float, np.ndarray]]]:
        """Raw (image score, inspected cell scores) per image per scale: the fusion statistics at fit."""
        frames, masks, _ = self._prepare(images)
        timing = {"features": 0.0, "knn": 0.0}
        per_scale = [self._see(frames, masks, s, False, timing) for s in self.scales]
        return [[(seen[i].image, seen[i].cells[seen[i].use]) for seen in per_scale] for i in range(len(images))]

    def _prepare(self, images: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray | None], list]:
        """Photometric normalisation and alignment (as at fit), then the domain of each prepared frame."""
        frames, reports = [], []
        for img in images:
            check_image(img)
            frame, report = self.frame_prep(img)
            frames.append(frame)
            reports.append(report)
        masks = [self.domain.of(f) for f in frames] if self.domain.active else [None] * len(frames)
        return frames, masks, reports

    def predict_batch(self, images: list[np.ndarray], *, regions: bool = True,
                      keep_features: bool = False) -> list[Prediction]:
        """`regions=False` when the caller measures regions itself (the daemon's defect analysis);
        `keep_features=True` keeps each image's patch features of the first scale (region embeddings)."""
        if not images:
            return []
        t0 = time.perf_counter()
        frames, masks, reports = self._prepare(images)
        timing = {"features": 0.0, "knn": 0.0}
        t1 = time.perf_counter()
        per_scale = [self._see(frames, masks, s, keep_features and k == 0, timing) for k, s in enumerate(self.scales)]
        t3 = time.perf_counter()
        results = []
        for i, img in enumerate(frames):
            amap, score, worst = None, -1.0, (0, 0, 0.0)
            for k, (scale, seen) in enumerate(zip(self.scales, per_scale)):
                s = seen[i]
                m = self._map(self._normalised(s.cells, scale.info) * s.use, s.view)
                amap = m if amap is None else np.maximum(amap, m, out=amap)
                image = float(self._normalised(s.image, scale.info))
                if image > score:
                    score, worst = image, (k, s.row, s.distance)
            if masks[i] is not None:
                amap *= masks[i]
            if reports[i].matrix is not None:  # the map was made on the aligned frame: back onto the original
                h, w = images[i].shape[:2]
                amap = cv2.warpAffine(amap, reports[i].matrix, (w, h), flags=cv2.INTER_LINEAR,
                                      borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
            verdict = "NG" if score >= self.threshold else "OK"
            found = self.regions(amap, images[i]) if regions and verdict == "NG" else []
            results.append(Prediction(score, verdict, self.threshold, amap, found,
                                      nearest=self.nearest_normal(worst[1], worst[2], worst[0]),
                                      features=per_scale[0][i].features,
                                      view=per_scale[0][i].view if keep_features else None,
                                      frame=reports[i].to_dict() if self.frame_prep.active else None,
                                      failure=reports[i].failure, model=self.identity,
                                      pixel_threshold=self.pixel_threshold))
        t4 = time.perf_counter()
        n = len(images)
        views_ms = t3 - t1 - timing["features"] - timing["knn"]  # resize, pad, cut, normalise, stitch
        timings = {"preprocess": (t1 - t0 + views_ms) * 1e3 / n, "features": timing["features"] * 1e3 / n,
                   "knn": timing["knn"] * 1e3 / n, "postprocess": (t4 - t3) * 1e3 / n, "total": (t4 - t0) * 1e3 / n}
        if len(self.scales) > 1:
            timings.update({k: v * 1e3 / n for k, v in timing.items() if k.startswith("scale:")})
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
            # relative to the score, or to the threshold for scores near 0 (a drift that small cannot move a
            # decision); the old floor of 1.0 let +30 % through for models whose scores are far below 1
            if abs(got - g.score) > tolerance * max(abs(g.score), abs(self.threshold)):
                problems.append(f"golden image {g.file}: score {got:.6g}, manifest recorded {g.score:.6g}")
        return problems
