"""How a frame is shown to the backbone at one scale, and how the answers are put back together.

A scale is either the whole frame fitted into one model input (stretched, or letterboxed to keep the
aspect ratio), or the frame resized to `pixels_per_input` frame pixels per model-input pixel and cut into
model-input tiles with overlap. Every tile gives a patch grid; each grid cell of the frame is taken from
exactly one tile, the one in whose interior it lies (cuts in the middle of each overlap), so the stitched
map has no seams from tile borders. Fit (building a bank) and the engine (scoring) use this one geometry.

Working memory is the resized frame (native dtype) plus one batch of tiles, whatever the frame size.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from linesight.config.manifest import ScaleInfo
from linesight.export.preprocess import PreprocessSpec, normalise, resize_native


# A defect is seen well when it spans MIN_INPUT_PX..MAX_INPUT_PX model-input pixels: below, it blurs into one
# patch with normal texture (1.5 cells of the stride-8 grid); above half the input, it changes the whole view.
MIN_INPUT_PX = 12.0
MAX_INPUT_PX = 112.0


def frame_px_per_input(scale: ScaleInfo, frame_hw: tuple[int, int], spec: PreprocessSpec) -> float:
    """Frame pixels per model-input pixel of a scale (whole-frame views: depends on the frame size)."""
    if scale.mode == "tiles":
        return float(scale.pixels_per_input)
    h, w = frame_hw
    if spec.resize == "letterbox":
        return max(h / spec.height, w / spec.width)
    return math.sqrt(h * w / (spec.height * spec.width))


def sees(scale: ScaleInfo, frame_hw: tuple[int, int], spec: PreprocessSpec) -> tuple[float, float]:
    """Defect sizes (frame pixels) this scale sees well."""
    r = frame_px_per_input(scale, frame_hw, spec)
    return MIN_INPUT_PX * r, MAX_INPUT_PX * r


@dataclass(frozen=True)
class View:
    frame_hw: tuple[int, int]
    canvas_hw: tuple[int, int]  # the frame after resizing, before padding
    offset_yx: tuple[int, int]  # where the canvas sits in the padded plane
    plane_hw: tuple[int, int]  # padded plane: >= one tile, a multiple of the stride
    tile_hw: tuple[int, int]
    stride: int
    starts_y: tuple[int, ...]
    starts_x: tuple[int, ...]

    @property
    def grid_hw(self) -> tuple[int, int]:
        return self.plane_hw[0] // self.stride, self.plane_hw[1] // self.stride

    @property
    def tiles(self) -> list[tuple[int, int]]:
        return [(y, x) for y in self.starts_y for x in self.starts_x]

    def keep(self) -> list[tuple[slice, slice, slice, slice]]:
        """Per tile: (grid rows, grid cols, tile rows, tile cols) of the cells this tile owns."""
        ky = _owned(self.starts_y, self.tile_hw[0], self.stride)
        kx = _owned(self.starts_x, self.tile_hw[1], self.stride)
        out = []
        for (gy, ty) in ky:
            for (gx, tx) in kx:
                out.append((gy, gx, ty, tx))
        return out

    def valid_cells(self) -> np.ndarray:
        """Cells whose centre lies on the frame (not on letterbox or tile padding)."""
        gh, gw = self.grid_hw
        c = (np.arange(max(gh, gw)) + 0.5) * self.stride
        oy, ox = self.offset_yx
        ch, cw = self.canvas_hw
        rows = (c[:gh] >= oy) & (c[:gh] < oy + ch)
        cols = (c[:gw] >= ox) & (c[:gw] < ox + cw)
        return rows[:, None] & cols[None, :]

    def to_frame(self, plane_map: np.ndarray) -> np.ndarray:
        """A map over the padded plane (pixels) -> the frame's size."""
        oy, ox = self.offset_yx
        ch, cw = self.canvas_hw
        crop = plane_map[oy:oy + ch, ox:ox + cw]
        h, w = self.frame_hw
        return crop if crop.shape == (h, w) else cv2.resize(crop, (w, h), interpolation=cv2.INTER_LINEAR)

    def coverage(self, frame_mask: np.ndarray) -> np.ndarray:
        """A {0,1} frame-size mask -> the fraction of each grid cell it covers (float32, grid shape)."""
        ch, cw = self.canvas_hw
        canvas = cv2.resize(np.asarray(frame_mask, np.float32), (cw, ch), interpolation=cv2.INTER_AREA)
        plane = np.zeros(self.plane_hw, np.float32)
        oy, ox = self.offset_yx
        plane[oy:oy + ch, ox:ox + cw] = canvas
        gh, gw = self.grid_hw
        return cv2.resize(plane, (gw, gh), interpolation=cv2.INTER_AREA)

    def cells_of(self, frame_mask: np.ndarray) -> np.ndarray:
        """A {0,1} frame-size mask -> bool per grid cell (cell mostly inside)."""
        return self.coverage(frame_mask) >= 0.5


def _owned(starts: tuple[int, ...], tile: int, stride: int) -> list[tuple[slice, slice]]:
    """Cut each overlap in the middle: tile j owns the cells nearer its own centre than its neighbours'."""
    a = [s // stride for s in starts]
    n = tile // stride
    cuts = [(a[j + 1] + a[j] + n) // 2 for j in range(len(a) - 1)]
    out = []
    for j, aj in enumerate(a):
        lo = cuts[j - 1] if j > 0 else aj
        hi = cuts[j] if j < len(cuts) else aj + n
        out.append((slice(lo, hi), slice(lo - aj, hi - aj)))
    return out


def _starts(plane: int, tile: int, overlap: int) -> tuple[int, ...]:
    if plane <= tile:
        return (0,)
    step = tile - overlap
    return tuple(sorted(set(list(range(0, plane - tile, step)) + [plane - tile])))


def make_view(frame_hw: tuple[int, int], scale: ScaleInfo, spec: PreprocessSpec, stride: int) -> View:
    h, w = frame_hw
    th, tw = spec.height, spec.width
    if scale.mode == "whole":
        if spec.resize == "letterbox":
            s = min(th / h, tw / w)
            ch, cw = max(1, round(h * s)), max(1, round(w * s))
            off = ((th - ch) // 2, (tw - cw) // 2)
        else:
            ch, cw, off = th, tw, (0, 0)
        return View((h, w), (ch, cw), off, (th, tw), (th, tw), stride, (0,), (0,))
    r = scale.pixels_per_input
    ch, cw = max(1, round(h / r)), max(1, round(w / r))
    ph = max(th, math.ceil(ch / stride) * stride)
    pw = max(tw, math.ceil(cw / stride) * stride)
    return View((h, w), (ch, cw), (0, 0), (ph, pw), (th, tw), stride,
                _starts(ph, th, scale.overlap), _starts(pw, tw, scale.overlap))


def render(image: np.ndarray, view: View) -> np.ndarray:
    """The frame resized to the canvas and padded to the plane, in its own dtype (edge pixels repeated)."""
    canvas = resize_native(image, view.canvas_hw)
    oy, ox = view.offset_yx
    ph, pw = view.plane_hw
    ch, cw = view.canvas_hw
    if (ph, pw) == (ch, cw):
        return canvas
    return cv2.copyMakeBorder(canvas, oy, ph - ch - oy, ox, pw - cw - ox, cv2.BORDER_REPLICATE)


def iter_tiles(planes: list[np.ndarray], views: list[View], spec: PreprocessSpec,
               max_batch: int) -> Iterator[tuple[np.ndarray, list[tuple[int, int]]]]:
    """Batches of normalised tiles across images: (batch, [(image index, tile index)])."""
    jobs = [(i, t) for i, v in enumerate(views) for t in range(len(v.tiles))]
    for s in range(0, len(jobs), max_batch):
        chunk = jobs[s:s + max_batch]
        tiles = []
        for i, t in chunk:
            y, x = views[i].tiles[t]
            th, tw = views[i].tile_hw
            tiles.append(normalise(planes[i][y:y + th, x:x + tw], spec))
        yield np.stack(tiles).astype(np.float32, copy=False), chunk
