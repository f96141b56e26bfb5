"""Per-frame engine time: what an OK frame costs (its verdict needs only the cell grid) and what an NG frame
with learned types costs (map, regions, types), on a 5 MP (2448x2048) and a 224x224 gray frame.

Synthetic brushed texture (bench_tiling's), a whole-frame bundle fitted on it with random-init weights
(timing, not accuracy). Prints the median and best ms of --repeat runs per case:
- ok_5mp / ok_224: Engine.predict_batch in the daemon's mode (regions measured by the analysis, not here);
- ok_5mp_auto_domain: the same with automatic foreground (domain "auto");
- ng_5mp_types: predict_batch(keep_features=True) + analysis.analyze with a type classifier, max_regions 32
  (the daemon's NG path) on the engine's own (smooth, whole-frame) map;
- ng_5mp_32_regions: analyze alone on that frame's features with a noisy map (48 separate regions): what
  measuring and typing 32 regions costs.

    .venv/bin/python bench/bench_frame.py --work /tmp/bench_frame            # this tree
    # the same script against another tree (e.g. HEAD unpacked as a package at /tmp/before_pkg/linesight):
    PYTHONPATH=/tmp/before_pkg .venv/bin/python bench/bench_frame.py --work /tmp/bench_frame

The bundles are written once under --work by whichever tree runs first; fit them with the oldest tree you
compare (newer manifests may carry fields an older reader refuses).
"""
from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from bench_tiling import texture

H, W = 2048, 2448


def bundles(work: Path) -> tuple[Path, Path]:
    """(plain, auto-domain) bundle folders, fitted on first use."""
    from linesight.config.fit import preset
    from linesight.config.manifest import DomainInfo
    from linesight.export.bundle import load_bundle, write_bundle
    from linesight.trainer.fit import fit

    plain, auto = work / "bundle", work / "bundle_auto"
    if not plain.exists():
        rng = np.random.default_rng(0)
        good = work / "data" / "train" / "good"
        good.mkdir(parents=True, exist_ok=True)
        for i in range(6):
            cv2.imwrite(str(good / f"{i:02d}.png"), texture(H, W, rng))
        fit(work / "data", plain, preset("fast", weights="none", input_size=224, model_id="bench-frame"))
    if not auto.exists():
        b = load_bundle(plain)
        b.manifest.domain = DomainInfo(mode="auto")
        write_bundle(auto, b)
    return plain, auto


def ng_frame(rng: np.random.Generator) -> np.ndarray:
    """A 5 MP frame with 48 dark spots: more regions than the analysis measures (32)."""
    img = texture(H, W, rng)
    for _ in range(48):
        cv2.circle(img, (int(rng.integers(60, W - 60)), int(rng.integers(60, H - 60))), int(rng.integers(6, 30)),
                   int(rng.integers(0, 60)), -1)
    return img


def spotted(amap: np.ndarray, thr: float, rng: np.random.Generator) -> np.ndarray:
    """A noisy NG map: the engine's map with 48 separate spots above the pixel threshold."""
    out = amap.copy()
    out[out >= thr] = 0.0
    for k in range(48):
        y, x = 100 + (k // 8) * 300 + int(rng.integers(0, 100)), 100 + (k % 8) * 290 + int(rng.integers(0, 100))
        cv2.circle(out, (x, y), int(rng.integers(4, 40)), float(thr * (1.5 + k / 48)), -1)
    return out


def timed(fn, repeat: int) -> tuple[float, float]:
    fn()  # warm-up: sessions, caches, the first allocation of each size
    ms = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ms.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ms), min(ms)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_frame"))
    ap.add_argument("--repeat", type=int, default=15)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from linesight.export import analysis as A
    from linesight.export.engine import Engine, Prediction
    from linesight.trainer.type_training import fit_classifier

    plain, auto = bundles(args.work)
    rng = np.random.default_rng(1)
    ok5 = texture(H, W, rng)
    ok224 = np.ascontiguousarray(ok5[:224, :224])
    ng = ng_frame(rng)
    eng, eng_auto = Engine(plain, threads=2), Engine(auto, threads=2)
    rows = []
    for name, e, frame in (("ok_5mp", eng, ok5), ("ok_224", eng, ok224), ("ok_5mp_auto_domain", eng_auto, ok5)):
        e.manifest.thresholds.image = 1e9  # OK whatever the random-init scores
        med, best = timed(lambda e=e, f=frame: e.predict_batch([f], regions=False), args.repeat)
        rows.append((name, med, best, ""))

    eng.manifest.thresholds.image = 0.0  # NG: the analysis runs
    pred = eng.predict_batch([ng], regions=False, keep_features=True)[0]
    thr = float(np.quantile(pred.anomaly_map, 0.9))
    noisy = spotted(pred.anomaly_map, thr, rng)
    many = A.measure_regions(noisy, thr, max_regions=32)
    # any classifier of the right width costs the same: 3 types of embeddings taken from the frame's own cells
    emb = np.stack([_embed(pred, r) for r in many])
    labels = [("pit", "crack", "stain")[k % 3] for k in range(len(emb))]
    clf = fit_classifier(emb + rng.normal(0, 0.01, emb.shape).astype(np.float32), labels, list(range(len(emb))),
                         input_hw=(224, 224))

    def ng_path() -> None:
        p = eng.predict_batch([ng], regions=False, keep_features=True)[0]
        A.analyze(p, thr, ng, max_regions=32, classifier=clf)

    med, best = timed(ng_path, args.repeat)
    n = len(A.measure_regions(pred.anomaly_map, thr))
    rows.append(("ng_5mp_types", med, best, f"predict + analyze, {n} regions on the engine's own map"))
    med, best = timed(lambda: A.analyze(Prediction(pred.score, "NG", pred.threshold, noisy, features=pred.features,
                                                   view=pred.view), thr, ng, max_regions=32, classifier=clf),
                      args.repeat)
    total = len(A.measure_regions(noisy, thr))
    rows.append(("ng_5mp_32_regions", med, best, f"analyze only: {len(many)} of {total} regions measured and typed"))
    print(f"{'case':<22}{'median ms':>11}{'best ms':>10}  note")
    for name, med, best, note in rows:
        print(f"{name:<22}{med:>11.1f}{best:>10.1f}  {note}")
    return 0


def _embed(pred, region) -> np.ndarray:
    """The region's embedding from its peak cell (enough for a classifier that only has to cost the same)."""
    from linesight.export.type_classifier import region_embedding

    gh, gw = pred.features.shape[1:]
    w = np.zeros((gh, gw), np.float32)
    h, wd = pred.anomaly_map.shape
    w[min(gh - 1, region.peak_xy[1] * gh // h), min(gw - 1, region.peak_xy[0] * gw // wd)] = 1.0
    return region_embedding(pred.features, w)


if __name__ == "__main__":
    sys.exit(main())
