"""Metrics over real HTTP (urllib against the daemon's own server), parsed as Prometheus text."""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from linesight.config.outputs import ZmqConfig
from linesight.daemon.metrics import DEADLINE_MULTIPLES, FAILSAFE_REASONS, Metrics
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

    for _ in range(3):
        m.frame_received()
    m.frame_dropped("queue_full")
    m.record_verdict({"verdict": "OK", "reason": "score_below_threshold",
                      "latency_ms": {"inference": 12.0, "total": 30.0}})
    m.record_verdict({"verdict": "NG", "reason": "deadline_missed",
                      "latency_ms": {"inference": 140.0, "total": 150.0}})
    m.observe_stage("preprocess", 0.003)
    m.set_camera_up(True)
    m.set_mqtt_connected(True)
    m.set_queue_depth("frames", 5)
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
    assert s[("linesight_queue_depth", (("queue", "frames"),))] == 5
    assert s[("linesight_archive_bytes", ())] == 123456
    assert s[("linesight_up", ())] == 1
    # trigger_to_verdict buckets are multiples of the 200 ms deadline: 30 ms <= 0.25x, 150 ms <= 0.75x
    bucket = {k[1][0][1]: v for k, v in s.items() if k[0] == "linesight_trigger_to_verdict_seconds_bucket"}
    assert sorted(float(b) for b in bucket if b != "+Inf") == pytest.approx([m_ * 0.2 for m_ in DEADLINE_MULTIPLES])
    assert bucket["0.05"] == 1 and bucket["0.1"] == 1 and bucket["0.15"] == 2 and bucket["+Inf"] == 2


def test_model_info_has_exactly_one_series_after_swap(served) -> None:
    m, url, _ = served
    m.set_model("mt-fast", 3)
    m.set_model("mt-fast", 4)
    s = samples(get(url + "/metrics")[2])
    info = {k: v for k, v in s.items() if k[0] == "linesight_model_info"}
    assert info == {("linesight_model_info", (("model_id", "mt-fast"), ("version", "4"))): 1.0}


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
    other.frame_received()
    sink = ZmqSink(ZmqConfig(verdict_endpoint=f"tcp://127.0.0.1:{free_tcp_port()}", image_endpoint=None))
    try:
        m.watch_sink("zmq", lambda: sink.counters)
        for seq in range(3):
            sink.publish({"seq": seq, "verdict": "OK"})
        s = samples(get(url + "/metrics")[2])
    finally:
        sink.close()
    assert s[("linesight_sink_events_total", (("event", "verdicts_sent"), ("sink", "zmq")))] == 3
    assert s[("linesight_frames_total", ())] == 0
    assert samples(other.exposition().decode())[("linesight_frames_total", ())] == 1
    with pytest.raises(ValueError, match="watch_sink name"):
        m.watch_sink("kafka", dict)


def test_stop_and_port_conflict() -> None:
    m = Metrics()
    port = m.serve("127.0.0.1", 0)
    try:
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}"):
            Metrics().serve("127.0.0.1", port)
    finally:
        m.stop()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)
