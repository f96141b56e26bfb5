"""Frames that cannot be inspected get bad_frame with the reason: too many pixels (checked from the file header,
never decoded), too small (1x1 once gave inference_error with a traceback), from any source."""
from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np

from helpers import need_data
from linesight.daemon.sources.folder import decode_image_file, header_size


def test_header_size_matches_the_decoder(tmp_path):
    jpg = next((need_data() / "test" / "crack").iterdir())
    data = np.fromfile(jpg, np.uint8)
    h, w = cv2.imdecode(data, cv2.IMREAD_UNCHANGED).shape[:2]
    assert header_size(data) == (w, h)
    png = tmp_path / "a.png"
    cv2.imwrite(str(png), np.zeros((37, 91), np.uint16))
    assert header_size(np.fromfile(png, np.uint8)) == (91, 37)
    bmp = tmp_path / "a.bmp"
    cv2.imwrite(str(bmp), np.zeros((5, 5), np.uint8))
    assert header_size(np.fromfile(bmp, np.uint8)) is None  # unknown to the parser: decoded, then checked


def test_a_huge_image_file_is_refused_undecoded(tmp_path):
    png = tmp_path / "huge.png"
    cv2.imwrite(str(png), np.zeros((8, 8), np.uint8))
    data = bytearray(png.read_bytes())
    data[16:24] = struct.pack(">II", 12000, 12000)  # what a 12000x12000 scan says in its header
    png.write_bytes(bytes(data))
    image, why = decode_image_file(png, False, 64_000_000)
    assert image is None and "12000x12000 px, more than source.max_frame_pixels (64000000): not decoded" in why
    jpg = next((need_data() / "test" / "crack").iterdir())
    image, why = decode_image_file(jpg, False, 1000)
    assert image is None and "more than source.max_frame_pixels (1000)" in why
    image, why = decode_image_file(jpg, False, 64_000_000)
    assert why is None and image is not None


def test_pipeline_gives_bad_frame_for_tiny_and_oversized_frames(small_bundle):
    from linesight.config.daemon import DaemonConfig
    from linesight.daemon.model import ModelHolder
    from linesight.daemon.pipeline import Pipeline
    from linesight.daemon.sources.base import Frame

    cfg = DaemonConfig.model_validate({"model": {"bundle": str(small_bundle)},
                                       "source": {"type": "synthetic", "name": "s", "width": 64, "height": 64,
                                                  "max_frame_pixels": 100 * 100}})
    holder = ModelHolder(Path(small_bundle))
    holder.load()
    verdicts: list[dict] = []
    pipe = Pipeline(cfg, source=None, holder=holder, publish=lambda *a: verdicts.append(a[0]),
                    alarm=lambda *a, **k: None, station="s1/l1/cam1")
    now = __import__("time").time_ns()
    frames = [Frame(image=np.zeros((1, 1), np.uint8), seq=0, host_ts_ns=now, source="s"),
              Frame(image=np.zeros((101, 100), np.uint8), seq=1, host_ts_ns=now, source="s"),
              Frame(image=np.full((64, 64), 120, np.uint8), seq=2, host_ts_ns=now, source="s")]
    pipe.process([pipe.admit(f) for f in frames])
    assert [v["reason"] for v in verdicts[:2]] == ["bad_frame", "bad_frame"], verdicts
    assert ("1x1 px is too small" in verdicts[0]["detail"]
            and "larger than source.max_frame_pixels" in verdicts[1]["detail"])
    assert verdicts[2]["fail_safe"] is False and pipe.counts["failsafe_inference_error"] == 0
