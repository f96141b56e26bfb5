"""Compute choices made at fit: the kNN index of each bank and the int8 feature graph. Each is measured against
the exact / float reference on held-out images and kept only within its bound; otherwise fit falls back loudly."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from linesight.config.fit import FitConfig
from linesight.config.manifest import IndexCheck, IndexInfo, Int8Info, ScaleInfo
from linesight.errors import DataError
from linesight.export.domain import Domain
from linesight.export.features import OnnxFeatures
from linesight.export.frame_prep import FramePrep
from linesight.export.knn import hnsw_graph, knn_search, make_index
from linesight.export.preprocess import PreprocessSpec, preprocess_batch
from linesight.trainer import onnx_export
from linesight.trainer.metrics import auroc

log = logging.getLogger(__name__)

#: auto: banks below this many rows are searched exactly, larger ones with HNSW. Measured (bench/bench_compute.py
#: crossover, 2 shared cores, 1024 patches per frame, each index at its fastest setting within 1 %): HNSW 1.4x flat
#: at 2k rows, 2.7-3.3x at 4-8k, 4.7-5.5x at 16-33k, 15x at 77k; IVF is slower than HNSW from 4k rows up.
AUTO_FLAT_ROWS = 4096
#: ivf: nprobe values tried, smallest first (the first that meets the bound is kept: the fastest that does).
NPROBES = (1, 2, 4, 8, 16, 32, 64)
#: hnsw: links per row and build breadth. Measured on a 76.7k x 384 bank (bench/bench_compute.py): M 32 reaches the
#: 1 % bound at a lower efSearch than M 16, and builds in ~6 s on 2 cores.
HNSW_M, HNSW_EF_CONSTRUCTION = 32, 64
#: hnsw: efSearch values tried, smallest first.
EF_SEARCHES = (16, 32, 64, 128, 256)
#: Patches searched by the index check, whole images at a time: exact search of a 77k-row bank costs ~0.6 ms per
#: patch on 2 cores, so the check stays ~20 s on the largest banks.
MAX_CHECK_QUERIES = 32_768


def ivf_centroids(bank: np.ndarray, cfg: FitConfig) -> np.ndarray:
    """k-means centroids of a bank, stored in the bundle so every load builds the same inverted lists."""
    import faiss

    nlist = cfg.index.ivf_nlist or int(np.clip(np.sqrt(len(bank)), 16, 1024))
    nlist = min(nlist, max(1, len(bank) // 4))
    km = faiss.Kmeans(bank.shape[1], nlist, niter=20, seed=cfg.seed, verbose=False)
    km.train(np.ascontiguousarray(bank, dtype=np.float32))
    return km.centroids.astype(np.float32)


@dataclass
class CheckSet:
    """Held-out good frames and synthetic-defect copies of them (labels 0 / 1), prepared as the engine would."""

    frames: list[np.ndarray]
    masks: list[np.ndarray | None]
    labels: np.ndarray


def check_set(hold_imgs: list[np.ndarray], prep: FramePrep, domain: Domain | None, seed: int) -> CheckSet:
    """The fit's only labeled data: defects painted on held-out good images (trainer/synth.py), so a compute
    shortcut is judged on patches far from the bank as well as on normal ones."""
    from linesight.export.images import full_scale, to_unit
    from linesight.trainer.synth import DefectSynth

    good = []
    for img in hold_imgs:
        frame, report = prep(img)
        if not (report.failure or report.unaligned):
            good.append(frame)
    if not good:
        raise DataError("no held-out good image could be read (or aligned) to check the kNN index and int8 graph "
                        "on; add good images or raise --holdout")
    rng = np.random.default_rng(seed)
    synth = DefectSynth(texture_sources=[to_unit(f) for f in good[:8]])
    bad = []
    for f in good:
        full = full_scale(f.dtype)
        bad.append(np.clip(np.rint(synth(to_unit(f), rng)[0] * full), 0, full).astype(f.dtype))
    frames = good + bad
    masks = [domain.of(f) for f in frames] if domain is not None else [None] * len(frames)
    return CheckSet(frames, masks, np.repeat([0, 1], len(good)))


def check_features(features: OnnxFeatures, check: CheckSet, scale: ScaleInfo, spec: PreprocessSpec, stride: int,
                   batch: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) patch features of the check frames at one scale and the frame each came from (N,)."""
    from linesight.trainer.patches import extract

    feats, locs = extract(features, check.frames, check.masks, scale, spec, stride, batch)
    return feats, locs[:, 0]


def image_scores(patch: np.ndarray, image: np.ndarray, n: int) -> np.ndarray:
    """Max patch score per frame (PatchCore's image score, before reweighting and fusion)."""
    out = np.zeros(n, np.float64)
    np.maximum.at(out, image, patch)
    return out


def _check(setting: str, index, exact, feats: np.ndarray, image: np.ndarray, n: int, k: int,
           ref: tuple[np.ndarray, np.ndarray, float], bound: float) -> IndexCheck:
    """One index setting against the exact results `ref` (distances, rows, seconds)."""
    t = time.perf_counter()
    dist, rows = knn_search(index, exact, feats, k, image)
    sec = time.perf_counter() - t
    d_ex, r_ex, sec_ex = ref
    pe, pa = d_ex.mean(axis=1), dist.mean(axis=1)
    rel = (pa - pe) / np.maximum(pe, 1e-12)
    ie, ia = image_scores(pe, image, n), image_scores(pa, image, n)
    img_err = float(np.max(np.abs(ia - ie) / np.maximum(ie, 1e-12))) if n else 0.0
    chk = IndexCheck(setting=setting, n_images=n, n_queries=len(feats),
                     recall_at_1=float(np.mean(rows[:, 0] == r_ex[:, 0])), patch_error_mean=float(np.mean(np.abs(rel))),
                     patch_error_p99=float(np.percentile(np.abs(rel), 99)),
                     image_error_max=img_err, ms_per_1k=sec * 1e6 / max(len(feats), 1),
                     exact_ms_per_1k=sec_ex * 1e6 / max(len(feats), 1), passed=False)
    chk.passed = chk.image_error_max <= bound and chk.patch_error_mean <= bound
    log.info("index check %s: recall@1 %.3f, image error max %.4f, patch error mean %.4f p99 %.4f, %.1f ms/1k "
             "(exact %.1f) -> %s", setting, chk.recall_at_1, chk.image_error_max, chk.patch_error_mean,
             chk.patch_error_p99, chk.ms_per_1k, chk.exact_ms_per_1k, "ok" if chk.passed else "too far")
    return chk


def build_hnsw(bank: np.ndarray) -> tuple[np.ndarray, int]:
    """HNSW graph of a bank (engine.hnsw_graph form) and its entry row."""
    import faiss

    index = faiss.IndexHNSWFlat(bank.shape[1], HNSW_M)
    index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    index.add(np.ascontiguousarray(bank, dtype=np.float32))
    return hnsw_graph(index), int(index.hnsw.entry_point)


def _candidates(bank: np.ndarray, cfg: FitConfig):
    """(setting, index, IndexInfo fields, the array the bundle stores) per setting to try, fastest first:
    IVF over nprobe when asked for, else HNSW over efSearch (measured faster at equal error)."""
    if cfg.index.kind == "ivf":
        cent = ivf_centroids(bank, cfg)
        nlist = len(cent)
        for p in [cfg.index.ivf_nprobe] if cfg.index.ivf_nprobe else [p for p in NPROBES if p <= max(1, nlist // 4)]:
            index, exact, quantizer = make_index(bank, cent, p)
            yield f"ivf nlist {nlist} nprobe {p}", (index, exact, quantizer), {"nlist": nlist, "nprobe": p}, cent
        return
    graph, entry = build_hnsw(bank)
    for ef in [cfg.index.hnsw_ef_search] if cfg.index.hnsw_ef_search else EF_SEARCHES:
        built = make_index(bank, graph=graph, hnsw_m=HNSW_M, ef_search=ef, entry_point=entry)
        yield (f"hnsw M {HNSW_M} efSearch {ef}", built, {"hnsw_m": HNSW_M, "ef_search": ef, "entry_point": entry},
               graph)


def choose_index(bank: np.ndarray, feats: np.ndarray, image: np.ndarray, n_images: int, cfg: FitConfig,
                 where: str = "bank") -> tuple[IndexInfo, np.ndarray | None, str | None]:
    """The kNN index for one bank: (its record, the array the bundle stores for it -- IVF centroids or the HNSW
    graph -- or None, a warning when it fell back to flat).

    An approximate setting is kept only if every check image's score and the mean patch score are within
    cfg.index.max_error of exact search; settings are tried fastest first, so the fastest that is stays."""
    req, bound, rows = cfg.index.kind, cfg.index.max_error, len(bank)
    if req == "flat":
        return IndexInfo(kind="flat", requested=req, reason="flat requested: exact search", bound=bound), None, None
    if req == "auto" and rows < AUTO_FLAT_ROWS:
        return IndexInfo(kind="flat", requested=req, bound=bound, reason=f"auto: {rows} rows < {AUTO_FLAT_ROWS}: "
                         "exact search (bench/bench_compute.py)"), None, None
    feats, image, n_images = _some_images(feats, image, n_images, cfg.seed)
    flat, _, _ = make_index(bank)
    t = time.perf_counter()
    d_ex, r_ex = knn_search(flat, None, feats, cfg.k)
    ref = (d_ex, r_ex, time.perf_counter() - t)
    kind = "ivf" if req == "ivf" else "hnsw"
    tuned = cfg.index.ivf_nprobe is None if kind == "ivf" else cfg.index.hnsw_ef_search is None
    tried: list[IndexCheck] = []
    for setting, (index, exact, _quantizer), fields, stored in _candidates(bank, cfg):
        chk = _check(setting, index, exact, feats, image, n_images, cfg.k, ref, bound)
        if chk.passed:
            why = (f"{req}: {rows} rows" + (f" >= {AUTO_FLAT_ROWS}" if req == "auto" else "") + f"; {setting} "
                   + ("tuned: the fastest setting within the bound" if tuned else "requested"))
            return IndexInfo(kind=kind, requested=req, reason=why, bound=bound, check=chk, tried=tried,
                             **fields), stored, None
        tried.append(chk)
    last = tried[-1]
    warning = (f"{where}: {last.setting} misses the {bound:g} score bound against exact search (image error "
               f"{last.image_error_max:.4f}, mean patch error {last.patch_error_mean:.4f}, recall@1 "
               f"{last.recall_at_1:.3f}): using exact search (flat) instead")
    log.warning("%s", warning)
    return IndexInfo(kind="flat", requested=req, reason=warning, bound=bound, tried=tried), None, warning


def _some_images(feats: np.ndarray, image: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Whole check images, randomly chosen, up to MAX_CHECK_QUERIES patches; image ids renumbered 0..m-1."""
    if len(feats) <= MAX_CHECK_QUERIES:
        return feats, image, n
    counts = np.bincount(image, minlength=n)
    order = np.random.default_rng(seed).permutation(n)
    chosen = order[:max(1, int(np.searchsorted(np.cumsum(counts[order]), MAX_CHECK_QUERIES, side="right")))]
    new_id = np.full(n, -1)
    new_id[np.sort(chosen)] = np.arange(len(chosen))
    keep = new_id[image] >= 0
    return np.ascontiguousarray(feats[keep]), new_id[image[keep]], len(chosen)


def int8_candidate(cfg: FitConfig, float_onnx: bytes, calibration: list[np.ndarray], parity_images: list[np.ndarray],
                   spec: PreprocessSpec) -> tuple[bytes | None, Int8Info]:
    """Quantize and parity-check: (int8 graph, its record), or (None, the refusal) when parity fails."""
    step = max(1, len(calibration) // cfg.quantize.calibration_images)
    cal = preprocess_batch(calibration[::step][:cfg.quantize.calibration_images], spec)
    probe = preprocess_batch(parity_images[:8], spec)
    info = Int8Info(kept=False, reason="", format=onnx_export.INT8_FORMAT, calibration_images=len(cal),
                    parity_tolerance=onnx_export.INT8_PARITY_TOLERANCE, auroc_max_drop=cfg.quantize.max_auroc_drop)
    try:
        int8 = onnx_export.quantize_int8(float_onnx, cal)
    except Exception as exc:  # noqa: BLE001 - onnxruntime.quantization raises untyped errors; float still runs
        info.reason = f"quantization failed: {type(exc).__name__}: {exc}"
        return None, info
    try:
        info.parity_rel_rms = onnx_export.parity_int8(float_onnx, int8, probe)
    except onnx_export.Int8ParityError as exc:
        info.parity_rel_rms, info.reason = exc.error, f"parity: {exc}"
        return None, info
    info.features_ms_float, info.features_ms_int8 = (_ms_per_image(g, probe) for g in (float_onnx, int8))
    return int8, info


def _ms_per_image(onnx: bytes, batch: np.ndarray) -> float:
    run = OnnxFeatures(onnx, prefer_gpu=False, where="fit timing")
    run(batch[:1])
    t = time.perf_counter()
    for x in batch:
        run(x[None])
    return (time.perf_counter() - t) * 1e3 / len(batch)


def fused_scores(banks: list[np.ndarray], feats: list[tuple[np.ndarray, np.ndarray]], labels: np.ndarray,
                 k: int) -> np.ndarray:
    """Exact-search image scores of the check frames, each scale divided by its median good image score and
    the max taken over scales (the engine's fusion, up to its offset)."""
    n = len(labels)
    out = np.zeros(n)
    for bank, (f, image) in zip(banks, feats):
        flat, _, _ = make_index(bank, None, 1)
        s = image_scores(knn_search(flat, None, f, k)[0].mean(axis=1), image, n)
        out = np.maximum(out, s / max(float(np.median(s[labels == 0])), 1e-12))
    return out


def int8_verdict(info: Int8Info, float_scores: np.ndarray, int8_scores: np.ndarray, labels: np.ndarray) -> Int8Info:
    """Keep int8 only if its image AUROC on the check set is within auroc_max_drop of float's."""
    good = labels == 0
    info.labels = f"{int(good.sum())} held-out good images vs synthetic defects painted on them (no real labels at fit)"
    info.auroc_float, info.auroc_int8 = float(auroc(float_scores, labels)), float(auroc(int8_scores, labels))
    f, q = float_scores[good], int8_scores[good]
    info.score_rel_error_median = float(np.median(np.abs(q - f) / np.maximum(f, 1e-12)))
    info.score_correlation = float(np.corrcoef(f, q)[0, 1]) if len(f) > 1 and f.std() and q.std() else None
    drop = info.auroc_float - info.auroc_int8
    info.kept = drop <= info.auroc_max_drop
    info.reason = (f"image AUROC int8 {info.auroc_int8:.4f} vs float {info.auroc_float:.4f} (drop {drop:.4f}, "
                   f"bound {info.auroc_max_drop:g})" + ("" if info.kept else ": keeping the float graph"))
    return info
