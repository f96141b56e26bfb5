"""The shipped broker ACL (config/mosquitto/linesight.acl) and broker config example, enforced by a real
mosquitto with a `mosquitto_passwd` password file, against the real daemon (subprocess, folder source,
small real bundle) logged in as the station user via mqtt.password_file.

Why: the daemon executes every command that reaches <base>/cmd/<name>; the broker is its only
authorisation. Each check below fails with an allow-all ACL (or with anonymous access allowed)."""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import yaml
from conftest import _INSTALL_HINT, MOSQUITTO, MOSQUITTO_PASSWD, Broker, MqttProbe, free_port
from paho.mqtt.enums import CallbackAPIVersion

REPO = Path(__file__).resolve().parents[1]
ACL = REPO / "config" / "mosquitto" / "linesight.acl"
CONF_EXAMPLE = REPO / "config" / "mosquitto" / "mosquitto.conf.example"
BASE = "linesight/site1/line1/cam1"  # the station block of the shipped ACL
STATION, HMI, ENGINEERING = "linesight-cam1", "hmi", "engineering"


@pytest.fixture
def acl_broker(tmp_path: Path) -> Iterator[Broker]:
    """mosquitto running the shipped conf example (paths and port swapped in) with the shipped ACL and
    a password file made by `mosquitto_passwd -b` for the three roles."""
    if MOSQUITTO is None or MOSQUITTO_PASSWD is None:
        pytest.skip(_INSTALL_HINT)
    workdir = tmp_path / "mosquitto-acl"
    workdir.mkdir()
    passwd = workdir / "linesight.passwd"
    passwords = {user: f"{user}-Pw-{os.urandom(6).hex()}" for user in (STATION, HMI, ENGINEERING)}
    for i, (user, pw) in enumerate(passwords.items()):
        subprocess.run([MOSQUITTO_PASSWD, *(["-c"] if i == 0 else []), "-b", str(passwd), user, pw], check=True,
                       capture_output=True)
    port = free_port()
    swaps = {r"^password_file .*$": f"password_file {passwd}", r"^acl_file .*$": f"acl_file {ACL}",
             r"^listener 1883 127\.0\.0\.1$": f"listener {port} 127.0.0.1"}
    lines = [ln.strip() for ln in CONF_EXAMPLE.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    for pattern, repl in swaps.items():
        hits = [i for i, ln in enumerate(lines) if re.match(pattern, ln)]
        assert len(hits) == 1, f"{CONF_EXAMPLE.name}: expected one line matching {pattern!r}"
        lines[hits[0]] = repl
    assert "allow_anonymous false" in lines
    # as in conftest: as root mosquitto would switch to user 'mosquitto', which cannot read pytest's tmp
    lines += [f"user {getpass.getuser()}", "log_dest stderr", "log_type all"]
    broker = Broker(workdir, port, lines)
    broker.passwords = passwords  # type: ignore[attr-defined]
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def connack(broker: Broker, username: str | None, password: str | None) -> mqtt.ReasonCode:
    """The broker's CONNACK reason for these credentials (a bare client, no retries)."""
    got: list = []
    done = threading.Event()
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"c-{os.urandom(4).hex()}",
                         protocol=mqtt.MQTTv5)
    if username is not None:
        client.username_pw_set(username, password)
    client.on_connect = lambda _c, _u, _f, reason, _p: (got.append(reason), done.set())
    client.connect(broker.host, broker.port, keepalive=10)
    client.loop_start()
    try:
        assert done.wait(5), "no CONNACK"
    finally:
        client.disconnect()
        client.loop_stop()
    return got[0]


def publish_acked(probe: MqttProbe, topic: str, payload: dict) -> mqtt.ReasonCode:
    """Publish QoS1 and return the PUBACK reason (MQTT v5: mosquitto answers 'Not authorized' for a
    publish the ACL denies, and drops the message)."""
    acks: dict[int, mqtt.ReasonCode] = {}
    probe.client.on_publish = lambda _c, _u, mid, reason, _p: acks.__setitem__(mid, reason)
    info = probe.client.publish(topic, json.dumps(payload), qos=1)
    info.wait_for_publish(5)
    until(lambda: info.mid in acks, 5, "PUBACK")
    return acks[info.mid]


def until(cond: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def verdict_seqs(probe: MqttProbe) -> list[int]:
    return [json.loads(m.payload)["seq"] for m in list(probe.all) if m.topic == f"{BASE}/verdict"]


def replies(probe: MqttProbe, req_id: str) -> list[dict]:
    out = [json.loads(m.payload) for m in list(probe.all)
           if m.topic.startswith(f"{BASE}/cmd/") and m.topic.endswith("/reply")]
    return [r for r in out if r.get("id") == req_id]


def station_config(tmp: Path, bundle: Path, broker: Broker, password: str) -> tuple[Path, int, Path]:
    """Daemon config: folder source looping over a few real images, MQTT as the station user with the
    password in a file named as docs/mqtt-security.md does for a systemd credential
    (${CREDENTIALS_DIRECTORY}/mqtt-password; `daemon()` sets the variable like systemd would).
    Returns (config, metrics port, password file)."""
    from helpers import DATA

    frames = tmp / "frames"
    frames.mkdir()
    for p in sorted((DATA / "test" / "crack").iterdir())[:3]:
        shutil.copy(p, frames / p.name)
    pw_file = tmp / "credentials" / "mqtt-password"
    pw_file.parent.mkdir()
    pw_file.write_text(password + "\n")
    pw_file.chmod(0o600)
    metrics_port = free_port()
    cfg = {
        "model": {"bundle": str(bundle), "watch": False},
        "source": {"type": "folder", "name": "cam1", "path": str(frames), "mode": "loop", "rate_hz": 4},
        "pipeline": {"deadline_ms": 3000, "part_id": {"mode": "filename"}, "stats_interval_s": 0.5},
        "outputs": {
            "mqtt": {"enabled": True, "host": broker.host, "port": broker.port, "site": "site1", "line": "line1",
                     "station": "cam1", "username": STATION,
                     "password_file": "${CREDENTIALS_DIRECTORY}/mqtt-password",
                     "reconnect_min_s": 1, "reconnect_max_s": 1, "keepalive_s": 5, "stats_interval_s": 0.5},
            "zmq": {"enabled": False},
            "metrics": {"enabled": True, "host": "127.0.0.1", "port": metrics_port},
            "archive": {"enabled": False},
        },
    }
    path = tmp / "station.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, metrics_port, pw_file


@contextlib.contextmanager
def daemon(cfg: Path) -> Iterator[subprocess.Popen]:
    proc = subprocess.Popen([sys.executable, "-m", "linesight", "run", "--config", str(cfg)],
                            env={**os.environ, "PYTHONUNBUFFERED": "1",
                                 "CREDENTIALS_DIRECTORY": str(cfg.parent / "credentials")}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)


def stop(proc: subprocess.Popen) -> str:
    assert proc.poll() is None, "the daemon died: " + proc.communicate()[0][-3000:]
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out[-3000:]
    return out


def http_json(port: int, path: str) -> dict:
    return json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5).read())


def scrape(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()


def test_anonymous_and_wrong_passwords_are_refused(acl_broker: Broker) -> None:
    pw = acl_broker.passwords  # type: ignore[attr-defined]
    assert connack(acl_broker, HMI, pw[HMI]).value == 0  # the credentials themselves work
    assert connack(acl_broker, None, None).is_failure  # anonymous
    assert connack(acl_broker, HMI, pw[HMI] + "x").is_failure  # wrong password
    assert connack(acl_broker, "intruder", pw[HMI]).is_failure  # unknown user


def test_station_hmi_and_engineering_roles_with_the_real_daemon(tmp_path, small_bundle, acl_broker: Broker) -> None:
    pw = acl_broker.passwords  # type: ignore[attr-defined]
    # Both subscribe to everything: what each receives is decided by the ACL alone.
    hmi = MqttProbe(acl_broker, ["linesight/#"], username=HMI, password=pw[HMI])
    eng = MqttProbe(acl_broker, ["linesight/#"], username=ENGINEERING, password=pw[ENGINEERING])
    cfg, metrics_port, _ = station_config(tmp_path, small_bundle, acl_broker, pw[STATION])
    try:
        with daemon(cfg) as proc:
            # 1. verdicts of the station reach the read-only HMI user
            until(lambda: len(verdict_seqs(hmi)) >= 2 or proc.poll() is not None, 90, "verdicts at the HMI")
            assert proc.poll() is None, proc.communicate()[0][-3000:]
            until(lambda: any(m.topic == f"{BASE}/status" and m.payload == b"online" for m in hmi.all), 10,
                  "status online at the HMI")
            until(lambda: any(m.topic == f"{BASE}/stats" for m in eng.all), 10, "stats at engineering")

            # 2. the HMI user's pause is refused by the broker and never reaches the daemon
            assert publish_acked(hmi, f"{BASE}/cmd/pause", {"id": "hmi-1"}).getName() == "Not authorized"
            before = max(verdict_seqs(hmi))
            until(lambda: max(verdict_seqs(hmi)) >= before + 6, 15, "verdicts to keep coming after the HMI's pause")
            assert not replies(eng, "hmi-1"), "the daemon executed the HMI user's command"
            assert http_json(metrics_port, "/healthz")["paused"] is False

            # 3. the HMI user reads verdicts/alarms/status only: no stats, no command replies
            assert {m.topic.rsplit("/", 1)[-1] for m in list(hmi.all)} <= {"verdict", "alarm", "status"}

            # 4. the station user may publish only its own station's outputs (not commands, not other stations)
            station_probe = MqttProbe(acl_broker, [f"{BASE}/status"], username=STATION, password=pw[STATION])
            try:
                for topic in ("linesight/site1/line1/cam2/verdict", f"{BASE}/cmd/pause"):
                    assert publish_acked(station_probe, topic, {"id": "station-1", "seq": 1}).getName() == \
                        "Not authorized", topic
            finally:
                station_probe.close()

            # 5. the engineering user's pause is executed: reply, status degraded, verdicts stop
            assert publish_acked(eng, f"{BASE}/cmd/pause", {"id": "eng-1"}).getName() == "Success"
            until(lambda: replies(eng, "eng-1"), 10, "reply to the engineering pause")
            reply = replies(eng, "eng-1")[0]
            assert reply["ok"] is True and reply["result"] == {"paused": True}, reply
            until(lambda: any(m.topic == f"{BASE}/status" and m.payload == b"degraded" for m in hmi.all), 10,
                  "status degraded at the HMI")
            assert http_json(metrics_port, "/healthz")["paused"] is True
            time.sleep(1.5)  # frames already in the pipeline still get their verdicts
            paused_at = max(verdict_seqs(hmi))
            time.sleep(2.5)  # 10 frames at 4 Hz if it were still running
            assert max(verdict_seqs(hmi)) == paused_at, "verdicts kept coming after the pause"
            assert not replies(hmi, "eng-1"), "the HMI user may not read command replies"

            # 6. and resume works the same way
            assert publish_acked(eng, f"{BASE}/cmd/resume", {"id": "eng-2"}).getName() == "Success"
            until(lambda: max(verdict_seqs(hmi)) > paused_at, 15, "verdicts after resume")
            assert replies(eng, "eng-2")[0]["ok"] is True

            out = stop(proc)
        assert pw[STATION] not in out
        # the Last Will / shutdown status is on the station's own status topic: allowed
        until(lambda: any(m.topic == f"{BASE}/status" and m.payload == b"offline" for m in hmi.all), 10,
              "status offline at the HMI")
    finally:
        hmi.close()
        eng.close()


def test_daemon_with_a_wrong_password_gets_no_connection(tmp_path, small_bundle, acl_broker: Broker) -> None:
    """The broker refuses it; the daemon keeps running degraded, says why, and /metrics shows it."""
    pw = acl_broker.passwords  # type: ignore[attr-defined]
    hmi = MqttProbe(acl_broker, ["linesight/#"], username=HMI, password=pw[HMI])
    wrong = "wrong-" + pw[STATION][::-1]
    cfg, metrics_port, pw_file = station_config(tmp_path, small_bundle, acl_broker, wrong)
    try:
        with daemon(cfg) as proc:
            # the daemon waits mqtt_wait_s (10 s) for the broker, then raises alarm mqtt_down and runs on
            def alarmed() -> bool:
                try:
                    return 'linesight_alarms_total{code="mqtt_down"} 1.0' in scrape(metrics_port)
                except OSError:
                    return proc.poll() is not None
            until(alarmed, 90, "alarm mqtt_down in /metrics")
            assert proc.poll() is None, proc.communicate()[0][-3000:]
            until(lambda: 'linesight_frames_total 0.0' not in scrape(metrics_port), 15, "frames")
            text = scrape(metrics_port)
            assert "linesight_mqtt_connected 0.0" in text
            assert "linesight_mqtt_connects_total 0.0" in text
            dropped = re.search(r'linesight_sink_dropped_total\{reason="disconnected",sink="mqtt"\} (\S+)', text)
            assert dropped and float(dropped.group(1)) > 0, "verdicts must be dropped and counted"
            health = http_json(metrics_port, "/healthz")
            assert health["status"] == "degraded" and health["reason"] == "mqtt broker unreachable", health
            out = stop(proc)
        assert "refused the connection: Not authorized" in out, out[-3000:]
        assert f"check mqtt.username ({STATION}) and the password source ({pw_file})" in out
        assert wrong not in out and pw[STATION] not in out
        assert not any(m.topic.startswith(BASE) for m in hmi.all), "nothing may be published without a login"
        assert "Not authorized" in acl_broker.log() or "not authorised" in acl_broker.log().lower()
    finally:
        hmi.close()
