"""Issue-15 benchmark: the trend charts (daemon.trends) on streams built from real magnetic_tile images.

Usage (about a minute on 2 cores with the defaults; tests/test_trends.py runs the same code on fewer seeds):
    .venv/bin/python bench/bench_trends.py [--bundle model.zip] [--seeds 10] [--stable-seeds 40]
        [--parts-per-minute 60] [--json figures.json]

How the figures are made (docs/trends.md):
1. A bundle is fitted on real good images (fast preset, ImageNet lite0; `--bundle` uses yours instead), then the
   real engine scores pools of real images the fit never saw: test/good, every defective test image, and both
   at several gains (lighting drift). NG parts get the defect analysis the daemon runs (rule types, no spec).
2. Long streams are sampled from the pools with a seeded RNG, part by part, and fed to a `TrendMonitor` with
   the default `TrendsConfig`, exactly as the daemon feeds it verdicts.
3. The NG-rate alarm is what LinesightNgRateHigh encodes (`NgRule`, read from the rule file): at every
   evaluation (one per minute of parts) the NG share of the last `window` minutes of parts must exceed the
   limit with at least `min_verdicts` verdicts in it, at every evaluation for `for` minutes. rate()
   extrapolation cancels in the ratio; scrape lag is ignored (it would make the NG alarm later).
Lead time = parts from the first trend alarm to the NG-rate alarm; alarms before the change are false alarms.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import yaml

from linesight.config.daemon import TrendsConfig
from linesight.daemon.trends import Observation, TrendMonitor

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "datasets" / "magnetic_tile"
RULES = ROOT / "config" / "prometheus" / "linesight.rules.yml"
TYPES = ("blowhole", "break", "crack", "fray", "uneven")
BRIGHTER = (1.0, 1.05, 1.1, 1.15, 1.2, 1.25, 1.3)
DIMMER = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7)


# ------------------------------------------------------------------------------------------------ pools
@dataclass(frozen=True)
class Pools:
    """Real images scored by the real engine, as the monitor sees them (one Observation per image)."""

    good: dict[float, list[Observation]]  # gain -> held-out good images (gain 1.0 = as photographed)
    caught: dict[float, list[Observation]]  # gain -> the defective images the bundle rejects at gain 1.0
    defect: list[Observation]  # every defective image (escapes included), gain 1.0

    def summary(self) -> dict:
        def ng(obs):
            return round(float(np.mean([o.ng for o in obs])), 3)
        return {"good": len(self.good[1.0]), "defect": len(self.defect), "caught": len(self.caught[1.0]),
                "ng_share": {f"good x{g:g}": ng(o) for g, o in sorted(self.good.items())} | {
                    "defect": ng(self.defect)}}


def spread(folder: Path, n: int | None) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.is_file())
    return files if n is None or n >= len(files) else files[:: len(files) // n][:n]


def fit_bundle(out: Path, n_train: int) -> Path:
    """Fast preset on `n_train` real good images (symlinked subset, every k-th file)."""
    from linesight.config.fit import preset
    from linesight.trainer.fit import fit

    sub = out.parent / "trend-train"
    (sub / "train" / "good").mkdir(parents=True)
    for p in spread(DATA / "train" / "good", n_train):
        (sub / "train" / "good" / p.name).symlink_to(p)
    fit(sub, out, preset("fast", model_id="trends"))
    return out


def _observe(engine, images: list[np.ndarray]) -> list[Observation]:
    """Score like the daemon: engine, then for NG frames the defect analysis (its region types)."""
    from linesight.export import analysis as A

    out = []
    for s in range(0, len(images), 16):
        batch = images[s:s + 16]
        for img, pred in zip(batch, engine.predict_batch(batch, regions=False)):
            types: tuple[str, ...] = ()
            if pred.verdict == "NG":
                types = tuple(sorted({r.type for r in A.analyze(pred, engine.pixel_threshold, img).regions}))
            out.append(Observation(ng=pred.verdict == "NG", fail_safe=False, score=pred.score,
                                   threshold=pred.threshold, types=types))
    return out


def score_pools(bundle: Path, n_good: int | None = None, per_type: int | None = None,
                gains: tuple[float, ...] = tuple(sorted(set(BRIGHTER + DIMMER)))) -> Pools:
    from linesight.export.bundle import load_bundle
    from linesight.export.engine import Engine

    engine = Engine(load_bundle(bundle))

    def read(paths):
        return [cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in paths]

    def gain(images, g):
        return images if g == 1.0 else [np.clip(i.astype(np.float32) * g, 0, 255).astype(np.uint8) for i in images]

    goods = read(spread(DATA / "test" / "good", n_good))
    bad = [img for t in TYPES for img in read(spread(DATA / "test" / t, per_type))]
    defect = _observe(engine, bad)
    caught_img = [img for img, o in zip(bad, defect) if o.ng]
    return Pools(good={g: _observe(engine, gain(goods, g)) for g in gains},
                 caught={g: (_observe(engine, gain(caught_img, g)) if g != 1.0 else [o for o in defect if o.ng])
                         for g in gains}, defect=defect)


# ------------------------------------------------------------------------------------------------ NG-rate rule
@dataclass(frozen=True)
class NgRule:
    """LinesightNgRateHigh as the rule file writes it, evaluated per part count (see the module docstring)."""

    share: float
    window_min: int
    for_min: int
    min_verdicts: int

    @classmethod
    def from_rules(cls, path: Path = RULES) -> NgRule:
        rule = next(r for g in yaml.safe_load(path.read_text())["groups"] for r in g["rules"]
                    if r.get("alert") == "LinesightNgRateHigh")
        expr = " ".join(rule["expr"].split())
        window = {int(w) for w in re.findall(r"\[(\d+)m\]", expr)}
        share = re.search(r"\)\s*>\s*([0-9.]+)", expr)
        volume = re.search(r">=\s*(\d+)", expr)
        if len(window) != 1 or not share or not volume or not rule["for"].endswith("m"):
            raise ValueError(f"LinesightNgRateHigh changed shape; update NgRule: {expr}")
        return cls(float(share.group(1)), window.pop(), int(rule["for"][:-1]), int(volume.group(1)))

    def first_alarm(self, ng: np.ndarray, parts_per_min: int) -> int | None:
        """Index of the part at whose evaluation the alert fires, or None."""
        c = np.concatenate([[0], np.cumsum(ng)])
        w = self.window_min * parts_per_min
        pending = None
        for t in range(parts_per_min, len(ng) + 1, parts_per_min):
            n = min(w, t)
            true = n >= self.min_verdicts and (c[t] - c[t - n]) / n > self.share
            if not true:
                pending = None
                continue
            pending = t if pending is None else pending
            if t - pending >= self.for_min * parts_per_min:
                return t - 1
        return None


# ------------------------------------------------------------------------------------------------ streams
@dataclass(frozen=True)
class Stream:
    name: str
    parts: list[Observation]
    change: int  # first part of the change (len(parts) for a stable stream)


def _draw(rng, p_defect: np.ndarray, good: list[list[Observation]], bad: list[list[Observation]]) -> list:
    """Part i: a defective image with probability p_defect[i] from bad[i], else a good one from good[i]."""
    out = []
    for p, g, b in zip(p_defect, good, bad):
        pool = b if rng.random() < p else g
        out.append(pool[rng.integers(len(pool))])
    return out


def defect_ramp(rng, pools: Pools, before: int, ramp: int, hold: int, *, every_defect: bool = False,
                step: bool = False, lo: float = 0.02, hi: float = 0.20) -> Stream:
    """Defect probability lo for `before` parts, then lo -> hi linearly over `ramp` parts (or at once, `step`),
    then hi for `hold` parts. Defects: the rejected defective images, or every one (`every_defect`)."""
    p = np.concatenate([np.full(before, lo), np.full(ramp, hi) if step else np.linspace(lo, hi, ramp),
                        np.full(hold, hi)])
    bad = pools.defect if every_defect else pools.caught[1.0]
    name = ("step" if step else "ramp") + (" (every defect)" if every_defect else "")
    return Stream(name, _draw(rng, p, [pools.good[1.0]] * len(p), [bad] * len(p)), before)


def lighting_drift(rng, pools: Pools, gains: tuple[float, ...], before: int, ramp: int, hold: int,
                   p_defect: float = 0.02) -> Stream:
    """Gain 1.0 -> gains[-1] over `ramp` parts (each part takes the scored gain level nearest its own), then
    held; good and defective parts alike, defects at p_defect throughout."""
    g = np.concatenate([np.full(before, gains[0]), np.linspace(gains[0], gains[-1], ramp),
                        np.full(hold, gains[-1])])
    levels = np.array(gains)
    near = [gains[int(np.argmin(np.abs(levels - x)))] for x in g]
    return Stream(f"lighting x{gains[-1]:g}", _draw(rng, np.full(len(g), p_defect), [pools.good[x] for x in near],
                                                    [pools.caught[x] for x in near]), before)


def stable(rng, pools: Pools, n: int, p_defect: float = 0.0) -> Stream:
    return Stream(f"stable, {p_defect:.0%} defects", _draw(rng, np.full(n, p_defect), [pools.good[1.0]] * n,
                                                            [pools.caught[1.0]] * n), n)


# ------------------------------------------------------------------------------------------------ runs
@dataclass(frozen=True)
class Run:
    stream: str
    trend_alarm: int | None  # first trend alarm at or after the change (part index)
    first_chart: str | None  # which chart raised it
    ng_alarm: int | None  # LinesightNgRateHigh, emulated
    false_alarms: int  # trend alarms before the change (after the burn-in)
    monitored: int  # parts before the change after the burn-in
    us_per_part: float

    @property
    def lead(self) -> int | None:
        if self.trend_alarm is None or self.ng_alarm is None:
            return None
        return self.ng_alarm - self.trend_alarm


def run(stream: Stream, cfg: TrendsConfig, rule: NgRule, parts_per_min: int) -> Run:
    monitor = TrendMonitor(cfg)
    first, chart, false = None, None, 0
    t0 = time.perf_counter()
    for i, obs in enumerate(stream.parts):
        for alarm in monitor.update(obs):
            if i < stream.change:
                false += 1
            elif first is None:
                first, chart = i, alarm.kind + (f":{alarm.defect_type}" if alarm.defect_type else "")
    us = (time.perf_counter() - t0) / len(stream.parts) * 1e6
    ng = rule.first_alarm(np.array([o.ng for o in stream.parts]), parts_per_min)
    return Run(stream.name, first, chart, ng, false, max(0, stream.change - cfg.burn_in), us)


def scenarios(rng, pools: Pools, before: int, n: int, hold: int) -> list[Stream]:
    return [defect_ramp(rng, pools, before, n, hold), defect_ramp(rng, pools, before, n, hold, every_defect=True),
            lighting_drift(rng, pools, BRIGHTER, before, n, hold), lighting_drift(rng, pools, DIMMER, before, n, hold),
            defect_ramp(rng, pools, before, 1, hold + n - 1, step=True)]


def _fmt(values: list[int | None]) -> str:
    """median (min-max) of the values that exist, and how many do not."""
    got = sorted(v for v in values if v is not None)
    missing = len(values) - len(got)
    if not got:
        return f"never ({missing} of {len(values)})"
    return f"{int(np.median(got))} ({got[0]}–{got[-1]})" + (f", {missing} never" if missing else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", type=Path, help="Bundle to score with (default: fit one, fast preset)")
    ap.add_argument("--train", type=int, default=300, help="Good images to fit on (without --bundle)")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--stable-seeds", type=int, default=40)
    ap.add_argument("--ramp", type=int, default=2000, help="Parts over which the change happens (N)")
    ap.add_argument("--hold", type=int, default=4000, help="Parts after the change")
    ap.add_argument("--parts-per-minute", type=int, default=60)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    import logging

    logging.basicConfig(level=logging.WARNING)
    cfg, rule = TrendsConfig(), NgRule.from_rules()
    with tempfile.TemporaryDirectory() as tmp:
        bundle = args.bundle or fit_bundle(Path(tmp) / "model", args.train)
        t = time.perf_counter()
        pools = score_pools(bundle)
        print(f"pools scored in {time.perf_counter() - t:.1f} s: {json.dumps(pools.summary())}")
    before = cfg.burn_in + 1000
    out: dict[str, dict] = {}
    runs: dict[str, list[Run]] = {}
    for seed in range(args.seeds):
        for s in scenarios(np.random.default_rng(seed), pools, before, args.ramp, args.hold):
            runs.setdefault(s.name, []).append(run(s, cfg, rule, args.parts_per_minute))
    print(f"\n{rule} at {args.parts_per_minute} parts/min; N = {args.ramp}; change at part {before}; "
          f"{args.seeds} seeds: median (min–max)")
    print("| stream | trend alarm, parts after the change | first chart | NG-rate alarm after the change | "
          "lead (parts) | false alarms before |")
    print("|---|---|---|---|---|---|")
    for name, rs in runs.items():
        charts = sorted({r.first_chart for r in rs if r.first_chart})
        print(f"| {name} | {_fmt([None if r.trend_alarm is None else r.trend_alarm - before for r in rs])} | "
              f"{', '.join(charts)} | {_fmt([None if r.ng_alarm is None else r.ng_alarm - before for r in rs])} | "
              f"{_fmt([r.lead for r in rs]) if any(r.ng_alarm for r in rs) else 'no NG-rate alarm'} | "
              f"{sum(r.false_alarms for r in rs)} in {sum(r.monitored for r in rs)} |")
        out[name] = {"runs": [asdict(r) | {"lead": r.lead} for r in rs]}
    print(f"\nstable streams: 10,000 parts after the burn-in, {args.stable_seeds} seeds")
    print("| stream | false alarms per 10,000 parts: median / worst | total | us per part |")
    print("|---|---|---|---|")
    for p in (0.0, 0.02):
        rs = [run(stable(np.random.default_rng(1000 + s), pools, cfg.burn_in + 10_000, p), cfg, rule,
                  args.parts_per_minute) for s in range(args.stable_seeds)]
        fa = sorted(r.false_alarms for r in rs)
        print(f"| {rs[0].stream} | {np.median(fa):g} / {fa[-1]} | {sum(fa)} in {len(rs) * 10_000} | "
              f"{np.median([r.us_per_part for r in rs]):.1f} |")
        out[rs[0].stream] = {"runs": [asdict(r) for r in rs]}
    if args.json:
        args.json.write_text(json.dumps({"pools": pools.summary(), "rule": asdict(rule), "streams": out}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
