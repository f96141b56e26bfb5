"""Heatmap colouring and overlays, the same for reports, `predict --overlay`, HMI images and the archive."""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import cv2
import numpy as np

from linesight.export.images import to_unit_rgb

if TYPE_CHECKING:
    from linesight.export.analysis import DefectRegion

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


#: Region boxes are pure magenta (BGR): JET blended over any image never produces it, so boxes stay legible.
BOX_BGR = (255, 0, 255)
#: Overlays of small images are enlarged (whole pixels, nearest neighbour) to at least this height for legibility.
MIN_VIEW_HEIGHT = 320
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _text_scale(height: int) -> float:
    return float(np.clip(height / 600, 0.45, 1.6))


def colour_bar(height: int, threshold: float, offset: float = 0.0) -> np.ndarray:
    """Key for `colorize(map - offset, threshold)`: bottom `offset`, middle `offset + threshold` (the decision
    threshold, green, ticked), top `offset + 2 x threshold` and above (red). Labelled when tall enough."""
    threshold = threshold if math.isfinite(threshold) and threshold > 0 else 1.0
    bar_w = max(14, height // 25)
    ramp = np.linspace(2 * threshold, 0.0, height, dtype=np.float32)[:, None].repeat(bar_w, axis=1)
    bar = colorize(ramp, threshold)
    if height < 60:
        return bar
    fs, th = _text_scale(height) * 0.8, max(1, round(_text_scale(height)))
    labels = ((f">={offset + 2 * threshold:.4g}", 0.0), (f"{offset + threshold:.4g}", 0.5), (f"{offset:.4g}", 1.0))
    note = "pixel threshold"  # under the middle value: green marks the threshold that outlines regions
    text_w = max(*(cv2.getTextSize(t, _FONT, fs, th)[0][0] for t, _ in labels),
                 cv2.getTextSize(note, _FONT, max(fs * 0.6, 0.33), 1)[0][0])
    text_h = cv2.getTextSize("0", _FONT, fs, th)[0][1]
    out = np.full((height, bar_w + 8 + text_w + 4, 3), 255, np.uint8)
    out[:, :bar_w] = bar
    for text, f in labels:
        y = round(f * (height - 1))
        cv2.line(out, (bar_w, y), (bar_w + 5, y), (0, 0, 0), th)
        base = int(np.clip(y + text_h // 2, text_h + 1, height - 2))
        cv2.putText(out, text, (bar_w + 8, base), _FONT, fs, (0, 0, 0), th, cv2.LINE_AA)
    mid = round(0.5 * (height - 1)) + text_h // 2 + text_h + 4
    cv2.putText(out, note, (bar_w + 8, mid), _FONT, max(fs * 0.6, 0.33), (60, 60, 60), 1, cv2.LINE_AA)
    return out


def _banner(width: int, lines: Sequence[str], colour: tuple[int, int, int], scale: float) -> np.ndarray:
    th = max(1, round(scale * 1.5))
    fs = scale
    while fs > 0.3 and max(cv2.getTextSize(t, _FONT, fs, th)[0][0] for t in lines) > width - 16:
        fs *= 0.9
    line_h = cv2.getTextSize("Ag", _FONT, fs, th)[0][1] + max(8, int(12 * fs))
    out = np.full((line_h * len(lines) + 10, width, 3), colour, np.uint8)
    for i, t in enumerate(lines):
        cv2.putText(out, t, (8, line_h * (i + 1)), _FONT, fs, (255, 255, 255), th, cv2.LINE_AA)
    return out


def inspection_image(image: np.ndarray, amap: np.ndarray, pixel_threshold: float, *, score: float,
                     threshold: float, verdict: str, regions: Sequence[DefectRegion] = ()) -> np.ndarray:
    """original | overlay with numbered region boxes | colour bar, under a banner with the verdict and
    score vs threshold: one PNG a person can judge without the JSON. Box N is `regions[N]` of the JSON."""
    f = max(1, math.ceil(MIN_VIEW_HEIGHT / image.shape[0]))
    base = (to_unit_rgb(image)[:, :, ::-1] * 255).astype(np.uint8)
    over = overlay(image, amap, pixel_threshold)
    if f > 1:
        base, over = (cv2.resize(x, None, fx=f, fy=f, interpolation=cv2.INTER_NEAREST) for x in (base, over))
    h = base.shape[0]
    scale, lw = _text_scale(h), max(2, h // 200)
    for r in regions:
        x, y, w, hh = (v * f for v in r.bbox)
        cv2.rectangle(over, (x, y), (x + w - 1, y + hh - 1), BOX_BGR, lw)
        label = str(r.index)
        (tw, tht), _ = cv2.getTextSize(label, _FONT, scale, lw - 1)
        tag_h = tht + 8
        # above the box, else below it, else inside: never over the box's own edges when there is room
        top = y - tag_h if y >= tag_h else y + hh if y + hh + tag_h <= over.shape[0] else y
        cv2.rectangle(over, (x, top), (x + tw + 6, top + tag_h), BOX_BGR, -1)
        cv2.putText(over, label, (x + 3, top + tht + 4), _FONT, scale, (255, 255, 255), lw - 1, cv2.LINE_AA)
    gap = np.full((h, max(6, h // 60), 3), 255, np.uint8)
    body = np.hstack([base, gap, over, gap, colour_bar(h, pixel_threshold)])
    ng = verdict != "OK"
    head = [f"{verdict}   score {score:.4g} / threshold {threshold:.4g}",
            f"{len(regions)} region{'s' if len(regions) > 1 else ''}: box N = regions[N] in the JSON" if regions
            else "no region above the pixel threshold"]
    return np.vstack([_banner(body.shape[1], head, (40, 40, 200) if ng else (60, 140, 60), scale), body])
