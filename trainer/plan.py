"""Defect size range -> scales (whole-frame view and/or tiles), with the reasoning written down.

The backbone sees a defect well when it spans MIN_INPUT_PX..MAX_INPUT_PX input pixels (export/views.py).
A scale with `r` frame pixels per input pixel therefore covers defects of
MIN_INPUT_PX*r .. MAX_INPUT_PX*r frame pixels (a factor of ~9).
The plan starts from the finest scale the smallest defect needs and steps coarser by SCALE_STEP until the
largest defect is covered, replacing any scale at least as coarse as the whole-frame view by that view.
"""
from __future__ import annotations

import math

from linesight.config.manifest import ScaleInfo
from linesight.errors import DataError
from linesight.export.preprocess import PreprocessSpec
from linesight.export.views import MAX_INPUT_PX, MIN_INPUT_PX, frame_px_per_input

SCALE_STEP = 4.0
MAX_SCALES = 4
WHOLE = ScaleInfo(name="whole", mode="whole", bank_file="", n_bank=1)


def whole_ratio(frame_hw: tuple[int, int], input_size: int, letterbox: bool) -> float:
    spec = PreprocessSpec(input_size, input_size, resize="letterbox" if letterbox else "stretch")
    return frame_px_per_input(WHOLE, frame_hw, spec)


def make_plan(frame_hw: tuple[int, int], defect_px: tuple[float, float], input_size: int, *,
              letterbox: bool, overlap: int) -> tuple[list[ScaleInfo], list[str]]:
    """Scales (finest first; banks are filled in by fit) and human-readable reasons."""
    dmin, dmax = defect_px
    if not 0 < dmin <= dmax:
        raise DataError(f"defect size range {dmin}..{dmax} px: need 0 < min <= max")
    r_whole = whole_ratio(frame_hw, input_size, letterbox)
    why = [f"typical frame {frame_hw[1]}x{frame_hw[0]} px; the whole-frame view shows {r_whole:.2f} frame px per "
           f"input px and sees defects of {MIN_INPUT_PX * r_whole:.0f}..{MAX_INPUT_PX * r_whole:.0f} px",
           f"asked: defects of {dmin:g}..{dmax:g} frame px"]
    ratios: list[float] = []
    r = min(dmin / MIN_INPUT_PX, r_whole)
    while len(ratios) < MAX_SCALES:
        if r >= r_whole * 0.9:
            ratios.append(r_whole)
            break
        ratios.append(r)
        if MAX_INPUT_PX * r >= dmax:
            break
        r *= SCALE_STEP
    scales = []
    for r in ratios:
        if r >= r_whole * 0.9:
            scales.append(WHOLE.model_copy())
            why.append("scale 'whole': the frame fitted into one input " + ("(letterboxed)" if letterbox else
                                                                             "(stretched)"))
        else:
            r = round(r, 4)
            th = math.ceil(frame_hw[0] / r / input_size)
            tw = math.ceil(frame_hw[1] / r / input_size)
            scales.append(ScaleInfo(name=f"tiles@{r:g}", mode="tiles", pixels_per_input=r, overlap=overlap,
                                    bank_file="", n_bank=1))
            why.append(f"scale 'tiles@{r:g}': {r:g} frame px per input px, ~{th}x{tw} tiles of {input_size} px "
                       f"(overlap {overlap}), sees {MIN_INPUT_PX * r:.0f}..{MAX_INPUT_PX * r:.0f} px")
    if dmin < MIN_INPUT_PX * ratios[0] * 0.99:
        why.append(f"WARNING: defects below {MIN_INPUT_PX * ratios[0]:.0f} px need more than {MAX_SCALES} scales")
    if dmax > MAX_INPUT_PX * ratios[-1]:
        why.append(f"note: defects above {MAX_INPUT_PX * ratios[-1]:.0f} px fill most of the coarsest view; they "
                   "are still flagged but their maps are blurred over the part")
    if len(scales) > 1:
        why.append("fusion: each scale normalised by held-out good images (median patch -> 0, typical worst "
                   "good patch -> 1), then the max over scales")
    return scales, why
