"""Write actions of the UI with real parts: a real mosquitto, a real daemon (Service.run on its thread) running a
fitted project's active version and archiving into its detect_results/, and the UI app in a TestClient. Commands go
over the daemon's MQTT command protocol (checked by the daemon's own models first); feedback from the UI lands in the
project with source "ui", the token's name and the archived image. The archive endpoints are fed by the daemon's own
Archive writer: filters, paging, bounded work, and ids that cannot reach outside the archive."""
from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from conftest import Broker, _base_conf
from fastapi.testclient import TestClient
from ui_harness import (
    BASE,
    TOKEN,
    WHO,
    archived,
    commanded_ui,
    fitted_project,
    picture,
    running,
    station_config,
    wait_for,
)

from linesight.config.ui import UiConfig, load_ui_config
from linesight.errors import ConfigError
from linesight.project.workspace import Project
from linesight.ui import review
from linesight.ui.app import create_app

AUTH = {"Authorization": f"Bearer {TOKEN}"}
FEEDBACK_FILE = "feedback.jsonl"


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    return fitted_project(tmp_path_factory.mktemp("ui-commands") / "tiles")


def cmd(c: TestClient, command: str, body: object = None, headers: dict | None = None,
        station: str = "line3") -> httpx.Response:
    kw = {"content": body} if isinstance(body, bytes | str) else {"json": body} if body is not None else {}
    return c.post(f"/api/v1/stations/{station}/commands/{command}", headers=AUTH if headers is None else headers,
                  **kw)


def feedback_lines(project: Project) -> list[dict]:
    path = project.feedback_dir / FEEDBACK_FILE
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# ------------------------------------------------------------------------------------------- commands
def test_pause_and_resume_from_the_ui_reach_the_station(project, mosquitto, mqtt_probe, tmp_path) -> None:
    probe = mqtt_probe(mosquitto, [f"{BASE}/#"])
    with running(station_config(project, mosquitto.port)) as svc, \
            TestClient(create_app(commanded_ui(tmp_path, mosquitto.port, project.results_dir))) as c:
        assert c.get("/api/v1/stations/line3").json()["commands"] is True

        def says(state: bytes, since: int) -> bool:  # the station's status topic, after the command
            return any(m.topic == f"{BASE}/status" and m.payload == state for m in probe.all[since:])

        mark = len(probe.all)
        r = cmd(c, "pause")
        assert r.status_code == 200, r.text
        assert r.json() == {"id": None, "command": "pause", "ok": True, "result": {"paused": True}}
        assert svc.pipeline.paused.is_set() and svc.health()["paused"] is True
        assert svc.health()["status"] == "degraded"
        wait_for(lambda: says(b"degraded", mark), what="status degraded")
        mark = len(probe.all)
        r = cmd(c, "resume", {"id": "ui-1"})
        assert r.json() == {"id": "ui-1", "command": "resume", "ok": True, "result": {"paused": False}}
        assert not svc.pipeline.paused.is_set()
        wait_for(lambda: says(b"online", mark), what="status online")
        # the card: the station's retained status and its alarms, heard on the same link
        wait_for(lambda: c.get("/api/v1/stations/line3").json()["status"] == "online", what="the UI's status")
        svc.alarm("camera_down", "source synth: no frame for 2.0 s")
        card = wait_for(lambda: (lambda s: s if s["alarms"] else None)(c.get("/api/v1/stations/line3").json()),
                        what="the alarm on the card")
        assert card["camera"] == "down" and card["alarms"][0]["code"] == "camera_down"
        assert card["alarms"][0]["message"] == "source synth: no frame for 2.0 s" and card["alarms"][0]["host_ts"]
    sent = [m for m in probe.all if m.topic.startswith(f"{BASE}/cmd/") and not m.topic.endswith("/reply")]
    assert [(m.topic.rsplit("/", 1)[1], json.loads(m.payload)) for m in sent] == [("pause", {}),
                                                                                 ("resume", {"id": "ui-1"})]
    assert all(len(m.properties.CorrelationData) == 16 for m in sent)  # each its own, matched to its reply


def test_what_the_ui_refuses_is_never_published_and_a_silent_station_is_504(mosquitto, mqtt_probe, tmp_path) -> None:
    """No daemon runs: every refusal comes from the UI itself, and the one valid command waits for no one."""
    probe = mqtt_probe(mosquitto, [f"{BASE}/cmd/#"])
    cfg = commanded_ui(tmp_path, mosquitto.port, None, reply_timeout_s=1)
    with TestClient(create_app(cfg)) as c:
        # who: the header only, never the pages' read cookie (CSRF), never a wrong token
        for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": TOKEN}):
            r = cmd(c, "pause", headers=headers)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", headers
        c.cookies.set("linesight_token", TOKEN)
        assert cmd(c, "pause", headers={}).status_code == 401
        assert cmd(c, "pause", headers={}, station="nope").status_code == 401  # no token: not even which exist
        # what: the daemon's own model says why, in one line
        refusals = [("pause", {"now": True}, "pause: now: Extra inputs are not permitted"),
                    ("feedback", {"seq": "12", "label": "NG"}, "feedback: seq: Input should be a valid integer"),
                    ("feedback", {"seq": 12, "label": "Ok"}, "feedback: label: Value error, label 'Ok': use 'good' "
                     "or a defect type of lowercase letters, digits, '_' or '-' (at most 64, e.g. crack)"),
                    ("feedback", {"seq": 12, "label": "OK", "source": "cli"}, None),  # the UI sets source itself
                    ("reload", {"bundle": "/m/a.zip", "rollback": True}, "reload: reload: Value error, give "
                     "either 'bundle' or 'rollback': true, not both"),  # word for word what the station would say
                    ("part", {"part_id": ""}, "part: part_id: String should have at least 1 character")]
        for name, body, why in refusals:
            r = cmd(c, name, body)
            if why is None:  # accepted by the UI (source overridden), so it goes out: no station answers
                assert r.status_code == 504
                continue
            assert r.status_code == 400 and r.json() == {"detail": why}, (name, body, r.text)
        r = cmd(c, "selfdestruct", {})
        assert r.status_code == 404 and r.json()["detail"] == (
            "unknown command 'selfdestruct'; valid: reload, pause, resume, feedback, part")
        r = cmd(c, "pause", {}, station="nope")
        assert r.status_code == 404 and r.json()["detail"] == "no station 'nope' (stations: line3)"
        assert cmd(c, "pause", b"{not json", headers={**AUTH, "Content-Type": "application/json"}).status_code == 400
        r = cmd(c, "pause", b"[1]", headers={**AUTH, "Content-Type": "application/json"})
        assert r.status_code == 400 and r.json()["detail"] == "the body must be a JSON object, not list"
        assert cmd(c, "pause", b"{}", headers={**AUTH, "Content-Type": "text/plain"}).status_code == 415
        r = cmd(c, "part", {"part_id": "x" * 70_000})
        assert r.status_code == 413 and "64 KiB" in r.json()["detail"]
        # a valid command goes out, and no station answers it
        start = time.monotonic()
        r = cmd(c, "part", {"part_id": "P-1"})
        assert r.status_code == 504 and 1 <= time.monotonic() - start < 5
        assert r.json()["detail"].startswith("station line3 did not answer within 1 s: is its daemon running, "
                                             f"with outputs.mqtt on 127.0.0.1:{mosquitto.port} and topics {BASE}?")
    wait_for(lambda: len(probe.all) >= 2, what="the two commands that went out")
    time.sleep(0.3)
    got = [(m.topic, json.loads(m.payload)) for m in probe.all]
    assert got == [(f"{BASE}/cmd/feedback", {"seq": 12, "label": "OK", "source": "ui", "by": WHO}),
                   (f"{BASE}/cmd/part", {"part_id": "P-1"})]
    assert all(m.properties.MessageExpiryInterval <= 1 for m in probe.all)  # never carried out after the 504


def test_feedback_from_the_review_data_lands_in_the_project(project, mosquitto, tmp_path) -> None:
    """What the Review page does: an archived record from GET .../archive, its seq, part and run sent as feedback;
    the station records it into the project with source ui, the token's name and the archived frame."""
    with running(station_config(project, mosquitto.port)) as svc, \
            TestClient(create_app(commanded_ui(tmp_path, mosquitto.port, project.results_dir))) as c:
        # this run's: the other tests' stations archived into the same project, with seqs from 1 again
        rec = wait_for(lambda: [r for r in c.get("/api/v1/stations/line3/archive?limit=200").json()["records"]
                                if r["run"] == svc.seqs.run], what="an archived record of this run")[0]
        before = len(feedback_lines(project))
        body = {"seq": rec["seq"], "part_id": rec["part_id"], "run": rec["run"], "label": "OK", "by": "mallory",
                "note": "good part, dust"}
        r = cmd(c, "feedback", body)
        assert r.status_code == 200, r.text
        assert r.json()["ok"] is True and r.json()["result"]["recorded"] is True and r.json()["result"]["image"]
        new = feedback_lines(project)[before:]
        assert len(new) == 1 and new[0]["id"] == r.json()["result"]["id"]
        got = new[0]
        assert (got["source"], got["by"], got["label"], got["note"]) == ("ui", WHO, "OK", "good part, dust")
        assert (got["seq"], got["run"], got["part_id"], got["version"]) == (rec["seq"], rec["run"], rec["part_id"], 1)
        day, name = rec["id"].split("_", 1)
        assert got["image"] == str(project.results_dir / day / f"{name}.image.png")
        assert c.get(f"/api/v1/stations/line3/archive/{rec['id']}/image").content == Path(got["image"]).read_bytes()
        # the station refuses what it cannot match: its reply, as 409, and nothing recorded
        r = cmd(c, "feedback", {**body, "run": rec["run"] + 1})
        assert r.status_code == 409 and r.json()["ok"] is False
        assert r.json()["detail"] == (f"station line3 refused feedback: seq {rec['seq']} is of run {rec['run']} here, "
                                      f"not of run {rec['run'] + 1} (the station restarted since): give that feedback "
                                      "with `linesight project feedback` and the image")
        r = cmd(c, "feedback", {"seq": rec["seq"], "part_id": "P-other", "label": "NG"})
        assert r.status_code == 409 and "was part" in r.json()["error"]
        assert len(feedback_lines(project)) == before + 1


def test_a_station_without_mqtt_broker_listener_or_permission_says_so(mosquitto, tmp_path, free_tcp_port) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{TOKEN}\n")
    plain = UiConfig.model_validate({"stations": [{"name": "line3", "verdict_endpoint": "tcp://127.0.0.1:1"}],
                                     "auth": {"tokens_file": str(tokens)}})
    with TestClient(create_app(plain)) as c:
        assert c.get("/api/v1/stations/line3").json()["commands"] is False
        r = cmd(c, "pause")
        assert r.status_code == 409 and r.json()["detail"] == (
            "station 'line3' takes no commands from this UI: give it an mqtt section (its broker and topic levels) "
            "in the UI config (docs/ui.md)")
    with TestClient(create_app(commanded_ui(tmp_path, free_tcp_port(), None, reply_timeout_s=1))) as c:
        r = cmd(c, "pause")
        assert r.status_code == 502 and r.json()["detail"].startswith(
            "station line3: the MQTT broker 127.0.0.1:") and "is not reachable" in r.json()["detail"]
    # no daemon on the broker: its PUBACK says nobody subscribes, so no reply timeout is waited for
    with TestClient(create_app(commanded_ui(tmp_path, mosquitto.port, None, reply_timeout_s=20))) as c:
        start = time.monotonic()
        r = cmd(c, "pause")
        assert r.status_code == 504 and time.monotonic() - start < 5
        assert r.json()["detail"] == (f"station line3 did not answer: nothing on the broker subscribes to {BASE}/cmd/"
                                      f"pause; is its daemon running, with outputs.mqtt on 127.0.0.1:{mosquitto.port} "
                                      f"and topics {BASE}?")
    # a broker whose ACL lets the UI's user read but not write commands: refused at once, saying why
    acl = tmp_path / "read-only.acl"
    acl.write_text("topic read linesight/#\n")  # a rule without `user`: the anonymous one
    port = free_tcp_port()
    (tmp_path / "acl-broker").mkdir()
    broker = Broker(tmp_path / "acl-broker", port, [*_base_conf(port), "allow_anonymous true", f"acl_file {acl}"])
    broker.start()
    try:
        with TestClient(create_app(commanded_ui(tmp_path, port, None, reply_timeout_s=20))) as c:
            start = time.monotonic()
            r = cmd(c, "pause")
            assert r.status_code == 502 and time.monotonic() - start < 5
            assert r.json()["detail"] == (f"station line3: the MQTT broker 127.0.0.1:{port} did not pass pause "
                                          "on (Not authorized): the UI's broker user needs write on "
                                          f"{BASE}/cmd/+ (its ACL)")
    finally:
        broker.stop()


def test_commands_go_through_a_tls_broker_with_the_uis_own_login(mosquitto_tls, mqtt_probe, tmp_path,
                                                                  monkeypatch, caplog) -> None:
    """Credentials and TLS as the daemon reads them (outputs.mqtt's rules); the password never in the log."""
    monkeypatch.setenv("UI_MQTT_PW", mosquitto_tls.password)
    probe = mqtt_probe(mosquitto_tls, [f"{BASE}/cmd/#"], tls=True, username=mosquitto_tls.username,
                       password=mosquitto_tls.password)
    cfg = commanded_ui(tmp_path, mosquitto_tls.port, None, reply_timeout_s=1, username=mosquitto_tls.username,
                       password_env="UI_MQTT_PW", tls={"ca_file": str(mosquitto_tls.ca_file)})
    with caplog.at_level("DEBUG"), TestClient(create_app(cfg)) as c:
        assert cmd(c, "resume").status_code == 504  # sent (no station runs), not 502
    assert probe.wait_for(lambda m: m.topic == f"{BASE}/cmd/resume").payload == b"{}"
    assert mosquitto_tls.password not in caplog.text
    monkeypatch.delenv("UI_MQTT_PW")
    with pytest.raises(ConfigError) as exc:  # at start, in one line naming the UI's key
        create_app(cfg)
    assert str(exc.value).startswith("station line3: mqtt.password_env: environment variable UI_MQTT_PW is not set")


# ------------------------------------------------------------------------------------------- config and tokens
def test_mqtt_section_is_checked_by_the_daemons_rules_and_commands_need_a_token(tmp_path) -> None:
    ui = tmp_path / "ui.yaml"
    ui.write_text("stations:\n  - name: a\n    verdict_endpoint: tcp://127.0.0.1:5556\n    mqtt:\n"
                  "      site: line/3\n")
    with pytest.raises(ConfigError, match=r"ui.yaml:4: stations\[0\].mqtt: .*mqtt.site='line/3' is not a valid "
                                          "MQTT topic level"):
        load_ui_config(ui)
    ui.write_text("stations:\n  - name: a\n    verdict_endpoint: tcp://127.0.0.1:5556\n    mqtt:\n"
                  "      password_env: PW\n")
    with pytest.raises(ConfigError, match="a password .* needs a username"):
        load_ui_config(ui)
    ui.write_text("stations:\n  - name: a\n    verdict_endpoint: tcp://127.0.0.1:5556\n    mqtt: {station: cam1}\n")
    with pytest.raises(ConfigError, match="commands to a .* need a token"):
        load_ui_config(ui)
    (tmp_path / "t").write_text(f"{TOKEN}\n")
    ui.write_text("stations:\n  - name: a\n    verdict_endpoint: tcp://127.0.0.1:5556\n    archive_dir: arch\n"
                  "    mqtt: {station: cam1, password_file: pw, username: ui}\nauth: {tokens_file: t}\n")
    with pytest.raises(ConfigError, match=r"ui.yaml:5: stations\[0\].mqtt.password_file: .*pw does not exist"):
        load_ui_config(ui)
    (tmp_path / "pw").write_text("secret\n")
    cfg = load_ui_config(ui)
    assert cfg.stations[0].archive_dir == tmp_path / "arch" and cfg.stations[0].mqtt.password_file == tmp_path / "pw"
    assert cfg.stations[0].mqtt.daemon_view().base_topic == "linesight/site1/line1/cam1"


def test_tokens_may_be_named_and_stay_hashes(tmp_path) -> None:
    import hashlib

    from linesight.ui.auth import load_tokens

    digest = hashlib.sha256(TOKEN.encode()).hexdigest()
    tokens = tmp_path / "tokens"
    tokens.write_text(f"anna:{TOKEN}\nben:sha256:{digest[::-1]}\nsha256:{digest}\n{TOKEN[::-1]}  # unnamed\n")
    cfg = UiConfig.model_validate({"auth": {"tokens_file": str(tokens)}}).auth
    assert [(t.name, t.digest.hex()) for t in load_tokens(cfg)] == [
        ("anna", digest), ("ben", digest[::-1]), (None, digest),
        (None, hashlib.sha256(TOKEN[::-1].encode()).hexdigest())]
    tokens.write_text("sha256:abc\n")
    with pytest.raises(ConfigError, match="tokens:1: a sha256: line needs the token's 64 hex digits"):
        load_tokens(cfg)
    tokens.write_text("anna:short\n")
    with pytest.raises(ConfigError, match="tokens:1: a token needs at least 16 characters") as exc:
        load_tokens(cfg)
    assert "short" not in str(exc.value)


# ------------------------------------------------------------------------------------------- archive
@pytest.fixture
def archive_ui(tmp_path: Path) -> Iterator[tuple[TestClient, Path, list[dict]]]:
    root = tmp_path / "archive"
    sent = archived(root, 30)
    cfg = UiConfig.model_validate({"stations": [{"name": "line3", "verdict_endpoint": "tcp://127.0.0.1:1",
                                                 "archive_dir": str(root)},
                                                {"name": "bare", "verdict_endpoint": "tcp://127.0.0.1:1"}]})
    with TestClient(create_app(cfg)) as c:
        yield c, root, sent


def test_archive_is_listed_newest_first_filtered_and_paged(archive_ui) -> None:
    c, root, sent = archive_ui
    get = lambda q="": c.get(f"/api/v1/stations/line3/archive{q}")  # noqa: E731
    page = get("?limit=10").json()
    assert [r["seq"] for r in page["records"]] == list(range(30, 20, -1))
    assert page["next"] == page["records"][-1]["id"] and not page["stopped_early"]
    first = page["records"][0]
    assert first["part_id"] == "P/30" and first["id"].endswith("_000000000030_P-30_NG")  # the file name's form
    assert (first["verdict"], first["score"], first["defect_types"][0], first["grade"], first["run"]) == (
        "NG", sent[29]["score"], "spot", None, 7)
    assert first["image"] and first["heatmap"] and first["model"]["version"] == 2
    rest = get(f"?limit=25&before={page['next']}").json()
    assert [r["seq"] for r in rest["records"]] == list(range(20, 0, -1)) and rest["next"] is None
    assert [r["seq"] for r in get("?verdict=NG&limit=4").json()["records"]] == [30, 27, 24, 21]
    assert [r["seq"] for r in get("?type=crack").json()["records"]] == [27, 21, 15, 9, 3]
    assert [r["seq"] for r in get("?grade=reject&model_version=1").json()["records"]] == [15, 9, 3]
    assert [r["seq"] for r in get("?min_score=3.2&max_score=3.25").json()["records"]] == [24, 21]
    assert get("?verdict=OK&limit=200").json()["records"][-1]["seq"] == 1
    # an older day: since / until by the verdict's time (no zone: UTC), whole days skipped by name
    day = next(root.iterdir()).name
    old = root / "2020-01-02"
    old.mkdir()
    for f in (root / day).glob("000000000001_*"):
        if f.suffix == ".json":
            v = json.loads(f.read_text())
            v["host_ts"] = "2020-01-02T08:00:00.000Z"
            f.write_text(json.dumps(v))
        f.rename(old / f.name)
    assert [r["seq"] for r in get("?until=2020-01-03T00:00:00").json()["records"]] == [1]
    assert [r["seq"] for r in get("?since=2020-01-02T07:00:00&until=2020-01-02T09:00:00Z").json()["records"]] == [1]
    assert len(get("?since=2021-01-01T00:00:00&limit=200").json()["records"]) == 29
    assert get("?limit=0").status_code == 422 and get("?limit=201").status_code == 422
    assert get("?verdict=maybe").status_code == 422
    r = get("?before=../../etc")
    assert r.status_code == 400 and "not a record id" in r.json()["detail"]
    r = c.get("/api/v1/stations/bare/archive")
    assert r.status_code == 404 and "no archive_dir in the UI config" in r.json()["detail"]
    shutil.rmtree(root)
    r = get()
    assert r.status_code == 404 and "does not exist (yet)" in r.json()["detail"]


def test_archive_times_beyond_utc_are_a_400_and_early_years_still_filter(archive_ui) -> None:
    """Found by the OpenAPI fuzz (tests/test_ui_fuzz.py): a since/until that is outside years 1-9999 once in UTC was
    a 500 (OverflowError), and so was such a time in a sidecar; a year before 1000 compared as an unpadded string."""
    c, root, _sent = archive_ui
    get = lambda q="": c.get(f"/api/v1/stations/line3/archive{q}")  # noqa: E731
    r = get("?since=0001-01-01T00:00:00%2B01:00")
    assert r.status_code == 400
    assert r.json()["detail"] == "since=0001-01-01T00:00:00+01:00: outside the years 1-9999 in UTC"
    r = get("?until=9999-12-31T23:59:59-01:00")
    assert r.status_code == 400 and r.json()["detail"].startswith("until=9999-12-31T23:59:59-01:00: outside")
    assert len(get("?since=0999-01-01T00:00:00Z&limit=200").json()["records"]) == 30
    assert get("?until=0999-01-01T00:00:00Z").json()["records"] == []
    assert len(get("?since=0001-01-01T00:00:00Z&until=9999-12-31T23:59:59Z&limit=200").json()["records"]) == 30
    sidecar = next(root.glob("*/000000000005_*.json"))
    v = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**v, "host_ts": "0001-01-01T00:00:00+01:00"}))  # hand-edited: before year 1
    assert len(get("?limit=200").json()["records"]) == 30
    kept = get("?since=2000-01-01T00:00:00Z&limit=200")
    assert kept.status_code == 200 and 5 not in [x["seq"] for x in kept.json()["records"]]


def test_archive_work_per_request_is_bounded(archive_ui, monkeypatch) -> None:
    """A filter matching nothing stops after READ_MAX sidecars and hands out where to go on from."""
    c, _root, _sent = archive_ui
    monkeypatch.setattr(review, "READ_MAX", 8)
    page = c.get("/api/v1/stations/line3/archive?type=scratch").json()
    assert (page["records"], page["read"], page["stopped_early"]) == ([], 8, True)
    assert page["next"].endswith("_000000000023_P-23_OK")
    page = c.get(f"/api/v1/stations/line3/archive?type=crack&before={page['next']}").json()
    assert [r["seq"] for r in page["records"]] == [21, 15] and page["stopped_early"] and page["read"] == 8
    page = c.get("/api/v1/stations/line3/archive?verdict=NG&limit=2").json()  # a name filter reads nothing else
    assert page["read"] == 2 and page["looked_at"] == 4


def test_archive_pictures_and_ids_that_cannot_reach_outside(archive_ui, tmp_path) -> None:
    c, root, _sent = archive_ui
    rec = c.get("/api/v1/stations/line3/archive?limit=1").json()["records"][0]
    base = "/api/v1/stations/line3/archive"
    img = c.get(f"{base}/{rec['id']}/image")
    assert img.status_code == 200 and img.headers["content-type"] == "image/png"
    shown = cv2.imdecode(np.frombuffer(img.content, np.uint8), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(shown, picture(30, ng=True)[0])  # the frame as archived (PNG: lossless)
    heat = c.get(f"{base}/{rec['id']}/heatmap")
    assert heat.status_code == 200 and heat.content[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "secret.png").write_bytes(b"secret")
    day, name = rec["id"].split("_", 1)
    for bad in ("..%2F..%2Fsecret", "..%2Fsecret", "%2e%2e", f"{day}_..%2F..%2F..%2Fsecret", f"{day}_{name}.json",
                f"{day}%2F{name}", f"..%2F{day}_{name}", f"{day}_{name[:-2]}XX", "2020-13-40_000000000001_P_NG",
                f"{day}_{name}%00", "x" * 300):
        for what in ("image", "heatmap"):
            r = c.get(f"{base}/{bad}/{what}")
            assert r.status_code == 404, (bad, what, r.status_code)
            assert b"secret" != r.content
    # a file of the layout's name that links out of the archive is not served
    link = root / day / "000000000099_P-99_NG"
    link.with_suffix(".json").write_text("{}")
    os.symlink(tmp_path / "secret.png", root / day / "000000000099_P-99_NG.image.png")
    r = c.get(f"{base}/{day}_000000000099_P-99_NG/image")
    assert r.status_code == 404 and r.content != b"secret"
    r = c.get(f"{base}/{day}_000000000099_P-99_NG/heatmap")
    assert r.status_code == 404 and "has no heatmap" in r.json()["detail"]
    # a hand-edited sidecar of odd types is shown as far as it goes, and filtered out, never a 500
    (root / day / "000000000098_P-98_NG.json").write_text(json.dumps(
        {"score": "high", "host_ts": "2020-01-02T00:00:00", "defects": "x", "model": 3, "run": True, "grade": 1}))
    odd = {r["seq"]: r for r in c.get(f"{base}?limit=3").json()["records"]}[98]
    assert (odd["score"], odd["run"], odd["model"], odd["defect_types"], odd["image"]) == (None, None, None, [], False)
    for q in ("min_score=0", "since=2021-01-01T00:00:00", "type=crack", "grade=1", "model_version=3"):
        r = c.get(f"{base}?{q}&limit=200")
        assert r.status_code == 200 and 98 not in [x["seq"] for x in r.json()["records"]], q
