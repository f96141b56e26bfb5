"""Metrics over real HTTP (urllib against the daemon's own server), parsed as Prometheus text."""

from __future__ import annotations

import json
import logging
import platform
import re
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from linesight import __version__
from linesight.config.outputs import ArchiveConfig, MqttConfig, VerdictLogConfig, ZmqConfig
from linesight.daemon.metrics import (
    ALARM_CODES,
    FAILSAFE_REASONS,
    LATENCY_BUCKETS,
    SINK_ALARM_PREFIX,
    SINK_COUNTERS,
    Metrics,
)
from linesight.daemon.sinks.archive import Archive
from linesight.daemon.sinks.mqtt_sink import MqttSink
from linesight.daemon.sinks.publish_queue import PublishQueue
from linesight.daemon.sinks.verdict_log import VerdictLog
from linesight.daemon.sinks.zmq_sink import ZmqSink
from linesight.errors import ConfigError


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.headers["Content-Type"], r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read().decode()


def samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.fixture
def served():
    m = Metrics(deadline_s=0.2)
    state = {"health": None}
    port = m.serve("127.0.0.1", 0, health=lambda: state["health"]() if state["health"] else m.default_health())
    yield m, f"http://127.0.0.1:{port}", state
    m.stop()


def test_metrics_values_change_after_updates(served) -> None:
    m, url, _ = served
    code, ctype, text = get(url + "/metrics")
    assert code == 200 and ctype.startswith("text/plain")
    s = samples(text)
    assert s[("linesight_frames_total", ())] == 0
    assert s[("linesight_verdicts_total", (("verdict", "NG"),))] == 0
    for r in FAILSAFE_REASONS:  # pre-created so rate()/increase() work from the first scrape
        assert s[("linesight_failsafe_total", (("reason", r),))] == 0
    assert s[("linesight_up", ())] == 0

    frames_in = [0]
    m.watch_frames(lambda: frames_in[0])  # the pipeline's count, read at scrape
    frames_in[0] = 3
    m.frame_dropped("queue_full")
    m.record_verdict({"verdict": "OK", "reason": "score_below_threshold",
                      "latency_ms": {"inference": 12.0, "total": 30.0}})
    m.record_verdict({"verdict": "NG", "reason": "deadline_missed",
                      "latency_ms": {"inference": 140.0, "total": 150.0}})
    m.observe_stage("preprocess", 0.003)
    m.set_camera_up(True)
    link = {"up": True}
    m.watch_mqtt_connected(lambda: link["up"])  # read at scrape time, never stale
    m.set_queue_depth("inference", 5)
    m.set_archive_bytes(123456)
    m.set_up(True)

    s = samples(get(url + "/metrics")[2])
    assert s[("linesight_frames_total", ())] == 3
    assert s[("linesight_frames_dropped_total", (("reason", "queue_full"),))] == 1
    assert s[("linesight_verdicts_total", (("verdict", "OK"),))] == 1
    assert s[("linesight_verdicts_total", (("verdict", "NG"),))] == 1
    assert s[("linesight_failsafe_total", (("reason", "deadline_missed"),))] == 1
    assert s[("linesight_deadline_missed_total", ())] == 1
    assert s[("linesight_inference_seconds_count", ())] == 2
    assert s[("linesight_inference_seconds_sum", ())] == pytest.approx(0.152)
    assert s[("linesight_stage_seconds_count", (("stage", "preprocess"),))] == 1
    assert s[("linesight_camera_up", ())] == 1 and s[("linesight_mqtt_connected", ())] == 1
    link["up"] = False  # the broker went away: the next scrape says so, no tick needed
    assert samples(get(url + "/metrics")[2])[("linesight_mqtt_connected", ())] == 0
    assert s[("linesight_queue_depth", (("queue", "inference"),))] == 5
    assert s[("linesight_archive_bytes", ())] == 123456
    assert s[("linesight_up", ())] == 1
    # absolute trigger_to_verdict buckets, whatever the deadline: 30 ms <= 0.03, 150 ms <= 0.15
    bucket = {k[1][0][1]: v for k, v in s.items() if k[0] == "linesight_trigger_to_verdict_seconds_bucket"}
    assert sorted(float(b) for b in bucket if b != "+Inf") == list(LATENCY_BUCKETS)
    assert bucket["0.025"] == 0 and bucket["0.03"] == 1 and bucket["0.15"] == 2 and bucket["+Inf"] == 2
    assert s[("linesight_deadline_seconds", ())] == 0.2


def test_model_info_has_exactly_one_series_after_swap(served) -> None:
    m, url, _ = served
    m.set_model({"id": "mt-fast", "version": 3, "hash": "aa"})
    m.set_model({"id": "mt-fast", "version": 4, "hash": "bb"})
    s = samples(get(url + "/metrics")[2])
    info = {k: v for k, v in s.items() if k[0] == "linesight_model_info"}
    assert info == {("linesight_model_info", (("hash", "bb"), ("model_id", "mt-fast"), ("version", "4"))): 1.0}


def test_unbounded_labels_are_refused(served, caplog) -> None:
    m, url, _ = served
    with caplog.at_level(logging.WARNING, logger="linesight.daemon.metrics"):
        for i in range(50):
            m.frame_dropped(f"weird-{i % 2}")
        m.observe_stage("made_up_stage", 0.1)
        m.record_verdict({"verdict": "MAYBE"})
    s = samples(get(url + "/metrics")[2])
    assert s[("linesight_frames_dropped_total", (("reason", "other"),))] == 50
    assert not any("weird" in str(k) or "made_up" in str(k) or "MAYBE" in str(k) for k in s)
    assert len([r for r in caplog.records if "weird-0" in r.getMessage()]) == 1  # warned once, not 25x


def test_healthz_status_codes(served) -> None:
    m, url, state = served
    code, ctype, body = get(url + "/healthz")
    assert (code, json.loads(body)) == (503, {"status": "unhealthy"}) and ctype == "application/json"
    m.set_up(True)
    assert get(url + "/healthz")[0] == 200
    state["health"] = lambda: {"status": "degraded", "camera": "up", "mqtt": "disconnected"}
    code, _, body = get(url + "/healthz")
    assert code == 200 and json.loads(body)["mqtt"] == "disconnected"
    state["health"] = lambda: {"status": "unhealthy", "camera": "down"}
    assert get(url + "/healthz")[0] == 503

    def broken() -> dict:
        raise RuntimeError("boom")

    state["health"] = broken
    code, _, body = get(url + "/healthz")
    assert code == 503 and json.loads(body)["error"] == "health check failed: RuntimeError"
    assert get(url + "/nope")[0] == 404


def test_sink_counters_exposed_and_registries_isolated(served, free_tcp_port) -> None:
    m, url, _ = served
    other = Metrics(deadline_s=1.0)  # a second instance must not collide with the first
    other.watch_frames(lambda: 1)
    sink = ZmqSink(ZmqConfig(verdict_endpoint=f"tcp://127.0.0.1:{free_tcp_port()}", image_endpoint=None))
    try:
        m.watch_sink("zmq", lambda: sink.counters)
        for seq in range(3):
            sink.publish({"seq": seq, "verdict": "OK"})
        s = samples(get(url + "/metrics")[2])
    finally:
        sink.close()
    assert s[("linesight_sink_sent_total", (("kind", "verdict"), ("sink", "zmq")))] == 3
    assert s[("linesight_sink_errors_total", (("sink", "zmq"),))] == 0
    assert s[("linesight_frames_total", ())] == 0
    assert samples(other.exposition().decode())[("linesight_frames_total", ())] == 1
    with pytest.raises(ValueError, match="watch_sink name"):
        m.watch_sink("kafka", dict)


def test_alarm_counter_by_code_bounded_and_merged_with_sink_alarms(served, caplog) -> None:
    """Alerting on alarms needs one bounded series per code, zero included (increase() needs the 0 sample),
    and the MQTT sink's own verdicts_dropped alarm (it bypasses Service.alarm) must land in the same metric."""
    m, url, _ = served
    s = samples(get(url + "/metrics")[2])
    assert {k[1][0][1]: v for k, v in s.items() if k[0] == "linesight_alarms_total"} == dict.fromkeys(ALARM_CODES, 0)
    sink_counters = {"connects": 2, "alarm_verdicts_dropped": 0}
    m.watch_sink("mqtt", lambda: sink_counters)
    m.alarm_raised("camera_down")
    m.alarm_raised("camera_down")
    m.alarm_raised("verdicts_dropped")
    sink_counters["alarm_verdicts_dropped"] = 2
    with caplog.at_level(logging.WARNING, logger="linesight.daemon.metrics"):
        for i in range(20):
            m.alarm_raised(f"made_up_{i}")
    s = samples(get(url + "/metrics")[2])
    assert s[("linesight_alarms_total", (("code", "camera_down"),))] == 2
    assert s[("linesight_alarms_total", (("code", "verdicts_dropped"),))] == 3
    assert s[("linesight_alarms_total", (("code", "other"),))] == 20
    assert s[("linesight_alarms_total", (("code", "no_model"),))] == 0
    assert not any("made_up" in str(k) for k in s)
    # the sink's alarm counter is an alarm, not a sink counter; its other counters keep their families
    assert s[("linesight_mqtt_connects_total", ())] == 2
    assert not any(k[0].startswith(("linesight_sink_", "linesight_mqtt_")) and "alarm" in str(k) for k in s)


def test_every_alarm_code_in_the_sources_is_a_known_label() -> None:
    """A new alarm code must be added to ALARM_CODES, or alerts on it would only ever see "other"."""
    from linesight.daemon.verdict import FAIL_SAFE_REASONS

    call = re.compile(r"\b(?:alarm|alarm_limited|_alarm|publish_alarm)\(\s*\"([A-Za-z0-9_]+)\"")
    found = set()
    for path in [*(REPO / "daemon").glob("*.py"), *(REPO / "daemon" / "sinks").glob("*.py")]:
        found |= set(call.findall(path.read_text()))
    assert {"camera_down", "no_model", "model_refused", "mqtt_down", "verdicts_dropped"} <= found, found
    assert found <= set(ALARM_CODES), f"alarm codes missing from metrics.ALARM_CODES: {found - set(ALARM_CODES)}"
    # pipeline.alarm_limited(fail_safe, ...) raises every fail-safe reason as an alarm code
    assert set(FAIL_SAFE_REASONS) <= set(ALARM_CODES)


def prom_quantile(q: float, buckets: dict[str, float]) -> float:
    """histogram_quantile() as Prometheus computes it: linear interpolation inside the bucket holding rank q."""
    bounds = sorted((float(le), n) for le, n in buckets.items())
    rank = q * bounds[-1][1]
    lower, below = 0.0, 0.0
    for upper, n in bounds:
        if n >= rank:
            return lower if upper == float("inf") else lower + (upper - lower) * (rank - below) / (n - below)
        lower, below = upper, n
    raise AssertionError("empty histogram")


@pytest.mark.parametrize("true_s", [0.0015, 0.032, 0.18, 2.5])
def test_latency_quantiles_are_close_to_the_truth(served, true_s) -> None:
    """Dashboards read p50/p99 through histogram_quantile, which interpolates inside a bucket: with buckets at
    deadline multiples a true 32 ms read as 62.5 ms. Absolute 1 ms..10 s buckets keep the estimate close."""
    m, url, _ = served
    observed = true_s * np.random.default_rng(0).uniform(0.9, 1.1, 400)
    for v in observed:
        m.record_verdict({"verdict": "OK", "latency_ms": {"total": float(v) * 1000.0}})
        m.observe_stage("acquire", float(v))
    s = samples(get(url + "/metrics")[2])
    for name, stage in (("linesight_trigger_to_verdict_seconds_bucket", None),
                        ("linesight_stage_seconds_bucket", "acquire")):
        buckets = {dict(k[1])["le"]: v for k, v in s.items() if k[0] == name and dict(k[1]).get("stage") == stage}
        assert prom_quantile(0.5, buckets) == pytest.approx(np.median(observed), rel=0.1), name


def test_process_build_and_quality_metrics(served) -> None:
    """Process metrics and build info on the private registry, no _created series, MQTT state only where MQTT
    is on, the score/threshold histogram, NG parts by a bounded set of defect types, feedback by label."""
    m, url, _ = served
    text = get(url + "/metrics")[2]
    assert "_created" not in text
    s = samples(text)
    assert s[("process_resident_memory_bytes", ())] > 1e6 and s[("process_open_fds", ())] > 0
    assert ("process_cpu_seconds_total", ()) in s and any(k[0] == "python_info" for k in s)
    build = [dict(k[1]) for k in s if k[0] == "linesight_build_info"]
    assert len(build) == 1 and build[0]["version"] == __version__ and build[0]["python"] == platform.python_version()
    assert ("linesight_mqtt_connected", ()) not in s  # a station without MQTT must not page LinesightMqttDown

    m.add_defect_types(["scratch", "spot", "unknown"])
    decided = {"fail_safe": False, "threshold": 2.0}
    m.record_verdict({**decided, "verdict": "NG", "score": 3.0,
                      "defects": [{"type": "scratch"}, {"type": "scratch"}, {"type": "spot"}]})
    m.record_verdict({**decided, "verdict": "NG", "score": 2.4, "defects": [{"type": "crack"}]})  # not in the set
    m.record_verdict({**decided, "verdict": "NG", "score": 2.2, "defects": [{"bbox": [1, 2, 3, 4]}]})  # score only
    m.record_verdict({**decided, "verdict": "OK", "score": 1.0, "defects": [{"type": "spot"}]})  # passed: not NG
    m.record_verdict({"verdict": "NG", "fail_safe": True, "reason": "no_model"})  # no score, not typed
    m.feedback_received("NG")
    m.feedback_received("NG")
    m.feedback_received("OK")
    s = samples(get(url + "/metrics")[2])
    ng = {dict(k[1])["type"]: v for k, v in s.items() if k[0] == "linesight_ng_parts_total"}
    assert ng == {"scratch": 1, "spot": 1, "unknown": 0, "other": 1, "untyped": 1}
    assert s[("linesight_anomaly_score_ratio_count", ())] == 4
    assert s[("linesight_anomaly_score_ratio_sum", ())] == pytest.approx(1.5 + 1.2 + 1.1 + 0.5)
    assert s[("linesight_anomaly_score_ratio_bucket", (("le", "1.0"),))] == 1
    assert s[("linesight_feedback_total", (("label", "NG"),))] == 2
    assert s[("linesight_feedback_total", (("label", "OK"),))] == 1


def test_every_sink_counter_has_a_family(tmp_path, free_tcp_port) -> None:
    """A counter a sink adds must be mapped in metrics.SINK_COUNTERS, or it is not exported (and warned about)."""
    zmq_sink = ZmqSink(ZmqConfig(verdict_endpoint=f"tcp://127.0.0.1:{free_tcp_port()}", image_endpoint=None))
    try:
        counters = {"mqtt": MqttSink(MqttConfig()).counters, "zmq": zmq_sink.counters,
                    "archive": Archive(ArchiveConfig(enabled=False, dir=tmp_path)).counters,
                    "verdict_log": VerdictLog(VerdictLogConfig(path=tmp_path / "v.jsonl")).counters,
                    "publish": PublishQueue(2**20, 8).counters}
    finally:
        zmq_sink.close()
    for sink, keys in counters.items():
        unmapped = {k for k in keys if k not in SINK_COUNTERS and not k.startswith(SINK_ALARM_PREFIX)}
        assert not unmapped, f"{sink}: map {sorted(unmapped)} in metrics.SINK_COUNTERS"
    m = Metrics()
    for sink, keys in counters.items():
        m.watch_sink(sink, lambda keys=keys: keys)
    s = samples(m.exposition().decode())
    assert s[("linesight_sink_errors_total", (("sink", "zmq"),))] == 0  # encode + send errors: one series
    assert {k[0] for k in s} >= {"linesight_sink_sent_total", "linesight_sink_dropped_total",
                                 "linesight_sink_skipped_total", "linesight_sink_errors_total",
                                 "linesight_mqtt_acked_total", "linesight_mqtt_connects_total",
                                 "linesight_mqtt_commands_total", "linesight_archive_deleted_total"}


def test_stop_and_port_conflict() -> None:
    m = Metrics()
    port = m.serve("127.0.0.1", 0)
    try:
        with pytest.raises(ConfigError, match=f"metrics.port: port {port} on 127.0.0.1 is in use"):
            Metrics().serve("127.0.0.1", port)
    finally:
        m.stop()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)


# ---------------------------------------------------------------------- alert rules + dashboard

REPO = Path(__file__).resolve().parents[1]
RULES = REPO / "config/prometheus/linesight.rules.yml"
DASHBOARD = REPO / "config/grafana/linesight.json"
_METRIC = re.compile(r"\b(?:linesight|process|python)_[a-z0-9_]+\b")
_DURATION = re.compile(r"^\d+[smhd]$")


def exposed_names() -> set[str]:
    """Every sample name a fully wired daemon exposes (sink counters included)."""
    m = Metrics()
    m.watch_sink("mqtt", lambda: dict.fromkeys(SINK_COUNTERS, 0))  # every sink family, one sink is enough
    m.watch_mqtt_connected(lambda: True)
    m.watch_archive_disk(REPO)
    m.set_model({"id": "mt-fast", "version": 3, "hash": "aa"})
    return {s.name for fam in text_string_to_metric_families(m.exposition().decode()) for s in fam.samples}


def test_alert_rules_structure_and_metric_names() -> None:
    doc = yaml.safe_load(RULES.read_text())
    names = exposed_names()
    alerts = {}
    for group in doc["groups"]:
        assert isinstance(group["name"], str) and group["rules"]
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
            assert rule["labels"]["severity"] in ("critical", "warning")
            assert rule["annotations"]["summary"] and rule["annotations"]["description"]
            assert "for" not in rule or _DURATION.match(rule["for"])
            used = set(_METRIC.findall(rule["expr"]))
            assert used and used <= names, f"{rule['alert']} uses unknown metrics {used - names}"
            alerts[rule["alert"]] = rule
    assert set(alerts) == {"LinesightDaemonOffline", "LinesightCameraDown", "LinesightNgRateHigh",
                           "LinesightDeadlineMissed", "LinesightVerdictsDropped", "LinesightMqttDown",
                           "LinesightFailSafeRateHigh", "LinesightModelRefused", "LinesightNoModel",
                           "LinesightArchiveErrors", "LinesightArchiveDiskFull", "LinesightTrendOutOfControl"}
    assert alerts["LinesightMqttDown"]["for"] == "1m" and "> 0.05" in alerts["LinesightFailSafeRateHigh"]["expr"]
    assert alerts["LinesightCameraDown"]["for"] == "1m" and alerts["LinesightNgRateHigh"]["for"] == "10m"
    assert "> 0.2" in alerts["LinesightNgRateHigh"]["expr"]
    assert alerts["LinesightVerdictsDropped"]["labels"]["severity"] == "critical"
    assert "MQTT outage" in alerts["LinesightVerdictsDropped"]["annotations"]["summary"]


def _annotations(rule: dict, instance: str | None) -> dict[str, str]:
    out = {}
    for k, v in rule["annotations"].items():
        v = re.sub(r"\{\{ with \$labels\.instance \}\}\{\{ \. \}\}\{\{ else \}\}(.*?)\{\{ end \}\}",
                   lambda m_: instance or m_.group(1), v)
        out[k] = v.replace("{{ $labels.instance }}", instance or "")
    return out


@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="promtool not installed (Debian: apt-get install -y prometheus)")
def test_alert_rules_with_promtool(tmp_path) -> None:
    res = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    rules = {r["alert"]: r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}

    def exp(alert: str, instance: str | None, **labels: str) -> dict:
        lab = {"severity": rules[alert]["labels"]["severity"], "job": "linesight", **labels}
        if instance:
            lab["instance"] = instance
        return {"exp_labels": lab, "exp_annotations": _annotations(rules[alert], instance)}

    def trend(chart: str, kind: str) -> dict:
        """LinesightTrendOutOfControl on cam1; its annotations also template the chart and the defect type (an
        empty `type` label is no label)."""
        out = exp("LinesightTrendOutOfControl", "cam1", chart=chart, **({"type": kind} if kind else {}))
        with_type = re.compile(r"\{\{ with \$labels\.type \}\}(.*?)\{\{ \. \}\}(.*?)\{\{ end \}\}")
        for key, text in out["exp_annotations"].items():
            text = with_type.sub(lambda m_: f"{m_.group(1)}{kind}{m_.group(2)}" if kind else "", text)
            out["exp_annotations"][key] = text.replace("{{ $labels.chart }}", chart)
        return out

    s = 'job="linesight",instance="cam1"'
    tests = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {"series": f"up{{{s}}}", "values": "1 1 1 0 0 0 0 0"},
                    {"series": f"linesight_up{{{s}}}", "values": "1x8"},
                    {"series": f"linesight_camera_up{{{s}}}", "values": "1 1 0 0 0 0 0 0"},
                    {"series": f"linesight_deadline_missed_total{{{s}}}", "values": "0 0 0 1x12"},
                    {"series": f'linesight_verdicts_total{{verdict="OK",{s}}}', "values": "0+70x40"},
                    {"series": f'linesight_verdicts_total{{verdict="NG",{s}}}', "values": "0+30x40"},
                    # cam2: 100 % NG but only 1 part/min -> below the volume guard, no page
                    {"series": 'linesight_verdicts_total{verdict="OK",job="linesight",instance="cam2"}',
                     "values": "0x40"},
                    {"series": 'linesight_verdicts_total{verdict="NG",job="linesight",instance="cam2"}',
                     "values": "0+1x40"},
                ],
                "alert_rule_test": [
                    {"eval_time": "2m", "alertname": "LinesightCameraDown", "exp_alerts": []},
                    {"eval_time": "4m", "alertname": "LinesightCameraDown",
                     "exp_alerts": [exp("LinesightCameraDown", "cam1")]},
                    {"eval_time": "3m", "alertname": "LinesightDaemonOffline", "exp_alerts": []},
                    {"eval_time": "5m", "alertname": "LinesightDaemonOffline",
                     "exp_alerts": [exp("LinesightDaemonOffline", "cam1")]},
                    {"eval_time": "2m", "alertname": "LinesightDeadlineMissed", "exp_alerts": []},
                    {"eval_time": "4m", "alertname": "LinesightDeadlineMissed",
                     "exp_alerts": [exp("LinesightDeadlineMissed", "cam1")]},
                    {"eval_time": "10m", "alertname": "LinesightDeadlineMissed", "exp_alerts": []},
                    {"eval_time": "6m", "alertname": "LinesightNgRateHigh", "exp_alerts": []},
                    {"eval_time": "15m", "alertname": "LinesightNgRateHigh",
                     "exp_alerts": [exp("LinesightNgRateHigh", "cam1")]},
                ],
            },
            {   # verdicts_dropped: any increase of that code's alarm counter pages for the 5 min window
                "interval": "1m",
                "input_series": [
                    {"series": f'linesight_alarms_total{{code="verdicts_dropped",{s}}}', "values": "0 0 0 1x12"},
                    # must NOT fire: other codes rising (cam1), an old outage counted before the
                    # window (cam2), a daemon restart resetting the counter to 0 (cam3)
                    {"series": f'linesight_alarms_total{{code="camera_down",{s}}}', "values": "0+1x15"},
                    {"series": 'linesight_alarms_total{code="verdicts_dropped",job="linesight",instance="cam2"}',
                     "values": "4x15"},
                    {"series": 'linesight_alarms_total{code="verdicts_dropped",job="linesight",instance="cam3"}',
                     "values": "2 2 2 2 0x11"},
                ],
                "alert_rule_test": [
                    {"eval_time": "2m", "alertname": "LinesightVerdictsDropped", "exp_alerts": []},
                    {"eval_time": "4m", "alertname": "LinesightVerdictsDropped",
                     "exp_alerts": [exp("LinesightVerdictsDropped", "cam1", code="verdicts_dropped")]},
                    {"eval_time": "7m", "alertname": "LinesightVerdictsDropped",
                     "exp_alerts": [exp("LinesightVerdictsDropped", "cam1", code="verdicts_dropped")]},
                    {"eval_time": "10m", "alertname": "LinesightVerdictsDropped", "exp_alerts": []},
                ],
            },
            {   # MQTT link down for 1 minute pages; a flapping link (each outage < 1m) and a station without
                # MQTT (no series) do not
                "interval": "1m",
                "input_series": [
                    {"series": f"linesight_mqtt_connected{{{s}}}", "values": "1 1 0 0 0 0 0 0"},
                    {"series": 'linesight_mqtt_connected{job="linesight",instance="cam2"}',
                     "values": "1 1 0 1 0 1 0 1"},
                    {"series": 'linesight_up{job="linesight",instance="cam3"}', "values": "1x8"},
                ],
                "alert_rule_test": [
                    {"eval_time": "2m", "alertname": "LinesightMqttDown", "exp_alerts": []},
                    {"eval_time": "4m", "alertname": "LinesightMqttDown",
                     "exp_alerts": [exp("LinesightMqttDown", "cam1")]},
                ],
            },
            {   # fail-safe share of verdicts: cam1 10 % pages; cam2 2 % and cam3 (all fail-safe, 1 part/min:
                # under the volume guard) do not
                "interval": "1m",
                "input_series": [
                    {"series": f'linesight_verdicts_total{{verdict="OK",{s}}}', "values": "0+70x20"},
                    {"series": f'linesight_verdicts_total{{verdict="NG",{s}}}', "values": "0+30x20"},
                    {"series": f'linesight_failsafe_total{{reason="deadline_missed",{s}}}', "values": "0+10x20"},
                    {"series": 'linesight_verdicts_total{verdict="OK",job="linesight",instance="cam2"}',
                     "values": "0+98x20"},
                    {"series": 'linesight_verdicts_total{verdict="NG",job="linesight",instance="cam2"}',
                     "values": "0+2x20"},
                    {"series": 'linesight_failsafe_total{reason="bad_frame",job="linesight",instance="cam2"}',
                     "values": "0+2x20"},
                    {"series": 'linesight_verdicts_total{verdict="NG",job="linesight",instance="cam3"}',
                     "values": "0+1x20"},
                    {"series": 'linesight_failsafe_total{reason="camera_error",job="linesight",instance="cam3"}',
                     "values": "0+1x20"},
                ],
                "alert_rule_test": [
                    {"eval_time": "3m", "alertname": "LinesightFailSafeRateHigh", "exp_alerts": []},
                    {"eval_time": "12m", "alertname": "LinesightFailSafeRateHigh",
                     "exp_alerts": [exp("LinesightFailSafeRateHigh", "cam1")]},
                ],
            },
            {   # a refused reload warns for 15 minutes; other model alarms and a restart's reset do not.
                # No model at all (up, but no model_info) pages; a station with a model or stopped does not.
                "interval": "1m",
                "input_series": [
                    {"series": f'linesight_alarms_total{{code="model_refused",{s}}}', "values": "0 0 0 1x25"},
                    {"series": f'linesight_alarms_total{{code="model_changed",{s}}}', "values": "0+1x25"},
                    {"series": 'linesight_alarms_total{code="model_refused",job="linesight",instance="cam2"}',
                     "values": "3 3 0x24"},
                    {"series": 'linesight_up{job="linesight",instance="cam4"}', "values": "1x25"},
                    {"series": 'linesight_up{job="linesight",instance="cam5"}', "values": "1x25"},
                    {"series": 'linesight_model_info{model_id="m",version="1",hash="h",'
                               'job="linesight",instance="cam5"}',
                     "values": "1x25"},
                    {"series": 'linesight_up{job="linesight",instance="cam6"}', "values": "0x25"},
                ],
                "alert_rule_test": [
                    {"eval_time": "2m", "alertname": "LinesightModelRefused", "exp_alerts": []},
                    {"eval_time": "4m", "alertname": "LinesightModelRefused",
                     "exp_alerts": [exp("LinesightModelRefused", "cam1", code="model_refused")]},
                    {"eval_time": "20m", "alertname": "LinesightModelRefused", "exp_alerts": []},
                    {"eval_time": "2m", "alertname": "LinesightNoModel",
                     "exp_alerts": [exp("LinesightNoModel", "cam4")]},
                ],
            },
            {   # archive write errors warn (other sinks' errors do not); records deleted early for disk space
                # warn (deletions by age do not)
                "interval": "1m",
                "input_series": [
                    {"series": f'linesight_sink_errors_total{{sink="archive",{s}}}', "values": "0 0 0 2x15"},
                    {"series": f'linesight_sink_errors_total{{sink="mqtt",{s}}}', "values": "0+1x15"},
                    {"series": f'linesight_archive_deleted_total{{reason="disk_space",{s}}}', "values": "0 0 0 0 3x40"},
                    {"series": f'linesight_archive_deleted_total{{reason="age",{s}}}', "values": "0+5x40"},
                ],
                "alert_rule_test": [
                    {"eval_time": "2m", "alertname": "LinesightArchiveErrors", "exp_alerts": []},
                    {"eval_time": "4m", "alertname": "LinesightArchiveErrors",
                     "exp_alerts": [exp("LinesightArchiveErrors", "cam1", sink="archive")]},
                    {"eval_time": "15m", "alertname": "LinesightArchiveErrors", "exp_alerts": []},
                    {"eval_time": "3m", "alertname": "LinesightArchiveDiskFull", "exp_alerts": []},
                    {"eval_time": "5m", "alertname": "LinesightArchiveDiskFull",
                     "exp_alerts": [exp("LinesightArchiveDiskFull", "cam1", reason="disk_space")]},
                    {"eval_time": "40m", "alertname": "LinesightArchiveDiskFull", "exp_alerts": []},
                ],
            },
            {   # a trend chart out of control for 1 minute warns, per chart (the score chart on either side) and
                # clears once back inside; a brief touch of the limit (cam2), a chart under it (cam3) and the
                # 0 of a burn-in (cam4) do not
                "interval": "1m",
                "input_series": [
                    {"series": f'linesight_trend_ratio{{chart="ng_rate",type="",{s}}}',
                     "values": "0.2 0.5 0.9 1.1 1.4 1.6 1.2 0.4 0.1 0.1"},
                    {"series": f'linesight_trend_ratio{{chart="score",type="",{s}}}', "values": "0 0 -0.8 -1.2x6"},
                    {"series": f'linesight_trend_ratio{{chart="type",type="crack",{s}}}', "values": "0.1x9"},
                    {"series": 'linesight_trend_ratio{chart="ng_rate",type="",job="linesight",instance="cam2"}',
                     "values": "0.5 1.0 0.5 0.5 1.0 0.4 0.3 0.2 0.2 0.2"},
                    {"series": 'linesight_trend_ratio{chart="type",type="crack",job="linesight",instance="cam3"}',
                     "values": "0.99x9"},
                    {"series": 'linesight_trend_ratio{chart="score",type="",job="linesight",instance="cam4"}',
                     "values": "0x9"},
                ],
                "alert_rule_test": [
                    {"eval_time": "3m", "alertname": "LinesightTrendOutOfControl", "exp_alerts": []},
                    {"eval_time": "5m", "alertname": "LinesightTrendOutOfControl",
                     "exp_alerts": [trend("ng_rate", ""), trend("score", "")]},
                    {"eval_time": "8m", "alertname": "LinesightTrendOutOfControl",
                     "exp_alerts": [trend("score", "")]},
                ],
            },
            {   # a type chart names its defect type
                "interval": "1m",
                "input_series": [
                    {"series": f'linesight_trend_ratio{{chart="type",type="crack",{s}}}', "values": "0.5 1.3x5"},
                ],
                "alert_rule_test": [
                    {"eval_time": "1m", "alertname": "LinesightTrendOutOfControl", "exp_alerts": []},
                    {"eval_time": "3m", "alertname": "LinesightTrendOutOfControl",
                     "exp_alerts": [trend("type", "crack")]},
                ],
            },
            {   # the target vanished entirely: absent() still pages
                "interval": "1m",
                "input_series": [{"series": 'up{job="other"}', "values": "1x5"}],
                "alert_rule_test": [
                    {"eval_time": "3m", "alertname": "LinesightDaemonOffline",
                     "exp_alerts": [exp("LinesightDaemonOffline", None)]},
                ],
            },
        ],
    }
    path = tmp_path / "linesight.rules.test.yml"
    path.write_text(yaml.safe_dump(tests, sort_keys=False))
    res = subprocess.run(["promtool", "test", "rules", str(path)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def dashboard_exprs() -> list[tuple[str, str]]:
    doc = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in doc["panels"] for t in p.get("targets", [])]


def test_dashboard_parses_and_uses_only_registered_metrics() -> None:
    doc = json.loads(DASHBOARD.read_text())
    assert 36 <= doc["schemaVersion"] <= 41 and doc["uid"]
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    for p in doc["panels"]:
        assert {"x", "y", "w", "h"} <= set(p["gridPos"]) and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
        assert p["targets"], p["title"]
    names = exposed_names()
    all_exprs = " ".join(e for _, e in dashboard_exprs())
    for title, expr in dashboard_exprs():
        used = set(_METRIC.findall(expr))
        assert used, f"panel {title!r} queries no linesight metric"
        assert used <= names, f"panel {title!r} uses unknown metrics {used - names}"
    family = re.compile(r"_(?:bucket|sum|count)$")
    shown = {family.sub("", n) for n in _METRIC.findall(all_exprs)}
    missing = {family.sub("", n) for n in names if n.startswith("linesight_")} - shown
    assert not missing, f"dashboard has no panel for {sorted(missing)}"
    assert {"process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds"} <= shown
    assert "histogram_quantile(0.99" in all_exprs and "histogram_quantile(0.5" in all_exprs


@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="promtool not installed (Debian: apt-get install -y prometheus)")
def test_dashboard_queries_are_valid_promql(tmp_path) -> None:
    """promtool has no bare PromQL checker: wrap each panel query in a recording rule and check those."""
    rules = [{"record": f"linesight_dashboard:panel{i}", "expr": expr.replace("$__rate_interval", "5m")
              .replace("$instance", ".*")} for i, (_, expr) in enumerate(dashboard_exprs())]
    path = tmp_path / "dash.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    res = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
