"""The daemon end to end with real parts: mosquitto, ZeroMQ sockets, an HTTP scrape of /metrics, a real
NOTIFY_SOCKET datagram socket, real magnetic_tile images through a folder source, signals."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
import zmq
from conftest import free_port

from linesight.export.bundle import load_bundle

pytestmark = pytest.mark.skipif(shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists(),
                                reason="mosquitto not installed (bash .ci/setup.sh installs it)")


@pytest.fixture(scope="module")
def bundle(small_bundle, tmp_path_factory) -> Path:
    """The session's small bundle as a .zip, with the model id these tests expect."""
    from linesight.export.bundle import write_bundle

    b = load_bundle(small_bundle)
    b.manifest.model.id = "daemon-test"
    return write_bundle(tmp_path_factory.mktemp("b") / "model.zip", b)


def frames_dir(tmp: Path, n: int) -> Path:
    from helpers import DATA

    d = tmp / "frames"
    d.mkdir()
    for p in sorted((DATA / "test" / "crack").iterdir())[:n]:
        shutil.copy(p, d / p.name)
    (d / "zz_corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    return d


def config(tmp: Path, bundle: Path, broker, source: dict, reload_dirs: list[str] | None = None, **pipeline) -> Path:
    cfg = {
        "model": {"bundle": str(bundle), "watch_interval_s": 0.3, "reload_dirs": reload_dirs},
        "source": source,
        "pipeline": {"deadline_ms": 3000, "part_id": {"mode": "filename"}, "stats_interval_s": 0.5, **pipeline},
        "outputs": {
            "mqtt": {"enabled": True, "host": "127.0.0.1", "port": broker.port, "site": "s1", "line": "l1",
                     "station": "cam1", "reconnect_min_s": 1, "reconnect_max_s": 1, "keepalive_s": 5},
            "zmq": {"enabled": True, "verdict_endpoint": f"tcp://127.0.0.1:{free_port()}",
                    "image_endpoint": f"tcp://127.0.0.1:{free_port()}"},
            "metrics": {"enabled": True, "host": "127.0.0.1", "port": free_port()},
            "archive": {"enabled": True, "dir": str(tmp / "archive"), "save_ok_fraction": 1.0},
        },
    }
    path = tmp / "station.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def start(cfg: Path, env_extra: dict | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    return subprocess.Popen([sys.executable, "-m", "linesight", "run", "--config", str(cfg)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@contextlib.contextmanager
def running(cfg: Path):
    """The daemon as a subprocess; killed if a test fails before stopping it."""
    proc = start(cfg)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()


def stop(proc: subprocess.Popen) -> str:
    """SIGINT: the daemon must exit 0 within 20 s. Returns its output."""
    assert proc.poll() is None, "the daemon died"
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, out[-3000:]
    return out


def test_folder_frames_get_exactly_one_verdict_on_mqtt_and_zmq(tmp_path, bundle, mosquitto, mqtt_probe):
    n = 6
    src = frames_dir(tmp_path, n)
    cfg_path = config(tmp_path, bundle, mosquitto, {"type": "folder", "name": "cam1", "path": str(src),
                                                    "mode": "watch", "watch_existing": True, "rate_hz": 5})
    cfg = yaml.safe_load(cfg_path.read_text())
    identity = load_bundle(bundle).identity
    assert len(identity["hash"]) == 16 and identity["version"] == 1
    probe = mqtt_probe(mosquitto, ["linesight/s1/l1/cam1/#"])
    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"verdict")
    sub.connect(cfg["outputs"]["zmq"]["verdict_endpoint"])
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.settimeout(30)
    proc = start(cfg_path, {"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "2000000"})
    try:
        got = []
        deadline = time.monotonic() + 60
        while not any(b"READY=1" in m for m in got) and time.monotonic() < deadline:
            got.append(notify.recv(4096))
        assert any(b"READY=1" in m for m in got), got
        zmq_msgs = []
        poller = zmq.Poller()
        poller.register(sub, zmq.POLLIN)
        deadline = time.monotonic() + 30
        while len(zmq_msgs) < n + 1 and time.monotonic() < deadline:
            if poller.poll(200):
                zmq_msgs.append(json.loads(sub.recv_multipart()[1]))
        verdicts = [json.loads(m.payload) for m in probe.all if m.topic.endswith("/verdict")]
        if len(zmq_msgs) != n + 1:
            proc.kill()
            raise AssertionError(f"zmq got {len(zmq_msgs)}: {proc.communicate()[0][-3000:]}")
        deadline = time.monotonic() + 10
        while len(verdicts) < n + 1 and time.monotonic() < deadline:
            time.sleep(0.1)
            verdicts = [json.loads(m.payload) for m in probe.all if m.topic.endswith("/verdict")]
        assert sorted(v["seq"] for v in verdicts) == list(range(1, n + 2))
        assert [v["seq"] for v in zmq_msgs] == sorted(v["seq"] for v in zmq_msgs)
        by_part = {v["part_id"]: v for v in verdicts}
        bad = by_part["zz_corrupt.jpg"]
        assert (bad["verdict"] == "NG" and bad["fail_safe"] and bad["reason"] == "bad_frame"
                and "zz_corrupt" in bad["detail"])
        good = [v for v in verdicts if not v["fail_safe"]]
        assert len(good) == n
        for v in good:
            assert v["schema"] == "linesight.verdict/1" and v["station"] == "s1/l1/cam1"
            assert v["verdict"] in ("OK", "NG") and v["model"] == identity
            assert v["score"] > 0 and v["threshold"] > 0 and v["latency_ms"]["inference"] > 0
            assert v["camera"]["name"] == "cam1" and v["camera"]["file"] == v["part_id"]
        assert all(m.qos == 1 for m in probe.all if m.topic.endswith("/verdict"))
        probe.wait_for(lambda m: m.topic.endswith("/status") and m.payload == b"online")
        # a frame that appears later (watch mode) is inspected too
        shutil.copy(next((src).glob("*.jpg")), src / "late_part.jpg")
        probe.wait_for(lambda m: m.topic.endswith("/verdict") and json.loads(m.payload)["part_id"] == "late_part.jpg",
                       timeout=15)
        # Prometheus scrape over real HTTP
        port = cfg["outputs"]["metrics"]["port"]
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert "linesight_frames_total 8.0" in text
        assert 'linesight_failsafe_total{reason="bad_frame"} 1.0' in text
        assert f'linesight_model_info{{hash="{identity["hash"]}",model_id="daemon-test",version="1"}} 1.0' in text
        assert 'linesight_stage_seconds_count{stage="inference"} 7.0' in text
        health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5).read())
        assert health["status"] == "ok"
        # the watchdog is pinged by the processing loop while idle
        pings = []
        t_end = time.monotonic() + 3
        while time.monotonic() < t_end:
            try:
                notify.settimeout(max(0.05, t_end - time.monotonic()))
                pings.append(notify.recv(4096))
            except TimeoutError:
                break
        assert sum(b"WATCHDOG=1" in p for p in pings) >= 2, pings
        # archive: every frame with an image, with a sidecar verdict
        assert len(list((tmp_path / "archive").rglob("*.json"))) >= n
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0, out
        probe.wait_for(lambda m: m.topic.endswith("/status") and m.payload == b"offline")
    finally:
        if proc.poll() is None:
            proc.kill()
        sub.close(0)
        notify.close()


def test_broker_restart_and_bad_model_reload(tmp_path, bundle, mosquitto, mqtt_probe):
    cfg_path = config(tmp_path, bundle, mosquitto, {"type": "synthetic", "name": "synth", "width": 128,
                                                    "height": 96, "rate_hz": 10}, part_id={"mode": "external"},
                      reload_dirs=[str(tmp_path)])
    probe = mqtt_probe(mosquitto, ["linesight/s1/l1/cam1/#"])
    proc = start(cfg_path)
    try:
        probe.wait_for(lambda m: m.topic.endswith("/verdict"), timeout=60)
        # "part arrived" messages name the next frames' parts, in order
        for pid in ("P-1", "P-2"):
            probe.publish("linesight/s1/l1/cam1/cmd/part", json.dumps({"part_id": pid}))
        parts = [json.loads(probe.wait_for(lambda m: m.topic.endswith("/verdict") and
                                           not json.loads(m.payload)["part_id"].startswith("unassigned"),
                                           timeout=10).payload)["part_id"] for _ in range(2)]
        assert parts == ["P-1", "P-2"]
        probe.publish("linesight/s1/l1/cam1/cmd/part", json.dumps({"part_id": 42}))
        rep = probe.wait_for(lambda m: m.topic.endswith("cmd/part/reply") and not json.loads(m.payload)["ok"])
        assert "part_id" in json.loads(rep.payload)["error"]
        mosquitto.kill()
        time.sleep(2.0)
        assert proc.poll() is None, "daemon died when the broker went away"
        port = yaml.safe_load(cfg_path.read_text())["outputs"]["metrics"]["port"]
        health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5).read())
        assert health["status"] == "degraded" and health["reason"] == "mqtt broker unreachable"
        mosquitto.start()
        probe2 = mqtt_probe(mosquitto, ["linesight/s1/l1/cam1/#"])
        probe2.wait_for(lambda m: m.topic.endswith("/status") and m.payload == b"online", timeout=15)
        # published on reconnect, before any new verdict: how many parts got none, and which
        dropped = probe2.wait_for(lambda m: m.topic.endswith("/alarm") and b"verdicts_dropped" in m.payload,
                                  timeout=10)
        assert json.loads(dropped.payload)["context"]["count"] > 0
        first = probe2.wait_for(lambda m: m.topic.endswith("/verdict"), timeout=15)
        assert time.time() - time.mktime(time.strptime(json.loads(first.payload)["host_ts"][:19],
                                                       "%Y-%m-%dT%H:%M:%S")) - (-time.timezone) < 5, \
            "a verdict from before the outage was delivered late"
        # a tampered bundle is refused; the old model keeps deciding
        bad = tmp_path / "bad.zip"
        data = bytearray(bundle.read_bytes())
        bad.write_bytes(bytes(data[: len(data) // 2]))
        probe2.publish("linesight/s1/l1/cam1/cmd/reload", json.dumps({"id": "r1", "bundle": str(bad)}))
        reply = probe2.wait_for(lambda m: m.topic.endswith("cmd/reload/reply"), timeout=10)
        assert json.loads(reply.payload)["id"] == "r1"
        alarm = probe2.wait_for(lambda m: m.topic.endswith("/alarm") and b"model_refused" in m.payload, timeout=20)
        assert "bad.zip" in json.loads(alarm.payload)["message"]
        after = probe2.wait_for(lambda m: m.topic.endswith("/verdict") and not json.loads(m.payload)["fail_safe"],
                                timeout=10)
        assert json.loads(after.payload)["model"] == load_bundle(bundle).identity
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=20)
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_deadline_and_missing_model_give_fail_safe_verdicts(tmp_path, bundle, mosquitto, mqtt_probe):
    cfg_path = config(tmp_path, tmp_path / "missing.zip", mosquitto, {"type": "synthetic", "name": "synth",
                                                                      "width": 64, "height": 64, "rate_hz": 20,
                                                                      "count": 5})
    probe = mqtt_probe(mosquitto, ["linesight/s1/l1/cam1/#"])
    proc = start(cfg_path)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    verdicts = [json.loads(m.payload) for m in probe.all if m.topic.endswith("/verdict")]
    assert len(verdicts) == 5 and all(v["reason"] == "no_model" and v["verdict"] == "NG" for v in verdicts)
    assert any(m.topic.endswith("/alarm") and b"no_model" in m.payload for m in probe.all)
    states = [m.payload for m in probe.all if m.topic.endswith("/status")]
    assert b"degraded" in states and b"online" not in states, states  # never "online" without a model

    cfg_path = config(tmp_path, bundle, mosquitto, {"type": "synthetic", "name": "synth", "width": 64, "height": 64,
                                                    "rate_hz": 20, "count": 4}, deadline_ms=0.001)
    proc = start(cfg_path)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    verdicts = [json.loads(m.payload) for m in probe.all if m.topic.endswith("/verdict")][5:]
    assert len(verdicts) == 4 and all(v["reason"] == "deadline_missed" for v in verdicts)


def test_bad_config_is_one_clear_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  bundle: x.zip\nsource:\n  type: folder\n  path: /tmp\n  mdoe: once\n"
                   "pipeline:\n  deadline_ms: -5\n")
    for verb in (["check-config", str(bad)], ["run", "--config", str(bad)]):
        r = subprocess.run([sys.executable, "-m", "linesight", *verb], capture_output=True, text=True, timeout=60)
        assert r.returncode == 2, r.stderr
        assert "Traceback" not in r.stderr
        assert "bad.yaml:6" in r.stderr and "mdoe" in r.stderr and "did you mean 'mode'" in r.stderr
        assert "bad.yaml:8" in r.stderr and "deadline_ms" in r.stderr


def test_reload_thread_survives_corrupt_and_special_bundles(tmp_path, bundle, mosquitto, mqtt_probe):
    """zlib-corrupt and unknown-method zips and /dev/zero are refused with an alarm, and the same reload
    thread then takes a good bundle: a load failure never ends it (it used to die on zlib.error)."""
    from helpers import corrupt_zip
    from linesight.export.bundle import write_bundle

    cfg_path = config(tmp_path, bundle, mosquitto, {"type": "synthetic", "name": "synth", "width": 128,
                                                    "height": 96, "rate_hz": 10}, reload_dirs=[str(tmp_path), "/dev"])
    probe = mqtt_probe(mosquitto, ["linesight/s1/l1/cam1/#"])
    with running(cfg_path) as proc:
        probe.wait_for(lambda m: m.topic.endswith("/verdict"), timeout=60)
        bad = [corrupt_zip(bundle, tmp_path / "deflate.zip", "deflate"),
               corrupt_zip(bundle, tmp_path / "method.zip", "method"), Path("/dev/zero")]
        for i, path in enumerate(bad):
            t0 = time.monotonic()
            probe.publish("linesight/s1/l1/cam1/cmd/reload", json.dumps({"id": f"r{i}", "bundle": str(path)}))
            alarm = probe.wait_for(lambda m, p=path: m.topic.endswith("/alarm") and b"model_refused" in m.payload
                                   and str(p).encode() in m.payload, timeout=20)
            assert "refused" in json.loads(alarm.payload)["message"] and time.monotonic() - t0 < 15
        v2 = load_bundle(bundle)
        v2.manifest.model.version = 2
        good = write_bundle(tmp_path / "v2.zip", v2)
        probe.publish("linesight/s1/l1/cam1/cmd/reload", json.dumps({"id": "ok", "bundle": str(good)}))
        probe.wait_for(lambda m: m.topic.endswith("/alarm") and b"model_changed" in m.payload, timeout=20)
        probe.wait_for(lambda m: m.topic.endswith("/verdict") and json.loads(m.payload)["model"]["version"] == 2,
                       timeout=20)
        stop(proc)


def test_every_reload_runs_and_replies_report_jobs(tmp_path, bundle, mosquitto, mqtt_probe):
    """5 rapid reloads: 5 job ids, 5 outcomes (once, 20 replies said 'accepted' and one ran); a string
    'false' is refused, not read as a rollback; deeply nested JSON gets a reply, not a traceback."""
    cfg_path = config(tmp_path, bundle, mosquitto, {"type": "synthetic", "name": "synth", "width": 128,
                                                    "height": 96, "rate_hz": 10})
    probe = mqtt_probe(mosquitto, ["linesight/s1/l1/cam1/#"])
    cmd = "linesight/s1/l1/cam1/cmd/reload"
    with running(cfg_path) as proc:
        probe.wait_for(lambda m: m.topic.endswith("/verdict"), timeout=60)
        for i in range(5):
            probe.publish(cmd, json.dumps({"id": f"q{i}", "bundle": str(bundle)}))
        replies, outcomes = {}, set()  # replies and outcomes interleave: read the stream until both are complete
        while len(replies) < 5 or not set(replies.values()) <= outcomes:
            m = probe.wait_for(lambda m: m.topic.endswith("cmd/reload/reply") or
                               (m.topic.endswith("/alarm") and b"model_changed" in m.payload), timeout=30)
            body = json.loads(m.payload)
            if m.topic.endswith("/reply"):
                assert body["ok"] is True, body
                replies[body["id"]] = body["result"]["job"]
            else:
                outcomes.add(body["context"]["job"])
        assert sorted(replies) == [f"q{i}" for i in range(5)] and len(set(replies.values())) == 5
        # the test bundle has random-init features: every load says so (an alarm, not only a log line)
        warn = probe.wait_for(lambda m: m.topic.endswith("/alarm") and b"model_warning" in m.payload, timeout=10)
        assert "features not pretrained" in json.loads(warn.payload)["message"]
        elsewhere = tmp_path / "elsewhere.zip"  # not under the configured bundle's folder
        shutil.copy(bundle, elsewhere)
        probe.publish(cmd, json.dumps({"id": "out", "bundle": str(elsewhere)}))
        out = json.loads(probe.wait_for(lambda m: m.topic.endswith("cmd/reload/reply")
                                        and json.loads(m.payload)["id"] == "out", timeout=10).payload)
        assert out["ok"] is False and "outside the folders" in out["error"]
        probe.publish(cmd, json.dumps({"id": "s", "rollback": "false"}))
        bad = json.loads(probe.wait_for(lambda m: m.topic.endswith("cmd/reload/reply")
                                        and json.loads(m.payload)["id"] == "s", timeout=10).payload)
        assert bad["ok"] is False and "rollback" in bad["error"] and "valid boolean" in bad["error"]
        probe.publish("linesight/s1/l1/cam1/cmd/pause", "[" * 5000 + "]" * 5000)
        deep = json.loads(probe.wait_for(lambda m: m.topic.endswith("cmd/pause/reply"), timeout=10).payload)
        assert deep["ok"] is False and "nested too deeply" in deep["error"]
        assert "RecursionError" not in stop(proc)


def test_check_config_warns_about_an_untrained_bundle(tmp_path, bundle, capsys, caplog):
    from linesight.cli import main

    class NoBroker:
        port = 1883

    cfg_path = config(tmp_path, bundle, NoBroker(), {"type": "synthetic", "name": "synth", "width": 64, "height": 64})
    assert main(["check-config", str(cfg_path), "--bundle"]) == 0
    cap = capsys.readouterr()
    assert json.loads(cap.out)["warnings"] == ["features not pretrained: accuracy will be poor"]
    assert any("FEATURES NOT PRETRAINED" in r.getMessage() for r in caplog.records)
