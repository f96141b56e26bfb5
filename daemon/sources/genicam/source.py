"""GenICam/GenTL camera source on harvesters 1.4.3: the acquisition thread and the `Source` it feeds.

One acquisition thread per camera that polls (GenTL event wait 0 ms, `try_fetch`, sleep when idle: a blocked
fetch holds the GIL, harvesters #508), owns the whole harvesters lifecycle, infers a lost camera (no
device-lost event exists) and rebuilds it with backoff in the same thread; every triggered frame gets one
Frame, missing and incomplete ones with `error` set. Why, and the harvesters API facts relied on: docs/daemon.md
"GenICam cameras". Producers and device choice: producers.py; buffers: convert.py; features: features.py.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any

import numpy as np
from harvesters.core import Callback, Harvester, ImageAcquirer

from linesight.config.sources import GenICamSourceConfig

from ..base import Frame, Source, SourceError
from .convert import convert_buffer, frame_id_gap
from .features import FeatureWriter, find_chunk_nodes
from .producers import describe_devices, load_producers, producer_files, select_device

log = logging.getLogger(__name__)

_POLL_FETCH_TIMEOUT_S = 0.0002  # one non-blocking GenTL event poll per try_fetch (event wait is 0 ms)
_POLL_SLEEP_S = 0.002  # idle sleep between polls: releases the GIL (see module docstring)
_OPEN_TIMEOUT_S = 60.0  # first connection (producer load + enumeration + configuration)
_MAX_GAP_FRAMES = 1000  # cap on error frames emitted for one frame-id gap
_JOIN_TIMEOUT_S = 10.0


class _Lost(Exception):
    """The camera is considered lost; the message says why (goes to status.last_error)."""


class _IncompleteBufferCallback(Callback):
    """harvesters re-queues incomplete buffers itself and only tells us through this event."""

    def __init__(self, source: GenICamSource) -> None:
        self._source = source

    def emit(self, context: object = None) -> None:
        self._source._on_incomplete_buffer()


class GenICamSource(Source):
    """A GenICam camera; frames are produced on an acquisition thread and handed over by `read()`."""

    def __init__(self, cfg: GenICamSourceConfig) -> None:
        super().__init__(cfg.name)
        self.cfg = cfg
        self.mode = cfg.trigger.mode
        self._ctis: list[str] = []
        self._h: Harvester | None = None
        self._ia: ImageAcquirer | None = None
        self._ia_lock = threading.RLock()  # harvesters objects: acquisition thread vs trigger()/teardown
        self._cond = threading.Condition()  # frames queue + pending software triggers
        self._frames: deque[Frame] = deque()
        self._pending: deque[tuple[int, int, float]] = deque()  # (seq, trigger time_ns, deadline monotonic)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._first_done = threading.Event()
        self._open_error: BaseException | None = None
        self._fatal: str | None = None
        self._last_frame_id: int | None = None
        self._last_frame_mono = 0.0
        self._chunk_nodes: list[str] = []
        self.device_info: dict[str, Any] = {}
        self.applied_features: dict[str, Any] = {}

    @property
    def _where(self) -> str:
        return f"genicam source {self.name!r}"

    # -- lifecycle ---------------------------------------------------------------------------
    def open(self) -> None:
        """Connect and configure on the acquisition thread; configuration mistakes raise here."""
        if self._opened:
            return
        if self._thread is not None and self._thread.is_alive():
            raise SourceError(f"{self._where}: a previous connection attempt is still running; close() first")
        self._ctis = producer_files(self.cfg.cti)
        self._stop.clear()
        self._first_done.clear()
        self._open_error = None
        self._fatal = None
        self._thread = threading.Thread(target=self._run, name=f"genicam-{self.name}", daemon=True)
        self._thread.start()
        if not self._first_done.wait(_OPEN_TIMEOUT_S):
            self._stop.set()
            raise SourceError(f"{self._where}: connecting to the camera took longer than {_OPEN_TIMEOUT_S:.0f} s")
        if self._open_error is not None:
            self._thread.join(_JOIN_TIMEOUT_S)
            self._thread = None
            err = self._open_error
            if isinstance(err, SourceError):
                raise err
            raise SourceError(f"{self._where}: cannot open the camera: {type(err).__name__}: {err}") from err
        self._opened = True

    def close(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()  # wake a reader blocked in read()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(_JOIN_TIMEOUT_S)
            if thread.is_alive():
                log.error("acquisition thread of %s did not stop within %.0f s", self._where, _JOIN_TIMEOUT_S)
        self._teardown()
        with self._cond:
            self._frames.clear()
            self._pending.clear()
            self._cond.notify_all()
        if self._opened:
            self._opened = False
            self._set_down()

    # -- consumer side -----------------------------------------------------------------------
    def read(self, timeout_s: float | None = 1.0) -> Frame | None:
        self._require_open()
        with self._cond:
            if not self._frames:
                self._cond.wait_for(
                    lambda: bool(self._frames) or self._fatal is not None or self._stop.is_set(), timeout_s
                )
            if self._frames:
                return self._frames.popleft()
            if self._fatal is not None:
                raise SourceError(f"{self._where}: acquisition thread failed: {self._fatal}")
            if self._stop.is_set():
                raise SourceError(f"{self._where}: closed while waiting for a frame")
        return None

    def trigger(self) -> None:
        """Software trigger: one frame. If the camera is down the trigger's frame is a bad frame."""
        self._require_open()
        if self.mode != "software":
            raise SourceError(
                f"{self._where}: trigger() needs trigger.mode: software (this camera runs in {self.mode})"
            )
        seq, t_ns = self._next_seq(), time.time_ns()
        down = f"camera down ({self.status.last_error}); software trigger not executed"
        if not self.status.up:  # checked before the lock: a reconnect in progress holds it for long
            self._push(self._make_frame(None, seq=seq, host_ts_ns=t_ns, error=down))
            return
        with self._ia_lock:
            ia = self._ia
            if ia is None or not self.status.up:
                self._push(self._make_frame(None, seq=seq, host_ts_ns=t_ns, error=down))
                return
            entry = (seq, t_ns, time.monotonic() + self.cfg.fetch_timeout_s)
            with self._cond:
                self._pending.append(entry)
            try:
                ia.remote_device.node_map.get_node("TriggerSoftware").execute()
            except Exception as exc:  # noqa: BLE001 - any driver error becomes this trigger's bad frame
                with self._cond:
                    if entry in self._pending:
                        self._pending.remove(entry)
                self._push(self._make_frame(None, seq=seq, host_ts_ns=t_ns,
                                            error=f"TriggerSoftware failed: {type(exc).__name__}: {exc}"))

    def _push(self, frame: Frame) -> None:
        with self._cond:
            self._frames.append(frame)
            self._cond.notify_all()

    # -- acquisition thread ------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._run_loop()
        except BaseException as exc:  # noqa: BLE001 - last resort: never die silently
            log.exception("acquisition thread of %s crashed", self._where)
            with self._cond:
                self._fatal = f"{type(exc).__name__}: {exc}"
                self._cond.notify_all()
            self._set_down(self._fatal)
            self._first_done.set()
        finally:
            self._teardown()

    def _run_loop(self) -> None:
        backoff = self.cfg.reconnect_backoff_min_s
        connected_before = False
        while not self._stop.is_set():
            try:
                self._connect()
            except Exception as exc:  # noqa: BLE001 - user mistakes and driver errors alike
                self._teardown()
                if not connected_before:
                    self._open_error = exc
                    self._first_done.set()
                    return
                reason = str(exc) if isinstance(exc, SourceError) else f"{type(exc).__name__}: {exc}"
                self._set_down(f"reconnect failed: {reason}")
                log.warning("%s: reconnect failed: %s; next attempt in %.1f s", self._where, reason, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.cfg.reconnect_backoff_max_s)
                continue
            self._set_up(reconnected=connected_before)
            if connected_before:
                log.info("%s: camera reconnected (reconnects=%d)", self._where, self.status.reconnects)
            connected_before = True
            self._first_done.set()
            backoff = self.cfg.reconnect_backoff_min_s
            try:
                self._acquire_loop()
                return  # stop requested
            except _Lost as exc:
                reason = str(exc)
            except Exception as exc:  # noqa: BLE001 - any fetch error means the same: rebuild
                reason = f"acquisition failed: {type(exc).__name__}: {exc}"
                log.debug("%s: acquisition error", self._where, exc_info=True)
            self._set_down(reason)
            log.warning("%s: camera down: %s; reconnecting in %.1f s", self._where, reason, backoff)
            self._fail_pending(f"camera lost before the triggered frame arrived: {reason}")
            self._teardown()
            self._stop.wait(backoff)
            backoff = min(backoff * 2, self.cfg.reconnect_backoff_max_s)

    def _acquire_loop(self) -> None:
        starvation = self.cfg.effective_starvation_timeout_s
        max_queued = self.cfg.num_buffers
        while not self._stop.is_set():
            with self._cond:
                full = len(self._frames) >= max_queued
            if full:
                # The consumer is behind: stop fetching (the camera drops, frame ids show it), and do
                # not count the wait as starvation.
                self._last_frame_mono = time.monotonic()
                self._stop.wait(_POLL_SLEEP_S)
                continue
            frame_data = None
            with self._ia_lock:
                ia = self._ia
                if ia is None or not ia.is_valid():
                    raise _Lost("image acquirer is no longer valid (destroyed underneath)")
                buf = ia.try_fetch(timeout=_POLL_FETCH_TIMEOUT_S)
                if buf is not None:
                    with buf:  # exit re-queues the buffer: copy everything inside
                        frame_data = convert_buffer(buf, ia, self._chunk_nodes)
            if frame_data is None:
                self._check_timeouts(starvation)
                self._stop.wait(_POLL_SLEEP_S)
                continue
            self._deliver(*frame_data)

    def _check_timeouts(self, starvation: float | None) -> None:
        now = time.monotonic()
        with self._cond:
            overdue = self._pending[0] if self._pending and self._pending[0][2] < now else None
        if overdue is not None:
            raise _Lost(
                f"software trigger seq {overdue[0]} got no frame within fetch_timeout_s={self.cfg.fetch_timeout_s}"
            )
        if starvation is not None and self.mode != "software" and now - self._last_frame_mono > starvation:
            raise _Lost(f"no frame for {starvation:g} s while acquiring (starvation_timeout_s)")

    def _deliver(self, image: np.ndarray | None, error: str | None, meta: dict[str, Any]) -> None:
        now_ns = time.time_ns()
        self._last_frame_mono = time.monotonic()
        frame_id = meta["frame_id"]
        if self._last_frame_id is not None and frame_id_gap(self._last_frame_id, frame_id):
            self._on_gap(self._last_frame_id, frame_id)
        if frame_id is not None:
            self._last_frame_id = frame_id
        seq, host_ts = None, now_ns
        if self.mode == "software":
            with self._cond:
                if self._pending:
                    seq, host_ts, _ = self._pending.popleft()
            if seq is None:
                log.warning("%s: frame id %s arrived without a pending software trigger", self._where, frame_id)
        if error is not None:
            log.warning("%s: bad frame id=%s: %s", self._where, frame_id, error)
        self._push(self._make_frame(image, seq=seq, host_ts_ns=host_ts, error=error, **meta))

    def _on_gap(self, last: int, current: int) -> None:
        """Frame ids the camera/transport lost between `last` and `current`.

        free_run: counted in status.dropped only (a skipped frame of a stream was no part). Under a
        trigger each one was a part: it becomes a bad frame carrying the missing frame id, so consumers
        that check frame-id continuity see no gap and do not count it twice.
        """
        gap = current - last - 1
        self._add_dropped(gap)
        log.warning("%s: %d frame(s) lost between frame ids %d and %d", self._where, gap, last, current)
        if self.mode == "free_run":
            return
        reason = f"frame lost by camera/transport (frame id gap {last}..{current})"
        for missing in range(last + 1, last + 1 + min(gap, _MAX_GAP_FRAMES)):
            seq, host_ts = None, time.time_ns()
            if self.mode == "software":
                with self._cond:
                    if not self._pending:
                        break
                    seq, host_ts, _ = self._pending.popleft()
            self._push(self._make_frame(None, seq=seq, host_ts_ns=host_ts, error=reason, frame_id=missing))

    def _on_incomplete_buffer(self) -> None:
        """Called on the acquisition thread from inside try_fetch; the buffer is already re-queued.

        harvesters does not expose the discarded buffer, so its frame id is taken to be the next one.
        """
        guessed = None if self._last_frame_id is None else self._last_frame_id + 1
        self._deliver(None, "incomplete buffer (discarded by the GenTL producer/harvesters)",
                      {"frame_id": guessed, "camera_ts_ns": None, "chunk": {"frame_id_guessed": True}})

    def _fail_pending(self, reason: str) -> None:
        with self._cond:
            pending, self._pending = list(self._pending), deque()
        for seq, host_ts, _ in pending:
            self._push(self._make_frame(None, seq=seq, host_ts_ns=host_ts, error=reason))

    # -- connection --------------------------------------------------------------------------
    def _connect(self) -> None:
        with self._ia_lock:
            h = Harvester()
            self._h = h
            props = load_producers(h, self._ctis, f"{self._where}: ")
            index = select_device(props, self.cfg.device, self._ctis, self._where)
            ia = h.create(index)
            self._ia = ia
            self.device_info = props[index]
            if self.cfg.num_buffers < ia.min_num_buffers:
                raise SourceError(
                    f"{self._where}: num_buffers={self.cfg.num_buffers} is below the producer minimum "
                    f"{ia.min_num_buffers}; raise num_buffers"
                )
            ia.num_buffers = self.cfg.num_buffers
            ia.timeout_period_on_update_event_data_call = 0  # non-blocking GenTL event poll (GIL)
            ia.add_callback(ImageAcquirer.Events.INCOMPLETE_BUFFER, _IncompleteBufferCallback(self))
            nm = ia.remote_device.node_map
            self.applied_features = {}
            FeatureWriter(nm, self._where, self.applied_features, self.device_info.get("model")).configure(self.cfg)
            self._chunk_nodes = find_chunk_nodes(nm)
            self._last_frame_id = None
            ia.start()
            self._last_frame_mono = time.monotonic()
        log.info("%s: camera up device=%s mode=%s features=%s", self._where,
                 describe_devices([self.device_info]), self.mode, self.applied_features)

    # -- teardown ----------------------------------------------------------------------------
    def _teardown(self) -> None:
        """stop -> destroy -> reset; every step is attempted even if an earlier one fails.

        destroy() runs through `ImageAcquirer.__exit__` (its weakref finalizer): a plain destroy()
        leaves the finalizer holding the acquirer, which then never gets freed - one leaked
        ImageAcquirer per reconnect (measured with harvesters 1.4.3).
        """
        with self._ia_lock:
            ia, h = self._ia, self._h
            self._ia = self._h = None
        if ia is not None:
            steps = (("remove_callbacks", ia.remove_callbacks), ("stop", ia.stop),
                     ("destroy", lambda: ia.__exit__(None, None, None)))
            for step, call in steps:
                try:
                    call()
                except Exception as exc:  # noqa: BLE001 - a lost device fails these; keep going
                    log.debug("%s: ImageAcquirer.%s failed during teardown: %s", self._where, step, exc)
        if h is not None:
            try:
                h.reset()
            except Exception as exc:  # noqa: BLE001
                log.debug("%s: Harvester.reset failed during teardown: %s", self._where, exc)
