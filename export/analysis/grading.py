"""Severity and verdict: the spec's grading rules over typed regions -> image grade, OK / NG, deciding rule.

Why apart: grading is the product's tolerance policy; it reads only region measurements and types.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from linesight.config.inspection import GradeRule, InspectionSpec
from linesight.export.prediction import DefectRegion

__all__ = ["Decision", "grade"]

log = logging.getLogger(__name__)


@dataclass
class Decision:
    """Outcome for one image. `basis` names what decided it: a rule name, or the engine's score test."""

    verdict: Literal["OK", "NG"]
    grade: str | None  # None without a spec (the score threshold alone decided)
    basis: str
    fired_rules: list[str] = field(default_factory=list)
    region_grades: list[str | None] = field(default_factory=list)  # per region, None = not graded
    region_rules: list[list[str]] = field(default_factory=list)  # per region, rules it triggered

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _rule_matches(rule: GradeRule, r: DefectRegion) -> bool:
    if rule.types is not None and r.type not in rule.types:
        return False
    if rule.zones is not None and r.zone not in rule.zones:
        return False
    return all(rng.contains(getattr(r, name)) for name, rng in rule.measures().items())


def grade(
    regions: Sequence[DefectRegion], spec: InspectionSpec | None, *, engine_verdict: Literal["OK", "NG"]
) -> Decision:
    """Apply the spec's grading rules to classified regions; without a spec the engine's verdict stands.

    Region rules grade each matching region (the worst of its rules; a region no rule covers gets
    `default_grade`, by default the worst grade: an anomaly nobody wrote a tolerance for rejects);
    `count` rules grade the image when the number of matching regions is in range. The image grade is
    the worst of all; NG when it is one of `ng_grades`.
    An engine-NG frame with no region to measure stays NG (basis `engine_ng_unlocalized`): the spec
    cannot tolerate what it cannot measure.
    """
    n = len(regions)
    if spec is None:
        basis = "score_above_threshold" if engine_verdict == "NG" else "score_below_threshold"
        return Decision(engine_verdict, None, basis, [], [None] * n, [[] for _ in range(n)])
    best = spec.grades[0]
    if spec.gate == "engine_ng" and engine_verdict == "OK":
        return Decision("OK", best, "score_below_threshold", [], [None] * n, [[] for _ in range(n)])
    if n == 0:
        if engine_verdict == "NG":
            mildest_ng = min(spec.ng_grades, key=spec.rank)
            return Decision("NG", mildest_ng, "engine_ng_unlocalized", [], [], [])
        return Decision("OK", best, "no_regions", [], [], [])
    base = spec.default_grade or spec.grades[-1]
    graded: list[list[str]] = [[] for _ in range(n)]  # grades of region rules that fired on each region
    region_rules: list[list[str]] = [[] for _ in range(n)]
    fired: list[tuple[str, str]] = []  # (rule name, grade) in rule order
    for rule in spec.rules:
        hits = [i for i, r in enumerate(regions) if _rule_matches(rule, r)]
        if rule.count is not None:
            if not rule.count.contains(len(hits)):
                continue
        elif not hits:
            continue
        fired.append((rule.name, rule.grade))
        for i in hits:
            region_rules[i].append(rule.name)
            if rule.count is None:
                graded[i].append(rule.grade)
    # A rule's grade replaces the default even when milder: a spec may explicitly tolerate a defect.
    region_grades = [max(g, key=spec.rank) if g else base for g in graded]
    image_grade = max([*region_grades, *(g for _, g in fired)], key=spec.rank)
    basis = next((name for name, g in fired if g == image_grade), "default_grade")
    verdict: Literal["OK", "NG"] = "NG" if image_grade in spec.ng_grades else "OK"
    log.debug("graded", extra={"verdict": verdict, "grade": image_grade, "basis": basis,
                               "fired": [f[0] for f in fired], "regions": n})
    return Decision(verdict, image_grade, basis, [f[0] for f in fired], list(region_grades), region_rules)
