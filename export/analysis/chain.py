"""The whole chain for one engine prediction: measure -> rule type -> learned type -> grade -> advise.

Why apart: the daemon and the evaluation report call only `analyze`; each step lives in its own module.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np

from linesight.config.inspection import InspectionSpec, KnowledgeBase
from linesight.export.analysis.advice import Advice, Trend, advise
from linesight.export.analysis.grading import Decision, grade
from linesight.export.analysis.learned import apply_learned_types, region_core
from linesight.export.analysis.regions import locate_regions
from linesight.export.analysis.shapes import classify_regions
from linesight.export.prediction import DefectRegion, NearestNormal, Prediction

if TYPE_CHECKING:
    from linesight.export.type_classifier import TypeClassifier

__all__ = ["Analysis", "analyze"]

log = logging.getLogger(__name__)


@dataclass
class Analysis:
    """Everything derived from one prediction; feed it to explain / to_verdict_dict / to_header_dict."""

    score: float
    threshold: float
    pixel_threshold: float
    regions: list[DefectRegion]
    decision: Decision
    advice: list[Advice] = field(default_factory=list)
    evidence: NearestNormal | None = None


def analyze(
    prediction: Prediction, pixel_threshold: float, image: np.ndarray | None = None, *,
    spec: InspectionSpec | None = None, kb: KnowledgeBase | None = None, trend: Trend | None = None,
    evidence: NearestNormal | None = None, max_regions: int | None = None,
    classifier: TypeClassifier | None = None,
) -> Analysis:
    """The whole chain for one engine prediction (measure -> classify -> grade -> advise).

    `max_regions` bounds the work on noisy maps (see measure_regions); `count` rules then count only
    the measured regions. `classifier` (learned types) needs `prediction.features`; without them the
    shape rules alone type the regions (logged).
    """
    regions, pixels = locate_regions(
        prediction.anomaly_map, pixel_threshold, image,
        px_per_mm=None if spec is None else spec.px_per_mm,
        zones=() if spec is None else spec.zones,
        min_area_px=1 if spec is None else spec.min_area_px, max_regions=max_regions,
    )
    regions = classify_regions(regions, spec)
    if classifier is not None and regions:
        if prediction.features is None:
            log.warning("learned types skipped: the prediction carries no patch features "
                        "(call Engine.predict_batch(..., keep_features=True))")
        else:
            cores = [region_core(c, prediction.anomaly_map, r.max_score) for c, r in zip(pixels, regions)]
            answers = classifier.classify(prediction.features, cores, [r.peak_xy for r in regions],
                                          view=getattr(prediction, "view", None))
            regions = apply_learned_types(regions, answers)
    verdict: Literal["OK", "NG"] = "NG" if prediction.verdict == "NG" else "OK"
    decision = grade(regions, spec, engine_verdict=verdict)
    return Analysis(prediction.score, prediction.threshold, pixel_threshold, regions, decision,
                    advise(decision, regions, kb, trend), evidence)
