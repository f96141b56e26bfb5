"""How much does a harvesters fetch running beside it slow a CPU-bound main thread? (harvesters #508)

harvesters 1.4.3 `ImageAcquirer.fetch()` waits for a buffer by calling the GenTL event wait
(`EventManagerNewBuffer.update_event_data`, 1 ms per call by default) in a Python loop, and the
genicam SWIG wrapper keeps the GIL during that native wait. A thread blocked in fetch therefore
competes for the GIL with the inference thread. This script measures it with the simulated GenTL
producer shipped in the `genicam` wheel (viky.cti), in these configurations:

  baseline        the workload alone
  thread-fetch    a thread in `fetch(timeout=60)` waiting for a frame that does not come (the
                  camera waits for a hardware trigger / the next part)
  thread-stream   a thread fetching and copying a free-running 400x400 RGBa8 stream at 50 fps
  thread-poll     a thread doing `try_fetch(timeout=0.001)` then `time.sleep(poll_sleep)`
  process-fetch   the blocking fetch in a child process (spawn); main process untouched

The workload mixes a pure-Python loop and small numpy ops (the Python parts of pre/post-processing
that run between onnxruntime calls). Prints the median wall time of each and the slowdown vs baseline.

Run: .venv/bin/python bench/genicam_gil.py [--cti PATH] [--repeats 5]
"""
from __future__ import annotations

import argparse
import importlib.util
import multiprocessing as mp
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np


def find_viky() -> str | None:
    spec = importlib.util.find_spec("genicam")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "viky.cti"
    return str(path) if path.is_file() else None


def workload() -> float:
    """CPU-bound mix: pure Python arithmetic + many small numpy calls. Returns wall seconds."""
    t0 = time.perf_counter()
    acc = 0
    for i in range(1_500_000):
        acc += i * i % 7
    rng = np.random.default_rng(0)
    a = rng.random((32, 32))
    for _ in range(6_000):
        a = np.tanh(a @ a.T * 0.01)
    return time.perf_counter() - t0


def timed(repeats: int) -> float:
    return statistics.median(workload() for _ in range(repeats))


def open_camera(cti: str, frame_rate: float | None):
    from harvesters.core import Harvester

    h = Harvester()
    h.add_file(cti)
    h.update()
    ia = h.create(0)
    nm = ia.remote_device.node_map
    if frame_rate is not None:
        nm.AcquisitionFrameRate.value = frame_rate
    ia.start()
    return h, ia


def starve(ia) -> None:
    """Stop the device streaming while the data stream stays armed: fetch now waits forever."""
    ia.remote_device.node_map.AcquisitionStop.execute()
    time.sleep(0.2)
    while ia.try_fetch(timeout=0.1) is not None:
        pass


def _fetch_loop(ia, stop: threading.Event, mode: str, poll_sleep: float, counter: list[int]) -> None:
    while not stop.is_set():
        if mode == "poll":
            buf = ia.try_fetch(timeout=0.001)
            if buf is None:
                time.sleep(poll_sleep)
                continue
        else:
            try:
                buf = ia.fetch(timeout=60.0)
            except Exception:  # noqa: BLE001 - bench: end of run unblocks with a timeout/error
                return
        with buf:
            _ = buf.payload.components[0].data.copy()
        counter[0] += 1


def run_thread(cti: str, repeats: int, mode: str, stream: bool, poll_sleep: float = 0.005) -> tuple[float, int]:
    h, ia = open_camera(cti, 50.0 if stream else None)
    try:
        if not stream:
            starve(ia)
        stop = threading.Event()
        counter = [0]
        th = threading.Thread(target=_fetch_loop, args=(ia, stop, mode, poll_sleep, counter), daemon=True)
        th.start()
        time.sleep(0.2)
        result = timed(repeats)
        stop.set()
        if not stream:
            ia.remote_device.node_map.AcquisitionStart.execute()  # one frame unblocks fetch
        th.join(10)
        return result, counter[0]
    finally:
        ia.destroy()
        h.reset()


def _child(cti: str, ready, stop) -> None:
    h, ia = open_camera(cti, None)
    starve(ia)
    ready.set()
    while not stop.is_set():
        try:
            buf = ia.fetch(timeout=0.5)
        except Exception:  # noqa: BLE001 - genicam TimeoutException: poll the stop flag again
            continue
        buf.queue()
    ia.destroy()
    h.reset()


def run_process(cti: str, repeats: int) -> float:
    ctx = mp.get_context("spawn")
    ready, stop = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_child, args=(cti, ready, stop), daemon=True)
    proc.start()
    try:
        if not ready.wait(30):
            raise RuntimeError("child did not open the camera within 30 s")
        time.sleep(0.2)
        return timed(repeats)
    finally:
        stop.set()
        proc.join(10)
        if proc.is_alive():
            proc.terminate()
            proc.join(5)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cti", default=None, help="GenTL producer (default: viky.cti from the genicam wheel)")
    ap.add_argument("--repeats", type=int, default=5, help="workload runs per configuration (median)")
    args = ap.parse_args()
    cti = args.cti or find_viky()
    if cti is None or not os.path.isfile(cti):
        print("no GenTL producer: install `genicam` (ships viky.cti) or pass --cti", file=sys.stderr)
        return 2

    base = timed(args.repeats)
    rows = [("baseline", base, "")]
    t, _ = run_thread(cti, args.repeats, "blocking", stream=False)
    rows.append(("thread-fetch (waiting, fetch timeout=60 s)", t, ""))
    t, n = run_thread(cti, args.repeats, "blocking", stream=True)
    rows.append(("thread-stream (50 fps, fetch+copy)", t, f"{n} frames"))
    for sleep_s in (0.002, 0.005, 0.010):
        t, _ = run_thread(cti, args.repeats, "poll", stream=False, poll_sleep=sleep_s)
        rows.append((f"thread-poll (try_fetch 1 ms + sleep {sleep_s * 1e3:.0f} ms, waiting)", t, ""))
    rows.append(("process-fetch (waiting, child process)", run_process(cti, args.repeats), ""))

    print(f"cpu cores: {os.cpu_count()}  python {sys.version.split()[0]}  cti: {Path(cti).name}")
    print(f"{'configuration':58s} {'median s':>9s} {'slowdown':>9s}")
    for name, secs, note in rows:
        print(f"{name:58s} {secs:9.3f} {secs / base:8.2f}x {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
