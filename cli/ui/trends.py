"""The Trends page's data: the daemon's own trend charts (daemon.trends.TrendMonitor: one home for the maths) run
by the UI on each station's verdict feed, with a bounded history of per-part points for the page to draw.

Why the UI runs them itself: a station publishes its trend alarms (MQTT `alarm`) and the current ratios
(`linesight_trend_ratio`), never a history to plot. So these charts see what this UI received since it started:
their own burn-in after the UI's start and after each model change, and a verdict lost on the feed (the `missed`
counter) is not charted here, while the station's charts count every part. Give `stations[].trends` the station's
own `trends` section so both are designed alike.
"""
from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Mapping
from datetime import UTC, datetime
from itertools import islice
from typing import Any

from fastapi import FastAPI, HTTPException, Query
from pydantic import Field

from linesight.config.base import Strict
from linesight.config.daemon import TrendsConfig
from linesight.daemon.trends import ChartKind, Observation, TrendMonitor

log = logging.getLogger(__name__)

POINTS = 2000  # per-part points kept per station: about two burn-ins of history, ~1 MB as JSON at most
ALARMS = 100  # alarms kept per station


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class TrendPoint(Strict):
    """One decided part as charted: its score and verdict, and every chart right after it."""

    n: int = Field(description="Decided parts this UI charted for the station, this one included (page with after=)")
    seq: int
    run: int
    host_ts: str = Field(description="The verdict's time (the station's clock)")
    score_ratio: float | None = Field(description="The part's score / threshold; null: no score")
    ng: bool
    types: list[str] = Field(description="Defect types of an NG part")
    burn_in: bool = Field(description="Part of the burn-in (Phase I): the charts below are null")
    ewma: float | None = Field(description="Score EWMA as score/threshold")
    centre: float | None = Field(description="In-control centre of the score EWMA as score/threshold")
    lower: float | None = Field(description="Score EWMA control limits as score/threshold")
    upper: float | None
    score_chart: float | None = Field(description="Score EWMA / its limit, signed: |x| >= 1 is out of control")
    ng_chart: float | None = Field(description="NG-rate CUSUM / its limit: >= 1 is out of control")
    type_charts: dict[str, float] = Field(description="Each defect type's rate CUSUM / its limit")


class TrendAlarmRecord(Strict):
    """An alarm of the UI's charts (the station raises its own, on MQTT `alarm`)."""

    n: int = Field(description="The point it was raised at")
    seq: int
    run: int
    host_ts: str = Field(description="The verdict's time (the station's clock)")
    received: str = Field(description="When the UI raised it (UTC)")
    code: str = Field(description="trend_score, trend_ng_rate or trend_type")
    kind: ChartKind
    defect_type: str | None
    ratio: float
    message: str


class ChartNow(Strict):
    """One chart now (daemon.trends.ChartState)."""

    kind: ChartKind
    defect_type: str | None
    ratio: float = Field(description="Statistic / control limit (score: signed); 0 until armed")
    alarmed: bool = Field(description="Crossed its limit and not yet back under half of it")
    in_control: float = Field(description="score: median log(score/threshold) of the burn-in; rates: the in-control "
                                          "rate the chart is designed for")


class TrendStateNow(Strict):
    """The UI's monitor now (daemon.trends.TrendState)."""

    parts: int = Field(description="Decided parts since the UI started or the model last changed")
    burn_in_left: int = Field(description="Parts until the charts are armed (0: armed)")
    skipped: int = Field(description="Fail-safe verdicts, not charted")
    charts: list[ChartNow]


class TrendsAnswer(Strict):
    """GET /api/v1/stations/{name}/trends."""

    station: str
    enabled: bool = Field(description="stations[].trends.enabled in the UI config")
    started: str = Field(description="When the UI's charts started (UTC): they know nothing before")
    burn_in: int
    kept: int = Field(description="Points kept at most; older ones are dropped")
    received: int = Field(description="n of the newest point (0: none yet)")
    state: TrendStateNow | None = Field(description="null when disabled")
    points: list[TrendPoint] = Field(description="Oldest first; only n > after when after is given")
    alarms: list[TrendAlarmRecord] = Field(description=f"The last {ALARMS}, oldest first")


class StationTrends:
    """One station's charts and history: the feed thread writes (`on_verdict`), the routes read (`answer`)."""

    def __init__(self, name: str, cfg: TrendsConfig) -> None:
        self.name, self.cfg = name, cfg
        self.monitor = TrendMonitor(cfg) if cfg.enabled else None
        self.started = _now()
        self._lock = threading.Lock()
        self._points: deque[TrendPoint] = deque(maxlen=POINTS)
        self._alarms: deque[TrendAlarmRecord] = deque(maxlen=ALARMS)
        self._n = 0  # points made since the UI started

    def on_verdict(self, v: dict[str, Any]) -> list[TrendAlarmRecord]:
        """Chart one parsed verdict (O(1): the monitor's update, its state and one point); the alarms it raised."""
        if self.monitor is None:
            return []
        obs = Observation.from_verdict(v)
        raised = self.monitor.update(obs)
        if obs.fail_safe:
            return []
        state = self.monitor.state
        burn_in = state.parts <= self.cfg.burn_in
        charts = {} if burn_in else {(c.kind, c.defect_type): c.ratio for c in state.charts}
        band = None if burn_in else self.monitor.score_band
        ewma, centre, lower, upper = (None,) * 4 if band is None else (band.ewma, band.centre, band.lower, band.upper)
        n = self._n + 1  # the feed thread alone writes _n
        point = TrendPoint(
            n=n, seq=v["seq"], run=v["run"], host_ts=v["host_ts"], ng=obs.ng, types=list(obs.types),
            score_ratio=obs.score / obs.threshold if obs.score is not None and obs.threshold else None,
            burn_in=burn_in, ewma=ewma, centre=centre, lower=lower, upper=upper,
            score_chart=charts.get(("score", None)), ng_chart=charts.get(("ng_rate", None)),
            type_charts={t: r for (k, t), r in charts.items() if k == "type" and t is not None})
        records = [TrendAlarmRecord(n=n, seq=point.seq, run=point.run, host_ts=point.host_ts, received=_now(),
                                    code=a.code, kind=a.kind, defect_type=a.defect_type, ratio=a.ratio,
                                    message=a.message) for a in raised]
        with self._lock:  # n and its point together: a page asking after=received misses nothing
            self._points.append(point)
            self._alarms.extend(records)
            self._n = n
        for r in records:
            log.warning("station %s: UI trend alarm %s at seq %d (run %d): %s", self.name, r.code, r.seq, r.run,
                        r.message)
        return records

    def answer(self, after: int | None) -> TrendsAnswer:
        """Everything the page draws; with `after`, only the points it does not have yet."""
        with self._lock:
            first = self._points[0].n if self._points else 1
            skip = 0 if after is None else min(max(after - first + 1, 0), len(self._points))
            points = list(islice(self._points, skip, None))
            alarms, received = list(self._alarms), self._n
        state = None
        if self.monitor is not None:
            s = self.monitor.state
            state = TrendStateNow(parts=s.parts, burn_in_left=s.burn_in_left, skipped=s.skipped,
                                  charts=[ChartNow(kind=c.kind, defect_type=c.defect_type, ratio=c.ratio,
                                                   alarmed=c.alarmed, in_control=c.in_control) for c in s.charts])
        return TrendsAnswer(station=self.name, enabled=self.monitor is not None, started=self.started,
                            burn_in=self.cfg.burn_in, kept=POINTS, received=received, state=state, points=points,
                            alarms=alarms)


def trend_routes(app: FastAPI, stations: Mapping[str, StationTrends], read: list[Any]) -> None:
    """GET /api/v1/stations/{name}/trends: the UI's trend charts of one station, read-only."""

    @app.get("/api/v1/stations/{name}/trends", dependencies=read,
             summary="The UI's trend charts of a station: state, per-part points and alarms",
             description="Computed by the UI from the verdicts it received since it started (its own burn-in); "
                         "the station's own trend alarms are its MQTT alarm messages (docs/trends.md).")
    def station_trends(name: str, after: int | None = Query(None, ge=0, description="Only points with a larger n "
                                                             "(the newest the page has)")) -> TrendsAnswer:
        trends = stations.get(name)
        if trends is None:
            raise HTTPException(404, f"no station {name!r} (stations: {', '.join(stations) or 'none configured'})")
        return trends.answer(after)
