"""`linesight data prepare-magnetic-tile SRC DST`: the public magnetic tile repository as an MVTec-layout dataset.

Why a verb: the images cannot ship with linesight (their repository has no licence), so every user lays them out
from their own download, and the good split must come out the same on every machine (sha1 of the file name).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import tempfile
import zipfile
from pathlib import Path

import cv2

from linesight.errors import DataError
from linesight.export.images import read_image, read_mask
from linesight.outputs import output_folder

REPO = "https://github.com/abin24/Magnetic-tile-defect-datasets."
DEFECTS = {"MT_Blowhole": "blowhole", "MT_Break": "break", "MT_Crack": "crack", "MT_Fray": "fray",
           "MT_Uneven": "uneven"}
GOOD = "MT_Free"
MARKER = ".linesight-magnetic-tile"  # marks a folder this verb wrote, so a rerun may overwrite it
README = f"""# Magnetic Tile Defect dataset (MVTec-AD layout)

Written by `linesight data prepare-magnetic-tile` from {REPO}
(paper "Surface defect saliency of magnetic tile", Huang, Qiu, Yuan; The Visual Computer, 2020; cite it
when publishing results). That repository states no licence: keep these images out of anything you ship.

    train/good/*.jpg                       defect-free images (sha1 of the file name, last decimal digit 0-7)
    test/good/*.jpg                        defect-free images (last decimal digit 8-9)
    test/<defect>/*.jpg                    blowhole, break, crack, fray, uneven
    ground_truth/<defect>/<stem>_mask.png  pixel masks (0 = normal, 255 = defect), same size as the image
"""


def is_test_good(stem: str) -> bool:
    """The fixed good split: a good image is a test image when int(sha1(stem)) ends in 8 or 9 (about 20 %)."""
    return int(hashlib.sha1(stem.encode()).hexdigest(), 16) % 10 >= 8


def prepare_magnetic_tile(src: str | Path, dst: str | Path) -> dict[str, int]:
    """Lay out a checkout or .zip of the public repository (MT_<Type>/Imgs/<stem>.jpg + <stem>.png masks) under
    `dst`: train/good, test/good, test/<type>, ground_truth/<type>/<stem>_mask.png. Returns images per folder."""
    src = Path(src)
    if src.is_file() and zipfile.is_zipfile(src):
        with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(src) as zf:
            zf.extractall(tmp)
            return prepare_magnetic_tile(tmp, dst)
    if not src.is_dir():
        raise DataError(f"prepare-magnetic-tile: {src} is neither a folder nor a .zip; download {REPO}")
    folders = _class_folders(src)
    dst = output_folder(dst, "prepare-magnetic-tile", marker=MARKER)
    counts: dict[str, int] = {}
    for image in _images(folders[GOOD]):
        split = "test/good" if is_test_good(image.stem) else "train/good"
        _copy(image, dst / split / image.name, counts, split)
    for folder, kind in DEFECTS.items():
        for image in _images(folders[folder]):
            _copy(image, dst / "test" / kind / image.name, counts, f"test/{kind}")
            _write_mask(image, dst / "ground_truth" / kind / f"{image.stem}_mask.png")
    (dst / "README.md").write_text(README)
    return counts


def _class_folders(src: Path) -> dict[str, Path]:
    """MT_* folders anywhere under `src` (a GitHub zip wraps them in one more folder), each exactly once."""
    found: dict[str, list[Path]] = {}
    for p in sorted(src.rglob("MT_*")):
        if p.is_dir() and p.name in (GOOD, *DEFECTS):
            found.setdefault(p.name, []).append(p)
    missing = [name for name in (GOOD, *DEFECTS) if name not in found]
    if missing:
        raise DataError(f"prepare-magnetic-tile: no {', '.join(missing)} folder under {src}; "
                        f"SRC must be a checkout or .zip of {REPO}")
    twice = [str(p) for paths in found.values() if len(paths) > 1 for p in paths]
    if twice:
        raise DataError(f"prepare-magnetic-tile: class folders found more than once under {src} ({', '.join(twice)}); "
                        "point SRC at one copy")
    return {name: paths[0] for name, paths in found.items()}


def _images(folder: Path) -> list[Path]:
    images = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() == ".jpg")
    if not images:
        raise DataError(f"prepare-magnetic-tile: {folder} holds no .jpg images; is the download complete?")
    return images


def _copy(image: Path, target: Path, counts: dict[str, int], key: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(image, target)
    counts[key] = counts.get(key, 0) + 1


def _write_mask(image: Path, target: Path) -> None:
    """The repository's mask (<stem>.png beside the image) as 0/255, checked to match the image's size."""
    try:
        mask = read_mask(image.with_suffix(".png"), read_image(image).shape[:2], threshold=0.5)
    except DataError as exc:
        raise DataError(f"prepare-magnetic-tile: {image.name}: {exc}") from None
    target.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(target), mask * 255)


def _prepare(a: argparse.Namespace) -> int:
    counts = prepare_magnetic_tile(a.src, a.dst)
    print(json.dumps({"dataset": str(a.dst), "images": counts}, indent=2))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    d = subparsers.add_parser("data", help="prepare datasets (magnetic tile: public images, not shipped)",
                              description="Lay out public datasets in the MVTec layout linesight reads.")
    verbs = d.add_subparsers(dest="data_verb", required=True, metavar="VERB")
    p = verbs.add_parser("prepare-magnetic-tile",
                         help="abin24/Magnetic-tile-defect-datasets. checkout or zip -> MVTec layout",
                         description=f"Copy the public magnetic tile images ({REPO}: MT_Blowhole, MT_Break, "
                                     "MT_Crack, MT_Fray, MT_Uneven, MT_Free with .jpg images and .png masks) into "
                                     "DST as train/good, test/good, test/<type>, ground_truth/<type>/<stem>_mask.png. "
                                     "The good images are split by sha1 of the file name (about 80 % train), the "
                                     "same on every machine. See docs/data.md.")
    p.add_argument("src", help="the repository: a git checkout, an unpacked download, or its .zip")
    p.add_argument("dst", help="new or empty output folder (or an earlier output of this verb)")
    p.set_defaults(func=_prepare)
