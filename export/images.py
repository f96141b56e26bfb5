"""Pixel formats in one place: reading images and masks, dtype full scale, unit-float RGB and gray, source frames.

Images are OpenCV arrays: HxW or HxWxC (C = 1, 3 BGR, 4 BGRA), uint8, uint16 or float32 in [0, 1], any size.
Files and frames are validated where they enter (read_image, check_image); the conversions below trust their
input instead of re-checking it for every tile or plane, so they are cheap on the per-frame path.
"""
from __future__ import annotations

import functools
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import DTypeLike

from linesight.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


# ---------------------------------------------------------------- reading
def decode_image(data: np.ndarray, where: str) -> np.ndarray:
    """Encoded bytes -> image, bit depth kept (BGR order). JPEG is decoded by libjpeg-turbo in strict mode:
    data corrupt mid-stream is only a warning to libjpeg (OpenCV then returns garbage pixels that would be
    scored as a normal part), here it is a DataError naming `where`."""
    if data.size == 0:
        raise DataError(f"cannot decode image {where}: the file is empty (0 bytes)")
    if bytes(data[:2]) == b"\xff\xd8":
        import simplejpeg

        try:
            gray = simplejpeg.decode_jpeg_header(data)[2] == "Gray"
            image = simplejpeg.decode_jpeg(data, colorspace="GRAY" if gray else "BGR", strict=True)
        except ValueError as exc:
            raise DataError(f"cannot decode JPEG {where}: {str(exc).splitlines()[0]} "
                            "(corrupt or truncated file)") from None
        return image[:, :, 0] if gray else image
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise DataError(f"cannot decode image {where}: not a readable image file (corrupt or unsupported format)")
    return image


def read_image(path: str | Path) -> np.ndarray:
    """Decode a file keeping its bit depth (cv2 BGR order); DataError names the file when it fails."""
    p = Path(path)
    try:
        data = np.fromfile(p, dtype=np.uint8)
    except OSError as exc:
        raise DataError(f"cannot read image {p}: {exc.strerror or exc}") from exc
    image = decode_image(data, str(p))
    check_image(image, str(p))
    return image


def check_image(image: np.ndarray, where: str = "frame") -> None:
    """Reject arrays that are not images before they reach the model."""
    if not isinstance(image, np.ndarray):
        raise DataError(f"{where}: expected a numpy image, got {type(image).__name__}")
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
        raise DataError(f"{where}: unsupported image shape {image.shape} (need HxW, HxWx1, HxWx3 or HxWx4)")
    if min(image.shape[:2]) < 2:
        raise DataError(f"{where}: image of {image.shape[1]}x{image.shape[0]} px is too small")
    if image.dtype not in (np.uint8, np.uint16, np.float32):
        raise DataError(f"{where}: unsupported pixel type {image.dtype} (need uint8, uint16 or float32)")


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def read_mask(path: str | Path, shape: tuple[int, int], threshold: float = 0.0) -> np.ndarray:
    """A defect mask file -> uint8 0/1 of `shape` (h, w): 1 where its first channel is above `threshold` x
    full scale (0: any non-zero pixel; 0.5: the upper half, as a binarised 8-bit mask reads). DataError names
    the file and the problem (missing, unreadable, or not the image's size)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"mask {p} is missing (no such file)")
    m = read_image(p)
    m = m if m.ndim == 2 else m[..., 0]
    if m.shape != tuple(shape):
        raise DataError(f"mask {p} is {m.shape[1]}x{m.shape[0]}, image is {shape[1]}x{shape[0]}: "
                        "the image is not the size of its mask")
    return (m > threshold * full_scale(m.dtype)).astype(np.uint8)


# ---------------------------------------------------------------- scale
def full_scale(image_or_dtype: np.ndarray | DTypeLike) -> float:
    """The value of full white: 255 (uint8), 65535 (uint16), else 1.0 (float images are [0, 1]). Given an image
    rather than a dtype, a float image whose peak is above 1 counts as 0-255 (the analysis takes such arrays)."""
    is_image = isinstance(image_or_dtype, np.ndarray)
    dtype = image_or_dtype.dtype if is_image else np.dtype(image_or_dtype)
    if dtype == np.uint8:
        return 255.0
    if dtype == np.uint16:
        return 65535.0
    if not is_image or not image_or_dtype.size:
        return 1.0
    return 1.0 if float(np.nanmax(image_or_dtype)) <= 1.0 else 255.0


def to_unit(image: np.ndarray) -> np.ndarray:
    """uint8/uint16/float image -> float32 in [0, 1], channels unchanged (BGR stays BGR)."""
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    if image.dtype == np.uint16:
        return image.astype(np.float32) / 65535.0
    return np.clip(image, 0.0, 1.0).astype(np.float32, copy=False)


# ---------------------------------------------------------------- colour and gray
def to_unit_rgb(image: np.ndarray) -> np.ndarray:
    """Any supported image (BGR/gray, 8/16-bit/float) -> float32 RGB in [0, 1], HxWx3."""
    img = to_unit(image)
    if img.ndim == 2 or img.shape[2] == 1:
        img = np.repeat(img.reshape(img.shape[0], img.shape[1], 1), 3, axis=2)
    elif img.shape[2] == 4:
        img = img[:, :, :3]
    return np.ascontiguousarray(img[:, :, ::-1])  # BGR -> RGB


def to_gray_unit(image: np.ndarray) -> np.ndarray:
    """Any supported image -> float32 luminance (OpenCV BGR2GRAY, in the image's own dtype) in [0, 1], HxW."""
    img = image
    if img.ndim == 3 and img.shape[2] in (3, 4):
        img = cv2.cvtColor(np.ascontiguousarray(img[:, :, :3]), cv2.COLOR_BGR2GRAY)
    return to_unit(img.reshape(img.shape[0], img.shape[1]))


def gray_mean(image: np.ndarray) -> np.ndarray:
    """Equal-weight mean of the colour channels as float32 in the image's own scale, HxW: for contrast tests,
    where equal weights avoid assuming BGR vs RGB."""
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim == 3:
        return image[..., :3].astype(np.float32).mean(axis=2)
    return image.astype(np.float32)


def gray_u8(image: np.ndarray) -> np.ndarray:
    """8-bit gray (mean of the colour channels) of any supported image, made plane by plane from the image's own
    dtype (a table for gray 8/16-bit): the values of (to_unit_rgb(image).mean(axis=2) * 255).astype(uint8),
    without the frame-size float RGB copy."""
    if image.ndim == 3 and image.shape[2] >= 3:
        r, g, b = (to_unit(image[:, :, c]) for c in (2, 1, 0))
        return ((r + g + b) / 3 * 255).astype(np.uint8)
    plane = image.reshape(image.shape[:2])
    if plane.dtype == np.uint8:
        return cv2.LUT(plane, _gray_table(np.uint8))
    if plane.dtype == np.uint16:
        return _gray_table(np.uint16)[plane]
    v = to_unit(plane)
    return ((v + v + v) / 3 * 255).astype(np.uint8)


@functools.cache
def _gray_table(dtype: type) -> np.ndarray:
    """gray_u8 of every value of an integer gray dtype."""
    v = to_unit(np.arange(np.iinfo(dtype).max + 1, dtype=dtype))
    return ((v + v + v) / 3 * 255).astype(np.uint8)


def to_bgr_or_gray(image: np.ndarray, grayscale: bool) -> np.ndarray:
    """Normalise a decoded source image to the Frame convention: HxW or HxWx3 BGR, uint8/uint16.

    Raises ValueError (the source turns it into a bad frame) for other dtypes or channel counts.
    """
    if image.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"unsupported pixel type {image.dtype} (expected 8- or 16-bit integer)")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 3:
        if image.shape[2] == 4:
            image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
        elif image.shape[2] != 3:
            raise ValueError(f"unsupported channel count {image.shape[2]} (expected 1, 3 or 4)")
        if grayscale:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    elif image.ndim != 2:
        raise ValueError(f"unsupported image shape {image.shape}")
    return np.ascontiguousarray(image)
