"""Evaluation metrics for anomaly detection (image AUROC, pixel AUROC, AUPRO, thresholds).

Conventions used everywhere in linesight:
  * label 1 = defective (positive, "NG"), label 0 = good; a higher score is more anomalous;
  * an image/pixel is predicted NG iff ``score >= threshold``.
Pixel metrics are histogram based over one global score range, so memory stays O(bins) no
matter how many maps are evaluated (hundreds of 600x600 maps are fine).
Pure numpy + cv2 so the daemon side could reuse it without torch.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

import cv2
import numpy as np

from linesight.errors import LinesightError

log = logging.getLogger(__name__)
DEFAULT_BINS = 100_000


class MetricError(LinesightError):
    """Metric inputs are unusable (empty, NaN, mismatched shapes, a class missing)."""


def _scores_labels(scores, labels, *, need_both: bool = True) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel()
    if s.size == 0 or s.size != y.size:
        raise MetricError(f"metrics: got {s.size} scores and {y.size} labels; need the same non-zero count")
    if not np.isfinite(s).all():
        raise MetricError(f"metrics: {int((~np.isfinite(s)).sum())} scores are NaN/inf; fix the scoring step")
    if not np.isin(y, (0, 1)).all():
        raise MetricError("metrics: labels must be 0 (good) or 1 (defective)")
    y = y.astype(np.int64)
    if need_both and (y.min() == y.max()):
        raise MetricError("metrics: AUROC/ROC needs both good (0) and defective (1) images in the evaluation set")
    return s, y


def _auc(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))


def _above(x: float) -> float:
    """Lowest float32 strictly above x: a threshold that passes a score of exactly x."""
    f = np.float32(x)
    return float(f if float(f) > x else np.nextafter(f, np.float32(np.inf)))


def roc_curve(scores, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC points for descending thresholds (first is +inf); tied scores form a single point."""
    s, y = _scores_labels(scores, labels)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]  # last index of each tie group
    tp = np.cumsum(y)[last]
    fp = last + 1 - tp
    return np.r_[0.0, fp / fp[-1]], np.r_[0.0, tp / tp[-1]], np.r_[np.inf, s[last]]


def auroc(scores, labels) -> float:
    """Trapezoid area under the ROC; equals Mann-Whitney U/(P*N) with ties counted 0.5."""
    fpr, tpr, _ = roc_curve(scores, labels)
    return _auc(fpr, tpr)


def _interval_threshold(lo: float | None, hi: float | None) -> float:
    """A threshold separating sorted scores lo < hi: the midpoint keeps a margin on both sides."""
    if hi is None:
        return _above(lo)
    if lo is None:
        return float(hi)
    mid = (lo + hi) / 2.0
    return float(mid) if lo < mid <= hi else float(hi)


def _sweep(s: np.ndarray, y: np.ndarray):
    """Confusion counts for every distinct way a threshold can split the scores, ascending.

    Entry j means "the j lowest distinct scores are OK, the rest NG"; j = 0 is all NG.
    """
    u = np.unique(s)
    cand = np.r_[u, np.inf]  # NG iff score >= cand[j]
    good, bad = np.sort(s[y == 0]), np.sort(s[y == 1])
    fp = good.size - np.searchsorted(good, cand, "left")
    tp = bad.size - np.searchsorted(bad, cand, "left")
    return u, fp, tp, good.size, bad.size


def _pick(u: np.ndarray, j: int) -> float:
    return _interval_threshold(float(u[j - 1]) if j > 0 else None, float(u[j]) if j < u.size else None)


def _f1(tp, fp, fn):
    den = 2 * tp + fp + fn
    return np.where(den > 0, 2 * tp / np.maximum(den, 1), 0.0)


def f1_max(scores, labels) -> tuple[float, float]:
    """Best image-level F1 and its threshold (ties -> lowest threshold, i.e. fewest misses)."""
    s, y = _scores_labels(scores, labels)
    u, fp, tp, _, nb = _sweep(s, y)
    f1 = _f1(tp, fp, nb - tp)
    j = int(np.argmax(f1))
    return float(f1[j]), _pick(u, j)


def pixel_confusion(truth: np.ndarray, pred: np.ndarray, n: int) -> np.ndarray:
    """(n, n) pixel counts, rows the true class and columns the predicted one (class maps of equal shape, ids < n):
    summed over images it gives the pooled per-class IoU/F1 a segmentation head is judged by."""
    if truth.shape != pred.shape:
        raise MetricError(f"metrics: class maps of shapes {truth.shape} and {pred.shape}; need the same shape")
    idx = truth.astype(np.int64).ravel() * n + pred.astype(np.int64).ravel()
    return np.bincount(idx, minlength=n * n).reshape(n, n)


def class_iou_f1(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-class pixel IoU and F1 from a pixel confusion matrix; NaN for a class neither true nor predicted
    anywhere (no evidence either way, so it stays out of a mean)."""
    c = np.asarray(confusion, np.float64)
    tp = np.diag(c)
    fp, fn = c.sum(0) - tp, c.sum(1) - tp
    union = tp + fp + fn
    seen = union > 0
    iou = np.where(seen, tp / np.maximum(union, 1), np.nan)
    return iou, np.where(seen, _f1(tp, fp, fn), np.nan)


def image_thresholds(scores, labels) -> dict[str, float]:
    """Candidate operating points; each value t means ``score >= t`` is NG.

    no_false_reject: lowest float32 threshold above the highest good score (all good pass).
    no_miss: the lowest defect score, the highest threshold that still catches every defect.
    fewest_errors / f1_optimal: midpoint of the optimal score gap; ties -> lowest threshold
    (fewer misses, a missed defect usually costs more than a re-inspection).
    Only good images -> only no_false_reject; only defects -> only no_miss.
    """
    s, y = _scores_labels(scores, labels, need_both=False)
    out: dict[str, float] = {}
    if (y == 0).any():
        out["no_false_reject"] = _above(float(s[y == 0].max()))
    if (y == 1).any():
        out["no_miss"] = float(s[y == 1].min())
    if (y == 0).any() and (y == 1).any():
        u, fp, tp, _, nb = _sweep(s, y)
        errors = fp + (nb - tp)
        out["fewest_errors"] = _pick(u, int(np.argmin(errors)))
        out["f1_optimal"] = f1_max(s, y)[1]
    return out


#: Two-sided 95 % normal quantile for the Wilson interval.
Z95 = 1.959963984540054


def wilson_interval(count: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of count/n: unlike count/n +- z*se it stays inside [0, 1] and is honest at 0 of n,
    which is what a false-reject or escape rate measured on a few hundred parts usually is."""
    if n < 1 or not 0 <= count <= n:
        raise MetricError(f"wilson interval: need 0 <= count <= n and n >= 1, got {count} of {n}")
    p, z2 = count / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * np.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, float(centre - half)), min(1.0, float(centre + half))


def _allowed(n: int, rate: float) -> int:
    """Most parts of n a rate allows (k / n <= rate, compared as the rate a report would print)."""
    k = min(n, int(rate * n))
    while k < n and (k + 1) / n <= rate:  # rate * n can round either way of an integer
        k += 1
    while k > 0 and k / n > rate:
        k -= 1
    return k


def threshold_for_false_reject(good_scores, max_rate: float) -> float:
    """Lowest threshold rejecting at most `max_rate` of the good scores: it catches the most defects the scrap
    budget allows. A float32 just above the highest good score that passes (max_rate 0 = no_false_reject)."""
    g = np.sort(np.asarray(good_scores, dtype=np.float64).ravel())[::-1]
    if g.size == 0 or not 0.0 <= max_rate < 1.0:
        raise MetricError(f"false-reject target: need good scores and a rate in [0, 1), got {g.size} scores, "
                          f"rate {max_rate}")
    return _above(float(g[_allowed(g.size, max_rate)]))


def threshold_for_escape(defect_scores, max_rate: float) -> float:
    """Highest threshold letting at most `max_rate` of the defect scores pass: it rejects the fewest good parts
    the escape limit allows. A defect score, the lowest one still caught (max_rate 0 = no_miss)."""
    b = np.sort(np.asarray(defect_scores, dtype=np.float64).ravel())
    if b.size == 0 or not 0.0 <= max_rate < 1.0:
        raise MetricError(f"escape target: need defect scores and a rate in [0, 1), got {b.size} scores, "
                          f"rate {max_rate}")
    return float(b[_allowed(b.size, max_rate)])


def confusion(scores, labels, threshold: float) -> dict:
    """Counts and NG-class precision/recall at ``score >= threshold``; 0/0 is reported as 0.0."""
    s, y = _scores_labels(scores, labels, need_both=False)
    ng = s >= threshold
    tp, fp = int((ng & (y == 1)).sum()), int((ng & (y == 0)).sum())
    fn, tn = int((~ng & (y == 1)).sum()), int((~ng & (y == 0)).sum())
    return {"tp": tp, "fp": fp, "tn": tn, "fn": fn,
            "precision": tp / (tp + fp) if tp + fp else 0.0,
            "recall": tp / (tp + fn) if tp + fn else 0.0,
            "accuracy": (tp + tn) / s.size}


@dataclass(frozen=True)
class OperatingPoint:
    """What the line sees at one threshold: good parts rejected (false rejects) and defective parts passed as OK
    (escapes), counted on the evaluated images; each rate is per class (ppm = rate x 1e6)."""
    name: str  # "chosen" (the deployed threshold) or a policy of image_thresholds
    threshold: float
    false_rejects: int
    n_good: int
    escapes: int
    n_defect: int

    @property
    def false_reject_rate(self) -> float | None:
        return self.false_rejects / self.n_good if self.n_good else None

    @property
    def escape_rate(self) -> float | None:
        return self.escapes / self.n_defect if self.n_defect else None

    def to_dict(self) -> dict:
        return {**asdict(self), "false_reject_rate": self.false_reject_rate, "escape_rate": self.escape_rate}


def operating_points(scores, labels, threshold: float, name: str = "chosen") -> list[OperatingPoint]:
    """The given threshold first, then each image_thresholds candidate on the same scores: the alternatives."""
    s, y = _scores_labels(scores, labels, need_both=False)
    good, bad = y == 0, y == 1

    def at(key: str, t: float) -> OperatingPoint:
        ng = s >= t
        return OperatingPoint(key, float(t), int((ng & good).sum()), int(good.sum()), int((~ng & bad).sum()),
                              int(bad.sum()))

    return [at(name, threshold), *(at(k, v) for k, v in image_thresholds(s, y).items())]


def rate_curves(scores, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(t, false-reject rate, escape rate) at every distinct score t, ascending: with ``score >= t`` NG, a
    threshold in (t[j-1], t[j]] rejects fr[j] of the good images and passes esc[j] of the defective ones."""
    s, y = _scores_labels(scores, labels)
    u, fp, tp, n_good, n_bad = _sweep(s, y)
    return u, fp[:-1] / n_good, (n_bad - tp[:-1]) / n_bad


def pr_curve(scores, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(recall, precision, threshold) of the NG class for descending thresholds, the points of roc_curve;
    the first point (threshold +inf, nothing NG) has precision 1 by convention."""
    fpr, tpr, thr = roc_curve(scores, labels)
    y = np.asarray(labels).ravel()
    tp, fp = tpr * int((y == 1).sum()), fpr * int((y == 0).sum())
    return tpr, np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1e-300), 1.0), thr


def average_precision(scores, labels) -> float:
    """Step-wise area under the PR curve (sum of recall steps x precision), as sklearn computes it."""
    r, p, _ = pr_curve(scores, labels)
    return float(np.sum(np.diff(r) * p[1:]))


# ---------------------------------------------------------------- pixel level (histograms)
@dataclass
class PixelHist:
    """Per-bin pixel counts over a shared score range; adding two merges evaluation subsets."""
    lo: float
    hi: float
    normal: np.ndarray
    defect: np.ndarray
    pro: np.ndarray  # defect pixels weighted by 1/(size of their connected region)
    n_regions: int = 0

    def __add__(self, other: PixelHist) -> PixelHist:
        return PixelHist(self.lo, self.hi, self.normal + other.normal, self.defect + other.defect,
                         self.pro + other.pro, self.n_regions + other.n_regions)

    def edge(self, k: int) -> float:
        return self.lo + k * (self.hi - self.lo) / self.normal.size


def _pair(m, k, i: int) -> tuple[np.ndarray, np.ndarray]:
    m = np.asarray(m, dtype=np.float32)
    mask = np.zeros(m.shape, bool) if k is None else np.asarray(k) > 0
    if m.shape != mask.shape or m.ndim != 2:
        raise MetricError(f"pixel metrics: map #{i} has shape {m.shape} but its mask {mask.shape}; "
                          "resize the anomaly map to the mask size before evaluating")
    if not np.isfinite(m).all():
        raise MetricError(f"pixel metrics: anomaly map #{i} contains NaN/inf")
    return m, mask


def score_range(maps: Iterable) -> tuple[float, float]:
    """Global min/max over all maps (first pass; keeps every later histogram on shared bins)."""
    lo, hi = np.inf, -np.inf
    for m in maps:
        m = np.asarray(m, dtype=np.float32)
        lo, hi = min(lo, float(m.min())), max(hi, float(m.max()))
    if not np.isfinite([lo, hi]).all():
        raise MetricError("pixel metrics: no maps given (or maps contain NaN/inf)")
    return lo, hi


def pixel_hist(maps: Sequence, masks: Sequence, lo: float, hi: float, bins: int = DEFAULT_BINS) -> PixelHist:
    """Accumulate normal/defect/region-weighted histograms; a mask of None means all normal."""
    if len(maps) != len(masks):
        raise MetricError(f"pixel metrics: {len(maps)} maps but {len(masks)} masks")
    h = PixelHist(lo, hi, np.zeros(bins), np.zeros(bins), np.zeros(bins))
    scale = bins / (hi - lo) if hi > lo else 0.0
    for i, (m, k) in enumerate(zip(maps, masks)):
        m, mask = _pair(m, k, i)
        b = np.clip(((m - lo) * scale).astype(np.int64), 0, bins - 1)
        h.normal += np.bincount(b[~mask], minlength=bins)
        if mask.any():
            n, lab = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
            lab = lab[mask]
            size = np.bincount(lab)
            h.defect += np.bincount(b[mask], minlength=bins)
            h.pro += np.bincount(b[mask], weights=1.0 / size[lab], minlength=bins)
            h.n_regions += n - 1
    return h


def _hist_of(maps, masks, bins) -> PixelHist:
    return pixel_hist(maps, masks, *score_range(maps), bins=bins)


def hist_auroc(h: PixelHist) -> float | None:
    if h.normal.sum() == 0 or h.defect.sum() == 0:
        return None
    fpr = np.r_[0.0, np.cumsum(h.normal[::-1])] / h.normal.sum()
    tpr = np.r_[0.0, np.cumsum(h.defect[::-1])] / h.defect.sum()
    return _auc(fpr, tpr)


def _pro_points(h: PixelHist) -> tuple[np.ndarray, np.ndarray]:
    """Pixel FPR and mean per-region overlap for descending bin edges (the PRO curve, both from 0)."""
    return (np.r_[0.0, np.cumsum(h.normal[::-1])] / h.normal.sum(),
            np.r_[0.0, np.cumsum(h.pro[::-1])] / h.n_regions)


def hist_pro_curve(h: PixelHist, fpr_limit: float = 0.3, n: int = 61) -> tuple[np.ndarray, np.ndarray] | None:
    """The PRO curve sampled at n pixel FPRs in [0, fpr_limit] (the part AUPRO integrates), for plotting."""
    if h.normal.sum() == 0 or h.n_regions == 0:
        return None
    fpr, pro = _pro_points(h)
    x = np.linspace(0.0, fpr_limit, n)
    return x, np.interp(x, fpr, pro)


def hist_aupro(h: PixelHist, fpr_limit: float = 0.3) -> float | None:
    if not 0.0 < fpr_limit <= 1.0:
        raise MetricError(f"aupro: fpr_limit must be in (0, 1], got {fpr_limit}")
    if h.normal.sum() == 0 or h.n_regions == 0:
        return None
    fpr, pro = _pro_points(h)
    i = int(np.searchsorted(fpr, fpr_limit, "right"))  # first point beyond the limit
    if i < fpr.size:  # cut the last segment at exactly fpr_limit
        t = (fpr_limit - fpr[i - 1]) / (fpr[i] - fpr[i - 1])
        fpr, pro = np.r_[fpr[:i], fpr_limit], np.r_[pro[:i], pro[i - 1] + t * (pro[i] - pro[i - 1])]
    return _auc(fpr, pro) / fpr_limit


def hist_f1_threshold(h: PixelHist) -> float | None:
    if h.defect.sum() == 0:
        return None
    tp = np.cumsum(h.defect[::-1])[::-1]  # pixels with bin >= k
    fp = np.cumsum(h.normal[::-1])[::-1]
    return h.edge(int(np.argmax(_f1(tp, fp, h.defect.sum() - tp))))


def pixel_auroc(maps: Sequence, masks: Sequence, bins: int = DEFAULT_BINS) -> float | None:
    """Pixel AUROC over all maps (None if no defect or no normal pixels); ties within a bin count 0.5."""
    return hist_auroc(_hist_of(maps, masks, bins))


def aupro(maps: Sequence, masks: Sequence, fpr_limit: float = 0.3, bins: int = DEFAULT_BINS) -> float | None:
    """MVTec AUPRO: mean per-region overlap integrated over pixel FPR in [0, fpr_limit], / fpr_limit."""
    return hist_aupro(_hist_of(maps, masks, bins), fpr_limit)


def pixel_threshold_for_area(good_maps: Sequence, max_area: float, bins: int = DEFAULT_BINS) -> tuple[float, float]:
    """Lowest bin edge at which at most `max_area` of all good-image pixels are at or above it, and the fraction
    that is (counted exactly). A histogram over the maps keeps memory at O(bins); the exact count guards the
    few pixels that float rounding puts into the bin below an edge."""
    if not 0.0 <= max_area < 1.0:
        raise MetricError(f"false pixel area target: need a fraction in [0, 1), got {max_area}")
    lo, hi = score_range(good_maps)
    h = pixel_hist(good_maps, [None] * len(good_maps), lo, hi, bins)
    total = int(h.normal.sum())
    allowed = _allowed(total, max_area)
    at_or_above = np.cumsum(h.normal[::-1])[::-1]  # pixels in bin >= k
    fits = at_or_above <= allowed
    k = int(np.argmax(fits)) if hi > lo and fits.any() else bins
    while k < bins:
        t = h.edge(k)
        n = sum(int((np.asarray(m, dtype=np.float32) >= t).sum()) for m in good_maps)
        if n <= allowed:
            return t, n / total
        k += 1
    return _above(hi), 0.0


# ---------------------------------------------------------------- summary
@dataclass
class EvalRecord:
    """One evaluated image; any object with these attributes (e.g. report.ReportRecord) works too."""
    score: float
    label: int
    defect_type: str = "good"
    anomaly_map: np.ndarray | None = field(default=None, repr=False)
    mask: np.ndarray | None = field(default=None, repr=False)


def _num(x) -> float | None:
    return float(x) if x is not None and np.isfinite(x) else None


def _counts(c: dict) -> dict:
    return {k: c[k] for k in ("tp", "fp", "tn", "fn")}


def _try(fn, *a):
    try:
        return fn(*a)
    except MetricError:
        return None


def summarize(records: Iterable, threshold: float, *, threshold_policy: str | None = None,
              fpr_limit: float = 0.3, bins: int = DEFAULT_BINS, with_pixels: bool = True) -> dict:
    """JSON-ready metrics; confusion/precision/recall are at the given (deployed) threshold.

    Pixel metrics use good images with a map (all normal) and defect images with map AND mask;
    they are None when no defect image has a mask, or when with_pixels is False (saves the pass).
    """
    recs = list(records)
    if not np.isfinite(threshold) or not 0.0 < fpr_limit <= 1.0:
        raise MetricError(f"summarize: threshold must be finite (got {threshold}) and fpr_limit in (0, 1] "
                          f"(got {fpr_limit}); check the bundle's threshold")
    if not recs:
        raise MetricError("summarize: no evaluation records; the test split is empty")
    s, y = _scores_labels([r.score for r in recs], [r.label for r in recs], need_both=False)
    types = np.array([str(r.defect_type) for r in recs])
    good = y == 0
    pix = [i for i, r in enumerate(recs) if r.anomaly_map is not None and (r.label == 0 or r.mask is not None)]
    has_px = with_pixels and any(recs[i].label == 1 for i in pix)
    groups: dict[str, PixelHist] = {}  # "good" + one per defect type, all on shared bins
    if has_px:
        lo, hi = score_range(recs[i].anomaly_map for i in pix)
        keys = {i: "good" if recs[i].label == 0 else types[i] for i in pix}
        for key in sorted(set(keys.values())):
            idx = [i for i in pix if keys[i] == key]
            groups[key] = pixel_hist([recs[i].anomaly_map for i in idx],
                                     [recs[i].mask if recs[i].label else None for i in idx], lo, hi, bins)
    total = None
    for h in groups.values():
        total = h if total is None else total + h
    c = confusion(s, y, threshold)
    th = image_thresholds(s, y)
    pro = hist_pro_curve(total, fpr_limit) if total is not None else None
    per_type = {}
    for t in sorted(set(types[~good])):
        sel = (types == t) & ~good
        h = groups.get(t)
        if h is not None and "good" in groups:
            h = h + groups["good"]
        per_type[t] = {
            "n": int(sel.sum()),
            "image_auroc": _try(auroc, s[sel | good], y[sel | good]),
            "pixel_auroc": _num(hist_auroc(h)) if h is not None else None,
            "aupro": _num(hist_aupro(h, fpr_limit)) if h is not None else None,
            "recall_at_threshold": float((s[sel] >= threshold).mean()),
            "mean_score": float(s[sel].mean()),
        }
    out = {
        "n_images": int(s.size), "n_good": int(good.sum()), "n_defect": int((~good).sum()),
        "image_auroc": _try(auroc, s, y),
        "pixel_auroc": _num(hist_auroc(total)) if total is not None else None,
        "aupro": _num(hist_aupro(total, fpr_limit)) if total is not None else None,
        "aupro_fpr_limit": fpr_limit,
        "pixel_threshold": _num(hist_f1_threshold(total)) if total is not None else None,
        "f1_max": _try(lambda: f1_max(s, y)[0]),
        "thresholds": th,
        "at_thresholds": {k: _counts(confusion(s, y, v)) for k, v in th.items()},
        "chosen_threshold": float(threshold), "threshold_policy": threshold_policy,
        "precision": c["precision"], "recall": c["recall"], "accuracy": c["accuracy"],
        "confusion_matrix": _counts(c),
        "good": {"n": int(good.sum()), "mean_score": float(s[good].mean()) if good.any() else None,
                 "false_reject_rate": float((s[good] >= threshold).mean()) if good.any() else None},
        "per_type": per_type,
        "operating_points": [p.to_dict() for p in operating_points(s, y, threshold)],
        "pro_curve": None if pro is None else {"fpr": [round(float(v), 5) for v in pro[0]],
                                               "pro": [round(float(v), 5) for v in pro[1]]},
    }
    log.info("metrics summarised", extra={"n_images": out["n_images"], "image_auroc": out["image_auroc"],
                                          "pixel_auroc": out["pixel_auroc"], "threshold": threshold})
    return out
