"""Issue-13 micro-benchmark: what the synthetic camera costs per frame (it must cost what a camera costs, not
what the daemon costs, or daemon benchmarks at camera resolution measure the source).

Reads frames as fast as possible (rate_hz null, a defect every 10th frame) and prints ms per frame, and the
one-off open() cost, at each size. Asserts nothing.
    .venv/bin/python bench/bench_synthetic.py [--frames 200] [--sizes 2448x2048 224x224] [--channels 1]
"""
from __future__ import annotations

import argparse
import time

from linesight.config.sources import SyntheticSourceConfig
from linesight.daemon.sources.synthetic import SyntheticSource


def measure(width: int, height: int, channels: int, frames: int) -> tuple[float, float]:
    """(open() seconds, mean ms per read())."""
    cfg = SyntheticSourceConfig(width=width, height=height, channels=channels, rate_hz=None, defect_every=10)
    src = SyntheticSource(cfg)
    t0 = time.perf_counter()
    src.open()
    t1 = time.perf_counter()
    for _ in range(frames):
        src.read(None)
    t2 = time.perf_counter()
    src.close()
    return t1 - t0, (t2 - t1) / frames * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--sizes", nargs="+", default=["2448x2048", "224x224"], help="WIDTHxHEIGHT")
    ap.add_argument("--channels", type=int, choices=(1, 3), default=1)
    a = ap.parse_args()
    for size in a.sizes:
        w, h = (int(v) for v in size.split("x"))
        open_s, ms = measure(w, h, a.channels, a.frames)
        print(f"synthetic {w}x{h}x{a.channels}: {ms:.3f} ms/frame over {a.frames} frames "
              f"(1 in 10 with a defect), open {open_s * 1e3:.0f} ms", flush=True)


if __name__ == "__main__":
    main()
