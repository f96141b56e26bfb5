"""The one preprocessing implementation: trainer, export parity check, evaluation and daemon all call it.

Images are validated where they enter (read_image, the engine's boundary, `preprocess`); the per-tile and
per-plane helpers below trust their input instead of re-checking it for every tile.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from linesight.config.manifest import PreprocessInfo
from linesight.export.images import check_image, to_unit_rgb

AREA = "area-down/linear-up"
BOX_AREA = "box-area-down/linear-up"
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
    interpolation: str = BOX_AREA  # new fits; a bundle's manifest says which one it was fitted with

    def to_info(self) -> PreprocessInfo:
        return PreprocessInfo(input_size=(self.height, self.width), resize=self.resize, mean=self.mean, std=self.std,
                              interpolation=self.interpolation)

    @classmethod
    def from_info(cls, info: PreprocessInfo) -> PreprocessSpec:
        (h, w), (mean, std) = info.input_size, (info.mean, info.std)
        return cls(height=h, width=w, mean=mean, std=std, resize=info.resize, interpolation=info.interpolation)


def _box(image: np.ndarray, k: int) -> np.ndarray:
    """k x k block means (OpenCV's integer-factor area path), edge pixels repeated up to a multiple of k so no
    pixel of the frame is dropped."""
    h, w = image.shape[:2]
    ph, pw = -h % k, -w % k
    if ph or pw:
        image = cv2.copyMakeBorder(image, 0, ph, 0, pw, cv2.BORDER_REPLICATE)
    return cv2.resize(image, ((w + pw) // k, (h + ph) // k), interpolation=cv2.INTER_AREA)


def resize_native(image: np.ndarray, size_hw: tuple[int, int], interpolation: str = AREA) -> np.ndarray:
    """Resize in the image's own dtype and channel count (area when shrinking, linear when growing), so a
    25 MP frame costs about as much as a small one: the float RGB copy is made at the small size only."""
    h, w = image.shape[:2]
    if (h, w) == tuple(size_hw):
        return image
    shrinking = h * w > size_hw[0] * size_hw[1]
    small = image if image.dtype != np.float32 else np.clip(image, 0.0, 1.0)
    if small.ndim == 3 and small.shape[2] == 4:
        small = small[:, :, :3]
    small = np.ascontiguousarray(small)
    k = min(h // size_hw[0], w // size_hw[1]) // 2  # the area pass still shrinks >= 2x: close to one area pass
    if shrinking and interpolation == BOX_AREA and k >= 2:  # OpenCV's area is ~10x slower at non-integer factors
        small = _box(small, k)
    out = cv2.resize(small, (size_hw[1], size_hw[0]), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    return out


def normalise(image: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """An image already at input size -> normalised CHW float32."""
    rgb = to_unit_rgb(image)
    rgb = (rgb - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    return np.ascontiguousarray(rgb.transpose(2, 0, 1))


def preprocess(image: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Image -> normalised CHW float32 tensor of the model's input size (stretched: the whole-frame view)."""
    check_image(image)
    return normalise(resize_native(image, (spec.height, spec.width), spec.interpolation), spec)


def preprocess_batch(images: list[np.ndarray], spec: PreprocessSpec) -> np.ndarray:
    return np.stack([preprocess(im, spec) for im in images]).astype(np.float32, copy=False)
