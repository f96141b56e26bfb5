"""Production figures and the curves the report draws, checked against brute force on random scores."""
from __future__ import annotations

import numpy as np
import pytest

from linesight.trainer import metrics as M


@pytest.fixture
def data():
    rng = np.random.default_rng(3)
    s = np.round(np.r_[rng.normal(0, 1, 60), rng.normal(1.5, 1, 40)], 1)  # rounded: ties on purpose
    return s, np.r_[np.zeros(60, int), np.ones(40, int)]


def test_operating_points_count_false_rejects_and_escapes(data):
    s, y = data
    pts = M.operating_points(s, y, 0.7)
    assert [p.name for p in pts] == ["chosen", *M.image_thresholds(s, y)]
    for p in pts:
        assert p.false_rejects == int(((s >= p.threshold) & (y == 0)).sum())
        assert p.escapes == int(((s < p.threshold) & (y == 1)).sum())
        assert (p.n_good, p.n_defect) == (60, 40)
        assert p.false_reject_rate == p.false_rejects / 60 and p.escape_rate == p.escapes / 40
    by = {p.name: p for p in pts}
    assert by["no_false_reject"].false_rejects == 0 and by["no_miss"].escapes == 0
    assert by["chosen"].to_dict()["escape_rate"] == by["chosen"].escapes / 40
    only_good = M.operating_points(s[y == 0], y[y == 0], 0.7)
    assert only_good[0].escape_rate is None and [p.name for p in only_good] == ["chosen", "no_false_reject"]


def test_rate_curves_match_every_threshold(data):
    s, y = data
    t, fr, esc = M.rate_curves(s, y)
    assert np.array_equal(t, np.unique(s))
    for j, v in enumerate(t):
        assert fr[j] == ((s >= v) & (y == 0)).sum() / 60 and esc[j] == ((s < v) & (y == 1)).sum() / 40
    assert np.all(np.diff(fr) <= 0) and np.all(np.diff(esc) >= 0)


def test_pr_curve_and_average_precision(data):
    s, y = data
    recall, precision, thr = M.pr_curve(s, y)
    for r, p, v in zip(recall[1:], precision[1:], thr[1:]):
        ng = s >= v
        assert r == pytest.approx((ng & (y == 1)).sum() / 40) and p == pytest.approx((ng & (y == 1)).sum() / ng.sum())
    ap = sum((recall[i] - recall[i - 1]) * precision[i] for i in range(1, len(recall)))
    assert M.average_precision(s, y) == pytest.approx(ap) and 0.4 < ap < 1.0
    assert M.average_precision(np.r_[0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == pytest.approx(1.0)


def test_pro_curve_integrates_to_aupro():
    rng = np.random.default_rng(0)
    maps, masks = [], []
    for i in range(6):
        k = np.zeros((40, 40), bool)
        k[5 + i:15 + 2 * i, 8:20] = i % 2 == 1
        maps.append((rng.random((40, 40)) + 0.8 * k).astype(np.float32))
        masks.append(k)
    h = M.pixel_hist(maps, masks, *M.score_range(maps), bins=2000)
    x, pro = M.hist_pro_curve(h, 0.3, n=301)
    assert x[0] == 0 and x[-1] == pytest.approx(0.3) and np.all(np.diff(pro) >= -1e-12)
    assert np.trapezoid(pro, x) / 0.3 == pytest.approx(M.hist_aupro(h, 0.3), abs=0.01)
    recs = [M.EvalRecord(score=float(m.max()), label=int(k.any()), defect_type="d" if k.any() else "good",
                         anomaly_map=m, mask=k) for m, k in zip(maps, masks)]
    out = M.summarize(recs, threshold=1.5)
    assert len(out["pro_curve"]["fpr"]) == 61 and out["operating_points"][0]["name"] == "chosen"
    assert M.summarize(recs, threshold=1.5, with_pixels=False)["pro_curve"] is None
