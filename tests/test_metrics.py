"""Metrics are checked against brute-force definitions (pairwise counts, per-threshold loops)."""
import json
import tracemalloc

import numpy as np
import pytest

from linesight.errors import LinesightError
from linesight.trainer import metrics as M


def brute_auroc(s, y):
    pos, neg = s[y == 1], s[y == 0]
    diff = pos[:, None] - neg[None, :]
    return ((diff > 0).sum() + 0.5 * (diff == 0).sum()) / (pos.size * neg.size)


def brute_aupro(maps, masks, limit):
    """Exact MVTec AUPRO: loop over every distinct pixel score as threshold."""
    import cv2
    normal = np.concatenate([m[~k] for m, k in zip(maps, masks)])
    regs = []
    for m, k in zip(maps, masks):
        n, lab = cv2.connectedComponents(k.astype(np.uint8), connectivity=8)
        regs += [m[lab == r] for r in range(1, n)]
    ts = np.unique(np.concatenate([m.ravel() for m in maps]))[::-1]
    fpr = np.r_[0.0, [(normal >= t).mean() for t in ts]]
    pro = np.r_[0.0, [np.mean([(r >= t).mean() for r in regs]) for t in ts]]
    keep = fpr <= limit
    x, yv = fpr[keep], pro[keep]
    i = keep.sum()
    if i < fpr.size:
        x = np.r_[x, limit]
        yv = np.r_[yv, pro[i - 1] + (limit - fpr[i - 1]) / (fpr[i] - fpr[i - 1]) * (pro[i] - pro[i - 1])]
    return np.sum(np.diff(x) * (yv[1:] + yv[:-1]) / 2) / limit


@pytest.mark.parametrize("seed", range(5))
def test_auroc_equals_mann_whitney_with_ties(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 200)
    y[:2] = [0, 1]
    s = rng.integers(0, 12, 200) + y * rng.integers(0, 4, 200)  # many ties
    assert M.auroc(s, y) == pytest.approx(brute_auroc(s.astype(float), y), abs=1e-12)


def test_roc_curve_groups_ties():
    fpr, tpr, thr = M.roc_curve([1, 1, 0, 0], [1, 0, 1, 0])
    assert fpr.tolist() == [0, 0.5, 1] and tpr.tolist() == [0, 0.5, 1]
    assert thr[0] == np.inf and thr[1:].tolist() == [1, 0]
    assert M.auroc([1, 1, 0, 0], [1, 0, 1, 0]) == 0.5
    assert M.auroc([0.9, 0.1], [1, 0]) == 1.0 and M.auroc([0.1, 0.9], [1, 0]) == 0.0


def test_bad_inputs_raise_linesight_errors():
    with pytest.raises(LinesightError, match="both good"):
        M.auroc([0.1, 0.2], [0, 0])
    with pytest.raises(LinesightError, match="NaN"):
        M.auroc([0.1, np.nan], [0, 1])
    with pytest.raises(LinesightError, match="labels"):
        M.auroc([0.1, 0.2], [0, 2])
    with pytest.raises(LinesightError, match="shape"):
        M.pixel_auroc([np.zeros((4, 4))], [np.zeros((4, 5))])


def test_pixel_auroc_matches_exact_on_random_maps():
    rng = np.random.default_rng(1)
    maps, masks = [], []
    for h, w in [(30, 40), (25, 25), (50, 20), (33, 31)]:
        k = np.zeros((h, w), bool)
        k[5:12, 3:15] = True
        maps.append((rng.normal(size=(h, w)) + 1.2 * k).astype(np.float32))
        masks.append(k)
    exact = brute_auroc(np.concatenate([m.ravel() for m in maps]).astype(float),
                        np.concatenate([k.ravel() for k in masks]).astype(int))
    assert 0.7 < exact < 0.95
    assert abs(M.pixel_auroc(maps, masks, bins=20_000) - exact) < 1e-3
    assert M.pixel_auroc(maps, [np.zeros_like(k) for k in masks]) is None  # no defect pixels


def test_aupro_perfect_inverted_and_hand_built():
    k = np.zeros((20, 20), bool)
    k[2:6, 2:6] = True
    k[12:18, 10:13] = True
    good_map = np.random.default_rng(0).random((20, 20)).astype(np.float32) * 0.5
    perfect = np.where(k, 1.0, good_map).astype(np.float32)
    assert M.aupro([perfect], [k]) == pytest.approx(1.0, abs=1e-9)
    inverted = np.where(k, -1.0, good_map).astype(np.float32)
    assert M.aupro([inverted], [k]) < 1e-3
    # 10 normal pixels 0.05..0.95; region A (2 px) at 1.0, region B (2 px, apart) at 0.8.
    # FPR 0..0.2: PRO 0.5 (only A); FPR 0.2..0.3: PRO 1 -> (0.5*0.2 + 1*0.1) / 0.3 = 2/3.
    m = np.array([[1.0, 1.0, 0.05, 0.15, 0.25, 0.35, 0.45, 0.55, 0.65, 0.75, 0.85, 0.95, 0.8, 0.8]], np.float32)
    mk = np.zeros_like(m, bool)
    mk[0, [0, 1, 12, 13]] = True
    assert M.aupro([m], [mk], fpr_limit=0.3) == pytest.approx(2 / 3, abs=1e-3)
    assert M.aupro([m], [mk], fpr_limit=0.3) == pytest.approx(brute_aupro([m], [mk], 0.3), abs=1e-3)


def test_aupro_matches_brute_force_with_several_regions():
    rng = np.random.default_rng(3)
    maps, masks = [], []
    for h, w in [(24, 30), (20, 20), (16, 28)]:
        k = np.zeros((h, w), bool)
        y0, x0 = rng.integers(0, h - 6), rng.integers(0, w - 8)
        k[y0:y0 + 5, x0:x0 + 7] = True
        k[h - 3:, :3] = True  # second, small region in the corner
        maps.append((rng.normal(size=(h, w)) + 1.5 * k * rng.random((h, w))).astype(np.float32))
        masks.append(k)
    for limit in (0.05, 0.3, 1.0):
        assert M.aupro(maps, masks, fpr_limit=limit) == pytest.approx(brute_aupro(maps, masks, limit), abs=2e-3)
    with pytest.raises(LinesightError, match="fpr_limit"):
        M.aupro(maps, masks, fpr_limit=0)


def _errors(s, y, t):
    c = M.confusion(s, y, t)
    return c["fp"] + c["fn"]


@pytest.mark.parametrize("seed", range(4))
def test_image_thresholds_have_their_stated_property(seed):
    rng = np.random.default_rng(seed)
    y = np.r_[np.zeros(40, int), np.ones(25, int)]
    s = np.round(rng.normal(size=65) + 1.3 * y, 2)  # rounding creates ties
    th = M.image_thresholds(s, y)
    assert set(th) == {"no_false_reject", "no_miss", "fewest_errors", "f1_optimal"}
    nfr, nm = th["no_false_reject"], th["no_miss"]
    assert M.confusion(s, y, nfr)["fp"] == 0
    below = float(np.nextafter(np.float32(nfr), np.float32(-np.inf)))
    assert M.confusion(s, y, below)["fp"] > 0  # lowest float32 with all good passing
    assert M.confusion(s, y, nm)["fn"] == 0 and nm == s[y == 1].min()
    assert M.confusion(s, y, np.nextafter(nm, np.inf))["fn"] > 0  # highest with no miss
    cands = np.r_[np.unique(s), np.inf]
    assert _errors(s, y, th["fewest_errors"]) == min(_errors(s, y, t) for t in cands)
    f1s = [2 * c["tp"] / (2 * c["tp"] + c["fp"] + c["fn"]) for c in (M.confusion(s, y, t) for t in cands)]
    best, t = M.f1_max(s, y)
    assert best == pytest.approx(max(f1s)) and t == th["f1_optimal"]
    c = M.confusion(s, y, t)
    assert 2 * c["tp"] / (2 * c["tp"] + c["fp"] + c["fn"]) == pytest.approx(best)


def test_threshold_ties_break_towards_fewer_misses_and_one_class():
    # threshold 0.5 (1 FP) and 0.75 (1 FN) both give one error -> lowest (no miss) wins
    s, y = [0.1, 0.6, 0.7, 0.9], [0, 0, 1, 1]
    th = M.image_thresholds(s, y)
    assert th["fewest_errors"] == pytest.approx(0.65) and M.confusion(s, y, 0.65)["fn"] == 0
    assert M.image_thresholds([0.1, 0.3], [0, 0]).keys() == {"no_false_reject"}
    assert M.image_thresholds([0.1, 0.3], [1, 1]) == {"no_miss": 0.1}


def test_confusion_counts_and_zero_division():
    c = M.confusion([0.1, 0.5, 0.7, 0.2], [0, 1, 0, 1], 0.5)
    assert (c["tp"], c["fp"], c["tn"], c["fn"]) == (1, 1, 1, 1)
    assert c["precision"] == 0.5 and c["recall"] == 0.5 and c["accuracy"] == 0.5
    c = M.confusion([0.1, 0.2], [0, 0], 0.5)
    assert c["precision"] == 0.0 and c["recall"] == 0.0 and c["accuracy"] == 1.0


def test_pixel_threshold_separates_separable_maps():
    rng = np.random.default_rng(0)
    k = np.zeros((30, 30), bool)
    k[10:20, 10:20] = True
    m = np.where(k, 2 + rng.random((30, 30)), rng.random((30, 30))).astype(np.float32)
    t = M.summarize([M.EvalRecord(score=1.0, label=1, anomaly_map=m, mask=k)], threshold=1.0)["pixel_threshold"]
    assert m[~k].max() < t <= m[k].min()


def test_pixel_metrics_are_memory_bounded():
    rng = np.random.default_rng(0)
    base = [rng.random((600, 600), dtype=np.float32) for _ in range(3)]
    k = np.zeros((600, 600), bool)
    k[100:200, 300:450] = True
    maps = [base[i % 3] for i in range(200)]  # 72 M pixels, shared arrays: only accumulation costs memory
    masks = [k if i % 2 else None for i in range(200)]
    tracemalloc.start()
    M.aupro(maps, masks)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 40e6, f"peak {peak / 1e6:.0f} MB: pixel metrics are not streaming"


def test_summarize_keys_json_and_per_type():
    rng = np.random.default_rng(7)
    recs = []
    for _ in range(12):
        recs.append(M.EvalRecord(float(rng.random()), 0, "good", rng.random((16, 20)).astype(np.float32)))
    for t, shift in [("crack", 0.9), ("fray", 0.1)]:
        for _ in range(6):
            k = np.zeros((16, 20), bool)
            k[4:9, 5:12] = True
            m = (rng.random((16, 20)) + shift * k).astype(np.float32)
            recs.append(M.EvalRecord(float(rng.random() + shift), 1, t, m, k))
    out = M.summarize(recs, 0.8, threshold_policy="f1_optimal")
    json.dumps(out, allow_nan=False)
    assert {"image_auroc", "pixel_auroc", "aupro", "f1_max", "thresholds", "precision", "recall",
            "confusion_matrix", "per_type"} <= out.keys()
    s = np.array([r.score for r in recs])
    y = np.array([r.label for r in recs])
    assert out["image_auroc"] == pytest.approx(brute_auroc(s, y))
    cm = out["confusion_matrix"]
    assert cm == {k: M.confusion(s, y, 0.8)[k] for k in ("tp", "fp", "tn", "fn")}
    assert sum(cm.values()) == 24
    assert set(out["per_type"]) == {"crack", "fray"}
    crack = out["per_type"]["crack"]
    sel = (y == 0) | (np.arange(24) < 18) & (y == 1)
    assert crack["n"] == 6 and crack["image_auroc"] == pytest.approx(brute_auroc(s[sel], y[sel]))
    assert crack["pixel_auroc"] > out["per_type"]["fray"]["pixel_auroc"]
    assert crack["recall_at_threshold"] == pytest.approx((s[12:18] >= 0.8).mean())
    assert 0 < out["aupro"] <= 1 and out["pixel_auroc"] is not None
    # no masks anywhere -> pixel metrics are None, image metrics still there
    bare = [M.EvalRecord(r.score, r.label, r.defect_type, r.anomaly_map) for r in recs]
    for out2 in (M.summarize(bare, 0.8), M.summarize(recs, 0.8, with_pixels=False)):
        assert out2["pixel_auroc"] is None and out2["aupro"] is None and out2["pixel_threshold"] is None
        assert out2["per_type"]["crack"]["pixel_auroc"] is None and out2["image_auroc"] == out["image_auroc"]
    # only good images: no AUROC, only the no_false_reject threshold, still JSON
    out3 = M.summarize(recs[:12], 0.8)
    assert out3["image_auroc"] is None and set(out3["thresholds"]) == {"no_false_reject"}
    json.dumps(out3, allow_nan=False)
    with pytest.raises(LinesightError, match="empty"):
        M.summarize([], 0.5)
