"""The publish path (issue 13): each verdict JSON-encoded once and those bytes sent by every output, each heatmap
coloured once for the ZeroMQ feed and the archive together, and a publish queue bounded in bytes that drops
pictures (counted), never verdicts, and never makes processing wait.

The daemon tests run `Service` with real parts: a real bundle, a folder of frames, mosquitto, ZeroMQ SUB sockets,
the archive and the verdict log on disk."""
from __future__ import annotations

import collections
import json
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import zmq
from conftest import free_port

from linesight.config.daemon import DaemonConfig
from linesight.daemon import service as service_module
from linesight.daemon.notify import Notifier
from linesight.daemon.service import Service
from linesight.daemon.sinks import archive, encoding, mqtt_sink, verdict_log, zmq_sink
from linesight.daemon.sinks.encoding import Outgoing, Pictures, verdict_json
from linesight.daemon.sinks.publish_queue import PublishQueue
from linesight.daemon.sinks.verdict_log import VerdictLog
from linesight.daemon.verdict import SCHEMA

BASE = "linesight/s/l/c"
MiB = 2**20


# ------------------------------------------------------------------------------------------------ units
def outgoing(seq: int, pixels: int = 0) -> Outgoing:
    v = {"schema": SCHEMA, "seq": seq, "verdict": "NG", "threshold": 2.0}
    pictures = Pictures(np.zeros((pixels, 1), np.uint8), np.zeros((pixels, 1), np.float32), 2.0) if pixels else None
    return Outgoing(v, verdict_json(v), None, pictures)


def test_queue_drops_pictures_over_its_budget_never_verdicts_and_accounts_to_zero() -> None:
    q = PublishQueue(max_bytes=3 * MiB, max_items=4)
    big = outgoing(0, MiB // 8).nbytes  # 1 + 4 + 3 bytes per pixel: ~1 MiB
    queued = [q.put(outgoing(seq, MiB // 8)) for seq in range(8)]
    assert [o.pictures is not None for o in queued] == [True, True, False, False, False, False, False, False]
    assert q.counters == {"pictures_dropped_bytes": 2, "pictures_dropped_items": 4}  # 3rd, 4th: bytes; then items
    assert len(q) == 8 and q.backlogged and 2 * big <= q.held_bytes <= 3 * MiB
    taken = [q.get() for _ in range(8)]
    assert [o.verdict["seq"] for o in taken] == list(range(8)) and not q.backlogged  # every verdict, in order
    assert q.put(outgoing(8, MiB // 8)).pictures is None  # taken is not done: the archive may still hold them
    for o in taken:
        q.release(o)
    assert q.put(outgoing(9, MiB // 8)).pictures is not None  # released: room again
    q.release(q.get())
    q.release(q.get())
    q.close()
    assert q.get() is None and q.held_bytes == 0


def test_pictures_render_each_thing_once_across_threads(monkeypatch) -> None:
    """Two outputs asking at the same moment get one colouring; the same format is encoded once and shared."""
    real, calls = encoding.colorize_heatmap, []

    def slow_colorize(amap, threshold):  # slow enough that both threads are inside at once
        calls.append(amap)
        time.sleep(0.2)
        return real(amap, threshold)

    monkeypatch.setattr(encoding, "colorize_heatmap", slow_colorize)
    pictures = Pictures(np.zeros((32, 48), np.uint8), np.linspace(0, 4, 32 * 48, dtype=np.float32).reshape(32, 48), 2.0)
    got: list = []
    threads = [threading.Thread(target=lambda: got.append(pictures.encoded("heatmap", "png"))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and got[0] is got[1]
    assert pictures.encoded("image", "jpeg", 85) is pictures.encoded("image", "jpeg", 85)
    assert pictures.encoded("image", "jpeg", 85) is not pictures.encoded("image", "jpeg", 95)  # other quality
    assert pictures.encoded("image", "png", 85) is pictures.encoded("image", "png", 95)  # PNG ignores quality
    assert Pictures(np.zeros((4, 4), np.uint8)).encoded("heatmap", "png") is None


# ------------------------------------------------------------------------------------------------ the daemon
def frames(tmp_path: Path, n: int, size: int) -> Path:
    d = tmp_path / "frames"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        cv2.imwrite(str(d / f"p{i:02d}.png"), rng.integers(0, 255, (size, size), np.uint8))
    return d


def station(bundle: Path, folder: Path, tmp_path: Path, broker, *, mode: str, image_endpoint: str,
            rate_hz: float | None = None, **pipeline) -> DaemonConfig:
    return DaemonConfig.model_validate({
        "model": {"bundle": str(bundle), "watch": False},
        "source": {"type": "folder", "name": "cam", "path": str(folder), "mode": mode, "watch_existing": True,
                   "watch_settle_s": 0.05, "grayscale": True, "rate_hz": rate_hz},
        "pipeline": {"deadline_ms": 60000, "queue_size": 64, "part_id": {"mode": "filename"},
                     "state_dir": str(tmp_path / "state"), **pipeline},
        "outputs": {
            "mqtt": {"host": "127.0.0.1", "port": broker.port, "site": "s", "line": "l", "station": "c"},
            "zmq": {"verdict_endpoint": f"tcp://127.0.0.1:{free_port()}", "image_endpoint": image_endpoint,
                    "image_format": "png", "image_sndhwm": 1000},
            "archive": {"dir": str(tmp_path / "archive"), "save_ok_fraction": 1.0, "min_free_bytes": 0},
            "verdict_log": {"path": str(tmp_path / "verdicts.jsonl")},
            "metrics": {"enabled": False},  # read through Metrics.exposition(): no port to collide on
        },
    })


def until(cond, timeout: float, what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def records(tmp_path: Path, suffix: str) -> dict[int, Path]:
    """Archived files by seq (the first 12 characters of the name)."""
    return {int(p.name[:12]): p for p in (tmp_path / "archive").glob(f"*/*{suffix}")}


def received(sock: zmq.Socket) -> list[list[bytes]]:
    """Every message a SUB socket holds (it buffers what arrived, also after the publisher closed)."""
    out = []
    while sock.poll(200):
        out.append(sock.recv_multipart())
    return out


def dropped_series(svc: Service) -> dict[str, float]:
    """linesight_sink_dropped_total{sink="publish"} by reason, from a real scrape."""
    from prometheus_client.parser import text_string_to_metric_families

    return {s.labels["reason"]: s.value for f in text_string_to_metric_families(svc.metrics.exposition().decode())
            for s in f.samples if s.name == "linesight_sink_dropped_total" and s.labels["sink"] == "publish"}


def test_a_stalled_publisher_never_blocks_processing(small_bundle, tmp_path, mosquitto, mqtt_probe, monkeypatch):
    """The publish thread hangs in the verdict log's write (a stuck disk) while a dozen 1 MP frames are decided:
    every _emit returns at once, pictures beyond the budget are dropped and counted, alarm publish_stalled goes
    out, and once the disk is back every verdict is published and the queue's bytes return to 0."""
    n, size = 12, 1024
    stuck, entered = threading.Event(), threading.Event()
    real_write = VerdictLog.write

    # A wrapper is needed: no real output can be made to block (ZeroMQ sends NOBLOCK, paho has its own thread)
    # and a tmp_path disk cannot hang; this is where a hung NFS/USB mount blocks the publish thread.
    def hung_disk(log, verdict, payload=None):  # noqa: ANN001
        entered.set()
        stuck.wait(120)
        return real_write(log, verdict, payload)

    monkeypatch.setattr(VerdictLog, "write", hung_disk)
    cfg = station(small_bundle, frames(tmp_path, n, size), tmp_path, mosquitto, mode="watch",
                  image_endpoint=f"tcp://127.0.0.1:{free_port()}", publish_queue_mb=24)
    svc = Service(cfg, notifier=Notifier(None), mqtt_wait_s=5)
    svc.pub_q.max_items = 4  # a dozen frames overfill the item cap too (256 in production)
    emits: list[float] = []
    real_emit = svc.pipeline._emit

    def timed_emit(*a, **kw):  # noqa: ANN002, ANN003
        t0 = time.perf_counter()
        try:
            return real_emit(*a, **kw)
        finally:
            emits.append(time.perf_counter() - t0)

    svc.pipeline._emit = timed_emit
    probe = mqtt_probe(mosquitto, [f"{BASE}/verdict", f"{BASE}/alarm"])
    runner = threading.Thread(target=svc.run, daemon=True)
    runner.start()
    try:
        try:
            until(lambda: svc.pipeline.counts["verdicts"] == n, 180, f"{n} verdicts decided")
            assert entered.is_set() and svc.verdict_log.counters["written"] == 0  # really stalled, from the first
            assert len([m for m in probe.all if m.topic == f"{BASE}/verdict"]) <= 1  # what preceded the hang
            assert len(emits) == n and max(emits) < 0.5, emits
            dropped = svc.pub_q.counters
            assert dropped["pictures_dropped_bytes"] >= 1 and dropped["pictures_dropped_items"] >= 1, dropped
            kept = n - sum(dropped.values())
            assert kept >= 1 and svc.pub_q.held_bytes <= cfg.pipeline.publish_queue_mb * MiB
            alarm = probe.wait_for(lambda m: m.topic == f"{BASE}/alarm" and json.loads(m.payload)["code"]
                                   == "publish_stalled", timeout=10)
            assert "verdicts wait for the outputs" in json.loads(alarm.payload)["message"]
            assert dropped_series(svc) == {"queue_bytes": dropped["pictures_dropped_bytes"],
                                           "queue_items": dropped["pictures_dropped_items"]}
        finally:
            stuck.set()
        until(lambda: svc.verdict_log.counters["written"] == n, 60, "the backlog written")
        until(lambda: len({json.loads(m.payload)["seq"] for m in probe.all if m.topic == f"{BASE}/verdict"}) == n,
              30, "every verdict on MQTT")
        until(lambda: svc.pub_q.held_bytes == 0, 60, "the archive to finish with its frames")
    finally:  # also on a failure: no daemon threads left to disturb the next test
        svc.stop()
        runner.join(60)
    assert not runner.is_alive()
    assert len((tmp_path / "verdicts.jsonl").read_bytes().splitlines()) == n
    assert len(records(tmp_path, ".image.png")) == kept  # the frames whose pictures were kept, no more
    assert svc.pub_q.held_bytes == 0 and len(svc.pub_q) == 0


def test_each_verdict_encoded_once_and_each_heatmap_coloured_once(small_bundle, tmp_path, mosquitto, mqtt_probe,
                                                                  monkeypatch):
    """MQTT, ZeroMQ (verdict and image header), the verdict log and the archive get the very same bytes, made by
    one verdict_json call per verdict; the archive and the ZeroMQ feed share one colouring per heatmap."""
    n = 6
    encodes: collections.Counter[int] = collections.Counter()
    real_json = encoding.verdict_json

    def counting_json(obj):  # noqa: ANN001
        if isinstance(obj, dict) and obj.get("schema") == SCHEMA:
            encodes[obj["seq"]] += 1
        return real_json(obj)

    for module in (service_module, encoding, mqtt_sink, zmq_sink, archive, verdict_log):
        monkeypatch.setattr(module, "verdict_json", counting_json)
    coloured: list[np.ndarray] = []  # the maps themselves: kept alive, so their ids stay distinct
    real_colorize = encoding.colorize_heatmap

    def counting_colorize(amap, threshold):  # noqa: ANN001
        coloured.append(amap)
        return real_colorize(amap, threshold)

    monkeypatch.setattr(encoding, "colorize_heatmap", counting_colorize)

    image_endpoint = f"tcp://127.0.0.1:{free_port()}"
    cfg = station(small_bundle, frames(tmp_path, n, 256), tmp_path, mosquitto, mode="once",
                  image_endpoint=image_endpoint, rate_hz=4)  # paced: the ZeroMQ encoder keeps up
    ctx = zmq.Context()
    vsub, isub = ctx.socket(zmq.SUB), ctx.socket(zmq.SUB)
    for sock, endpoint, topic in ((vsub, cfg.outputs.zmq.verdict_endpoint, b"verdict"),
                                  (isub, image_endpoint, b"image")):
        sock.setsockopt(zmq.RCVHWM, 10_000)
        sock.connect(endpoint)
        sock.subscribe(topic)
    probe = mqtt_probe(mosquitto, [f"{BASE}/verdict"])
    try:
        svc = Service(cfg, notifier=Notifier(None), mqtt_wait_s=5)
        svc.run()
        until(lambda: len([m for m in probe.all if m.topic == f"{BASE}/verdict"]) == n, 20, "every verdict on MQTT")
        zmq_verdicts = [body for _topic, body in received(vsub)]
        zmq_images = received(isub)
    finally:
        ctx.destroy(linger=0)

    mqtt = {json.loads(m.payload)["seq"]: m.payload for m in probe.all if m.topic == f"{BASE}/verdict"}
    assert len(mqtt) == n and encodes == collections.Counter(dict.fromkeys(mqtt, 1))  # once per verdict
    logged = (tmp_path / "verdicts.jsonl").read_bytes().splitlines()
    assert {json.loads(line)["seq"]: line for line in logged} == mqtt
    assert {seq: p.read_bytes() for seq, p in records(tmp_path, ".json").items()} == mqtt
    assert zmq_verdicts and all(mqtt[json.loads(body)["seq"]] == body for body in zmq_verdicts)
    shown = set()
    for _topic, header, _image, heatmap in zmq_images:
        seq = json.loads(header)["verdict"]["seq"]
        assert header.startswith(b'{"verdict":' + mqtt[seq] + b",")
        if heatmap:
            shown.add(seq)
    archived = set(records(tmp_path, ".heatmap.png"))
    assert archived == set(mqtt) and shown & archived, (shown, archived)  # both outputs used the same maps
    assert len(coloured) == n and len({id(a) for a in coloured}) == n  # one colouring per frame, for both
    assert svc.pub_q.held_bytes == 0
