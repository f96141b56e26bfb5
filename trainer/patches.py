"""Training patches: embeddings of the good frames through the exported graph and the engine's own tile loop
(views.scan), and the coreset bank of each scale. Fit and the compute checks both build banks here."""
from __future__ import annotations

import logging
import time

import numpy as np

from linesight.config.fit import FitConfig
from linesight.config.manifest import ScaleInfo
from linesight.errors import DataError
from linesight.export.bundle import BANK_FILE, LOCATIONS_FILE, bank_bytes
from linesight.export.features import OnnxFeatures
from linesight.export.preprocess import PreprocessSpec
from linesight.export.views import make_view, scan
from linesight.trainer.coreset import greedy_coreset
from linesight.trainer.progress import Progress

log = logging.getLogger(__name__)


def extract(features: OnnxFeatures, frames: list[np.ndarray], masks: list[np.ndarray | None], scale: ScaleInfo,
            spec: PreprocessSpec, stride: int, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Patch embeddings of the frames at one scale, through the exported graph and the engine's own tile loop
    (views.scan): (N, D) features of the cells on the frame and inside the domain, and (N, 3) (image, cell y,
    cell x)."""
    views = [make_view(f.shape[:2], scale, spec, stride) for f in frames]
    use = [v.cells_in(m) for v, m in zip(views, masks)]
    prog = Progress(f"features {scale.name}", sum(len(v.tiles) for v in views))
    feats, locs, done = [], [], 0
    for f, tiles in scan(frames, views, spec, features, batch):
        for j, tile in enumerate(tiles):
            (gy, gx), (ty, tx) = tile.grid, tile.local
            ys, xs = np.nonzero(use[tile.image][gy, gx])
            feats.append(f[j][:, ty, tx][:, ys, xs].T)
            locs.append(np.stack([np.full(len(ys), tile.image), ys + gy.start, xs + gx.start], 1))
        done += len(tiles)
        prog(done)
    if not feats:
        raise DataError(f"scale {scale.name}: no training patch inside the domain")
    return (np.concatenate(feats).astype(np.float32, copy=False), np.concatenate(locs).astype(np.int32))


def coreset_banks(features: OnnxFeatures, frames: list[np.ndarray], masks: list[np.ndarray | None],
                  scales: list[ScaleInfo], spec: PreprocessSpec, stride: int, cfg: FitConfig,
                  extras: dict[str, bytes]
                  ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], list[ScaleInfo], float]:
    """Per scale: extract, subsample to cfg.views.max_patches, greedy coreset. -> banks by file, each bank's rows among
    the scale's patches (to rebuild it through another graph), the scales with their bank files, coreset seconds.
    Bank locations go into `extras`."""
    banks: dict[str, np.ndarray] = {}
    rows: dict[str, np.ndarray] = {}  # per bank: its rows' positions among the scale's extracted patches
    coreset_s = 0.0
    rng = np.random.default_rng(cfg.seed)
    for k, sc in enumerate(scales):
        patches, locations = extract(features, frames, masks, sc, spec, stride, cfg.batch_size)
        n_patches = len(patches)
        if n_patches > cfg.views.max_patches:
            keep = np.sort(rng.choice(n_patches, cfg.views.max_patches, replace=False))
            log.info("scale %s: %d patches, keeping a random %d before the coreset", sc.name, n_patches, len(keep))
            patches, locations = patches[keep], locations[keep]
        n_bank = max(1, int(round(n_patches * cfg.coreset.ratio)))
        n_bank = min(n_bank, len(patches))
        log.info("coreset %s: %d of %d patches (%.1f%%)", sc.name, n_bank, n_patches, 100 * cfg.coreset.ratio)
        t0 = time.monotonic()
        picks = greedy_coreset(patches, n_bank, projection_dim=cfg.coreset.projection_dim,
                               chunk_size=cfg.coreset.chunk, seed=cfg.seed, progress=Progress(f"coreset {sc.name}",
                                                                                               n_bank))
        coreset_s += time.monotonic() - t0
        bank_file, loc_file = (BANK_FILE, LOCATIONS_FILE) if k == 0 else (f"banks/scale{k}.npy",
                                                                          f"banks/scale{k}_locations.npy")
        banks[bank_file] = np.ascontiguousarray(patches[picks])
        rows[bank_file] = keep[picks] if n_patches > cfg.views.max_patches else picks
        extras[loc_file] = bank_bytes(locations[picks], np.int32)
        scales[k] = sc.model_copy(update={"bank_file": bank_file, "locations_file": loc_file,
                                          "n_patches": n_patches, "n_bank": n_bank})
        del patches
    return banks, rows, scales, coreset_s
