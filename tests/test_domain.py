"""Domain reduction inside the engine: scores outside the ROI are zero and cannot raise a verdict."""
from __future__ import annotations

import cv2
import numpy as np

from linesight.config.manifest import DomainInfo
from linesight.export.bundle import load_bundle, write_bundle
from linesight.export.domain import foreground
from linesight.export.engine import Engine


def _with_domain(src, dst, info: DomainInfo, mask: np.ndarray | None = None):
    b = load_bundle(src)
    b.manifest.domain = info
    if mask is not None:
        b.extras["roi_mask.png"] = cv2.imencode(".png", mask * 255)[1].tobytes()
    return write_bundle(dst, b)


def test_roi_mask_zeroes_scores_outside(small_bundle, tmp_path):
    left = np.zeros((10, 20), np.uint8)
    left[:, :10] = 1
    path = _with_domain(small_bundle, tmp_path / "roi.zip", DomainInfo(mode="mask", mask_file="roi_mask.png"), left)
    assert "roi_mask.png" in load_bundle(path).manifest.files
    img = np.full((120, 160), 130, np.uint8)
    cv2.circle(img, (130, 60), 15, 0, -1)  # a defect-like blob in the right (excluded) half
    with_roi, without = Engine(path).predict(img), Engine(small_bundle).predict(img)
    assert np.all(with_roi.anomaly_map[:, 80:] == 0) and with_roi.anomaly_map[:, :70].max() > 0
    assert with_roi.score <= without.score


def test_auto_foreground_keeps_the_part_and_its_holes():
    img = np.full((200, 200), 20, np.uint8)
    cv2.rectangle(img, (40, 50), (160, 150), 200, -1)
    cv2.circle(img, (100, 100), 10, 20, -1)  # a dark pit inside the part stays in the domain
    m = foreground(img)
    assert m[100, 100] == 1 and m[60, 60] == 1 and m[10, 10] == 0 and m[190, 190] == 0


def test_missing_mask_file_is_a_clear_error(small_bundle, tmp_path):
    import pytest

    from linesight.errors import BundleError

    path = _with_domain(small_bundle, tmp_path / "bad.zip", DomainInfo(mode="mask", mask_file="roi_mask.png"))
    with pytest.raises(BundleError, match="roi_mask.png"):
        Engine(path)


def test_roi_verb_sets_domain_and_keeps_golden_consistent(small_bundle, tmp_path):
    import shutil
    import subprocess
    import sys

    b = tmp_path / "m"
    shutil.copytree(small_bundle, b)
    mask = np.zeros((50, 50), np.uint8)
    mask[5:45, 5:45] = 255
    cv2.imwrite(str(tmp_path / "roi.png"), mask)
    r = subprocess.run([sys.executable, "-m", "linesight", "roi", str(b), "--mask", str(tmp_path / "roi.png")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-1500:]
    eng = Engine(b)
    assert eng.manifest.domain.mode == "mask" and eng.check_golden() == []
    cv2.imwrite(str(tmp_path / "black.png"), np.zeros((8, 8), np.uint8))
    r = subprocess.run([sys.executable, "-m", "linesight", "roi", str(b), "--mask", str(tmp_path / "black.png")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "all black" in r.stderr and "Traceback" not in r.stderr


def test_gray_in_native_dtype_equals_the_float_rgb_path():
    """Automatic foreground takes its gray plane by plane from the frame's dtype: bit for bit what the
    frame-size float RGB copy gave, so existing bundles see the same domain."""
    from linesight.export.images import gray_u8, to_unit_rgb

    rng = np.random.default_rng(0)
    for shape, dtype in [((150, 200), np.uint8), ((150, 200, 1), np.uint8), ((150, 200), np.uint16),
                         ((150, 200, 3), np.uint8), ((150, 200, 4), np.uint8), ((150, 200, 3), np.uint16),
                         ((150, 200), np.float32), ((150, 200, 3), np.float32)]:
        if dtype == np.float32:
            img = rng.uniform(-0.2, 1.2, shape).astype(np.float32)
        else:
            img = rng.integers(0, np.iinfo(dtype).max, shape, endpoint=True, dtype=dtype)
        want = (to_unit_rgb(img).mean(axis=2) * 255).astype(np.uint8)
        assert np.array_equal(gray_u8(img), want), (shape, dtype)
