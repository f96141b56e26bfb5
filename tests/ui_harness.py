"""What the UI tests share: a station publishing real verdicts through the daemon's own ZmqSink, the UI app
served by a real uvicorn in a thread (for the event stream and the browser), and a real daemon (Service.run on a
thread, as `linesight run` runs it) running a fitted project's active version with MQTT on a test broker."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from linesight.config.daemon import DaemonConfig
from linesight.config.outputs import ArchiveConfig, ZmqConfig
from linesight.config.ui import UiConfig
from linesight.daemon import verdict as V
from linesight.daemon.sinks.archive import Archive
from linesight.daemon.sinks.encoding import Pictures
from linesight.daemon.sinks.zmq_sink import ZmqSink
from linesight.daemon.sources.base import Frame
from linesight.export import analysis as A
from linesight.export.prediction import Prediction

MODEL = {"id": "tile-test", "version": 3, "hash": "0123456789abcdef"}
TREND_MODEL = {"id": "tile-test", "version": 4, "hash": "fedcba9876543210"}  # its first verdict restarts burn-ins
THRESHOLD = 1.0
TOKEN = "test-token-0123456789abcdef"
WHO = "anna"  # the name TOKEN has in the tokens file of commanded_ui
MQTT_LEVELS = {"site": "s1", "line": "l1", "station": "cam1"}
BASE = "linesight/s1/l1/cam1"


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
                with_picture: bool = True, score: float | None = None, model: dict | None = None) -> dict[str, Any]:
        """A made-up frame and map (NG: a blob above threshold), or a fail-safe verdict; `score` (else 3.0 NG,
        0.4 OK) and `model` (else MODEL) for the trend charts."""
        image, amap = picture(seq, ng)
        if fail_safe is not None:
            frame = Frame(image=image, seq=seq, host_ts_ns=time.time_ns(), source="cam1")
            v = V.build(frame, failure=V.Failure(V.FailSafe(fail_safe), "test: frame not decided"),
                        **self._common(seq, run, MODEL))
            d = v.to_dict()
            self.sink.publish(d, Pictures(image, amap, THRESHOLD) if with_picture else None)
            return d
        score = (3.0 if ng else 0.4) if score is None else score
        return self._decided(seq, run, image, Prediction(score, "NG" if ng else "OK", THRESHOLD, amap, model=model),
                             THRESHOLD, with_picture)

    def publish_scored(self, seq: int, image: np.ndarray, engine: Any, *, run: int = 2) -> dict[str, Any]:
        """A real image through a real engine, as the daemon's pipeline does it."""
        pred = engine.predict_batch([image], regions=False)[0]
        return self._decided(seq, run, image, pred, engine.pixel_threshold, True)

    def _common(self, seq: int, run: int, model: dict) -> dict[str, Any]:
        return dict(seq=seq, run=run, part_id=f"P-{seq:05d}", station=self.name, model=model, deadline_ms=200)

    def _decided(self, seq: int, run: int, image: np.ndarray, pred: Prediction, pixel_threshold: float,
                 with_picture: bool) -> dict[str, Any]:
        d = decided(image, pred, pixel_threshold, **self._common(seq, run, pred.model or MODEL))
        self.sink.publish(d, Pictures(image, lambda: pred.anomaly_map, pixel_threshold) if with_picture else None)
        return d

    def close(self) -> None:
        self.sink.close()


def decided(image: np.ndarray, pred: Prediction, pixel_threshold: float, **identity: Any) -> dict[str, Any]:
    """The verdict the daemon's pipeline makes of a prediction: V.build, with the defect analysis on NG."""
    frame = Frame(image=image, seq=identity["seq"], host_ts_ns=time.time_ns(), source="cam1")
    found = None
    if pred.verdict == "NG":
        a = A.analyze(pred, pixel_threshold, image)
        found = V.VerdictAnalysis.model_validate({**A.to_verdict_dict(a), "verdict": a.decision.verdict})
    return V.build(frame, prediction=pred, analysis=found, inference_ms=5.0, **identity).to_dict()


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


def publish_parts(station: Station, first_seq: int, n: int, rng: np.random.Generator, charted: Callable[[], int],
                  *, p_ng: float = 0.03, score_factor: float = 1.0, chunk: int = 100) -> int:
    """`n` decided parts of TREND_MODEL from `first_seq`: NG with probability `p_ng` (score 3 x noise), OK with
    score 0.4 x `score_factor` x noise (log sd 0.1); published in chunks, each waited for until `charted()` (parts
    the UI charted) counts it, since a PUB socket drops what a slow subscriber has not taken. The next seq."""
    for start in range(first_seq, first_seq + n, chunk):
        seqs = range(start, min(start + chunk, first_seq + n))
        target = charted() + len(seqs)
        for seq in seqs:
            ng = bool(rng.random() < p_ng)
            noise = float(np.exp(rng.normal(0.0, 0.1)))
            station.publish(seq, ng=ng, score=(3.0 if ng else 0.4 * score_factor) * noise, model=TREND_MODEL,
                            with_picture=False)
        wait_for(lambda t=target: charted() >= t, what=f"the UI to chart seq {seqs[-1]}")
    return first_seq + n


def ui_config(stations: list[Station], trends: dict | None = None, **extra: Any) -> UiConfig:
    """One UI station per Station; `trends` is each one's trends section."""
    more = {} if trends is None else {"trends": trends}
    return UiConfig.model_validate({"stations": [{"name": s.name, "verdict_endpoint": s.endpoints[0],
                                                  "image_endpoint": s.endpoints[1], **more} for s in stations],
                                    **extra})


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


# ------------------------------------------------------------------------------------------ a real station
def fitted_project(root: Path) -> Any:
    """A project with version 1 fitted on ten real good tiles (random-init features, tiny input) and active."""
    from helpers import need_data
    from linesight.config.project import TrainConfig
    from linesight.project.data import add_images
    from linesight.project.training import fit_version
    from linesight.project.workspace import Project

    p = Project.init(root)
    add_images(p, sorted((need_data() / "train" / "good").iterdir())[:10])
    fit_version(p, TrainConfig(fit={"weights": "none", "input_size": 96, "embedding_dim": 64}, test_fraction=0.3))
    p.activate(1)
    return p


def station_config(project: Any, broker_port: int) -> DaemonConfig:
    """A project station as `linesight run` would load it: synthetic camera at 5 Hz, every frame archived into the
    project's detect_results/, MQTT commands on the test broker, no ZeroMQ or metrics ports."""
    return DaemonConfig.model_validate({
        "model": {"project": str(project.root)},
        "source": {"type": "synthetic", "name": "synth", "width": 96, "height": 80, "rate_hz": 5},
        "pipeline": {"deadline_ms": 60000},
        "outputs": {"mqtt": {"enabled": True, "host": "127.0.0.1", "port": broker_port, **MQTT_LEVELS,
                             "reconnect_min_s": 1, "reconnect_max_s": 1, "keepalive_s": 5},
                    "archive": {"enabled": True, "dir": str(project.results_dir), "save_ok_fraction": 1.0},
                    "zmq": {"enabled": False}, "metrics": {"enabled": False}}})


@contextmanager
def running(cfg: DaemonConfig) -> Iterator[Any]:
    """`Service.run()` on its own thread until the block ends; yields the Service once its commands are
    subscribed (it answers them from then on)."""
    from linesight.daemon.notify import Notifier
    from linesight.daemon.service import Service

    svc = Service(cfg, notifier=Notifier(None))
    errors: list[BaseException] = []

    def run() -> None:
        try:
            svc.run()
        except Exception as exc:  # noqa: BLE001 - re-raised on the test thread below
            errors.append(exc)

    thread = threading.Thread(target=run, name="linesight-run", daemon=True)
    thread.start()
    try:
        wait_for(lambda: errors or (svc.mqtt is not None and svc.mqtt.commands_ready), timeout=60,
                 what="the station's command subscription")
        assert not errors, errors
        yield svc
    finally:
        svc.stop()
        thread.join(60)
    assert not thread.is_alive(), "the station did not stop"
    assert not errors, errors


def commanded_ui(tmp: Path, broker_port: int, archive: Path | None, **mqtt: Any) -> UiConfig:
    """A UI config with one station 'line3' commanded over MQTT (the daemon's topic levels) and reviewed from
    `archive`; TOKEN is named WHO in the tokens file."""
    tokens = tmp / "ui-tokens"
    tokens.write_text(f"# who may act\n{WHO}:{TOKEN}\n")
    return UiConfig.model_validate({
        "stations": [{"name": "line3", "verdict_endpoint": "tcp://127.0.0.1:1",
                      "mqtt": {"port": broker_port, **MQTT_LEVELS, **mqtt},
                      "archive_dir": None if archive is None else str(archive)}],
        "auth": {"tokens_file": str(tokens)}})


def archived(root: Path, n: int) -> list[dict]:
    """n verdicts as the pipeline makes them (every third NG, analysed, its type and grade set here; two model
    versions) written by the daemon's own Archive."""
    archive = Archive(ArchiveConfig(enabled=True, dir=root, save_ok_fraction=1.0, image_format="png"))
    out = []
    for seq in range(1, n + 1):
        ng = seq % 3 == 0
        image, amap = picture(seq, ng=ng)
        model = {"id": "tiles", "version": 1 if seq <= n // 2 else 2, "hash": "0123456789abcdef"}
        v = decided(image, Prediction(3.0 + seq / 100 if ng else 0.4, "NG" if ng else "OK", 1.0, amap, model=model),
                    1.0, seq=seq, run=7, part_id=f"P/{seq}", station="s1/l1/cam1", model=model, deadline_ms=200)
        if ng:
            v["defects"] = [{**d, "type": "crack" if seq % 2 else "spot"} for d in v["defects"]]
            v["grade"] = "reject" if seq % 2 else None
        assert archive.save(v, Pictures(image, amap, 1.0))
        out.append(v)
    return out
