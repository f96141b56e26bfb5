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
                        "--policy", "fewest_errors", "--force"], capture_output=True, text=True, timeout=300)
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


def test_evaluate_compare_with_a_previous_evaluation_and_with_a_bundle(small_bundle, small_dataset, tmp_path):
    from linesight.export.bundle import rewrite_manifest
    from linesight.trainer.evaluate import evaluate

    old = evaluate(small_bundle, small_dataset, tmp_path / "old")
    assert len(old["dataset"]["fingerprint"]) == 64 and old["operating_points"][0]["name"] == "chosen"
    bundle = tmp_path / "model"
    shutil.copytree(small_bundle, bundle)
    m = load_bundle(bundle).manifest.model_copy(deep=True)
    m.thresholds.image, m.thresholds.policy = old["thresholds"]["no_miss"], "no_miss"  # catch every defect now
    rewrite_manifest(bundle, m)
    r = subprocess.run([sys.executable, "-m", "linesight", "evaluate", str(bundle), str(small_dataset), "-o",
                        str(tmp_path / "new"), "--compare", str(tmp_path / "old" / "report.html")],
                       capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    new = json.loads((tmp_path / "new" / "metrics.json").read_text())
    c = new["compare"]
    assert c["source"] == f"previous evaluation {tmp_path / 'old' / 'metrics.json'}" and c["notes"] == []  # same set
    rows = {row["name"]: row for row in c["rows"]}
    esc = rows["escape rate (defective parts passed)"]
    old_esc = old["confusion_matrix"]["fn"] / old["n_defect"]
    assert esc["old"] == old_esc and esc["new"] == 0.0 and esc["delta"] == -old_esc
    assert esc["change"] == ("better" if old_esc > 0 else "same")
    assert rows["image AUROC"]["delta"] == 0.0  # same bundle features: the threshold-free figures agree
    assert json.loads(r.stdout)["compare"]["escape rate (defective parts passed)"] == esc["delta"]
    html = (tmp_path / "new" / "report.html").read_text()
    heads = [html.index(h) for h in ("Production figures", "Compared with the previous evaluation",
                                     "Model quality (ML figures)")]
    assert heads == sorted(heads) and f"<td>{100 * old_esc:.1f}%</td><td>0.0%</td>" in html

    m2 = evaluate(bundle, small_dataset, tmp_path / "vs-bundle", compare=str(small_bundle))
    rows2 = {row["name"]: row for row in m2["compare"]["rows"]}
    assert (m2["compare"]["source"].startswith(f"bundle {small_bundle}")
            and rows2["threshold"]["old"] == old["chosen_threshold"])
    assert rows2["escape rate (defective parts passed)"] == esc  # scoring the old bundle here = its old evaluation

    for bad, msg in ((tmp_path / "nope", "no such file or folder"), (tmp_path / "new" / "gallery", "neither")):
        r = subprocess.run([sys.executable, "-m", "linesight", "evaluate", str(bundle), str(small_dataset), "-o",
                            str(tmp_path / "x"), "--compare", str(bad)],
                           capture_output=True, text=True, timeout=300, check=False)
        assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr and not (tmp_path / "x").exists()
