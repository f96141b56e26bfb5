"""Domain reduction: the part of the image where defects count (ROI mask or automatic foreground).

Applied inside the engine, so calibration, evaluation and the daemon all see the same domain.
"""
from __future__ import annotations

import cv2
import numpy as np

from linesight.config.manifest import DomainInfo
from linesight.errors import BundleError
from linesight.export.images import gray_u8


class Domain:
    def __init__(self, info: DomainInfo, files: dict[str, bytes]):
        self.info = info
        self.mask: np.ndarray | None = None
        if info.mode == "mask":
            data = files.get(info.mask_file) if info.mask_file else None
            if data is None:
                raise BundleError(f"domain mode 'mask' but the bundle has no {info.mask_file!r}")
            m = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
            if m is None or not (m > 0).any():
                raise BundleError(f"ROI mask {info.mask_file} is unreadable or empty")
            self.mask = (m > 0).astype(np.uint8)

    @property
    def active(self) -> bool:
        return self.info.mode != "none"

    def of(self, image: np.ndarray) -> np.ndarray | None:
        """uint8 {0,1} mask of the image's size, or None (whole image)."""
        h, w = image.shape[:2]
        if self.info.mode == "none":
            return None
        if self.info.mode == "mask":
            m = cv2.resize(self.mask, (w, h), interpolation=cv2.INTER_NEAREST)
        else:
            m = foreground(image, bright=self.info.auto_polarity == "bright")
        if self.info.erode_px:
            k = 2 * self.info.erode_px + 1
            m = cv2.erode(m, np.ones((k, k), np.uint8))
        return m


def foreground(image: np.ndarray, bright: bool = True) -> np.ndarray:
    """Otsu on a blurred gray copy, keep the largest component, fill its holes (defects inside stay in)."""
    gray = cv2.GaussianBlur(gray_u8(image), (0, 0), 3)
    _, m = cv2.threshold(gray, 0, 1, (cv2.THRESH_BINARY if bright else cv2.THRESH_BINARY_INV) + cv2.THRESH_OTSU)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    if n <= 1:
        return np.ones_like(m)
    keep = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    m = (labels == keep).astype(np.uint8)
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    filled = np.zeros_like(m)
    cv2.drawContours(filled, contours, -1, 1, thickness=cv2.FILLED)
    return filled
