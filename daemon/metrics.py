"""Prometheus metrics and the `/metrics` + `/healthz` HTTP endpoint of the daemon.

Why a private CollectorRegistry: the process-global registry would leak series between daemon
instances in tests and pick up unrelated library metrics; each `Metrics` owns exactly what it exposes.

Every label has a fixed, small value set (validated here, unknown values become "other" with one
warning) so a bug upstream can never create unbounded series on a 24/7 box.

Hot-path cost: each update is one prometheus_client call (~1 us); nothing here does I/O on the
caller's thread. The HTTP server runs on its own daemon thread.
"""

from __future__ import annotations

import errno
import json
import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from linesight.errors import ConfigError

log = logging.getLogger(__name__)

VERDICTS = ("OK", "NG")
FAILSAFE_REASONS = ("deadline_missed", "frame_dropped", "inference_error", "no_model", "camera_error", "bad_frame",
                    "alignment_failed")
FRAME_DROP_REASONS = ("queue_full", "incomplete", "timeout", "bad_frame", "camera_error", "other")
STAGES = ("acquire", "preprocess", "inference", "analysis", "publish")
DEFAULT_QUEUES = ("acquire", "inference", "publish", "archive")
#: trigger_to_verdict buckets as multiples of the deadline: resolution where it matters (near the deadline).
DEADLINE_MULTIPLES = (0.25, 0.5, 0.75, 0.9, 1.0, 1.25, 2.0, 4.0)
INFERENCE_BUCKETS = (0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0)
STAGE_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
#: Every alarm code the daemon raises (Service.alarm, Pipeline, MqttSink; each fail-safe reason is also
#: an alarm code), so linesight_alarms_total{code} has a fixed series set; anything new counts as "other"
#: (with one warning) until it is added here. tests/test_metrics_http.py checks the sources against it.
ALARM_CODES = tuple(dict.fromkeys((
    "camera_down", "camera_up", "camera_error", "no_model", "model_changed", "model_refused", "model_warning",
    "analysis_error", "archive_error", "mqtt_down", "verdicts_dropped", *FAILSAFE_REASONS, "other",
)))
#: A sink that raises alarms itself (the MQTT sink's verdicts_dropped, sent on reconnect, never passes
#: through Service.alarm) counts them as `alarm_<code>` in its counters dict; they are exposed as
#: linesight_alarms_total{code}, not as sink events.
SINK_ALARM_PREFIX = "alarm_"
HEALTH_OK = ("ok", "degraded")  # answered with 200; anything else -> 503

HealthFn = Callable[[], Mapping[str, Any]]


def listen_http(host: str, port: int, handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
    """Bind the metrics HTTP server (SO_REUSEADDR, like every http.server); the start-up check binds and
    closes it the same way, so a port it passes is one `serve` can take. ConfigError names the fix."""
    try:
        return ThreadingHTTPServer((host, port), handler)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            why = f"port {port} on {host} is in use (another linesight or exporter?); stop it or change metrics.port"
        else:
            why = (f"cannot listen on {host}:{port} ({exc.strerror or exc}); metrics.host must be an address of "
                   "this machine (127.0.0.1, or the plant-network address) and metrics.port a free port")
        raise ConfigError(why, field="outputs.metrics.port") from None


class _SinkCollector(Collector):
    """Reads sink counter dicts at scrape time, so sinks need no metrics calls on their hot path."""

    def __init__(self) -> None:
        self._sources: dict[str, Callable[[], Mapping[str, int]]] = {}

    def add(self, name: str, counters: Callable[[], Mapping[str, int]]) -> None:
        self._sources[name] = counters

    def describe(self) -> Iterable[CounterMetricFamily]:
        yield CounterMetricFamily("linesight_sink_events", "Sink events (sent, dropped_*, errors) by sink.",
                                  labels=("sink", "event"))

    def collect(self) -> Iterable[CounterMetricFamily]:
        fam = CounterMetricFamily("linesight_sink_events", "Sink events (sent, dropped_*, errors) by sink.",
                                  labels=("sink", "event"))
        for sink, fn in list(self._sources.items()):
            try:
                counters = fn()
            except Exception:
                log.exception("metrics: counters of sink %s unavailable", sink)
                continue
            for event, value in sorted(counters.items()):
                if not event.startswith(SINK_ALARM_PREFIX):
                    fam.add_metric((sink, event), float(value))
        yield fam

    def alarm_counts(self) -> dict[str, int]:
        """`alarm_<code>` counters of every watched sink, summed per code."""
        out: dict[str, int] = {}
        for fn in list(self._sources.values()):
            try:
                counters = fn()
            except Exception:  # collect() logs it (with traceback) at the same scrape
                log.debug("metrics: sink counters unavailable for linesight_alarms_total", exc_info=True)
                continue
            for event, value in counters.items():
                if event.startswith(SINK_ALARM_PREFIX):
                    code = event.removeprefix(SINK_ALARM_PREFIX)
                    out[code] = out.get(code, 0) + int(value)
        return out


class _AlarmCollector(Collector):
    """linesight_alarms_total{code}: alarms raised through `Metrics.alarm_raised` plus the sinks' own.

    Why a collector and not a Counter: the MQTT sink's alarms live in its counters dict (read at scrape,
    like linesight_sink_events_total) and must add up with the daemon's into one series per code."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def describe(self) -> Iterable[CounterMetricFamily]:
        yield CounterMetricFamily("linesight_alarms", "Alarms raised, by code.", labels=("code",))

    def collect(self) -> Iterable[CounterMetricFamily]:
        m = self._metrics
        with m._alarm_lock:  # noqa: SLF001 - the collector is part of Metrics
            counts = dict(m._alarm_counts)  # noqa: SLF001
        for code, n in m._sinks.alarm_counts().items():  # noqa: SLF001
            label = m._bounded("linesight_alarms_total", code, ALARM_CODES)  # noqa: SLF001
            counts[label] += n
        fam = CounterMetricFamily("linesight_alarms", "Alarms raised, by code.", labels=("code",))
        for code in ALARM_CODES:  # every code, 0 included: increase() needs the 0 sample to exist
            fam.add_metric((code,), float(counts[code]))
        yield fam


class Metrics:
    """All daemon metrics on a private registry, plus the HTTP endpoint (`serve`/`stop`)."""

    def __init__(self, deadline_s: float = 0.2, queues: Sequence[str] = DEFAULT_QUEUES) -> None:
        if deadline_s <= 0:
            raise ConfigError(f"metrics: deadline_s must be > 0, got {deadline_s}")
        self.deadline_s = deadline_s
        self.queues = tuple(queues)
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.frames = Counter("linesight_frames", "Frames received from the camera.", registry=r)
        self.frames_dropped = Counter("linesight_frames_dropped", "Frames dropped before a verdict, by reason.",
                                      ("reason",), registry=r)
        self.verdicts = Counter("linesight_verdicts", "Verdicts published, by verdict (fail-safe ones count as NG).",
                                ("verdict",), registry=r)
        self.failsafe = Counter("linesight_failsafe", "Fail-safe (forced NG) verdicts, by reason.", ("reason",),
                                registry=r)
        self.deadline_missed = Counter("linesight_deadline_missed", "Verdicts that missed their deadline.",
                                       registry=r)
        self.inference_seconds = Histogram("linesight_inference_seconds", "Model inference time.",
                                           buckets=INFERENCE_BUCKETS, registry=r)
        self.stage_seconds = Histogram("linesight_stage_seconds", "Time per pipeline stage.", ("stage",),
                                       buckets=STAGE_BUCKETS, registry=r)
        self.trigger_to_verdict = Histogram(
            "linesight_trigger_to_verdict_seconds", "Camera trigger to published verdict.",
            buckets=tuple(round(m * deadline_s, 6) for m in DEADLINE_MULTIPLES), registry=r,
        )
        self.camera_up = Gauge("linesight_camera_up", "1 while the camera delivers frames.", registry=r)
        self.mqtt_connected = Gauge("linesight_mqtt_connected", "1 while connected to the MQTT broker.", registry=r)
        self.queue_depth = Gauge("linesight_queue_depth", "Items waiting in internal queues.", ("queue",), registry=r)
        self.archive_bytes = Gauge("linesight_archive_bytes", "Bytes used by the frame archive.", registry=r)
        self.model_info = Gauge("linesight_model_info", "Active model (value is always 1).",
                                ("model_id", "version", "hash"), registry=r)
        self.up = Gauge("linesight_up", "1 while the inspection pipeline is running.", registry=r)
        self._sinks = _SinkCollector()
        r.register(self._sinks)
        self._alarm_lock = threading.Lock()
        self._alarm_counts = dict.fromkeys(ALARM_CODES, 0)
        r.register(_AlarmCollector(self))
        # Pre-create every bounded label value: rate()/increase() need the 0 sample to exist.
        for v in VERDICTS:
            self.verdicts.labels(v)
        for reason in FAILSAFE_REASONS:
            self.failsafe.labels(reason)
        for reason in FRAME_DROP_REASONS:
            self.frames_dropped.labels(reason)
        for stage in STAGES:
            self.stage_seconds.labels(stage)
        for q in self.queues:
            self.queue_depth.labels(q)
        self._warned: set[tuple[str, str]] = set()
        self._up = False
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ updates (hot path)

    def _bounded(self, metric: str, value: str, allowed: Sequence[str]) -> str | None:
        if value in allowed:
            return value
        if (metric, value) not in self._warned and len(self._warned) < 100:
            self._warned.add((metric, value))
            log.warning("metrics: %s label %r is not one of %s; counted as 'other' where possible", metric, value, allowed)
        return "other" if "other" in allowed else None

    def alarm_raised(self, code: str) -> None:
        """Count one alarm (Service.alarm calls this for every alarm it raises, sent over MQTT or not)."""
        label = self._bounded("linesight_alarms_total", code, ALARM_CODES)
        with self._alarm_lock:
            self._alarm_counts[label] += 1

    def frame_received(self) -> None:
        self.frames.inc()

    def frame_dropped(self, reason: str) -> None:
        label = self._bounded("linesight_frames_dropped_total", reason, FRAME_DROP_REASONS)
        self.frames_dropped.labels(label).inc()

    def record_verdict(self, verdict: Mapping[str, Any]) -> None:
        """Count one published verdict (schema linesight.verdict/1): verdict, fail-safe reason,
        deadline miss, inference time (latency_ms.inference) and trigger-to-verdict (latency_ms.total).
        Do not also call observe_inference/observe_trigger_to_verdict for the same verdict."""
        label = self._bounded("linesight_verdicts_total", str(verdict.get("verdict")), VERDICTS)
        if label is not None:
            self.verdicts.labels(label).inc()
        reason = verdict.get("reason")
        if reason in FAILSAFE_REASONS:
            self.failsafe.labels(reason).inc()
            if reason == "deadline_missed":
                self.deadline_missed.inc()
        latency = verdict.get("latency_ms") or {}
        if isinstance(latency.get("inference"), (int, float)):
            self.inference_seconds.observe(latency["inference"] / 1000.0)
        if isinstance(latency.get("total"), (int, float)):
            self.trigger_to_verdict.observe(latency["total"] / 1000.0)

    def observe_inference(self, seconds: float) -> None:
        self.inference_seconds.observe(seconds)

    def observe_trigger_to_verdict(self, seconds: float) -> None:
        self.trigger_to_verdict.observe(seconds)

    def observe_stage(self, stage: str, seconds: float) -> None:
        label = self._bounded("linesight_stage_seconds", stage, STAGES)
        if label is not None:
            self.stage_seconds.labels(label).observe(seconds)

    def set_camera_up(self, up: bool) -> None:
        self.camera_up.set(1 if up else 0)

    def watch_mqtt_connected(self, connected: Callable[[], bool]) -> None:
        """Read at scrape time: a gauge set from the stats tick lagged the broker's return by up to 10 s."""
        self.mqtt_connected.set_function(lambda: 1.0 if connected() else 0.0)

    def set_queue_depth(self, queue: str, depth: int) -> None:
        label = self._bounded("linesight_queue_depth", queue, self.queues)
        if label is not None:
            self.queue_depth.labels(label).set(depth)

    def set_archive_bytes(self, n: int) -> None:
        self.archive_bytes.set(n)

    def set_model(self, identity: dict) -> None:
        """Replace the model_info series (exactly one series exists after a hot model swap)."""
        self.model_info.clear()
        self.model_info.labels(str(identity["id"]), str(identity["version"]), str(identity["hash"])).set(1)

    def set_up(self, up: bool) -> None:
        self._up = bool(up)
        self.up.set(1 if up else 0)

    def watch_sink(self, name: str, counters: Callable[[], Mapping[str, int]]) -> None:
        """Expose a sink's `counters` dict as linesight_sink_events_total{sink=name,event=key} (read at scrape);
        keys `alarm_<code>` go to linesight_alarms_total{code} instead."""
        if name not in ("mqtt", "zmq", "archive"):
            raise ValueError(f"watch_sink name must be mqtt, zmq or archive, got {name!r}")
        self._sinks.add(name, counters)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    # ------------------------------------------------------------------ HTTP

    def serve(self, host: str = "127.0.0.1", port: int = 9108, health: HealthFn | None = None) -> int:
        """Start `/metrics` and `/healthz` on a background thread; returns the bound port (port 0 = any).

        `health()` returns e.g. {"status": "ok"|"degraded"|"unhealthy", ...}: ok/degraded answer 200,
        anything else (or an exception) 503. Without it, health follows linesight_up.
        """
        if self._server is not None:
            raise RuntimeError("Metrics.serve() called twice")
        server = listen_http(host, port, _make_handler(self, health))
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="metrics-http", daemon=True)
        self._thread.start()
        bound = server.server_address[1]
        log.info("metrics serving http://%s:%d/metrics and /healthz", host, bound)
        return bound

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(2)
        self._server = self._thread = None

    def default_health(self) -> dict[str, Any]:
        return {"status": "ok" if self._up else "unhealthy"}


def _make_handler(metrics: Metrics, health: HealthFn | None) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "linesight-metrics"

        def do_GET(self) -> None:  # noqa: N802 - http.server API
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, CONTENT_TYPE_LATEST, metrics.exposition())
            elif path == "/healthz":
                code, body = _health_response(metrics, health)
                self._send(code, "application/json", body)
            else:
                self._send(404, "text/plain; charset=utf-8", b"not found; try /metrics or /healthz\n")

        def _send(self, code: int, ctype: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt: str, *args: Any) -> None:  # keep scrapes out of stderr
            log.debug("metrics http %s " + fmt, self.client_address[0], *args)

    return Handler


def _health_response(metrics: Metrics, health: HealthFn | None) -> tuple[int, bytes]:
    try:
        report = dict(health() if health is not None else metrics.default_health())
        status = report.get("status")
    except Exception as exc:
        log.exception("metrics: health callback failed")
        report, status = {"status": "unhealthy", "error": f"health check failed: {type(exc).__name__}"}, "unhealthy"
    code = 200 if status in HEALTH_OK else 503
    return code, json.dumps(report, default=str).encode()
