"""Inspection spec (defect types, zones, grading limits) and knowledge base (causes, actions), validated.

Why YAML models: quality engineers own the tolerances ("a 2 mm crack on the face is a reject, a 0.3 mm
pit on the edge is grade B") and the root-cause notes, not the model. Both files are edited on site, so
every cross-reference (grade names, type names, zone names) is checked at load and reported as
`file:line: path: message` through `config.loader.load_model`, never discovered on the line.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError, ValidationError

from linesight.config.base import Strict
from linesight.config.loader import format_path, load_model, parse_yaml
from linesight.errors import ConfigError

__all__ = [
    "DEFAULT_SHAPE_RULES",
    "UNKNOWN_TYPE",
    "GradeRule",
    "InspectionSpec",
    "KnowledgeBase",
    "KnowledgeEntry",
    "Polarity",
    "Range",
    "RepeatCondition",
    "ShapeRule",
    "Zone",
    "load_inspection_spec",
    "load_knowledge_base",
]

#: Type given to a region that no shape rule matches, and the learned classifier's "nothing close" answer.
UNKNOWN_TYPE = "unknown"
#: Regions measured per frame, worst first, by the engine, the daemon's analysis and evaluation alike: bounds the
#: work on a map that lights up everywhere (the daemon's analysis.max_regions may lower or raise it).
MAX_REGIONS = 32

Polarity = Literal["darker", "brighter", "mixed", "none", "unknown"]


class Range(Strict):
    """Closed interval; an omitted bound is open. `{min: 2}` means ">= 2", `{max: 5}` means "<= 5"."""

    min: float | None = Field(default=None, description="Inclusive lower bound (None = no lower bound).")
    max: float | None = Field(default=None, description="Inclusive upper bound (None = no upper bound).")

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if self.min is None and self.max is None:
            raise ValueError("give at least one of min / max (an empty range would always match)")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max}); swap them")
        return self

    def contains(self, value: float | None) -> bool:
        """None (quantity not measured, e.g. mm without a scale) never satisfies a range."""
        if value is None:
            return False
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)

    def describe(self, name: str) -> str:
        if self.min is not None and self.max is not None:
            return f"{self.min:g} <= {name} <= {self.max:g}"
        return f"{name} >= {self.min:g}" if self.min is not None else f"{name} <= {self.max:g}"


class Zone(Strict):
    """A named area of the part in image pixels; a region belongs to the first zone holding its centroid."""

    name: str = Field(min_length=1, max_length=64, description="Zone name used by rules (e.g. 'edge', 'face').")
    rect: tuple[float, float, float, float] | None = Field(
        default=None, description="Rectangle [x, y, width, height] in image pixels (x right, y down)."
    )
    polygon: list[tuple[float, float]] | None = Field(
        default=None, description="Polygon [[x, y], ...] in image pixels, at least 3 points."
    )

    @model_validator(mode="after")
    def _one_shape(self) -> Zone:
        if (self.rect is None) == (self.polygon is None):
            raise ValueError(f"zone '{self.name}': give exactly one of rect or polygon")
        if self.rect is not None and (self.rect[2] <= 0 or self.rect[3] <= 0):
            raise ValueError(f"zone '{self.name}': rect width and height must be > 0")
        if self.polygon is not None and len(self.polygon) < 3:
            raise ValueError(f"zone '{self.name}': a polygon needs at least 3 points")
        return self


class ShapeRule(Strict):
    """Label-free defect typing: the first rule whose conditions all hold names the region's type."""

    type: str = Field(min_length=1, max_length=64, description="Defect type assigned when the rule matches.")
    elongation: Range | None = Field(default=None, description="Length / width of the minimum-area rectangle.")
    area_px: Range | None = Field(default=None, description="Region area in pixels.")
    peak_ratio: Range | None = Field(
        default=None,
        description="mean_score / max_score inside the region: near 1 = flat plateau, low = diffuse with "
        "a single peak (stains, uneven shading).",
    )
    polarity: list[Polarity] | None = Field(
        default=None, description="Allowed contrast polarities (needs the image; None = any)."
    )
    zones: list[str] | None = Field(default=None, description="Zones where the rule applies (None = all).")

    @model_validator(mode="after")
    def _has_condition(self) -> ShapeRule:
        if all(getattr(self, f) is None for f in ("elongation", "area_px", "peak_ratio", "polarity", "zones")):
            raise ValueError(f"shape rule '{self.type}' has no condition and would match every region")
        if self.type == UNKNOWN_TYPE:
            raise ValueError(f"'{UNKNOWN_TYPE}' is what unmatched regions get; do not assign it by rule")
        return self


#: Used when a spec gives no shape_rules: long thin, small compact, large diffuse.
DEFAULT_SHAPE_RULES: tuple[ShapeRule, ...] = (
    ShapeRule(type="scratch", elongation=Range(min=4.0)),
    ShapeRule(type="spot", area_px=Range(max=400), elongation=Range(max=2.0)),
    ShapeRule(type="stain", area_px=Range(min=2000), peak_ratio=Range(max=0.7)),
)


class GradeRule(Strict):
    """Limits -> grade. Region-level unless `count` is set (then it grades the image by how many match)."""

    name: str = Field(min_length=1, max_length=80, description="Rule name, reported as the verdict's basis.")
    types: list[str] | None = Field(default=None, description="Defect types it applies to (None = all).")
    zones: list[str] | None = Field(default=None, description="Zones it applies to (None = all).")
    area_px: Range | None = Field(default=None, description="Region area in pixels.")
    area_mm2: Range | None = Field(default=None, description="Region area in mm² (needs px_per_mm).")
    length_px: Range | None = Field(default=None, description="Region length in pixels.")
    length_mm: Range | None = Field(default=None, description="Region length in mm (needs px_per_mm).")
    width_px: Range | None = Field(default=None, description="Region width in pixels.")
    max_score: Range | None = Field(default=None, description="Highest anomaly score inside the region.")
    count: Range | None = Field(
        default=None,
        description="Image-level: number of regions satisfying the other conditions; fires when in range.",
    )
    grade: str = Field(description="Grade given when the rule fires (must be one of `grades`).")

    def measures(self) -> dict[str, Range]:
        names = ("area_px", "area_mm2", "length_px", "length_mm", "width_px", "max_score")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}


class InspectionSpec(Strict):
    """Per-product acceptance spec: zones, how shapes map to types, and which limits give which grade."""

    grades: list[str] = Field(
        default=["A", "B", "C", "reject"],
        min_length=1,
        description="Grade names from best to worst; the image gets the worst grade any rule gives.",
    )
    ng_grades: list[str] = Field(
        default=["reject"], min_length=1, description="Grades whose parts are NG (rejected)."
    )
    default_grade: str | None = Field(
        default=None,
        description="Grade of a region no rule fires on (None = the worst grade: an anomaly no rule "
        "tolerates rejects the part; set the best grade to tolerate unlisted defects instead).",
    )
    gate: Literal["engine_ng", "always"] = Field(
        default="engine_ng",
        description="'engine_ng': grade only frames the model scored NG (OK frames stay OK, best grade); "
        "'always': grade every region above the pixel threshold, even on OK-scored frames.",
    )
    px_per_mm: float | None = Field(
        default=None, gt=0, description="Image scale; needed by any *_mm / *_mm2 limit."
    )
    min_area_px: int = Field(default=1, ge=1, description="Regions smaller than this are ignored (noise).")
    zones: list[Zone] = Field(default=[], description="Named zones; checked in order, first match wins.")
    shape_rules: list[ShapeRule] | None = Field(
        default=None, description="Ordered shape -> type rules (None = scratch / spot / stain defaults)."
    )
    rules: list[GradeRule] = Field(default=[], description="Grading rules; all that match fire.")
    types: list[str] = Field(
        default=[],
        description="Learned defect types (the bundle's classifier from `linesight types`, e.g. [crack, "
        "blowhole]) that rules and the knowledge base may name besides the shape-rule types.",
    )

    def effective_shape_rules(self) -> list[ShapeRule]:
        return list(DEFAULT_SHAPE_RULES if self.shape_rules is None else self.shape_rules)

    def known_types(self) -> list[str]:
        names = [r.type for r in self.effective_shape_rules()]
        return list(dict.fromkeys([*names, *self.types, UNKNOWN_TYPE]))

    def rank(self, grade: str) -> int:
        return self.grades.index(grade)

    @model_validator(mode="after")
    def _cross_references(self) -> InspectionSpec:
        problems: list[tuple[tuple[str | int, ...], str, object]] = []
        self._check_grades(problems)
        zone_names = self._check_zones(problems)
        self._check_rules(problems, zone_names)
        _raise_located(type(self).__name__, problems)
        return self

    def _check_grades(self, problems: list) -> None:
        grades = set(self.grades)
        if len(grades) != len(self.grades):
            problems.append((("grades",), "grade names must be unique", self.grades))
        for i, g in enumerate(self.ng_grades):
            if g not in grades:
                problems.append((("ng_grades", i), f"grade '{g}' is not in grades {self.grades}", g))
        if set(self.ng_grades) >= grades:
            problems.append((("ng_grades",), "every grade is NG; leave at least one passing grade", self.ng_grades))
        ng_known = [g for g in self.ng_grades if g in grades]
        if ng_known:
            mildest = min(self.grades.index(g) for g in ng_known)
            passing_worse = [g for g in self.grades[mildest:] if g not in self.ng_grades]
            if passing_worse:
                problems.append((("ng_grades",), f"grades {passing_worse} are worse than NG grade "
                                 f"'{self.grades[mildest]}' but would pass; NG grades must be the worst ones "
                                 "(the tail of `grades`)", self.ng_grades))
        if self.default_grade is not None and self.default_grade not in grades:
            problems.append((("default_grade",), f"grade '{self.default_grade}' is not in grades {self.grades}",
                             self.default_grade))

    def _check_zones(self, problems: list) -> list[str]:
        zone_names = [z.name for z in self.zones]
        for i, name in enumerate(zone_names):
            if name in zone_names[:i] or name == "none":
                problems.append((("zones", i, "name"), f"zone name '{name}' is reserved or used twice", name))
        for i, sr in enumerate(self.shape_rules or []):
            for j, z in enumerate(sr.zones or []):
                if z not in zone_names:
                    problems.append((("shape_rules", i, "zones", j), f"unknown zone '{z}' (zones: {zone_names})", z))
        return zone_names

    def _check_rules(self, problems: list, zone_names: list[str]) -> None:
        types = self.known_types()
        for i, rule in enumerate(self.rules):
            if rule.grade not in self.grades:
                problems.append((("rules", i, "grade"),
                                 f"grade '{rule.grade}' is not in the declared grade order {self.grades}"
                                 f"{_hint(rule.grade, self.grades)}", rule.grade))
            for j, t in enumerate(rule.types or []):
                if t not in types:
                    problems.append((("rules", i, "types", j),
                                     f"unknown defect type '{t}' (shape rules produce: {types}){_hint(t, types)}", t))
            for j, z in enumerate(rule.zones or []):
                if z not in zone_names and z != "none":
                    problems.append((("rules", i, "zones", j),
                                     f"unknown zone '{z}' (zones: {zone_names}, none){_hint(z, zone_names)}", z))
            for unit in ("area_mm2", "length_mm"):
                if self.px_per_mm is None and getattr(rule, unit) is not None:
                    problems.append((("rules", i, unit), f"rule '{rule.name}' limits {unit} but px_per_mm "
                                     "(image scale) is not set; set it or use the *_px limit",
                                     getattr(rule, unit).model_dump()))
        names = [r.name for r in self.rules]
        for i, n in enumerate(names):
            if n in names[:i]:
                problems.append((("rules", i, "name"), f"rule name '{n}' is used twice", n))


class RepeatCondition(Strict):
    """The same defect type on at least `min_count` of the last `n` parts, the current part included."""

    n: int = Field(ge=1, le=100_000, description="Window: number of most recent parts looked at.")
    min_count: int = Field(ge=1, description="Parts in the window that showed this type.")

    @model_validator(mode="after")
    def _fits(self) -> RepeatCondition:
        if self.min_count > self.n:
            raise ValueError(f"min_count ({self.min_count}) cannot exceed the window n ({self.n})")
        return self


class KnowledgeEntry(Strict):
    """type x zone x optional trend -> likely causes and what to do. Written by process engineers."""

    id: str = Field(min_length=1, max_length=80, description="Stable id, logged with each advice.")
    types: list[str] | None = Field(default=None, description="Defect types (None = any).")
    zones: list[str] | None = Field(default=None, description="Zones (None = any).")
    polarity: list[Polarity] | None = Field(default=None, description="Contrast polarities (None = any).")
    ng_rate_above: float | None = Field(
        default=None, ge=0.0, le=1.0, description="Only when the recent NG rate (trend['ng_rate']) exceeds this."
    )
    repeats_in_last_n: RepeatCondition | None = Field(
        default=None, description="Only when this type repeats (needs trend['history'])."
    )
    out_of_control: list[Literal["score", "ng_rate", "type"]] | None = Field(
        default=None, min_length=1, description="Only while each listed trend chart of the daemon is out of "
        "control (docs/trends.md): score (anomaly-score EWMA), ng_rate (NG-rate CUSUM), type (the rate CUSUM "
        "of this region's defect type)."
    )
    causes: list[str] = Field(min_length=1, description="Likely causes, most likely first.")
    actions: list[str] = Field(min_length=1, description="Suggested actions for the operator / maintenance.")


class KnowledgeBase(Strict):
    """Per-product list of knowledge entries; all matching entries are returned, most specific first."""

    product: str = Field(min_length=1, description="Product the notes are written for (e.g. 'magnetic_tile').")
    types: list[str] | None = Field(
        default=None, description="Defect types this KB knows; entries may only reference these (None = no check)."
    )
    entries: list[KnowledgeEntry] = Field(min_length=1, description="Knowledge entries.")

    @model_validator(mode="after")
    def _references(self) -> KnowledgeBase:
        problems: list[tuple[tuple[str | int, ...], str, object]] = []
        ids = [e.id for e in self.entries]
        for i, e in enumerate(self.entries):
            if e.id in ids[:i]:
                problems.append((("entries", i, "id"), f"entry id '{e.id}' is used twice", e.id))
            if self.types is not None:
                for j, t in enumerate(e.types or []):
                    if t not in self.types and t != UNKNOWN_TYPE:
                        problems.append((("entries", i, "types", j),
                                         f"unknown defect type '{t}' (declared types: {self.types})", t))
        _raise_located(type(self).__name__, problems)
        return self


def _hint(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def _raise_located(title: str, problems: list[tuple[tuple[str | int, ...], str, object]]) -> None:
    """Raise one ValidationError whose locations point at the offending items, so the loader adds lines."""
    if not problems:
        return
    details = [
        InitErrorDetails(type=PydanticCustomError("value_error", "{msg}", {"msg": msg}), loc=loc, input=value)
        for loc, msg, value in problems
    ]
    raise ValidationError.from_exception_data(title, details)


def load_inspection_spec(path: str | Path) -> InspectionSpec:
    """Load and cross-check a spec; every mistake is a ConfigError with file:line."""
    return load_model(path, InspectionSpec)


def load_knowledge_base(path: str | Path, spec: InspectionSpec | None = None) -> KnowledgeBase:
    """Load a knowledge base; with `spec`, the types and zones it references must exist in the spec."""
    kb = load_model(path, KnowledgeBase)
    if spec is None:
        return kb
    types, zones = set(spec.known_types()), {z.name for z in spec.zones} | {"none"}
    problems: list[tuple[tuple[str | int, ...], str]] = []
    for i, e in enumerate(kb.entries):
        problems += [(("entries", i, "types", j), f"type '{t}' is not produced by the inspection spec "
                      f"(types: {sorted(types)})") for j, t in enumerate(e.types or []) if t not in types]
        problems += [(("entries", i, "zones", j), f"zone '{z}' is not defined in the inspection spec "
                      f"(zones: {sorted(zones)})") for j, z in enumerate(e.zones or []) if z not in zones]
    if problems:
        doc = parse_yaml(Path(path).read_text(encoding="utf-8"), str(path))
        lines = [(doc.lines.get(loc, 1), f"{path}:{doc.lines.get(loc, 1)}: {format_path(loc)}: {msg}")
                 for loc, msg in problems]
        noun = "problem" if len(lines) == 1 else "problems"
        raise ConfigError("\n".join([f"{path}: knowledge base does not fit the inspection spec "
                                      f"({len(lines)} {noun}):", *(t for _, t in sorted(lines))]))
    return kb
