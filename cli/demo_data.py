"""The demo's built-in dataset, generated at run time: a procedural texture plus synthetic defects with exact masks.

Why generated: the package may ship no real images (magnetic_tile's repository has no licence), yet `linesight
demo` must run on a fresh machine; one seed gives the same pixels on every machine.
"""
from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np

from linesight.daemon.sources.synthetic import make_texture
from linesight.export.images import to_unit
from linesight.outputs import output_folder
from linesight.trainer.synth import DefectSynth

log = logging.getLogger(__name__)

DESCRIPTION = "generated (synthetic texture + synthetic defects)"
MARKER = ".linesight-demo-data"  # marks a folder this module wrote, so a rerun may overwrite it
KINDS = ("scratch", "spot", "crack")
SIZE = 256


def write_demo_dataset(out: str | Path, seed: int = 0, n_train: int = 60, n_good: int = 20,
                       n_defective: int = 20) -> dict[str, int]:
    """MVTec layout under `out` (train/good, test/good, test/<kind>, ground_truth/<kind>/<stem>_mask.png), PNG
    only; every image is its own texture seed, the defects are split evenly over KINDS. Returns images per folder."""
    out = output_folder(out, "demo data", marker=MARKER)
    counts: dict[str, int] = {}
    index = 0

    def texture() -> np.ndarray:
        nonlocal index
        index += 1
        return make_texture(SIZE, SIZE, seed * 1_000_000 + index)

    def save(folder: str, stem: str, img: np.ndarray) -> None:
        (out / folder).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(out / folder / f"{stem}.png"), img)
        counts[folder] = counts.get(folder, 0) + 1

    for i in range(n_train):
        save("train/good", f"good_{i:03d}", texture())
    for i in range(n_good):
        save("test/good", f"good_{i:03d}", texture())
    rng = np.random.default_rng([seed, 0xDE40])
    for i in range(n_defective):
        kind = KINDS[i % len(KINDS)]
        synth = DefectSynth(kinds=(kind,), size_range=(0.1, 0.35), count=(1, 1))
        img, mask, _ = synth(to_unit(texture()), rng)
        stem = f"{kind}_{i:03d}"
        save(f"test/{kind}", stem, np.round(img * 255).astype(np.uint8))
        (out / "ground_truth" / kind).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(out / "ground_truth" / kind / f"{stem}_mask.png"), mask * 255)
    log.info("demo data: wrote %s to %s", counts, out)
    return counts
