"""Small defects on large frames: recall and latency of single-scale vs tiled vs planned multi-scale views.

Synthetic line-scan frames (brushed texture with slow shading, HxW e.g. 2048x8192) get defects of known
sizes painted by linesight's synthetic defect generator (spots, scratches, cracks; exact masks). A defect
counts as found when the fused anomaly map reaches, inside its mask, the threshold that passes every good
test frame (max over good frames: zero false rejects). Prints a table per plan: recall per defect size,
latency per frame and per scale, bank sizes, peak RSS.

    .venv/bin/python bench/bench_tiling.py --weights PATH.pth --height 2048 --width 8192
"""
from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

SIZES = (8, 12, 16, 24, 32, 48, 64, 96, 128, 200)


def texture(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    grain = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), sigmaX=6, sigmaY=0.8)
    grain /= grain.std() + 1e-6
    shade = cv2.resize(rng.normal(0, 1, (6, 24)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    return np.clip(128 + 14 * grain + 8 * shade, 0, 255).astype(np.uint8)


def paint(frame: np.ndarray, sizes: list[int],
          rng: np.random.Generator) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """Defects of the given sizes at random places; returns the frame and (size, bool mask) per defect."""
    from linesight.trainer.synth import DefectSynth

    out = frame.copy()
    found = []
    h, w = frame.shape
    for d in sizes:
        c = max(32, 3 * d)
        synth = DefectSynth(kinds=("spot", "scratch", "crack"), size_range=(1 / 3, 1 / 3), count=(1, 1))
        for _ in range(20):  # keep defects apart so each is scored on its own
            y, x = int(rng.integers(0, h - c)), int(rng.integers(0, w - c))
            if not any(m[y:y + c, x:x + c].any() for _, _, m in found):
                break
        crop = out[y:y + c, x:x + c].astype(np.float32) / 255
        img, mask, kinds = synth(crop, rng)
        out[y:y + c, x:x + c] = np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)
        full = np.zeros((h, w), bool)
        full[y:y + c, x:x + c] = mask > 0
        found.append((d, "line" if kinds[0] in ("scratch", "crack") else "spot", full))
    return out, found


def write_train(root: Path, n: int, h: int, w: int, seed: int) -> None:
    good = root / "train" / "good"
    good.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        cv2.imwrite(str(good / f"frame{i:02d}.png"), texture(h, w, rng))


def run_plan(name: str, over: dict, data: Path, weights: str, goods: list[np.ndarray],
             bads: list[tuple[np.ndarray, list]], work: Path) -> dict:
    from linesight.config.fit import preset
    from linesight.export.engine import Engine
    from linesight.trainer.fit import fit

    t0 = time.monotonic()
    b = fit(data, work / name, preset("fast", weights=weights, holdout_fraction=0.25, **over))
    fit_s = time.monotonic() - t0
    eng = Engine(work / name)
    lat, per_scale = [], {}
    good_max = 0.0
    for g in goods:
        t = time.perf_counter()
        p = eng.predict(g)
        lat.append(time.perf_counter() - t)
        good_max = max(good_max, float(p.anomaly_map.max()), p.score)
        for k, v in p.timings_ms.items():
            if k.startswith("scale:"):
                per_scale.setdefault(k[6:], []).append(v)
    hits: dict[str, dict[int, list[bool]]] = {"spot": {d: [] for d in SIZES}, "line": {d: [] for d in SIZES}}
    for frame, defects in bads:
        t = time.perf_counter()
        p = eng.predict(frame)
        lat.append(time.perf_counter() - t)
        for d, kind, m in defects:
            hits[kind][d].append(bool(p.anomaly_map[m].max() >= good_max))
    return {"plan": name, "scales": [(s.name, s.n_bank) for s in b.manifest.scales],
            "reasoning": b.manifest.plan.reasoning if b.manifest.plan else [],
            "recall": {k: {d: [int(np.sum(v)), len(v)] for d, v in h.items() if v} for k, h in hits.items()},
            "recall_all": {k: round(float(np.mean([x for v in h.values() for x in v])), 3) for k, h in hits.items()},
            "latency_ms_median": round(1e3 * float(np.median(lat)), 1),
            "scale_ms": {k: round(float(np.median(v)), 1) for k, v in per_scale.items()},
            "fit_s": round(fit_s, 1), "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default="none", help="backbone weights (none = random init; a .pth state dict)")
    ap.add_argument("--height", type=int, default=2048)
    ap.add_argument("--width", type=int, default=8192)
    ap.add_argument("--train", type=int, default=4, help="good training frames (a quarter are held out)")
    ap.add_argument("--test", type=int, default=3, help="defective test frames (each has every size twice)")
    ap.add_argument("--per-size", type=int, default=4, help="defects of each size per test frame")
    ap.add_argument("--plans", nargs="+", default=["whole", "tiles1", "tiles2.7", "plan"],
                    help="whole, tiles1, tiles2.7, plan (--defect-size 8 200); tiles1_ivf, plan_ivf: approximate kNN")
    ap.add_argument("--json", help="write the results here too")
    a = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    plans = {"whole": {"views": {"resize": "letterbox"}}, "tiles1": {"views": {"scales": [1.0]}},
             "tiles2.7": {"views": {"scales": [2.667]}},
             "plan": {"views": {"defect_size": (8, 200), "resize": "letterbox"}},
             "tiles1_ivf": {"views": {"scales": [1.0]}, "index": {"kind": "ivf"}},
             "plan_ivf": {"views": {"defect_size": (8, 200), "resize": "letterbox"}, "index": {"kind": "ivf"}}}
    rng = np.random.default_rng(7)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_train(work / "data", a.train, a.height, a.width, seed=1)
        goods = [texture(a.height, a.width, rng) for _ in range(2)]
        bads = [paint(texture(a.height, a.width, rng), [d for d in SIZES for _ in range(a.per_size)], rng)
                for _ in range(a.test)]
        print(f"frames {a.width}x{a.height}, {a.train} train ({a.train - max(1, a.train // 4)} in the bank), "
              f"2 good + {a.test} defective test frames, {a.per_size * len(SIZES)} defects each; weights {a.weights}",
              flush=True)
        rows = []
        for name in a.plans:
            r = run_plan(name, plans[name], work / "data", a.weights, goods, bads, work)
            rows.append(r)
            print(json.dumps(r), flush=True)
    print("\nrecall = found / painted (spots: compact blobs; lines: 1-3 px wide scratches/cracks of that length)")
    print("| plan | scales (bank rows) | kind | " + " | ".join(f"{d}px" for d in SIZES) + " | all | ms/frame | "
          "ms per scale |")
    print("|---|---|---|" + "---|" * (len(SIZES) + 3))
    for r in rows:
        for kind in ("spot", "line"):
            rec = r["recall"][kind]
            print(f"| {r['plan']} | {', '.join(f'{n} ({b})' for n, b in r['scales'])} | {kind} | "
                  + " | ".join(f"{rec[d][0]}/{rec[d][1]}" if d in rec else "-" for d in SIZES)
                  + f" | {r['recall_all'][kind]:.2f} | {r['latency_ms_median']:.0f} | "
                  + ", ".join(f"{k} {v:.0f}" for k, v in r["scale_ms"].items()) + " |")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
