"""Reading images the same way everywhere: any size, gray or colour, 8 or 16 bit."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from linesight.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


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
            raise DataError(f"cannot decode JPEG {where}: {str(exc).splitlines()[0]} (corrupt or truncated file)") from None
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
