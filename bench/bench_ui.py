"""Issue-16 benchmark: does attaching the web UI slow a station, how fresh is the live view, how fast is inspect?

One station (`linesight run`: synthetic camera at --rate Hz, --width x --height, a drawn defect on every 10th frame,
analysis, NG archive, MQTT verdicts, ZeroMQ verdict + image feeds) runs throughout. Windows of --window-s seconds
alternate: A without the UI, B with `linesight ui` subscribed to the station's feeds and a headless chromium showing
the Stations page (A B A B ...), so drift cancels. Per window: decided frames/s and trigger->verdict p50/p99 (the
verdicts' latency_ms.total, received on MQTT). In B windows the page records when each frame finished loading;
against the frame's acquisition time (the verdict's host_ts, same clock) that is the frame->browser latency.
Last, `POST /api/v1/inspect` with a --inspect-width x --inspect-height PNG (default 5 MP), --inspect-n times, through
a UI whose inspect model is the same bundle: wall time per request and the engine's part of it.
Prints figures; asserts nothing.
    .venv/bin/python bench/bench_ui.py [--bundle B] [--width 1280 --height 1024] [--rate 10] [--window-s 60]
        [--windows 4]
"""
from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_daemon import DEFECT_EVERY, fit_bundle, free_port, verdict_collector  # noqa: E402 - the sibling bench, not a package

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
TOKEN = "bench-token-0123456789abcdef"
#: Injected into the Stations page: the wall time (ms since the epoch) each frame of a seq finished loading.
LOAD_HOOK = """() => {
  window.__loads = [];
  document.addEventListener('load', (e) => {
    const t = e.target;
    if (t.classList && t.classList.contains('frame')) {
      const m = /seq=(\\d+)/.exec(t.src);
      if (m) window.__loads.push([Number(m[1]), Date.now()]);
    }
  }, true);
}"""


def epoch_ms(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1e3


def station(bundle: str, tmp: Path, port: int, a: argparse.Namespace) -> tuple[dict, subprocess.Popen, list[dict]]:
    """The station's config (its endpoints) and process; verdicts arrive in the returned list (MQTT QoS 1)."""
    cfg = {"model": {"bundle": bundle, "watch": False},
           "source": {"type": "synthetic", "name": "bench", "width": a.width, "height": a.height, "rate_hz": a.rate,
                      "defect_every": DEFECT_EVERY},
           "pipeline": {"deadline_ms": 500, "queue_size": 4},
           "analysis": {"enabled": True},
           "outputs": {"mqtt": {"enabled": True, "port": port, "station": "bench"},
                       "zmq": {"enabled": True, "verdict_endpoint": f"tcp://127.0.0.1:{free_port()}",
                               "image_endpoint": f"tcp://127.0.0.1:{free_port()}"},
                       "metrics": {"enabled": False},
                       "archive": {"enabled": True, "dir": str(tmp / "archive"), "save_ok_fraction": 0.0}}}
    (tmp / "station.yaml").write_text(yaml.safe_dump(cfg))
    _, verdicts = verdict_collector(port)
    log = open(tmp / "station.log", "w")  # noqa: SIM115 - kept for the station's life
    proc = subprocess.Popen([sys.executable, "-m", "linesight", "run", "--config", str(tmp / "station.yaml")],
                            stdout=log, stderr=subprocess.STDOUT)
    while not verdicts and proc.poll() is None:
        time.sleep(0.1)
    if proc.poll() is not None:
        raise SystemExit(f"the station exited with {proc.returncode}; log: {log.name}")
    return cfg, proc, verdicts


def start_ui(tmp: Path, cfg: dict, bundle: str, name: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    zmq = cfg["outputs"]["zmq"]
    ui = {"listen": {"port": port}, "auth": {"tokens_env": "BENCH_UI_TOKEN"},
          "stations": [{"name": "bench", "verdict_endpoint": zmq["verdict_endpoint"],
                        "image_endpoint": zmq["image_endpoint"]}],
          "inspect": {"bundle": bundle, "deadline_ms": 60000}}
    (tmp / f"{name}.yaml").write_text(yaml.safe_dump(ui))
    log = open(tmp / f"{name}.log", "w")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "linesight", "ui", "--config", str(tmp / f"{name}.yaml")],
                            stdout=log, stderr=subprocess.STDOUT, env={"BENCH_UI_TOKEN": TOKEN,
                                                                       "PATH": "/usr/bin:/bin"})
    url = f"http://127.0.0.1:{port}"
    import httpx

    for _ in range(300):
        try:
            if httpx.get(f"{url}/api/v1/inspect", timeout=1).json()["model"]:
                return proc, url
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        if proc.poll() is not None:
            raise SystemExit(f"linesight ui exited with {proc.returncode}; log: {log.name}")
        time.sleep(0.2)
    raise SystemExit(f"linesight ui did not come up; log: {log.name}")


def window(verdicts: list[dict], seconds: float) -> dict:
    start, t0 = len(verdicts), time.monotonic()
    time.sleep(seconds)
    got = verdicts[start:]
    decided = [v for v in got if not v["fail_safe"]]
    lat = np.array([v["latency_ms"]["total"] for v in decided]) if decided else np.array([np.nan])
    return {"decided_per_s": len(decided) / (time.monotonic() - t0),
            "fail_safe": sum(v["fail_safe"] for v in got),
            "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99))}


def inspect_latency(url: str, a: argparse.Namespace) -> dict:
    import cv2
    import httpx

    from linesight.daemon.sources.synthetic import SyntheticFrames, make_texture

    image = SyntheticFrames(make_texture(a.inspect_width, a.inspect_height, 0), seed=3).frame(0, 0)[0]
    png = cv2.imencode(".png", image)[1].tobytes()
    walls, engine = [], []
    with httpx.Client(timeout=120) as c:
        for i in range(a.inspect_n + 1):
            t0 = time.perf_counter()
            r = c.post(f"{url}/api/v1/inspect", content=png, headers={"Content-Type": "image/png",
                                                                      "Authorization": f"Bearer {TOKEN}"})
            wall = (time.perf_counter() - t0) * 1e3
            r.raise_for_status()
            if i:  # the first request warms the engine's session
                walls.append(wall)
                engine.append(r.json()["verdict"]["latency_ms"]["inference"])
    return {"size": f"{a.inspect_width}x{a.inspect_height}", "png_mb": round(len(png) / 2**20, 1), "n": len(walls),
            "wall_p50_ms": float(np.median(walls)), "wall_p95_ms": float(np.percentile(walls, 95)),
            "engine_p50_ms": float(np.median(engine))}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", help="bundle to run (default: fit one on synthetic frames of the station's size)")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=1024)
    ap.add_argument("--rate", type=float, default=10, help="station input Hz (below its capacity)")
    ap.add_argument("--window-s", type=float, default=60)
    ap.add_argument("--windows", type=int, default=4, help="A B A B ...: an even number")
    ap.add_argument("--inspect-width", type=int, default=2448)
    ap.add_argument("--inspect-height", type=int, default=2048)
    ap.add_argument("--inspect-n", type=int, default=20)
    a = ap.parse_args()
    from playwright.sync_api import sync_playwright

    tmp = Path(tempfile.mkdtemp(prefix="lsui-"))
    port = free_port()
    (tmp / "m.conf").write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    broker = subprocess.Popen([shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(tmp / "m.conf")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs: list[subprocess.Popen] = [broker]
    try:
        time.sleep(0.5)
        bundle = str(Path(a.bundle).resolve()) if a.bundle else str(fit_bundle(tmp, a.width, a.height))
        cfg, st, verdicts = station(bundle, tmp, port, a)
        procs.append(st)
        time.sleep(5)  # warm-up
        rows, loads = [], []
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS, headless=True)
            for w in range(a.windows):
                attached = w % 2 == 1
                ui = page = None
                if attached:
                    ui, url = start_ui(tmp, cfg, bundle, f"ui{w}")
                    page = browser.new_page(viewport={"width": 1280, "height": 900})
                    page.add_init_script(f"({LOAD_HOOK})()")
                    page.goto(f"{url}/stations", wait_until="load")
                    page.wait_for_selector(".frame", state="attached")
                    time.sleep(3)  # the page is live before the window starts
                    page.evaluate("() => { window.__loads = []; }")
                r = window(verdicts, a.window_s) | {"window": w + 1, "ui": attached}
                if attached:
                    host_ts = {v["seq"]: epoch_ms(v["host_ts"]) for v in verdicts}
                    got = page.evaluate("() => window.__loads")
                    lag = [t - host_ts[s] for s, t in got if s in host_ts]
                    loads += lag
                    r |= {"frames_shown": len(lag), "frame_to_browser_p50_ms": float(np.median(lag)) if lag else None,
                          "frame_to_browser_p95_ms": float(np.percentile(lag, 95)) if lag else None}
                    page.close()
                    ui.send_signal(signal.SIGTERM)
                    ui.wait(30)
                rows.append(r)
                print(json.dumps(r), flush=True)
            browser.close()
        without = [r for r in rows if not r["ui"]]
        with_ui = [r for r in rows if r["ui"]]
        ui, url = start_ui(tmp, cfg, bundle, "ui-inspect")
        procs.append(ui)
        inspect = inspect_latency(url, a)
        print(json.dumps({
            "station": f"{a.width}x{a.height} at {a.rate:g} Hz, {a.windows} windows of {a.window_s:g} s",
            "without_ui": {"decided_per_s": round(float(np.mean([r["decided_per_s"] for r in without])), 2),
                           "p99_ms": round(float(np.mean([r["p99_ms"] for r in without])), 1),
                           "p50_ms": round(float(np.mean([r["p50_ms"] for r in without])), 1)},
            "with_ui": {"decided_per_s": round(float(np.mean([r["decided_per_s"] for r in with_ui])), 2),
                        "p99_ms": round(float(np.mean([r["p99_ms"] for r in with_ui])), 1),
                        "p50_ms": round(float(np.mean([r["p50_ms"] for r in with_ui])), 1)},
            "frame_to_browser_ms": {"n": len(loads), "p50": round(float(np.median(loads)), 1) if loads else None,
                                    "p95": round(float(np.percentile(loads, 95)), 1) if loads else None},
            "inspect": inspect, "work": str(tmp)}), flush=True)
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()


if __name__ == "__main__":
    main()
