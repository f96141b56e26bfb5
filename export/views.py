"""How a frame is shown to the backbone at one scale, and how the answers are put back together.

A scale is either the whole frame fitted into one model input (stretched, or letterboxed to keep the
aspect ratio), or the frame resized to `pixels_per_input` frame pixels per model-input pixel and cut into
model-input tiles with overlap. Every tile gives a patch grid; each grid cell of the frame is taken from
exactly one tile, the one in whose interior it lies (cuts in the middle of each overlap), so the stitched
map has no seams from tile borders. Fit (building a bank) and the engine (scoring) run this one geometry
through the one tile loop, `scan`, so training and runtime features cannot drift apart.

Views are cached per (frame shape, scale): a line's frames share one shape, so the geometry, ownership
slices, valid cells and coverage weights are worked out once. Working memory is the resized frames of one
batch (native dtype) plus one batch of tiles, whatever the frame size.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from linesight.config.manifest import ScaleInfo
from linesight.export.preprocess import AREA, PreprocessSpec, normalise, resize_native

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
class MaskCrop:
    """A frame mask that is empty outside a window: the window's place and contents. A region's coverage then
    costs the region's size, not the frame's (no frame-size mask per region)."""

    frame_hw: tuple[int, int]
    y: int
    x: int
    mask: np.ndarray  # (h, w), nonzero = inside

    @classmethod
    def of(cls, frame_mask: np.ndarray) -> MaskCrop:
        """The bounding window of a frame-size mask."""
        m = np.asarray(frame_mask)
        x, y, w, h = cv2.boundingRect((m != 0).astype(np.uint8))
        return cls(m.shape[:2], y, x, m[y:y + h, x:x + w])


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

    def keep(self) -> tuple[tuple[slice, slice, slice, slice], ...]:
        """Per tile: (grid rows, grid cols, tile rows, tile cols) of the cells this tile owns."""
        return self._keep

    @functools.cached_property
    def _keep(self) -> tuple[tuple[slice, slice, slice, slice], ...]:
        ky = _owned(self.starts_y, self.tile_hw[0], self.stride)
        kx = _owned(self.starts_x, self.tile_hw[1], self.stride)
        return tuple((gy, gx, ty, tx) for gy, ty in ky for gx, tx in kx)

    def valid_cells(self) -> np.ndarray:
        """Cells whose centre lies on the frame (not on letterbox or tile padding); read-only, shared."""
        return self._valid

    @functools.cached_property
    def _valid(self) -> np.ndarray:
        gh, gw = self.grid_hw
        c = (np.arange(max(gh, gw)) + 0.5) * self.stride
        oy, ox = self.offset_yx
        ch, cw = self.canvas_hw
        rows = (c[:gh] >= oy) & (c[:gh] < oy + ch)
        cols = (c[:gw] >= ox) & (c[:gw] < ox + cw)
        valid = rows[:, None] & cols[None, :]
        valid.flags.writeable = False
        return valid

    def cells_in(self, frame_mask: np.ndarray | None) -> np.ndarray:
        """The cells that are inspected: on the frame and mostly inside the domain mask (None = everywhere)."""
        return self.valid_cells() if frame_mask is None else self.valid_cells() & self.cells_of(frame_mask)

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

    def crop_coverage(self, crop: MaskCrop) -> np.ndarray:
        """`coverage` of a mask given as a crop: the same linear map, as per-axis weight matrices restricted to
        the crop's rows and columns, so a small region costs little on any frame size."""
        if crop.frame_hw != self.frame_hw:
            raise ValueError(f"mask of a {crop.frame_hw} frame on a view of a {self.frame_hw} frame")
        wy, wx = self._cover_weights
        h, w = crop.mask.shape
        m = np.asarray(crop.mask != 0, np.float32)
        return wy[:, crop.y:crop.y + h] @ m @ wx[:, crop.x:crop.x + w].T

    @functools.cached_property
    def _cover_weights(self) -> tuple[np.ndarray, np.ndarray]:
        """Per axis, frame pixels -> grid cells: the canvas resize, the placement in the plane and the pooling
        of stride x stride pixels into a cell, as cv2.resize(INTER_AREA) does them in `coverage`."""
        (h, w), (ch, cw), (gh, gw) = self.frame_hw, self.canvas_hw, self.grid_hw
        area = h >= ch and w >= cw  # cv2 averages pixel overlaps only when both axes shrink
        out = []
        for n, c, g, p, off in ((h, ch, gh, self.plane_hw[0], self.offset_yx[0]),
                                (w, cw, gw, self.plane_hw[1], self.offset_yx[1])):
            pool = _resize_weights(p, g, area=True)[:, off:off + c]  # plane -> grid: whole pixels, always area
            out.append((pool @ _resize_weights(n, c, area)).astype(np.float32))
        return out[0], out[1]


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


def _resize_weights(n_src: int, n_dst: int, area: bool) -> np.ndarray:
    """(n_dst, n_src) weights of cv2.resize(INTER_AREA) along one axis (float data): pixel-overlap averages
    when `area` (cv2's choice when both axes shrink), else its two-tap interpolation (OpenCV resize.cpp)."""
    out = np.zeros((n_dst, n_src))
    if n_src == n_dst:
        np.fill_diagonal(out, 1.0)
        return out
    scale = n_src / n_dst
    for d in range(n_dst):
        if area:
            f1 = d * scale
            f2 = f1 + scale
            cell = min(scale, n_src - f1)
            s2 = min(math.floor(f2), n_src - 1)
            s1 = min(math.ceil(f1), s2)
            if s1 - f1 > 1e-3:
                out[d, s1 - 1] = np.float32((s1 - f1) / cell)
            out[d, s1:s2] = np.float32(1.0 / cell)
            if f2 - s2 > 1e-3:
                out[d, s2] = np.float32(min(f2 - s2, 1.0, cell) / cell)
            continue
        s = math.floor(d * scale)
        f = np.float32((d + 1) - (s + 1) * (n_dst / n_src))
        f = np.float32(0.0) if f <= 0 else f - np.float32(math.floor(f))
        if s >= n_src - 1:
            out[d, n_src - 1] = 1.0
        else:
            out[d, s], out[d, s + 1] = np.float32(1.0) - f, f
    return out


def _starts(plane: int, tile: int, overlap: int) -> tuple[int, ...]:
    if plane <= tile:
        return (0,)
    step = tile - overlap
    return tuple(sorted(set(list(range(0, plane - tile, step)) + [plane - tile])))


def make_view(frame_hw: tuple[int, int], scale: ScaleInfo, spec: PreprocessSpec, stride: int) -> View:
    """The view of frames of `frame_hw` at a scale; the same object for every frame of that shape (cached), so
    what is derived from it (ownership, valid cells, coverage weights) is computed once per line."""
    return _view((int(frame_hw[0]), int(frame_hw[1])), scale.mode, scale.pixels_per_input, scale.overlap, spec,
                 stride)


@functools.lru_cache(maxsize=64)
def _view(frame_hw: tuple[int, int], mode: str, pixels_per_input: float | None, overlap: int, spec: PreprocessSpec,
          stride: int) -> View:
    h, w = frame_hw
    th, tw = spec.height, spec.width
    if mode == "whole":
        if spec.resize == "letterbox":
            s = min(th / h, tw / w)
            ch, cw = max(1, round(h * s)), max(1, round(w * s))
            off = ((th - ch) // 2, (tw - cw) // 2)
        else:
            ch, cw, off = th, tw, (0, 0)
        return View((h, w), (ch, cw), off, (th, tw), (th, tw), stride, (0,), (0,))
    r = pixels_per_input
    ch, cw = max(1, round(h / r)), max(1, round(w / r))
    ph = max(th, math.ceil(ch / stride) * stride)
    pw = max(tw, math.ceil(cw / stride) * stride)
    return View((h, w), (ch, cw), (0, 0), (ph, pw), (th, tw), stride,
                _starts(ph, th, overlap), _starts(pw, tw, overlap))


def render(image: np.ndarray, view: View, interpolation: str = AREA) -> np.ndarray:
    """The frame resized to the canvas and padded to the plane, in its own dtype (edge pixels repeated)."""
    canvas = resize_native(image, view.canvas_hw, interpolation)
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


@dataclass(frozen=True)
class Tile:
    """Where one row of a `scan` batch belongs: its frame, and the cells it owns (frame grid / tile grid)."""

    image: int
    grid: tuple[slice, slice]
    local: tuple[slice, slice]


def scan(frames: Sequence[np.ndarray], views: Sequence[View], spec: PreprocessSpec,
         features: Callable[[np.ndarray], np.ndarray], max_batch: int) -> Iterator[tuple[np.ndarray, list[Tile]]]:
    """The one tile loop of fit and the engine: every tile of every frame through `features`, at most
    `max_batch` tiles per call, as (B, D, h, w) features with the Tile of each row. Frames are rendered
    `max_batch` at a time, so memory stays bounded however many frames are scanned."""
    for s in range(0, len(frames), max_batch):
        group = views[s:s + max_batch]
        planes = [render(f, v, spec.interpolation) for f, v in zip(frames[s:s + max_batch], group)]
        for batch, chunk in iter_tiles(planes, group, spec, max_batch):
            tiles = []
            for i, t in chunk:
                gy, gx, ty, tx = group[i].keep()[t]
                tiles.append(Tile(s + i, (gy, gx), (ty, tx)))
            yield features(batch), tiles
