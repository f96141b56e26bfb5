"""Thresholds by what the line can afford: false-reject / escape targets, their refusal, the printed rates with
Wilson intervals, the pixel threshold by false pixel area, and bundles from before targets."""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from linesight.config.manifest import CalibrationTarget
from linesight.export.bundle import load_bundle
from linesight.export.engine import Engine
from linesight.export.images import read_image
from linesight.trainer import metrics as M
from linesight.trainer.calibration import choose_image_threshold

# ---------------------------------------------------------------- pure: interval, threshold rules


def test_wilson_interval_matches_published_values():
    """Newcombe (1998), Stat. Med. 17:857, table I, method 3 (score interval without continuity correction)."""
    for (k, n), (lo, hi) in {(81, 263): (0.2553, 0.3662), (15, 148): (0.0624, 0.1605), (0, 20): (0.0, 0.1611),
                             (1, 29): (0.0061, 0.1718), (29, 29): (0.8830, 1.0)}.items():
        got = M.wilson_interval(k, n)
        assert got == pytest.approx((lo, hi), abs=5e-5), (k, n, got)
    z2 = M.Z95 ** 2
    assert M.wilson_interval(0, 203)[1] == pytest.approx(z2 / (203 + z2), rel=1e-12)  # closed form at 0 of n
    with pytest.raises(M.MetricError):
        M.wilson_interval(3, 0)


def _scored(rng: np.random.Generator, n_good: int, n_bad: int) -> tuple[np.ndarray, np.ndarray]:
    """Overlapping float32-representable scores with ties (rounded), as a weak model gives them."""
    good = np.round(rng.normal(1.0, 0.5, n_good), 1).astype(np.float32).astype(np.float64)
    bad = np.round(rng.normal(1.8, 0.6, n_bad), 1).astype(np.float32).astype(np.float64)
    return good, bad


def _grid(scores: np.ndarray) -> np.ndarray:
    """Every threshold that can split these scores differently: each score and the float32 just above it."""
    f = np.float32(scores)
    return np.unique(np.r_[f, np.nextafter(f, np.float32(np.inf))].astype(np.float64))


@pytest.mark.parametrize("n_good", [100, 203])
def test_false_reject_target_picks_the_lowest_threshold_within_it(n_good):
    good, bad = _scored(np.random.default_rng(n_good), n_good, 90)
    grid = _grid(np.r_[good, bad])
    for r in (0.0, 0.005, 0.01, 0.05, 0.29, 0.5):  # 0.29 * 100 rounds below 29 in floating point
        ok = [t for t in grid if (good >= t).sum() / good.size <= r]
        t = M.threshold_for_false_reject(good, r)
        assert t == min(ok), r


def test_escape_target_picks_the_highest_threshold_within_it():
    good, bad = _scored(np.random.default_rng(1), 80, 150)
    grid = _grid(np.r_[good, bad])
    for e in (0.0, 0.01, 0.1, 0.3):
        ok = [t for t in grid if (bad < t).sum() / bad.size <= e]
        t = M.threshold_for_escape(bad, e)
        assert t == max(ok), e


def test_zero_targets_are_the_legacy_extremes():
    good, bad = _scored(np.random.default_rng(2), 50, 50)
    legacy = M.image_thresholds(np.r_[good, bad], np.r_[np.zeros(50), np.ones(50)])
    assert M.threshold_for_false_reject(good, 0.0) == legacy["no_false_reject"]
    assert M.threshold_for_escape(bad, 0.0) == legacy["no_miss"]


def test_both_targets_are_met_when_possible_and_refused_naming_both_when_not():
    good, bad = _scored(np.random.default_rng(3), 200, 200)
    s, y = np.r_[good, bad], np.r_[np.zeros(200), np.ones(200)]
    ok = choose_image_threshold(s, y, CalibrationTarget(max_false_reject=0.3, max_escape=0.3))
    assert ok.refusal is None and ok.policy == "max_escape" and ok.threshold == M.threshold_for_escape(bad, 0.3)
    assert ok.false_reject.rate <= 0.3 and ok.escape.rate <= 0.3
    no = choose_image_threshold(s, y, CalibrationTarget(max_false_reject=0.01, max_escape=0.01))
    assert no.policy == "max_escape" and no.false_reject.rate > 0.01 and no.escape.rate <= 0.01
    assert "no threshold meets both targets" in no.refusal and "above the 1 % false-reject target" in no.refusal
    t_fr = M.threshold_for_false_reject(good, 0.01)  # what the scrap budget allows, and what it lets through
    assert f"threshold {t_fr:.6g}" in no.refusal and f"{int((bad < t_fr).sum())} of 200 defective" in no.refusal
    default = choose_image_threshold(s, y, CalibrationTarget())
    assert default.policy == "max_false_reject" and default.refusal is None and default.false_reject.count <= 2


def test_a_named_policy_is_checked_against_the_targets():
    good, bad = _scored(np.random.default_rng(4), 100, 100)
    s, y = np.r_[good, bad], np.r_[np.zeros(100), np.ones(100)]
    miss = choose_image_threshold(s, y, CalibrationTarget(), policy="no_miss")
    assert miss.threshold == M.image_thresholds(s, y)["no_miss"] and miss.escape.count == 0
    assert miss.refusal.startswith(f"no_miss threshold {miss.threshold:.6g} rejects {miss.false_reject.count} of 100")
    nfr = choose_image_threshold(s, y, CalibrationTarget(max_escape=0.05), policy="no_false_reject")
    assert nfr.false_reject.count == 0 and "escape, above the 5 % escape target" in nfr.refusal
    assert choose_image_threshold(s, y, CalibrationTarget(), policy="no_false_reject").refusal is None


def test_pixel_threshold_for_area_is_the_lowest_bin_edge_meeting_it():
    rng = np.random.default_rng(5)
    maps = [rng.gamma(2.0, 1.0, (60, 80)).astype(np.float32) for _ in range(5)]
    maps.append(np.zeros((60, 80), np.float32))  # a part outside the domain: all zero
    allp = np.concatenate([m.ravel() for m in maps])
    lo, hi = float(allp.min()), float(allp.max())
    bins = 1000
    for area in (0.0, 0.001, 0.01, 0.2):
        t, got = M.pixel_threshold_for_area(maps, area, bins=bins)
        frac = (allp >= t).mean()
        assert frac <= area and got == pytest.approx(frac)
        if t <= hi:  # the next lower bin edge would light up too much
            assert (allp >= t - (hi - lo) / bins * 1.01).mean() > area
    assert M.pixel_threshold_for_area([np.full((4, 4), 2.0, np.float32)], 0.0)[1] == 0.0  # flat maps


# ---------------------------------------------------------------- the verb on real images (small bundle)
@pytest.fixture(scope="module")
def labeled(tmp_path_factory) -> Path:
    """12 good and 10 defective real images: fine enough rates for a target of 10 %."""
    from helpers import make_subset

    return make_subset(tmp_path_factory.mktemp("cal") / "set", n_train=2, n_good=12,
                       defects={"blowhole": 5, "crack": 5})


@pytest.fixture(scope="module")
def conflicted(tmp_path_factory) -> Path:
    """A defective image filed under test/good too: one good and one defect share a score, so no threshold
    can reject no good part and pass no defect."""
    from helpers import make_subset

    d = make_subset(tmp_path_factory.mktemp("conf") / "set", n_train=2, n_good=3, defects={"crack": 3})
    crack = min((d / "test" / "crack").iterdir())
    os.symlink(os.readlink(crack), d / "test" / "good" / f"dup_{crack.name}")
    return d


def _scores(bundle: Path, dataset: Path) -> tuple[np.ndarray, np.ndarray]:
    engine = Engine(bundle)
    good, bad = [], []
    for folder in sorted((dataset / "test").iterdir()):
        for p in sorted(folder.iterdir()):
            (good if folder.name == "good" else bad).append(engine.predict(read_image(p)).score)
    return np.array(good), np.array(bad)


def _copy(bundle: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "model"
    shutil.copytree(bundle, dst)
    return dst


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    from linesight.cli import main

    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def _printed(out: str, what: str, parts: str) -> tuple[int, int, float, float, float]:
    m = re.search(rf"{what} +(\d+) of (\d+) {parts} \(([\d.]+) %, 95 % CI ([\d.]+)–([\d.]+) %\)", out)
    assert m, out
    return int(m[1]), int(m[2]), float(m[3]), float(m[4]), float(m[5])


def _assert_rate_line(out: str, what: str, parts: str, count: int, n: int):
    k, total, pct, lo, hi = _printed(out, what, parts)
    assert (k, total) == (count, n)
    ci = M.wilson_interval(count, n)
    assert pct == pytest.approx(100 * count / n, rel=5e-3, abs=1e-9)  # printed to 3 significant digits
    assert (lo, hi) == pytest.approx((100 * ci[0], 100 * ci[1]), rel=5e-3, abs=1e-9)


def test_false_reject_target_decides_and_the_table_states_the_rates(small_bundle, labeled, tmp_path, capsys):
    """Threshold derived here from the engine's own scores; counts, rates, intervals and ppm as printed."""
    good, bad = _scores(small_bundle, labeled)
    bundle = _copy(small_bundle, tmp_path)
    rc, out, _ = _run(["calibrate", str(bundle), str(labeled), "--max-false-reject", "0.1"], capsys)
    assert rc == 0
    th = load_bundle(bundle).manifest.thresholds
    grid = _grid(np.r_[good, bad])
    assert th.image == min(t for t in grid if (good >= t).sum() / good.size <= 0.1)  # 1 of 12 may be rejected
    assert th.policy == "max_false_reject" and th.calibrated
    c = th.calibration
    fr, esc = int((good >= th.image).sum()), int((bad < th.image).sum())
    assert (c.false_reject.count, c.false_reject.n, c.escape.count, c.escape.n) == (fr, 12, esc, 10)
    assert c.met and not c.forced and c.target.max_false_reject == 0.1 and c.target.max_escape is None
    _assert_rate_line(out, "false reject", "good parts", fr, 12)
    _assert_rate_line(out, "escape", "defective parts", esc, 10)
    assert f"{esc / 10 * 1e6:.0f} ppm" in out and re.search(r"target met +yes", out)
    assert f"image threshold  {th.image:.6g}" in out


def test_default_is_the_one_percent_false_reject_target(small_bundle, labeled, tmp_path, capsys):
    good, _ = _scores(small_bundle, labeled)
    bundle = _copy(small_bundle, tmp_path)
    rc, out, _ = _run(["calibrate", str(bundle), str(labeled), "--json"], capsys)
    th = load_bundle(bundle).manifest.thresholds
    assert rc == 0 and json.loads(out)["image"] == th.image
    assert th.calibration.target.max_false_reject == 0.01 and th.policy == "max_false_reject"
    assert th.image > good.max() and th.calibration.false_reject.count == 0  # 1 % of 12 allows none


def test_pixel_threshold_meets_the_false_area_on_good_images(small_bundle, labeled, tmp_path, capsys):
    bundle = _copy(small_bundle, tmp_path)
    rc, _, _ = _run(["calibrate", str(bundle), str(labeled), "--max-false-pixel-area", "0.02"], capsys)
    assert rc == 0
    th = load_bundle(bundle).manifest.thresholds
    engine = Engine(bundle)
    maps = [engine.predict(read_image(p)).anomaly_map for p in sorted((labeled / "test" / "good").iterdir())]
    allp = np.concatenate([m.ravel() for m in maps])
    frac = (allp >= th.pixel).mean()
    assert frac <= 0.02 and th.calibration.false_pixel_area == pytest.approx(frac)
    step = (allp.max() - allp.min()) / M.DEFAULT_BINS
    assert (allp >= th.pixel - 1.01 * step).mean() > 0.02  # and the lowest such threshold on the bin grid


def test_impossible_targets_are_refused_and_force_writes_them(small_bundle, conflicted, tmp_path, capsys):
    bundle = _copy(small_bundle, tmp_path)
    before = load_bundle(bundle).manifest
    argv = ["calibrate", str(bundle), str(conflicted), "--max-false-reject", "0", "--max-escape", "0"]
    rc, out, err = _run(argv, capsys)
    assert rc == 2 and out == ""
    assert err.startswith("linesight calibrate: error: no threshold meets both targets") and err.count("\n") == 1
    assert "--force" in err and "above the 0 % false-reject target" in err
    after = load_bundle(bundle).manifest
    assert after.model.version == before.model.version and after.thresholds == before.thresholds  # not written
    rc, out, _ = _run([*argv, "--force"], capsys)
    assert rc == 0
    _, bad = _scores(small_bundle, conflicted)
    th = load_bundle(bundle).manifest.thresholds
    # the escape target's threshold: every defect caught
    assert th.policy == "max_escape" and th.image == pytest.approx(bad.min(), rel=1e-9)
    assert not th.calibration.met and th.calibration.forced and th.calibration.false_reject.count >= 1
    assert re.search(r"target met +NO \(written with --force\)", out)


def test_a_named_policy_breaking_the_target_is_refused_unless_forced(small_bundle, conflicted, tmp_path, capsys):
    bundle = _copy(small_bundle, tmp_path)
    rc, _, err = _run(["calibrate", str(bundle), str(conflicted), "--policy", "no_miss"], capsys)
    assert rc == 2 and re.match(r"linesight calibrate: error: no_miss threshold \S+ rejects \d+ of 4 good parts "
                                r"\([\d.]+ %, 95 % CI [\d.]+–[\d.]+ %\), above the 1 % false-reject target", err)
    rc, _, _ = _run(["calibrate", str(bundle), str(conflicted), "--policy", "no_miss", "--force"], capsys)
    _, bad = _scores(small_bundle, conflicted)
    th = load_bundle(bundle).manifest.thresholds
    assert rc == 0 and th.policy == "no_miss" and th.image == pytest.approx(bad.min(), rel=1e-9)
    assert th.calibration.forced and th.candidates["no_miss"] == th.image


def test_a_set_without_good_images_is_refused(small_bundle, tmp_path, capsys):
    from helpers import make_subset

    only_bad = make_subset(tmp_path / "set", n_train=2, n_good=0, defects={"crack": 2})
    (only_bad / "test" / "good").rmdir()
    rc, _, err = _run(["calibrate", str(_copy(small_bundle, tmp_path)), str(only_bad)], capsys)
    assert rc == 2 and "calibration needs good images in test/good" in err


def test_rate_flags_are_fractions_not_percentages(small_bundle, labeled, capsys):
    with pytest.raises(SystemExit) as exc:
        _run(["calibrate", str(small_bundle), str(labeled), "--max-false-reject", "1"], capsys)
    assert exc.value.code == 2 and "write 0.01 for 1 %" in capsys.readouterr().err


def test_bundles_from_before_targets_still_load_and_recalibrate(small_bundle, labeled, tmp_path, capsys):
    bundle = _copy(small_bundle, tmp_path)
    raw = json.loads((bundle / "manifest.json").read_text())
    raw["thresholds"].pop("calibration")  # a manifest written before the field existed
    (bundle / "manifest.json").write_text(json.dumps(raw))
    old = load_bundle(bundle).manifest.thresholds
    assert old.calibration is None and Engine(bundle).threshold == old.image
    rc, _, _ = _run(["calibrate", str(bundle), str(labeled)], capsys)
    new = load_bundle(bundle).manifest.thresholds
    assert rc == 0 and new.calibration is not None
    assert type(new).model_validate_json(new.model_dump_json()) == new  # the new fields round-trip
