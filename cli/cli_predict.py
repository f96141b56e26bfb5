"""`linesight predict`: files, folders (recursive) and globs through one engine; JSON lines, overlays, a summary.

Inputs are all resolved before the first image is scored, so a typo fails in one line at once instead of after
an hour of scoring. Output names come from each image's path relative to the inputs' common folder, so two
`001.png` from different folders never overwrite each other's overlay.
"""
from __future__ import annotations

import csv
import glob
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import cv2

from linesight.errors import DataError
from linesight.export.images import IMAGE_SUFFIXES, read_image

SUMMARY_SUFFIXES = (".csv", ".jsonl")
CSV_COLUMNS = ("image", "verdict", "score", "threshold", "regions", "failure", "overlay", "error")


@dataclass(frozen=True)
class ImageInput:
    """One image to score and the file-name-safe name its outputs get (unique within the run)."""
    path: Path
    name: str


def _images_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _expand_one(arg: str) -> list[Path]:
    if glob.has_magic(arg):
        hits = [Path(h) for h in sorted(glob.glob(arg, recursive=True))]
        found = [p for h in hits for p in (_images_under(h) if h.is_dir() else [h])
                 if p.suffix.lower() in IMAGE_SUFFIXES]
        if not found:
            raise DataError(f"no image matches {arg!r} (looked for {' '.join(IMAGE_SUFFIXES)})")
        return found
    p = Path(arg)
    if p.is_dir():
        found = _images_under(p)
        if not found:
            raise DataError(f"folder {p} holds no images ({' '.join(IMAGE_SUFFIXES)}), not even in "
                            "its sub-folders")
        return found
    if not p.is_file():
        raise DataError(f"{p}: no such file or folder")
    return [p]


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "image"


def expand_inputs(args: list[str]) -> list[ImageInput]:
    """Files as given, folders recursively, globs (also `**`) expanded; each image once, in the given order."""
    paths, seen = [], set()
    for arg in args:
        for p in _expand_one(arg):
            key = os.path.realpath(p)
            if key not in seen:
                seen.add(key)
                paths.append(p)
    root = os.path.commonpath([str(p.absolute().parent) for p in paths])
    out, taken = [], set()
    for p in paths:
        rel = p.absolute().relative_to(root)
        name = base = _safe("__".join(rel.with_suffix("").parts))
        n = 1
        while name in taken:  # different files whose sanitised names coincide (a.png / a.jpg, "a b" / "a_b")
            n += 1
            name = f"{base}-{n}"
        taken.add(name)
        out.append(ImageInput(p, name))
    return out


class Summary:
    """One row per image into a CSV (the flat columns) or JSONL (the full result line), written as they come,
    so an interrupted run keeps what it scored."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.suffix.lower() not in SUMMARY_SUFFIXES:
            raise DataError(f"--summary {path}: name it .csv or .jsonl (that picks the format)")
        if self.path.is_dir():
            raise DataError(f"--summary {path} is a folder; give a file path ending in .csv or .jsonl")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._f: IO[str] = open(self.path, "w", encoding="utf-8", newline="")  # noqa: SIM115 - closed in close()
        except OSError as exc:
            raise DataError(f"--summary {path}: cannot write it ({exc.strerror})") from None
        self._csv = csv.DictWriter(self._f, CSV_COLUMNS) if self.path.suffix.lower() == ".csv" else None
        if self._csv is not None:
            self._csv.writeheader()

    def add(self, row: dict) -> None:
        if self._csv is None:
            self._f.write(json.dumps(row) + "\n")
        else:
            flat = {k: row.get(k, "") for k in CSV_COLUMNS}
            flat["regions"] = len(row["regions"]) if "regions" in row else ""
            self._csv.writerow(flat)
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def run_predict(bundle: str, images: list[str], *, overlay: str | None, summary: str | None) -> int:
    """Score every input with one Engine; print one JSON line each. Unreadable images get an error line and
    the run goes on; they make the exit status 2 (one line on stderr), a clean run exits 0."""
    from linesight.export.engine import Engine
    from linesight.export.overlay import inspection_image
    from linesight.outputs import output_folder

    engine = Engine(bundle)
    inputs = expand_inputs(images)
    if overlay:
        output_folder(overlay, "predict --overlay")
    sink = Summary(summary) if summary else None
    failed = []
    try:
        for item in inputs:
            try:
                img = read_image(item.path)
            except DataError as exc:
                row = {"image": str(item.path), "error": str(exc)}
                failed.append(item.path.name)
            else:
                pred = engine.predict(img)
                row = {"image": str(item.path), **pred.to_dict(), "model": pred.model}
                if overlay:
                    out = Path(overlay) / f"{item.name}_overlay.png"
                    verdict = pred.verdict if pred.failure is None else f"{pred.verdict} ({pred.failure})"
                    view = inspection_image(img, pred.anomaly_map, engine.pixel_threshold, score=pred.score,
                                            threshold=pred.threshold, verdict=verdict, regions=pred.regions)
                    if not cv2.imwrite(str(out), view):
                        raise DataError(f"--overlay: cannot write {out}; check disk space and permissions")
                    row["overlay"] = str(out)
            print(json.dumps(row), flush=True)
            if sink is not None:
                sink.add(row)
    finally:
        if sink is not None:
            sink.close()
    if failed:
        raise DataError(f"{len(failed)} of {len(inputs)} images could not be read ({', '.join(failed[:3])}"
                        f"{', ...' if len(failed) > 3 else ''}); see their error lines")
    return 0
