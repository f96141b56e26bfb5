"""Serialisation shared by the sinks: verdict JSON, image encoding (heatmap colouring lives in export.overlay),
and the carriers that make each of them once per verdict (`Outgoing`, `Pictures`).

Why one place: MQTT, ZeroMQ and the archive must emit byte-identical verdict JSON and identically
coloured heatmaps, otherwise an HMI picture and an archived picture of the same part disagree.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from linesight.export.bundle import json_default as _default  # noqa: E402 (numpy values in messages)
from linesight.export.overlay import HEATMAP_GAIN  # noqa: F401 (one colouring)
from linesight.export.overlay import colorize as colorize_heatmap


def _finite(obj: Any) -> Any:
    """Replace NaN/inf by None: strict JSON parsers in PLC gateways and browsers reject them."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, np.generic):
        return _finite(obj.item())
    if isinstance(obj, np.ndarray):
        return _finite(obj.tolist())
    return obj


def verdict_json(verdict: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON of a verdict; numpy scalars allowed, non-finite floats become null."""
    try:
        return json.dumps(verdict, separators=(",", ":"), allow_nan=False, default=_default).encode()
    except ValueError:  # NaN/inf somewhere: rare path, sanitise and retry
        return json.dumps(_finite(verdict), separators=(",", ":"), allow_nan=False, default=_default).encode()


def to_8bit(image: np.ndarray) -> np.ndarray:
    """uint16 -> uint8 on the full 16-bit scale (x * 255 / 65535, rounded): the scale the model's preprocessing
    uses, so a picture shows what the model saw (a 12-bit camera looks as dark as it is to the model)."""
    import cv2

    return cv2.convertScaleAbs(image, alpha=255.0 / 65535.0)


def encode_image(image: np.ndarray, fmt: str, jpeg_quality: int = 90) -> bytes:
    """Encode a gray/BGR image: PNG keeps uint16 (lossless PNG-16), JPEG (8-bit only) gets uint16 scaled by
    `to_8bit`. Raises ValueError naming the problem."""
    import cv2

    if fmt == "jpeg" and image.dtype == np.uint16:
        image = to_8bit(image)
    if image.dtype != np.uint8 and not (fmt == "png" and image.dtype == np.uint16):
        raise ValueError(f"cannot encode {image.dtype} image as {fmt}: convert to uint8 first")
    if fmt == "jpeg":
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
    elif fmt == "png":
        # Level 1: ~3x faster than the default 3 for a few % more bytes; CPU is the scarce resource here.
        ok, buf = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    else:
        raise ValueError(f"unknown image format {fmt!r}; use 'jpeg' or 'png'")
    if not ok:
        raise ValueError(f"OpenCV failed to encode a {image.shape} {image.dtype} image as {fmt}")
    return buf.tobytes()


class Pictures:
    """A verdict's frame and anomaly map for the image outputs (ZeroMQ feed, archive), each rendering made once.

    Why: colouring a 5 MP map costs ~85 ms and encoding a frame tens of ms; the live feed and the archive
    both need them. Each rendering (the coloured map, each format's encoding) is made on first use by
    whichever output asks first, on that output's thread, and handed to the other; one nobody asks for
    costs nothing. Thread-safe; the arrays must not be modified after construction."""

    def __init__(self, image: np.ndarray | None = None,
                 amap: np.ndarray | Callable[[], np.ndarray | None] | None = None,
                 threshold: float | None = None, frame_hw: tuple[int, int] | None = None) -> None:
        # `amap` may be a function: the frame-size map is then built only if an output asks for it (an OK frame
        # the archive does not sample never builds one), on that output's thread
        self.image, self._amap, self.threshold = image, amap, threshold
        self._frame_hw = frame_hw or (None if image is None else image.shape[:2])
        self._lock = threading.Lock()
        self._key_locks: dict[tuple[Any, ...], threading.Lock] = {}
        self._made: dict[tuple[Any, ...], Any] = {}

    @property
    def amap(self) -> np.ndarray | None:
        src = self._amap
        return self._once(("map",), src) if callable(src) else src

    @property
    def nbytes(self) -> int:
        """Memory held: the arrays, plus the 8-bit BGR colouring of the map (made once an output asks); a map
        not built yet counts as the float32 frame-size map it would be."""
        n = 0 if self.image is None else self.image.nbytes
        if self._amap is None:
            return n
        if callable(self._amap) and ("map",) not in self._made:
            return n + 7 * int(np.prod(self._frame_hw)) if self._frame_hw else n
        amap = self.amap
        return n if amap is None else n + amap.nbytes + 3 * int(np.prod(amap.shape[:2]))

    def _once(self, key: tuple[Any, ...], make: Callable[[], Any]) -> Any:
        """make() at most once per key: a second caller waits for the first one's result. A failure is not
        kept (each caller counts its own error)."""
        with self._lock:
            lock = self._key_locks.setdefault(key, threading.Lock())
        with lock:
            if key not in self._made:
                self._made[key] = make()
            return self._made[key]

    def heatmap(self) -> np.ndarray | None:
        """The map coloured as documented for every output (clip(map/threshold*0.5,0,1), JET); None without one."""
        if self.amap is None:
            return None
        amap, threshold = self.amap, self.threshold
        return self._once(("coloured",), lambda: colorize_heatmap(amap, threshold))

    def encoded(self, what: Literal["image", "heatmap"], fmt: str, jpeg_quality: int = 90) -> bytes | None:
        """The frame or the coloured map encoded by `encode_image` (ValueError as there); None if absent."""
        if (self.image if what == "image" else self.amap) is None:
            return None
        key = (what, fmt, jpeg_quality if fmt == "jpeg" else 0)  # PNG ignores the quality: one encoding
        return self._once(key, lambda: encode_image(self.image if what == "image" else self.heatmap(), fmt,
                                                    jpeg_quality))


@dataclass(frozen=True)
class Outgoing:
    """One verdict on its way to the outputs: encoded once, and these very bytes go to MQTT, ZeroMQ, the verdict
    log and the archive. `analysis` (the full analysis, or None) rides only in the ZeroMQ image header."""

    verdict: dict[str, Any]
    payload: bytes
    analysis: dict[str, Any] | None = None
    pictures: Pictures | None = None

    @property
    def nbytes(self) -> int:
        """What the publish queue charges against its byte budget."""
        return len(self.payload) + (0 if self.pictures is None else self.pictures.nbytes)
