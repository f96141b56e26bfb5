"""Fit-time augmentation of good images: more normal variation in the bank without more photographs.

Each copy draws its transforms from a generator seeded by (seed, image index, copy index), so the result
does not depend on batch order and the same config always gives the same copies.
"""
from __future__ import annotations

import logging

import cv2
import numpy as np

from linesight.config.frame import AugmentConfig
from linesight.export.images import check_image, full_scale

log = logging.getLogger(__name__)


def _intensity(image: np.ndarray, gain: float, offset: float) -> np.ndarray:
    """Contrast gain around the image mean plus an offset (fraction of full scale); alpha kept; dtype kept."""
    scale = full_scale(image.dtype)
    colour = image[:, :, :3] if image.ndim == 3 and image.shape[2] == 4 else image
    x = colour.astype(np.float32)
    mean = float(x.mean())
    x = (x - mean) * np.float32(gain) + np.float32(mean + offset * scale)
    if image.dtype == np.float32:
        out3 = np.clip(x, 0.0, 1.0)
    else:
        out3 = np.clip(np.rint(x), 0, scale).astype(image.dtype)
    if colour is image:
        return out3
    out = image.copy()
    out[:, :, :3] = out3
    return out


def _one_copy(layers: list[np.ndarray], cfg: AugmentConfig, rng: np.random.Generator) -> list[np.ndarray]:
    """One copy of [image] or [image, label map (uint8)]: the label map gets the same flips, turns and rotation
    (nearest neighbour, so class ids stay class ids) and no intensity change; the draws are the same either way."""
    image = layers[0]
    if cfg.hflip and rng.random() < 0.5:
        layers = [a[:, ::-1] for a in layers]
    if cfg.vflip and rng.random() < 0.5:
        layers = [a[::-1] for a in layers]
    if cfg.rot90:
        h, w = image.shape[:2]
        k = int(rng.integers(4)) if h == w else 2 * int(rng.integers(2))  # non-square: 0 or 180 deg keeps size
        layers = [np.rot90(a, k) for a in layers]
    layers = [np.ascontiguousarray(a) for a in layers]
    if cfg.rotate_deg > 0:
        angle = float(rng.uniform(-cfg.rotate_deg, cfg.rotate_deg))
        h, w = layers[0].shape[:2]
        m = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), angle, 1.0)
        layers = [cv2.warpAffine(a, m, (w, h), flags=cv2.INTER_LINEAR if j == 0 else cv2.INTER_NEAREST,
                                 borderMode=cv2.BORDER_REFLECT).reshape(a.shape) for j, a in enumerate(layers)]
    out = layers[0]
    if cfg.brightness > 0 or cfg.contrast > 0:
        gain = float(rng.uniform(1 - cfg.contrast, 1 + cfg.contrast)) if cfg.contrast > 0 else 1.0
        offset = float(rng.uniform(-cfg.brightness, cfg.brightness)) if cfg.brightness > 0 else 0.0
        out = _intensity(out, gain, offset)
    return [out, *layers[1:]]


def augment_labeled(image: np.ndarray, target: np.ndarray, cfg: AugmentConfig,
                    key: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """One augmented copy of an image and its label map for supervised training, drawn from a generator seeded by
    (cfg.seed, *key): the caller's key (epoch, image, copy) makes every epoch see new copies, reproducibly."""
    out, tgt = _one_copy([image, target], cfg, np.random.default_rng([cfg.seed, *key]))
    return out, tgt


def augment(images: list[np.ndarray], cfg: AugmentConfig) -> list[np.ndarray]:
    """Originals followed by `copies` augmented copies of each: [im0..imN-1, im0 copy0.., im1 copy0.., ...].

    Every copy keeps its source's dtype and shape (90-degree turns of non-square images are limited to
    0/180 degrees for that reason). `augment_sources` gives the source index of every returned image.
    """
    if not cfg.active:
        return list(images)
    out = list(images)
    for i, image in enumerate(images):
        check_image(image, f"training image {i}")
        for c in range(cfg.copies):
            rng = np.random.default_rng([cfg.seed, i, c])
            out.append(_one_copy([image], cfg, rng)[0])
    log.info("augmented training images", extra={"originals": len(images), "copies": cfg.copies,
                                                  "total": len(out)})
    return out


def augment_sources(n_images: int, cfg: AugmentConfig) -> list[int]:
    """Source image index of each element `augment` returns (for provenance of bank rows)."""
    copies = cfg.copies if cfg.active else 0
    return list(range(n_images)) + [i for i in range(n_images) for _ in range(copies)]
