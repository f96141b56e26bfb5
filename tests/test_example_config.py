"""The shipped example config validates (it documents every section users copy from)."""
from pathlib import Path

from linesight.config.daemon import DaemonConfig
from linesight.config.loader import load_model
from linesight.daemon.service import load_config

EXAMPLE = Path(__file__).resolve().parents[1] / "config" / "examples" / "daemon.yaml"


def test_example_daemon_yaml_validates():
    cfg = load_model(EXAMPLE, DaemonConfig, env={"MQTT_PASSWORD": "x"})
    assert cfg.source.type == "genicam" and cfg.outputs.mqtt.tls is not None
    assert cfg.pipeline.deadline_ms == 200


def test_example_paths_resolve_relative_to_the_file_and_spec_loads(monkeypatch):
    from linesight.config.inspection import load_inspection_spec, load_knowledge_base

    monkeypatch.setenv("MQTT_PASSWORD", "x")
    cfg = load_config(EXAMPLE)
    assert cfg.analysis.spec == EXAMPLE.parent / "inspection_spec.yaml"
    spec = load_inspection_spec(cfg.analysis.spec)
    assert load_knowledge_base(cfg.analysis.knowledge, spec).entries
