"""Issue-11 broker-kill scenario: the MQTT broker dies (SIGKILL) under a running daemon and comes back.

Measures, with a real mosquitto and the real daemon (`linesight run`, synthetic camera at `--rate` Hz):
  reconnect_s     broker back -> linesight_mqtt_connected 1 on /metrics (polled every 50 ms)
  healthz         /healthz status while the broker is down
  alarm           the verdicts_dropped alarm after the return: its count and seq range against the seqs a
                  subscriber really missed (they must agree: nothing lost silently)
Prints the figures as JSON; asserts nothing.
    .venv/bin/python bench/bench_broker_kill.py --bundle BUNDLE [--down-s 10] [--rounds 3]
"""
from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_daemon import free_port  # noqa: E402

BASE = "linesight/kill/l1/cam"


def broker(conf: Path) -> subprocess.Popen:
    return subprocess.Popen([shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class Subscriber:
    """Connects as soon as the broker accepts (retrying every 50 ms), so it is back before the daemon."""

    def __init__(self, port: int):
        self.port, self.verdicts, self.alarms = port, [], []
        self.lock = threading.Lock()
        self.client = None

    def connect(self, timeout: float = 10.0) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        c.on_message = self._on
        t0 = time.monotonic()
        while True:
            try:
                c.connect("127.0.0.1", self.port)
                break
            except OSError:
                if time.monotonic() - t0 > timeout:
                    raise
                time.sleep(0.05)
        c.subscribe([(f"{BASE}/verdict", 1), (f"{BASE}/alarm", 1)])
        c.loop_start()
        self.client = c

    def drop(self) -> None:
        if self.client:
            self.client.loop_stop()
            self.client = None

    def _on(self, _c, _u, m) -> None:
        with self.lock:
            (self.verdicts if m.topic.endswith("verdict") else self.alarms).append((time.monotonic(),
                                                                                   json.loads(m.payload)))


def scrape(port: int, path: str) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return r.read().decode()
    except urllib.error.HTTPError as exc:  # 503 unhealthy still has a body
        return exc.read().decode()
    except OSError:
        return ""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--rate", type=float, default=20)
    ap.add_argument("--down-s", type=float, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="lskill-"))
    port, mport = free_port(), free_port()
    conf = tmp / "m.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    cfg = {"model": {"bundle": str(Path(a.bundle).resolve()), "watch": False},
           "source": {"type": "synthetic", "name": "cam", "width": 128, "height": 128, "rate_hz": a.rate},
           "pipeline": {"deadline_ms": 1000, "state_dir": str(tmp / "state")},
           "analysis": {"enabled": False},
           "outputs": {"mqtt": {"enabled": True, "port": port, "site": "kill", "line": "l1", "station": "cam"},
                       "zmq": {"enabled": False}, "archive": {"enabled": False},
                       "metrics": {"enabled": True, "port": mport}}}
    (tmp / "station.yaml").write_text(yaml.safe_dump(cfg))
    b = broker(conf)
    sub = Subscriber(port)
    sub.connect()
    daemon = subprocess.Popen([sys.executable, "-m", "linesight", "run", "--config", str(tmp / "station.yaml")],
                              stdout=open(tmp / "daemon.log", "w"), stderr=subprocess.STDOUT)  # noqa: SIM115
    rounds = []
    try:
        while not sub.verdicts:
            time.sleep(0.1)
        time.sleep(3)
        for _ in range(a.rounds):
            b.send_signal(signal.SIGKILL)
            b.wait()
            sub.drop()
            with sub.lock:
                last_before = max(v["seq"] for _, v in sub.verdicts)
            time.sleep(a.down_s / 2)
            health_down = json.loads(scrape(mport, "/healthz") or "{}").get("status")
            time.sleep(a.down_s / 2)
            b = broker(conf)
            t_back = time.monotonic()
            sub.connect()
            reconnect = None
            while time.monotonic() - t_back < 30:
                if "linesight_mqtt_connected 1.0" in scrape(mport, "/metrics"):
                    reconnect = time.monotonic() - t_back
                    break
                time.sleep(0.05)
            time.sleep(3)
            with sub.lock:
                alarms = [al for t, al in sub.alarms if t >= t_back and al.get("code") == "verdicts_dropped"]
                after = sorted(v["seq"] for t, v in sub.verdicts if t >= t_back)
            ctx = alarms[0]["context"] if alarms else {}
            missed = after[0] - last_before - 1 if after else None
            rounds.append({"reconnect_s": None if reconnect is None else round(reconnect, 2),
                           "healthz_while_down": health_down, "alarm": bool(alarms),
                           "alarm_count": ctx.get("count"), "alarm_seq": [ctx.get("first_seq"), ctx.get("last_seq")],
                           "subscriber_missed": missed,
                           "subscriber_gap_seq": [last_before + 1, after[0] - 1] if after else None})
            print(json.dumps(rounds[-1]), flush=True)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(30)
        b.terminate()
    print(json.dumps({"down_s": a.down_s, "rate_hz": a.rate, "rounds": rounds}, indent=2))


if __name__ == "__main__":
    main()
