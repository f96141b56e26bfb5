"""Synthetic defects on good images, with exact masks: the only 'defects' an air-gapped line has to learn from.

numpy + cv2 only (no torch): the generator runs on the fly inside training and from `linesight synth`.
Every defect is built as a soft field inside a bounding box; the blend weight is exactly zero outside the
mask, so a pixel changes only where the mask says so (soft edges ramp *inside* the mask).
"""
from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from linesight.errors import DataError

log = logging.getLogger(__name__)

SYNTH_MARKER = ".linesight-synth"  # marks a folder synth wrote, so a rerun may add to it
KINDS = ("texture", "scratch", "crack", "spot", "cutpaste", "chip", "uneven")


# ---------------------------------------------------------------- noise

def _fade(t: np.ndarray) -> np.ndarray:
    return t * t * t * (t * (t * 6 - 15) + 10)


def perlin(h: int, w: int, cells: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """2-D Perlin gradient noise (h, w) with `cells` = (rows, cols) lattice cells; values about in [-0.7, 0.7]."""
    cy, cx = max(1, cells[0]), max(1, cells[1])
    ang = rng.uniform(0, 2 * math.pi, (cy + 1, cx + 1))
    gy, gx = np.sin(ang).astype(np.float32), np.cos(ang).astype(np.float32)
    ys = (np.arange(h, dtype=np.float32) + 0.5) * (cy / h)
    xs = (np.arange(w, dtype=np.float32) + 0.5) * (cx / w)
    yi, xi = ys.astype(np.int64), xs.astype(np.int64)
    yf, xf = (ys - yi)[:, None], (xs - xi)[None, :]

    def corner(oy: int, ox: int) -> np.ndarray:
        iy, ix = np.ix_(yi + oy, xi + ox)
        return gy[iy, ix] * (yf - oy) + gx[iy, ix] * (xf - ox)

    u, v = _fade(xf), _fade(yf)
    top = corner(0, 0) * (1 - u) + corner(0, 1) * u
    bot = corner(1, 0) * (1 - u) + corner(1, 1) * u
    return (top * (1 - v) + bot * v).astype(np.float32)


def fractal(h: int, w: int, base_cells: int, octaves: int, rng: np.random.Generator) -> np.ndarray:
    """Sum of Perlin octaves (cells doubling, amplitude halving), normalised to about [-1, 1]."""
    out = np.zeros((h, w), np.float32)
    amp, total = 1.0, 0.0
    for o in range(octaves):
        c = base_cells * (2 ** o)
        out += amp * perlin(h, w, (c, c), rng)
        total += amp
        amp *= 0.5
    return out / (0.7 * total)


# ---------------------------------------------------------------- shapes

def _blob_field(h: int, w: int, rng: np.random.Generator, roughness: float = 0.6, octaves: int = 3) -> np.ndarray:
    """Perlin-shaped compact field: > 0.5 inside the blob, < 0.5 at the box border (so the blob fits the box)."""
    yy = (np.arange(h, dtype=np.float32) + 0.5) / h * 2 - 1
    xx = (np.arange(w, dtype=np.float32) + 0.5) / w * 2 - 1
    r = np.sqrt(yy[:, None] ** 2 + xx[None, :] ** 2)
    noise = fractal(h, w, int(rng.integers(1, 4)), octaves, rng)
    return (1.0 - r) + roughness * 0.45 * noise  # |noise term| < 0.45*roughness <= 0.5 - margin at r >= 1


def _alpha(field: np.ndarray, thresh: float, ramp: float) -> np.ndarray:
    """Blend weight: 0 where field <= thresh (outside the mask), ramping to 1 over `ramp` inside."""
    return np.clip((field - thresh) / ramp, 0.0, 1.0).astype(np.float32)


def _stroke(h: int, w: int, length: float, thick: float, jitter: float, branches: int,
            rng: np.random.Generator) -> np.ndarray:
    """Anti-aliased, tapered random-walk polyline(s) on an (h, w) canvas in [0, 1]."""
    canvas = np.zeros((h, w), np.float32)
    n = max(4, int(length / 4))
    seg = length / n

    def walk(y: float, x: float, ang: float, nseg: int, t0: float) -> list[tuple[float, float]]:
        pts = [(y, x)]
        bend = rng.normal(0, jitter * 0.3)
        for _ in range(nseg):
            ang += bend + rng.normal(0, jitter)
            y, x = y + seg * math.sin(ang), x + seg * math.cos(ang)
            pts.append((y, x))
        for i in range(nseg):  # taper: thick in the middle, thin at the ends
            taper = math.sin(math.pi * (i + 0.5) / nseg) ** 0.5
            t = max(1, int(round(t0 * taper)))
            p, q = pts[i], pts[i + 1]
            cv2.line(canvas, (int(p[1] * 16), int(p[0] * 16)), (int(q[1] * 16), int(q[0] * 16)), 1.0, t,
                     cv2.LINE_AA, 4)
        return pts

    ang = rng.uniform(0, 2 * math.pi)
    # start so the walk (at most `length` long) stays near the centre of the box
    y0 = h / 2 - 0.5 * length * math.sin(ang) * 0.9
    x0 = w / 2 - 0.5 * length * math.cos(ang) * 0.9
    pts = walk(y0, x0, ang, n, thick)
    for _ in range(branches):
        i = int(rng.integers(1, len(pts) - 1))
        turn = rng.choice([-1, 1]) * rng.uniform(0.4, 1.2)
        walk(pts[i][0], pts[i][1], ang + turn, max(2, n // 3), max(1.0, thick * 0.6))
    return np.clip(canvas, 0.0, 1.0)


# ---------------------------------------------------------------- generator

class DefectSynth:
    """Paint 1..n random defects onto a good image.

    texture_sources: good images (float [0,1], gray or RGB) whose texture can fill a region ("another image").
    size_range: defect extent as a fraction of the image's short side; count: defects per image (inclusive).
    """

    def __init__(self, texture_sources: Sequence[np.ndarray] = (), kinds: Sequence[str] = KINDS,
                 size_range: tuple[float, float] = (0.02, 0.3), count: tuple[int, int] = (1, 3)):
        bad = [k for k in kinds if k not in KINDS]
        if bad or not kinds:
            raise DataError(f"unknown defect kind(s) {bad or '(none given)'}; choose from {', '.join(KINDS)}")
        lo, hi = size_range
        if not 0 < lo <= hi <= 1:
            raise DataError(f"size range {size_range}: need 0 < min <= max <= 1 (fractions of the short side)")
        if not 1 <= count[0] <= count[1]:
            raise DataError(f"count {count}: need 1 <= min <= max")
        self.sources = [s.astype(np.float32, copy=False) for s in texture_sources]
        self.kinds, self.size_range, self.count = tuple(kinds), (float(lo), float(hi)), (int(count[0]), int(count[1]))

    # -- helpers
    def _size(self, short: int, kind: str, rng: np.random.Generator) -> int:
        lo, hi = self.size_range
        mid = (lo + hi) / 2
        a, b = {"uneven": (mid, hi), "chip": (mid, hi), "spot": (lo, mid)}.get(kind, (lo, hi))
        return max(3, int(short * rng.uniform(a, b)))

    def _texture(self, img: np.ndarray, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
        """An (h, w) crop of another source image (or of `img` elsewhere), same channels as `img`."""
        src = self.sources[int(rng.integers(len(self.sources)))] if self.sources and rng.random() < 0.7 else img
        if src.shape[0] < h or src.shape[1] < w:
            f = max(h / src.shape[0], w / src.shape[1]) * 1.01
            src = cv2.resize(src, (int(math.ceil(src.shape[1] * f)), int(math.ceil(src.shape[0] * f))))
        y = int(rng.integers(0, src.shape[0] - h + 1))
        x = int(rng.integers(0, src.shape[1] - w + 1))
        patch = src[y:y + h, x:x + w]
        return _match_channels(patch, img)

    @staticmethod
    def _blend(img: np.ndarray, mask: np.ndarray, y: int, x: int, alpha: np.ndarray, fill: np.ndarray) -> None:
        """img[box] = img*(1-a) + fill*a, clipped to the image; mask |= a > 0."""
        H, W = img.shape[:2]
        h, w = alpha.shape
        y0, x0, y1, x1 = max(y, 0), max(x, 0), min(y + h, H), min(x + w, W)
        if y1 <= y0 or x1 <= x0:
            return
        a = alpha[y0 - y:y1 - y, x0 - x:x1 - x]
        f = fill[y0 - y:y1 - y, x0 - x:x1 - x]
        region = img[y0:y1, x0:x1]
        a3 = a[..., None] if region.ndim == 3 else a
        region += (np.clip(f, 0, 1) - region) * a3
        mask[y0:y1, x0:x1] |= (a > 0).astype(np.uint8)

    # -- the kinds; each returns after painting one defect
    def _texture_region(self, img, mask, s, rng):
        h, w = _aspect(s, rng)
        y, x = _place(img, h, w, rng)
        field = _blob_field(h, w, rng)
        alpha = _alpha(field, 0.5, rng.uniform(0.02, 0.2))
        region = img[max(y, 0):y + h, max(x, 0):x + w]
        mode = rng.integers(4)
        if mode == 0:
            fill = self._texture(img, h, w, rng)
        elif mode == 1:
            k = int(rng.integers(1, 4)) * 2 + 1
            fill = cv2.GaussianBlur(_pad_to(region, h, w), (0, 0), k) * rng.uniform(0.8, 1.2)
        else:
            gain = rng.uniform(0.35, 0.75) if mode == 2 else rng.uniform(1.3, 1.9)
            fill = _pad_to(region, h, w) * gain + rng.uniform(-0.05, 0.05)
        self._blend(img, mask, y, x, alpha, fill)

    def _line(self, img, mask, s, rng, crack: bool):
        thick = rng.uniform(1.0, 4.0) if crack else rng.uniform(1.0, 3.0)
        box = s
        canvas = _stroke(box, box, 0.85 * box, thick, 0.35 if crack else 0.08, int(rng.integers(0, 3)) if crack else 0,
                         rng)
        if canvas.max() <= 0:
            canvas[box // 2, box // 2] = 1.0
        alpha = np.where(canvas > 0.2, canvas, 0).astype(np.float32)
        y, x = _place(img, box, box, rng)
        dark = crack or rng.random() < 0.6
        region = _pad_to(img[y:y + box, x:x + box], box, box)
        level = rng.uniform(0.3, 0.8)
        fill = region * (1 - level) if dark else region + (1 - region) * level
        self._blend(img, mask, y, x, alpha, fill)

    def _spot(self, img, mask, s, rng):
        h, w = _aspect(s, rng, 1.5)
        y, x = _place(img, h, w, rng)
        yy = (np.arange(h, dtype=np.float32) + 0.5) / h * 2 - 1
        xx = (np.arange(w, dtype=np.float32) + 0.5) / w * 2 - 1
        r = np.sqrt(yy[:, None] ** 2 + xx[None, :] ** 2) + 0.15 * fractal(h, w, 2, 2, rng)
        alpha = _alpha(1 - r, 0.0, rng.uniform(0.2, 0.8))
        region = _pad_to(img[y:y + h, x:x + w], h, w)
        level = rng.uniform(0.3, 0.9)
        fill = region * (1 - level) if rng.random() < 0.7 else region + (1 - region) * level
        self._blend(img, mask, y, x, alpha, fill)

    def _cutpaste(self, img, mask, s, rng):
        h, w = _aspect(s, rng, 3.0)
        y, x = _place(img, h, w, rng)
        side = int(math.ceil(math.hypot(h, w)))
        patch = self._texture(img, min(side, img.shape[0]), min(side, img.shape[1]), rng)
        patch = _pad_to(patch, side, side) * rng.uniform(0.75, 1.25)
        angle = rng.uniform(-45, 45) if rng.random() < 0.5 else 0.0
        rect = np.zeros((side, side), np.float32)
        cy, cx = side / 2, side / 2
        rad = math.radians(angle)
        extent = max(w * abs(math.cos(rad)) + h * abs(math.sin(rad)), w * abs(math.sin(rad)) + h * abs(math.cos(rad)))
        f = min(1.0, (s - 1) / extent)  # the rotated rectangle must still fit the size
        pts = cv2.boxPoints(((cx, cy), (w * f, h * f), angle)).astype(np.int32)
        cv2.fillConvexPoly(rect, pts, 1.0)
        rot = cv2.getRotationMatrix2D((cx, cy), angle, 1.0)
        patch = cv2.warpAffine(patch, rot, (side, side), borderMode=cv2.BORDER_REFLECT)
        patch = patch if patch.ndim == img.ndim else patch[..., None]
        oy, ox = y + h // 2 - side // 2, x + w // 2 - side // 2
        ys, xs = np.nonzero(rect)  # crop to the rotated rectangle's extent so the box stays within s
        box = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
        rect, patch = rect[box], patch[box]
        self._blend(img, mask, oy + ys.min(), ox + xs.min(), rect, patch)

    def _chip(self, img, mask, s, rng):
        """Missing material at an edge or corner: the region shows the dark background."""
        H, W = img.shape[:2]
        h, w = _aspect(s, rng)
        side = int(rng.integers(8))  # 0-3 edges, 4-7 corners
        cy = {0: -h // 2, 1: H - h // 2, 4: -h // 2, 5: -h // 2, 6: H - h // 2, 7: H - h // 2}.get(
            side, int(rng.integers(0, max(1, H - h))))
        cx = {2: -w // 2, 3: W - w // 2, 4: -w // 2, 5: W - w // 2, 6: -w // 2, 7: W - w // 2}.get(
            side, int(rng.integers(0, max(1, W - w))))
        alpha = _alpha(_blob_field(h, w, rng, 0.8), 0.5, 0.05)
        base = rng.uniform(0.0, 0.12)
        fill = np.clip(base + 0.03 * fractal(h, w, 4, 2, rng), 0, 1)
        fill = _match_channels(fill, img)
        self._blend(img, mask, cy, cx, alpha, fill)

    def _uneven(self, img, mask, s, rng):
        """Large low-contrast brightness change with a wide soft edge (magnetic_tile's 'uneven')."""
        h, w = _aspect(s, rng, 1.5)
        y, x = _place(img, h, w, rng)
        alpha = _alpha(_blob_field(h, w, rng, 0.9, 2), 0.5, rng.uniform(0.2, 0.45))
        region = _pad_to(img[max(y, 0):y + h, max(x, 0):x + w], h, w)
        gain = rng.uniform(0.6, 0.85) if rng.random() < 0.6 else rng.uniform(1.15, 1.4)
        self._blend(img, mask, y, x, alpha, region * gain)

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """(defective float32 image in [0,1] of the same shape, mask uint8 {0,1} HxW, kinds painted)."""
        img = np.array(image, dtype=np.float32, copy=True)
        if img.ndim not in (2, 3):
            raise DataError(f"synth: expected an HxW or HxWxC image, got shape {img.shape}")
        mask = np.zeros(img.shape[:2], np.uint8)
        short = min(img.shape[:2])
        painted = []
        for _ in range(int(rng.integers(self.count[0], self.count[1] + 1))):
            kind = self.kinds[int(rng.integers(len(self.kinds)))]
            s = min(self._size(short, kind, rng), short)
            if kind == "texture":
                self._texture_region(img, mask, s, rng)
            elif kind in ("scratch", "crack"):
                self._line(img, mask, s, rng, crack=kind == "crack")
            elif kind == "spot":
                self._spot(img, mask, s, rng)
            elif kind == "cutpaste":
                self._cutpaste(img, mask, s, rng)
            elif kind == "chip":
                self._chip(img, mask, s, rng)
            else:
                self._uneven(img, mask, s, rng)
            painted.append(kind)
        np.clip(img, 0.0, 1.0, out=img)
        return img, mask, painted


def _aspect(s: int, rng: np.random.Generator, max_ratio: float = 2.0) -> tuple[int, int]:
    """(h, w) with the longer side s and a random aspect ratio."""
    short = max(3, int(s / rng.uniform(1.0, max_ratio)))
    return (s, short) if rng.random() < 0.5 else (short, s)


def _place(img: np.ndarray, h: int, w: int, rng: np.random.Generator) -> tuple[int, int]:
    H, W = img.shape[:2]
    return int(rng.integers(0, max(1, H - h + 1))), int(rng.integers(0, max(1, W - w + 1)))


def _pad_to(a: np.ndarray, h: int, w: int) -> np.ndarray:
    """Edge-pad a crop that was clipped at the image border back to (h, w)."""
    if a.shape[0] == h and a.shape[1] == w:
        return a.copy()
    pad = [(0, max(0, h - a.shape[0])), (0, max(0, w - a.shape[1]))] + [(0, 0)] * (a.ndim - 2)
    return np.pad(a, pad, mode="edge")[:h, :w]


def _match_channels(patch: np.ndarray, like: np.ndarray) -> np.ndarray:
    if like.ndim == 2:
        return patch if patch.ndim == 2 else patch.mean(axis=2)
    if patch.ndim == 2:
        return np.repeat(patch[..., None], like.shape[2], axis=2)
    if patch.shape[2] != like.shape[2]:
        return np.repeat(patch.mean(axis=2, keepdims=True), like.shape[2], axis=2)
    return patch


def write_dataset(good_paths: Sequence[Path], out: str | Path, n: int, rng: np.random.Generator,
                  synth: DefectSynth | None = None) -> dict[str, int]:
    """MVTec layout under `out`: train/good (symlinks to the sources), test/<kind>/synth_NNNNN.png and
    ground_truth/<kind>/synth_NNNNN_mask.png (0/255). An image with several kinds goes to test/mixed.
    Returns images written per folder."""
    from linesight.export.images import read_image, to_unit

    good_paths = [Path(p) for p in good_paths]
    if not good_paths:
        raise DataError("synth: no good images to paint defects on")
    from linesight.outputs import output_folder

    out = output_folder(out, "synth", marker=SYNTH_MARKER)
    (out / "train" / "good").mkdir(parents=True, exist_ok=True)
    for p in good_paths:
        link = out / "train" / "good" / p.name
        if not link.exists() and not link.is_symlink():
            os.symlink(p.resolve(), link)
    synth = synth or DefectSynth()
    if not synth.sources:
        synth.sources = [to_unit(read_image(p)) for p in good_paths[: min(len(good_paths), 32)]]
    counts: dict[str, int] = {}
    for i in range(n):
        src = good_paths[int(rng.integers(len(good_paths)))]
        raw = read_image(src)
        img, mask, kinds = synth(to_unit(raw), rng)
        folder = kinds[0] if len(set(kinds)) == 1 else "mixed"
        (out / "test" / folder).mkdir(parents=True, exist_ok=True)
        (out / "ground_truth" / folder).mkdir(parents=True, exist_ok=True)
        stem = f"synth_{i:05d}"
        scale = 65535.0 if raw.dtype == np.uint16 else 255.0
        pix = np.round(img * scale).astype(np.uint16 if raw.dtype == np.uint16 else np.uint8)
        cv2.imwrite(str(out / "test" / folder / f"{stem}.png"), pix)
        cv2.imwrite(str(out / "ground_truth" / folder / f"{stem}_mask.png"), mask * 255)
        counts[folder] = counts.get(folder, 0) + 1
    log.info("synth: wrote %d defective images to %s: %s", n, out, counts)
    return counts
