"""Issue-11 soak: part identity under sustained overload and across a restart, with real mosquitto.

1. Fits a fast-preset bundle on good synthetic frames (the texture the synthetic camera renders).
2. Measures capacity: decided frames/s with input far above it (15 s).
3. Soak: input at `--factor` x capacity for `--minutes`, split in two daemon runs with a SIGTERM restart in
   the middle (same state_dir). Every verdict is received on MQTT (QoS 1) and checked:
   - identity: seq - camera.source_seq is one constant per run (seq given at acquisition, in frame order),
     part_id == prefix + seq, `run` is the run's id;
   - uniqueness: no seq twice, no gap over both runs (a clean restart continues exactly);
   all of it on the daemon's own verdict log (every verdict it emitted) and, separately, on what reached
   the MQTT subscriber (verdicts the broker discarded after their expiry = deadline, or that the daemon
   dropped and counted, show as gaps there: the daemon's sink counters from /metrics are printed beside);
   - content: decided verdicts of frames the camera drew a defect into are NG, clean ones OK (a verdict on
     the wrong frame would show up here too).
   RSS of the daemon at start / middle / end of each run.
Prints figures and writes JSON; asserts nothing.
    .venv/bin/python bench/soak_identity.py [--minutes 32] [--factor 2] [--size 128] [--out soak.json]
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
from collections import Counter
from datetime import datetime
from pathlib import Path

import cv2
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_daemon import free_port, rss_mb  # noqa: E402

PREFIX, SITE, LINE, STATION = "P", "soak", "l1", "cam"


def fit_bundle(tmp: Path, size: int) -> Path:
    from linesight.config.fit import preset
    from linesight.daemon.sources.synthetic import make_texture, render
    from linesight.trainer.fit import fit

    good = tmp / "data" / "train" / "good"
    good.mkdir(parents=True)
    tex = make_texture(size, size, 0)
    for i in range(60):
        cv2.imwrite(str(good / f"{i:03d}.png"), render(tex, 0, 10_000 + i, 0)[0])
    out = tmp / "bundle"
    fit(tmp / "data", out, preset("fast", model_id="soak"))
    return out


class Subscriber:
    def __init__(self, port: int):
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.verdicts: list[dict] = []
        self.alarms: list[dict] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_message = self._on
        self.client.connect("127.0.0.1", port)
        base = f"linesight/{SITE}/{LINE}/{STATION}"
        self.client.subscribe([(f"{base}/verdict", 1), (f"{base}/alarm", 1)])
        self.client.loop_start()

    def _on(self, _c, _u, m) -> None:
        msg = json.loads(m.payload)
        with self._lock:
            (self.verdicts if m.topic.endswith("/verdict") else self.alarms).append(msg)

    def take(self) -> list[dict]:
        with self._lock:
            out, self.verdicts = self.verdicts, []
        return out


def station(tmp: Path, bundle: Path, port: int, rate: float, size: int) -> Path:
    cfg = {"model": {"bundle": str(bundle), "watch": False},
           "source": {"type": "synthetic", "name": STATION, "width": size, "height": size, "rate_hz": rate,
                      "defect_every": 10},
           "pipeline": {"deadline_ms": 500, "queue_size": 4, "state_dir": str(tmp / "state"), "stats_interval_s": 5,
                        "part_id": {"mode": "counter", "prefix": PREFIX}},
           "analysis": {"enabled": False},
           "outputs": {"mqtt": {"enabled": True, "port": port, "site": SITE, "line": LINE, "station": STATION,
                                "max_queued_messages": 10_000},
                       "verdict_log": {"path": str(tmp / "verdicts.jsonl"), "max_bytes": 256 * 1024**2, "keep": 100},
                       "zmq": {"enabled": False}, "metrics": {"enabled": True, "port": free_port()},
                       "archive": {"enabled": False}}}
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / f"station-{rate:g}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def sink_counters(cfg: Path) -> dict[str, float]:
    """linesight_sink_* and linesight_alarms_total samples of the running daemon (what it knows it dropped)."""
    import urllib.request

    port = yaml.safe_load(cfg.read_text())["outputs"]["metrics"]["port"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        lines = r.read().decode().splitlines()
    return {k: float(v) for k, v in (ln.rsplit(" ", 1) for ln in lines if ln.startswith(("linesight_sink_",
            "linesight_alarms_total")) and not ln.endswith(" 0.0"))}


def read_log(path: Path) -> list[dict]:
    """The daemon's verdict log, rotated files oldest first."""
    files = sorted(path.parent.glob(path.name + ".*"), key=lambda f: -int(f.suffix[1:])) + [path]
    return [json.loads(line) for f in files if f.exists() for line in f.read_text().splitlines() if line]


def run_daemon(cfg: Path, seconds: float, sub: Subscriber, counters: list | None = None
               ) -> tuple[list[dict], list[float]]:
    log = open(cfg.with_suffix(".log"), "a")  # noqa: SIM115 - kept for the daemon's life
    proc = subprocess.Popen([sys.executable, "-m", "linesight", "run", "--config", str(cfg)],
                            stdout=log, stderr=subprocess.STDOUT)
    rss: list[float] = []
    got: list[dict] = []
    t0 = time.monotonic()
    while not got and time.monotonic() - t0 < 60:
        time.sleep(0.2)
        got += sub.take()
    start = time.monotonic()
    rss.append(rss_mb(proc.pid))
    while time.monotonic() - start < seconds:
        time.sleep(1)
        got += sub.take()
        if not len(rss) > 1 and time.monotonic() - start >= seconds / 2:
            rss.append(rss_mb(proc.pid))
    rss.append(rss_mb(proc.pid))
    if counters is not None:
        counters.append(sink_counters(cfg))
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)
    log.close()
    if not got:
        raise SystemExit(f"the daemon published no verdicts; its log: {cfg.with_suffix('.log')}")
    time.sleep(2)  # the last QoS-1 deliveries
    got += sub.take()
    return got, rss


def check(runs: list[list[dict]]) -> dict:
    out: dict = {"runs": []}
    all_seqs: list[int] = []
    content = Counter()
    for got in runs:
        offsets = Counter(v["seq"] - v["camera"]["source_seq"] for v in got)
        offset = offsets.most_common(1)[0][0]
        mismatches = sum(v["seq"] - v["camera"]["source_seq"] != offset or v["part_id"] != f"{PREFIX}{v['seq']:08d}"
                         for v in got)
        run_ids = sorted({v["run"] for v in got})
        reasons = Counter(v["reason"] for v in got if v["fail_safe"])
        for v in got:
            if not v["fail_safe"]:
                drawn = (v["camera"]["source_seq"] + 1) % 10 == 0
                content[(("defect" if drawn else "clean"), v["verdict"])] += 1
        seqs = [v["seq"] for v in got]
        all_seqs += seqs
        emitted_out_of_frame_order = sum(a["camera"]["source_seq"] > b["camera"]["source_seq"]
                                         for a, b in zip(got, got[1:]))
        out["runs"].append({"verdicts": len(got), "run_ids": run_ids, "seq_min": min(seqs), "seq_max": max(seqs),
                            "identity_mismatches": mismatches, "fail_safe": dict(reasons),
                            "decided": len(got) - sum(reasons.values()),
                            "published_out_of_frame_order": emitted_out_of_frame_order})
    uniq = set(all_seqs)
    out["duplicates"] = len(all_seqs) - len(uniq)
    out["gaps"] = (max(uniq) - min(uniq) + 1) - len(uniq)
    out["content"] = {f"{k[0]}->{k[1]}": n for k, n in sorted(content.items())}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=32)
    ap.add_argument("--factor", type=float, default=2.0)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--out", default="soak_identity.json")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="lssoak-"))
    port = free_port()
    (tmp / "m.conf").write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                                "max_queued_messages 100000\n")
    broker = subprocess.Popen([shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(tmp / "m.conf")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    try:
        t0 = time.monotonic()
        bundle = fit_bundle(tmp, a.size)
        print(f"bundle fitted in {time.monotonic() - t0:.0f} s", flush=True)
        sub = Subscriber(port)
        probe, _ = run_daemon(station(tmp / "probe", bundle, port, 400, a.size), 15, sub)
        decided = sum(not v["fail_safe"] for v in probe)
        host = sorted(v["host_ts"] for v in probe)
        secs = (datetime.fromisoformat(host[-1].replace("Z", "+00:00")) -
                datetime.fromisoformat(host[0].replace("Z", "+00:00"))).total_seconds()
        capacity = decided / max(secs, 1e-3)
        rate = a.factor * capacity
        print(f"capacity {capacity:.1f} decided frames/s at {a.size}x{a.size} (input 400 Hz); soak input "
              f"{rate:.1f} Hz for {a.minutes:g} min", flush=True)
        cfg = station(tmp, bundle, port, rate, a.size)
        runs, rss, counters = [], [], []
        log_path = tmp / "verdicts.jsonl"
        logged: list[list[dict]] = []
        for _ in range(2):
            before = len(read_log(log_path))
            got, r = run_daemon(cfg, a.minutes * 60 / 2, sub, counters)
            runs.append(got)
            rss.append(r)
            logged.append(read_log(log_path)[before:])
        result = {"capacity_per_s": capacity, "input_hz": rate, "minutes": a.minutes, "size": a.size,
                  "daemon_verdict_log": check(logged), "mqtt_subscriber": check(runs),
                  "daemon_sink_counters_at_stop": counters, "rss_mb_start_mid_end": rss,
                  "verdicts_dropped_alarms": sum(al.get("code") == "verdicts_dropped" for al in sub.alarms)}
        Path(a.out).write_text(json.dumps(result, indent=2))
        print(json.dumps(result, indent=2))
    finally:
        broker.terminate()
        print(f"work folder (logs): {tmp}")


if __name__ == "__main__":
    main()
