"""ZeroMQ output for HMIs on the same host or cell network: verdicts and live images.

Wire format (both sockets are bound by the daemon; HMIs connect SUB sockets):

* verdict socket (PUB, `verdict_endpoint`): multipart ``[b"verdict", <verdict JSON>]``
* image socket (XPUB, `image_endpoint`): multipart
  ``[b"image", <header JSON>, <encoded image or b"">, <encoded heatmap or b"">]`` where the header is
  ``{"verdict": {...}, "analysis": {...} | null, "image": {"format", "width", "height", "channels", "bit_depth"}
  | null, "heatmap": {"format", "width", "height", "scale": "clip(map/threshold*0.5,0,1) JET"} | null}``;
  "verdict" is byte for byte the verdict socket's (and MQTT's) message, "analysis" the full defect analysis
  of an NG frame. Both pictures are null when the daemon's publish queue had to drop them (over its budget).
  The heatmap is the float anomaly map coloured with cv2.COLORMAP_JET after scaling by
  clip(map / threshold * 0.5, 0, 1): the decision threshold is mid-scale, 2x threshold is full red.
  16-bit frames (Mono10..16 cameras): `image_format: png` sends them as PNG-16 (bit_depth 16, lossless, for
  HMIs that window the grey range themselves); `jpeg` (8-bit only) sends them scaled to 8 bit on the full
  16-bit scale, the scale the model sees (bit_depth 8): the cheap default for a live view.

Why it never blocks the caller: the verdict is serialised and sent inline with zmq.NOBLOCK (~10 us).
Images are handed to one encoder thread through a single "latest frame" slot: if the encoder is still
busy with an older frame that frame is replaced (counted as `images_superseded`), so JPEG/PNG encoding
cost never reaches the inference thread and the HMI always gets the freshest picture. The encoder
skips work entirely while no one subscribes to images (the socket is XPUB so it sees subscriptions).

Drops: PUB/XPUB sockets never block; when one subscriber's queue (SNDHWM) is full libzmq drops
messages *for that subscriber only* and does not report it (zmq.Again is never raised for PUB; only
XPUB_NODROP would raise it, and then one stalled HMI would starve every other subscriber - worse).
So slow-subscriber drops are invisible here by design; `send_errors` counts any zmq.Again/ZMQError.

The caller must not modify the `Pictures` arrays after `publish()`; the encoder thread reads them later
(frames from the pipeline are fresh arrays, so no copy is made on the hot path). Their renderings are shared
with the archive through `Pictures`, so a heatmap is coloured once per frame for both.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import stat
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import zmq

from linesight.config.outputs import ZmqConfig
from linesight.daemon.sinks.encoding import HEATMAP_GAIN, Pictures, verdict_json
from linesight.errors import ConfigError

log = logging.getLogger(__name__)

TOPIC_VERDICT = b"verdict"
TOPIC_IMAGE = b"image"


def sockets(cfg: ZmqConfig) -> list[tuple[str, int, str, int]]:
    """(config field, socket type, endpoint, SNDHWM) of every socket the sink binds."""
    out = [("outputs.zmq.verdict_endpoint", zmq.PUB, cfg.verdict_endpoint, cfg.verdict_sndhwm)]
    if cfg.image_endpoint is not None:
        out.append(("outputs.zmq.image_endpoint", zmq.XPUB, cfg.image_endpoint, cfg.image_sndhwm))
    return out


def _ipc_in_use(endpoint: str) -> str | None:
    """Why an ipc:// endpoint must not be bound, or None. libzmq unlinks an existing path before binding,
    so binding would silently steal a running daemon's socket (or delete a file that is no socket)."""
    path = endpoint.removeprefix("ipc://")
    if not endpoint.startswith("ipc://") or path.startswith("@"):  # abstract namespace: no file
        return None
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if not stat.S_ISSOCK(mode):
        return f"{path} exists and is not a socket; binding would delete it - choose another path"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError:
            return None  # a stale socket left by a stopped daemon: libzmq replaces it
    return f"{path} is in use by a running process (another linesight?); stop it or choose another path"


def bind_socket(ctx: zmq.Context, kind: int, endpoint: str, hwm: int, field: str) -> zmq.Socket:
    """A bound PUB/XPUB socket (linger 0). The start-up check binds through here too, so an endpoint it
    passes is one the sink can take. ConfigError names the field and the fix."""
    taken = _ipc_in_use(endpoint)
    if taken is not None:
        raise ConfigError(f"cannot bind {endpoint}: {taken}", field=field)
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as exc:
        sock.close(0)
        if exc.errno == errno.EADDRINUSE:
            hint = "another process (an old daemon? metrics.port?) holds it; stop it or change the endpoint"
        else:
            hint = ("use an address of this machine, e.g. 'tcp://127.0.0.1:5556', or an ipc:// path in an "
                    "existing folder the daemon may write")
        raise ConfigError(f"cannot bind {endpoint} ({exc.strerror}); {hint}", field=field) from None
    return sock


@dataclass(frozen=True)
class _Slot:
    """The newest frame waiting for the image encoder: the verdict's JSON, its full analysis, its pictures."""

    seq: Any
    payload: bytes
    analysis: dict[str, Any] | None
    pictures: Pictures | None


class ZmqSink:
    """Two bound publisher sockets; `publish()` is safe to call from one producer thread."""

    def __init__(self, cfg: ZmqConfig) -> None:
        self._cfg = cfg
        self._ctx = zmq.Context()
        self._lock = threading.Lock()
        self._counters = dict.fromkeys(
            ("verdicts_sent", "images_sent", "images_superseded", "images_skipped_no_subscriber",
             "encode_errors", "send_errors"),
            0,
        )
        self._verdict_sock: zmq.Socket | None = None
        self._image_sock: zmq.Socket | None = None
        self._slot: _Slot | None = None
        self._slot_cv = threading.Condition()
        self._closing = False
        self._closed = False
        self._image_topics: set[bytes] = set()
        self._worker: threading.Thread | None = None
        for field, kind, endpoint, hwm in sockets(cfg):
            try:
                sock = bind_socket(self._ctx, kind, endpoint, hwm, field)
            except ConfigError:
                self.close()
                raise
            if kind == zmq.PUB:
                self._verdict_sock = sock
            else:
                self._image_sock = sock
        if self._image_sock is not None:
            self._worker = threading.Thread(target=self._image_loop, name="zmq-image-encoder", daemon=True)
            self._worker.start()
        log.info("zmq publishing verdicts=%s images=%s", cfg.verdict_endpoint, cfg.image_endpoint or "-")

    @property
    def counters(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counters)

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._counters[key] += n

    def publish(self, verdict: dict[str, Any], pictures: Pictures | None = None, *, payload: bytes | None = None,
                analysis: dict[str, Any] | None = None) -> None:
        """Send the verdict now (`payload`: its JSON when the caller has it already); queue the pictures and the
        full `analysis` for the image encoder (latest wins). Never blocks."""
        if self._verdict_sock is None:
            raise RuntimeError("ZmqSink.publish() after close()")
        if payload is None:
            payload = verdict_json(verdict)
        try:
            self._verdict_sock.send_multipart([TOPIC_VERDICT, payload], zmq.NOBLOCK)
            self._count("verdicts_sent")
        except zmq.ZMQError as exc:  # zmq.Again included
            self._count("send_errors")
            log.debug("zmq verdict send failed: %s", exc)
        if self._image_sock is None:
            return
        with self._slot_cv:
            if self._slot is not None:
                self._count("images_superseded")
            self._slot = _Slot(verdict.get("seq"), payload, analysis, pictures)
            self._slot_cv.notify()

    # ------------------------------------------------------------------ encoder thread

    def _image_loop(self) -> None:
        assert self._image_sock is not None
        while True:
            with self._slot_cv:
                while self._slot is None and not self._closing:
                    self._slot_cv.wait(0.5)
                    self._drain_subscriptions()
                if self._closing:
                    return
                item, self._slot = self._slot, None
            self._drain_subscriptions()
            if not self._has_image_subscriber():
                self._count("images_skipped_no_subscriber")
                continue
            try:
                frames = self._encode(item)
            except Exception as exc:  # a bad frame must not kill the HMI feed
                self._count("encode_errors")
                log.warning("zmq image encode failed seq=%s: %s", item.seq, exc)
                continue
            try:
                self._image_sock.send_multipart(frames, zmq.NOBLOCK)
                self._count("images_sent")
            except zmq.ZMQError as exc:
                self._count("send_errors")
                log.debug("zmq image send failed: %s", exc)

    def _drain_subscriptions(self) -> None:
        """Track SUB subscriptions arriving on the XPUB socket (b'\\x01'+topic / b'\\x00'+topic)."""
        sock = self._image_sock
        assert sock is not None
        while True:
            try:
                msg = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            except zmq.ZMQError:
                return
            if msg[:1] == b"\x01":
                self._image_topics.add(msg[1:])
            elif msg[:1] == b"\x00":
                self._image_topics.discard(msg[1:])

    def _has_image_subscriber(self) -> bool:
        return any(TOPIC_IMAGE.startswith(t) for t in self._image_topics)

    def _encode(self, item: _Slot) -> list[bytes]:
        cfg = self._cfg
        fmt = cfg.image_format
        pictures = item.pictures or Pictures()
        image = pictures.image
        coloured = pictures.heatmap() if cfg.send_heatmap else None
        rest: dict[str, Any] = {"analysis": item.analysis, "image": None, "heatmap": None}
        if image is not None:
            rest["image"] = {"format": fmt, "width": int(image.shape[1]), "height": int(image.shape[0]),
                             "channels": 1 if image.ndim == 2 else int(image.shape[2]),
                             "bit_depth": 16 if fmt == "png" and image.dtype == np.uint16 else 8}
        if coloured is not None:
            rest["heatmap"] = {"format": fmt, "width": int(coloured.shape[1]), "height": int(coloured.shape[0]),
                               "scale": f"clip(map/threshold*{HEATMAP_GAIN},0,1) JET"}
        img_bytes = pictures.encoded("image", fmt, cfg.jpeg_quality) or b""
        hm_bytes = (pictures.encoded("heatmap", fmt, cfg.jpeg_quality) or b"") if coloured is not None else b""
        # the verdict's own bytes spliced in, not re-encoded: {"verdict":<payload>,"analysis":...}
        header = b'{"verdict":' + item.payload + b"," + verdict_json(rest)[1:]
        return [TOPIC_IMAGE, header, img_bytes, hm_bytes]

    # ------------------------------------------------------------------ shutdown

    def close(self) -> None:
        """Stop the encoder and close both sockets with linger 0 (pending messages are discarded)."""
        if self._closed:
            return
        self._closed = True
        with self._slot_cv:
            self._closing = True
            self._slot_cv.notify()
        stuck = False
        if self._worker is not None:
            self._worker.join(5.0)
            stuck = self._worker.is_alive()
            self._worker = None
        if stuck:  # inside an encoder call: closing its socket under it could crash the process
            log.error("zmq image encoder did not stop within 5s; leaving its socket to process exit")
        elif self._image_sock is not None:
            self._image_sock.close(0)
        if self._verdict_sock is not None:
            self._verdict_sock.close(0)
        self._verdict_sock = self._image_sock = None
        if not stuck:
            self._ctx.term()
        log.info("zmq closed counters=%s", json.dumps(self.counters))
