"""Serialisation shared by the sinks: verdict JSON, image encoding (heatmap colouring lives in export.overlay).

Why one place: MQTT, ZeroMQ and the archive must emit byte-identical verdict JSON and identically
coloured heatmaps, otherwise an HMI picture and an archived picture of the same part disagree.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np


from linesight.export.overlay import HEATMAP_GAIN, colorize as colorize_heatmap  # noqa: F401 (one colouring)


from linesight.export.bundle import json_default as _default  # noqa: E402 (numpy values in messages)


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
