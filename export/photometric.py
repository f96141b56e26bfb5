"""Lighting compensation: the same intensity normalisation in training and in the daemon (no torch).

gain_offset maps a frame's robust intensity statistics (median, IQR/1.349 of luminance) onto the training
reference, so lamp ageing or exposure drift does not read as an anomaly. Robust statistics are used because
a defect or a saturated highlight must not shift the whole frame's correction. CLAHE equalises contrast
locally on luminance (gray, or L of LAB for colour) for lighting that is uneven across the part.
"""
from __future__ import annotations

import logging

import cv2
import numpy as np

from linesight.config.frame import PhotometricInfo
from linesight.errors import BundleError, DataError
from linesight.export.images import check_image, full_scale, to_gray_unit

log = logging.getLogger(__name__)

_STAT_PIXELS = 65536  # subsample for statistics: plenty for percentiles, keeps 25 MP frames cheap
_GAIN_LIMITS = (0.25, 4.0)  # a nearly flat frame must not get its noise amplified without bound


def _colour(image: np.ndarray) -> bool:
    return image.ndim == 3 and image.shape[2] in (3, 4)


def _unit_luminance_sample(image: np.ndarray) -> np.ndarray:
    """Luminance of a strided pixel subsample as float32 in [0, 1]."""
    h, w = image.shape[:2]
    step = max(1, int(np.sqrt(h * w / _STAT_PIXELS)))
    return to_gray_unit(image[::step, ::step])


def robust_stats(image: np.ndarray) -> tuple[float, float]:
    """(median, IQR / 1.349) of luminance in full-scale units: the mean/std of a normal distribution."""
    check_image(image)
    lum = _unit_luminance_sample(image)
    q25, q50, q75 = np.percentile(lum, (25, 50, 75))
    return float(q50), float((q75 - q25) / 1.349)


def reference_stats(images: list[np.ndarray]) -> tuple[float, float]:
    """Reference (mean, std) for gain_offset: the median over the training images of their robust stats."""
    if not images:
        raise DataError("photometric reference: no training images given")
    stats = np.array([robust_stats(im) for im in images], dtype=np.float64)
    mean, std = float(np.median(stats[:, 0])), float(np.median(stats[:, 1]))
    if std <= 1e-6:
        raise DataError("photometric reference: the training images have no intensity spread (all flat?); "
                        "gain_offset cannot be used with them - set frame.photometric.mode: none")
    log.info("photometric reference", extra={"ref_mean": mean, "ref_std": std, "images": len(images)})
    return mean, std


def _apply_affine(image: np.ndarray, gain: float, offset: float) -> np.ndarray:
    """out = in * gain + offset (unit scale) on the colour channels, keeping dtype, shape and alpha."""
    if image.dtype == np.uint8:
        lut = np.clip(np.arange(256, dtype=np.float32) * gain + offset * 255.0 + 0.5, 0, 255).astype(np.uint8)
        if image.ndim == 3 and image.shape[2] == 4:
            out = image.copy()
            out[:, :, :3] = cv2.LUT(np.ascontiguousarray(image[:, :, :3]), lut)
            return out
        return cv2.LUT(image, lut).reshape(image.shape)
    if image.dtype == np.uint16:
        lut = np.clip(np.arange(65536, dtype=np.float32) * gain + offset * 65535.0 + 0.5, 0, 65535).astype(np.uint16)
        out = lut[image]
        if image.ndim == 3 and image.shape[2] == 4:
            out[:, :, 3] = image[:, :, 3]
        return out
    out = np.clip(image * np.float32(gain) + np.float32(offset), 0.0, 1.0).astype(np.float32)
    if image.ndim == 3 and image.shape[2] == 4:
        out[:, :, 3] = image[:, :, 3]
    return out


def gain_offset(image: np.ndarray, ref_mean: float, ref_std: float) -> np.ndarray:
    """Map the frame's robust luminance mean/std onto (ref_mean, ref_std); same gain on every channel."""
    mean, std = robust_stats(image)
    gain = float(np.clip(ref_std / max(std, 1e-6), *_GAIN_LIMITS))
    return _apply_affine(image, gain, ref_mean - mean * gain)


def _clahe_plane(plane: np.ndarray, info: PhotometricInfo) -> np.ndarray:
    """CLAHE on one uint8/uint16 plane.

    OpenCV's clip limit is per histogram bin; a 16-bit plane has 256x more bins, so the same number would clip
    almost everything away. Scaling it by 256 makes a 16-bit frame come out like its 8-bit version.
    """
    clip = info.clahe_clip * (256.0 if plane.dtype == np.uint16 else 1.0)
    clahe = cv2.createCLAHE(clipLimit=clip, tileGridSize=(info.clahe_tile, info.clahe_tile))
    return clahe.apply(np.ascontiguousarray(plane))


def clahe(image: np.ndarray, info: PhotometricInfo) -> np.ndarray:
    """CLAHE on luminance: gray directly; colour through LAB L (8-bit) or float LAB with a 16-bit L plane."""
    shape, dtype = image.shape, image.dtype
    if not _colour(image):
        plane = image.reshape(shape[0], shape[1])
        if dtype == np.float32:
            p16 = (np.clip(plane, 0.0, 1.0) * 65535.0 + 0.5).astype(np.uint16)
            return (_clahe_plane(p16, info).astype(np.float32) / 65535.0).reshape(shape)
        return _clahe_plane(plane, info).reshape(shape)
    bgr = np.ascontiguousarray(image[:, :, :3])
    if dtype == np.uint8:
        lab = cv2.cvtColor(bgr, cv2.COLOR_BGR2LAB)
        lab[:, :, 0] = _clahe_plane(lab[:, :, 0], info)
        out3 = cv2.cvtColor(lab, cv2.COLOR_LAB2BGR)
    else:  # uint16 / float32: float LAB (L in 0..100), L equalised as 16-bit
        unit = bgr.astype(np.float32) / np.float32(full_scale(dtype)) if dtype == np.uint16 else np.clip(bgr, 0, 1)
        lab = cv2.cvtColor(unit, cv2.COLOR_BGR2LAB)
        l16 = (lab[:, :, 0] * (65535.0 / 100.0) + 0.5).astype(np.uint16)
        lab[:, :, 0] = _clahe_plane(l16, info).astype(np.float32) * (100.0 / 65535.0)
        out = np.clip(cv2.cvtColor(lab, cv2.COLOR_LAB2BGR), 0.0, 1.0)
        out3 = (out * 65535.0 + 0.5).astype(np.uint16) if dtype == np.uint16 else out.astype(np.float32)
    if shape[2] == 4:
        result = image.copy()
        result[:, :, :3] = out3
        return result
    return out3


def normalise(image: np.ndarray, info: PhotometricInfo) -> np.ndarray:
    """Apply the configured photometric normalisation; same dtype and shape as the input."""
    if info.mode == "none":
        return image
    check_image(image)
    if info.mode == "gain_offset":
        if info.ref_mean is None or info.ref_std is None:
            raise BundleError("frame.photometric.mode is gain_offset but ref_mean/ref_std are missing: they are "
                              "filled at fit time - refit the bundle (do not set the mode by hand)")
        return gain_offset(image, info.ref_mean, info.ref_std)
    return clahe(image, info)
