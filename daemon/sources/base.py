"""The contract between frame sources (cameras, folders, videos, synthetic) and the inspection pipeline.

Why one small contract: the pipeline must treat a GigE camera and a folder replay the same way, and it
must give every triggered/received frame exactly one verdict. So a bad frame (corrupt file, incomplete
camera buffer, triggered frame that never arrived) is *returned* as a `Frame` with `error` set - never
raised, never skipped - and `read()` returns None only when nothing was triggered within the timeout.
A finite source signals its end with `EndOfStream` so the daemon can finish cleanly.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from linesight.errors import LinesightError


class SourceError(LinesightError):
    """A source cannot be opened or used; the message names the source, what failed and how to fix it."""


class EndOfStream(Exception):
    """A finite source (folder replayed once, video file without loop) has delivered its last frame.

    Deliberately not a `SourceError`: it is the normal end of a replay, not a failure.
    """


@dataclass(eq=False)
class Frame:
    """One triggered/received frame. `image` is an owned copy (never a view into a driver buffer).

    Compared by identity (eq=False): field-wise equality over numpy images would raise.
    """

    image: np.ndarray | None  # HxW or HxWx3 (BGR), uint8 or uint16; None when the frame is bad
    seq: int  # source-local counter, increments for every triggered/received frame
    host_ts_ns: int  # time.time_ns() when received (trigger time when known)
    source: str  # source name from config
    frame_id: int | None = None  # camera frame id / index in a video file
    camera_ts_ns: int | None = None  # camera timestamp (buffer or chunk data when available)
    name: str | None = None  # file name for folder sources
    chunk: dict[str, Any] = field(default_factory=dict)
    error: str | None = None  # why the frame is bad -> the pipeline gives it the fail-safe verdict

    @property
    def ok(self) -> bool:
        return self.error is None and self.image is not None


@dataclass(frozen=True)
class SourceStatus:
    """Health snapshot the daemon publishes (MQTT status / metrics)."""

    name: str
    up: bool  # connected/open and delivering
    reconnects: int  # successful reconnections since open()
    last_error: str | None  # most recent connection/acquisition problem (kept after recovery)
    dropped: int = 0  # frames the source knows were lost before reaching it (camera frame-id gaps)


class Source(ABC):
    """Base of every frame source: open() / read(timeout_s) / trigger() / close(), a context manager.

    Subclasses call `_make_frame()` so `seq`, counters and `source` are filled consistently, and
    `_set_up()` / `_set_down()` to keep `status` current. Thread-safe counters: the GenICam source
    produces frames on its acquisition thread while the daemon reads `status` from another.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._seq = 0
        self._dropped = 0
        self._reconnects = 0
        self._up = False
        self._last_error: str | None = None
        self._opened = False

    # -- lifecycle ---------------------------------------------------------------------------
    @abstractmethod
    def open(self) -> None:
        """Connect / list files / open the file. Raises SourceError on a user mistake."""

    @abstractmethod
    def read(self, timeout_s: float | None = 1.0) -> Frame | None:
        """Next frame; None when nothing arrived within `timeout_s` (None waits indefinitely).

        Raises EndOfStream at the end of a finite source and SourceError when not open.
        """

    @abstractmethod
    def close(self) -> None:
        """Release everything (threads, devices, files). Idempotent."""

    def trigger(self) -> None:
        """Request one frame (GenICam software trigger). Other sources are free-running."""
        raise SourceError(
            f"source {self.name!r} ({type(self).__name__}) is free-running and has no trigger; "
            "trigger() applies to genicam sources with trigger.mode: software"
        )

    def __enter__(self) -> Source:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- status ------------------------------------------------------------------------------
    @property
    def status(self) -> SourceStatus:
        with self._lock:
            return SourceStatus(
                name=self.name,
                up=self._up,
                reconnects=self._reconnects,
                last_error=self._last_error,
                dropped=self._dropped,
            )

    def _set_up(self, reconnected: bool = False) -> None:
        with self._lock:
            self._up = True
            if reconnected:
                self._reconnects += 1

    def _set_down(self, error: str | None = None) -> None:
        """Mark the source down; `error` None (a normal close) keeps the last error as it was."""
        with self._lock:
            self._up = False
            if error is not None:
                self._last_error = error

    def _add_dropped(self, n: int) -> None:
        with self._lock:
            self._dropped += n

    def _next_seq(self) -> int:
        with self._lock:
            seq = self._seq
            self._seq += 1
            return seq

    def _make_frame(self, image: np.ndarray | None, *, seq: int | None = None,
                    host_ts_ns: int | None = None, error: str | None = None, **meta: Any) -> Frame:
        """Build a Frame (the pipeline counts it). `seq`/`host_ts_ns` are given when reserved at trigger time."""
        if seq is None:
            seq = self._next_seq()
        if image is None and error is None:
            error = "no image data"
        return Frame(
            image=image if error is None else None,
            seq=seq,
            host_ts_ns=time.time_ns() if host_ts_ns is None else host_ts_ns,
            source=self.name,
            error=error,
            **meta,
        )

    def _require_open(self) -> None:
        if not self._opened:
            raise SourceError(f"source {self.name!r} is not open: call open() (or use it as a context manager)")


class Pacer:
    """Fixed-rate pacing for replay/synthetic sources without bursts after a stall.

    Why not `sleep(1/rate)`: decoding time would add to the period. The schedule is absolute
    (monotonic), but after the consumer stalls it restarts from now instead of catching up in a burst.
    """

    def __init__(self, rate_hz: float | None) -> None:
        self.period = None if rate_hz is None else 1.0 / rate_hz
        self._due: float | None = None

    def wait(self, timeout_s: float | None) -> bool:
        """Sleep until the next frame is due; False if that is later than `timeout_s` from now."""
        if self.period is None or self._due is None:
            return True
        now = time.monotonic()
        delay = self._due - now
        if delay <= 0:
            return True
        if timeout_s is not None and delay > timeout_s:
            time.sleep(max(0.0, timeout_s))
            return False
        time.sleep(delay)
        return True

    def emitted(self) -> None:
        """Record that a frame went out; schedules the next one."""
        if self.period is None:
            return
        now = time.monotonic()
        if self._due is None or now - self._due > self.period:
            self._due = now + self.period
        else:
            self._due += self.period

