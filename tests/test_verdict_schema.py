"""The verdict's typed model (daemon.verdict.Verdict), its published JSON Schema (docs/verdict.schema.json), the
verdict examples in the docs and the verdicts a real pipeline publishes: all one definition."""
from __future__ import annotations

import json
import re
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from linesight.config.daemon import DaemonConfig
from linesight.daemon import verdict as V
from linesight.daemon.metrics import ALARM_CODES, FAILSAFE_REASONS
from linesight.daemon.model import ModelHolder
from linesight.daemon.pipeline import Pipeline
from linesight.daemon.sinks.encoding import verdict_json
from linesight.daemon.sources.base import Frame
from linesight.daemon.sources.synthetic import SyntheticSource

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
EXAMPLES = ROOT / "config" / "examples"
ALIGNED = {"aligned": True, "dx": 1.5, "dy": -2.0, "angle_deg": 0.25, "quality": 0.9, "failure": None,
           "unaligned": False}


def doc_verdicts(name: str) -> list[str]:
    """The ```json blocks of a doc page that show a verdict."""
    blocks = re.findall(r"```json\n(.*?)```", (DOCS / name).read_text(), re.S)
    return [b for b in blocks if json.loads(b).get("schema") == V.SCHEMA]


def pipeline(bundle: Path, *, analysis: dict | None = None, **pipeline_cfg) -> tuple[Pipeline, list[bytes]]:
    """A real pipeline (no source thread, no outputs): what it publishes, as the encoded payloads."""
    raw: dict = {"model": {"bundle": str(bundle)}, "source": {"type": "synthetic", "name": "s"},
                 "pipeline": {"deadline_ms": 60000, **pipeline_cfg}}
    if analysis is not None:
        raw["analysis"] = analysis
    cfg = DaemonConfig.model_validate(raw)
    holder = ModelHolder(cfg.model.bundle)
    holder.load()
    sent: list[bytes] = []
    p = Pipeline(cfg, SyntheticSource(cfg.source), holder, lambda v, *a: sent.append(verdict_json(v)),
                 lambda *a, **k: None, station="s1/l1/cam1")
    return p, sent


def frame(seq: int, image, **kw) -> Frame:  # noqa: ANN001
    return Frame(image=image, seq=seq, host_ts_ns=kw.pop("host_ts_ns", time.time_ns()), source="s", frame_id=seq,
                 **kw)


def parsed(payload: bytes) -> V.Verdict:
    """The payload read back strictly; the model reproduces it byte for byte (nothing added, nothing dropped)."""
    v = V.Verdict.parse(payload)
    assert verdict_json(v.to_dict()) == payload
    return v


@pytest.fixture(scope="module")
def ng_bundle(small_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Thresholds forced to 0: every frame is NG and gets analysed (as in test_pipeline)."""
    from linesight.export.bundle import load_bundle, write_bundle

    b = load_bundle(small_bundle)
    b.manifest.thresholds.image = 0.0
    b.manifest.thresholds.pixel = 1e-6
    return write_bundle(tmp_path_factory.mktemp("ng") / "ng.zip", b)


# ------------------------------------------------------------------------------------------- (a) the schema
def test_the_published_schema_is_the_models():
    committed = json.loads((DOCS / "verdict.schema.json").read_text())
    assert committed == V.Verdict.model_json_schema(), (
        "docs/verdict.schema.json is stale: regenerate it with daemon.verdict.schema_json() (see its docstring)")
    assert committed["$defs"]["FailSafe"]["enum"] == list(V.FAIL_SAFE_REASONS)
    assert (DOCS / "verdict.schema.json").read_text() == V.schema_json()  # generated, not edited by hand


def test_fail_safe_reasons_have_one_definition():
    assert V.FAIL_SAFE_REASONS == tuple(V.FailSafe) and FAILSAFE_REASONS is V.FAIL_SAFE_REASONS
    assert set(V.FailSafe) <= set(ALARM_CODES)  # each one is raised as an alarm too


# ------------------------------------------------------------------------------------------- (b) the docs
@pytest.mark.parametrize(("doc", "least"), [("plc-integration.md", 2), ("daemon.md", 1)])
def test_every_verdict_example_in_the_docs_is_a_valid_verdict(doc: str, least: int):
    examples = doc_verdicts(doc)
    assert len(examples) >= least, f"{doc}: expected verdict examples in ```json blocks"
    for text in examples:
        v = V.Verdict.parse(text)
        assert v.to_dict() == json.loads(text)  # every key of the example is the model's, none defaulted in


# ------------------------------------------------------------------------------------------- (c) real verdicts
def test_verdicts_of_a_real_pipeline_are_valid_decided_and_fail_safe(small_bundle: Path):
    p, sent = pipeline(small_bundle)
    good = np.full((80, 90), 120, np.uint8)
    p.process([p.admit(frame(0, good, name="part 7.png", camera_ts_ns=123))])  # decided OK
    p.process([p.admit(frame(1, None, error="torn frame"))])  # bad_frame, no prediction
    p.process([p.admit(frame(2, good, host_ts_ns=time.time_ns() - 10**11))])  # deadline before inference
    p._emit(p.admit(frame(3, good)), fail_safe="frame_dropped", detail="inference queue full")
    real = p.holder.engine.predict_batch

    def misaligned(images, **kw):  # noqa: ANN001, ANN003
        return [replace(x, failure="alignment_failed: no match", failure_code="alignment_failed",
                        frame={**ALIGNED, "aligned": False, "quality": None, "failure": "alignment_failed: no match"})
                for x in real(images, **kw)]

    p.holder.engine.predict_batch = misaligned
    p.process([p.admit(frame(4, good))])
    p.holder.engine.predict_batch = lambda images, **kw: [replace(x, frame=ALIGNED) for x in real(images, **kw)]
    p.process([p.admit(frame(5, good))])
    p.holder.engine = None
    p.process([p.admit(frame(6, good))])

    vs = [parsed(b) for b in sent]
    assert [(v.fail_safe, v.reason) for v in vs] == [
        (False, "score_below_threshold"), (True, "bad_frame"), (True, "deadline_missed"), (True, "frame_dropped"),
        (True, "alignment_failed"), (False, "score_below_threshold"), (True, "no_model")]
    ok, bad, late, dropped, misaligned_v, aligned, no_model = vs
    assert ok.camera.file == "part 7.png" and ok.camera.ts_ns == 123 and ok.model and ok.failure is None
    assert bad.failure == V.Failure(V.FailSafe.BAD_FRAME, "torn frame") and bad.score is None
    assert {"score", "threshold", "defects", "frame"}.isdisjoint(bad.model_fields_set)
    assert misaligned_v.score is not None and misaligned_v.frame and not misaligned_v.frame.aligned  # inferred
    assert aligned.frame == V.Alignment(**ALIGNED) and "frame" not in ok.model_fields_set
    assert no_model.model is None and json.loads(sent[-1])["model"] is None  # a null value, not a left-out key
    assert all(isinstance(v.reason, V.FailSafe) for v in vs if v.fail_safe)


def test_ng_verdicts_carry_the_typed_analysis_or_the_measured_regions(ng_bundle: Path):
    img = np.full((250, 600), 128, np.uint8)
    graded, sent = pipeline(ng_bundle, analysis={"spec": str(EXAMPLES / "inspection_spec.yaml"),
                                                 "knowledge": str(EXAMPLES / "knowledge_magnetic_tile.yaml")})
    graded.process([graded.admit(frame(i, img)) for i in range(2)])
    unspecified, sent_plain = pipeline(ng_bundle)  # analysis on, no spec: the score decides, grade null
    unspecified.process([unspecified.admit(frame(0, img))])
    raw, sent_raw = pipeline(ng_bundle, analysis={"enabled": False})
    raw.process([raw.admit(frame(0, img))])
    late, sent_late = pipeline(ng_bundle, analysis={"enabled": False}, deadline_ms=1)
    late.process([late.admit(frame(0, img))])  # fail-safe after inference: regions travel with it

    for v in map(parsed, sent):
        assert v.verdict == "NG" and not v.fail_safe and v.reason == v.basis and v.grade in ("A", "B", "C", "reject")
        assert v.defects and all(isinstance(d, V.GradedDefect) for d in v.defects) and v.defects_total >= 1
        assert isinstance(v.advice, list) and isinstance(v.fired_rules, list)
    plain = parsed(sent_plain[0])
    assert plain.grade is None and "grade" in plain.model_fields_set and plain.reason == "score_above_threshold"
    measured = parsed(sent_raw[0])
    assert measured.defects and all(isinstance(d, V.Region) for d in measured.defects)
    assert V.ANALYSIS_KEYS.isdisjoint(measured.model_fields_set) and measured.reason == "score_above_threshold"
    failed = parsed(sent_late[0])
    assert failed.failure and failed.failure.code == V.FailSafe.DEADLINE_MISSED and failed.defects


def test_a_verdict_is_byte_for_byte_what_the_dict_built_today_gave(monkeypatch: pytest.MonkeyPatch):
    """The model changed the code, not the message: fixed inputs, the bytes of before (only a fail-safe verdict's
    `fail_safe` now precedes its `reason`, as in a decided one)."""
    from linesight.export.analysis import DefectRegion
    from linesight.export.engine import Prediction

    monkeypatch.setattr(V.time, "time_ns", lambda: 1_764_000_000_128_456_789)
    f = Frame(image=None, seq=4, host_ts_ns=1_764_000_000_123_456_789, source="cam1", frame_id=5, name="Ö.png")
    region = DefectRegion(0, (1, 2, 3, 4), 12, 4.0, 3.0, 1.333, 90.0, (2.5, 3.5), (2, 3), 0.5, 0.25)
    pred = Prediction(0.123456789, "NG", 0.1, regions=[region], model={"id": "m", "version": 2, "hash": "ab"})
    common = dict(seq=5, run=7, part_id="P-5", station="s/l/c", model=pred.model, deadline_ms=200.0)
    decided = verdict_json(V.build(f, prediction=pred, inference_ms=3.14159, **common).to_dict())
    assert decided == (
        b'{"schema":"linesight.verdict/1","seq":5,"run":7,"part_id":"P-5","station":"s/l/c","camera":{"name":"cam1",'
        b'"frame_id":5,"ts_ns":null,"source_seq":4,"file":"\\u00d6.png"},"host_ts":"2025-11-24T16:00:00.123Z",'
        b'"model":{"id":"m","version":2,"hash":"ab"},"deadline_ms":200.0,"latency_ms":{"inference":3.142,"total":5.0},'
        b'"score":0.12346,"threshold":0.1,"defects":[{"index":0,"bbox":[1,2,3,4],"area_px":12,"length_px":4.0,'
        b'"width_px":3.0,"elongation":1.33,"orientation_deg":90.0,"centroid":[2.5,3.5],"peak_xy":[2,3],'
        b'"max_score":0.5,"mean_score":0.25,"polarity":"unknown","zone":"none","area_mm2":null,"length_mm":null,'
        b'"width_mm":null,"type":"unknown","type_confidence":0.0,"type_source":"rules","shape_type":"unknown",'
        b'"learned_type":null,"learned_confidence":null}],"verdict":"NG","fail_safe":false,'
        b'"reason":"score_above_threshold"}')
    failed = V.build(f, failure=V.Failure(V.FailSafe.NO_MODEL, None), **{**common, "model": None})
    assert verdict_json(failed.to_dict()) == (
        b'{"schema":"linesight.verdict/1","seq":5,"run":7,"part_id":"P-5","station":"s/l/c","camera":{"name":"cam1",'
        b'"frame_id":5,"ts_ns":null,"source_seq":4,"file":"\\u00d6.png"},"host_ts":"2025-11-24T16:00:00.123Z",'
        b'"model":null,"deadline_ms":200.0,"latency_ms":{"inference":null,"total":5.0},"verdict":"NG",'
        b'"fail_safe":true,"reason":"no_model","detail":null}')


# ------------------------------------------------------------------------------------------- (d) refused
def test_an_unknown_reason_an_extra_key_or_a_wrong_type_is_refused(small_bundle: Path):
    fail_safe = json.loads(doc_verdicts("plc-integration.md")[-1])
    decided = json.loads(doc_verdicts("daemon.md")[0])
    for good in (fail_safe, decided):
        V.Verdict.parse(json.dumps(good))
    without_detail = {k: v for k, v in fail_safe.items() if k != "detail"}
    bad = {  # what is wrong -> (payload, what the refusal says)
        "unknown fail-safe reason": ({**fail_safe, "reason": "made_up"}, "fail-safe reason 'made_up' is not one"),
        "extra key": ({**fail_safe, "colour": "red"}, "colour\n  Extra inputs are not permitted"),
        "extra key in camera": ({**fail_safe, "camera": {**fail_safe["camera"], "gain": 2}}, "camera.gain\n  Extra"),
        "extra key in a defect": ({**decided, "defects": [{**decided["defects"][0], "colour": "red"}]},
                                  "colour\n  Extra inputs"),
        "string for a boolean": ({**fail_safe, "fail_safe": "true"}, "fail_safe\n  Input should be a valid boolean"),
        "null for a left-out key": ({**fail_safe, "score": None}, "score: a key that does not apply is left out"),
        "fail-safe without detail": (without_detail, "a fail-safe verdict carries `detail`"),
        "decided with detail": ({**decided, "detail": "x"}, "only a fail-safe verdict carries `detail`"),
        "fail-safe with analysis": ({**fail_safe, "grade": "A"}, "a fail-safe verdict carries no defect analysis"),
        "analysis in part": ({k: v for k, v in decided.items() if k != "advice"}, "without advice"),
        "decided without score": ({k: v for k, v in decided.items() if k != "score"}, "carries its score"),
        "reason is not the basis": ({**decided, "reason": "score_above_threshold"}, "`reason` is its `basis`"),
        "other schema": ({**fail_safe, "schema": "linesight.verdict/2"}, "schema\n  Input should be"),
        "bad host_ts": ({**fail_safe, "host_ts": "2026-11-24 06:20:01"}, "host_ts\n  String should match"),
    }
    for why, (payload, says) in bad.items():
        with pytest.raises(ValidationError) as refused:
            V.Verdict.parse(json.dumps(payload))
        assert says in str(refused.value), why
    with pytest.raises(ValueError, match="made_up"):
        V.FailSafe("made_up")
    p, sent = pipeline(small_bundle)
    with pytest.raises(ValueError, match="made_up"):
        p._emit(p.admit(frame(0, None)), fail_safe="made_up", detail="x")
    assert sent == []
