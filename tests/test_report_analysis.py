"""The evaluation report explains itself: per-type defect analysis (export.analysis), learned-type CV figures,
causes/actions from a knowledge base, each gallery image's basis, overlays drawn by export.overlay, and the
baseline measured in the same run (`--baseline random | PATH`). Real bundles on a magnetic_tile subset."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from linesight.export.overlay import overlay
from linesight.trainer.report import ReportRecord, basis_text, render_panel

EXAMPLES = Path(__file__).resolve().parents[1] / "config" / "examples"


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "linesight", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def typed(small_bundle, small_dataset, tmp_path_factory) -> Path:
    from linesight.trainer.types import train_types

    bundle = tmp_path_factory.mktemp("typed") / "model"
    shutil.copytree(small_bundle, bundle)
    train_types(bundle, small_dataset, folds=2)
    return bundle


def test_report_has_analysis_learned_types_advice_and_basis(typed, small_dataset, tmp_path):
    out = tmp_path / "eval"
    r = _cli("evaluate", str(typed), str(small_dataset), "-o", str(out),
             "--spec", str(EXAMPLES / "inspection_spec.yaml"),
             "--knowledge", str(EXAMPLES / "knowledge_magnetic_tile.yaml"))
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads((out / "metrics.json").read_text())
    an = m["analysis"]
    assert set(an["per_type"]) == {"good", "blowhole", "crack"}
    for d in an["per_type"].values():
        assert {"regions", "median_area_px", "median_length_px", "median_elongation", "rule_types",
                "rule_type_agreement", "final_types", "advice"} <= set(d)
    assert an["classifier"]["types"] == ["blowhole", "crack"] and an["classifier"]["cv"]["folds"] == 2
    assert an["knowledge"].endswith("knowledge_magnetic_tile.yaml")
    doc = (out / "report.html").read_text()
    for section in ("Defect analysis per type", "Learned defect types", "2-fold cross-validation grouped by image",
                    "Likely causes and actions", "knowledge_magnetic_tile.yaml", "x the threshold",
                    "most similar spot in the good training images"):
        assert section in doc, section
    assert "Baseline, measured in the same run" not in doc and "baseline" not in m


def test_report_without_knowledge_or_classifier_says_so(small_bundle, small_dataset, tmp_path):
    from linesight.trainer.evaluate import evaluate

    m = evaluate(small_bundle, small_dataset, tmp_path / "e")
    doc = (tmp_path / "e" / "report.html").read_text()
    assert "No knowledge base given" in doc and "No learned type classifier" in doc
    assert m["analysis"]["classifier"] is None and m["analysis"]["knowledge"] is None
    per = m["analysis"]["per_type"]
    assert {t: d["images"] for t, d in per.items()} == {"good": 4, "blowhole": 3, "crack": 3}
    assert all(d["learned_regions"] == 0 and d["advice"] == [] for d in per.values())


def test_baseline_random_is_fitted_and_measured_in_the_same_run(small_bundle, small_dataset, tmp_path):
    out = tmp_path / "eval"
    r = _cli("evaluate", str(small_bundle), str(small_dataset), "-o", str(out), "--baseline", "random")
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads((out / "metrics.json").read_text())
    b = m["baseline"]
    assert b["weights"] == "none" and "fitted in this run" in b["what"] and "input 96, dim 64" in b["what"]
    for k in ("image_auroc", "pixel_auroc", "aupro"):
        assert 0.0 <= b[k] <= 1.0 and 0.0 <= m[k] <= 1.0
    assert set(b["per_type"]) == {"blowhole", "crack"}
    doc = (out / "report.html").read_text()
    table = doc[doc.index("<table class='baseline'>"):]
    table = table[:table.index("</table>")]
    assert "image AUROC (baseline)" in table and f"<td>{b['per_type']['crack']['aupro']:.4f}</td>" in table
    assert json.loads(r.stdout)["baseline"]["image_auroc"] == b["image_auroc"]


def test_baseline_path_same_bundle_gives_identical_columns(small_bundle, small_dataset, tmp_path):
    from linesight.trainer.evaluate import evaluate

    m = evaluate(small_bundle, small_dataset, tmp_path / "e", baseline=str(small_bundle))
    b = m["baseline"]
    for k in ("image_auroc", "pixel_auroc", "aupro"):
        assert b[k] == pytest.approx(m[k], abs=1e-9)
        for t in ("blowhole", "crack"):
            assert b["per_type"][t][k] == pytest.approx(m["per_type"][t][k], abs=1e-9)
    r = _cli("evaluate", str(small_bundle), str(small_dataset), "-o", str(tmp_path / "x"), "--baseline", "nope/none")
    assert r.returncode == 2 and "neither 'random' nor an existing bundle" in r.stderr


def test_gallery_panel_is_the_product_overlay():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (40, 60), dtype=np.uint8)
    amap = rng.random((40, 60)).astype(np.float32) * 2
    panel = render_panel(ReportRecord("a.png", 0, "good", 1.0, img, amap, None), 0.0, 2.0)
    assert np.array_equal(panel[:, 64:124], overlay(img, amap, 1.0, alpha=0.5))


def test_basis_text_from_header_fields():
    a = {"basis": {"score_ratio": 1.5, "regions_total": 2, "grade": "reject", "basis": "crack-long",
                   "regions": [{"type": "crack", "confidence": 0.91, "type_source": "learned", "learned_type": "crack",
                                "bbox": [1, 2, 30, 4]}],
                   "evidence": {"row": 7, "distance": 3.25, "image_name": "ok_01.png", "patch_yx": [3, 4]}}}
    text = basis_text(a)
    for part in ("score is 1.5 x the threshold", "2 areas above the pixel threshold", "grade reject (rule crack-long)",
                 "worst area looks like crack (91% sure, learned from labeled examples), 30x4 px",
                 ("most similar spot in the good training images: ok_01.png (model grid cell row 3, column 4), "
                  "still 3.25 away")):
        assert part in text, part
    assert "patch" not in text and "nearest normal" not in text  # no jargon left
    a["basis"]["regions"][0].update(type="spot", type_source="rules", learned_type="unknown")
    assert "looks like spot (91% sure, shape rules; no labeled example was close)" in basis_text(a)
    a["basis"]["evidence"].update(image_name=None, patch_yx=None)
    assert "memory-bank entry 7 (the bundle does not record its training image)" in basis_text(a)
    assert basis_text(None) == ""
