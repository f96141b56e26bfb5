"""Choose the image threshold by what the line can afford (false-reject and escape targets) and say what it costs.

A threshold that scraps more good parts than the target allows is refused, not written: a weak model once
calibrated to reject every good part without a word. The rates come with Wilson intervals, because a rate
measured on a few hundred parts is only known that well.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from linesight.config.manifest import CalibrationTarget, Rate
from linesight.errors import LinesightError
from linesight.trainer import metrics as M

#: Named rules kept from before targets (`--policy`); each still has to keep within the false-reject target.
POLICIES = ("no_false_reject", "no_miss", "fewest_errors", "f1_optimal")


class ThresholdRefused(LinesightError):
    """The chosen threshold breaks a target: it is not written unless forced."""


@dataclass(frozen=True)
class ImageChoice:
    """The image threshold, the rule that chose it, its rates on the labeled set, and why it is refused (if)."""

    policy: str
    threshold: float
    false_reject: Rate
    escape: Rate
    refusal: str | None


def rate(count: int, n: int) -> Rate:
    return Rate(count=count, n=n, rate=count / n, ci95=M.wilson_interval(count, n))


def pct(x: float) -> str:
    return f"{100 * x:.3g} %"


def describe(r: Rate, parts: str) -> str:
    """`3 of 203 good parts (1.48 %, 95 % CI 0.5–4.25 %)`: the form every rate is printed in."""
    lo, hi = r.ci95
    return f"{r.count} of {r.n} {parts} ({pct(r.rate)}, 95 % CI {100 * lo:.3g}–{pct(hi)})"


def rates_at(good: np.ndarray, bad: np.ndarray, threshold: float) -> tuple[Rate, Rate]:
    """(false reject: good scores >= threshold, escape: defect scores < threshold)."""
    return rate(int((good >= threshold).sum()), good.size), rate(int((bad < threshold).sum()), bad.size)


def choose_image_threshold(scores, labels, target: CalibrationTarget, policy: str | None = None) -> ImageChoice:
    """`policy` (a POLICIES name) or else the target decides: with max_escape the highest threshold within it
    (fewest good parts scrapped at that quality), otherwise the lowest within max_false_reject (most defects
    caught within the scrap budget). Whatever decided, the result is checked against every target given."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels)
    good, bad = s[y == 0], s[y == 1]
    fr_max, esc_max = target.max_false_reject, target.max_escape
    if policy is not None:
        if policy not in POLICIES:
            raise LinesightError(f"unknown threshold policy {policy!r}; choose one of {', '.join(POLICIES)}")
        t = M.image_thresholds(s, y)[policy]
    elif esc_max is not None:
        policy, t = "max_escape", M.threshold_for_escape(bad, esc_max)
    else:
        policy, t = "max_false_reject", M.threshold_for_false_reject(good, fr_max)
    fr, esc = rates_at(good, bad, t)
    problems = []
    if fr.rate > fr_max:
        if policy == "max_escape":  # the escape target forces the scrap: say what the scrap budget would let through
            t_fr = M.threshold_for_false_reject(good, fr_max)
            problems.append(f"no threshold meets both targets: escapes within {pct(esc_max)} need threshold <= "
                            f"{t:.6g}, and even that rejects {describe(fr, 'good parts')}, above the {pct(fr_max)} "
                            f"false-reject target, while at that target (threshold {t_fr:.6g}) "
                            f"{describe(rates_at(good, bad, t_fr)[1], 'defective parts')} escape")
        else:
            problems.append(f"{policy} threshold {t:.6g} rejects {describe(fr, 'good parts')}, above the "
                            f"{pct(fr_max)} false-reject target (without --policy the target decides)")
    if esc_max is not None and esc.rate > esc_max:
        problems.append(f"{policy} threshold {t:.6g} lets {describe(esc, 'defective parts')} escape, above the "
                        f"{pct(esc_max)} escape target")
    return ImageChoice(policy, float(t), fr, esc, "; ".join(problems) or None)
