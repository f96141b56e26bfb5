"""`linesight info`: the whole manifest, verified, as an engineer reads it (text) and as scripts read it (--json)."""
from __future__ import annotations

import json
import shutil

from linesight.cli import main
from linesight.config.manifest import (
    CalibrationResult,
    CalibrationTarget,
    Manifest,
    Rate,
)
from linesight.export.bundle import load_bundle, rewrite_manifest


def test_info_json_is_the_whole_manifest_plus_identity(small_bundle, capsys):
    assert main(["info", str(small_bundle), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    b = load_bundle(small_bundle)
    fields = {f.alias or name for name, f in Manifest.model_fields.items()}
    assert fields <= set(d) and {"identity", "digest", "verified"} <= set(d)
    assert d["identity"] == b.identity and d["digest"] == b.digest and d["verified"] is True
    assert d["thresholds"]["image"] == b.manifest.thresholds.image and d["files"] == b.manifest.files


def test_info_text_summarises_every_part(small_bundle, tmp_path, capsys):
    bundle = tmp_path / "model"
    shutil.copytree(small_bundle, bundle)
    b = load_bundle(bundle)
    m = b.manifest.model_copy(deep=True)
    m.warnings.append("thresholds were calibrated before the domain changed: recalibrate (linesight calibrate)")
    m.thresholds.calibrated = True
    m.thresholds.calibration = CalibrationResult(
        target=CalibrationTarget(max_false_reject=0.02),
        false_reject=Rate(count=3, n=200, rate=0.015, ci95=(0.005, 0.043)),
        escape=Rate(count=4, n=100, rate=0.04, ci95=(0.016, 0.098)), false_pixel_area=0.0008, met=True)
    rewrite_manifest(bundle, m)
    assert main(["info", str(bundle)]) == 0
    text = capsys.readouterr().out
    sections = [line.split()[0] for line in text.splitlines() if line[:1] != " "]
    assert sections == ["bundle", "model", "hash", "backbone", "input", "features", "scoring", "scales", "plan",
                        "domain", "frame", "types", "thresholds", "trained", "golden", "onnx", "software", "warnings"]
    b = load_bundle(bundle)
    m = b.manifest
    for part in (f"{m.model.id} v{m.model.version}", b.identity["hash"], b.digest, "verified",
                 f"{m.scales[0].name}: whole frame, bank {m.scales[0].n_bank} rows", "whole image inspected",
                 "lighting: none", "alignment: none", "no learned classifier", f"image {m.thresholds.image:.6g}",
                 "calibration target: false reject <= 2 %", "-> met",
                 "false reject: 3 of 200 good parts (1.5 %, 95 % CI 0.5-4.3 %)", "escape: 4 of 100 defective parts",
                 "good pixels flagged: 0.08 %",
                 "NOT pretrained", "recalibrate (linesight calibrate)", f"{m.dataset.n_train} images for the bank"):
        assert part in text, part
