"""The UI's HTTP API with real parts: POST /api/v1/inspect through a real fitted bundle (the engine's own score, a
verdict the daemon's schema accepts, every 4xx a user can cause), and the station endpoints fed by the daemon's
own ZmqSink over real ZeroMQ (counters, verdict paging, latest frame, the event stream on a real uvicorn)."""
from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from ui_harness import MODEL, TOKEN, Station, serve, ui_config, wait_for, warm_up

from helpers import need_data
from linesight.cli import main
from linesight.config.ui import UiConfig, load_ui_config
from linesight.daemon.verdict import Verdict
from linesight.errors import ConfigError
from linesight.export.engine import Engine
from linesight.export.images import read_image
from linesight.ui.app import create_app

AUTH = {"Authorization": f"Bearer {TOKEN}"}
EXAMPLE = Path(__file__).resolve().parents[1] / "config" / "examples" / "ui.yaml"


@pytest.fixture
def token_env(monkeypatch: pytest.MonkeyPatch) -> dict:
    monkeypatch.setenv("UI_TOKEN", TOKEN)
    return {"tokens_env": "UI_TOKEN"}


@pytest.fixture(scope="module")
def crack() -> Path:
    return sorted((need_data() / "test" / "crack").iterdir())[0]


def client(cfg: UiConfig) -> TestClient:
    return TestClient(create_app(cfg))


# ------------------------------------------------------------------------------------------------- inspect
def test_inspect_answers_the_engines_verdict_in_the_daemons_schema(small_bundle, crack, token_env) -> None:
    cfg = UiConfig.model_validate({"inspect": {"bundle": str(small_bundle)}, "auth": token_env})
    engine = Engine(small_bundle)
    expected = engine.predict(read_image(crack))
    with client(cfg) as c:
        r = c.post("/api/v1/inspect?part_id=lot7-17", content=crack.read_bytes(),
                   headers={**AUTH, "Content-Type": "image/jpeg"})
        assert r.status_code == 200, r.text
        v = Verdict.parse(json.dumps(r.json()["verdict"]))  # strict: exactly the daemon's message
        assert v.station == "inspect-api" and v.part_id == "lot7-17" and v.seq == 1 and v.camera.name == "upload"
        assert v.score == pytest.approx(round(expected.score, 5), abs=1e-5)
        assert v.threshold == pytest.approx(round(engine.threshold, 5))
        assert v.verdict == expected.verdict and v.model.model_dump() == engine.identity
        assert r.json()["overlay_png"] is None
        assert (r.json()["analysis"] is not None) == (v.verdict == "NG") and "basis" in (r.json()["analysis"] or {
            "basis": 1})
        # multipart, with the overlay: the file name travels as camera.file, the seq counts on, same run
        r2 = c.post("/api/v1/inspect?overlay=true", files={"file": (crack.name, crack.read_bytes(), "image/jpeg")},
                    headers=AUTH)
        assert r2.status_code == 200, r2.text
        v2 = Verdict.parse(json.dumps(r2.json()["verdict"]))
        assert (v2.seq, v2.run, v2.camera.file, v2.part_id) == (2, v.run, crack.name, "00000002")
        assert v2.score == v.score
        png = base64.b64decode(r2.json()["overlay_png"])
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        view = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
        assert view.shape[1] > 2 * read_image(crack).shape[1]  # original | overlay | colour bar
        state = c.get("/api/v1/inspect").json()
        assert state == {"configured": True, "model": engine.identity, "problem": None}


def test_inspect_refuses_what_it_cannot_use_with_a_4xx(small_bundle, crack, token_env) -> None:
    cfg = UiConfig.model_validate({"inspect": {"bundle": str(small_bundle), "max_frame_pixels": 10_000},
                                   "auth": token_env, "max_upload_mb": 0.05})
    png = cv2.imencode(".png", np.zeros((50, 60), np.uint8))[1].tobytes()
    with client(cfg) as c:
        def post(body: bytes, kind: str | None = "image/png", headers: dict = AUTH, **kw) -> httpx.Response:
            return c.post("/api/v1/inspect", content=body, headers={**headers, **({"Content-Type": kind} if kind
                                                                                   else {})}, **kw)

        r = post(bytes(60_000), "image/png")  # over 0.05 MB
        assert r.status_code == 413 and "max_upload_mb" in r.json()["detail"]
        r = c.post("/api/v1/inspect", files={"file": ("a.png", bytes(60_000), "image/png")}, headers=AUTH)
        assert r.status_code == 413
        r = post(crack.read_bytes(), "image/jpeg")  # a real image with more pixels than allowed
        assert r.status_code == 400 and "more than inspect.max_frame_pixels (10000)" in r.json()["detail"]
        r = post(png, "text/plain")
        assert r.status_code == 415 and "image/png" in r.json()["detail"]
        assert post(png, None).status_code == 415
        r = post(b"\x89PNG\r\n\x1a\n not really a png", "image/png")
        assert r.status_code == 400 and "cannot decode image upload" in r.json()["detail"]
        r = post(b"\xff\xd8\xff\xe0 truncated jpeg", "image/jpeg")
        assert r.status_code == 400 and "JPEG" in r.json()["detail"]
        big = cv2.imencode(".png", np.zeros((200, 200), np.uint8))[1].tobytes()  # 40000 px > 10000
        r = post(big, "image/png")
        assert r.status_code == 400 and "max_frame_pixels" in r.json()["detail"]
        r = c.post("/api/v1/inspect", files={"image": ("a.png", png, "image/png")}, headers=AUTH)
        assert r.status_code == 400 and "'file'" in r.json()["detail"]
        assert c.post("/api/v1/inspect?part_id=a%0Ab", content=png, headers={**AUTH, "Content-Type": "image/png"}
                      ).status_code == 422
        # a token is needed (header only; the pages' read cookie is no write permission)
        r = post(png, "image/png", headers={})
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert post(png, "image/png", headers={"Authorization": "Bearer wrong-token-0123456789"}).status_code == 401
        c.cookies.set("linesight_token", TOKEN)
        assert post(png, "image/png", headers={}).status_code == 401
        assert post(png, "image/png").status_code == 200


def test_inspect_without_a_model_is_503_and_open_inspect_needs_no_token(small_bundle, tmp_path) -> None:
    with client(UiConfig()) as c:
        r = c.post("/api/v1/inspect", content=b"x", headers={"Content-Type": "image/png"})
        assert r.status_code == 503 and "not configured" in r.json()["detail"]
        assert c.get("/api/v1/inspect").json()["configured"] is False
    png = cv2.imencode(".png", np.full((64, 64), 128, np.uint8))[1].tobytes()
    cfg = UiConfig.model_validate({"inspect": {"bundle": str(small_bundle)}, "auth": {"open_inspect": True}})
    with client(cfg) as c:
        r = c.post("/api/v1/inspect", content=png, headers={"Content-Type": "application/octet-stream"})
        assert r.status_code == 200 and Verdict.parse(json.dumps(r.json()["verdict"]))
    project = tmp_path / "proj"  # a project without an active version: the UI runs, inspect says why not
    assert main(["project", "init", str(project)]) == 0
    cfg = UiConfig.model_validate({"inspect": {"project": str(project)}, "auth": {"open_inspect": True}})
    with client(cfg) as c:
        r = c.post("/api/v1/inspect", content=png, headers={"Content-Type": "image/png"})
        assert r.status_code == 503 and "no active version" in r.json()["detail"]


# ------------------------------------------------------------------------------------------------- stations
@pytest.fixture
def station(free_tcp_port) -> Iterator[Station]:
    s = Station("line3", f"tcp://127.0.0.1:{free_tcp_port()}", f"tcp://127.0.0.1:{free_tcp_port()}")
    yield s
    s.close()


def test_stations_show_what_a_real_zmq_sink_publishes(station) -> None:
    with client(ui_config([station])) as c:
        base = warm_up(station, lambda: c.get("/api/v1/stations").json()[0])["counters"]
        sent = [station.publish(1000), station.publish(1001, ng=True), station.publish(1002, fail_safe="bad_frame")]
        # images are latest-wins: 1002's is always sent (1000's, 1001's may be superseded), so wait for it before
        # 1004, which comes without pictures (the daemon dropped them) and would supersede it in turn
        wait_for(lambda: c.get("/api/v1/stations/line3").json()["frame_seq"] == 1002, what="frame of seq 1002")
        sent.append(station.publish(1004, with_picture=False))
        s = wait_for(lambda: (got := c.get("/api/v1/stations/line3").json())["last"]["seq"] == 1004 and got,
                     what="seq 1004")
        counters = s["counters"]
        assert counters["verdicts"] - base["verdicts"] == 4
        assert (counters["ok"] - base["ok"], counters["ng"] - base["ng"]) == (2, 1)
        assert counters["fail_safe"] == {"bad_frame": 1}
        assert counters["missed"] == 1 and counters["bad_messages"] == 0  # seq 1003 never came
        assert s["connected"] and s["error"] is None and s["model"] == MODEL
        assert s["last"]["part_id"] == "P-01004" and s["last"]["verdict"] == "OK"
        assert [s2["name"] for s2 in c.get("/api/v1/stations").json()] == ["line3"]
        newest = c.get("/api/v1/stations/line3/verdicts?limit=4").json()
        assert newest == sent[::-1]  # exactly the published messages, newest first
        ng = newest[2]
        assert ng["defects"][0]["type"] and "grade" in ng["defects"][0]
        frame = c.get("/api/v1/stations/line3/frame")  # still 1002's: 1004's pictures were dropped
        assert frame.status_code == 200 and frame.headers["content-type"] == "image/jpeg"
        assert frame.headers["x-linesight-seq"] == "1002"
        assert cv2.imdecode(np.frombuffer(frame.content, np.uint8), cv2.IMREAD_UNCHANGED).shape[:2] == (96, 128)
        heat = c.get("/api/v1/stations/line3/heatmap")
        assert heat.status_code == 200 and cv2.imdecode(np.frombuffer(heat.content, np.uint8), 1).shape == (96, 128, 3)


def test_verdicts_page_back_by_seq_and_unknown_stations_are_404(station) -> None:
    with client(ui_config([station])) as c:
        warm_up(station, lambda: c.get("/api/v1/stations").json()[0])
        for seq in range(1000, 1060):
            station.publish(seq, with_picture=False)
        wait_for(lambda: c.get("/api/v1/stations/line3").json()["last"]["seq"] == 1059, what="seq 1059")
        page1 = c.get("/api/v1/stations/line3/verdicts?limit=10").json()
        assert [v["seq"] for v in page1] == list(range(1059, 1049, -1))
        page2 = c.get(f"/api/v1/stations/line3/verdicts?limit=10&before_seq={page1[-1]['seq']}").json()
        assert [v["seq"] for v in page2] == list(range(1049, 1039, -1))
        assert len(c.get("/api/v1/stations/line3/verdicts").json()) == 50  # default page
        assert c.get("/api/v1/stations/line3/verdicts?limit=0").status_code == 422
        assert c.get("/api/v1/stations/line3/verdicts?limit=1001").status_code == 422
        for what in ("", "/verdicts", "/frame", "/heatmap", "/events"):
            r = c.get(f"/api/v1/stations/nope{what}")
            assert r.status_code == 404 and "no station 'nope'" in r.json()["detail"], what


def test_a_station_without_pictures_yet_is_404_on_frame_and_not_connected(free_tcp_port) -> None:
    quiet = Station("quiet", f"tcp://127.0.0.1:{free_tcp_port()}", f"tcp://127.0.0.1:{free_tcp_port()}")
    try:
        with client(ui_config([quiet])) as c:
            s = c.get("/api/v1/stations/quiet").json()
            assert not s["connected"] and s["last"] is None and s["last_message_age_s"] is None
            r = c.get("/api/v1/stations/quiet/frame")
            assert r.status_code == 404 and "no frame yet" in r.json()["detail"]
    finally:
        quiet.close()


def test_messages_that_are_not_verdicts_are_counted_not_shown(free_tcp_port) -> None:
    import zmq

    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    endpoint = f"tcp://127.0.0.1:{free_tcp_port()}"
    pub.bind(endpoint)
    try:
        cfg = UiConfig.model_validate({"stations": [{"name": "odd", "verdict_endpoint": endpoint}]})
        with client(cfg) as c:
            def bad() -> int:
                pub.send_multipart([b"verdict", b'{"seq": 1}'])
                return c.get("/api/v1/stations/odd").json()["counters"]["bad_messages"]

            wait_for(bad, what="a bad message counted")
            assert c.get("/api/v1/stations/odd/verdicts").json() == []
    finally:
        pub.close(0)
        ctx.term()


def test_the_event_stream_sends_a_snapshot_then_verdict_and_frame_events(station, free_tcp_port) -> None:
    with serve(create_app(ui_config([station])), free_tcp_port()) as url:
        warm_up(station, lambda: httpx.get(f"{url}/api/v1/stations/line3").json())
        events: list[tuple[str, dict]] = []
        with httpx.stream("GET", f"{url}/api/v1/stations/line3/events", timeout=10) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            kind = None
            for line in r.iter_lines():
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    events.append((kind, json.loads(line[6:])))
                    if kind == "snapshot":
                        assert events[0][1]["verdicts"] and events[0][1]["summary"]["name"] == "line3"
                        sent = station.publish(1000, ng=True)
                    if kind == "frame" and events[-1][1]["seq"] == 1000:
                        break
        kinds = [k for k, _ in events]
        assert kinds[0] == "snapshot"
        got = next(d for k, d in events if k == "verdict" and d["seq"] == 1000)
        assert got == sent
        summary = next(d for k, d in events if k == "summary" and d["last"]["seq"] == 1000)
        assert summary["last"]["verdict"] == "NG"
        assert {"seq": 1000, "heatmap": True} in [d for k, d in events if k == "frame"]


# ------------------------------------------------------------------------------------------------- access
def test_closed_reading_needs_a_token_in_the_header_or_the_pages_cookie(tmp_path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# operators\nsha256:{hashlib.sha256(TOKEN.encode()).hexdigest()}\n")
    cfg = UiConfig.model_validate({"auth": {"tokens_file": str(tokens), "read_open": False}})
    with client(cfg) as c:
        assert c.get("/api/v1/stations").status_code == 401
        assert c.get("/api/v1/stations", headers=AUTH).json() == []
        c.cookies.set("linesight_token", TOKEN)
        assert c.get("/api/v1/stations").status_code == 200
        assert c.get("/stations").status_code == 200  # the pages themselves hold no data


def test_pages_and_openapi(token_env) -> None:
    with client(UiConfig()) as c:
        r = c.get("/", follow_redirects=False)
        assert r.status_code in (302, 307) and r.headers["location"] == "/stations"
        assert "Stations / live" in c.get("/stations").text
        assert "NG rate" in c.get("/trends").text and "False reject (OK)" in c.get("/review").text
        assert "Compare two versions" in c.get("/models").text and "Start fit" in c.get("/training").text
        assert c.get("/models?file=/etc/passwd").text == c.get("/models").text
        assert c.get("/static/stations.js").status_code == 200
        assert c.get("/docs").status_code == 404  # Swagger UI loads from a CDN: not served
        paths = c.get("/api/v1/openapi.json").json()["paths"]
        assert {"/api/v1/inspect", "/api/v1/stations", "/api/v1/stations/{name}/verdicts",
                "/api/v1/stations/{name}/frame", "/api/v1/stations/{name}/events",
                "/api/v1/stations/{name}/commands/{command}", "/api/v1/stations/{name}/archive",
                "/api/v1/stations/{name}/archive/{record}/image", "/api/v1/stations/{name}/trends"} <= set(paths)
        assert "multipart/form-data" in paths["/api/v1/inspect"]["post"]["requestBody"]["content"]


# ------------------------------------------------------------------------------------------------- config
def test_example_config_validates(tmp_path) -> None:
    cfg = load_ui_config(EXAMPLE)
    assert cfg.listen.host == "127.0.0.1" and cfg.stations and cfg.inspect is None


def test_config_mistakes_name_file_and_line(tmp_path, small_bundle, capsys) -> None:
    bad = tmp_path / "ui.yaml"
    bad.write_text("stations:\n  - name: a\n    verdict_endpoint: localhost:5556\n")
    with pytest.raises(ConfigError, match=r"ui.yaml:3: stations\[0\].verdict_endpoint: .*not a ZeroMQ endpoint"):
        load_ui_config(bad)
    bad.write_text(f"inspect:\n  bundle: {small_bundle}\n")
    with pytest.raises(ConfigError, match="inspect needs a token"):
        load_ui_config(bad)
    bad.write_text("inspect:\n  bundle: missing.zip\nauth:\n  open_inspect: true\n")
    with pytest.raises(ConfigError, match=r"ui.yaml:2: inspect.bundle: .*missing.zip does not exist"):
        load_ui_config(bad)
    short = tmp_path / "tokens"
    short.write_text("short\n")
    bad.write_text(f"auth:\n  tokens_file: {short}\n")
    assert main(["ui", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "tokens:1: a token needs at least 16 characters" in err
    assert "short" not in err.replace("tokens_file", "")


def test_token_hashes_only(monkeypatch) -> None:
    from linesight.ui.auth import Known, load_tokens

    monkeypatch.setenv("UI_TOKEN", TOKEN)
    cfg = UiConfig.model_validate({"auth": {"tokens_env": "UI_TOKEN"}}).auth
    assert load_tokens(cfg) == [Known(hashlib.sha256(TOKEN.encode()).digest(), None)]
    monkeypatch.delenv("UI_TOKEN")
    with pytest.raises(ConfigError, match="UI_TOKEN is not set"):
        load_tokens(cfg)


def test_feed_threads_stop_with_the_app(station) -> None:
    import threading

    with client(ui_config([station])):
        assert any(t.name == "ui-feed-line3" for t in threading.enumerate())
    time.sleep(0.1)
    assert not any(t.name == "ui-feed-line3" for t in threading.enumerate())

