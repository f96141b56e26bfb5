"""ZmqSink with real ZeroMQ SUB sockets over TCP: wire format, never blocking on slow subscribers,
image encoding skipped without listeners, and the documented example subscriber."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import zmq

from linesight.config.outputs import ZmqConfig
from linesight.daemon.sinks.encoding import Pictures
from linesight.daemon.sinks.zmq_sink import ZmqSink
from linesight.errors import ConfigError

THRESHOLD = 2.0


def verdict(seq: int) -> dict[str, Any]:
    return {"schema": "linesight.verdict/1", "seq": seq, "part_id": f"A-{seq:06d}", "verdict": "NG",
            "reason": "score_above_threshold", "score": np.float32(3.5), "threshold": THRESHOLD, "deadline_ms": 200}


def iso_now() -> str:
    """host_ts as the daemon writes it (ISO-8601 UTC, milliseconds, Z)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@pytest.fixture
def ctx():
    c = zmq.Context()
    yield c
    c.destroy(linger=0)


@pytest.fixture
def endpoints(free_tcp_port):
    return f"tcp://127.0.0.1:{free_tcp_port()}", f"tcp://127.0.0.1:{free_tcp_port()}"


def sub(ctx: zmq.Context, endpoint: str, topic: bytes, hwm: int = 1000) -> zmq.Socket:
    s = ctx.socket(zmq.SUB)
    s.setsockopt(zmq.RCVHWM, hwm)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(endpoint)
    s.subscribe(topic)
    return s


def publish_until_received(sink: ZmqSink, sock: zmq.Socket, image=None, heatmap=None, timeout=5.0):  # noqa: ANN001
    """PUB/SUB 'slow joiner': a subscription takes a moment to reach the publisher."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sink.publish(verdict(-1), Pictures(image, heatmap, THRESHOLD))
        if sock.poll(50):
            return sock.recv_multipart()
    raise AssertionError("subscriber received nothing")


def test_multipart_wire_format(ctx, endpoints) -> None:
    vep, iep = endpoints
    sink = ZmqSink(ZmqConfig(verdict_endpoint=vep, image_endpoint=iep, image_format="png"))
    try:
        vsub, isub = sub(ctx, vep, b"verdict"), sub(ctx, iep, b"image")
        image = np.tile(np.arange(200, dtype=np.uint8), (120, 1))  # 120x200 gray ramp
        heatmap = np.zeros((30, 50), np.float32)
        heatmap[:, 20:30] = 2.0  # == threshold -> mid-scale
        heatmap[:, 40:] = 9.0  # > 2x threshold -> saturated
        publish_until_received(sink, vsub)
        publish_until_received(sink, isub, image, heatmap)
        # drain probes, then one real message on each socket
        time.sleep(0.1)
        for s in (vsub, isub):
            while s.poll(0):
                s.recv_multipart()
        analysis = {"decision": {"verdict": "NG", "basis": "spec"}, "regions": [{"type": "crack"}]}
        sink.publish(verdict(7), Pictures(image, heatmap, THRESHOLD), analysis=analysis)
        assert vsub.poll(2000) and isub.poll(2000)
        topic, body = vsub.recv_multipart()
        assert topic == b"verdict"
        assert json.loads(body) == {**verdict(7), "score": 3.5}  # numpy scalar serialised as a number
        topic, header, img_bytes, hm_bytes = isub.recv_multipart()
        assert topic == b"image"
        assert header.startswith(b'{"verdict":' + body + b",")  # the very bytes of the verdict message
        meta = json.loads(header)
        assert meta["verdict"] == json.loads(body) and meta["analysis"] == analysis
        assert meta["image"] == {"format": "png", "width": 200, "height": 120, "channels": 1, "bit_depth": 8}
        assert meta["heatmap"]["width"] == 50 and meta["heatmap"]["height"] == 30
        decoded = cv2.imdecode(np.frombuffer(img_bytes, np.uint8), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(decoded, image)  # PNG is lossless
        hm = cv2.imdecode(np.frombuffer(hm_bytes, np.uint8), cv2.IMREAD_COLOR)
        assert hm.shape == (30, 50, 3)
        jet = cv2.applyColorMap(np.array([[0, 127, 255]], np.uint8), cv2.COLORMAP_JET)[0]
        np.testing.assert_array_equal(hm[0, 0], jet[0])  # 0 -> bottom of the colour map (dark blue)
        np.testing.assert_array_equal(hm[0, 25], jet[1])  # threshold -> mid-scale
        np.testing.assert_array_equal(hm[0, 45], jet[2])  # >= 2x threshold -> top (dark red)
    finally:
        sink.close()


def test_slow_subscribers_never_block_verdicts(ctx, endpoints) -> None:
    vep, iep = endpoints
    # A verdict HWM big enough for the whole burst so the *reading* subscriber provably gets every
    # message; the point is that the image subscriber and a stuck verdict subscriber never block us.
    sink = ZmqSink(ZmqConfig(verdict_endpoint=vep, image_endpoint=iep, verdict_sndhwm=20_000, image_sndhwm=4))
    received: list[int] = []
    try:
        vsub = sub(ctx, vep, b"verdict", hwm=20_000)
        stuck_verdicts = sub(ctx, vep, b"verdict", hwm=4)  # never read
        stuck_images = sub(ctx, iep, b"image", hwm=4)  # never read
        publish_until_received(sink, vsub)
        time.sleep(0.2)  # let the stuck subscribers' subscriptions arrive too
        while vsub.poll(0):
            vsub.recv_multipart()

        def reader() -> None:
            while len(received) < 10_000 and vsub.poll(5000):
                received.append(json.loads(vsub.recv_multipart()[1])["seq"])

        t = threading.Thread(target=reader)
        t.start()
        rng = np.random.default_rng(0)
        image = rng.integers(0, 255, (480, 640), dtype=np.uint8)
        heatmap = rng.random((60, 80), dtype=np.float32) * 4
        worst = 0.0
        t0 = time.perf_counter()
        for seq in range(10_000):
            t1 = time.perf_counter()
            sink.publish(verdict(seq), Pictures(image, heatmap, THRESHOLD))
            worst = max(worst, time.perf_counter() - t1)
        elapsed = time.perf_counter() - t0
        t.join(20)
        c = sink.counters
        print(f"10k publishes: {elapsed:.2f}s ({elapsed / 1e4 * 1e6:.0f} us/call, worst {worst * 1e3:.1f} ms); {c}")
        assert elapsed < 5.0, f"publishing 10k frames took {elapsed:.1f}s"
        assert received == list(range(10_000))
        assert c["verdicts_sent"] >= 10_000
        # the encoder could not keep up with 10k frames/s: older frames were replaced, not queued
        assert c["images_superseded"] > 0
        assert c["images_sent"] + c["images_superseded"] + c["images_skipped_no_subscriber"] >= 9_000
        assert stuck_images.poll(0)  # it got a few, then libzmq dropped the rest for it alone
        assert stuck_verdicts.poll(0)
    finally:
        sink.close()


def test_no_image_subscriber_skips_encoding(endpoints) -> None:
    vep, iep = endpoints
    sink = ZmqSink(ZmqConfig(verdict_endpoint=vep, image_endpoint=iep))
    try:
        img = np.zeros((64, 64), np.uint8)
        for seq in range(20):
            sink.publish(verdict(seq), Pictures(img))
            time.sleep(0.005)
        time.sleep(0.2)
        c = sink.counters
        assert c["images_sent"] == 0 and c["images_skipped_no_subscriber"] > 0
        assert c["verdicts_sent"] == 20
    finally:
        sink.close()


def test_bad_frame_does_not_kill_image_feed(ctx, endpoints) -> None:
    vep, iep = endpoints
    sink = ZmqSink(ZmqConfig(verdict_endpoint=vep, image_endpoint=iep, send_heatmap=False))
    try:
        isub = sub(ctx, iep, b"image")
        publish_until_received(sink, isub, np.zeros((8, 8), np.uint8))
        sink.publish(verdict(1), Pictures(np.zeros((8, 8), np.float64)))  # JPEG cannot take float64
        time.sleep(0.2)
        assert sink.counters["encode_errors"] == 1
        frames = publish_until_received(sink, isub, np.zeros((8, 8), np.uint8))
        assert frames[3] == b"" and json.loads(frames[1])["heatmap"] is None  # send_heatmap=False
    finally:
        sink.close()


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_16bit_frames_reach_the_hmi(ctx, endpoints, fmt) -> None:
    """Mono10..16 cameras deliver uint16: JPEG gets it scaled to 8 bit on the full 16-bit scale (what the model
    sees), PNG keeps all 16 bits. Both used to fail as encode_errors, so the HMI showed nothing."""
    vep, iep = endpoints
    sink = ZmqSink(ZmqConfig(verdict_endpoint=vep, image_endpoint=iep, image_format=fmt, jpeg_quality=100))
    try:
        isub = sub(ctx, iep, b"image")
        frame = np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (64, 1))  # 64x256 ramp, full 16-bit range
        frame[:, :8] = 4095  # the top of a 12-bit camera stays dark, as the model sees it
        _, header, img_bytes, _ = publish_until_received(sink, isub, frame)
        meta = json.loads(header)["image"]
        decoded = cv2.imdecode(np.frombuffer(img_bytes, np.uint8), cv2.IMREAD_UNCHANGED)
        assert sink.counters["encode_errors"] == 0
        if fmt == "png":
            assert meta["bit_depth"] == 16 and decoded.dtype == np.uint16
            np.testing.assert_array_equal(decoded, frame)
        else:
            assert meta["bit_depth"] == 8 and decoded.dtype == np.uint8 and decoded.shape == frame.shape
            expected = np.round(frame / 257.0)
            assert np.abs(decoded.astype(float) - expected).max() <= 3  # JPEG q100 rounding
            assert decoded[:, :8].max() <= 19 and decoded[:, -1].min() >= 252
    finally:
        sink.close()


def test_bind_conflict_is_a_clear_error(endpoints) -> None:
    vep, iep = endpoints
    first = ZmqSink(ZmqConfig(verdict_endpoint=vep, image_endpoint=None))
    try:
        with pytest.raises(ConfigError, match=f"cannot bind {vep}"):
            ZmqSink(ZmqConfig(verdict_endpoint=vep, image_endpoint=iep))
    finally:
        first.close()
    with pytest.raises(ValueError, match="not a ZeroMQ endpoint"):
        ZmqConfig(verdict_endpoint="127.0.0.1:5556")


def test_example_subscriber_script(endpoints, tmp_path) -> None:
    vep, iep = endpoints
    sink = ZmqSink(ZmqConfig(verdict_endpoint=vep, image_endpoint=iep))
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve().parents[1] / "examples" / "zmq_subscriber.py"),
         "--verdicts", vep, "--images", iep,
         "--save-dir", str(tmp_path), "--count", "5", "--timeout-s", "10"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        img = np.full((32, 48, 3), 128, np.uint8)
        seq = 0
        deadline = time.monotonic() + 15
        while proc.poll() is None and time.monotonic() < deadline:
            fresh = {**verdict(seq), "host_ts": iso_now(), "deadline_ms": 5000}  # the example drops stale ones
            sink.publish(fresh, Pictures(img, np.ones((8, 12), np.float32), THRESHOLD))
            seq += 1
            time.sleep(0.02)
        out, err = proc.communicate(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        sink.close()
    assert proc.returncode == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 5
    first = lines[0].split()
    assert first[2:4] == ["NG", "score_above_threshold"] and first[1].startswith("A-")
    assert (tmp_path / "latest_image.jpg").stat().st_size > 0
    assert (tmp_path / "latest_heatmap.jpg").stat().st_size > 0
