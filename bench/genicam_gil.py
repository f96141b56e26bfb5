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
  linesight-*     the daemon's GenICamSource (0 ms GenTL event wait, 0.2 ms try_fetch, 2 ms idle
                  sleep), waiting for frames / streaming 50 fps into a reader thread

The workload mixes a pure-Python loop and small numpy ops (the Python parts of pre/post-processing
that run between onnxruntime calls). Each configuration is timed right after a baseline run, over several
interleaved rounds, and the median ratio is printed - other load on the machine then hits both alike.

Run: .venv/bin/python bench/genicam_gil.py [--cti PATH] [--repeats 3] [--rounds 5]
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


def run_source(cti: str, repeats: int, stream: bool) -> tuple[float, int]:
    """The real linesight source: idle-waiting (device stopped underneath) or streaming into a reader."""
    from linesight.config.sources import GenICamSourceConfig
    from linesight.daemon.sources.genicam import GenICamSource

    cfg = GenICamSourceConfig(name="bench", cti=cti, device={"index": 0}, starvation_timeout_s=3600,
                              features={"AcquisitionFrameRate": 50.0})
    src = GenICamSource(cfg)
    src.open()
    stop = threading.Event()
    counter = [0]

    def reader() -> None:
        while not stop.is_set():
            if src.read(0.05) is not None:
                counter[0] += 1

    th = threading.Thread(target=reader, daemon=True)
    try:
        if not stream:
            with src._ia_lock:  # noqa: SLF001 - bench: stop the device underneath, source keeps polling
                src._ia.remote_device.node_map.AcquisitionStop.execute()  # noqa: SLF001
            time.sleep(0.2)
            while src.read(0.1) is not None:
                pass
        th.start()
        time.sleep(0.2)
        result = timed(repeats)
        return result, counter[0]
    finally:
        stop.set()
        if th.is_alive():
            th.join(5)
        src.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cti", default=None, help="GenTL producer (default: viky.cti from the genicam wheel)")
    ap.add_argument("--repeats", type=int, default=3, help="workload runs per measurement (median)")
    ap.add_argument("--rounds", type=int, default=5,
                    help="interleaved rounds; each configuration is compared with a baseline run right before it")
    args = ap.parse_args()
    cti = args.cti or find_viky()
    if cti is None or not os.path.isfile(cti):
        print("no GenTL producer: install `genicam` (ships viky.cti) or pass --cti", file=sys.stderr)
        return 2

    r = args.repeats
    configs = [
        ("thread-fetch (waiting, fetch timeout=60 s)", lambda: run_thread(cti, r, "blocking", stream=False)[0]),
        ("thread-stream (50 fps, fetch+copy)", lambda: run_thread(cti, r, "blocking", stream=True)[0]),
        ("thread-poll (try_fetch 1 ms + sleep 2 ms, waiting)",
         lambda: run_thread(cti, r, "poll", stream=False, poll_sleep=0.002)[0]),
        ("thread-poll (try_fetch 1 ms + sleep 5 ms, waiting)",
         lambda: run_thread(cti, r, "poll", stream=False, poll_sleep=0.005)[0]),
        ("process-fetch (waiting, child process)", lambda: run_process(cti, r)),
        ("linesight GenICamSource (waiting)", lambda: run_source(cti, r, stream=False)[0]),
        ("linesight GenICamSource (50 fps, reader thread)", lambda: run_source(cti, r, stream=True)[0]),
    ]
    load_before = os.getloadavg()[0]
    ratios: dict[str, list[float]] = {name: [] for name, _ in configs}
    bases: list[float] = []
    for _ in range(args.rounds):
        for name, run in configs:
            base = timed(r)  # adjacent baseline: other load on the machine hits both alike
            bases.append(base)
            ratios[name].append(run() / base)
    load_after = os.getloadavg()[0]

    print(f"cpu cores: {os.cpu_count()}  python {sys.version.split()[0]}  cti: {Path(cti).name}  "
          f"load avg {load_before:.2f} -> {load_after:.2f}")
    print(f"baseline workload: median {statistics.median(bases):.3f} s over {len(bases)} runs")
    print(f"{'configuration (slowdown of the main-thread workload)':58s} {'median':>7s} {'min':>6s} {'max':>6s}")
    for name, values in ratios.items():
        print(f"{name:58s} {statistics.median(values):6.2f}x {min(values):5.2f}x {max(values):5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
