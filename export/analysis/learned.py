"""Learned types merged over the rule types: which pixels of a region the classifier sees, and who wins.

Why apart: with a learned classifier (`export.type_classifier`, stored in the bundle by `linesight types`)
and the prediction's patch features (`Engine.predict_batch(..., keep_features=True)`), a region the
classifier recognises gets the learned type (`type_source` "learned"); one it calls "unknown" keeps the
rule type (`type_source` "rules", `learned_type` "unknown" flags it). Grading and advice key off `type`.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from linesight.config.inspection import UNKNOWN_TYPE
from linesight.export.prediction import DefectRegion
from linesight.export.views import MaskCrop

__all__ = ["TYPE_CORE", "apply_learned_types", "region_core"]

#: Types are learned from ground-truth masks, which are tight; a map region spreads with the features' receptive
#: field (on the fast preset one 30-px scratch lifts ~60 % of a 224² frame above the pixel threshold). The learned
#: type therefore looks at the region's core: its pixels at >= this fraction of the region's peak score.
TYPE_CORE = 0.85


def region_core(crop: MaskCrop, anomaly_map: np.ndarray, peak: float) -> MaskCrop:
    """The part of a region (a crop of the labelling) that scores at least TYPE_CORE of its peak."""
    h, w = crop.mask.shape
    window = np.asarray(anomaly_map)[crop.y:crop.y + h, crop.x:crop.x + w]
    return replace(crop, mask=(crop.mask > 0) & (window >= TYPE_CORE * peak))


def apply_learned_types(regions: Sequence[DefectRegion], answers: Sequence[Any]) -> list[DefectRegion]:
    """Rule-classified regions + the classifier's answers (type_classifier.TypeAnswer) -> final types.

    A recognised region takes the learned type and confidence; an "unknown" one keeps its rule type and
    says so (`learned_type` "unknown"), so a spec written for rule types still grades it.
    """
    out = []
    for r, a in zip(regions, answers, strict=True):
        if a.type != UNKNOWN_TYPE:
            out.append(replace(r, type=a.type, type_confidence=float(a.confidence), type_source="learned",
                               learned_type=a.type, learned_confidence=float(a.confidence)))
        else:
            out.append(replace(r, learned_type=UNKNOWN_TYPE, learned_confidence=float(a.confidence)))
    return out
