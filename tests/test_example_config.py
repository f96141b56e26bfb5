"""The shipped example config validates (it documents every section users copy from)."""
from pathlib import Path

from linesight.config.daemon import DaemonConfig
from linesight.config.loader import load_model

EXAMPLE = Path(__file__).resolve().parents[1] / "config" / "examples" / "daemon.yaml"


def test_example_daemon_yaml_validates():
    cfg = load_model(EXAMPLE, DaemonConfig, env={"MQTT_PASSWORD": "x"})
    assert cfg.source.type == "genicam" and cfg.outputs.mqtt.tls is not None
    assert cfg.pipeline.deadline_ms == 200
