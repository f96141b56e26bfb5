"""Minimal HMI-side subscriber for linesight's ZeroMQ feed - copy it into your HMI as a starting point.

Run (daemon running with the default outputs config)::

    python examples/zmq_subscriber.py                      # verdict lines only
    python examples/zmq_subscriber.py --images tcp://127.0.0.1:5557 --save-dir /tmp/hmi
    python examples/zmq_subscriber.py --count 10           # exit after 10 verdicts

Output: one line per verdict, ``<seq> <part_id> <OK|NG> <reason> score=<score>``; with --save-dir the
latest image and heatmap are written as ``latest_image.<ext>`` / ``latest_heatmap.<ext>``. A verdict that
arrives after its deadline is not printed as a decision: one ``stale verdict ...`` line goes to stderr
and it is counted (summary on exit). Every key of a verdict, and when it is left out (a fail-safe verdict
without a prediction has no `score`): docs/verdict.schema.json (`linesight.daemon.verdict.Verdict`).

Things an HMI must know (see linesight.daemon.sinks.zmq_sink for the wire format):
* Check every verdict's age on arrival (`is_stale`): ``host_ts + deadline_ms`` in the past means the
  part has left the station; treat it like a fail-safe verdict and never act on a stale OK. Queues
  between daemon and consumer (socket buffers, a busy HMI thread, MQTT client libraries) hold messages
  for seconds or minutes; neither ZeroMQ nor MQTT message expiry removes what is already in them.
  The check needs host and consumer clocks in sync (NTP/PTP, see docs/plc-integration.md).
* PUB/SUB drops messages for a subscriber that reads too slowly; verdicts carry `seq`, so gaps are
  visible. Never use this feed to drive a reject gate - that is the PLC's MQTT/fieldbus path.
* Subscribe to images only if you display them; the daemon skips image encoding when no one listens.
* A SUB that connects late misses earlier messages (no replay); the next part shows up normally.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import zmq


def is_stale(verdict: dict[str, Any], now: float | None = None) -> bool:
    """True if the verdict's deadline (``host_ts`` + ``deadline_ms``) has passed at `now` (Unix seconds,
    default: this machine's clock) - or if the verdict carries no readable ``host_ts``/``deadline_ms``,
    because a verdict whose age cannot be proven must not be acted on either."""
    try:
        ts = datetime.fromisoformat(str(verdict["host_ts"]).replace("Z", "+00:00"))
        deadline_s = float(verdict["deadline_ms"]) / 1000.0
    except (KeyError, TypeError, ValueError):
        return True
    if ts.tzinfo is None:  # the daemon always writes UTC ("...Z"); a bare time is read as UTC too
        ts = ts.replace(tzinfo=UTC)
    if not math.isfinite(deadline_s):  # NaN/inf deadline: no proof of freshness
        return True
    return (time.time() if now is None else now) >= ts.timestamp() + deadline_s


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Print linesight verdicts from its ZeroMQ feed.")
    p.add_argument("--verdicts", default="tcp://127.0.0.1:5556", help="verdict PUB endpoint to connect to")
    p.add_argument("--images", default=None, help="image PUB endpoint (omit: no images)")
    p.add_argument("--save-dir", type=Path, default=None, help="write the latest image/heatmap here")
    p.add_argument("--count", type=int, default=0, help="exit after this many verdicts (0 = run forever)")
    p.add_argument("--timeout-s", type=float, default=0.0, help="exit with status 1 after this long idle (0 = never)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    ctx = zmq.Context()
    verdicts = ctx.socket(zmq.SUB)
    verdicts.connect(args.verdicts)
    verdicts.subscribe(b"verdict")
    poller = zmq.Poller()
    poller.register(verdicts, zmq.POLLIN)
    images = None
    if args.images:
        images = ctx.socket(zmq.SUB)
        images.setsockopt(zmq.RCVHWM, 2)  # an HMI wants the newest picture, not a backlog
        images.connect(args.images)
        images.subscribe(b"image")
        poller.register(images, zmq.POLLIN)
        if args.save_dir:
            args.save_dir.mkdir(parents=True, exist_ok=True)
    seen = stale = 0
    try:
        while args.count == 0 or seen < args.count:
            ready = dict(poller.poll(int(args.timeout_s * 1000) if args.timeout_s else None))
            if not ready:
                sys.stderr.write(f"no message for {args.timeout_s}s\n")
                return 1
            if verdicts in ready:
                _topic, body = verdicts.recv_multipart()
                v = json.loads(body)
                seen += 1
                if is_stale(v):  # the part is gone: handle it as fail-safe, never act on this (stale OK!)
                    stale += 1
                    sys.stderr.write(f"stale verdict seq={v.get('seq')} part_id={v.get('part_id')} "
                                     f"({v.get('verdict')}, host_ts={v.get('host_ts')}, deadline_ms="
                                     f"{v.get('deadline_ms')}) arrived after its deadline: ignored, part is "
                                     f"fail-safe ({stale} stale so far)\n")
                    continue
                print(f"{v.get('seq')} {v.get('part_id')} {v.get('verdict')} {v.get('reason')} score={v.get('score')}",
                      flush=True)
            if images is not None and images in ready:
                _topic, header, img, heatmap = images.recv_multipart()
                meta = json.loads(header)
                if args.save_dir:
                    for name, data, info in (("image", img, meta["image"]), ("heatmap", heatmap, meta["heatmap"])):
                        if data and info:
                            ext = "jpg" if info["format"] == "jpeg" else "png"
                            (args.save_dir / f"latest_{name}.{ext}").write_bytes(data)
    except KeyboardInterrupt:
        pass
    finally:
        ctx.destroy(linger=0)
        if stale:
            sys.stderr.write(f"{stale} of {seen} verdicts arrived after their deadline and were ignored\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
