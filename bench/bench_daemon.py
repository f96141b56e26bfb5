"""Issue-3 benchmark: the daemon at line speed with real MQTT (mosquitto) + ZeroMQ publishing.

Phase 1 (input faster than capacity, default 60 Hz like a fast area-scan camera) -> sustained decided
frames/s (the rest get fail-safe frame_dropped verdicts, counted). An unpaced synthetic source is not
used: generating 600+ frames/s in-process starves inference of the GIL, which no camera does. Phase 2 (paced below capacity, long):
trigger->verdict p50/p99 from the verdicts received on MQTT, and RSS at start and at the end.
Prints figures; asserts nothing.
    .venv/bin/python bench/bench_daemon.py --bundle model.zip [--soak-s 600] [--rate 30]
"""
from __future__ import annotations

import argparse
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_phase(bundle: str, port: int, tmp: Path, rate: float | None, seconds: float, size: int,
              queue_size: int = 4) -> dict:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    cfg = {"model": {"bundle": bundle, "watch": False},
           "source": {"type": "synthetic", "name": "bench", "width": size, "height": size, "rate_hz": rate,
                      "defect_every": 10},
           "pipeline": {"deadline_ms": 200, "queue_size": queue_size, "stats_interval_s": 1},
           "outputs": {"mqtt": {"enabled": True, "port": port, "station": "bench"},
                       "zmq": {"enabled": True, "verdict_endpoint": f"tcp://127.0.0.1:{free_port()}",
                               "image_endpoint": f"tcp://127.0.0.1:{free_port()}"},
                       "metrics": {"enabled": False}, "archive": {"enabled": False}}}
    path = tmp / f"bench-{rate}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    verdicts: list[dict] = []
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.on_message = lambda c, u, m: verdicts.append(json.loads(m.payload))
    client.connect("127.0.0.1", port)
    client.subscribe("linesight/site1/line1/bench/verdict", qos=1)
    client.loop_start()
    proc = subprocess.Popen([sys.executable, "-m", "linesight", "run", "--config", str(path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not verdicts and proc.poll() is None:
        time.sleep(0.1)
    time.sleep(3)  # warm-up
    start_n, t0, rss0 = len(verdicts), time.monotonic(), rss_mb(proc.pid)
    rss_trace = [rss0]
    while time.monotonic() - t0 < seconds:
        time.sleep(min(30, seconds))
        rss_trace.append(rss_mb(proc.pid))
    window = verdicts[start_n:]
    elapsed = time.monotonic() - t0
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
    client.loop_stop()
    decided = [v for v in window if not v["fail_safe"]]
    lat = np.array([v["latency_ms"]["total"] for v in decided]) if decided else np.array([np.nan])
    reasons: dict[str, int] = {}
    for v in window:
        if v["fail_safe"]:
            reasons[v["reason"]] = reasons.get(v["reason"], 0) + 1
    return {"rate_hz": rate, "seconds": elapsed, "verdicts_per_s": len(window) / elapsed,
            "decided_per_s": len(decided) / elapsed, "fail_safe": reasons,
            "trigger_to_verdict_p50_ms": float(np.percentile(lat, 50)),
            "trigger_to_verdict_p99_ms": float(np.percentile(lat, 99)),
            "inference_p50_ms": float(np.median([v["latency_ms"]["inference"] for v in decided])) if decided else None,
            "rss_start_mb": rss0, "rss_end_mb": rss_trace[-1], "rss_max_mb": max(rss_trace)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--max-s", type=float, default=60)
    ap.add_argument("--max-rate", type=float, default=60)
    ap.add_argument("--soak-s", type=float, default=600)
    ap.add_argument("--rate", type=float, default=30)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--queue", type=int, default=4, help="pipeline.queue_size (latency vs drops under overload)")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="lsdaemon-"))
    port = free_port()
    (tmp / "m.conf").write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    broker = subprocess.Popen([shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(tmp / "m.conf")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    try:
        bundle = str(Path(a.bundle).resolve())
        r1 = run_phase(bundle, port, tmp, a.max_rate, a.max_s, a.size, a.queue)
        print(f"[input {a.max_rate:g} Hz] {r1['decided_per_s']:.1f} decided frames/s ({r1['verdicts_per_s']:.1f} verdicts/s, "
              f"fail-safe {r1['fail_safe']}), trigger->verdict p50 {r1['trigger_to_verdict_p50_ms']:.1f} ms "
              f"p99 {r1['trigger_to_verdict_p99_ms']:.1f} ms (includes queue wait), {a.size}x{a.size} frames",
              flush=True)
        r2 = run_phase(bundle, port, tmp, a.rate, a.soak_s, a.size, a.queue)
        print(f"[paced {a.rate:g} Hz, {r2['seconds']:.0f} s] {r2['decided_per_s']:.1f} decided frames/s, fail-safe "
              f"{r2['fail_safe']}, trigger->verdict p50 {r2['trigger_to_verdict_p50_ms']:.1f} ms p99 "
              f"{r2['trigger_to_verdict_p99_ms']:.1f} ms, inference p50 {r2['inference_p50_ms']:.1f} ms, RSS start "
              f"{r2['rss_start_mb']:.0f} MB end {r2['rss_end_mb']:.0f} MB max {r2['rss_max_mb']:.0f} MB", flush=True)
        print(json.dumps({"max_rate": r1, "paced": r2}, indent=2))
    finally:
        broker.terminate()


if __name__ == "__main__":
    main()
