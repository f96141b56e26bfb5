"""Likely cause and suggestion: knowledge-base entries (type x zone x polarity, trend conditions) per image.

Why apart: the knowledge base is site knowledge applied after grading; it never changes a verdict.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from linesight.config.inspection import KnowledgeBase, KnowledgeEntry
from linesight.export.analysis.grading import Decision
from linesight.export.prediction import DefectRegion

__all__ = ["Advice", "OutOfControl", "Trend", "advise"]


@dataclass(frozen=True)
class OutOfControl:
    """Which trend charts (daemon.trends) are out of control now: crossed their limit, not yet back."""

    score: bool = False  # the score EWMA (either side)
    ng_rate: bool = False  # the NG-rate CUSUM
    types: frozenset[str] = frozenset()  # defect types whose rate CUSUM is out


@dataclass(frozen=True)
class Trend:
    """The station's recent parts, for trend conditions; a field left None cannot be checked (its entries do
    not match)."""

    ng_rate: float | None = None  # NG fraction of the recent parts, 0..1
    history: Sequence[Sequence[str]] | None = None  # defect types of the previous parts, oldest first; [] = clean
    charts: OutOfControl | None = None  # the trend charts' alarms; None: no trend monitor


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


def _trend_conditions(entry: KnowledgeEntry, kind: str, trend: Trend | None) -> list[str] | None:
    """Texts of the entry's trend conditions when all hold; None when one fails or cannot be checked."""
    held: list[str] = []
    if entry.ng_rate_above is not None:
        rate = None if trend is None else trend.ng_rate
        if rate is None or not float(rate) > entry.ng_rate_above:
            return None
        held.append(f"ng_rate {float(rate):.3f} > {entry.ng_rate_above:g}")
    if entry.repeats_in_last_n is not None:
        history = None if trend is None else trend.history
        if history is None:
            return None
        cond = entry.repeats_in_last_n
        previous = list(history)[-(cond.n - 1):] if cond.n > 1 else []
        seen = 1 + sum(1 for part in previous if kind in part)
        if seen < cond.min_count:
            return None
        held.append(f"{kind} on {seen} of the last {cond.n} parts")
    if entry.out_of_control is not None:
        charts = None if trend is None else trend.charts
        if charts is None:
            return None
        out = {"score": charts.score, "ng_rate": charts.ng_rate, "type": kind in charts.types}
        if not all(out[c] for c in entry.out_of_control):
            return None
        held += [f"trend chart {kind if c == 'type' else c} out of control" for c in entry.out_of_control]
    return held


def _specificity(entry: KnowledgeEntry) -> int:
    return (4 * ((entry.ng_rate_above is not None) + (entry.repeats_in_last_n is not None)
                 + (entry.out_of_control is not None))
            + 2 * (entry.types is not None) + (entry.zones is not None) + (entry.polarity is not None))


def advise(
    decision: Decision, regions: Sequence[DefectRegion], kb: KnowledgeBase | None,
    trend: Trend | None = None,
) -> list[Advice]:
    """Likely causes and actions for the regions that made this image non-perfect, most specific first.

    Regions considered: every graded region (tolerated ones too: their trend matters); without a spec,
    all regions of an NG image; none on an OK-scored frame the spec's gate did not grade.
    `trend` (optional) holds `ng_rate` (recent NG fraction, 0..1) and `history` (defect types of the
    previous parts, oldest first, one list per part, [] for a clean part); the current part counts as
    one of the last n for `repeats_in_last_n`; `charts` says which trend charts are out of control, for
    `out_of_control`. Entries with a trend condition that cannot be checked (no trend, or its field None) do
    not match.
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
