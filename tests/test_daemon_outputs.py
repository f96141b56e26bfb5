"""`linesight run` end to end for its outputs, metrics and logs, with real parts: a folder source of real
magnetic_tile images, mosquitto, an HTTP scrape of /metrics, the verdict log on disk, the process's stderr.

What it proves: an `mqtt:` section without `enabled` is on; the verdict log holds exactly what the PLC got;
every metric the dashboard and the alert rules query exists in a real daemon's scrape (they cannot drift
apart); a clean start/stop says nothing above INFO and no library chatter by default; `-v --log-format json`
gives one parseable JSON object per line with the structured context, library details included."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from conftest import free_port

REPO = Path(__file__).resolve().parents[1]
BASE = "linesight/s1/l1/cam1"
N_FRAMES = 3
_METRIC = re.compile(r"\b(?:linesight|process|python)_[a-z0-9_]+\b")


@pytest.fixture(scope="module")
def clean_bundle(small_bundle, tmp_path_factory) -> Path:
    """The session bundle without its 'features not pretrained' warning: a clean run raises no alarm at all."""
    from linesight.export.bundle import load_bundle, write_bundle

    b = load_bundle(small_bundle)
    b.manifest.warnings = []
    return write_bundle(tmp_path_factory.mktemp("clean") / "model.zip", b)


def station(tmp: Path, bundle: Path, broker) -> tuple[Path, dict]:
    from helpers import DATA

    frames = tmp / "frames"
    frames.mkdir()
    for p in sorted((DATA / "test" / "crack").iterdir())[:N_FRAMES]:
        shutil.copy(p, frames / p.name)
    cfg = {
        "model": {"bundle": str(bundle), "watch": False},
        "source": {"type": "folder", "name": "cam1", "path": str(frames), "mode": "watch", "watch_existing": True,
                   "rate_hz": 5},
        "pipeline": {"deadline_ms": 3000, "part_id": {"mode": "filename"}, "state_dir": str(tmp / "state")},
        "outputs": {
            # no `enabled: true`: a section that is present is on
            "mqtt": {"host": "127.0.0.1", "port": broker.port, "site": "s1", "line": "l1", "station": "cam1"},
            "zmq": {"verdict_endpoint": f"tcp://127.0.0.1:{free_port()}",
                    "image_endpoint": f"tcp://127.0.0.1:{free_port()}"},
            "metrics": {"host": "127.0.0.1", "port": free_port()},
            "archive": {"dir": str(tmp / "archive"), "save_ok_fraction": 1.0},
            "verdict_log": {"path": str(tmp / "log" / "verdicts.jsonl")},
        },
    }
    path = tmp / "station.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, cfg


def start(cfg: Path, *flags: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "linesight", *flags, "run", "--config", str(cfg)],
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def until(cond, timeout: float, what: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if proc.poll() is not None:
            raise AssertionError(f"the daemon exited while waiting for {what}: {proc.communicate()[0][-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}: {proc.communicate()[0][-3000:]}")
        time.sleep(0.1)


def stop(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out[-3000:]
    return out


def scrape(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()


def queried_metrics() -> set[str]:
    """Every metric name the shipped dashboard and alert rules query (histograms by their _bucket samples)."""
    dash = json.loads((REPO / "config/grafana/linesight.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    rules = yaml.safe_load((REPO / "config/prometheus/linesight.rules.yml").read_text())
    exprs += [r["expr"] for g in rules["groups"] for r in g["rules"]]
    return {name for e in exprs for name in _METRIC.findall(e)}


def test_clean_run_is_quiet_and_exports_everything_the_dashboard_and_rules_query(
        tmp_path, clean_bundle, mosquitto, mqtt_probe) -> None:
    cfg_path, cfg = station(tmp_path, clean_bundle, mosquitto)
    out = cfg["outputs"]
    probe = mqtt_probe(mosquitto, [f"{BASE}/#"])
    proc = start(cfg_path)
    try:
        def verdicts() -> list[bytes]:
            return [m.payload for m in probe.all if m.topic == f"{BASE}/verdict"]

        until(lambda: len(verdicts()) == N_FRAMES, 60, f"{N_FRAMES} verdicts on MQTT", proc)
        probe.publish(f"{BASE}/cmd/feedback", json.dumps({"id": "f1", "seq": 1, "label": "OK"}))
        probe.wait_for(lambda m: m.topic.endswith("/cmd/feedback/reply"), timeout=10)

        def counted() -> float:  # the publish thread counts a verdict right after sending it
            return sum(float(v) for v in re.findall(r"^linesight_verdicts_total\{.*\} (\S+)$",
                                                   scrape(out["metrics"]["port"]), re.MULTILINE))

        until(lambda: counted() == N_FRAMES, 10, "verdicts counted in /metrics", proc)
        text = scrape(out["metrics"]["port"])
    finally:
        if proc.poll() is None:
            output = stop(proc)
        else:
            output = proc.communicate()[0]
    # every name the dashboard and the rules query is in a real scrape; no _created series
    exported = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}
    missing = queried_metrics() - exported
    assert not missing, f"dashboard/rules query metrics the daemon does not export: {sorted(missing)}"
    assert "_created" not in text and 'linesight_feedback_total{label="OK"} 1.0' in text
    assert 'linesight_stage_seconds_count{stage="acquire"} 3.0' in text
    # the verdict log holds exactly what the PLC got, and was flushed on stop
    assert Path(out["verdict_log"]["path"]).read_bytes().splitlines() == verdicts()
    # quiet by default: nothing above INFO, no library chatter; the start-up line names every output
    lines = output.splitlines()
    assert not [x for x in lines if re.search(r" (WARNING|ERROR|CRITICAL) |Traceback", x)], output[-3000:]
    assert not [x for x in lines if "faiss" in x or "ModuleNotFoundError" in x], output[-3000:]
    assert (f"outputs: mqtt mqtt://127.0.0.1:{mosquitto.port}/{BASE}; zmq verdicts {out['zmq']['verdict_endpoint']}, "
            f"images {out['zmq']['image_endpoint']}; metrics http://127.0.0.1:{out['metrics']['port']}/metrics; "
            f"archive {out['archive']['dir']}; verdict_log {out['verdict_log']['path']}") in output


def test_verbose_json_logs_parse_and_carry_context(tmp_path, clean_bundle, mosquitto) -> None:
    cfg_path, cfg = station(tmp_path, clean_bundle, mosquitto)
    log_path = Path(cfg["outputs"]["verdict_log"]["path"])
    proc = start(cfg_path, "-v", "--log-format", "json")
    try:
        until(lambda: log_path.exists() and len(log_path.read_bytes().splitlines()) == N_FRAMES, 60,
              "verdicts in the verdict log", proc)
    finally:
        output = stop(proc) if proc.poll() is None else proc.communicate()[0]
    records = [json.loads(line) for line in output.splitlines() if line.strip()]  # every line is one object
    assert all({"ts", "level", "logger", "message"} <= set(r) for r in records)
    running = next(r for r in records if r["message"] == "linesight daemon running")
    assert running["station"] == "s1/l1/cam1" and running["model"]["id"] == "test-model"
    outputs = next(r for r in records if r["message"].startswith("outputs:"))["outputs"]
    assert outputs["verdict_log"] == str(log_path) and outputs["mqtt"].startswith("mqtt://127.0.0.1:")
    # -v restores what the default hides: library details and DEBUG
    assert any(r["logger"] == "faiss.loader" and r["level"] == "INFO" for r in records)
    assert any(r["level"] == "DEBUG" for r in records)
