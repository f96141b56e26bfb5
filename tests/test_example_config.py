"""The shipped example configs validate (they document every section users copy from)."""
from pathlib import Path

import pytest

from linesight.config.daemon import DaemonConfig
from linesight.config.loader import load_model
from linesight.daemon.preflight import load_station

EXAMPLE = Path(__file__).resolve().parents[1] / "config" / "examples" / "daemon.yaml"


def test_example_daemon_yaml_validates():
    cfg = load_model(EXAMPLE, DaemonConfig, env={"MQTT_PASSWORD": "x"})
    assert cfg.source.type == "genicam" and cfg.outputs.mqtt.tls is not None
    assert cfg.pipeline.deadline_ms == 200


def test_example_paths_resolve_relative_to_the_file_and_spec_loads(monkeypatch):
    from linesight.config.inspection import load_inspection_spec, load_knowledge_base

    monkeypatch.setenv("MQTT_PASSWORD", "x")
    cfg = load_station(EXAMPLE)[0]
    assert cfg.analysis.spec == EXAMPLE.parent / "inspection_spec.yaml"
    spec = load_inspection_spec(cfg.analysis.spec)
    assert load_knowledge_base(cfg.analysis.knowledge, spec).entries


DAEMON_EXAMPLES = sorted(EXAMPLE.parent.glob("daemon*.yaml"))


@pytest.mark.parametrize("path", DAEMON_EXAMPLES, ids=lambda p: p.name)
def test_every_daemon_example_validates_and_keeps_unauthenticated_feeds_on_loopback(path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MQTT_PASSWORD", "x")
    cfg = load_station(path)[0]
    zmq = cfg.outputs.zmq
    assert all(e is None or e.startswith("tcp://127.0.0.1:") for e in (zmq.verdict_endpoint, zmq.image_endpoint))
    assert cfg.outputs.metrics.host == "127.0.0.1"
    assert not cfg.outputs.mqtt.enabled or cfg.outputs.mqtt.host == "127.0.0.1"


def test_daemon_examples_cover_every_source_type(monkeypatch) -> None:
    monkeypatch.setenv("MQTT_PASSWORD", "x")
    types = sorted(load_station(p)[0].source.type for p in DAEMON_EXAMPLES)
    assert types == ["folder", "genicam", "synthetic", "video"]


def test_a_present_output_section_is_on_unless_it_says_enabled_false():
    """`mqtt:` with a host but no `enabled: true` used to be silently off: the PLC got nothing."""
    from linesight.config.outputs import OutputsConfig

    absent = OutputsConfig.model_validate({})
    assert absent.summary() == {"mqtt": "off", "zmq": "verdicts tcp://127.0.0.1:5556, images tcp://127.0.0.1:5557",
                                "metrics": "http://127.0.0.1:9108/metrics", "archive": "off", "verdict_log": "off"}
    present = OutputsConfig.model_validate({"mqtt": {"host": "broker.plant", "port": 8883, "tls": {}},
                                            "archive": {"dir": "/data/archive"},
                                            "verdict_log": {"path": "/data/verdicts.jsonl"}})
    assert present.summary()["mqtt"] == "mqtts://broker.plant:8883/linesight/site1/line1/station1"
    assert present.archive.enabled and present.summary()["verdict_log"] == "/data/verdicts.jsonl"
    off = OutputsConfig.model_validate({"mqtt": {"enabled": False, "host": "broker.plant"}, "zmq": {"enabled": False}})
    assert off.summary()["mqtt"] == "off" and off.summary()["zmq"] == "off"
    # the shipped example still turns on exactly what it did
    example = load_model(EXAMPLE, DaemonConfig, env={"MQTT_PASSWORD": "x"}).outputs
    assert ([name for name, where in example.summary().items() if where != "off"]
            == ["mqtt", "zmq", "metrics", "archive"])
