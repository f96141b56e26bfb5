"""Fit-time augmentation: deterministic, shape/dtype preserving, and the options really act."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from helpers import need_data
from linesight.config.frame import AugmentConfig
from linesight.trainer.augment import augment, augment_sources


def _images(n: int) -> list[np.ndarray]:
    paths = sorted((need_data() / "train" / "good").iterdir())[:n]
    return [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in paths]


ALL = AugmentConfig(hflip=True, vflip=True, rot90=True, rotate_deg=5, brightness=0.1, contrast=0.2, copies=3, seed=7)


def test_originals_first_then_copies_deterministic():
    imgs = _images(4)
    a, b = augment(imgs, ALL), augment(imgs, ALL)
    assert len(a) == 4 * (1 + 3)
    assert all(x is y for x, y in zip(a[:4], imgs))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    other = augment(imgs, ALL.model_copy(update={"seed": 8}))
    assert not all(np.array_equal(x, y) for x, y in zip(a[4:], other[4:]))
    # a copy depends only on (seed, image, copy): augmenting a prefix gives the same copies
    prefix = augment(imgs[:2], ALL)
    assert all(np.array_equal(x, y) for x, y in zip(prefix[2:], a[4:10]))
    assert augment_sources(4, ALL) == [0, 1, 2, 3] + [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_dtype_and_shape_kept_also_for_non_square_and_colour(dtype):
    gray = _images(3)
    assert all(im.shape[0] != im.shape[1] for im in gray)
    scale = {np.uint8: 1, np.uint16: 257, np.float32: 1 / 255}[dtype]
    imgs = [(im.astype(np.float32) * scale).astype(dtype) for im in gray]
    imgs.append(np.repeat(imgs[0][:, :, None], 3, axis=2))
    imgs.append(imgs[1][:, :, None])
    out = augment(imgs, ALL)
    for i, copy in enumerate(out):
        src = imgs[augment_sources(len(imgs), ALL)[i]]
        assert copy.dtype == src.dtype and copy.shape == src.shape


def test_each_transform_acts():
    img = _images(1)[0]
    flips = augment([img], AugmentConfig(hflip=True, copies=16))[1:]
    assert any(np.array_equal(c, img[:, ::-1]) for c in flips) and any(np.array_equal(c, img) for c in flips)
    bright = augment([img], AugmentConfig(brightness=0.2, copies=8))[1:]
    offsets = [float(c.astype(np.float32).mean() - img.mean()) for c in bright]
    assert max(offsets) > 5 and min(offsets) < -5 and all(abs(o) <= 0.2 * 255 + 1 for o in offsets)
    contrast = augment([img], AugmentConfig(contrast=0.3, copies=8))[1:]
    stds = [float(c.std() / img.std()) for c in contrast]
    assert max(stds) > 1.05 and min(stds) < 0.95
    rot = augment([img], AugmentConfig(rotate_deg=4, copies=2))[1:]
    assert all(not np.array_equal(c, img) and abs(float(c.mean()) - float(img.mean())) < 3 for c in rot)
    square = np.ascontiguousarray(img[:200, :200])
    turns = augment([square], AugmentConfig(rot90=True, copies=12))[1:]
    assert any(np.array_equal(c, np.rot90(square)) for c in turns)


def test_config_refuses_ignored_or_useless_options():
    assert augment(_images(2), AugmentConfig())[0] is not None and len(augment(_images(2), AugmentConfig())) == 2
    with pytest.raises(ValidationError, match="copies is 0"):
        AugmentConfig(hflip=True)
    with pytest.raises(ValidationError, match="duplicates"):
        AugmentConfig(copies=2)
    with pytest.raises(ValidationError):
        AugmentConfig(hflip=True, copies=1, mystery=1)
