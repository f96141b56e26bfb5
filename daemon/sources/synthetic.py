"""Generated frames: a seeded texture with a scratch or blob drawn every N-th frame.

Why: demos, soak tests and CI need a camera that never needs hardware, produces defects at known
frames and positions (`chunk['defect_bbox']` is the ground truth), and gives the same pixels for the
same seed on every machine (frame k depends only on (seed, k)). It must also cost what a camera costs
(well under the daemon's per-frame time at any resolution): frames are texture + a window of one pre-drawn
noise plane (one saturating add), and a defect is blended into its bounding box only.
"""

from __future__ import annotations

import logging

import cv2
import numpy as np

from linesight.config.sources import SyntheticSourceConfig

from .base import EndOfStream, Frame, Pacer, Source

log = logging.getLogger(__name__)


def make_texture(width: int, height: int, seed: int) -> np.ndarray:
    """Smooth surface variation plus fine grain, uint8 gray around mid-level."""
    rng = np.random.default_rng([seed, 0x5EED])
    coarse = rng.normal(0.0, 1.0, size=(max(2, height // 24), max(2, width // 24))).astype(np.float32)
    smooth = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    grain = rng.normal(0.0, 1.0, size=(height, width)).astype(np.float32)
    img = 128.0 + 14.0 * smooth + 6.0 * grain
    return np.clip(img, 0, 255).astype(np.uint8)


NOISE_SHIFT = 64  # the noise plane is this much larger than the frame: (NOISE_SHIFT+1)^2 distinct windows
NOISE_SIGMA = 2.0  # sensor noise, gray levels
NOISE_CLIP = 8  # noise is clipped to +-NOISE_CLIP (4 sigma) so it fits an offset uint8 plane


class SyntheticFrames:
    """Frame k of one (texture, seed): the texture plus a window of a pre-drawn noise plane, a defect every N.

    Why a shifted window of one noise plane instead of fresh noise per frame: fresh Gaussian noise over a
    5 MP frame costs ~0.1 s, far more than the daemon under test. A window at an offset drawn from (seed, k)
    gives every pixel a different noise sample from frame to frame for one uint8 add (< 1 ms at 5 MP), with
    bounded memory (the texture and one plane slightly larger than a frame).
    """

    def __init__(self, texture: np.ndarray, seed: int, channels: int = 1) -> None:
        h, w = texture.shape
        rng = np.random.default_rng([seed, 0x9015E])
        noise = rng.normal(0.0, NOISE_SIGMA, size=(h + NOISE_SHIFT, w + NOISE_SHIFT))
        # texture - NOISE_CLIP + (noise + NOISE_CLIP) = texture + noise, both terms as uint8, saturating add
        self._noise = (np.clip(np.rint(noise), -NOISE_CLIP, NOISE_CLIP) + NOISE_CLIP).astype(np.uint8)
        self._base = cv2.subtract(texture, NOISE_CLIP)
        if channels == 3:
            self._noise = cv2.cvtColor(self._noise, cv2.COLOR_GRAY2BGR)
            self._base = cv2.cvtColor(self._base, cv2.COLOR_GRAY2BGR)
        self.seed = seed
        self.shape = (h, w)

    def frame(self, index: int, defect_every: int) -> tuple[np.ndarray, dict]:
        """Frame `index` (an owned new array) and its chunk; a defect when index+1 is a multiple of N."""
        h, w = self.shape
        rng = np.random.default_rng([self.seed, index])
        dy, dx = (int(v) for v in rng.integers(0, NOISE_SHIFT + 1, size=2))
        img = cv2.add(self._base, self._noise[dy : dy + h, dx : dx + w])
        if defect_every > 0 and (index + 1) % defect_every == 0:
            return img, _paste_defect(img, rng, "scratch" if ((index + 1) // defect_every) % 2 == 1 else "blob")
        return img, {"defect": False}


def _paste_defect(img: np.ndarray, rng: np.random.Generator, kind: str) -> dict:
    """Draw a scratch or blob into `img` in place, touching only its bounding box; returns the chunk."""
    h, w = img.shape[:2]
    margin = max(4, min(h, w) // 10)
    cx = int(rng.integers(margin, w - margin))
    cy = int(rng.integers(margin, h - margin))
    if kind == "scratch":
        length = max(8, int(rng.uniform(0.15, 0.3) * min(h, w)))
        angle = rng.uniform(0, np.pi)
        dx, dy = int(length / 2 * np.cos(angle)), int(length / 2 * np.sin(angle))
        thickness = max(2, min(h, w) // 150)
        reach_x, reach_y = abs(dx) + thickness + 2, abs(dy) + thickness + 2
        level = 35
    else:
        axes = (max(3, int(rng.uniform(0.03, 0.07) * w)), max(3, int(rng.uniform(0.03, 0.07) * h)))
        angle_deg = float(rng.uniform(0, 180))
        reach_x = reach_y = max(axes) + 2
        level = 230
    x0, y0 = max(0, cx - reach_x), max(0, cy - reach_y)
    x1, y1 = min(w, cx + reach_x + 1), min(h, cy + reach_y + 1)
    mask = np.zeros((y1 - y0, x1 - x0), np.uint8)  # the bbox region only, drawn in its own coordinates
    lx, ly = cx - x0, cy - y0
    if kind == "scratch":
        cv2.line(mask, (lx - dx, ly - dy), (lx + dx, ly + dy), 255, thickness, cv2.LINE_AA)
    else:
        cv2.ellipse(mask, (lx, ly), axes, angle_deg, 0, 360, 255, -1, cv2.LINE_AA)
    alpha = mask.astype(np.float32) / 255.0
    region = img[y0:y1, x0:x1]
    region[...] = cv2.blendLinear(region, np.full_like(region, level), 1.0 - alpha, alpha)
    x, y, bw, bh = cv2.boundingRect(mask)
    return {"defect": True, "defect_kind": kind, "defect_bbox": [int(x + x0), int(y + y0), int(bw), int(bh)]}


def render(texture: np.ndarray, seed: int, index: int, defect_every: int) -> tuple[np.ndarray, dict]:
    """Frame `index` of (texture, seed), as SyntheticSource delivers it in gray.

    Draws the noise plane on every call: loops over many frames should keep one `SyntheticFrames`.
    """
    return SyntheticFrames(texture, seed).frame(index, defect_every)


class SyntheticSource(Source):
    """Endless (or `count`-limited) generated frames paced at `rate_hz`."""

    def __init__(self, cfg: SyntheticSourceConfig) -> None:
        super().__init__(cfg.name)
        self.cfg = cfg
        self._pacer = Pacer(cfg.rate_hz)
        self._frames: SyntheticFrames | None = None
        self._index = 0

    def open(self) -> None:
        if self._opened:
            return
        texture = make_texture(self.cfg.width, self.cfg.height, self.cfg.seed)
        self._frames = SyntheticFrames(texture, self.cfg.seed, self.cfg.channels)
        self._index = 0
        self._opened = True
        self._set_up()
        log.info("synthetic source open name=%s size=%dx%d seed=%d defect_every=%d",
                 self.name, self.cfg.width, self.cfg.height, self.cfg.seed, self.cfg.defect_every)

    def read(self, timeout_s: float | None = 1.0) -> Frame | None:
        self._require_open()
        if self.cfg.count is not None and self._index >= self.cfg.count:
            raise EndOfStream(f"synthetic source {self.name!r}: {self.cfg.count} frames delivered")
        if not self._pacer.wait(timeout_s):
            return None
        assert self._frames is not None
        img, chunk = self._frames.frame(self._index, self.cfg.defect_every)
        frame = self._make_frame(img, frame_id=self._index, chunk=chunk)
        self._index += 1
        self._pacer.emitted()
        return frame

    def close(self) -> None:
        if self._opened:
            self._opened = False
            self._frames = None  # two frames' worth of planes: give them back while closed
            self._set_down()
