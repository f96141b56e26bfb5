"""The one preprocessing implementation: trainer, export parity check, evaluation and daemon all call it.

Images are validated where they enter (read_image, the engine's boundary, `preprocess`); the per-tile and
per-plane helpers below trust their input instead of re-checking it for every tile.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np

from linesight.export.images import check_image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class PreprocessSpec:
    """What the bundle's manifest records under `preprocess`; the daemon applies exactly this."""

    height: int = 224
    width: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    resize: str = "stretch"  # whole-frame scales: "stretch" to the input, or "letterbox" (keep aspect, pad)

    def to_dict(self) -> dict:
        return {"input_size": [self.height, self.width], "resize": self.resize,
                "interpolation": "area-down/linear-up", "color": "rgb", "scale": "dtype-max",
                "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict) -> "PreprocessSpec":
        h, w = d["input_size"]
        resize = d.get("resize", "stretch")
        if resize not in ("stretch", "letterbox"):
            raise ValueError(f"preprocess.resize {resize!r} is not one of stretch, letterbox")
        return cls(height=int(h), width=int(w), mean=tuple(d["mean"]), std=tuple(d["std"]), resize=resize)


def to_unit_rgb(image: np.ndarray) -> np.ndarray:
    """Any supported image (BGR/gray, 8/16-bit/float) -> float32 RGB in [0, 1], HxWx3."""
    if image.dtype == np.uint8:
        img = image.astype(np.float32) / 255.0
    elif image.dtype == np.uint16:
        img = image.astype(np.float32) / 65535.0
    else:
        img = np.clip(image, 0.0, 1.0).astype(np.float32, copy=False)
    if img.ndim == 2 or img.shape[2] == 1:
        img = np.repeat(img.reshape(img.shape[0], img.shape[1], 1), 3, axis=2)
    elif img.shape[2] == 4:
        img = img[:, :, :3]
    return np.ascontiguousarray(img[:, :, ::-1])  # BGR -> RGB


def gray_u8(image: np.ndarray) -> np.ndarray:
    """8-bit gray (mean of the colour channels) of any supported image, made plane by plane from the image's own
    dtype (a table for gray 8/16-bit): the values of (to_unit_rgb(image).mean(axis=2) * 255).astype(uint8),
    without the frame-size float RGB copy."""
    if image.ndim == 3 and image.shape[2] >= 3:
        r, g, b = (_unit(image[:, :, c]) for c in (2, 1, 0))
        return ((r + g + b) / 3 * 255).astype(np.uint8)
    plane = image.reshape(image.shape[:2])
    if plane.dtype == np.uint8:
        return cv2.LUT(plane, _gray_table(np.uint8))
    if plane.dtype == np.uint16:
        return _gray_table(np.uint16)[plane]
    v = _unit(plane)
    return ((v + v + v) / 3 * 255).astype(np.uint8)


def _unit(plane: np.ndarray) -> np.ndarray:
    """One plane in [0, 1] float32, as to_unit_rgb scales it."""
    if plane.dtype == np.uint8:
        return plane.astype(np.float32) / 255.0
    if plane.dtype == np.uint16:
        return plane.astype(np.float32) / 65535.0
    return np.clip(plane, 0.0, 1.0).astype(np.float32, copy=False)


@functools.cache
def _gray_table(dtype: type) -> np.ndarray:
    """gray_u8 of every value of an integer gray dtype."""
    v = _unit(np.arange(np.iinfo(dtype).max + 1, dtype=dtype))
    return ((v + v + v) / 3 * 255).astype(np.uint8)


def resize_native(image: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Resize in the image's own dtype and channel count (area when shrinking, linear when growing), so a
    25 MP frame costs about as much as a small one: the float RGB copy is made at the small size only."""
    h, w = image.shape[:2]
    if (h, w) == tuple(size_hw):
        return image
    shrinking = h * w > size_hw[0] * size_hw[1]
    small = image if image.dtype != np.float32 else np.clip(image, 0.0, 1.0)
    if small.ndim == 3 and small.shape[2] == 4:
        small = small[:, :, :3]
    out = cv2.resize(np.ascontiguousarray(small), (size_hw[1], size_hw[0]),
                     interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    return out


def normalise(image: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """An image already at input size -> normalised CHW float32."""
    rgb = to_unit_rgb(image)
    rgb = (rgb - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    return np.ascontiguousarray(rgb.transpose(2, 0, 1))


def preprocess(image: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Image -> normalised CHW float32 tensor of the model's input size (stretched: the whole-frame view)."""
    check_image(image)
    return normalise(resize_native(image, (spec.height, spec.width)), spec)


def preprocess_batch(images: list[np.ndarray], spec: PreprocessSpec) -> np.ndarray:
    return np.stack([preprocess(im, spec) for im in images]).astype(np.float32, copy=False)
