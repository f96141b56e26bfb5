"""FramePrep: fit-time preparation -> bundle extras -> the same preparation per frame (real images).

The "fixtured line" is simulated from one real magnetic_tile image: every frame is a crop of it at a
slightly jittered position with a lighting change, as repeated shots of a part in a fixture would be.
"""
from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest

from helpers import need_data
from linesight.config.frame import AlignInfo, FrameInfo, PhotometricInfo
from linesight.errors import BundleError, DataError
from linesight.export.frame_prep import REFERENCE_FILE, FramePrep, FrameReport, prepare_frame_info
from linesight.export.photometric import robust_stats

CROP = 200


def _tile(offset: int = 0) -> np.ndarray:
    for p in sorted((need_data() / "train" / "good").iterdir())[offset:]:
        img = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
        if min(img.shape) >= CROP + 80:
            return img
    raise AssertionError("no large image in magnetic_tile/train/good")


def _shot(img: np.ndarray, dx: float, dy: float, angle: float = 0.0, gain: float = 1.0, offset: float = 0.0):
    h, w = img.shape
    cy, cx = h // 2, w // 2
    m = cv2.getRotationMatrix2D((cx - 0.5, cy - 0.5), angle, 1.0)
    m[:, 2] += (dx, dy)
    moved = cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    crop = moved[cy - CROP // 2:cy + CROP // 2, cx - CROP // 2:cx + CROP // 2].astype(np.float32)
    return np.clip(crop * gain + offset, 0, 255).astype(np.uint8)


def _training_shots(img: np.ndarray, n: int = 15) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [_shot(img, *rng.uniform(-1.5, 1.5, 2), gain=rng.uniform(0.95, 1.05)) for _ in range(n)]


FULL = FrameInfo(photometric=PhotometricInfo(mode="gain_offset"),
                 align=AlignInfo(mode="rigid", work_size=CROP, max_shift_frac=0.2, max_angle_deg=4))


def test_defaults_are_off_and_cost_nothing():
    prep = FramePrep(FrameInfo(), {})
    img = _tile()
    out, rep = prep(img)
    assert not prep.active and out is img and rep == FrameReport()
    info, extras = prepare_frame_info([img], FrameInfo())
    assert info == FrameInfo() and extras == {}


def test_round_trip_through_manifest_json_and_extras():
    img = _tile()
    info, extras = prepare_frame_info(_training_shots(img), FULL)
    assert set(extras) == {REFERENCE_FILE} and extras[REFERENCE_FILE][:8] == b"\x89PNG\r\n\x1a\n"
    assert info.align.reference_file == REFERENCE_FILE and info.photometric.ref_mean is not None
    restored = FrameInfo.model_validate_json(info.model_dump_json())  # what the manifest stores
    assert restored == info
    prep = FramePrep(restored, {k: bytes(v) for k, v in extras.items()})
    assert prep.active
    # a jittered, darker shot: lighting compensated first, then registered back onto the reference
    clean = _shot(img, 0, 0)
    frame = _shot(img, 14, -9, angle=2.0, gain=0.75, offset=-6)
    out, rep = prep(frame)
    assert rep.aligned and rep.failure is None and not rep.unaligned
    assert abs(rep.dx - 14) < 1 and abs(rep.dy + 9) < 1 and abs(rep.angle_deg - 2.0) < 0.3, rep
    assert out.dtype == np.uint8 and out.shape == frame.shape
    inner = (slice(40, CROP - 40), slice(40, CROP - 40))
    err = np.abs(out[inner].astype(np.float32) - prep(clean)[0][inner].astype(np.float32)).mean()
    raw = np.abs(frame[inner].astype(np.float32) - clean[inner].astype(np.float32)).mean()
    assert err < 0.35 * raw, (err, raw)
    assert abs(robust_stats(out)[0] - info.photometric.ref_mean) < 0.02


def test_failure_is_failsafe_or_flagged_unaligned():
    img = _tile()
    info, extras = prepare_frame_info(_training_shots(img), FULL)
    stranger = np.ascontiguousarray(np.rot90(_shot(_tile(offset=50), 0, 0)))
    out, rep = FramePrep(info, extras)(stranger)
    assert rep.failure and rep.failure.startswith("alignment_failed: ") and not rep.aligned and not rep.unaligned
    relaxed = info.model_copy(update={"align": info.align.model_copy(update={"on_failure": "unaligned"})})
    out, rep = FramePrep(relaxed, extras)(stranger)
    assert rep.failure is None and rep.unaligned and not rep.aligned and out.shape == stranger.shape


def test_damaged_or_incomplete_bundle_is_a_clear_error():
    img = _tile()
    info, extras = prepare_frame_info(_training_shots(img), FULL)
    with pytest.raises(BundleError, match="does not hold it"):
        FramePrep(info, {})
    with pytest.raises(BundleError, match="not a grayscale PNG"):
        FramePrep(info, {REFERENCE_FILE: b"garbage"})
    with pytest.raises(BundleError, match="refit"):
        FramePrep(FrameInfo(photometric=PhotometricInfo(mode="gain_offset")), {})


def test_scene_without_fixed_structure_is_refused_at_fit():
    """Real magnetic_tile parts are framed differently each time: nothing to register on - say so."""
    paths = sorted((need_data() / "train" / "good").iterdir())[:40]
    imgs = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in paths]
    with pytest.raises(DataError, match="no fixed structure"):
        prepare_frame_info(imgs, FrameInfo(align=AlignInfo(mode="translation")))


def test_frame_modules_do_not_import_torch():
    code = ("import sys, linesight.export.frame_prep, linesight.export.align, linesight.export.photometric\n"
            "sys.exit(1 if any(m == 'torch' or m.startswith('torch.') for m in sys.modules) else 0)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
