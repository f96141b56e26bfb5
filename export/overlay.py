"""Heatmap colouring and overlays, the same for reports, `predict --overlay`, HMI images and the archive."""
from __future__ import annotations

import math

import cv2
import numpy as np

from linesight.export.preprocess import to_unit_rgb

#: value/threshold * HEATMAP_GAIN, clipped to [0, 1]: the decision threshold sits at mid-scale (green in
#: JET) and twice the threshold saturates (red), so colours mean the same across models.
HEATMAP_GAIN = 0.5


def colorize(heatmap: np.ndarray, threshold: float | None) -> np.ndarray:
    """Float anomaly map -> 8-bit BGR (JET). Without a usable threshold the map's maximum is used."""
    hm = np.asarray(heatmap, dtype=np.float32)
    if hm.ndim == 3 and hm.shape[-1] == 1:
        hm = hm[..., 0]
    if hm.ndim != 2:
        raise ValueError(f"heatmap must be a 2-D float map, got shape {hm.shape}")
    if threshold is None or not math.isfinite(threshold) or threshold <= 0:
        peak = float(np.nanmax(hm)) if hm.size else 0.0
        threshold = peak * HEATMAP_GAIN if peak > 0 and math.isfinite(peak) else 1.0
    scaled = np.nan_to_num(hm * (HEATMAP_GAIN * 255.0 / threshold), nan=0.0, posinf=255.0, neginf=0.0)
    return cv2.applyColorMap(np.clip(scaled, 0.0, 255.0).astype(np.uint8), cv2.COLORMAP_JET)


def overlay(image: np.ndarray, amap: np.ndarray, threshold: float, alpha: float = 0.45) -> np.ndarray:
    """Image with the coloured map blended in and the above-threshold regions outlined in white."""
    base = (to_unit_rgb(image)[:, :, ::-1] * 255).astype(np.uint8)
    out = cv2.addWeighted(base, 1 - alpha, colorize(amap, threshold), alpha, 0)
    contours, _ = cv2.findContours((amap >= threshold).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(out, contours, -1, (255, 255, 255), 1)
    return out
