"""Datasets: MVTec-AD layout (train/good, test/<type>, ground_truth/<type>/<stem>_mask.png) or a plain
folder of good images. Unreadable files are reported by name and skipped, never crash a run."""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from linesight.errors import DataError, LinesightError
from linesight.export.images import list_images, read_image
from linesight.export.images import read_mask as read_mask_file

log = logging.getLogger(__name__)


@dataclass
class Sample:
    path: Path
    label: int  # 0 good, 1 defective
    defect_type: str  # "good" or the test sub-folder name
    mask_path: Path | None = None


@dataclass
class Dataset:
    root: Path
    train: list[Path]
    test: list[Sample] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.root.name


def open_dataset(root: str | Path) -> Dataset:
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset {root} is not a folder")
    if (root / "train").is_dir() or (root / "test").is_dir():
        good = root / "train" / "good"
        train = list_images(good) if good.is_dir() else []
        test: list[Sample] = []
        test_root = root / "test"
        for sub in sorted(p for p in test_root.iterdir() if p.is_dir()) if test_root.is_dir() else []:
            label = 0 if sub.name == "good" else 1
            for img in list_images(sub):
                mask = root / "ground_truth" / sub.name / f"{img.stem}_mask.png"
                test.append(Sample(img, label, sub.name, mask if label and mask.is_file() else None))
        return Dataset(root, train, test)
    train = list_images(root)
    if not train:
        raise DataError(f"{root} holds no images (.png .jpg .bmp .tif) and is not an MVTec-layout folder "
                        "(train/good, test/<type>)")
    return Dataset(root, train)


def load_images(paths: list[Path]) -> tuple[list[np.ndarray], list[Path], list[str]]:
    """Read what can be read; return images, their paths, and 'name: why' for the skipped ones."""
    images, kept, skipped = [], [], []
    for p in paths:
        try:
            images.append(read_image(p))
            kept.append(p)
        except LinesightError as exc:
            log.warning("skipping unreadable image %s: %s", p, exc)
            skipped.append(f"{p.name}: {exc}")
    return images, kept, skipped


def read_mask(sample: Sample, shape: tuple[int, int]) -> np.ndarray:
    """Binary mask of the image's size; zeros for good images or a defect without a mask file."""
    if sample.mask_path is None:
        return np.zeros(shape, np.uint8)
    return read_mask_file(sample.mask_path, shape)


def holdout_split(paths: list[Path], fraction: float, seed: int) -> tuple[list[Path], list[Path]]:
    """Deterministic by file name, so the same images are held out on every run."""
    def key(p: Path) -> int:
        return int(hashlib.sha1(f"{seed}:{p.name}".encode()).hexdigest()[:8], 16)

    ranked = sorted(paths, key=key)
    n_hold = max(1, int(round(len(paths) * fraction))) if fraction > 0 and len(paths) >= 3 else 0
    hold = set(ranked[:n_hold])
    return [p for p in paths if p not in hold], [p for p in paths if p in hold]


def fingerprint(paths: list[Path], root: Path) -> str:
    """sha256 over relative names and contents: identifies exactly which images trained a model."""
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(str(p.relative_to(root) if p.is_relative_to(root) else p.name).encode())
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()
