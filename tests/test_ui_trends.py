"""The Trends API with real parts: a station publishing real verdicts through the daemon's ZmqSink over real
ZeroMQ, the UI running the daemon's TrendMonitor on its feed. After a stable burn-in a step in the scores or in
the NG rate raises the UI's trend alarm (API and event stream); a stable line raises none; the history is bounded.
"""
from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from ui_harness import Station, publish_parts, serve, ui_config, warm_up

from linesight.ui.app import create_app
from linesight.ui.trends import POINTS

BURN_IN = 100
URL = "/api/v1/stations/line3/trends"


@pytest.fixture
def station(free_tcp_port) -> Iterator[Station]:
    s = Station("line3", f"tcp://127.0.0.1:{free_tcp_port()}", f"tcp://127.0.0.1:{free_tcp_port()}")
    yield s
    s.close()


@pytest.fixture
def ui(station) -> Iterator[TestClient]:
    """The UI (burn-in of 100 parts) with the station's first verdicts arrived (under the harness's MODEL)."""
    with TestClient(create_app(ui_config([station], trends={"burn_in": BURN_IN}))) as c:
        warm_up(station, lambda: c.get("/api/v1/stations/line3").json())
        yield c


def charted(get) -> int:  # noqa: ANN001 - the client's get
    return get(URL, params={"after": 10**9}).json()["received"]


def test_a_stable_line_raises_no_alarm_and_the_burn_in_restarts_with_the_model(station, ui) -> None:
    warm = ui.get(URL).json()
    assert warm["enabled"] and warm["burn_in"] == BURN_IN and warm["kept"] == POINTS
    assert warm["state"]["charts"] == [] and warm["state"]["burn_in_left"] == BURN_IN - warm["state"]["parts"]
    rng = np.random.default_rng(3)
    seq = publish_parts(station, 1000, 60, rng, lambda: charted(ui.get))
    d = ui.get(URL).json()
    # TREND_MODEL's first verdict started a new burn-in: 60 of 100 parts, no chart armed yet
    assert d["state"]["parts"] == 60 and d["state"]["burn_in_left"] == 40 and d["state"]["charts"] == []
    new = d["points"][-60:]
    assert [p["seq"] for p in new] == list(range(1000, 1060)) and all(p["burn_in"] for p in new)
    assert all(p["ewma"] is None and p["ng_chart"] is None for p in new)
    publish_parts(station, seq, 540, rng, lambda: charted(ui.get))
    d = ui.get(URL).json()
    assert d["alarms"] == [] and d["state"]["parts"] == 600 and d["state"]["burn_in_left"] == 0
    kinds = {c["kind"] for c in d["state"]["charts"]}
    assert {"score", "ng_rate"} <= kinds and not any(c["alarmed"] for c in d["state"]["charts"])
    last = d["points"][-1]
    assert last["seq"] == 1599 and not last["burn_in"] and last["n"] == d["received"]
    assert last["lower"] < last["centre"] < last["upper"] and last["lower"] < last["ewma"] < last["upper"]
    assert last["centre"] == pytest.approx(0.4, rel=0.1)  # the scores' median ratio, mapped back from z
    assert abs(last["score_chart"]) < 1 and last["ng_chart"] < 1
    # paging: only the points after the page's newest
    tail = ui.get(URL, params={"after": d["received"] - 5}).json()["points"]
    assert [p["n"] for p in tail] == list(range(d["received"] - 4, d["received"] + 1))


def test_a_score_step_raises_the_alarm_on_the_api_and_the_event_stream(station, free_tcp_port) -> None:
    with serve(create_app(ui_config([station], trends={"burn_in": BURN_IN})), free_tcp_port()) as url, \
            httpx.Client(base_url=url) as http:
        warm_up(station, lambda: http.get("/api/v1/stations/line3").json())
        events: list[dict] = []
        listening = threading.Event()

        def listen() -> None:
            with httpx.stream("GET", f"{url}/api/v1/stations/line3/events", timeout=30) as r:
                kind = None
                for line in r.iter_lines():
                    listening.set()
                    if line.startswith("event: "):
                        kind = line[7:]
                    elif line.startswith("data: ") and kind == "trend":
                        events.append(json.loads(line[6:]))
                        return

        thread = threading.Thread(target=listen, daemon=True)
        thread.start()
        assert listening.wait(10)
        rng = np.random.default_rng(5)
        seq = publish_parts(station, 1000, 300, rng, lambda: charted(http.get))
        assert http.get(URL).json()["alarms"] == []
        publish_parts(station, seq, 200, rng, lambda: charted(http.get), score_factor=1.6)  # scores x1.6
        d = http.get(URL).json()
        first = d["alarms"][0]
        assert (first["code"], first["kind"], first["defect_type"]) == ("trend_score", "score", None)
        assert 1300 <= first["seq"] < 1340 and first["ratio"] >= 1 and "rose" in first["message"]
        at = next(p for p in d["points"] if p["n"] == first["n"])
        assert at["seq"] == first["seq"] and at["score_chart"] >= 1 and at["ewma"] > at["upper"]
        assert next(c for c in d["state"]["charts"] if c["kind"] == "score")["alarmed"]
        thread.join(10)
        assert events and events[0] == first  # the same record on the station's event stream


def test_an_ng_rate_step_raises_the_ng_rate_alarm(station, ui) -> None:
    rng = np.random.default_rng(11)
    seq = publish_parts(station, 1000, 300, rng, lambda: charted(ui.get))
    assert ui.get(URL).json()["alarms"] == []
    publish_parts(station, seq, 200, rng, lambda: charted(ui.get), p_ng=0.3)
    d = ui.get(URL).json()
    ng = [a for a in d["alarms"] if a["code"] == "trend_ng_rate"]
    assert len(ng) == 1 and ng[0]["seq"] >= 1300 and "NG rate is rising" in ng[0]["message"]
    assert next(p for p in d["points"] if p["n"] == ng[0]["n"])["ng_chart"] >= 1
    assert all(a["seq"] >= 1300 for a in d["alarms"])  # nothing before the step


def test_the_history_is_bounded_and_unknown_stations_are_404(station, ui) -> None:
    rng = np.random.default_rng(1)
    publish_parts(station, 1000, POINTS + 150, rng, lambda: charted(ui.get), p_ng=0.0, chunk=250)
    d = ui.get(URL).json()
    assert len(d["points"]) == POINTS and d["points"][-1]["seq"] == 1000 + POINTS + 149
    assert [p["n"] for p in d["points"]] == list(range(d["received"] - POINTS + 1, d["received"] + 1))
    assert ui.get(URL, params={"after": 0}).json()["points"] == d["points"]
    assert ui.get(URL, params={"after": -1}).status_code == 422
    r = ui.get("/api/v1/stations/nope/trends")
    assert r.status_code == 404 and "line3" in r.json()["detail"]


def test_trends_off_for_a_station(station) -> None:
    with TestClient(create_app(ui_config([station], trends={"enabled": False}))) as c:
        warm_up(station, lambda: c.get("/api/v1/stations/line3").json())
        d = c.get(URL).json()
        assert d["enabled"] is False and d["state"] is None and d["points"] == [] and d["received"] == 0
