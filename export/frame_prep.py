"""The one frame-preparation path: photometric normalisation, then alignment (training and daemon alike).

Fit calls `prepare_frame_info` once on the good images (reference statistics + reference image, stored as
plain bundle files - no pickle) and then passes every training image through `FramePrep`, exactly as the
engine does for each frame, so the memory bank and the daemon see identically prepared images.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np

from linesight.config.frame import FrameInfo
from linesight.errors import BundleError, DataError
from linesight.export.align import Aligner, AlignResult, make_reference
from linesight.export.photometric import normalise, reference_stats

log = logging.getLogger(__name__)

REFERENCE_FILE = "frame/reference.png"


@dataclass(frozen=True)
class FrameReport:
    """What preparation did to one frame. `failure` is set only when alignment failed under on_failure
    failsafe ("alignment_failed: <reason>"); under "unaligned" the frame is scored as it is and
    `unaligned` is True. dx, dy in full-frame pixels; quality is None when alignment is off."""

    aligned: bool = False
    dx: float = 0.0
    dy: float = 0.0
    angle_deg: float = 0.0
    quality: float | None = None
    failure: str | None = None
    unaligned: bool = False
    matrix: np.ndarray | None = None  # aligned -> frame pixels (2x3), to put maps back on the original frame

    def to_dict(self) -> dict:
        return {"aligned": self.aligned, "dx": round(self.dx, 2), "dy": round(self.dy, 2),
                "angle_deg": round(self.angle_deg, 3),
                "quality": None if self.quality is None else round(self.quality, 4),
                "failure": self.failure, "unaligned": self.unaligned}


def _decode_reference(data: bytes, name: str) -> np.ndarray:
    ref = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if ref is None or ref.ndim != 2:
        raise BundleError(f"bundle file {name} is not a grayscale PNG: the bundle is damaged - refit or re-copy it")
    return ref


class FramePrep:
    """Built once per bundle from the manifest's `frame` and the bundle's extra files; then per frame."""

    def __init__(self, info: FrameInfo, extras: dict[str, bytes]):
        self.info = info
        self.photometric_on = info.photometric.mode != "none"
        if info.photometric.mode == "gain_offset" and (info.photometric.ref_mean is None
                                                       or info.photometric.ref_std is None):
            raise BundleError("manifest frame.photometric is gain_offset without ref_mean/ref_std: they are filled "
                              "by fit (prepare_frame_info) - refit the bundle")
        self.aligner: Aligner | None = None
        if info.align.mode != "none":
            name = info.align.reference_file
            if not name or name not in extras:
                raise BundleError(f"manifest frame.align needs the reference image {name or REFERENCE_FILE!r} but "
                                  "the bundle does not hold it - refit the bundle")
            self.aligner = Aligner(info.align, _decode_reference(extras[name], name))
        self.active = self.photometric_on or self.aligner is not None

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, FrameReport]:
        """One frame, already validated by its caller (the engine's boundary, or read_image at fit)."""
        if not self.active:
            return image, FrameReport()
        if self.photometric_on:
            image = normalise(image, self.info.photometric)
        if self.aligner is None:
            return image, FrameReport()
        res: AlignResult = self.aligner(image)
        if res.ok:
            return res.image, FrameReport(True, res.dx, res.dy, res.angle_deg, res.quality, matrix=res.matrix)
        if self.info.align.on_failure == "failsafe":
            return res.image, FrameReport(False, res.dx, res.dy, res.angle_deg, res.quality,
                                          failure=f"alignment_failed: {res.reason}")
        return res.image, FrameReport(False, res.dx, res.dy, res.angle_deg, res.quality, unaligned=True)


_CHECK_IMAGES = 64  # training images registered at fit to check the reference is usable
_MAX_FAILING = 0.5


def _check_registrable(images: list[np.ndarray], aligner: Aligner) -> None:
    """Fit-time sanity check: the good images must register to their own reference.

    A scene without fixed structure (each part framed differently, plain texture) yields a reference that
    nothing matches; refusing here beats a daemon that fails every frame.
    """
    step = max(1, len(images) // _CHECK_IMAGES)
    results = [aligner(im) for im in images[::step][:_CHECK_IMAGES]]
    failing = [r for r in results if not r.ok]
    quality = float(np.median([r.quality for r in results]))
    log.info("alignment check on training images", extra={"checked": len(results), "failing": len(failing),
                                                           "median_quality": quality})
    if len(failing) > _MAX_FAILING * len(results):
        reasons = sorted({(r.reason or "").split(" (")[0] for r in failing})[:3]
        raise DataError(f"alignment: {len(failing)} of {len(results)} training images do not register to their "
                        f"median reference (median quality {quality:.2f}, min_quality "
                        f"{aligner.info.min_quality}; e.g. {'; '.join(reasons)}). The scene has no fixed "
                        "structure to align on: set frame.align.mode: none, or lower frame.align.min_quality "
                        "/ widen max_shift_frac and max_angle_deg if the parts really are fixtured")
    if failing:
        log.warning("some training images do not register to the reference",
                    extra={"failing": len(failing), "checked": len(results)})


def prepare_frame_info(images: list[np.ndarray], info: FrameInfo) -> tuple[FrameInfo, dict[str, bytes]]:
    """Fit time: fill the reference statistics and build the reference image from the good images.

    Returns the completed FrameInfo (for the manifest) and the bundle extras ({} when alignment is off).
    The reference is built from photometrically normalised images: the aligner sees frames after that step.
    """
    if not images:
        raise DataError("frame preparation: no training images given")
    photometric = info.photometric
    if photometric.mode == "gain_offset":
        mean, std = reference_stats(images)
        photometric = photometric.model_copy(update={"ref_mean": mean, "ref_std": std})
    extras: dict[str, bytes] = {}
    align = info.align
    if align.mode != "none":
        normed = [normalise(im, photometric) for im in images] if photometric.mode != "none" else images
        ref = make_reference(normed, align)
        ok, png = cv2.imencode(".png", ref)
        if not ok:
            raise DataError("frame preparation: could not encode the alignment reference as PNG")
        extras[REFERENCE_FILE] = png.tobytes()
        align = align.model_copy(update={"reference_file": REFERENCE_FILE})
        _check_registrable(normed, Aligner(align, ref))
    filled = FrameInfo(photometric=photometric, align=align)
    log.info("frame preparation fitted", extra={"photometric": photometric.mode, "align": align.mode,
                                                "images": len(images)})
    return filled, extras
