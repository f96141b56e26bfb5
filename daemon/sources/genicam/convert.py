"""GenTL buffer -> owned numpy image + frame metadata (frame id, camera timestamp, chunk values).

harvesters 1.4.3 API facts used here (read from its source): `Buffer` is a context manager whose exit
re-queues it, so everything is copied out while it is held; `buffer.module.frame_id`,
`buffer.module.timestamp_ns` (raises NotAvailableException on viky; the harvesters
`Buffer.timestamp_frequency` property is broken there), `buffer.payload.components[0]` with `.data`
(1-D zero-copy view, already unpacked to uint16 for Mono10-16), `.width`, `.height`, `.data_format`.
Chunk values are readable from the node map while the buffer is held.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from genicam.genapi import EAccessMode

# PFNC name -> channels of the delivered component data (harvesters unpacks Mono10..16 to uint16).
PIXEL_FORMATS: dict[str, int] = {
    "Mono8": 1, "Mono10": 1, "Mono12": 1, "Mono14": 1, "Mono16": 1,
    "RGB8": 3, "BGR8": 3, "RGBa8": 4, "BGRa8": 4,
}

FrameData = tuple[np.ndarray | None, str | None, dict[str, Any]]  # image, error, metadata


def component_to_image(data: np.ndarray, pixel_format: str, width: int, height: int) -> np.ndarray:
    """Owned HxW / HxWx3-BGR copy of a component's 1-D data. Raises ValueError when it cannot be.

    Rows longer than width*channels (line padding) are cropped; fewer values than the image needs
    means an incomplete buffer.
    """
    channels = PIXEL_FORMATS.get(pixel_format)
    if channels is None:
        raise ValueError(f"unsupported pixel format {pixel_format} (supported: {', '.join(PIXEL_FORMATS)})")
    row = width * channels
    expected = row * height
    if data.size < expected:
        raise ValueError(f"incomplete image: {data.size} of {expected} values for {width}x{height} {pixel_format}")
    if data.size > expected:
        if height == 0 or data.size % height or data.size // height < row:
            raise ValueError(f"unexpected image size: {data.size} values for {width}x{height} {pixel_format}")
        data = data.reshape(height, -1)[:, :row]
    if channels == 1:
        view = data.reshape(height, width)
    else:
        view = data.reshape(height, width, channels)
        if pixel_format == "RGB8":
            view = view[:, :, ::-1]
        elif pixel_format == "RGBa8":
            view = view[:, :, 2::-1]
        elif pixel_format == "BGRa8":
            view = view[:, :, :3]
    if view.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"unsupported data type {view.dtype} for {pixel_format}")
    return np.array(view, copy=True, order="C")


def frame_id_gap(last: int | None, current: int | None) -> int:
    """Frames missing between two consecutive frame ids; 0 when unknown, restarted or wrapped."""
    if last is None or current is None or current <= last:
        return 0
    return current - last - 1


def read_chunks(ia: Any, chunk_nodes: list[str]) -> dict[str, Any]:
    """Readable chunk values of the buffer `ia` holds now (names from `features.find_chunk_nodes`)."""
    out: dict[str, Any] = {}
    if not chunk_nodes or ia is None:
        return out
    nm = ia.remote_device.node_map
    for name in chunk_nodes:
        try:
            node = nm.get_node(name)
            if node.node.get_access_mode() in (EAccessMode.RO, EAccessMode.RW):
                out[name] = node.value
        except Exception:  # noqa: BLE001 - chunk not present in this buffer
            continue
    return out


def convert_buffer(buf: Any, ia: Any, chunk_nodes: list[str]) -> FrameData:
    """Copy image + metadata out of a held buffer. Never raises: problems become the error."""
    module = buf.module
    meta: dict[str, Any] = {"frame_id": None, "camera_ts_ns": None, "chunk": {}}
    try:
        meta["frame_id"] = int(module.frame_id)
    except Exception:  # noqa: BLE001 - optional GenTL info
        pass
    try:
        meta["camera_ts_ns"] = int(module.timestamp_ns) or None
    except Exception:  # noqa: BLE001 - NotAvailableException on producers without timestamps
        pass
    meta["chunk"] = read_chunks(ia, chunk_nodes)
    if meta["camera_ts_ns"] is None and isinstance(meta["chunk"].get("ChunkTimestamp"), int):
        meta["camera_ts_ns"] = meta["chunk"]["ChunkTimestamp"]  # SFNC: ns
    payload = buf.payload
    if payload is None or not payload.components:
        return None, "buffer without an image component (unsupported payload)", meta
    comp = payload.components[0]
    try:
        image = component_to_image(comp.data, str(comp.data_format), int(comp.width), int(comp.height))
    except Exception as exc:  # noqa: BLE001 - ValueError from conversion or GenTL info errors
        return None, f"bad camera buffer: {exc}", meta
    return image, None, meta
