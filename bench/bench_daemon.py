"""Issue-3/13 benchmark: the daemon at line speed with real MQTT (mosquitto) + ZeroMQ, on a realistic mix.

The mix: synthetic camera frames of --width x --height with a drawn defect on every 10th frame (10 % NG with
regions), analysis on (learned defect types too when the bundle has them), NG frames archived (PNG, into the
work folder), ZeroMQ verdict and image feeds on with an HMI subscribed to the images, every verdict on MQTT
(QoS 1). Without --bundle it fits its own (fast preset, whole-frame view) on frames of the same size, calibrates
it on labeled synthetic frames and learns the two drawn defect types on it.

Phase 1 (input faster than capacity, default 60 Hz like a fast area-scan camera) -> sustained decided
frames/s (the rest get fail-safe frame_dropped verdicts, counted), and how many of the frames' verdicts
reached the MQTT subscriber (whole run, after the daemon drained). An unpaced synthetic source is not
used: a source reading as fast as it can starves inference of the GIL, which no camera does.
Phase 2 (paced below capacity, default 70 % of phase 1's rate, long): trigger->verdict p50/p99 from the
verdicts received on MQTT, engine inference ms of OK frames, and RSS at start and at the end.
Phase 3 (only when the frames are not 224x224): the same at 224x224, paced low, for the cost ratio of an OK
frame at the bench's size to an OK 224x224 frame (latency_ms.inference of the verdicts).
Prints figures; asserts nothing.
    .venv/bin/python bench/bench_daemon.py [--bundle model.zip] [--width 2448 --height 2048] [--soak-s 600]
        [--rate 30] [--max-s 60] [--max-rate 60]
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
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import yaml

DEFECT_EVERY = 10  # 10 % of the frames carry a drawn defect
REF_SIZE = 224  # the cost ratio's reference frame size


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def fit_bundle(tmp: Path, width: int, height: int) -> Path:
    """Fast-preset whole-frame bundle on good synthetic frames of this size, calibrated and with learned types,
    as a line would set it up: fit, calibrate on labeled good + defective frames, learn the defect types.

    The frames show the camera's surface (texture seed 0) under other noise planes (seeds 1, 2), so the
    bundle never saw the exact pixels it will judge; the defects are the camera's two drawn kinds.
    """
    import cv2

    from linesight.config.fit import preset
    from linesight.daemon.sources.synthetic import SyntheticFrames, make_texture
    from linesight.trainer.evaluate import calibrate
    from linesight.trainer.fit import fit
    from linesight.trainer.types import train_types

    def save(folder: Path, name: str, img: np.ndarray) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / name), img)

    texture = make_texture(width, height, 0)
    train, labeled = SyntheticFrames(texture, seed=1), SyntheticFrames(texture, seed=2)
    data, examples = tmp / f"data-{width}x{height}", tmp / f"labeled-{width}x{height}"
    for i in range(60):
        save(data / "train" / "good", f"{i:03d}.png", train.frame(i, 0)[0])
    for i in range(20):
        save(examples / "test" / "good", f"{i:03d}.png", labeled.frame(i, 0)[0])
    for i in range(16):  # frame indices with a defect: scratch and blob alternate
        k = DEFECT_EVERY * (i + 1) - 1
        img, chunk = labeled.frame(k, DEFECT_EVERY)
        mask = (cv2.absdiff(img, labeled.frame(k, 0)[0]) > 10).astype(np.uint8) * 255
        save(examples / "test" / chunk["defect_kind"], f"{i:03d}.png", img)
        save(examples / "ground_truth" / chunk["defect_kind"], f"{i:03d}_mask.png", mask)
    out = tmp / f"bundle-{width}x{height}"
    fit(data, out, preset("fast", model_id="bench", views={"scales": [0]}))
    calibrate(out, examples, policy="fewest_errors")
    train_types(out, examples, folds=4)
    return out


def drawn_kind(source_seq: int) -> str:
    """What SyntheticFrames drew on defect frame `source_seq` (scratch and blob alternate)."""
    return "scratch" if ((source_seq + 1) // DEFECT_EVERY) % 2 == 1 else "blob"


def learned_types(bundle: str) -> list[str]:
    """The bundle's learned defect types ([] = shape rules only)."""
    from linesight.export.bundle import load_bundle
    from linesight.export.type_classifier import TypeClassifier

    clf = TypeClassifier.from_bundle(load_bundle(bundle))
    return [] if clf is None else list(clf.labels)


def per_frame_inference_ms(verdicts: list[dict]) -> list[float]:
    """latency_ms.inference per OK frame: a micro-batch's frames share its time (consecutive, equal value)."""
    decided = sorted((v for v in verdicts if not v["fail_safe"]), key=lambda v: v["seq"])
    batches: list[list[dict]] = []
    for v in decided:
        last = batches[-1][-1] if batches else None
        same = last and last["seq"] + 1 == v["seq"] and last["latency_ms"]["inference"] == v["latency_ms"]["inference"]
        if same:
            batches[-1].append(v)
        else:
            batches.append([v])
    return [v["latency_ms"]["inference"] / len(b) for b in batches for v in b if v["verdict"] == "OK"]


def fmt(value: float | None, spec: str = ".1f") -> str:
    """A figure, or n/a when the phase had none (e.g. no OK frame decided)."""
    return "n/a" if value is None else format(value, spec)


class ImageSubscriber:
    """An HMI showing the live picture: the daemon encodes and sends images only while someone subscribes."""

    def __init__(self, endpoint: str) -> None:
        import zmq

        self.received = 0
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.SUB)
        self._sock.setsockopt(zmq.RCVHWM, 2)  # an HMI wants the newest picture, not a backlog
        self._sock.connect(endpoint)
        self._sock.subscribe(b"image")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._sock.poll(200):
                self._sock.recv_multipart()
                self.received += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sock.close(0)
        self._ctx.term()


def verdict_collector(port: int) -> tuple[Any, list[dict]]:
    """An MQTT client (started) appending every verdict of station `bench` (QoS 1) to the returned list."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    verdicts: list[dict] = []
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.on_message = lambda c, u, m: verdicts.append(json.loads(m.payload))
    client.connect("127.0.0.1", port)
    client.subscribe("linesight/site1/line1/bench/verdict", qos=1)
    client.loop_start()
    return client, verdicts


def run_phase(bundle: str, port: int, tmp: Path, rate: float | None, seconds: float, width: int, height: int,
              queue_size: int = 4, deadline_ms: float = 200) -> dict:
    name = f"{width}x{height}-{rate}"
    archive = tmp / f"archive-{name}"
    image_endpoint = f"tcp://127.0.0.1:{free_port()}"
    cfg = {"model": {"bundle": bundle, "watch": False},
           "source": {"type": "synthetic", "name": "bench", "width": width, "height": height, "rate_hz": rate,
                      "defect_every": DEFECT_EVERY},
           "pipeline": {"deadline_ms": deadline_ms, "queue_size": queue_size, "stats_interval_s": 1},
           "analysis": {"enabled": True},
           "outputs": {"mqtt": {"enabled": True, "port": port, "station": "bench"},
                       "zmq": {"enabled": True, "verdict_endpoint": f"tcp://127.0.0.1:{free_port()}",
                               "image_endpoint": image_endpoint},
                       "metrics": {"enabled": False},
                       "archive": {"enabled": True, "dir": str(archive), "save_ok_fraction": 0.0,
                                   "max_bytes": 4 * 1024**3}}}
    path = tmp / f"bench-{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    client, verdicts = verdict_collector(port)
    hmi = ImageSubscriber(image_endpoint)
    log = open(tmp / f"bench-{name}.log", "w")  # noqa: SIM115 - kept for the daemon's life
    proc = subprocess.Popen([sys.executable, "-m", "linesight", "run", "--config", str(path)],
                            stdout=log, stderr=subprocess.STDOUT)
    while not verdicts and proc.poll() is None:
        time.sleep(0.1)
    if proc.poll() is not None:
        raise SystemExit(f"the daemon exited with {proc.returncode} before its first verdict; log: {log.name}")
    time.sleep(3)  # warm-up
    start_n, t0, rss0 = len(verdicts), time.monotonic(), rss_mb(proc.pid)
    rss_trace = [rss0]
    while time.monotonic() - t0 < seconds:
        time.sleep(min(30, seconds))
        rss_trace.append(rss_mb(proc.pid))
    window = verdicts[start_n:]
    elapsed = time.monotonic() - t0
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)
    log.close()
    time.sleep(2)  # the last QoS-1 deliveries
    client.loop_stop()
    hmi.close()
    # every frame's verdict, counted over the whole run after the daemon drained: in a window, verdicts published
    # out of frame order (fail-safe drops go out before queued frames are decided) look like gaps at its edges
    seqs = {v["seq"] for v in verdicts}
    frames = max(seqs) - min(seqs) + 1  # seq is given per frame at acquisition, in order
    decided = [v for v in window if not v["fail_safe"]]
    lat = np.array([v["latency_ms"]["total"] for v in decided]) if decided else np.array([np.nan])
    inference = per_frame_inference_ms(window)
    reasons: dict[str, int] = {}
    for v in window:
        if v["fail_safe"]:
            reasons[v["reason"]] = reasons.get(v["reason"], 0) + 1
    defects = [d for v in decided for d in v.get("defects", [])]
    return {"rate_hz": rate, "size": f"{width}x{height}", "seconds": elapsed, "run_frames": frames,
            "run_verdicts_on_mqtt": len(seqs), "run_images_to_hmi": hmi.received,
            "verdicts_per_s": len(window) / elapsed, "decided_per_s": len(decided) / elapsed, "fail_safe": reasons,
            "decided_ng_fraction": sum(v["verdict"] == "NG" for v in decided) / len(decided) if decided else None,
            # learned_type None: the classifier did not run on that region
            "regions_learned_type": dict(Counter(str(d.get("learned_type")) for d in defects)),
            # the drawn kind (the synthetic source alternates scratch, blob) -> the worst region's final type
            "worst_region_type": dict(Counter(
                f"{drawn_kind(v['camera']['source_seq'])}->{v['defects'][0].get('type')}" for v in decided
                if v["verdict"] == "NG" and v.get("defects") and (v["camera"]["source_seq"] + 1) % DEFECT_EVERY == 0)),
            "content": dict(Counter(f"{'defect' if (v['camera']['source_seq'] + 1) % DEFECT_EVERY == 0 else 'clean'}"
                                    f"->{v['reason'] if v['fail_safe'] else v['verdict']}" for v in window)),
            "archived_records": len(list(archive.rglob("*.json"))),  # the whole run, warm-up included
            "trigger_to_verdict_p50_ms": float(np.percentile(lat, 50)),
            "trigger_to_verdict_p99_ms": float(np.percentile(lat, 99)),
            "ok_inference_p50_ms": float(np.median(inference)) if inference else None,
            "rss_start_mb": rss0, "rss_end_mb": rss_trace[-1], "rss_max_mb": max(rss_trace),
            "rss_trace_mb": [round(x) for x in rss_trace]}  # every 30 s: growth vs a plateau


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", help="bundle to run (default: fit one on synthetic frames of the bench's size)")
    ap.add_argument("--max-s", type=float, default=60)
    ap.add_argument("--max-rate", type=float, default=60)
    ap.add_argument("--soak-s", type=float, default=600)
    ap.add_argument("--rate", type=float, help="paced phase input Hz (default: 70 %% of phase 1's decided frames/s)")
    ap.add_argument("--size", type=int, default=256, help="square frames (when --width/--height are not given)")
    ap.add_argument("--width", type=int)
    ap.add_argument("--height", type=int)
    ap.add_argument("--ref-s", type=float, default=30, help="phase 3 (224x224 reference) seconds")
    ap.add_argument("--queue", type=int, default=4, help="pipeline.queue_size (latency vs drops under overload)")
    ap.add_argument("--deadline-ms", type=float, default=200, help="pipeline.deadline_ms")
    a = ap.parse_args()
    width, height = a.width or a.size, a.height or a.size
    tmp = Path(tempfile.mkdtemp(prefix="lsdaemon-"))
    port = free_port()
    (tmp / "m.conf").write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    broker = subprocess.Popen([shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(tmp / "m.conf")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    try:
        t0 = time.monotonic()
        bundle = str(Path(a.bundle).resolve()) if a.bundle else str(fit_bundle(tmp, width, height))
        types = learned_types(bundle)
        print(f"bundle {bundle}{'' if a.bundle else f' (fitted in {time.monotonic() - t0:.0f} s)'}, learned types "
              f"{types or 'none (shape rules)'}; {width}x{height} frames, a defect every {DEFECT_EVERY}th, analysis, "
              "NG archive, ZMQ image feed on", flush=True)
        r1 = run_phase(bundle, port, tmp, a.max_rate, a.max_s, width, height, a.queue, a.deadline_ms)
        print(f"[input {a.max_rate:g} Hz] {r1['decided_per_s']:.1f} decided frames/s ({r1['verdicts_per_s']:.1f} "
              f"verdicts/s, fail-safe {r1['fail_safe']}), whole run: verdicts on MQTT {r1['run_verdicts_on_mqtt']} of "
              f"{r1['run_frames']} frames, {r1['run_images_to_hmi']} images to the HMI; trigger->verdict p50 "
              f"{r1['trigger_to_verdict_p50_ms']:.1f} ms p99 {r1['trigger_to_verdict_p99_ms']:.1f} ms (includes queue "
              "wait)", flush=True)
        rate = a.rate or max(1.0, round(0.7 * r1["decided_per_s"], 1))
        r2 = run_phase(bundle, port, tmp, rate, a.soak_s, width, height, a.queue, a.deadline_ms)
        print(f"[paced {rate:g} Hz, {r2['seconds']:.0f} s] {r2['decided_per_s']:.1f} decided frames/s, fail-safe "
              f"{r2['fail_safe']}, NG {fmt(r2['decided_ng_fraction'], '.1%')} of decided, frames {r2['content']}, "
              f"learned types of the regions {r2['regions_learned_type']}, drawn -> worst region's type "
              f"{r2['worst_region_type']}, whole run: verdicts on MQTT "
              f"{r2['run_verdicts_on_mqtt']} of {r2['run_frames']} frames, {r2['run_images_to_hmi']} images to the "
              f"HMI, {r2['archived_records']} NG archived; trigger->verdict p50 "
              f"{r2['trigger_to_verdict_p50_ms']:.1f} ms p99 {r2['trigger_to_verdict_p99_ms']:.1f} ms, OK inference "
              f"p50 {fmt(r2['ok_inference_p50_ms'])} ms, RSS start {r2['rss_start_mb']:.0f} MB end "
              f"{r2['rss_end_mb']:.0f} MB max {r2['rss_max_mb']:.0f} MB", flush=True)
        result = {"bundle": bundle, "learned_types": types, "max_rate": r1, "paced": r2}
        if (width, height) != (REF_SIZE, REF_SIZE):
            ref_bundle = bundle if a.bundle else str(fit_bundle(tmp, REF_SIZE, REF_SIZE))
            r3 = run_phase(ref_bundle, port, tmp, 10.0, a.ref_s, REF_SIZE, REF_SIZE, a.queue, a.deadline_ms)
            ok, ref = r2["ok_inference_p50_ms"], r3["ok_inference_p50_ms"]
            ratio = ok / ref if ok and ref else None
            print(f"[reference {REF_SIZE}x{REF_SIZE}, paced 10 Hz] OK inference p50 {fmt(ref)} ms: an OK "
                  f"{width}x{height} frame costs {fmt(ratio)}x an OK {REF_SIZE}x{REF_SIZE} frame", flush=True)
            result.update(reference=r3, ok_cost_ratio=ratio)
        print(json.dumps(result, indent=2))
    finally:
        broker.terminate()
        print(f"work folder (logs, archive): {tmp}")


if __name__ == "__main__":
    main()
