"""Serialisation shared by the sinks: verdict JSON, image encoding, heatmap colouring.

Why one place: MQTT, ZeroMQ and the archive must emit byte-identical verdict JSON and identically
coloured heatmaps, otherwise an HMI picture and an archived picture of the same part disagree.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

# cv2 is imported inside the image functions: the MQTT path only needs JSON and must start fast.

#: Heatmap scaling: value/threshold * HEATMAP_GAIN, clipped to [0, 1]. With 0.5 the decision threshold
#: sits at mid-scale (colour-map middle, green in JET) and 2x threshold saturates (red), so the colour
#: means the same thing across models whose raw score ranges differ.
HEATMAP_GAIN = 0.5


def _default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"verdict field of type {type(obj).__name__} is not JSON-serialisable")


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


def colorize_heatmap(heatmap: np.ndarray, threshold: float | None) -> np.ndarray:
    """Float anomaly map -> 8-bit BGR image (cv2.COLORMAP_JET).

    Scaled as clip(map / threshold * HEATMAP_GAIN, 0, 1): the threshold is mid-scale, twice the
    threshold is full red. Without a usable threshold the map's own maximum is used (relative view).
    """
    hm = np.asarray(heatmap, dtype=np.float32)
    if hm.ndim == 3 and hm.shape[-1] == 1:
        hm = hm[..., 0]
    if hm.ndim != 2:
        raise ValueError(f"heatmap must be a 2-D float map, got shape {hm.shape}")
    if threshold is None or not math.isfinite(threshold) or threshold <= 0:
        peak = float(np.nanmax(hm)) if hm.size else 0.0
        threshold = peak * HEATMAP_GAIN if peak > 0 and math.isfinite(peak) else 1.0
    import cv2

    scaled = np.nan_to_num(hm * (HEATMAP_GAIN * 255.0 / threshold), nan=0.0, posinf=255.0, neginf=0.0)
    u8 = np.clip(scaled, 0.0, 255.0).astype(np.uint8)
    return cv2.applyColorMap(u8, cv2.COLORMAP_JET)


def encode_image(image: np.ndarray, fmt: str, jpeg_quality: int = 90) -> bytes:
    """Encode an 8-bit gray/BGR (or 16-bit for PNG) image; raises ValueError naming the problem."""
    import cv2

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
