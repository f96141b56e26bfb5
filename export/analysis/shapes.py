"""Rule-based defect types: the spec's shape rules (elongation, area, peak ratio, zone, polarity) -> type.

Why apart: the rules need no labels and always run; a learned type (analysis.learned) only overrides them.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

from linesight.config.inspection import DEFAULT_SHAPE_RULES, UNKNOWN_TYPE, InspectionSpec, Range, ShapeRule
from linesight.export.prediction import DefectRegion

__all__ = ["classify_regions", "classify_shape"]


def _margin(rng: Range, value: float) -> float:
    """Relative distance inside the range's bounds (0 at a bound); negative when outside."""
    out = math.inf
    if rng.min is not None:
        out = min(out, (value - rng.min) / max(abs(rng.min), 1e-9))
    if rng.max is not None:
        out = min(out, (rng.max - value) / max(abs(rng.max), 1e-9))
    return out


def classify_shape(
    region: DefectRegion, rules: Sequence[ShapeRule] | InspectionSpec | None = None
) -> tuple[str, float]:
    """First matching shape rule -> (type, confidence); ("unknown", 0.0) when none matches.

    Confidence is 0.5 when a measurement sits on a rule's bound and reaches 1.0 once every measured
    condition is 50 % inside its bound (rules with only zone/polarity conditions give 0.75). It is a
    margin, not a probability: no labels were used.
    """
    if isinstance(rules, InspectionSpec):
        rules = rules.effective_shape_rules()
    elif rules is None:
        rules = DEFAULT_SHAPE_RULES
    measured = {"elongation": region.elongation, "area_px": float(region.area_px), "peak_ratio": region.peak_ratio}
    for rule in rules:
        if rule.zones is not None and region.zone not in rule.zones:
            continue
        if rule.polarity is not None and region.polarity not in rule.polarity:
            continue
        margins = [_margin(rng, measured[name]) for name in measured
                   if (rng := getattr(rule, name)) is not None]
        if any(m < 0 for m in margins):
            continue
        if not margins:
            return rule.type, 0.75
        return rule.type, round(0.5 + 0.5 * min(1.0, min(margins) / 0.5), 4)
    return UNKNOWN_TYPE, 0.0


def classify_regions(
    regions: Sequence[DefectRegion], rules: Sequence[ShapeRule] | InspectionSpec | None = None
) -> list[DefectRegion]:
    """Copies of `regions` with type and type_confidence filled in."""
    out = []
    for r in regions:
        kind, conf = classify_shape(r, rules)
        out.append(replace(r, type=kind, type_confidence=conf, type_source="rules", shape_type=kind))
    return out
