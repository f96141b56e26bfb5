"""Trend charts (daemon.trends): each chart says no on a stable stream and yes, once, on a shift, and re-arms;
the exact ARL the limits come from; the daemon wiring (alarm, metric, knowledge-base condition) with the real
Service threads; and streams sampled from real magnetic_tile images scored by a real bundle (bench/bench_trends.py
is the same code; it posts the figures in docs/trends.md), against the NG-rate alert rule emulated per part.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from linesight.config.daemon import DaemonConfig, TrendsConfig
from linesight.config.inspection import KnowledgeBase, KnowledgeEntry
from linesight.daemon.metrics import ALARM_CODES, Metrics
from linesight.daemon.trends import ALARM_CODE, Observation, TrendMonitor, arl, design_cusum, rate_upper
from linesight.export.analysis.advice import OutOfControl, Trend, advise
from linesight.export.analysis.grading import Decision
from linesight.export.prediction import DefectRegion

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import bench_trends as bt  # noqa: E402  (the benchmark's streams and rule emulation, tested here)

CFG = TrendsConfig(burn_in=1000)


def parts(rng, n: int, *, p_ng: float = 0.03, shift: float = 0.0, types: dict[str, float] | None = None,
          model: str = "m1") -> list[Observation]:
    """Synthetic verdicts: log(score/threshold) ~ N(-0.3 + shift * 0.1, 0.1); NG with p_ng; each type with its
    own probability (on an NG part)."""
    out = []
    for _ in range(n):
        ng = bool(rng.random() < p_ng)
        named = tuple(t for t, p in (types or {}).items() if rng.random() < p)
        out.append(Observation(ng=ng or bool(named), fail_safe=False, score=float(np.exp(rng.normal(
            -0.3 + 0.1 * shift, 0.1))), threshold=1.0, types=named, model=model))
    return out


def feed(monitor: TrendMonitor, stream: list[Observation],
         kind: str | None = None) -> list[tuple[int, str, str | None]]:
    """(part, code, defect type) of the alarms raised, of one chart kind if given."""
    return [(i, a.code, a.defect_type) for i, o in enumerate(stream) for a in monitor.update(o)
            if kind is None or a.kind == kind]


# ------------------------------------------------------------------------------------------------ exact ARL
def dense_arl(p: float, up: int, limit: int) -> float:
    q = 1 - p
    a = np.eye(limit)
    for s in range(limit):
        a[s, max(s - 1, 0)] -= q
        if s + up < limit:
            a[s, s + up] -= p
    return float(np.linalg.solve(a, np.ones(limit))[0])


@pytest.mark.parametrize(("p", "up", "limit"), [(0.05, 13, 60), (0.01, 69, 500), (0.2, 3, 20), (0.05, 100, 60),
                                                (0.002, 347, 1200)])
def test_exact_arl_matches_the_dense_markov_chain(p, up, limit):
    assert arl(p, up, limit) == pytest.approx(dense_arl(p, up, limit), rel=1e-8)


def test_exact_arl_matches_simulation():
    rng = np.random.default_rng(0)
    s, run, alive, t = np.zeros(4000, int), np.zeros(4000, int), np.ones(4000, bool), 0
    while alive.any():  # 4000 charts side by side until each has alarmed
        t += 1
        s = np.where(rng.random(4000) < 0.05, s + 13, np.maximum(s - 1, 0))
        run[alive & (s >= 60)] = t
        alive &= s < 60
    assert run.mean() == pytest.approx(arl(0.05, 13, 60), rel=4 * run.std() / np.sqrt(4000) / run.mean())


def test_cusum_design_takes_the_smallest_limit_that_reaches_the_target():
    for rate in (0.03, 0.004, 0.001):
        d = design_cusum(rate, 2.0, 1e5)
        assert d.arl >= 1e5 > arl(d.rate, d.up, d.limit - 1)
        assert d.up == round(np.log(2) / -np.log((1 - 2 * rate) / (1 - rate)))


def test_rate_estimate_errs_high_and_has_a_floor():
    assert rate_upper(30, 1000) > 0.03 + 0.005
    assert rate_upper(0, 1000) == pytest.approx(4 / 1004, rel=1e-6)
    assert rate_upper(0, 10**7) == 0.001


# ------------------------------------------------------------------------------------------------ each chart
def test_score_chart_says_no_when_stable_and_yes_once_per_shift():
    rng = np.random.default_rng(1)
    m = TrendMonitor(CFG)
    stream = parts(rng, 1000 + 4000, p_ng=0.0)
    assert feed(m, stream) == []
    assert [(c.kind, abs(c.ratio) < 1) for c in m.state.charts] == [("score", True), ("ng_rate", True)]
    up = feed(m, parts(rng, 300, p_ng=0.0, shift=1.5))  # scores up 1.5 sd: one alarm, not one per part
    assert [c for _, c, _ in up] == ["trend_score"] and up[0][0] < 100
    assert m.out_of_control == OutOfControl(score=True)
    assert feed(m, parts(rng, 1000, p_ng=0.0)) == [] and m.out_of_control == OutOfControl()  # back: re-armed
    down = feed(m, parts(rng, 300, p_ng=0.0, shift=-1.5))  # the lower side too (scores fell: the model sees less)
    assert [c for _, c, _ in down] == ["trend_score"] and m.state.charts[0].ratio < -1


def test_score_band_is_the_score_chart_on_the_score_threshold_scale():
    rng = np.random.default_rng(2)
    m = TrendMonitor(CFG)
    feed(m, parts(rng, 999, p_ng=0.0))
    assert m.score_band is None  # not armed yet
    feed(m, parts(rng, 500, p_ng=0.0))
    band = m.score_band
    assert band.lower < band.centre < band.upper and band.lower < band.ewma < band.upper
    assert band.centre == pytest.approx(np.exp(-0.3), rel=0.05)  # the scores' median ratio (log-normal around -0.3)
    feed(m, parts(rng, 300, p_ng=0.0, shift=1.5))
    assert m.state.charts[0].ratio >= 1 and m.score_band.ewma > m.score_band.upper  # out of the band = out of control


def test_ng_rate_chart_says_no_when_stable_and_yes_once_per_shift():
    rng = np.random.default_rng(2)
    m = TrendMonitor(CFG)
    assert feed(m, parts(rng, 1000 + 5000, p_ng=0.03), "ng_rate") == []
    ng = [o for o in m.state.charts if o.kind == "ng_rate"][0]
    assert 0.03 < ng.in_control < 0.06  # estimated high on purpose
    first = feed(m, parts(rng, 400, p_ng=0.15), "ng_rate")
    assert [c for _, c, _ in first] == ["trend_ng_rate"] and m.out_of_control.ng_rate
    assert feed(m, parts(rng, 3000, p_ng=0.03), "ng_rate") == [] and not m.out_of_control.ng_rate
    assert [c for _, c, _ in feed(m, parts(rng, 400, p_ng=0.15), "ng_rate")] == ["trend_ng_rate"]


def test_type_chart_says_no_when_stable_and_yes_once_per_shift_and_types_are_bounded():
    rng = np.random.default_rng(3)
    m = TrendMonitor(TrendsConfig(burn_in=1000, max_types=2))
    base = {"crack": 0.01}
    assert feed(m, parts(rng, 1000 + 5000, p_ng=0.0, types=base), "type") == []
    got = feed(m, parts(rng, 500, p_ng=0.0, types={"crack": 0.08}), "type")  # (the NG rate rises with it)
    assert [(c, t) for _, c, t in got] == [("trend_type", "crack")]
    assert m.out_of_control.types == frozenset({"crack"})
    assert feed(m, parts(rng, 3000, p_ng=0.0, types=base), "type") == []
    # a type the burn-in never saw gets a chart when it appears (max_types 2: the third one does not)
    got = feed(m, parts(rng, 400, p_ng=0.0, types={**base, "fray": 0.05, "spot": 0.05}), "type")
    charted = [c.defect_type for c in m.state.charts if c.kind == "type"]
    assert len(charted) == 2 and charted[0] == "crack" and charted[1] in ("fray", "spot")  # the first to appear
    assert ("trend_type", charted[1]) in {(c, t) for _, c, t in got}


def test_fail_safe_verdicts_are_not_charted_and_a_new_model_restarts_the_burn_in():
    rng = np.random.default_rng(4)
    m = TrendMonitor(CFG)
    feed(m, parts(rng, 1200))
    before = m.state
    wild = [Observation(ng=True, fail_safe=True, score=1e6, threshold=1.0, model="m1")] * 500
    assert feed(m, wild) == [] and m.state.skipped == 500 and m.state.parts == before.parts
    assert m.state.charts == before.charts
    feed(m, parts(rng, 1, model="m2"))
    assert (m.state.parts, m.state.burn_in_left, m.state.charts) == (1, 999, ())


def test_observation_reads_a_verdict_dict():
    v = {"verdict": "NG", "fail_safe": False, "score": 3.5, "threshold": 2.0, "model": {"hash": "abc"},
         "defects": [{"type": "crack"}, {"type": "crack"}, {"type": "fray"}, {"area_px": 3}]}
    assert Observation.from_verdict(v) == Observation(True, False, 3.5, 2.0, ("crack", "fray"), "abc")
    fs = Observation.from_verdict({"verdict": "NG", "fail_safe": True, "reason": "no_model", "model": None})
    assert fs.fail_safe and fs.score is None and fs.model is None


def test_alarm_codes_are_metric_labels_and_the_metric_reads_the_monitor():
    assert set(ALARM_CODE.values()) <= set(ALARM_CODES)
    m = Metrics()

    def ratios() -> dict[tuple[str, str], float]:
        return {(s.labels["chart"], s.labels["type"]): s.value for f in text_string_to_metric_families(
            m.exposition().decode()) for s in f.samples if s.name == "linesight_trend_ratio"}

    assert ratios() == {("score", ""): 0.0, ("ng_rate", ""): 0.0}  # pre-created, 0 without a monitor
    rng = np.random.default_rng(5)
    mon = TrendMonitor(CFG)
    m.watch_trends(mon)
    feed(mon, parts(rng, 1000, types={"crack": 0.01}) + parts(rng, 300, p_ng=0.2, types={"crack": 0.01}))
    got = ratios()
    assert got[("ng_rate", "")] >= 1 and set(got) == {("score", ""), ("ng_rate", ""), ("type", "other")}
    m.add_defect_types(["crack"])
    assert ("type", "crack") in ratios()


# ------------------------------------------------------------------------------------------------ knowledge base
def test_knowledge_base_out_of_control_condition():
    with pytest.raises(ValidationError, match="out_of_control"):
        KnowledgeEntry.model_validate({"id": "x", "out_of_control": ["scores"], "causes": ["c"], "actions": ["a"]})
    with pytest.raises(ValidationError, match="out_of_control"):
        KnowledgeEntry.model_validate({"id": "x", "out_of_control": [], "causes": ["c"], "actions": ["a"]})
    kb = KnowledgeBase.model_validate({"product": "p", "entries": [
        {"id": "drift", "out_of_control": ["score", "ng_rate"], "causes": ["c"], "actions": ["a"]},
        {"id": "crack-rising", "types": ["crack"], "out_of_control": ["type"], "causes": ["c"], "actions": ["a"]},
        {"id": "any", "causes": ["c"], "actions": ["a"]}]})
    region = DefectRegion(index=0, bbox=(0, 0, 4, 4), area_px=16, length_px=4, width_px=4, elongation=1,
                          orientation_deg=0, centroid=(2, 2), peak_xy=(2, 2), max_score=2, mean_score=1.5,
                          type="crack")
    ng = Decision(verdict="NG", grade=None, basis="score_above_threshold")

    def entries(charts):
        return [a.entry for a in advise(ng, [region], kb, Trend(charts=charts))]

    assert entries(None) == ["any"]  # no monitor: the condition cannot be checked
    assert entries(OutOfControl()) == ["any"]
    assert entries(OutOfControl(score=True)) == ["any"]  # every listed chart must be out
    assert entries(OutOfControl(score=True, ng_rate=True)) == ["drift", "any"]
    assert entries(OutOfControl(types=frozenset({"fray"}))) == ["any"]  # another type's chart
    got = advise(ng, [region], kb, Trend(charts=OutOfControl(types=frozenset({"crack"}))))
    assert [a.entry for a in got] == ["crack-rising", "any"]
    assert got[0].conditions == ["trend chart crack out of control"]


# ------------------------------------------------------------------------------------------------ real images
@pytest.fixture(scope="module")
def real(tmp_path_factory) -> tuple[Path, bt.Pools]:
    """A bundle fitted on 300 real good images (ImageNet lite0, fast preset) and pools of real images the fit
    never saw, scored by its engine: good, defective, and good/rejected-defective at brighter gains."""
    from helpers import need_data

    need_data()
    bundle = bt.fit_bundle(tmp_path_factory.mktemp("trends") / "model", 300)
    return bundle, bt.score_pools(bundle, n_good=100, per_type=20, gains=(1.0, 1.1, 1.2, 1.3))


def test_ng_rule_emulation_follows_the_alert_rule():
    rule = bt.NgRule.from_rules()
    assert (rule.share, rule.window_min, rule.for_min, rule.min_verdicts) == (0.2, 10, 10, 20)
    ng = np.zeros(3000, bool)
    ng[1000:][::2] = True  # 50 % NG from part 1000, at 60 parts/min
    # share over 10 min > 0.2 from the evaluation at part 1260 (61 NG in 600 = 0.2033..) on, then 10 min pending
    assert rule.first_alarm(ng, 60) == 1260 + 600 - 1
    assert rule.first_alarm(np.arange(3000) % 5 == 0, 60) is None  # exactly 20 %: not above
    assert rule.first_alarm(np.ones(15, bool), 1) is None  # under the volume guard (20 verdicts in the window)


def seeds_of(pools: bt.Pools, make, n_seeds: int = 3) -> list[bt.Run]:
    return [bt.run(make(np.random.default_rng(s), pools), CFG, bt.NgRule.from_rules(), 60) for s in range(n_seeds)]


BEFORE = CFG.burn_in + 1000


@pytest.mark.parametrize("scenario", ["ramp", "lighting", "step"])
def test_trend_alarm_comes_well_before_the_ng_rate_alarm_on_real_images(real, scenario):
    make = {"ramp": lambda rng, p: bt.defect_ramp(rng, p, BEFORE, 2000, 4000),
            "lighting": lambda rng, p: bt.lighting_drift(rng, p, (1.0, 1.1, 1.2, 1.3), BEFORE, 2000, 4000),
            "step": lambda rng, p: bt.defect_ramp(rng, p, BEFORE, 1, 5999, step=True)}[scenario]
    for r in seeds_of(real[1], make):
        assert r.false_alarms == 0, r
        assert r.trend_alarm is not None and r.trend_alarm >= BEFORE, r
        assert r.ng_alarm is None or r.lead >= 50, r


def test_ng_rate_alarm_fires_on_the_real_ramp_so_the_lead_is_measured(real):
    for r in seeds_of(real[1], lambda rng, p: bt.defect_ramp(rng, p, BEFORE, 2000, 4000)):
        assert r.ng_alarm is not None and r.lead >= 50, r


def test_stable_stream_of_real_good_parts_gives_at_most_one_false_alarm_per_10000(real):
    for r in seeds_of(real[1], lambda rng, p: bt.stable(rng, p, CFG.burn_in + 10_000)):
        assert r.monitored == 10_000 and r.false_alarms <= 1, r
        assert r.us_per_part < 100  # O(1): microseconds per verdict even on a loaded 2-core box


def test_an_alarm_reaches_the_service_alarm_function_the_metric_and_the_advice(real, tmp_path):
    """The real Service (pipeline, publish thread) on a folder of real images: burn-in on good parts, then parts
    the bundle rejects: trend alarms go through Service.alarm into linesight_alarms_total and the gauge, and the
    knowledge base's out_of_control entry appears in the advice of the verdicts after it."""
    from helpers import DATA
    from linesight.daemon.service import Service

    bundle, pools = real
    frames = tmp_path / "frames"
    frames.mkdir()
    good = bt.spread(DATA / "test" / "good", None)
    bad = [p for t in bt.TYPES for p in bt.spread(DATA / "test" / t, 12)]
    for i, p in enumerate(good[:100] + bad):
        (frames / f"{i:04d}{p.suffix}").symlink_to(p)
    kb = tmp_path / "kb.yaml"
    kb.write_text("product: t\nentries:\n  - id: ng-rising\n    out_of_control: [ng_rate]\n"
                  "    causes: [process drift]\n    actions: [check the process]\n")
    cfg = DaemonConfig.model_validate({
        "model": {"bundle": str(bundle), "watch": False},
        "source": {"type": "folder", "name": "f", "path": str(frames)},
        "pipeline": {"deadline_ms": 60000, "queue_size": 1024},
        "analysis": {"knowledge": str(kb)}, "trends": {"burn_in": 100},
        "outputs": {"mqtt": {"enabled": False}, "zmq": {"enabled": False}, "metrics": {"enabled": False}}})
    svc = Service(cfg)
    raised, verdicts = [], []
    real_alarm = svc.alarm

    def alarm(code, message, **ctx):
        raised.append((code, ctx))
        real_alarm(code, message, **ctx)

    svc.alarm = alarm
    svc.pipeline.on_verdict = verdicts.append
    assert svc.run() == 0
    trend = [(c, ctx) for c, ctx in raised if c.startswith("trend_")]
    assert trend and {c for c, _ in trend} <= {"trend_score", "trend_ng_rate", "trend_type"}, raised
    assert all(ctx["seq"] > 100 for _, ctx in trend)  # never during the burn-in
    assert len([c for c, _ in trend if c == "trend_ng_rate"]) == 1  # once, not once per part
    text = svc.metrics.exposition().decode()
    counts = {s.labels["code"]: s.value for f in text_string_to_metric_families(text) for s in f.samples
              if s.name == "linesight_alarms_total"}
    assert counts["trend_ng_rate"] == 1
    ratio = {s.labels["chart"]: s.value for f in text_string_to_metric_families(text) for s in f.samples
             if s.name == "linesight_trend_ratio"}
    assert ratio["ng_rate"] >= 1
    seq_alarm = next(ctx["seq"] for c, ctx in trend if c == "trend_ng_rate")
    advised = [v["seq"] for v in verdicts if "ng-rising" in (v.get("advice") or [])]
    assert advised and min(advised) > seq_alarm
