"""calibrate -> evaluate on a real magnetic_tile subset: every metric computed, thresholds stored, report renders."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import cv2
import pytest

from linesight.errors import DataError
from linesight.export.bundle import load_bundle


def test_calibrate_then_evaluate_writes_metrics_and_report(small_bundle, small_dataset, tmp_path):
    bundle = tmp_path / "model"
    shutil.copytree(small_bundle, bundle)
    r = subprocess.run([sys.executable, "-m", "linesight", "calibrate", str(bundle), str(small_dataset),
                        "--policy", "fewest_errors"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    th = load_bundle(bundle).manifest.thresholds
    assert th.policy == "fewest_errors" and "calibrated on" in th.source
    assert set(th.candidates) == {"no_false_reject", "no_miss", "fewest_errors", "f1_optimal"}
    r = subprocess.run([sys.executable, "-m", "linesight", "evaluate", str(bundle), str(small_dataset),
                        "-o", str(tmp_path / "eval")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    for key in ("image_auroc", "pixel_auroc", "aupro", "f1_max", "thresholds", "precision", "recall",
                "confusion_matrix", "per_type"):
        assert key in m, key
    for key in ("image_auroc", "pixel_auroc", "aupro", "f1_max"):
        assert 0.0 <= m[key] <= 1.0, (key, m[key])
    assert set(m["per_type"]) == {"blowhole", "crack"}
    cm = m["confusion_matrix"]
    assert sum(cm[k] for k in ("tp", "fp", "tn", "fn")) == 10
    html = (tmp_path / "eval" / "report.html").read_text()
    assert "<svg" in html and "features not pretrained" in html and "calibrated on this same labeled set" in html
    pngs = list((tmp_path / "eval" / "gallery").glob("*.png"))
    assert pngs and all(cv2.imread(str(p)) is not None for p in pngs)


def test_calibrate_needs_labeled_defects(small_bundle, tmp_path):
    from linesight.trainer.evaluate import calibrate

    only_good = tmp_path / "g"
    (only_good / "test" / "good").mkdir(parents=True)
    (only_good / "train" / "good").mkdir(parents=True)
    cv2.imwrite(str(only_good / "test" / "good" / "a.png"), cv2.UMat(64, 64, cv2.CV_8UC1, 100).get())
    with pytest.raises(DataError, match="defective"):
        calibrate(small_bundle, only_good)
