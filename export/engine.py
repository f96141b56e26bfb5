"""The one inference path: preprocessing -> ONNX features -> faiss kNN -> score, map, verdict, regions.

Calibration, evaluation, `predict` and the daemon all call this; nothing else scores images. Scores and
verdicts come from the cell grid; the frame-size anomaly map is built only when something reads it.
"""
from __future__ import annotations

import io
import json
import logging
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import cv2
import faiss
import numpy as np

from linesight.config.inspection import MAX_REGIONS
from linesight.config.manifest import ScaleInfo
from linesight.errors import BundleError
from linesight.export.analysis.regions import measure_regions
from linesight.export.bundle import BANK_FILE, Bundle, load_bundle
from linesight.export.domain import Domain
from linesight.export.features import OnnxFeatures, thread_count
from linesight.export.frame_prep import FramePrep
from linesight.export.images import check_image
from linesight.export.knn import hnsw_index, knn_search, make_index
from linesight.export.prediction import DefectRegion, NearestNormal, Prediction
from linesight.export.preprocess import PreprocessSpec
from linesight.export.views import View, make_view, scan, sees

log = logging.getLogger(__name__)


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
    MAX_REGIONS = MAX_REGIONS

    def __init__(self, bundle: Bundle | str | Path, *, threads: int | None = None, prefer_gpu: bool = True):
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        m = self.bundle.manifest
        self.manifest = m
        try:
            self.spec = PreprocessSpec.from_info(m.preprocess)
        except (KeyError, ValueError, TypeError) as exc:
            raise BundleError(f"bundle {self.bundle.path}: bad preprocess spec: {exc}") from exc
        self.features = OnnxFeatures(self.bundle.onnx, threads=threads, prefer_gpu=prefer_gpu,
                                     where=f"bundle {self.bundle.path}")
        self.provider = self.features.provider
        if self.features.channels != m.features.embedding_dim:
            raise BundleError(f"bundle {self.bundle.path}: ONNX output has {self.features.channels} channels, "
                              f"manifest says {m.features.embedding_dim}")
        threads = thread_count(threads)
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
        self._fixed_masks: dict[tuple[int, int], np.ndarray | None] = {}  # ROI domain, per frame shape
        self._fixed_cells: dict[View, np.ndarray] = {}  # its inspected cells, per view
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
        kind, nprobe = (info.index.kind, info.index.nprobe) if info.index else (self.manifest.scoring.index,
                                                                                 self.manifest.scoring.nprobe)
        if kind == "hnsw":
            if not (info.hnsw_file and info.index and info.index.hnsw_m and info.index.ef_search
                    and info.index.entry_point is not None):
                raise BundleError(f"{where}: index hnsw needs hnsw_file and the index's hnsw_m, ef_search, entry_point")
            try:
                index = hnsw_index(bank, self._array(info.hnsw_file, np.int32), info.index.hnsw_m,
                                   info.index.ef_search, info.index.entry_point)
            except ValueError as exc:
                raise BundleError(f"{where}: {info.hnsw_file}: {exc}") from exc
            return _Scale(info, bank, index, loc)
        cent = None
        if kind == "ivf":
            if not info.ivf_file:
                raise BundleError(f"{where}: index ivf but the scale has no ivf_file (centroids)")
            cent = self._array(info.ivf_file, np.float32)
            if cent.ndim != 2 or cent.shape[1] != dim:
                raise BundleError(f"{where}: {info.ivf_file} has shape {cent.shape}, expected (nlist, {dim})")
        index, exact, quantizer = make_index(bank, cent, nprobe or 1)
        return _Scale(info, bank, index, loc, exact=exact, quantizer=quantizer)

    def _train_images(self) -> list[str]:
        from linesight.export.bundle import TRAIN_IMAGES_FILE

        try:
            return json.loads(self.bundle.extras.get(TRAIN_IMAGES_FILE, b"[]"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BundleError(f"bundle {self.bundle.path}: bad {TRAIN_IMAGES_FILE}: {exc}") from exc

    def nearest_normal(self, row: int, distance: float, scale: int = 0) -> NearestNormal:
        """Evidence for an engineer: 'this looked most like that normal patch, and was still this far'."""
        out = NearestNormal(int(row), float(distance))
        loc = self.scales[scale].locations
        if loc is not None:
            i, y, x = (int(v) for v in loc[row])
            out.image_index, out.patch_yx = i, (y, x)
            out.image_name = self.train_images[i] if i < len(self.train_images) else None
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

    def _knn(self, feats: np.ndarray, scale: _Scale) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(B, D, h, w) -> cell scores, nearest bank row, distance to it; each (B, h, w)."""
        b, d, h, w = feats.shape
        flat = np.ascontiguousarray(feats.transpose(0, 2, 3, 1).reshape(-1, d), dtype=np.float32)
        dist, idx = knn_search(scale.index, scale.exact, flat, self.manifest.scoring.k, np.repeat(np.arange(b), h * w))
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
        """All frames at one scale: the tile loop shared with fit (views.scan) -> kNN per batch -> stitched cells."""
        t0 = time.perf_counter()
        views = [make_view(f.shape[:2], scale.info, self.spec, self.stride) for f in frames]
        use = [self._cells(v, m) for v, m in zip(views, masks)]
        n = len(frames)
        cells = [np.zeros(v.grid_hw, np.float32) for v in views]
        best = [(-1.0, 0, 0.0, None)] * n  # score, row, distance, feature vector
        kept = [np.zeros((self.manifest.features.embedding_dim, *v.grid_hw), np.float32) for v in views] \
            if keep_features else None

        def features(batch: np.ndarray) -> np.ndarray:  # timed apart from rendering and stitching
            ta = time.perf_counter()
            out = self.features(batch)
            timing["features"] += time.perf_counter() - ta
            return out

        for f, tiles in scan(frames, views, self.spec, features, self.MAX_TILES):
            tb = time.perf_counter()
            sc, rows, d0 = self._knn(f, scale)
            timing["knn"] += time.perf_counter() - tb
            for j, tile in enumerate(tiles):
                i, (gy, gx), (ty, tx) = tile.image, tile.grid, tile.local
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
        timing[f"scale:{scale.info.name}"] = (time.perf_counter() - t0)
        return out

    def _cells(self, view: View, mask: np.ndarray | None) -> np.ndarray:
        """The view's inspected cells; an ROI domain gives the same cells to every frame of a shape: once per shape."""
        if self.domain.info.mode != "mask":
            return view.cells_in(mask)
        return _cached(self._fixed_cells, view, lambda: view.cells_in(mask))

    def _domain_of(self, frame: np.ndarray) -> np.ndarray | None:
        """The frame's domain mask (None: everywhere); an ROI mask depends on the frame shape only: once per shape."""
        if self.domain.info.mode != "mask":
            return self.domain.of(frame) if self.domain.active else None
        return _cached(self._fixed_masks, frame.shape[:2], lambda: self.domain.of(frame))

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

    def _frame_map(self, seen: list[_Seen], mask: np.ndarray | None, matrix: np.ndarray | None,
                   frame_hw: tuple[int, int]) -> np.ndarray:
        """A frame's anomaly map (max over scales, domain applied, back onto the original frame when aligned):
        made once, on the first read of Prediction.anomaly_map, since the verdict needs only the cells."""
        amap = None
        for scale, s in zip(self.scales, seen):
            m = self._map(self._normalised(s.cells, scale.info) * s.use, s.view)
            amap = m if amap is None else np.maximum(amap, m, out=amap)
        if mask is not None:
            amap *= mask
        if matrix is not None:  # the map was made on the aligned frame: back onto the original
            h, w = frame_hw
            amap = cv2.warpAffine(amap, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                                  borderValue=0.0)
        return amap

    def regions(self, amap: np.ndarray, image: np.ndarray | None = None) -> list[DefectRegion]:
        """Defect regions of a map: the one region definition (export.analysis.measure_regions)."""
        return measure_regions(amap, self.pixel_threshold, image, max_regions=self.MAX_REGIONS)

    def predict(self, image: np.ndarray) -> Prediction:
        return self.predict_batch([image])[0]

    def scale_scores(self, images: list[np.ndarray]) -> list[list[tuple[float, np.ndarray]]]:
        """Raw (image score, inspected cell scores) per image per scale: the fusion statistics at fit."""
        frames, masks, _ = self.prepare(images)
        timing = {"features": 0.0, "knn": 0.0}
        per_scale = [self._see(frames, masks, s, False, timing) for s in self.scales]
        return [[(seen[i].image, seen[i].cells[seen[i].use]) for seen in per_scale] for i in range(len(images))]

    def prepare(self, images: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray | None], list]:
        """The engine's boundary: each image validated (once; nothing after re-checks), photometric normalisation
        and alignment (as at fit), then the domain of each prepared frame."""
        frames, reports = [], []
        for img in images:
            check_image(img)
            frame, report = self.frame_prep(img)
            frames.append(frame)
            reports.append(report)
        return frames, [self._domain_of(f) for f in frames], reports

    def predict_batch(self, images: list[np.ndarray], *, regions: bool = True,
                      keep_features: bool = False) -> list[Prediction]:
        """`regions=False` when the caller measures regions itself (the daemon's defect analysis);
        `keep_features=True` keeps each image's patch features of the first scale (region embeddings)."""
        if not images:
            return []
        t0 = time.perf_counter()
        frames, masks, reports = self.prepare(images)
        timing = {"features": 0.0, "knn": 0.0}
        t1 = time.perf_counter()
        per_scale = [self._see(frames, masks, s, keep_features and k == 0, timing) for k, s in enumerate(self.scales)]
        t3 = time.perf_counter()
        results = []
        for i, img in enumerate(images):
            seen = [per_scale[k][i] for k in range(len(self.scales))]
            score, worst = -1.0, (0, 0, 0.0)
            for k, (scale, s) in enumerate(zip(self.scales, seen)):
                image = float(self._normalised(s.image, scale.info))
                if image > score:
                    score, worst = image, (k, s.row, s.distance)
            verdict = "NG" if score >= self.threshold else "OK"
            pred = Prediction(score, verdict, self.threshold,
                              partial(self._frame_map, seen, masks[i], reports[i].matrix, img.shape[:2]),
                              nearest=self.nearest_normal(worst[1], worst[2], worst[0]),
                              features=seen[0].features, view=seen[0].view if keep_features else None,
                              frame=reports[i].to_dict() if self.frame_prep.active else None,
                              failure=reports[i].failure,
                              # frame preparation fails a frame only when it does not align
                              failure_code=None if reports[i].failure is None else "alignment_failed",
                              model=self.identity, pixel_threshold=self.pixel_threshold)
            if regions and verdict == "NG":
                pred.regions = self.regions(pred.anomaly_map, img)
            results.append(pred)
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

    def golden_image(self, file: str) -> np.ndarray | None:
        """A golden image of the bundle, decoded; None when the bundle lacks it."""
        data = self.bundle.golden.get(file.removeprefix("golden/"))
        return None if data is None else cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)

    def check_golden(self, tolerance: float = 1e-3) -> list[str]:
        """Score the bundle's golden images; return the mismatches (empty = the bundle behaves as recorded)."""
        problems = []
        for g in self.manifest.golden:
            img = self.golden_image(g.file)
            if img is None:
                problems.append(f"golden image {g.file} missing")
                continue
            got = self.predict(img).score
            # relative to the score, or to the threshold for scores near 0 (a drift that small cannot move a
            # decision); the old floor of 1.0 let +30 % through for models whose scores are far below 1
            if abs(got - g.score) > tolerance * max(abs(g.score), abs(self.threshold)):
                problems.append(f"golden image {g.file}: score {got:.6g}, manifest recorded {g.score:.6g}")
        return problems


def _cached(cache: dict, key, make):
    """cache[key], made on a miss; the oldest entry goes past 32 (a line has one frame shape, a dataset a few)."""
    if key not in cache:
        if len(cache) >= 32:
            del cache[next(iter(cache))]
        cache[key] = make()
    return cache[key]
