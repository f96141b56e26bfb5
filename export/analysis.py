"""Anomaly map -> measured defects -> type -> grade / verdict -> likely cause -> compact basis.

Why here (export/, no torch): the daemon decides parts with it and the evaluation report explains them
with it, so both must run exactly this code. The model only says *where* it looks abnormal; what that
means for the part (crack or pit, tolerated or reject, which machine to check) is the product's spec and
knowledge base (`config.inspection`), applied here without any labels.

Conventions (all in original image pixels, x right, y down):
- `length_px` / `width_px`: long / short side of cv2.minAreaRect around the region's pixel centres, + 1
  px (a pixel is a 1x1 square, so a single pixel measures 1 x 1, a 1-px line has width 1).
- `orientation_deg` in [0, 180): direction of the long side, 0 = horizontal, 90 = vertical, growing
  counter-clockwise *as seen on screen* (a line rising to the right has 0 < angle < 90).
- `polarity`: mean image intensity inside the region vs a ring around it (excluding other anomalous
  pixels): darker / brighter, `mixed` (large parts both darker and brighter), `none` (no contrast above
  `polarity_tol` of full scale), `unknown` (no image given, or no ring pixels).

Types: the spec's shape rules always run (`shape_type`). With a learned classifier
(`export.type_classifier`, stored in the bundle by `linesight types`) and the prediction's patch
features (`Engine.predict_batch(..., keep_features=True)`), a region the classifier recognises gets the
learned type (`type_source` "learned"); one it calls "unknown" keeps the rule type (`type_source`
"rules", `learned_type` "unknown" flags it). Grading and the knowledge base key off the final `type`.

Use: `a = analyze(prediction, engine.pixel_threshold, image, spec=spec, kb=kb, trend=trend,
classifier=TypeClassifier.from_bundle(engine.bundle))`, then `to_verdict_dict(a)` into the MQTT verdict
and `to_header_dict(a)` into the ZMQ header / HTML report.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

import cv2
import numpy as np

from linesight.config.inspection import (
    DEFAULT_SHAPE_RULES,
    GradeRule,
    UNKNOWN_TYPE,
    InspectionSpec,
    KnowledgeBase,
    KnowledgeEntry,
    Polarity,
    Range,
    ShapeRule,
    Zone,
)
from linesight.export.views import MaskCrop

if TYPE_CHECKING:
    from linesight.export.engine import Prediction
    from linesight.export.type_classifier import TypeClassifier

__all__ = [
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
    "nearest_normal",
    "to_header_dict",
    "to_verdict_dict",
]

log = logging.getLogger(__name__)

NO_ZONE = "none"
#: Upper bound on defects listed in the compact (MQTT) verdict; the count of all is always given.
MAX_COMPACT_DEFECTS = 16


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


# --- 1. regions and measurements ----------------------------------------------------------------


def _full_scale(image: np.ndarray) -> float:
    if image.dtype == np.uint8:
        return 255.0
    if image.dtype == np.uint16:
        return 65535.0
    peak = float(np.nanmax(image)) if image.size else 1.0
    return 1.0 if peak <= 1.0 else 255.0


def _gray(image: np.ndarray) -> np.ndarray:
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim == 3:
        # Channel order does not matter for a polarity test; equal weights avoid assuming BGR vs RGB.
        return image[..., :3].astype(np.float32).mean(axis=2)
    return image.astype(np.float32)


def _polarity(gray: np.ndarray, region: np.ndarray, anomalous: np.ndarray, tol: float, ring_px: int) -> Polarity:
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * ring_px + 1, 2 * ring_px + 1))
    ring = cv2.dilate(region.astype(np.uint8), kernel).astype(bool) & ~anomalous
    if not ring.any():
        return "unknown"
    inside, around = gray[region], float(gray[ring].mean())
    dark, bright = float((inside < around - tol).mean()), float((inside > around + tol).mean())
    if dark >= 0.25 and bright >= 0.25:
        return "mixed"
    diff = float(inside.mean()) - around
    if abs(diff) < tol:
        return "none"
    return "darker" if diff < 0 else "brighter"


def _zone_of(x: float, y: float, zones: Sequence[Zone]) -> str:
    for z in zones:
        if z.rect is not None:
            zx, zy, zw, zh = z.rect
            if zx <= x < zx + zw and zy <= y < zy + zh:
                return z.name
        elif z.polygon is not None:
            poly = np.asarray(z.polygon, dtype=np.float32).reshape(-1, 1, 2)
            if cv2.pointPolygonTest(poly, (float(x), float(y)), False) >= 0:
                return z.name
    return NO_ZONE


def measure_regions(anomaly_map: np.ndarray, pixel_threshold: float, image: np.ndarray | None = None,
                    **options: Any) -> list[DefectRegion]:
    """The regions of `locate_regions` without their pixel crops (options as there)."""
    return locate_regions(anomaly_map, pixel_threshold, image, **options)[0]


def locate_regions(
    anomaly_map: np.ndarray,
    pixel_threshold: float,
    image: np.ndarray | None = None,
    *,
    px_per_mm: float | None = None,
    zones: Sequence[Zone] = (),
    min_area_px: int = 1,
    polarity_tol: float = 0.02,
    ring_px: int = 5,
    max_regions: int | None = None,
) -> tuple[list[DefectRegion], list[MaskCrop]]:
    """Connected components (8-connected) of `anomaly_map >= pixel_threshold`, measured, worst first, plus each
    region's pixels as a crop of the same labelling (what typing needs: no second labelling, no frame-size mask
    per region). `image` (same height/width as the map) enables contrast polarity; `px_per_mm` adds mm
    measurements; `zones` name each region by its centroid (first match, else "none"); `max_regions` measures
    only the N highest-scoring regions (bounds the time on a noisy map; None = all)."""
    amap = np.asarray(anomaly_map, dtype=np.float32)
    if amap.ndim != 2:
        raise ValueError(f"anomaly_map must be 2-D (H, W), got shape {amap.shape}")
    if px_per_mm is not None and not px_per_mm > 0:
        raise ValueError(f"px_per_mm must be > 0, got {px_per_mm}")
    tol = 0.0
    if image is not None:
        if image.shape[:2] != amap.shape:
            raise ValueError(f"image {image.shape[:2]} and anomaly map {amap.shape} differ in size; "
                             "pass the original image the map was computed for")
        tol = polarity_tol * _full_scale(image)
    anomalous = amap >= pixel_threshold
    n, labels, stats, centroids = cv2.connectedComponentsWithStats(anomalous.astype(np.uint8), connectivity=8)
    keep = [i for i in range(1, n) if stats[i, cv2.CC_STAT_AREA] >= min_area_px]
    if max_regions is not None and len(keep) > max_regions:
        peaks = np.full(n, -np.inf, dtype=np.float32)
        np.maximum.at(peaks, labels[anomalous], amap[anomalous])
        keep = sorted(keep, key=lambda i: -peaks[i])[:max_regions]
        log.debug("regions capped", extra={"regions": n - 1, "measured": max_regions})
    found: list[tuple[DefectRegion, MaskCrop]] = []
    H, W = amap.shape
    for i in keep:
        x, y, w, h, area = (int(v) for v in stats[i])
        # Work on the bbox padded by the ring width: cost scales with the region, not the image.
        x0, y0 = max(0, x - ring_px - 1), max(0, y - ring_px - 1)
        x1, y1 = min(W, x + w + ring_px + 1), min(H, y + h + ring_px + 1)
        lab = labels[y0:y1, x0:x1]
        own = lab == i
        vals = amap[y0:y1, x0:x1]
        scores = vals[own]
        peak = np.unravel_index(np.argmax(np.where(own, vals, -np.inf)), own.shape)
        contours, _ = cv2.findContours(own.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        (_, _), (s1, s2), _ = rect = cv2.minAreaRect(np.concatenate(contours))
        box = cv2.boxPoints(rect)
        e1, e2 = box[1] - box[0], box[2] - box[1]
        long_edge = e1 if np.hypot(*e1) >= np.hypot(*e2) else e2
        orientation = math.degrees(math.atan2(-float(long_edge[1]), float(long_edge[0]))) % 180.0
        length, width = max(s1, s2) + 1.0, min(s1, s2) + 1.0
        cx, cy = (float(c) for c in centroids[i])
        polarity: Polarity = "unknown"
        if image is not None:  # gray of the window only: no frame-size float copy of the image
            polarity = _polarity(_gray(image[y0:y1, x0:x1]), own, anomalous[y0:y1, x0:x1], tol, ring_px)
        scale = px_per_mm
        found.append((DefectRegion(
            index=0, bbox=(x, y, w, h), area_px=area, length_px=length, width_px=width,
            elongation=length / width, orientation_deg=round(orientation, 2) % 180.0, centroid=(cx, cy),
            peak_xy=(int(peak[1]) + x0, int(peak[0]) + y0), max_score=float(scores.max()),
            mean_score=float(scores.mean()), polarity=polarity, zone=_zone_of(cx, cy, zones),
            area_mm2=None if scale is None else area / scale**2,
            length_mm=None if scale is None else length / scale,
            width_mm=None if scale is None else width / scale,
        ), MaskCrop((H, W), y0, x0, own)))
    found.sort(key=lambda rc: -rc[0].max_score)
    return [replace(r, index=k) for k, (r, _) in enumerate(found)], [c for _, c in found]


#: Types are learned from ground-truth masks, which are tight; a map region spreads with the features' receptive
#: field (on the fast preset one 30-px scratch lifts ~60 % of a 224² frame above the pixel threshold). The learned
#: type therefore looks at the region's core: its pixels at >= this fraction of the region's peak score.
TYPE_CORE = 0.85


def region_core(crop: MaskCrop, anomaly_map: np.ndarray, peak: float) -> MaskCrop:
    """The part of a region (a crop of the labelling) that scores at least TYPE_CORE of its peak."""
    h, w = crop.mask.shape
    window = np.asarray(anomaly_map)[crop.y:crop.y + h, crop.x:crop.x + w]
    return replace(crop, mask=(crop.mask > 0) & (window >= TYPE_CORE * peak))


# --- 2. rule-based types -------------------------------------------------------------------------


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


# --- 3. severity and verdict ---------------------------------------------------------------------


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


# --- 4. cause and suggestion ---------------------------------------------------------------------


@dataclass
class Advice:
    """A knowledge-base entry that matched some regions of this image."""

    entry: str
    type: str
    zone: str
    regions: list[int]
    causes: list[str]
    actions: list[str]
    conditions: list[str]  # trend conditions that held (empty for plain type x zone matches)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _trend_conditions(entry: KnowledgeEntry, kind: str, trend: dict[str, Any] | None) -> list[str] | None:
    """Texts of the entry's trend conditions when all hold; None when one fails or cannot be checked."""
    held: list[str] = []
    if entry.ng_rate_above is not None:
        rate = None if trend is None else trend.get("ng_rate")
        if rate is None or not float(rate) > entry.ng_rate_above:
            return None
        held.append(f"ng_rate {float(rate):.3f} > {entry.ng_rate_above:g}")
    if entry.repeats_in_last_n is not None:
        history = None if trend is None else trend.get("history")
        if history is None:
            return None
        cond = entry.repeats_in_last_n
        previous = list(history)[-(cond.n - 1):] if cond.n > 1 else []
        seen = 1 + sum(1 for part in previous if kind in part)
        if seen < cond.min_count:
            return None
        held.append(f"{kind} on {seen} of the last {cond.n} parts")
    return held


def _specificity(entry: KnowledgeEntry) -> int:
    return (4 * ((entry.ng_rate_above is not None) + (entry.repeats_in_last_n is not None))
            + 2 * (entry.types is not None) + (entry.zones is not None) + (entry.polarity is not None))


def advise(
    decision: Decision, regions: Sequence[DefectRegion], kb: KnowledgeBase | None,
    trend: dict[str, Any] | None = None,
) -> list[Advice]:
    """Likely causes and actions for the regions that made this image non-perfect, most specific first.

    Regions considered: every graded region (tolerated ones too: their trend matters); without a spec,
    all regions of an NG image; none on an OK-scored frame the spec's gate did not grade.
    `trend` (optional) holds `ng_rate` (recent NG fraction, 0..1) and `history` (defect types of the
    previous parts, oldest first, one list per part, [] for a clean part); the current part counts as
    one of the last n for `repeats_in_last_n`. Entries with a trend condition that cannot be checked
    (key missing) do not match.
    """
    if kb is None or not regions:
        return []
    if decision.grade is None:
        targets = list(range(len(regions))) if decision.verdict == "NG" else []
    else:
        targets = [i for i, g in enumerate(decision.region_grades) if g is not None]
    groups: dict[tuple[str, str, str], list[int]] = {}
    for i in targets:
        r = regions[i]
        groups.setdefault((r.type, r.zone, r.polarity), []).append(r.index)
    ranked: list[tuple[int, int, Advice]] = []
    for order, entry in enumerate(kb.entries):
        for (kind, zone, polarity), idx in groups.items():
            if entry.types is not None and kind not in entry.types:
                continue
            if entry.zones is not None and zone not in entry.zones:
                continue
            if entry.polarity is not None and polarity not in entry.polarity:
                continue
            held = _trend_conditions(entry, kind, trend)
            if held is None:
                continue
            ranked.append((-_specificity(entry), order,
                           Advice(entry.id, kind, zone, idx, list(entry.causes), list(entry.actions), held)))
    ranked.sort(key=lambda t: (t[0], t[1]))
    return [a for _, _, a in ranked]


# --- 5. basis / evidence -------------------------------------------------------------------------


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


def nearest_normal(
    patch_feature: np.ndarray, bank: np.ndarray, locations: np.ndarray | None = None,
    image_names: Sequence[str] | None = None,
) -> NearestNormal:
    """Closest bank row (L2) to one patch feature (D,), with its training image and patch position.

    `locations` is the (N, 3) int array [image index, patch y, patch x] per bank row, stored by the
    trainer next to the bank (proposed `memory_locations.npy`); `image_names` the training image names
    in index order (proposed manifest field). Without them only the row and distance are known.
    """
    f = np.asarray(patch_feature, dtype=np.float32).reshape(-1)
    b = np.asarray(bank, dtype=np.float32)
    if b.ndim != 2 or b.shape[1] != f.shape[0] or b.shape[0] == 0:
        raise ValueError(f"bank must be (N, {f.shape[0]}) with N > 0, got {b.shape}")
    d2 = np.einsum("ij,ij->i", b, b) - 2.0 * (b @ f) + float(f @ f)
    row = int(np.argmin(d2))
    out = NearestNormal(row, math.sqrt(max(float(d2[row]), 0.0)))
    if locations is not None:
        loc = np.asarray(locations)
        if loc.shape != (b.shape[0], 3):
            raise ValueError(f"locations must be ({b.shape[0]}, 3) [image, y, x] per bank row, got {loc.shape}")
        out.image_index, out.patch_yx = int(loc[row, 0]), (int(loc[row, 1]), int(loc[row, 2]))
        if image_names is not None and 0 <= out.image_index < len(image_names):
            out.image_name = str(image_names[out.image_index])
    return out


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
    spec: InspectionSpec | None = None, kb: KnowledgeBase | None = None, trend: dict[str, Any] | None = None,
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
