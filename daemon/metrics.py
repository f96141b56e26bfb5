"""Prometheus metrics of the daemon (served with /healthz by daemon.metrics_http).

Longer than 400 lines because the catalogue of series (name, help text, bounded label set) stays beside the
one class that writes them: a series and its only writer are read together.

Why a private CollectorRegistry: the process-global registry would leak series between daemon
instances in tests and pick up unrelated library metrics; each `Metrics` owns exactly what it exposes.

Every label has a fixed, small value set (validated here, unknown values become "other" with one
warning) so a bug upstream can never create unbounded series on a 24/7 box.

Hot-path cost: each update is one prometheus_client call (~1 us); nothing here does I/O on the
caller's thread. The HTTP server runs on its own daemon thread.

Conventions: counters end in _total, no `_created` series (they double the series count and no dashboard
or rule here reads them), process_* and python_info come from prometheus_client's own collectors (a
private registry does not get them by itself), linesight_build_info says which release runs.
"""

from __future__ import annotations

import logging
import platform
import shutil
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from http.server import ThreadingHTTPServer
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from linesight import __version__
from linesight.daemon.metrics_http import HealthFn, listen_http, make_handler
from linesight.daemon.verdict import FAIL_SAFE_REASONS
from linesight.errors import ConfigError

if TYPE_CHECKING:
    from linesight.daemon.trends import TrendMonitor

log = logging.getLogger(__name__)
disable_created_metrics()  # process-wide in prometheus_client; nothing in linesight reads _created

VERDICTS = ("OK", "NG")
FAILSAFE_REASONS = FAIL_SAFE_REASONS  # the `reason` labels: daemon.verdict.FailSafe, the one definition
FRAME_DROP_REASONS = ("queue_full", "incomplete", "timeout", "bad_frame", "camera_error", "other")
#: acquire: trigger (or arrival) to the start of processing: transfer, decoding and waiting in the inference
#: queue; with preprocess, inference, analysis and publish it adds up to trigger_to_verdict.
STAGES = ("acquire", "preprocess", "inference", "analysis", "publish")
DEFAULT_QUEUES = ("acquire", "inference", "publish", "archive")
#: Absolute buckets, 1 ms to 10 s, at most ~1.5x apart, for every latency histogram: histogram_quantile
#: interpolates inside a bucket, so wide buckets invent latencies (deadline multiples showed p50 62.5 ms
#: for a true 32 ms); absolute bounds also stay comparable across stations with other deadlines.
LATENCY_BUCKETS = (0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05,
                   0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0)
#: anomaly score / the model's threshold: 1.0 is the decision boundary for every model, so one set of
#: buckets serves every bundle and a drift (OK parts creeping towards 1) survives a model swap.
SCORE_RATIO_BUCKETS = (0.1, 0.25, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 1.0, 1.05, 1.1, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0)
#: NG parts without typed defects (analysis off or failed: the score alone decided).
UNTYPED = "untyped"
FEEDBACK_LABELS = ("OK", "NG")
#: Every alarm code the daemon raises (Service.alarm, Pipeline, MqttSink; each fail-safe reason is also
#: an alarm code), so linesight_alarms_total{code} has a fixed series set; anything new counts as "other"
#: (with one warning) until it is added here. tests/test_metrics_http.py checks the sources against it.
ALARM_CODES = tuple(dict.fromkeys((
    "camera_down", "camera_up", "camera_error", "no_model", "model_changed", "model_refused", "model_warning",
    "analysis_error", "archive_error", "verdict_log_error", "mqtt_down", "verdicts_dropped", "publish_stalled",
    "trend_score", "trend_ng_rate", "trend_type",  # daemon.trends.ALARM_CODE: a trend chart left its limit
    *FAILSAFE_REASONS, "other",
)))
#: A sink that raises alarms itself (the MQTT sink's verdicts_dropped, sent on reconnect, never passes
#: through Service.alarm) counts them as `alarm_<code>` in its counters dict; they are exposed as
#: linesight_alarms_total{code}, not as sink counters.
SINK_ALARM_PREFIX = "alarm_"
#: Sink counter key -> (metric family, its labels besides `sink`). One family per meaning, so a sum over
#: a family means something (the old linesight_sink_events_total{event} added sends, drops and connects).
#: tests/test_metrics_http.py checks every key of every sink's counters dict is here.
SINK_COUNTERS: dict[str, tuple[str, tuple[str, ...]]] = {
    # delivered: MQTT handed to the client (verdicts, alarms, status, stats), ZeroMQ sent, archive/log written
    "published": ("sent", ("message",)), "verdicts_sent": ("sent", ("verdict",)), "images_sent": ("sent", ("image",)),
    "saved": ("sent", ("record",)), "written": ("sent", ("verdict",)),
    # should have gone out and did not
    "dropped_disconnected": ("dropped", ("disconnected",)), "dropped_queue_full": ("dropped", ("queue_full",)),
    "dropped_stale": ("dropped", ("stale",)),
    # the publish queue over its byte budget (or item cap): a frame's pictures dropped, its verdict still sent
    "pictures_dropped_bytes": ("dropped", ("queue_bytes",)), "pictures_dropped_items": ("dropped", ("queue_items",)),
    # not sent by design: the HMI gets the newest image only, and only while it subscribes; OK frames are sampled
    "images_superseded": ("skipped", ("superseded",)), "images_skipped_no_subscriber": ("skipped", ("no_subscriber",)),
    "skipped_ok": ("skipped", ("ok_not_sampled",)),
    "publish_errors": ("errors", ()), "encode_errors": ("errors", ()), "send_errors": ("errors", ()),
    "errors": ("errors", ()),
    "acked": ("mqtt_acked", ()), "connects": ("mqtt_connects", ()),
    "commands_ok": ("mqtt_commands", ("ok",)), "commands_rejected": ("mqtt_commands", ("rejected",)),
    "deleted_quota": ("archive_deleted", ("quota",)), "deleted_age": ("archive_deleted", ("age",)),
    "deleted_space": ("archive_deleted", ("disk_space",)),
}
#: family -> (metric name without _total, help, label names; "sink" first where the family has it)
SINK_FAMILIES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "sent": ("linesight_sink_sent", ("Delivered by an output (mqtt: handed to the client; archive, verdict_log: "
                                     "written), by sink and kind."), ("sink", "kind")),
    "dropped": ("linesight_sink_dropped", ("Not delivered although due (broker down, send queue full, stale after "
                                           "reconnect; publish: frame and heatmap dropped, the publish queue over "
                                           "pipeline.publish_queue_mb), by sink and reason."), ("sink", "reason")),
    "skipped": ("linesight_sink_skipped", ("Not sent by design (image replaced by a newer one, no image subscriber, "
                                           "OK frame not sampled for the archive), by sink and reason."),
                ("sink", "reason")),
    "errors": ("linesight_sink_errors", "Output errors (encode, send, write), by sink.", ("sink",)),
    "mqtt_acked": ("linesight_mqtt_acked", "QoS>0 messages the MQTT broker acknowledged.", ()),
    "mqtt_connects": ("linesight_mqtt_connects", "Successful MQTT (re)connections.", ()),
    "mqtt_commands": ("linesight_mqtt_commands", "MQTT commands executed (ok) or refused, by result.", ("result",)),
    "archive_deleted": ("linesight_archive_deleted", ("Archive records deleted by retention, by reason (disk_space: "
                                                      "early, to keep archive.min_free_bytes free)."), ("reason",)),
}
SINKS = ("mqtt", "zmq", "archive", "verdict_log", "publish")  # publish: the queue in front of them all
#: Trend charts with a series from the start (0 until the burn-in ends); type charts add one per defect type.
TREND_CHARTS = ("score", "ng_rate")


def _dist_version(dist: str) -> str:
    try:
        return version(dist)
    except PackageNotFoundError:
        return "none"


class _SinkCollector(Collector):
    """Reads sink counter dicts at scrape time, so sinks need no metrics calls on their hot path; each key
    goes to its family in SINK_COUNTERS (keys mapping to the same series add up, e.g. zmq's two error kinds)."""

    def __init__(self, warn: Callable[[str, str], None]) -> None:
        self._sources: dict[str, Callable[[], Mapping[str, int]]] = {}
        self._warn = warn

    def add(self, name: str, counters: Callable[[], Mapping[str, int]]) -> None:
        self._sources[name] = counters

    @staticmethod
    def _families() -> dict[str, CounterMetricFamily]:
        return {key: CounterMetricFamily(name, doc, labels=labels)
                for key, (name, doc, labels) in SINK_FAMILIES.items()}

    def describe(self) -> Iterable[CounterMetricFamily]:
        yield from self._families().values()

    def collect(self) -> Iterable[CounterMetricFamily]:
        values: dict[tuple[str, tuple[str, ...]], float] = {}
        for sink, fn in list(self._sources.items()):
            try:
                counters = fn()
            except Exception:
                log.exception("metrics: counters of sink %s unavailable", sink)
                continue
            for key, value in counters.items():
                if key.startswith(SINK_ALARM_PREFIX):
                    continue
                if key not in SINK_COUNTERS:
                    self._warn(f"sink counter of {sink}", key)
                    continue
                family, labels = SINK_COUNTERS[key]
                with_sink = SINK_FAMILIES[family][2][:1] == ("sink",)
                series = (family, (sink, *labels) if with_sink else labels)
                values[series] = values.get(series, 0.0) + float(value)
        fams = self._families()
        for (family, labels), value in sorted(values.items()):
            fams[family].add_metric(labels, value)
        yield from fams.values()

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
    like every sink counter) and must add up with the daemon's into one series per code."""

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


class _FramesCollector(Collector):
    """linesight_frames_total, read at scrape from the pipeline's own count: one count of frames, not two."""

    HELP = "Frames received from the camera."

    def __init__(self) -> None:
        self.read: Callable[[], int] = lambda: 0

    def describe(self) -> Iterable[CounterMetricFamily]:
        yield CounterMetricFamily("linesight_frames", self.HELP)

    def collect(self) -> Iterable[CounterMetricFamily]:
        yield CounterMetricFamily("linesight_frames", self.HELP, value=float(self.read()))


class _TrendCollector(Collector):
    """linesight_trend_ratio{chart,type}, read at scrape from the trend monitor: no per-frame metrics call."""

    HELP = ("Trend chart statistic / its control limit (|ratio| >= 1: out of control; score is signed, negative = "
            "scores fell; 0 during the burn-in), by chart and defect type (type charts).")

    def __init__(self, type_label: Callable[[str], str]) -> None:
        self.monitor: TrendMonitor | None = None
        self._type_label = type_label

    def describe(self) -> Iterable[GaugeMetricFamily]:
        yield GaugeMetricFamily("linesight_trend_ratio", self.HELP, labels=("chart", "type"))

    def collect(self) -> Iterable[GaugeMetricFamily]:
        values = {(chart, ""): 0.0 for chart in TREND_CHARTS}
        for c in self.monitor.state.charts if self.monitor is not None else ():
            key = (c.kind, "" if c.defect_type is None else self._type_label(c.defect_type))
            values[key] = max(values.get(key, float("-inf")), c.ratio) if c.kind == "type" else c.ratio
        fam = GaugeMetricFamily("linesight_trend_ratio", self.HELP, labels=("chart", "type"))
        for labels, value in values.items():
            fam.add_metric(labels, value)
        yield fam


class Metrics:
    """All daemon metrics on a private registry, plus the HTTP endpoint (`serve`/`stop`)."""

    def __init__(self, deadline_s: float = 0.2, queues: Sequence[str] = DEFAULT_QUEUES) -> None:
        if deadline_s <= 0:
            raise ConfigError(f"metrics: deadline_s must be > 0, got {deadline_s}")
        self.deadline_s = deadline_s
        self.queues = tuple(queues)
        r = self.registry = CollectorRegistry(auto_describe=True)
        self._frames = _FramesCollector()
        r.register(self._frames)
        self.frames_dropped = Counter("linesight_frames_dropped", "Frames dropped before a verdict, by reason.",
                                      ("reason",), registry=r)
        self.verdicts = Counter("linesight_verdicts", "Verdicts published, by verdict (fail-safe ones count as NG).",
                                ("verdict",), registry=r)
        self.failsafe = Counter("linesight_failsafe", "Fail-safe (forced NG) verdicts, by reason.", ("reason",),
                                registry=r)
        self.deadline_missed = Counter("linesight_deadline_missed", "Verdicts that missed their deadline.",
                                       registry=r)
        self.inference_seconds = Histogram("linesight_inference_seconds", "Model inference time.",
                                           buckets=LATENCY_BUCKETS, registry=r)
        self.stage_seconds = Histogram("linesight_stage_seconds", "Time per pipeline stage.", ("stage",),
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.trigger_to_verdict = Histogram("linesight_trigger_to_verdict_seconds",
                                            "Camera trigger to published verdict.", buckets=LATENCY_BUCKETS, registry=r)
        Gauge("linesight_deadline_seconds", "Trigger-to-verdict budget (pipeline.deadline_ms).",
              registry=r).set(deadline_s)
        self.score_ratio = Histogram("linesight_anomaly_score_ratio", "Anomaly score / the model's threshold of "
                                     "decided frames (1 = decision boundary).", buckets=SCORE_RATIO_BUCKETS, registry=r)
        self.ng_parts = Counter("linesight_ng_parts", "NG parts by defect type (a part with two types counts under "
                                f"both; {UNTYPED}: no typed defect; fail-safe NG: linesight_failsafe_total).",
                                ("type",), registry=r)
        self.feedback = Counter("linesight_feedback", "Operator feedback (cmd/feedback), by the label given.",
                                ("label",), registry=r)
        self.camera_up = Gauge("linesight_camera_up", "1 while the camera delivers frames.", registry=r)
        self.mqtt_connected: Gauge | None = None  # only where MQTT is on: a 0 would page LinesightMqttDown
        self.queue_depth = Gauge("linesight_queue_depth", "Items waiting in internal queues.", ("queue",), registry=r)
        self.archive_bytes = Gauge("linesight_archive_bytes", "Bytes used by the frame archive.", registry=r)
        self.model_info = Gauge("linesight_model_info", "Active model (value is always 1).",
                                ("model_id", "version", "hash"), registry=r)
        self.up = Gauge("linesight_up", "1 while the inspection pipeline is running.", registry=r)
        self.archive_free_bytes: Gauge | None = None
        Gauge("linesight_build_info", "The running linesight release (value is always 1).",
              ("version", "python", "onnxruntime"), registry=r).labels(__version__, platform.python_version(),
                                                                     _dist_version("onnxruntime")).set(1)
        ProcessCollector(registry=r)  # process_resident_memory_bytes, process_cpu_seconds_total, process_open_fds
        PlatformCollector(registry=r)  # python_info
        self._sinks = _SinkCollector(self._warn_once)
        r.register(self._sinks)
        self._alarm_lock = threading.Lock()
        self._alarm_counts = dict.fromkeys(ALARM_CODES, 0)
        r.register(_AlarmCollector(self))
        self._trends = _TrendCollector(lambda t: t if t in self._defect_types else "other")
        r.register(self._trends)
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
        for label in FEEDBACK_LABELS:
            self.feedback.labels(label)
        self._defect_types: frozenset[str] = frozenset()
        self.add_defect_types((UNTYPED, "other"))
        self._warned: set[tuple[str, str]] = set()
        self._up = False
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ updates (hot path)

    def _bounded(self, metric: str, value: str, allowed: Sequence[str]) -> str | None:
        if value in allowed:
            return value
        self._warn_once(metric, value, f"is not one of {tuple(allowed)}; counted as 'other' where possible")
        return "other" if "other" in allowed else None

    def _warn_once(self, metric: str, value: str,
                   why: str = "is unknown to metrics.SINK_COUNTERS; not exported") -> None:
        if (metric, value) not in self._warned and len(self._warned) < 100:
            self._warned.add((metric, value))
            log.warning("metrics: %s label %r %s", metric, value, why)

    def add_defect_types(self, names: Iterable[str]) -> None:
        """Allow defect types as linesight_ng_parts_total labels (the spec's at start, a bundle's learned ones
        when it loads); others count as "other". The set only grows, bounded by what specs and bundles name."""
        new = frozenset(names) - self._defect_types
        for name in new:
            self.ng_parts.labels(name)
        self._defect_types = self._defect_types | new

    def feedback_received(self, label: str) -> None:
        """Count one operator feedback (cmd/feedback: what the part really was)."""
        bounded = self._bounded("linesight_feedback_total", label, FEEDBACK_LABELS)
        if bounded is not None:
            self.feedback.labels(bounded).inc()

    def alarm_raised(self, code: str) -> None:
        """Count one alarm (Service.alarm calls this for every alarm it raises, sent over MQTT or not)."""
        label = self._bounded("linesight_alarms_total", code, ALARM_CODES)
        with self._alarm_lock:
            self._alarm_counts[label] += 1

    def frame_dropped(self, reason: str) -> None:
        label = self._bounded("linesight_frames_dropped_total", reason, FRAME_DROP_REASONS)
        self.frames_dropped.labels(label).inc()

    def record_verdict(self, verdict: Mapping[str, Any]) -> None:
        """Count one published verdict (schema linesight.verdict/1): verdict, fail-safe reason,
        deadline miss, inference time (latency_ms.inference) and trigger-to-verdict (latency_ms.total)."""
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
        score, threshold = verdict.get("score"), verdict.get("threshold")
        if isinstance(score, (int, float)) and isinstance(threshold, (int, float)) and threshold > 0:
            self.score_ratio.observe(score / threshold)
        if label == "NG" and not verdict.get("fail_safe"):
            types = {d.get("type") for d in verdict.get("defects") or () if isinstance(d, Mapping)} - {None}
            for t in types or {UNTYPED}:
                self.ng_parts.labels(t if t in self._defect_types else "other").inc()

    def observe_stage(self, stage: str, seconds: float) -> None:
        label = self._bounded("linesight_stage_seconds", stage, STAGES)
        if label is not None:
            self.stage_seconds.labels(label).observe(seconds)

    def set_camera_up(self, up: bool) -> None:
        self.camera_up.set(1 if up else 0)

    def watch_frames(self, count: Callable[[], int]) -> None:
        """linesight_frames_total is `count()` at scrape (the pipeline's frames_in)."""
        self._frames.read = count

    def watch_trends(self, monitor: TrendMonitor | None) -> None:
        """linesight_trend_ratio from `monitor.state` at scrape (the publish thread updates the monitor); None:
        trends off, the series stay 0."""
        self._trends.monitor = monitor

    def watch_mqtt_connected(self, connected: Callable[[], bool]) -> None:
        """Read at scrape time: a gauge set from the stats tick lagged the broker's return by up to 10 s.
        Exported only once MQTT is on, so a station without MQTT never reads as disconnected."""
        self.mqtt_connected = Gauge("linesight_mqtt_connected", "1 while connected to the MQTT broker.",
                                    registry=self.registry)
        self.mqtt_connected.set_function(lambda: 1.0 if connected() else 0.0)

    def watch_archive_disk(self, folder: str | Path) -> None:
        """linesight_archive_free_bytes: free space on the archive's disk, read at scrape (one statvfs)."""

        def free() -> float:
            try:
                return float(shutil.disk_usage(folder).free)
            except OSError:  # unplugged or not created yet: the archive alarms on its own
                return float("nan")

        self.archive_free_bytes = Gauge("linesight_archive_free_bytes", "Free bytes on the archive's disk.",
                                        registry=self.registry)
        self.archive_free_bytes.set_function(free)

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
        """Expose a sink's `counters` dict (read at scrape) through SINK_COUNTERS (linesight_sink_sent_total,
        ..._dropped_total, ..._errors_total, ...); keys `alarm_<code>` go to linesight_alarms_total{code}."""
        if name not in SINKS:
            raise ValueError(f"watch_sink name must be one of {', '.join(SINKS)}, got {name!r}")
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
        server = listen_http(host, port, make_handler(self.exposition, health or self.default_health))
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
