"""Anomaly map -> measured defect regions (size, orientation, contrast polarity, zone, mm), worst first.

Why its own module: the engine measures an NG frame's regions with exactly this code, and the rest of the
analysis (types, grades) reads only the measurements.

Conventions (all in original image pixels, x right, y down):
- `length_px` / `width_px`: long / short side of cv2.minAreaRect around the region's pixel centres, + 1
  px (a pixel is a 1x1 square, so a single pixel measures 1 x 1, a 1-px line has width 1).
- `orientation_deg` in [0, 180): direction of the long side, 0 = horizontal, 90 = vertical, growing
  counter-clockwise *as seen on screen* (a line rising to the right has 0 < angle < 90).
- `polarity`: mean image intensity inside the region vs a ring around it (excluding other anomalous
  pixels): darker / brighter, `mixed` (large parts both darker and brighter), `none` (no contrast above
  `polarity_tol` of full scale), `unknown` (no image given, or no ring pixels).
"""
from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import cv2
import numpy as np

from linesight.config.inspection import Polarity, Zone
from linesight.export.images import full_scale, gray_mean
from linesight.export.prediction import NO_ZONE, DefectRegion
from linesight.export.views import MaskCrop

__all__ = ["locate_regions", "measure_regions"]

log = logging.getLogger(__name__)


def _polarity(gray: np.ndarray, region: np.ndarray, anomalous: np.ndarray, tol: float, ring_px: int) -> Polarity:
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * ring_px + 1, 2 * ring_px + 1))
    ring = cv2.dilate(region.astype(np.uint8), kernel).astype(bool) & ~anomalous
    if not ring.any():
        return "unknown"
    inside, around = gray[region], float(gray[ring].mean())
    dark, bright = float((inside < around - tol).mean()), float((inside > around + tol).mean())
    if dark >= 0.25 and bright >= 0.25:
        return "mixed"
    diff = float(inside.mean()) - around
    if abs(diff) < tol:
        return "none"
    return "darker" if diff < 0 else "brighter"


def _zone_of(x: float, y: float, zones: Sequence[Zone]) -> str:
    for z in zones:
        if z.rect is not None:
            zx, zy, zw, zh = z.rect
            if zx <= x < zx + zw and zy <= y < zy + zh:
                return z.name
        elif z.polygon is not None:
            poly = np.asarray(z.polygon, dtype=np.float32).reshape(-1, 1, 2)
            if cv2.pointPolygonTest(poly, (float(x), float(y)), False) >= 0:
                return z.name
    return NO_ZONE


def measure_regions(anomaly_map: np.ndarray, pixel_threshold: float, image: np.ndarray | None = None,
                    **options: Any) -> list[DefectRegion]:
    """The regions of `locate_regions` without their pixel crops (options as there)."""
    return locate_regions(anomaly_map, pixel_threshold, image, **options)[0]


def locate_regions(
    anomaly_map: np.ndarray,
    pixel_threshold: float,
    image: np.ndarray | None = None,
    *,
    px_per_mm: float | None = None,
    zones: Sequence[Zone] = (),
    min_area_px: int = 1,
    polarity_tol: float = 0.02,
    ring_px: int = 5,
    max_regions: int | None = None,
) -> tuple[list[DefectRegion], list[MaskCrop]]:
    """Connected components (8-connected) of `anomaly_map >= pixel_threshold`, measured, worst first, plus each
    region's pixels as a crop of the same labelling (what typing needs: no second labelling, no frame-size mask
    per region). `image` (same height/width as the map) enables contrast polarity; `px_per_mm` adds mm
    measurements; `zones` name each region by its centroid (first match, else "none"); `max_regions` measures
    only the N highest-scoring regions (bounds the time on a noisy map; None = all)."""
    amap = np.asarray(anomaly_map, dtype=np.float32)
    if amap.ndim != 2:
        raise ValueError(f"anomaly_map must be 2-D (H, W), got shape {amap.shape}")
    if px_per_mm is not None and not px_per_mm > 0:
        raise ValueError(f"px_per_mm must be > 0, got {px_per_mm}")
    tol = 0.0
    if image is not None:
        if image.shape[:2] != amap.shape:
            raise ValueError(f"image {image.shape[:2]} and anomaly map {amap.shape} differ in size; "
                             "pass the original image the map was computed for")
        tol = polarity_tol * full_scale(image)
    anomalous = amap >= pixel_threshold
    n, labels, stats, centroids = cv2.connectedComponentsWithStats(anomalous.astype(np.uint8), connectivity=8)
    keep = [i for i in range(1, n) if stats[i, cv2.CC_STAT_AREA] >= min_area_px]
    if max_regions is not None and len(keep) > max_regions:
        peaks = np.full(n, -np.inf, dtype=np.float32)
        np.maximum.at(peaks, labels[anomalous], amap[anomalous])
        keep = sorted(keep, key=lambda i: -peaks[i])[:max_regions]
        log.debug("regions capped", extra={"regions": n - 1, "measured": max_regions})
    found: list[tuple[DefectRegion, MaskCrop]] = []
    H, W = amap.shape
    for i in keep:
        x, y, w, h, area = (int(v) for v in stats[i])
        # Work on the bbox padded by the ring width: cost scales with the region, not the image.
        x0, y0 = max(0, x - ring_px - 1), max(0, y - ring_px - 1)
        x1, y1 = min(W, x + w + ring_px + 1), min(H, y + h + ring_px + 1)
        lab = labels[y0:y1, x0:x1]
        own = lab == i
        vals = amap[y0:y1, x0:x1]
        scores = vals[own]
        peak = np.unravel_index(np.argmax(np.where(own, vals, -np.inf)), own.shape)
        contours, _ = cv2.findContours(own.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        (_, _), (s1, s2), _ = rect = cv2.minAreaRect(np.concatenate(contours))
        box = cv2.boxPoints(rect)
        e1, e2 = box[1] - box[0], box[2] - box[1]
        long_edge = e1 if np.hypot(*e1) >= np.hypot(*e2) else e2
        orientation = math.degrees(math.atan2(-float(long_edge[1]), float(long_edge[0]))) % 180.0
        length, width = max(s1, s2) + 1.0, min(s1, s2) + 1.0
        cx, cy = (float(c) for c in centroids[i])
        polarity: Polarity = "unknown"
        if image is not None:  # gray of the window only: no frame-size float copy of the image
            polarity = _polarity(gray_mean(image[y0:y1, x0:x1]), own, anomalous[y0:y1, x0:x1], tol, ring_px)
        scale = px_per_mm
        found.append((DefectRegion(
            index=0, bbox=(x, y, w, h), area_px=area, length_px=length, width_px=width,
            elongation=length / width, orientation_deg=round(orientation, 2) % 180.0, centroid=(cx, cy),
            peak_xy=(int(peak[1]) + x0, int(peak[0]) + y0), max_score=float(scores.max()),
            mean_score=float(scores.mean()), polarity=polarity, zone=_zone_of(cx, cy, zones),
            area_mm2=None if scale is None else area / scale**2,
            length_mm=None if scale is None else length / scale,
            width_mm=None if scale is None else width / scale,
        ), MaskCrop((H, W), y0, x0, own)))
    found.sort(key=lambda rc: -rc[0].max_score)
    return [replace(r, index=k) for k, (r, _) in enumerate(found)], [c for _, c in found]
