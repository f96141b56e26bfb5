"""Frames from a video file, a network stream (rtsp://, http://) or a capture device, via OpenCV.

Why files and streams differ: a file that stops decoding has ended (EndOfStream, or restart when
`loop`); a stream or device that stops is a lost connection - it is released and reopened with
exponential backoff while `status.up` is False, and `read()` keeps returning None (nothing received)
instead of raising, so a camera rebooting on the line does not stop the daemon. Network streams are
opened through FFmpeg with open/read timeouts so a dead peer cannot block `read()` forever.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import cv2
import numpy as np

from linesight.config.sources import VideoSourceConfig
from linesight.export.images import to_bgr_or_gray

from .base import EndOfStream, Frame, Source, SourceError

log = logging.getLogger(__name__)


def is_stream_uri(uri: str | int) -> bool:
    """Device indexes and URLs (scheme://) are live streams; anything else is a file path."""
    return isinstance(uri, int) or "://" in uri


def open_video_file(cfg: VideoSourceConfig) -> cv2.VideoCapture:
    """Open a video *file* as `open()` does (the start-up check calls it too); SourceError names
    `source.uri`. Streams and devices are not checked: they are reconnected with backoff at run time."""
    where = f"video source {cfg.name!r} ({cfg.uri})"
    if not Path(str(cfg.uri)).is_file():
        raise SourceError(f"{where}: file does not exist; set uri to a video file, URL or device index",
                          field="source.uri")
    cap = cv2.VideoCapture(str(cfg.uri))
    if not cap.isOpened():
        cap.release()
        raise SourceError(f"{where}: OpenCV cannot open the file (unsupported container or codec); re-encode it, "
                          "e.g. ffmpeg -i in -c:v mjpeg out.avi", field="source.uri")
    return cap


class VideoSource(Source):
    """`Frame.frame_id` is the frame's index in the file (restarting at 0 on loop) or since connect."""

    def __init__(self, cfg: VideoSourceConfig) -> None:
        super().__init__(cfg.name)
        self.cfg = cfg
        self.is_stream = is_stream_uri(cfg.uri)
        self._cap: cv2.VideoCapture | None = None
        self._index = 0
        self._ever_up = False
        self._backoff = cfg.reconnect_backoff_min_s
        self._retry_at = 0.0

    @property
    def _where(self) -> str:
        return f"video source {self.name!r} ({self.cfg.uri})"

    # -- opening -----------------------------------------------------------------------------
    def _capture(self) -> cv2.VideoCapture:
        uri = self.cfg.uri
        if isinstance(uri, int):
            return cv2.VideoCapture(uri)
        if self.is_stream:
            params = [
                cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(self.cfg.open_timeout_s * 1000),
                cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(self.cfg.read_timeout_s * 1000),
            ]
            return cv2.VideoCapture(uri, cv2.CAP_FFMPEG, params)
        return cv2.VideoCapture(str(uri))

    def _connect(self) -> bool:
        cap = self._capture()
        if not cap.isOpened():
            cap.release()
            return False
        self._cap = cap
        self._index = 0
        return True

    def open(self) -> None:
        if self._opened:
            return
        if not self.is_stream:
            self._cap = open_video_file(self.cfg)
            self._index = 0
            self._opened = True
            self._set_up()
            assert self._cap is not None
            log.info("video file open name=%s uri=%s frames=%d fps=%.2f", self.name, self.cfg.uri,
                     int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT)), self._cap.get(cv2.CAP_PROP_FPS))
            return
        self._opened = True
        self._try_connect()

    def _try_connect(self) -> bool:
        """Stream (re)connection with exponential backoff; never raises."""
        if self._connect():
            self._set_up(reconnected=self._ever_up)
            if self._ever_up:
                log.info("video stream reconnected name=%s uri=%s", self.name, self.cfg.uri)
            else:
                log.info("video stream open name=%s uri=%s", self.name, self.cfg.uri)
            self._ever_up = True
            self._backoff = self.cfg.reconnect_backoff_min_s
            return True
        error = f"cannot open stream {self.cfg.uri}"
        self._set_down(error)
        self._retry_at = time.monotonic() + self._backoff
        log.warning("video stream down name=%s: %s; retry in %.1f s", self.name, error, self._backoff)
        self._backoff = min(self._backoff * 2, self.cfg.reconnect_backoff_max_s)
        return False

    def _lost(self, error: str) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None
        self._set_down(error)
        self._retry_at = time.monotonic() + self._backoff
        log.warning("video stream lost name=%s: %s; reconnect in %.1f s", self.name, error, self._backoff)

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None
        if self._opened:
            self._opened = False
            self._set_down()

    # -- reading -----------------------------------------------------------------------------
    def read(self, timeout_s: float | None = 1.0) -> Frame | None:
        self._require_open()
        return self._read_stream(timeout_s) if self.is_stream else self._read_file()

    def _frame(self, image: np.ndarray) -> Frame:
        host_ts = time.time_ns()
        try:
            img, error = to_bgr_or_gray(image, grayscale=False), None
        except ValueError as exc:
            img, error = None, f"{self._where}: {exc}"
        assert self._cap is not None
        frame = self._make_frame(img, host_ts_ns=host_ts, error=error, frame_id=self._index,
                                 chunk={"pos_msec": float(self._cap.get(cv2.CAP_PROP_POS_MSEC))})
        self._index += 1
        return frame

    def _read_file(self) -> Frame:
        assert self._cap is not None
        ok, image = self._cap.read()
        if not ok:
            if not self.cfg.loop:
                raise EndOfStream(f"{self._where}: end of file after {self._index} frames")
            # Reopen instead of seeking: seeking to 0 is unreliable for some containers.
            delivered = self._index
            self._cap.release()
            self._cap = None
            if not self._connect():
                raise SourceError(f"{self._where}: cannot reopen the file to loop")
            assert self._cap is not None
            ok, image = self._cap.read()
            if not ok:
                raise SourceError(f"{self._where}: no decodable frame (delivered {delivered} before looping)")
            log.debug("video loop name=%s after %d frames", self.name, delivered)
        return self._frame(image)

    def _read_stream(self, timeout_s: float | None) -> Frame | None:
        if self._cap is None:
            wait = self._retry_at - time.monotonic()
            if wait > 0:
                if timeout_s is not None and wait > timeout_s:
                    time.sleep(max(0.0, timeout_s))
                    return None
                time.sleep(wait)
            if not self._try_connect():
                return None
        assert self._cap is not None
        ok, image = self._cap.read()
        if not ok:
            self._lost(f"read from {self.cfg.uri} failed (stream ended, peer gone or read timeout)")
            return None
        return self._frame(image)
