"""Verdict messages (schema linesight.verdict/1): one per triggered frame, decided or fail-safe.

`Verdict` is the message's one definition: the pipeline builds it (`build`), the outputs publish
`Verdict.to_dict()` (encoded once by daemon.sinks.encoding.verdict_json: the same bytes on every output),
consumers may read a payload back with `Verdict.parse`, and docs/verdict.schema.json is its JSON Schema
(`schema_json()`; tests/test_verdict_schema.py keeps the two equal).

A key that does not apply to a verdict is left out, never null: `score`, `threshold` and `defects` come with
a prediction, `frame` with frame preparation, `detail` with a fail-safe reason, `grade` ... `advice` with the
defect analysis. A null is a value: no model loaded (`model`), no detail text, no spec grade. So the message
is the model dumped without its unset fields (`exclude_unset`), never without its None ones.
"""
from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, model_validator

from linesight.config.inspection import Polarity

if TYPE_CHECKING:
    from linesight.daemon.sources.base import Frame
    from linesight.export.engine import Prediction

SCHEMA = "linesight.verdict/1"


class FailSafe(StrEnum):
    """Why a frame was not decided: the `reason` of its fail-safe verdict."""

    # Also the alarm code and the `reason` label of linesight_failsafe_total (daemon.metrics takes its labels here).

    DEADLINE_MISSED = "deadline_missed"  # not decided within pipeline.deadline_ms of host_ts
    FRAME_DROPPED = "frame_dropped"  # the inference queue was full
    INFERENCE_ERROR = "inference_error"  # the engine raised on this frame
    NO_MODEL = "no_model"  # no valid model loaded
    CAMERA_ERROR = "camera_error"  # the source failed
    BAD_FRAME = "bad_frame"  # empty, torn, oversized or undecodable frame
    ALIGNMENT_FAILED = "alignment_failed"  # frame preparation could not align it (Prediction.failure_code)


#: The fail-safe reason codes as plain strings, in FailSafe's order.
FAIL_SAFE_REASONS: tuple[str, ...] = tuple(reason.value for reason in FailSafe)


class Failure(NamedTuple):
    """A frame that was not decided: the reason as a code, for programs, and its detail, for people."""

    code: FailSafe
    detail: str | None = None


def iso(ts_ns: int) -> str:
    return datetime.fromtimestamp(ts_ns / 1e9, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# ------------------------------------------------------------------------------------------------- model
def _never_null(schema: dict[str, Any]) -> None:
    """JSON Schema of a key some verdicts leave out: its type without null, and no default."""
    schema.pop("default", None)
    options = [o for o in schema.pop("anyOf", []) if o != {"type": "null"}]
    if len(options) == 1:
        schema.update(options[0])
    elif options:
        schema["anyOf"] = options


def _may_be_null(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


def _optional(description: str, *, nullable: bool = False) -> Any:
    """A key only some verdicts carry (see the module doc): not required; present, null only if `nullable`."""
    return Field(None, description=description, json_schema_extra=_may_be_null if nullable else _never_null)


class _Strict(BaseModel):
    """extra="forbid", as the configs' models: a key the schema does not know is refused. Types are coerced
    while the daemon builds a verdict (numpy scalars from the engine); `Verdict.parse` checks them strictly."""

    model_config = ConfigDict(extra="forbid")


class Camera(_Strict):
    name: str = Field(description="The source's name (config `source.name`)")
    frame_id: int | None = Field(description="Camera frame id, or the frame's index in a video file")
    ts_ns: int | None = Field(description="Camera timestamp in ns (buffer or chunk data), when the camera gives one")
    source_seq: int = Field(description="The source's own frame counter")
    file: str | None = Field(description="File name, for folder sources")


class ModelIdentity(_Strict):
    id: str = Field(description="Model id from the bundle's manifest")
    version: int = Field(description="Bundle version: every change to a bundle raises it")
    hash: str = Field(description="First 16 hex digits of the bundle's content hash (`linesight info`)")


class Latency(_Strict):
    inference: float | None = Field(description="Engine time of this frame's micro-batch, ms; null: not inferred")
    total: float = Field(description="host_ts to this verdict, ms")


class Alignment(_Strict):
    """What frame preparation did to the frame (export.frame_prep.FrameReport)."""

    aligned: bool
    dx: float = Field(description="Shift to the reference, full-frame px")
    dy: float
    angle_deg: float
    quality: float | None = Field(description="Match quality; null with alignment off")
    failure: str | None = Field(description="Why alignment failed (then the verdict is fail-safe alignment_failed)")
    unaligned: bool = Field(description="Alignment failed and the frame was scored as it is (on_failure: unaligned)")


class Region(_Strict):
    """A measured region (export.prediction.DefectRegion): `defects` without the defect analysis."""

    index: int = Field(description="Rank by max_score, 0 = worst")
    bbox: tuple[int, int, int, int] = Field(description="x, y, w, h in frame pixels")
    area_px: int
    length_px: float
    width_px: float
    elongation: float
    orientation_deg: float
    centroid: tuple[float, float] = Field(description="x, y")
    peak_xy: tuple[int, int] = Field(description="Pixel of max_score")
    max_score: float
    mean_score: float
    polarity: Polarity
    zone: str
    area_mm2: float | None
    length_mm: float | None
    width_mm: float | None
    type: str
    type_confidence: float
    type_source: Literal["rules", "learned"]
    shape_type: str
    learned_type: str | None
    learned_confidence: float | None


class GradedDefect(_Strict):
    """A typed, graded defect (export.analysis.to_verdict_dict): `defects` with the defect analysis."""

    type: str
    confidence: float
    type_source: Literal["rules", "learned"]
    zone: str
    grade: str | None = Field(description="The spec's grade of this defect; null without a spec")
    bbox: tuple[int, int, int, int] = Field(description="x, y, w, h in frame pixels")
    area_px: int
    length_px: float
    max_score: float
    mean_score: float
    learned_type: Literal["unknown"] | None = _optional("Present when the learned types knew no close example: "
                                                        "the rule type stands")
    area_mm2: float | None = _optional("Present when the spec gives px_per_mm")
    length_mm: float | None = _optional("Present when the spec gives px_per_mm")


class VerdictAnalysis(_Strict):
    """The defect analysis' part of a decided verdict: its spec verdict decides, its defects replace the regions
    and its basis is the verdict's reason."""

    verdict: Literal["OK", "NG"]
    grade: str | None
    basis: str
    fired_rules: list[str]
    defects: list[GradedDefect]
    defects_total: int
    advice: list[str]


PREDICTION_KEYS = frozenset({"score", "threshold", "defects"})
ANALYSIS_KEYS = frozenset({"grade", "basis", "fired_rules", "defects_total", "advice"})
_NEVER_NULL = frozenset({*PREDICTION_KEYS, "frame", *ANALYSIS_KEYS - {"grade"}})


def _rules(schema: dict[str, Any]) -> None:
    """`Verdict._consistent` as far as JSON Schema can say it (not: reason == basis)."""
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    analysis = sorted(ANALYSIS_KEYS)
    schema["allOf"] = [
        {"if": {"properties": {"fail_safe": {"const": True}}},
         "then": {"properties": {"reason": {"enum": list(FAIL_SAFE_REASONS)}}, "required": ["detail"],
                  "not": {"anyOf": [{"required": [key]} for key in analysis]}},
         "else": {"required": sorted(PREDICTION_KEYS), "not": {"required": ["detail"]}}},
        {"dependentRequired": {**{key: sorted(PREDICTION_KEYS - {key}) for key in sorted(PREDICTION_KEYS)},
                               **{key: [k for k in analysis if k != key] for key in analysis}}},
    ]


class Verdict(_Strict):
    """linesight.verdict/1: the decision on one frame, or its fail-safe verdict and why."""

    # A key that does not apply is left out, never null; a null is a value (see the module doc).

    model_config = ConfigDict(json_schema_extra=_rules)

    schema_: Literal["linesight.verdict/1"] = Field(alias="schema", description="Message schema and version")
    seq: int = Field(description="Frame number on this station, in arrival order; continues across restarts")
    run: int = Field(description="Counts the daemon's starts")
    part_id: str
    station: str = Field(description="site/line/station")
    camera: Camera
    host_ts: str = Field(pattern=r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$",
                         description="When the frame reached the host, ISO-8601 UTC with milliseconds")
    model: ModelIdentity | None = Field(description="The model that decided (without a prediction: the active one); "
                                                     "null: none loaded")
    deadline_ms: float = Field(description="pipeline.deadline_ms: act on the verdict only before host_ts + "
                                           "deadline_ms")
    latency_ms: Latency
    score: float | None = _optional("Anomaly score (with a prediction, fail-safe ones included)")
    threshold: float | None = _optional("The model's image threshold: NG from score >= threshold")
    defects: list[GradedDefect] | list[Region] | None = _optional(
        "The analysis' graded defects, or the measured regions (analysis off / not run)")
    frame: Alignment | None = _optional("What frame preparation did (bundles with alignment)")
    verdict: Literal["OK", "NG"] = Field(description="The decision; a fail-safe verdict is pipeline.fail_safe_verdict")
    fail_safe: bool = Field(description="true: not decided, `reason` is a FailSafe code and `detail` says why")
    reason: FailSafe | str = Field(union_mode="left_to_right",
                                   description="A FailSafe code if fail-safe, else score_above_threshold, "
                                               "score_below_threshold or the basis")
    detail: str | None = _optional("Fail-safe verdicts only: why, for people", nullable=True)
    grade: str | None = _optional("Defect analysis: the spec's grade of the part; null without a spec",
                                  nullable=True)
    basis: str | None = _optional("Defect analysis: the rule that decided (also the reason)")
    fired_rules: list[str] | None = _optional("Defect analysis: every spec rule that fired")
    defects_total: int | None = _optional("Defect analysis: regions found (`defects` lists at most 16)")
    advice: list[str] | None = _optional("Defect analysis: knowledge-base entries that matched")

    @model_validator(mode="after")
    def _consistent(self) -> Verdict:
        given = self.model_fields_set
        if nulls := sorted(key for key in _NEVER_NULL & given if getattr(self, key) is None):
            raise ValueError(f"{', '.join(nulls)}: a key that does not apply is left out, never null")
        if self.fail_safe:
            if not isinstance(self.reason, FailSafe):
                raise ValueError(f"fail-safe reason {self.reason!r} is not one of {', '.join(FAIL_SAFE_REASONS)}")
            if "detail" not in given:
                raise ValueError("a fail-safe verdict carries `detail` (null without one)")
            if given & ANALYSIS_KEYS:
                raise ValueError("a fail-safe verdict carries no defect analysis")
        elif "detail" in given:
            raise ValueError("only a fail-safe verdict carries `detail`")
        elif PREDICTION_KEYS - given:
            raise ValueError("a decided verdict carries its score, threshold and defects")
        for group in (PREDICTION_KEYS, ANALYSIS_KEYS):
            if given & group and (missing := group - given):
                raise ValueError(f"{', '.join(sorted(group & given))} without {', '.join(sorted(missing))}")
        if "basis" in given and self.reason != self.basis:
            raise ValueError("with the defect analysis, `reason` is its `basis`")
        return self

    @property
    def failure(self) -> Failure | None:
        """(code, detail) of a fail-safe verdict; None for a decided one."""
        return Failure(FailSafe(self.reason), self.detail) if self.fail_safe else None

    def to_dict(self) -> dict[str, Any]:
        """The message as JSON types (what the outputs encode): unset keys left out, nulls kept."""
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True)

    @classmethod
    def parse(cls, payload: str | bytes) -> Verdict:
        """A received message, checked strictly (exact JSON types, known keys, consistent); ValidationError."""
        return cls.model_validate_json(payload, strict=True)


def schema_json() -> str:
    """docs/verdict.schema.json: `python -c "from linesight.daemon.verdict import schema_json as s; print(s(),
    end='')" > docs/verdict.schema.json`."""
    return json.dumps(Verdict.model_json_schema(), indent=2) + "\n"


# ------------------------------------------------------------------------------------------------- building
def build(frame: Frame, *, seq: int, run: int, part_id: str, station: str, model: dict | None, deadline_ms: float,
          prediction: Prediction | None = None, failure: Failure | None = None, fail_safe_verdict: str = "NG",
          inference_ms: float | None = None, analysis: VerdictAnalysis | None = None) -> Verdict:
    """A decided verdict (a prediction, no failure) or a fail-safe one (`failure`; a prediction, when there is
    one, still travels with it).

    `analysis` (export.analysis.to_verdict_dict) decides a decided verdict: its decision (spec grade) replaces
    the bare score verdict, its typed, graded defects replace the raw regions and its basis is the reason."""
    now = time.time_ns()
    shown: dict[str, Any] = {}  # what the prediction adds
    if prediction is not None:
        shown.update(score=round(prediction.score, 5), threshold=round(prediction.threshold, 5),
                     defects=[r.to_dict() for r in prediction.regions])
        if prediction.frame is not None:
            shown["frame"] = prediction.frame  # alignment shift/angle/quality: jitter shows up here first
    if failure is not None:
        decision: dict[str, Any] = {"verdict": fail_safe_verdict, "fail_safe": True, "reason": FailSafe(failure.code),
                                    "detail": failure.detail}
    elif prediction is None:
        raise ValueError("a decided verdict needs its prediction")
    elif analysis is None:
        decision = {"verdict": prediction.verdict, "fail_safe": False,
                    "reason": "score_above_threshold" if prediction.verdict == "NG" else "score_below_threshold"}
    else:
        decision = {"verdict": analysis.verdict, "fail_safe": False, "reason": analysis.basis,
                    "defects": analysis.defects, "grade": analysis.grade, "basis": analysis.basis,
                    "fired_rules": analysis.fired_rules, "defects_total": analysis.defects_total,
                    "advice": analysis.advice}
    return Verdict(
        schema=SCHEMA, seq=seq, run=run, part_id=part_id, station=station,
        camera=Camera(name=frame.source, frame_id=frame.frame_id, ts_ns=frame.camera_ts_ns, source_seq=frame.seq,
                      file=frame.name),
        host_ts=iso(frame.host_ts_ns), model=model, deadline_ms=deadline_ms,
        latency_ms=Latency(inference=None if inference_ms is None else round(inference_ms, 3),
                           total=round((now - frame.host_ts_ns) / 1e6, 3)),
        **{**shown, **decision},
    )
