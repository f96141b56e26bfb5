"""Lighting compensation on real magnetic_tile images: drift is undone, dtypes and shapes are kept."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from helpers import need_data
from linesight.config.frame import PhotometricInfo
from linesight.errors import BundleError, DataError
from linesight.export.photometric import normalise, reference_stats, robust_stats


def _images(n: int, offset: int = 0) -> list[np.ndarray]:
    paths = sorted((need_data() / "train" / "good").iterdir())[offset:offset + n]
    return [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in paths]


def _as(image8: np.ndarray, dtype, colour: bool) -> np.ndarray:
    img = np.repeat(image8[:, :, None], 3, axis=2) if colour else image8
    if dtype == np.uint16:
        return img.astype(np.uint16) * 257
    if dtype == np.float32:
        return img.astype(np.float32) / 255.0
    return img.copy()


def _drift(image: np.ndarray, gain: float, offset_frac: float) -> np.ndarray:
    scale = 255.0 if image.dtype == np.uint8 else 65535.0 if image.dtype == np.uint16 else 1.0
    out = np.clip(image.astype(np.float32) * gain + offset_frac * scale, 0, scale)
    return out.astype(image.dtype) if image.dtype == np.float32 else np.rint(out).astype(image.dtype)


def test_reference_stats_are_robust_medians():
    imgs = _images(20)
    mean, std = reference_stats(imgs)
    per = np.array([robust_stats(im) for im in imgs])
    assert mean == pytest.approx(np.median(per[:, 0])) and std == pytest.approx(np.median(per[:, 1]))
    assert 0.1 < mean < 0.5 and 0.01 < std < 0.2  # dark tiles: ~60/255 with ~15 levels of spread


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("colour", [False, True])
@pytest.mark.parametrize("gain,offset", [(1.3, 0.08), (0.7, -0.05), (1.0, 20 / 255)])
def test_gain_offset_maps_drifted_frame_onto_reference(dtype, colour, gain, offset):
    imgs = _images(12)
    ref_mean, ref_std = reference_stats(imgs)
    info = PhotometricInfo(mode="gain_offset", ref_mean=ref_mean, ref_std=ref_std)
    frame = _as(_images(1, offset=40)[0], dtype, colour)
    drifted = _drift(frame, gain, offset)
    before = robust_stats(drifted)
    out = normalise(drifted, info)
    assert out.dtype == frame.dtype and out.shape == frame.shape
    m, s = robust_stats(out)
    assert abs(m - ref_mean) < 0.01 and abs(s - ref_std) / ref_std < 0.06, (before, (m, s), (ref_mean, ref_std))
    # drift undone: the normalised drifted frame equals the normalised original frame (up to quantisation)
    clean = normalise(frame, info)
    scale = 255.0 if dtype == np.uint8 else 65535.0 if dtype == np.uint16 else 1.0
    diff = np.abs(out.astype(np.float32) - clean.astype(np.float32)) / scale
    assert float(np.median(diff)) < 2.5 / 255


def test_gain_offset_keeps_alpha_and_hxwx1():
    imgs = _images(4)
    info = PhotometricInfo(mode="gain_offset", ref_mean=0.4, ref_std=0.1)
    bgra = np.dstack([np.repeat(imgs[0][:, :, None], 3, axis=2), np.full(imgs[0].shape, 7, np.uint8)])
    out = normalise(bgra, info)
    assert out.shape == bgra.shape and (out[:, :, 3] == 7).all()
    one = imgs[1][:, :, None]
    assert normalise(one, info).shape == one.shape


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("colour", [False, True])
def test_clahe_evens_out_uneven_lighting_alike_for_every_dtype(dtype, colour):
    img = _images(1, offset=7)[0]
    w = img.shape[1]
    ramp = np.linspace(0.4, 1.6, w, dtype=np.float32)[None, :]  # light falls off across the part
    uneven = np.clip(img.astype(np.float32) * ramp, 0, 255).astype(np.uint8)
    info = PhotometricInfo(mode="clahe", clahe_clip=2.0, clahe_tile=8)
    frame = _as(uneven, dtype, colour)
    out = normalise(frame, info)
    assert out.dtype == frame.dtype and out.shape == frame.shape
    scale = 255.0 if dtype == np.uint8 else 65535.0 if dtype == np.uint16 else 1.0
    lum = (out if not colour else cv2.cvtColor(out, cv2.COLOR_BGR2GRAY)).astype(np.float32) * (255.0 / scale)
    q = w // 5

    def ratio(x: np.ndarray) -> float:  # bright side / dark side
        return float(x[:, -q:].mean() / x[:, :q].mean())

    assert abs(np.log(ratio(lum))) < 0.8 * abs(np.log(ratio(uneven))), (ratio(lum), ratio(uneven))
    # the same frame in any bit depth comes out the same (the 16-bit clip limit is scaled to match)
    out8 = normalise(_as(uneven, np.uint8, colour), info)
    ref8 = (out8 if not colour else cv2.cvtColor(out8, cv2.COLOR_BGR2GRAY)).astype(np.float32)
    assert float(np.abs(lum - ref8).mean()) < 3.0


def test_none_is_identity_and_missing_reference_is_a_clear_error():
    img = _images(1)[0]
    assert normalise(img, PhotometricInfo()) is img
    with pytest.raises(BundleError, match="refit"):
        normalise(img, PhotometricInfo(mode="gain_offset"))
    with pytest.raises(DataError):
        reference_stats([])
    with pytest.raises(DataError, match="no intensity spread"):
        reference_stats([np.full((64, 64), 100, np.uint8)] * 3)
