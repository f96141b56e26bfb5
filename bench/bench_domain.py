"""Background and part edges: false rejects with and without a domain (ROI / automatic foreground).

For each domain option the same bundle (copied) gets the domain with `set_domain`, then every test image
goes through the engine. Printed per option: false rejects among good test images at the bundle's own
threshold (held-out good images, no defect seen), how many of those have their worst pixel in the border
band (within BAND of the image edge: background, fixture, tile edge), image AUROC, pixel AUROC.

    .venv/bin/python bench/bench_domain.py BUNDLE ../shared/datasets/magnetic_tile
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

BAND = 0.05  # fraction of the image size


def border_roi(path: Path, margin: float) -> Path:
    m = np.zeros((200, 200), np.uint8)
    k = int(round(200 * margin))
    m[k:200 - k, k:200 - k] = 255
    cv2.imwrite(str(path), m)
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle")
    ap.add_argument("dataset")
    ap.add_argument("--margin", type=float, default=0.05, help="ROI option: ignore this fraction at each edge")
    a = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    from linesight.export.engine import Engine
    from linesight.trainer import metrics as M
    from linesight.trainer.data import open_dataset
    from linesight.trainer.evaluate import score_samples, set_domain

    samples = open_dataset(a.dataset).test
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        roi = border_roi(Path(tmp) / "roi.png", a.margin)
        options = {"none": dict(mode="none"), f"roi (ignore {a.margin:.0%} edges)": dict(mode="mask", mask=roi),
                   "auto (Otsu)": dict(mode="auto"), "auto, erode 8 px": dict(mode="auto", erode_px=8)}
        for name, kw in options.items():
            b = Path(tmp) / "b"
            shutil.rmtree(b, ignore_errors=True)
            shutil.copytree(a.bundle, b)
            set_domain(b, **kw)
            eng = Engine(b)
            recs, _ = score_samples(eng, samples)
            thr = eng.threshold
            fr = [r for r in recs if r.label == 0 and r.score >= thr]
            edge = 0
            for r in fr:
                h, w = r.anomaly_map.shape
                y, x = np.unravel_index(int(r.anomaly_map.argmax()), (h, w))
                by, bx = max(1, int(h * BAND)), max(1, int(w * BAND))
                edge += int(y < by or y >= h - by or x < bx or x >= w - bx)
            m = M.summarize(recs, threshold=thr)
            rows.append({"domain": name, "false_rejects": len(fr), "good": sum(r.label == 0 for r in recs),
                         "fr_worst_pixel_at_edge": edge, "image_auroc": round(m["image_auroc"], 3),
                         "pixel_auroc": round(m["pixel_auroc"], 3), "recall_at_threshold": round(m["recall"], 3)})
            print(json.dumps(rows[-1]), flush=True)
    print(f"\n| domain | false rejects (good) | of which worst pixel in the {BAND:.0%} edge band | image AUROC | "
          "pixel AUROC | recall at threshold |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['domain']} | {r['false_rejects']}/{r['good']} | {r['fr_worst_pixel_at_edge']} | "
              f"{r['image_auroc']:.3f} | {r['pixel_auroc']:.3f} | {r['recall_at_threshold']:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
