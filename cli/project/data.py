"""A project's images: copied in under their content hash (a duplicate is skipped), with label and mask.

Files that are not readable images are reported by name and left out; the user's files are only read.
"""
from __future__ import annotations

import hashlib
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from linesight.config.project import GOOD, ImageEntry, check_label
from linesight.errors import DataError, LinesightError
from linesight.export.images import IMAGE_SUFFIXES, read_image, read_mask
from linesight.project.workspace import Project, now

log = logging.getLogger(__name__)


@dataclass
class AddReport:
    added: int = 0
    duplicates: int = 0
    masks: int = 0
    unreadable: list[str] = field(default_factory=list)  # "path: why"


def collect(inputs: list[str | Path]) -> list[Path]:
    """Image files named directly or found in folders (recursively), in a stable order."""
    found: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found += sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif item.is_file():
            found.append(item)
        else:
            raise DataError(f"project add: {item} does not exist")
    return found


def _mask_for(image: Path, masks: Path | None) -> Path | None:
    """MVTec names its masks <stem>_mask.png; a mask of the same stem is accepted too."""
    if masks is None:
        return None
    for name in (f"{image.stem}_mask.png", f"{image.stem}.png"):
        if (masks / name).is_file():
            return masks / name
    return None


def add_images(project: Project, inputs: list[str | Path], label: str = GOOD,
               masks: str | Path | None = None, origin: str = "add") -> AddReport:
    try:
        check_label(label)
    except ValueError as exc:
        raise DataError(f"project add: --{exc}") from None
    mask_dir = Path(masks) if masks is not None else None
    if mask_dir is not None and not mask_dir.is_dir():
        raise DataError(f"project add: --masks {mask_dir} is not a folder")
    if mask_dir is not None and label == GOOD:
        raise DataError("project add: --masks goes with a defect --label (good images have no defect mask)")
    index = project.data_index()
    known = {e.sha256 for e in index.images}
    report = AddReport()
    for path in collect(inputs):
        try:
            data = path.read_bytes()
            image = read_image(path)
            mask_src = _mask_for(path, mask_dir)
            if mask_src is not None:
                read_mask(mask_src, image.shape[:2])  # wrong size or unreadable: reported, image left out
        except (LinesightError, OSError) as exc:
            report.unreadable.append(f"{path}: {exc}")
            continue
        digest = hashlib.sha256(data).hexdigest()
        if digest in known:
            report.duplicates += 1
            continue
        rel = f"images/{digest}{path.suffix.lower()}"
        shutil.copyfile(path, project.data_dir / rel)
        mask_rel = None
        if mask_src is not None:
            mask_rel = f"masks/{digest}.png"
            shutil.copyfile(mask_src, project.data_dir / mask_rel)
            report.masks += 1
        index.images.append(ImageEntry(sha256=digest, file=rel, label=label, mask=mask_rel, name=path.name[:255],
                                       added=now(), origin=origin))
        known.add(digest)
        report.added += 1
    if report.added:
        project.save_data_index(index)
        project.record("add", f"{report.added} {label} image(s)"
                              + (f", {report.masks} with masks" if report.masks else ""))
    for line in report.unreadable:
        log.warning("project add: left out %s", line)
    return report
