"""Alignment on real magnetic_tile images: known shifts/rotations recovered, mismatches detected.

Jitter is simulated the way a camera sees it: the moved frame is a crop of the *moved* full image, so new
content enters at the borders (no synthetic wrap-around that would make phase correlation trivially exact).
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from helpers import need_data
from linesight.config.frame import AlignInfo
from linesight.export.align import Aligner, make_reference, work_shape

CROP = 200


def _images(n: int) -> list[np.ndarray]:
    folder = need_data() / "train" / "good"
    out = []
    for p in sorted(folder.iterdir()):
        img = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
        if min(img.shape) >= CROP + 80:
            out.append(img)
        if len(out) == n:
            return out
    raise AssertionError("not enough large images in magnetic_tile/train/good")


def _pair(img: np.ndarray, dx: float, dy: float, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """(reference crop, crop of the image moved by (dx, dy) and rotated by angle about the crop centre)."""
    h, w = img.shape
    cy, cx = h // 2, w // 2
    win = (slice(cy - CROP // 2, cy + CROP // 2), slice(cx - CROP // 2, cx + CROP // 2))
    m = cv2.getRotationMatrix2D((cx - 0.5, cy - 0.5), angle, 1.0)
    m[:, 2] += (dx, dy)
    moved = cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return img[win].copy(), moved[win].copy()


@pytest.mark.parametrize("method", ["phase", "ecc"])
def test_translation_recovered_within_a_pixel(method):
    info = AlignInfo(mode="translation", method=method, work_size=CROP, max_shift_frac=0.2)
    shifts = [(5, -5), (-12, 8), (20, 15), (-30, -22), (30, 0), (0, -30)]
    for img, (dx, dy) in zip(_images(len(shifts)), shifts):
        ref, moved = _pair(img, dx, dy, 0.0)
        r = Aligner(info, ref)(moved)
        assert r.ok, r.reason
        assert abs(r.dx - dx) < 1.0 and abs(r.dy - dy) < 1.0, (method, dx, dy, r)
        assert r.quality > 0.8
        # matrix: aligned pixel p shows frame pixel matrix @ (p, 1) - here a pure shift by the displacement
        assert np.allclose(r.matrix[:, :2], np.eye(2), atol=0.02) and np.allclose(r.matrix[:, 2], (dx, dy), atol=1)
        # the corrected frame matches the reference (inner region, away from reflected borders)
        inner = (slice(35, CROP - 35), slice(35, CROP - 35))
        err = np.abs(r.image[inner].astype(np.float32) - ref[inner].astype(np.float32)).mean()
        raw = np.abs(moved[inner].astype(np.float32) - ref[inner].astype(np.float32)).mean()
        assert err < 0.5 * raw and err < 6, (err, raw)


@pytest.mark.parametrize("method", ["phase", "ecc"])
def test_rigid_recovers_rotation_and_shift(method):
    info = AlignInfo(mode="rigid", method=method, work_size=CROP, max_shift_frac=0.2, max_angle_deg=5)
    cases = [(0, 0, 1.0), (6, -4, -2.5), (-15, 10, 4.0), (25, 5, -5.0), (-8, -20, 3.3), (10, 10, -1.2)]
    for img, (dx, dy, ang) in zip(_images(len(cases)), cases):
        ref, moved = _pair(img, dx, dy, ang)
        r = Aligner(info, ref)(moved)
        assert r.ok, (method, ang, r.reason)
        assert abs(r.angle_deg - ang) < 0.3, (method, ang, r.angle_deg)
        assert abs(r.dx - dx) < 1.0 and abs(r.dy - dy) < 1.0, (method, dx, dy, r.dx, r.dy)


def test_full_resolution_frame_registered_on_small_work_grid():
    """A 4x upscaled frame is registered at work_size 200 and the shift is reported in full-frame pixels."""
    img = _images(1)[0]
    ref, moved = _pair(img, 7, -11, 0.0)
    big_ref = cv2.resize(ref, (800, 800), interpolation=cv2.INTER_CUBIC)
    big_moved = cv2.resize(moved, (800, 800), interpolation=cv2.INTER_CUBIC)
    info = AlignInfo(mode="translation", work_size=200)
    r = Aligner(info, cv2.resize(big_ref, (200, 200), interpolation=cv2.INTER_AREA))(big_moved)
    assert r.ok and r.image.shape == big_moved.shape and r.image.dtype == np.uint8
    assert abs(r.dx - 28) < 2.0 and abs(r.dy + 44) < 2.0, r


def test_shift_beyond_bound_is_a_failure_and_image_is_untouched():
    info = AlignInfo(mode="translation", work_size=CROP, max_shift_frac=0.05)  # 10 px allowed
    failures = 0
    for img in _images(4):
        ref, moved = _pair(img, 30, -25, 0.0)
        r = Aligner(info, ref)(moved)
        if not r.ok:
            failures += 1
            assert r.reason and r.image is moved and r.matrix is None
    assert failures == 4


def test_rotation_beyond_bound_is_a_failure():
    info = AlignInfo(mode="rigid", work_size=CROP, max_shift_frac=0.2, max_angle_deg=2)
    for img in _images(3):
        ref, moved = _pair(img, 3, 3, 6.0)
        r = Aligner(info, ref)(moved)
        assert not r.ok and "rotation" in r.reason, r


def test_unrelated_image_is_a_failure():
    """A different tile turned 90 degrees (streaks across instead of along) and plain noise do not match."""
    info = AlignInfo(mode="rigid", work_size=CROP, max_shift_frac=0.2, max_angle_deg=3, min_quality=0.5)
    imgs = _images(8)
    rng = np.random.default_rng(0)
    for a, b in zip(imgs[:4], imgs[4:]):
        ref, _ = _pair(a, 0, 0, 0.0)
        other, _ = _pair(b, 0, 0, 0.0)
        for frame in (np.ascontiguousarray(np.rot90(other)), rng.integers(0, 256, ref.shape, dtype=np.uint8)):
            r = Aligner(info, ref)(frame)
            assert not r.ok, r


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_dtypes_and_colour_preserved(dtype):
    img = _images(1)[0]
    ref, moved = _pair(img, -9, 6, 0.0)
    scale = {np.uint8: 1, np.uint16: 257, np.float32: 1 / 255}[dtype]
    frame = np.repeat(moved[:, :, None], 3, axis=2).astype(np.float32) * scale
    frame = frame.astype(dtype)
    r = Aligner(AlignInfo(mode="translation", work_size=CROP), ref)(frame)
    assert r.ok and r.image.dtype == dtype and r.image.shape == frame.shape
    assert abs(r.dx + 9) < 1 and abs(r.dy - 6) < 1


def test_reference_is_median_on_work_grid():
    imgs = _images(9)
    info = AlignInfo(mode="translation", work_size=128)
    ref = make_reference(imgs, info)
    assert ref.dtype == np.uint16 and ref.shape == work_shape(imgs, 128) and max(ref.shape) == 128
