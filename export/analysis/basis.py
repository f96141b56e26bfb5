"""Serialisers of an Analysis: the compact basis (`explain`), the MQTT verdict form and the ZMQ/report header.

Why apart: these dicts are the wire format the daemon and the HTML report emit; keeping them together keeps
their keys and rounding consistent.
"""
from __future__ import annotations

from typing import Any

from linesight.config.inspection import UNKNOWN_TYPE
from linesight.export.analysis.chain import Analysis

__all__ = ["MAX_COMPACT_DEFECTS", "explain", "to_header_dict", "to_verdict_dict"]

#: Upper bound on defects listed in the compact (MQTT) verdict; the count of all is always given.
MAX_COMPACT_DEFECTS = 16


def _decisive(a: Analysis) -> list[int]:
    """Regions behind the image grade: graded at it or hit by the deciding rule; else all regions."""
    d = a.decision
    hits = [i for i in range(len(a.regions))
            if i < len(d.region_grades) and d.region_grades[i] is not None
            and (d.region_grades[i] == d.grade or d.basis in d.region_rules[i])]
    return hits or list(range(len(a.regions)))


def explain(a: Analysis, *, max_regions: int = 5) -> dict[str, Any]:
    """Compact JSON-able basis: score vs threshold, rule that decided, the regions behind it, evidence."""
    d = a.decision
    idx = _decisive(a)[:max_regions]
    regions = []
    for i in idx:
        r = a.regions[i]
        regions.append({"index": r.index, "type": r.type, "confidence": round(r.type_confidence, 3),
                        "type_source": r.type_source, "shape_type": r.shape_type, "learned_type": r.learned_type,
                        "zone": r.zone, "grade": d.region_grades[i] if i < len(d.region_grades) else None,
                        "rules": d.region_rules[i] if i < len(d.region_rules) else [],
                        "bbox": list(r.bbox), "max_score": round(r.max_score, 4),
                        "over_pixel_threshold": round(r.max_score / a.pixel_threshold, 3)
                        if a.pixel_threshold > 0 else None})
    return {
        "verdict": d.verdict, "grade": d.grade, "basis": d.basis, "fired_rules": d.fired_rules,
        "score": round(a.score, 5), "threshold": round(a.threshold, 5),
        "score_ratio": round(a.score / a.threshold, 3) if a.threshold > 0 else None,
        "pixel_threshold": round(a.pixel_threshold, 5), "regions_total": len(a.regions), "regions": regions,
        "evidence": None if a.evidence is None else a.evidence.to_dict(),
    }


def to_verdict_dict(a: Analysis) -> dict[str, Any]:
    """Compact form for the MQTT verdict: grade, basis rule and per defect type/confidence/size.

    Each defect keeps the keys of the current `defects` items (bbox, area_px, max_score, mean_score), so
    it can replace them; at most MAX_COMPACT_DEFECTS, decisive ones first, `defects_total` counts all.
    """
    defects = []
    decisive = _decisive(a)
    order = decisive + [i for i in range(len(a.regions)) if i not in set(decisive)]
    for i in order[:MAX_COMPACT_DEFECTS]:
        r = a.regions[i]
        item: dict[str, Any] = {"type": r.type, "confidence": round(r.type_confidence, 2),
                                "type_source": r.type_source, "zone": r.zone,
                                "grade": a.decision.region_grades[i] if i < len(a.decision.region_grades) else None,
                                "bbox": list(r.bbox), "area_px": r.area_px, "length_px": round(r.length_px, 1),
                                "max_score": round(r.max_score, 4), "mean_score": round(r.mean_score, 4)}
        if r.learned_type == UNKNOWN_TYPE:
            item["learned_type"] = UNKNOWN_TYPE  # flag: no labeled example was close, the rule type stands
        if r.area_mm2 is not None and r.length_mm is not None:
            item.update(area_mm2=round(r.area_mm2, 3), length_mm=round(r.length_mm, 3))
        defects.append(item)
    return {"grade": a.decision.grade, "basis": a.decision.basis, "fired_rules": a.decision.fired_rules,
            "defects": defects, "defects_total": len(a.regions),
            "advice": [ad.entry for ad in a.advice]}


def to_header_dict(a: Analysis) -> dict[str, Any]:
    """Full form for the ZMQ image header and HTML report: every region, the decision, advice, basis."""
    return {"decision": a.decision.to_dict(), "regions": [r.to_dict() for r in a.regions],
            "advice": [ad.to_dict() for ad in a.advice], "basis": explain(a, max_regions=len(a.regions))}
