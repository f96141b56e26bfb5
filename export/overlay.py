"""Heatmap overlays for people (reports, predict --overlay, HMI images)."""
from __future__ import annotations

import cv2
import numpy as np

from linesight.export.preprocess import to_unit_rgb


def colorize(amap: np.ndarray, threshold: float) -> np.ndarray:
    """Map -> BGR uint8 JET, scaled so the threshold sits at mid-scale (red = well above it)."""
    scale = 0.5 / threshold if threshold > 0 and np.isfinite(threshold) else 1.0 / max(float(amap.max()), 1e-6)
    return cv2.applyColorMap(np.clip(amap * scale * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)


def overlay(image: np.ndarray, amap: np.ndarray, threshold: float, alpha: float = 0.45) -> np.ndarray:
    base = (to_unit_rgb(image)[:, :, ::-1] * 255).astype(np.uint8)
    heat = colorize(amap, threshold)
    out = cv2.addWeighted(base, 1 - alpha, heat, alpha, 0)
    contours, _ = cv2.findContours((amap >= threshold).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(out, contours, -1, (255, 255, 255), 1)
    return out
