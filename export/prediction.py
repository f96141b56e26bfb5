"""What the engine hands out and the analysis reads: data only, no behaviour beyond serialising.

Why its own module: the engine builds these and the analysis consumes them; with the types here neither
imports the other (no cycle), and the daemon and reports can name them without loading either.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from linesight.config.inspection import UNKNOWN_TYPE, Polarity
from linesight.export.views import View

__all__ = ["NO_ZONE", "DefectRegion", "FailureCode", "NearestNormal", "Prediction"]

#: Zone of a region whose centroid lies in no zone of the spec.
NO_ZONE = "none"
#: Why a frame could not be inspected as trained; the daemon's fail-safe reason (daemon.verdict) for it.
FailureCode = Literal["alignment_failed"]


@dataclass(frozen=True)
class DefectRegion:
    """One connected above-threshold area with its measurements; type fields set by classification."""

    index: int  # rank by max_score, 0 = worst
    bbox: tuple[int, int, int, int]  # x, y, w, h
    area_px: int
    length_px: float
    width_px: float
    elongation: float  # length / width, >= 1
    orientation_deg: float
    centroid: tuple[float, float]  # x, y
    peak_xy: tuple[int, int]  # pixel of max_score (the worst patch, for evidence look-up)
    max_score: float
    mean_score: float
    polarity: Polarity = "unknown"
    zone: str = NO_ZONE
    area_mm2: float | None = None
    length_mm: float | None = None
    width_mm: float | None = None
    type: str = UNKNOWN_TYPE
    type_confidence: float = 0.0
    type_source: Literal["rules", "learned"] = "rules"
    shape_type: str = UNKNOWN_TYPE  # what the shape rules say, kept when a learned type replaces it
    learned_type: str | None = None  # the classifier's answer ("unknown" = nothing close); None = no classifier
    learned_confidence: float | None = None

    @property
    def peak_ratio(self) -> float:
        """mean / max score: ~1 for a flat plateau, small for a diffuse blob with one peak."""
        return self.mean_score / self.max_score if self.max_score > 0 else 1.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["bbox"], d["peak_xy"] = list(self.bbox), list(self.peak_xy)
        d["centroid"] = [round(c, 1) for c in self.centroid]
        for key in ("length_px", "width_px", "elongation", "orientation_deg", "area_mm2", "length_mm", "width_mm"):
            if d[key] is not None:
                d[key] = round(d[key], 2)
        for key in ("max_score", "mean_score", "type_confidence", "learned_confidence"):
            if d[key] is not None:
                d[key] = round(d[key], 4)
        return d


@dataclass
class NearestNormal:
    """The memory-bank row closest to the worst patch, and where it came from (when the bundle knows)."""

    row: int
    distance: float
    image_index: int | None = None
    image_name: str | None = None
    patch_yx: tuple[int, int] | None = None  # patch-grid coordinates in that training image

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["distance"] = round(self.distance, 5)
        d["patch_yx"] = None if self.patch_yx is None else list(self.patch_yx)
        return d


class _BuiltOnRead:
    """A field set to a value or to a zero-argument function making it; the function runs on the first read and
    its result is kept, so what nobody reads (an OK frame's anomaly map) is never built."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.slot = f"_{name}"

    def __get__(self, obj: object, objtype: type | None = None):
        if obj is None:
            return None  # the dataclass default
        value = obj.__dict__[self.slot]
        if callable(value):
            value = obj.__dict__[self.slot] = value()
        return value

    def __set__(self, obj: object, value) -> None:
        obj.__dict__[self.slot] = value


@dataclass
class Prediction:
    score: float
    verdict: str  # "OK" | "NG"
    threshold: float
    anomaly_map: np.ndarray = _BuiltOnRead()  # float32, original image size; the engine's is built on first read
    regions: list[DefectRegion] = field(default_factory=list)  # NG only, worst first, at most MAX_REGIONS
    timings_ms: dict[str, float] = field(default_factory=dict)
    nearest: NearestNormal | None = None  # the bank row closest to the worst patch, and where it came from
    features: np.ndarray | None = None  # (D, h, w) patch features of the first scale's view, when asked for
    view: View | None = None  # that view's geometry (frame <-> feature grid), with the features
    frame: dict | None = None  # what frame preparation did (alignment shift/angle/quality), when it is on
    failure: str | None = None  # set when the frame could not be inspected as trained: the detail, for people
    failure_code: FailureCode | None = None  # set with `failure`: the reason as a code, for programs
    model: dict | None = None  # identity (id, version, hash) of the bundle that decided: a hot swap cannot relabel it
    pixel_threshold: float | None = None  # that bundle's map threshold

    def __post_init__(self) -> None:
        if (self.failure is None) != (self.failure_code is None):  # a failure without its code would be decided
            raise ValueError("Prediction: failure and failure_code are set together or not at all")

    def to_dict(self) -> dict:
        out = {"score": round(self.score, 4), "verdict": self.verdict, "threshold": round(self.threshold, 4),
               "regions": [r.to_dict() for r in self.regions], "timings_ms": self.timings_ms}
        if self.frame is not None:
            out["frame"] = self.frame
        if self.failure is not None:
            out["failure"] = self.failure
        return out
