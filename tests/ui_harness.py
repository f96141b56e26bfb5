"""What the UI tests share: a station publishing real verdicts through the daemon's own ZmqSink, and the UI app
served by a real uvicorn in a thread (for the event stream and the browser)."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from linesight.config.outputs import ZmqConfig
from linesight.config.ui import UiConfig
from linesight.daemon import verdict as V
from linesight.daemon.sinks.encoding import Pictures
from linesight.daemon.sinks.zmq_sink import ZmqSink
from linesight.daemon.sources.base import Frame
from linesight.export import analysis as A
from linesight.export.prediction import Prediction

MODEL = {"id": "tile-test", "version": 3, "hash": "0123456789abcdef"}
THRESHOLD = 1.0
TOKEN = "test-token-0123456789abcdef"


def picture(seq: int, ng: bool) -> tuple[np.ndarray, np.ndarray]:
    """A 96x128 gray frame (a ramp, brighter with seq) and its anomaly map, with a blob above threshold if NG."""
    image = (np.tile(np.linspace(40, 200, 128), (96, 1)) + seq % 40).astype(np.uint8)
    amap = np.full((96, 128), 0.2, np.float32)
    if ng:
        amap[30:50, 60:90] = 3.0
    return image, amap


class Station:
    """A station's outputs as the daemon makes them: V.build verdicts (analysis on NG) through a bound ZmqSink."""

    def __init__(self, name: str, verdict_endpoint: str, image_endpoint: str) -> None:
        self.name = name
        self.endpoints = (verdict_endpoint, image_endpoint)
        self.sink = ZmqSink(ZmqConfig(verdict_endpoint=verdict_endpoint, image_endpoint=image_endpoint))

    def publish(self, seq: int, *, run: int = 2, ng: bool = False, fail_safe: str | None = None,
                with_picture: bool = True) -> dict[str, Any]:
        """A made-up frame and map (NG: a blob above threshold), or a fail-safe verdict."""
        image, amap = picture(seq, ng)
        if fail_safe is not None:
            frame = Frame(image=image, seq=seq, host_ts_ns=time.time_ns(), source="cam1")
            v = V.build(frame, failure=V.Failure(V.FailSafe(fail_safe), "test: frame not decided"),
                        **self._common(seq, run, MODEL))
            d = v.to_dict()
            self.sink.publish(d, Pictures(image, amap, THRESHOLD) if with_picture else None)
            return d
        score = 3.0 if ng else 0.4
        return self._decided(seq, run, image, Prediction(score, "NG" if ng else "OK", THRESHOLD, amap), THRESHOLD,
                             with_picture)

    def publish_scored(self, seq: int, image: np.ndarray, engine: Any, *, run: int = 2) -> dict[str, Any]:
        """A real image through a real engine, as the daemon's pipeline does it."""
        pred = engine.predict_batch([image], regions=False)[0]
        return self._decided(seq, run, image, pred, engine.pixel_threshold, True)

    def _common(self, seq: int, run: int, model: dict) -> dict[str, Any]:
        return dict(seq=seq, run=run, part_id=f"P-{seq:05d}", station=self.name, model=model, deadline_ms=200)

    def _decided(self, seq: int, run: int, image: np.ndarray, pred: Prediction, pixel_threshold: float,
                 with_picture: bool) -> dict[str, Any]:
        frame = Frame(image=image, seq=seq, host_ts_ns=time.time_ns(), source="cam1")
        found = None
        if pred.verdict == "NG":
            a = A.analyze(pred, pixel_threshold, image)
            found = V.VerdictAnalysis.model_validate({**A.to_verdict_dict(a), "verdict": a.decision.verdict})
        v = V.build(frame, prediction=pred, analysis=found, inference_ms=5.0, **self._common(seq, run, pred.model
                                                                                               or MODEL))
        d = v.to_dict()
        self.sink.publish(d, Pictures(image, lambda: pred.anomaly_map, pixel_threshold) if with_picture else None)
        return d

    def close(self) -> None:
        self.sink.close()


def wait_for(check: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def warm_up(station: Station, summary: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """PUB/SUB slow joiner: publish run-1 verdicts (seq 1, 2, ...) until the UI shows one with its frame; the
    tests then publish run 2 from seq 1000, so nothing they count is a warm-up."""
    seq = 0

    def arrived() -> dict[str, Any] | None:
        nonlocal seq
        seq += 1
        station.publish(seq, run=1)
        time.sleep(0.05)
        s = summary()
        return s if s["counters"]["verdicts"] and s["frame_seq"] is not None else None

    return wait_for(arrived, what=f"station {station.name}'s first verdict and frame in the UI")


def ui_config(stations: list[Station], **extra: Any) -> UiConfig:
    return UiConfig.model_validate({"stations": [{"name": s.name, "verdict_endpoint": s.endpoints[0],
                                                  "image_endpoint": s.endpoints[1]} for s in stations], **extra})


@contextmanager
def serve(app: Any, port: int) -> Iterator[str]:
    """The app on a real uvicorn at 127.0.0.1:port in a thread (lifespan included); yields its base URL."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, name="ui-server", daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, what="uvicorn to start")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
