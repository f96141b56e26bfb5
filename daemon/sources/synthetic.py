"""Generated frames: a seeded texture with a scratch or blob drawn every N-th frame.

Why: demos, soak tests and CI need a camera that never needs hardware, produces defects at known
frames and positions (`chunk['defect_bbox']` is the ground truth), and gives the same pixels for the
same seed on every machine (frame k depends only on (seed, k)).
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


def render(texture: np.ndarray, seed: int, index: int, defect_every: int) -> tuple[np.ndarray, dict]:
    """Frame `index`: texture + per-frame sensor noise, and a defect when index+1 is a multiple of N."""
    h, w = texture.shape
    rng = np.random.default_rng([seed, index])
    noise = rng.normal(0.0, 2.0, size=(h, w)).astype(np.float32)
    img = np.clip(texture.astype(np.float32) + noise, 0, 255).astype(np.uint8)
    chunk: dict = {"defect": False}
    if defect_every > 0 and (index + 1) % defect_every == 0:
        kind = "scratch" if ((index + 1) // defect_every) % 2 == 1 else "blob"
        mask = np.zeros((h, w), np.uint8)
        margin = max(4, min(h, w) // 10)
        cx = int(rng.integers(margin, w - margin))
        cy = int(rng.integers(margin, h - margin))
        if kind == "scratch":
            length = max(8, int(rng.uniform(0.15, 0.3) * min(h, w)))
            angle = rng.uniform(0, np.pi)
            dx, dy = int(length / 2 * np.cos(angle)), int(length / 2 * np.sin(angle))
            thickness = max(2, min(h, w) // 150)
            cv2.line(mask, (cx - dx, cy - dy), (cx + dx, cy + dy), 255, thickness, cv2.LINE_AA)
            level = 35
        else:
            axes = (max(3, int(rng.uniform(0.03, 0.07) * w)), max(3, int(rng.uniform(0.03, 0.07) * h)))
            cv2.ellipse(mask, (cx, cy), axes, float(rng.uniform(0, 180)), 0, 360, 255, -1, cv2.LINE_AA)
            level = 230
        alpha = mask.astype(np.float32) / 255.0
        img = np.clip(img * (1.0 - alpha) + level * alpha, 0, 255).astype(np.uint8)
        x, y, bw, bh = cv2.boundingRect(mask)
        chunk = {"defect": True, "defect_kind": kind, "defect_bbox": [int(x), int(y), int(bw), int(bh)]}
    return img, chunk


class SyntheticSource(Source):
    """Endless (or `count`-limited) generated frames paced at `rate_hz`."""

    def __init__(self, cfg: SyntheticSourceConfig) -> None:
        super().__init__(cfg.name)
        self.cfg = cfg
        self._pacer = Pacer(cfg.rate_hz)
        self._texture: np.ndarray | None = None
        self._index = 0

    def open(self) -> None:
        if self._opened:
            return
        self._texture = make_texture(self.cfg.width, self.cfg.height, self.cfg.seed)
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
        assert self._texture is not None
        img, chunk = render(self._texture, self.cfg.seed, self._index, self.cfg.defect_every)
        if self.cfg.channels == 3:
            img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
        frame = self._make_frame(img, frame_id=self._index, chunk=chunk)
        self._index += 1
        self._pacer.emitted()
        return frame

    def close(self) -> None:
        if self._opened:
            self._opened = False
            self._set_down()
