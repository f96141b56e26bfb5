"""Pipeline decisions in-process with a real engine (no source thread: frames are handed in directly)."""
from __future__ import annotations

import time

import numpy as np

from linesight.config.daemon import DaemonConfig
from linesight.daemon.model import ModelHolder
from linesight.daemon.pipeline import Pipeline
from linesight.daemon.sources.base import Frame
from linesight.daemon.sources.synthetic import SyntheticSource


def make(bundle, **pipeline):
    cfg = DaemonConfig.model_validate({"model": {"bundle": str(bundle)}, "source": {"type": "synthetic", "name": "s"},
                                       "pipeline": pipeline})
    holder = ModelHolder(cfg.model.bundle)
    holder.load()
    out: list[dict] = []
    alarms: list[str] = []
    p = Pipeline(cfg, SyntheticSource(cfg.source), holder, lambda v, *a: out.append(v),
                 lambda code, msg, **k: alarms.append(code), station="a/b/c")
    return p, out, alarms


def frame(seq: int, image) -> Frame:
    return Frame(image=image, seq=seq, host_ts_ns=time.time_ns(), source="s", frame_id=seq)


def test_micro_batch_with_one_undecodable_frame_gives_each_frame_one_verdict(small_bundle):
    p, out, alarms = make(small_bundle, deadline_ms=60000)
    good = np.full((80, 90), 120, np.uint8)
    poison = np.full((80, 90), 7, np.uint8)  # a valid frame the engine fails on (fault injected below)
    engine = p.holder.engine
    real = engine.predict_batch

    def faulty(images, **kw):  # no real engine fault can be provoked on demand: this wrapper injects one
        if any(img is poison for img in images):
            raise RuntimeError("injected engine fault")
        return real(images, **kw)

    engine.predict_batch = faulty
    frames = [frame(0, good), frame(1, poison), frame(2, good), frame(3, None),
              frame(4, np.zeros((10, 10, 2), np.uint8))]
    p.process([p.admit(f) for f in frames])
    by_seq = {v["camera"]["source_seq"]: v for v in out}
    assert sorted(by_seq) == [0, 1, 2, 3, 4] and len(out) == 5
    assert by_seq[1]["reason"] == "inference_error" and by_seq[1]["verdict"] == "NG"
    assert by_seq[3]["reason"] == "bad_frame"
    assert by_seq[4]["reason"] == "bad_frame" and "unsupported image shape" in by_seq[4]["detail"]
    assert not by_seq[0]["fail_safe"] and not by_seq[2]["fail_safe"]
    assert by_seq[0]["score"] == by_seq[2]["score"]
    assert all(v["seq"] == v["camera"]["source_seq"] + 1 for v in out) and "inference_error" in alarms  # own frame's


def test_late_frames_are_fail_safe(small_bundle):
    p, out, _ = make(small_bundle, deadline_ms=50)
    old = Frame(image=np.full((64, 64), 100, np.uint8), seq=0, host_ts_ns=time.time_ns() - 10**9, source="s")
    p.process([p.admit(old)])
    assert out[-1]["reason"] == "deadline_missed" and out[-1]["verdict"] == "NG"


def test_fail_safe_verdict_is_configurable(small_bundle):
    p, out, _ = make(small_bundle, fail_safe_verdict="OK")
    p.process([p.admit(frame(0, None))])
    assert out[0]["verdict"] == "OK" and out[0]["fail_safe"] and out[0]["reason"] == "bad_frame"


def test_ng_frames_carry_type_grade_and_basis_from_the_spec(small_bundle, tmp_path):
    """Thresholds forced to 0 so every frame is NG and gets analysed with the example spec."""
    from pathlib import Path

    from linesight.export.bundle import load_bundle, write_bundle

    b = load_bundle(small_bundle)
    b.manifest.thresholds.image = 0.0
    b.manifest.thresholds.pixel = 1e-6
    path = write_bundle(tmp_path / "ng.zip", b)
    examples = Path(__file__).resolve().parents[1] / "config" / "examples"
    cfg = DaemonConfig.model_validate({
        "model": {"bundle": str(path)}, "source": {"type": "synthetic", "name": "s"},
        "analysis": {"spec": str(examples / "inspection_spec.yaml"),
                     "knowledge": str(examples / "knowledge_magnetic_tile.yaml")}})
    holder = ModelHolder(cfg.model.bundle)
    holder.load()
    out, headers = [], []
    p = Pipeline(cfg, SyntheticSource(cfg.source), holder, lambda v, img, m, t, h: (out.append(v), headers.append(h)),
                 lambda *a, **k: None, station="a/b/c")
    img = np.full((250, 600), 128, np.uint8)
    p.process([p.admit(frame(0, img))])
    v = out[0]
    assert v["grade"] in ("A", "B", "C", "reject") and v["reason"] == v["basis"] and v["defects_total"] >= 1
    assert {"type", "confidence", "zone", "grade", "bbox", "length_px"} <= set(v["defects"][0])
    assert headers[0] is not None and "decision" in headers[0]
    evidence = headers[0]["basis"]["evidence"]  # the nearest normal patch of the training set
    assert evidence["image_name"] and len(evidence["patch_yx"]) == 2 and evidence["distance"] > 0
