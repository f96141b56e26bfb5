"""The archive inside the running daemon: failures raise an alarm and degrade /healthz; stopping drains it."""
from __future__ import annotations

import json
import threading
import time
import urllib.request

import cv2
import numpy as np

from linesight.config.daemon import DaemonConfig
from linesight.daemon.service import Service


def folder(tmp_path, n: int, size: int):
    d = tmp_path / "frames"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):  # noise compresses badly: PNG writes take long enough to still be queued at the end
        cv2.imwrite(str(d / f"p{i:02d}.png"), rng.integers(0, 255, (size, size), np.uint8))
    return d


def service(bundle, frames, archive_dir, source_mode: str = "once", **outputs) -> Service:
    return Service(DaemonConfig.model_validate({
        "model": {"bundle": str(bundle), "watch": False},
        "source": {"type": "folder", "name": "cam", "path": str(frames), "mode": source_mode, "rate_hz": 20},
        "pipeline": {"deadline_ms": 60000, "queue_size": 64, "part_id": {"mode": "filename"}},
        "outputs": {"archive": {"enabled": True, "dir": str(archive_dir), "save_ok_fraction": 1.0,
                                "min_free_bytes": 0},
                    "zmq": {"enabled": False}, "metrics": {"enabled": False}, **outputs},
    }), mqtt_wait_s=5)


def test_stopping_writes_every_queued_record(small_bundle, tmp_path):
    """The end of the source and SIGTERM take the same shutdown path: queued records are written, not lost."""
    frames = folder(tmp_path, 12, 1400)
    svc = service(small_bundle, frames, tmp_path / "archive")
    verdicts: list[dict] = []
    svc.pipeline.on_verdict = verdicts.append
    svc.run()
    assert len(verdicts) == 12 and svc.archive.counters["errors"] == 0
    records = sorted(p.name for p in (tmp_path / "archive").glob("*/*.json"))
    assert len(records) == 12, records


def test_a_failing_archive_alarms_and_degrades_health(small_bundle, tmp_path, mosquitto, mqtt_probe, free_tcp_port):
    """The drive is not mounted (a file is where the archive should be): alarm archive_error on MQTT and
    /healthz degraded with the reason, while verdicts keep flowing."""
    blocker = tmp_path / "usb"
    blocker.write_text("not a folder")
    port = free_tcp_port()
    svc = service(small_bundle, folder(tmp_path, 3, 64), blocker / "archive", source_mode="loop",
                  mqtt={"enabled": True, "host": "127.0.0.1", "port": mosquitto.port, "site": "s", "line": "l",
                        "station": "c", "reconnect_max_s": 1},
                  metrics={"enabled": True, "host": "127.0.0.1", "port": port})
    probe = mqtt_probe(mosquitto, ["linesight/s/l/c/alarm"])
    runner = threading.Thread(target=svc.run)
    runner.start()
    try:
        alarm = json.loads(probe.wait_for(lambda m: json.loads(m.payload)["code"] == "archive_error",
                                          timeout=20).payload)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            health = json.loads(r.read())
        deadline = time.monotonic() + 20
        while svc.pipeline.counts["verdicts"] < 10 and time.monotonic() < deadline:  # verdicts keep flowing
            time.sleep(0.05)
    finally:
        svc.stop()
        runner.join(30)
    assert "cannot scan the archive" in alarm["message"] and str(blocker) in alarm["message"]
    assert health["status"] == "degraded" and health["reason"].startswith("archive: cannot scan")
    assert svc.pipeline.counts["verdicts"] >= 10 and not runner.is_alive()


def test_ok_frames_build_no_frame_size_map_in_the_daemon(small_bundle, tmp_path, monkeypatch):
    """The verdict needs only the cell grid: with the archive keeping NG frames only and no heatmap feed, the
    frame-size anomaly map is built for NG frames (archived with their heatmap) and never for OK ones."""
    from linesight.export.bundle import load_bundle, write_bundle
    from linesight.export.engine import Engine

    b = load_bundle(small_bundle)
    b.manifest.thresholds.image = 1e9  # every frame OK ...
    ok_bundle = write_bundle(tmp_path / "ok.zip", b)
    built = []
    real = Engine._frame_map

    def counting(self, *a, **k):  # counts builds; the real method does the work
        built.append(1)
        return real(self, *a, **k)
    monkeypatch.setattr(Engine, "_frame_map", counting)
    frames = folder(tmp_path, 6, 64)
    svc = service(ok_bundle, frames, tmp_path / "archive")
    svc.cfg.outputs.archive.save_ok_fraction = 0.0  # read when run() starts the archive
    verdicts: list[dict] = []
    svc.pipeline.on_verdict = verdicts.append
    svc.run()
    assert [v["verdict"] for v in verdicts] == ["OK"] * 6 and built == []
    b.manifest.thresholds.image, b.manifest.thresholds.pixel = 0.0, 1e-6  # ... and now every frame NG
    ng_bundle = write_bundle(tmp_path / "ng.zip", b)
    svc = service(ng_bundle, frames, tmp_path / "archive-ng")
    svc.run()
    assert svc.pipeline.counts["verdict_NG"] == 6 and len(built) >= 6
    assert len(list((tmp_path / "archive-ng").glob("*/*.heatmap.png"))) == 6


def test_age_retention_runs_while_no_frames_arrive(small_bundle, tmp_path):
    """max_age_days holds on a stopped line: the archive thread prunes between records, not only on save()."""
    from linesight.daemon.sinks.archive import Archive

    svc = service(small_bundle, folder(tmp_path, 1, 16), tmp_path / "archive")
    svc.cfg.outputs.archive.max_age_days = 1.2e-5  # ~1 s
    svc.archive = Archive(svc.cfg.outputs.archive)
    assert svc.archive.save({"seq": 1, "verdict": "NG", "part_id": "p1"})
    svc.archive_prune_s = 0.2
    t = threading.Thread(target=svc._archive_loop, name="archive", daemon=True)
    t.start()
    try:
        deadline = time.monotonic() + 10
        while svc.archive.counters["deleted_age"] == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert svc.archive.counters["deleted_age"] == 1 and svc.archive.size_bytes == 0
        assert not list((tmp_path / "archive").rglob("*.json"))
    finally:
        svc.arch_q.put(None)
        t.join(5)
    assert not t.is_alive()
