"""Anomaly map -> measured defects -> type -> grade / verdict -> likely cause -> compact basis.

Why here (export/, no torch): the daemon decides parts with it and the evaluation report explains them
with it, so both must run exactly this code. The model only says *where* it looks abnormal; what that
means for the part (crack or pit, tolerated or reject, which machine to check) is the product's spec and
knowledge base (`config.inspection`), applied here without any labels.

One job per module: `regions` (map -> measured regions), `shapes` (rule types), `learned` (learned types
over rule types), `grading` (spec grade, verdict), `advice` (knowledge base), `chain` (`analyze`: all of
them in order), `basis` (the verdict / header / basis dicts). The data types live in `export.prediction`.

Use: `a = analyze(prediction, engine.pixel_threshold, image, spec=spec, kb=kb, trend=trend,
classifier=TypeClassifier.from_bundle(engine.bundle))`, then `to_verdict_dict(a)` into the MQTT verdict
and `to_header_dict(a)` into the ZMQ header / HTML report.
"""
from __future__ import annotations

from linesight.export.analysis.advice import Advice, advise
from linesight.export.analysis.basis import MAX_COMPACT_DEFECTS, explain, to_header_dict, to_verdict_dict
from linesight.export.analysis.chain import Analysis, analyze
from linesight.export.analysis.grading import Decision, grade
from linesight.export.analysis.learned import TYPE_CORE, apply_learned_types, region_core
from linesight.export.analysis.regions import locate_regions, measure_regions
from linesight.export.analysis.shapes import classify_regions, classify_shape
from linesight.export.prediction import NO_ZONE, DefectRegion, NearestNormal

__all__ = [
    "MAX_COMPACT_DEFECTS",
    "NO_ZONE",
    "TYPE_CORE",
    "Advice",
    "Analysis",
    "Decision",
    "DefectRegion",
    "NearestNormal",
    "advise",
    "analyze",
    "apply_learned_types",
    "classify_regions",
    "classify_shape",
    "explain",
    "grade",
    "locate_regions",
    "measure_regions",
    "region_core",
    "to_header_dict",
    "to_verdict_dict",
]
