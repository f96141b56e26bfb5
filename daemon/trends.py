"""Trend charts on the decided verdicts: statistical process control that warns before the NG-rate alarm.

Why: the NG-rate alert (LinesightNgRateHigh) fires once a fifth of the parts are already scrap; a drifting
process, lamp or model shows in the scores and rates much earlier. Charts (docs/trends.md has the figures):

- `score`: two-sided EWMA of the robust statistic z = clip((log(score/threshold) - median) / (1.4826 MAD), +-3):
  the log puts every model's score ratio on one scale, the clip bounds what one defect (or one glare) moves it.
- `ng_rate`: Bernoulli CUSUM on the NG indicator, tuned to a `rate_shift`-fold rise of the in-control rate.
- `type`: the same CUSUM per defect type named in the verdicts (at most `max_types` charts).

In-control parameters come from a Phase I burn-in: the first `burn_in` decided parts after each start and each
model change (the bundle manifest stores no good-image score distribution, only a few golden scores, and the
in-control NG rate includes the line's normal scrap, which no bundle knows). Rates are estimated on the high side
(upper end of the one-sided 97.7 % Wilson interval, at least MIN_RATE): a low estimate multiplies false
alarms, a high one only delays detection a little (docs/trends.md measures both). Each CUSUM's limit is then
the smallest one whose exact in-control average run length (integer-weight Markov chain, `arl`) reaches
`rate_arl` parts.

Fail-safe verdicts are skipped: they are not part scores and say nothing about the process (the fail-safe
alarms and LinesightFailSafeRateHigh watch them). Each update is O(1) (at most 2 + max_types chart steps); the
end of a burn-in costs one median and a few exact ARL solves (milliseconds), once.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from linesight.config.daemon import TrendsConfig
from linesight.export.analysis.advice import OutOfControl

log = logging.getLogger(__name__)

ChartKind = Literal["score", "ng_rate", "type"]
#: The alarm code of each chart kind (also in daemon.metrics.ALARM_CODES).
ALARM_CODE: dict[str, str] = {"score": "trend_score", "ng_rate": "trend_ng_rate", "type": "trend_type"}
#: A chart that alarmed re-arms once its statistic is back under this fraction of the limit: a statistic
#: hovering at the limit raises one alarm, not a burst.
REARM = 0.5
#: z is clipped here (robust EWMA): one defect moves the EWMA by at most lambda * 3 in-control spreads.
SCORE_CLIP = 3.0
#: Lowest in-control rate a CUSUM is designed for (also bounds its exact ARL solve to ~10^4 states).
MIN_RATE = 0.001
#: Standard errors every in-control estimate is moved to the safe side (rates: the one-sided 97.7 % upper bound;
#: score centre: the limits widened by as much), see the module docstring.
ESTIMATE_Z = 2.0
#: A CUSUM is held at most this many limits high, so it comes back inside soon after the process recovers.
CUSUM_CAP = 2.0


@dataclass(frozen=True)
class Observation:
    """What the charts read of one verdict."""

    ng: bool
    fail_safe: bool
    score: float | None = None
    threshold: float | None = None
    types: tuple[str, ...] = ()  # defect types of an NG part (as linesight_ng_parts_total counts them)
    model: str | None = None  # the deciding bundle's hash: a new one restarts the burn-in

    @classmethod
    def from_verdict(cls, v: Mapping[str, Any]) -> Observation:
        """From a verdict dict (schema linesight.verdict/1)."""
        score, thr, ng = v.get("score"), v.get("threshold"), v.get("verdict") == "NG"
        types = {d.get("type") for d in v.get("defects") or () if ng and isinstance(d, Mapping)} - {None}
        return cls(ng=ng, fail_safe=bool(v.get("fail_safe")),
                   score=float(score) if isinstance(score, (int, float)) else None,
                   threshold=float(thr) if isinstance(thr, (int, float)) else None,
                   types=tuple(sorted(map(str, types))), model=(v.get("model") or {}).get("hash"))


@dataclass(frozen=True)
class ChartState:
    """One chart now. `ratio` is statistic / control limit: |ratio| >= 1 is out of control (the score chart is
    signed: negative = scores fell); 0 during the burn-in."""

    kind: ChartKind
    defect_type: str | None  # type charts only
    ratio: float
    alarmed: bool  # crossed its limit and not yet back under REARM
    in_control: float  # score: median log(score/threshold); rates: the in-control rate designed for


@dataclass(frozen=True)
class TrendState:
    """The monitor now: burn-in progress (parts since the start or the last model change) and every chart."""

    parts: int
    burn_in_left: int
    skipped: int  # fail-safe verdicts not charted
    charts: tuple[ChartState, ...]


@dataclass(frozen=True)
class ScoreBand:
    """The score chart on the score/threshold scale, for plotting (the UI's Trends page): its statistics mapped
    back through exp(median + scale * z). Monotone, so a point outside the band is out of control there too."""

    ewma: float  # the EWMA now
    centre: float  # the burn-in mean of the clipped z
    lower: float  # control limits
    upper: float


@dataclass(frozen=True)
class TrendAlarm:
    """A chart crossed its control limit (raised once; see REARM)."""

    code: str
    kind: ChartKind
    defect_type: str | None
    ratio: float
    message: str


@dataclass(frozen=True)
class CusumDesign:
    """Integer-weight Bernoulli CUSUM: +up on an event, -1 otherwise, floored at 0, alarm at >= limit."""

    rate: float  # in-control event rate
    up: int
    limit: int
    arl: float  # exact in-control average run length at `limit`


def arl(p: float, up: int, limit: int) -> float:
    """Exact in-control ARL of the integer CUSUM from 0: L(s) = 1 + q L(max(s-1, 0)) + p L(s+up), L = 0 at
    >= limit, solved by shooting down from L(limit-1) in blocks of `up` states (each block a closed-form
    first-order recursion, vectorised), then the s = 0 boundary L(0) - L(up) = 1/p fixes the unknown."""
    q = 1.0 - p
    n = limit + up
    a, b = np.zeros(n), np.zeros(n)  # L(s) = a[s] + b[s] * L(limit - 1)
    b[limit - 1] = 1.0
    top = limit - 1
    while top > 0:
        lo = max(0, top - up)
        j = np.arange(1, top - lo + 1)
        src = top - j + 1 + up  # L(s + up) of the step that gives L(top - j)
        grow = q ** -j.astype(float)
        a[top - j] = grow * (a[top] - np.cumsum(q ** (j - 1) * (1.0 + p * a[src])))
        b[top - j] = grow * (b[top] - np.cumsum(q ** (j - 1) * p * b[src]))
        top = lo
    c = (1.0 / p - a[0] + a[up]) / (b[0] - b[up])
    return float(a[0] + b[0] * c)


def design_cusum(rate: float, shift: float, target_arl: float) -> CusumDesign:
    """Weights of the likelihood-ratio CUSUM for `rate` -> `shift` x rate, rounded to integers (Reynolds &
    Stoumbos), and the smallest limit whose exact in-control ARL reaches `target_arl`."""
    p0 = min(max(rate, MIN_RATE), 0.5)
    p1 = min(shift * p0, 0.999)
    up = max(1, round(math.log(p1 / p0) / -math.log((1 - p1) / (1 - p0))))
    lo, hi = 1, up + 1
    while arl(p0, up, hi) < target_arl:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if arl(p0, up, mid) < target_arl else (lo, mid)
    return CusumDesign(p0, up, hi, arl(p0, up, hi))


def rate_upper(count: int, n: int) -> float:
    """Upper end of the one-sided Wilson interval (z = ESTIMATE_Z) of count / n, at least MIN_RATE."""
    z2, p = ESTIMATE_Z**2, count / n
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = ESTIMATE_Z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(MIN_RATE, centre + half)


class _Latch:
    """One alarm per excursion: raised at |ratio| >= 1, re-armed under REARM."""

    alarmed = False

    def latch(self, ratio: float) -> bool:
        """True when this ratio raises the alarm."""
        if not self.alarmed and abs(ratio) >= 1.0:
            self.alarmed = True
            return True
        if self.alarmed and abs(ratio) < REARM:
            self.alarmed = False
        return False


class _Ewma(_Latch):
    """Two-sided EWMA of the clipped z; limits mean +- sd (L sqrt(lambda/(2-lambda)) + ESTIMATE_Z / sqrt(n)): the
    second term is ESTIMATE_Z standard errors of the burn-in mean, so an unlucky burn-in does not eat the
    false-alarm budget."""

    def __init__(self, x: np.ndarray, lam: float, limit: float) -> None:
        self.median = float(np.median(x))
        self.scale = max(1.4826 * float(np.median(np.abs(x - self.median))), 1e-6)
        z = np.clip((x - self.median) / self.scale, -SCORE_CLIP, SCORE_CLIP)
        self.mean, self.lam = float(z.mean()), lam
        sd = max(float(z.std(ddof=1)), 1e-6)
        self.half = sd * (limit * math.sqrt(lam / (2 - lam)) + ESTIMATE_Z / math.sqrt(len(x)))
        self.value = self.mean

    def step(self, x: float) -> float:
        z = min(max((x - self.median) / self.scale, -SCORE_CLIP), SCORE_CLIP)
        self.value += self.lam * (z - self.value)
        return self.ratio

    @property
    def ratio(self) -> float:
        return (self.value - self.mean) / self.half


class _Cusum(_Latch):
    def __init__(self, design: CusumDesign) -> None:
        self.d, self.s = design, 0

    def step(self, event: bool) -> float:
        self.s = min(self.s + self.d.up, int(CUSUM_CAP * self.d.limit)) if event else max(self.s - 1, 0)
        return self.ratio

    @property
    def ratio(self) -> float:
        return self.s / self.d.limit


class TrendMonitor:
    """Feed it every published verdict (`update`, one thread); read `state` and `out_of_control` anywhere."""

    def __init__(self, cfg: TrendsConfig) -> None:
        self.cfg = cfg
        self.skipped = 0
        self._model: str | None = None
        self._restart()

    def _restart(self) -> None:
        """Back to Phase I: a new model scores on its own scale, so nothing of the old one carries over."""
        self.parts = 0
        self._x = np.empty(self.cfg.burn_in)
        self._n_x = 0
        self._ng = 0
        self._type_counts: dict[str, int] = {}
        self._score: _Ewma | None = None
        self._ng_chart: _Cusum | None = None
        self._unseen: CusumDesign | None = None  # design for a type the burn-in never saw
        self._types: dict[str, _Cusum] = {}
        self.out_of_control = OutOfControl()  # replaced, never mutated, when a chart's alarm state changes

    def update(self, obs: Observation) -> list[TrendAlarm]:
        """Chart one verdict; the alarms it raises (usually none)."""
        if obs.fail_safe:
            self.skipped += 1
            return []
        if obs.model != self._model:
            if self._model is not None:
                log.info("trend charts: model changed, burn-in of %d parts starts again", self.cfg.burn_in)
            self._model = obs.model
            self._restart()
        self.parts += 1
        x = math.log(max(obs.score, 1e-12) / obs.threshold) if obs.score is not None and obs.threshold else None
        if self.parts <= self.cfg.burn_in:
            self._collect(obs, x)
            if self.parts == self.cfg.burn_in:
                self._arm()
            return []
        alarms: list[TrendAlarm] = []
        before = self.out_of_control
        if self._score is not None and x is not None and self._score.latch(self._score.step(x)):
            alarms.append(self._trend_alarm("score", None, self._score))
        if self._ng_chart.latch(self._ng_chart.step(obs.ng)):
            alarms.append(self._trend_alarm("ng_rate", None, self._ng_chart))
        for t in obs.types:
            if t not in self._types and len(self._types) < self.cfg.max_types:
                self._types[t] = _Cusum(self._unseen)
        for t, chart in self._types.items():
            if chart.latch(chart.step(t in obs.types)):
                alarms.append(self._trend_alarm("type", t, chart))
        flags = OutOfControl(score=self._score is not None and self._score.alarmed, ng_rate=self._ng_chart.alarmed,
                             types=frozenset(t for t, c in self._types.items() if c.alarmed))
        if flags != before:
            self.out_of_control = flags
        return alarms

    def _collect(self, obs: Observation, x: float | None) -> None:
        if x is not None:
            self._x[self._n_x] = x
            self._n_x += 1
        self._ng += obs.ng
        for t in obs.types:
            self._type_counts[t] = self._type_counts.get(t, 0) + 1

    def _arm(self) -> None:
        """End of Phase I: in-control parameters and limits from the burn-in."""
        n, c = self.cfg.burn_in, self.cfg
        if self._n_x >= n // 2:  # scores on most parts (else no score chart)
            self._score = _Ewma(self._x[: self._n_x], c.score_lambda, c.score_limit)
        self._ng_chart = _Cusum(design_cusum(rate_upper(self._ng, n), c.rate_shift, c.rate_arl))
        self._unseen = design_cusum(rate_upper(0, n), c.rate_shift, c.rate_arl)
        for t in sorted(self._type_counts, key=lambda t: -self._type_counts[t])[: c.max_types]:
            self._types[t] = _Cusum(design_cusum(rate_upper(self._type_counts[t], n), c.rate_shift, c.rate_arl))
        self._x = np.empty(0)
        log.info("trend charts armed after %d parts: NG rate %.4f (designed for %.4f), %d type charts",
                 n, self._ng / n, self._ng_chart.d.rate, len(self._types))

    def _trend_alarm(self, kind: ChartKind, name: str | None, chart: _Ewma | _Cusum) -> TrendAlarm:
        ratio = chart.ratio
        if isinstance(chart, _Ewma):
            text = (f"anomaly scores {'rose' if ratio > 0 else 'fell'} out of their control band (EWMA at "
                    f"{ratio:+.2f} limits; in control: median score/threshold {math.exp(chart.median):.3f}): "
                    "process, lighting or model drift")
        else:
            what = "NG rate" if kind == "ng_rate" else f"rate of defect type '{name}'"
            text = (f"{what} is rising (CUSUM at {ratio:.2f} limits; in control {chart.d.rate:.4f} per part, "
                    f"tuned to detect {self.cfg.rate_shift:g}x): act before the NG-rate limit is reached")
        return TrendAlarm(ALARM_CODE[kind], kind, name, ratio, text)

    @property
    def score_band(self) -> ScoreBand | None:
        """The score EWMA and its limits as score/threshold (None: no score chart armed); read-only, any thread."""
        s = self._score
        if s is None:
            return None
        back = lambda z: math.exp(s.median + s.scale * z)  # noqa: E731 - four uses on one line
        return ScoreBand(back(s.value), back(s.mean), back(s.mean - s.half), back(s.mean + s.half))

    @property
    def state(self) -> TrendState:
        """A snapshot; safe from any thread (references taken once: a restart may swap the charts meanwhile)."""
        score, ng, types, parts = self._score, self._ng_chart, list(self._types.items()), self.parts
        charts: list[ChartState] = []
        if score is not None:
            charts.append(ChartState("score", None, score.ratio, score.alarmed, score.median))
        if ng is not None:
            charts.append(ChartState("ng_rate", None, ng.ratio, ng.alarmed, ng.d.rate))
        charts += [ChartState("type", t, c.ratio, c.alarmed, c.d.rate) for t, c in types]
        return TrendState(parts, max(0, self.cfg.burn_in - parts), self.skipped, tuple(charts))
