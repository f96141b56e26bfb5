"""GenICam/GenTL camera source on harvesters 1.4.3.

Acquisition thread, not the inference thread, and why it polls (harvesters #508)
--------------------------------------------------------------------------------
`ImageAcquirer.fetch()` waits for a buffer by calling the GenTL event wait (1 ms per call by default)
in a Python loop, and the genicam SWIG wrapper keeps the GIL during that native wait. Measured with
`bench/genicam_gil.py` (viky.cti, 2-core VM shared with other jobs, load 1.5-2.3, Python 3.11; median
slowdown of a CPU-bound Python/numpy main-thread workload over 7 interleaved rounds):

  thread blocked in fetch(timeout=60) waiting for a frame     3.33x  (2.30x in a first, shorter run)
  thread fetching + copying a 50 fps stream                   2.88x
  thread try_fetch(1 ms) + sleep(2 ms) / + sleep(5 ms)        1.22x / 1.17x
  blocking fetch in a child process                           1.00x
  this source, idle (0 ms event wait, 0.2 ms poll, 2 ms sleep) 1.19x  (the same poll pattern measured
                                                                0.99x while the VM was less loaded)
  this source, 50 fps into a reader thread                    1.18x

Choice: one acquisition thread per camera that never blocks in native code - GenTL event wait set to
0 ms (`timeout_period_on_update_event_data_call = 0`), `try_fetch(timeout=_POLL_FETCH_TIMEOUT_S)`, and
`_POLL_SLEEP_S` of sleep when idle (which releases the GIL). The residual cost is one GIL hand-over per
poll while the main thread runs Python; onnxruntime releases the GIL during inference, so the daemon
sees less than this pure-Python workload. A process would remove that residue (and isolate a crashing
vendor producer) at the price of an extra frame copy through shared memory and a second interpreter;
it is the upgrade path if profiles ever show GIL waits. Polling adds at most ~2-3 ms of frame-arrival
latency (the host timestamp is taken at arrival; the camera timestamp is exact). The thread also owns
the whole harvesters lifecycle: an `ImageAcquirer` created on the main thread installs its own SIGINT
handler (replacing the daemon's), so the device is never opened there.

Loss handling: GenTL/harvesters have no device-lost event (harvesters #202, #431, #246). Loss is
inferred: no frame for `starvation_timeout_s` while acquiring (free_run/hardware), a software-triggered
frame not arriving within `fetch_timeout_s`, or any fetch error. Then the camera is marked down, the
harvester is torn down (`ImageAcquirer.stop`, `destroy`, `Harvester.reset`) and rebuilt from scratch
with exponential backoff - in the same thread, so reconnecting never leaks threads.

Every triggered frame gets one verdict: frames that never arrive (pending software triggers when the
camera is lost, frame-id gaps under a trigger - delivered with the missing frame ids) and incomplete buffers (harvesters discards them
and only emits `Events.INCOMPLETE_BUFFER`) are delivered as Frames with `error` set. Software-trigger
frames are paired with triggers in order (GenTL reports no trigger id): do not trigger faster than the
camera can expose - many cameras ignore a trigger while busy; the pairing of the following frames then
shifts by one and the trigger left without a frame gets a bad frame after `fetch_timeout_s`.

harvesters 1.4.3 API facts used here (read from its source): `Harvester.add_file(path,
check_validity=True)`, `update()`, `device_info_list[i].property_dict` keys `serial_number`,
`user_defined_name`, `model`, `vendor`, `id_`, `tl_type`; `create(index)`; `ImageAcquirer.num_buffers`,
`.remote_device.node_map`, `.try_fetch(timeout=s)` (None on timeout; `fetch` raises
genicam.gentl.TimeoutException), `.add_callback(ImageAcquirer.Events.INCOMPLETE_BUFFER, Callback)`,
`.is_valid()`, `.stop()`, `.destroy()`; `Buffer` is a context manager whose exit re-queues it;
`buffer.module.frame_id`, `buffer.module.timestamp_ns` (raises NotAvailableException on viky; the
harvesters `Buffer.timestamp_frequency` property is broken there), `buffer.payload.components[0]`
with `.data` (1-D zero-copy view, already unpacked to uint16 for Mono10-16), `.width`, `.height`,
`.data_format`. Chunk values are readable from the node map while the buffer is held.
"""

from __future__ import annotations

import difflib
import logging
import os
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
from genicam.genapi import (
    EAccessMode,
    IBoolean,
    ICategory,
    ICommand,
    IEnumeration,
    IFloat,
    IInteger,
    IString,
    LogicalErrorException,
)
from harvesters.core import Callback, Harvester, ImageAcquirer

from linesight.config.sources import GenICamSourceConfig

from .base import Frame, Source, SourceError

log = logging.getLogger(__name__)

_POLL_FETCH_TIMEOUT_S = 0.0002  # one non-blocking GenTL event poll per try_fetch (event wait is 0 ms)
_POLL_SLEEP_S = 0.002  # idle sleep between polls: releases the GIL (see module docstring)
_OPEN_TIMEOUT_S = 60.0  # first connection (producer load + enumeration + configuration)
_MAX_GAP_FRAMES = 1000  # cap on error frames emitted for one frame-id gap
_JOIN_TIMEOUT_S = 10.0

# PFNC name -> channels of the delivered component data (harvesters unpacks Mono10..16 to uint16).
PIXEL_FORMATS: dict[str, int] = {
    "Mono8": 1, "Mono10": 1, "Mono12": 1, "Mono14": 1, "Mono16": 1,
    "RGB8": 3, "BGR8": 3, "RGBa8": 4, "BGRa8": 4,
}
_CHUNK_CONTROL = {"ChunkModeActive", "ChunkSelector", "ChunkEnable"}
_ACCESS_NAMES = {EAccessMode.NI: "not implemented", EAccessMode.NA: "not available", EAccessMode.WO: "write-only",
                 EAccessMode.RO: "read-only", EAccessMode.RW: "read-write"}


def _adopt_harvesters_logger() -> None:
    """harvesters gives its logger a private stderr handler and propagate=False, bypassing the daemon's
    log configuration (journald/JSON); route its records through the standard hierarchy instead."""
    logger = logging.getLogger("harvesters.core")
    logger.handlers.clear()
    logger.propagate = True


_adopt_harvesters_logger()


class _Lost(Exception):
    """The camera is considered lost; the message says why (goes to status.last_error)."""


def producer_files(cti: Path | None) -> list[str]:
    """The configured .cti, or every .cti in GENICAM_GENTL64_PATH (GenTL standard discovery)."""
    if cti is not None:
        if not Path(cti).is_file():
            raise SourceError(f"GenTL producer {cti} does not exist; set cti to the camera vendor's .cti file",
                              field="source.cti")
        return [str(cti)]
    found: list[str] = []
    for folder in os.environ.get("GENICAM_GENTL64_PATH", "").split(os.pathsep):
        if folder and Path(folder).is_dir():
            found += sorted(str(p) for p in Path(folder).glob("*.cti"))
    if not found:
        raise SourceError(
            "no GenTL producer: cti is not set and GENICAM_GENTL64_PATH lists no directory with a .cti file; "
            "set cti: /path/to/vendor_producer.cti", field="source.cti"
        )
    return found


def list_devices(cti: Path | None = None) -> list[dict[str, Any]]:
    """Device information (serial_number, user_defined_name, model, vendor, id_, ...) per camera.

    For commissioning (which serial is which camera); opens no device.
    """
    h = Harvester()
    try:
        for path in producer_files(cti):
            try:
                h.add_file(path, check_existence=True, check_validity=True)
            except OSError as exc:
                raise SourceError(f"cannot load GenTL producer {path}: {exc}") from exc
        h.update()
        return [
            {k: v for k, v in d.property_dict.items() if k not in ("parent", "thisown")}
            for d in h.device_info_list
        ]
    finally:
        h.reset()


def describe_devices(props: list[dict[str, Any]]) -> str:
    if not props:
        return "none"
    return "; ".join(
        f"[{i}] serial={p.get('serial_number')!r} user_id={p.get('user_defined_name')!r} "
        f"model={p.get('model')!r} vendor={p.get('vendor')!r} id={p.get('id_')!r}"
        for i, p in enumerate(props)
    )


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

    @property
    def supports_trigger(self) -> bool:
        return self.mode == "software"

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
                        frame_data = self._convert(buf)
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

    def _convert(self, buf: Any) -> tuple[np.ndarray | None, str | None, dict[str, Any]]:
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
        meta["chunk"] = self._read_chunks()
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

    def _read_chunks(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        ia = self._ia
        if not self._chunk_nodes or ia is None:
            return out
        nm = ia.remote_device.node_map
        for name in self._chunk_nodes:
            try:
                node = nm.get_node(name)
                if node.node.get_access_mode() in (EAccessMode.RO, EAccessMode.RW):
                    out[name] = node.value
            except Exception:  # noqa: BLE001 - chunk not present in this buffer
                continue
        return out

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
            for cti in self._ctis:
                try:
                    h.add_file(cti, check_existence=True, check_validity=True)
                except OSError as exc:
                    raise SourceError(f"{self._where}: cannot load GenTL producer {cti}: {exc}") from exc
            h.update()
            props = [
                {k: v for k, v in d.property_dict.items() if k not in ("parent", "thisown")}
                for d in h.device_info_list
            ]
            index = self._select(props)
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
            self._configure(nm)
            self._chunk_nodes = self._find_chunk_nodes(nm)
            self._last_frame_id = None
            ia.start()
            self._last_frame_mono = time.monotonic()
        log.info("%s: camera up device=%s mode=%s features=%s", self._where,
                 describe_devices([self.device_info]), self.mode, self.applied_features)

    def _select(self, props: list[dict[str, Any]]) -> int:
        sel = self.cfg.device
        found = f"found {len(props)} device(s) via {', '.join(self._ctis)}: {describe_devices(props)}"
        if not props:
            raise SourceError(f"{self._where}: no camera found; {found}; check cabling, power and network")
        if sel.index is not None:
            if sel.index >= len(props):
                raise SourceError(f"{self._where}: device.index={sel.index} is out of range; {found}")
            return sel.index
        if sel.serial is not None:
            key, value, what = "serial_number", sel.serial, "device.serial"
        elif sel.user_id is not None:
            key, value, what = "user_defined_name", sel.user_id, "device.user_id"
        else:
            if len(props) > 1:
                raise SourceError(f"{self._where}: several cameras and no device selector; {found}; set device.serial")
            return 0
        matches = [i for i, p in enumerate(props) if p.get(key) == value]
        if not matches:
            raise SourceError(f"{self._where}: no camera with {what}={value!r}; {found}; fix {what}")
        if len(matches) > 1:
            raise SourceError(f"{self._where}: {len(matches)} cameras match {what}={value!r}; {found}")
        return matches[0]

    # -- features ----------------------------------------------------------------------------
    def _configure(self, nm: Any) -> None:
        cfg = self.cfg
        for name, value in cfg.features.items():
            self._set_feature(nm, name, value, f"features.{name}")
        if cfg.pixel_format is not None:
            if cfg.pixel_format not in PIXEL_FORMATS:
                raise SourceError(
                    f"{self._where}: pixel_format={cfg.pixel_format!r} is not supported by linesight "
                    f"(supported: {', '.join(PIXEL_FORMATS)})"
                )
            self._set_feature(nm, "PixelFormat", cfg.pixel_format, "pixel_format")
        if cfg.width is not None:
            self._set_feature(nm, "Width", cfg.width, "width")
        if cfg.height is not None:
            self._set_feature(nm, "Height", cfg.height, "height")
        if cfg.exposure_time_us is not None:
            if self._writable(nm, "ExposureAuto"):
                self._set_feature(nm, "ExposureAuto", "Off", "exposure_time_us (ExposureAuto)")
            self._set_feature(nm, "ExposureTime", cfg.exposure_time_us, "exposure_time_us")
        if cfg.gain_db is not None:
            if self._writable(nm, "GainAuto"):
                self._set_feature(nm, "GainAuto", "Off", "gain_db (GainAuto)")
            self._set_feature(nm, "Gain", cfg.gain_db, "gain_db")
        self._configure_trigger(nm)
        fmt = self._node(nm, "PixelFormat")
        if fmt is not None and self._readable(fmt) and str(fmt.value) not in PIXEL_FORMATS:
            raise SourceError(
                f"{self._where}: the camera delivers PixelFormat {fmt.value}, which linesight cannot convert; "
                f"set pixel_format to one of {', '.join(p for p in PIXEL_FORMATS if p in fmt.symbolics)}"
            )

    def _configure_trigger(self, nm: Any) -> None:
        mode, trig = self.mode, self.cfg.trigger
        origin = f"trigger.mode={mode}"
        if mode == "free_run":
            if self._node(nm, "TriggerMode") is not None:
                self._select_frame_start(nm, origin)
                self._set_feature(nm, "TriggerMode", "Off", origin)
            return
        needed = ["TriggerMode", "TriggerSource"] + (["TriggerSoftware"] if mode == "software" else [])
        missing = [n for n in needed if self._node(nm, n) is None]
        if missing:
            raise SourceError(
                f"{self._where}: {origin} needs the camera feature(s) {', '.join(missing)}, which "
                f"{self.device_info.get('model')!r} does not have; use trigger.mode: free_run"
            )
        self._select_frame_start(nm, origin)
        self._set_feature(nm, "TriggerMode", "Off", origin)
        self._set_feature(nm, "TriggerSource", "Software" if mode == "software" else trig.source,
                          origin if mode == "software" else "trigger.source")
        if mode == "hardware" and trig.activation is not None:
            self._set_feature(nm, "TriggerActivation", trig.activation, "trigger.activation")
        self._set_feature(nm, "TriggerMode", "On", origin)

    def _select_frame_start(self, nm: Any, origin: str) -> None:
        selector = self._node(nm, "TriggerSelector")
        if selector is not None and self._writable(nm, "TriggerSelector"):
            self._set_feature(nm, "TriggerSelector", "FrameStart", origin)

    @staticmethod
    def _node(nm: Any, name: str) -> Any:
        try:
            return nm.get_node(name)
        except LogicalErrorException:
            return None

    @staticmethod
    def _readable(node: Any) -> bool:
        return node.node.get_access_mode() in (EAccessMode.RO, EAccessMode.RW)

    def _writable(self, nm: Any, name: str) -> bool:
        node = self._node(nm, name)
        return node is not None and node.node.get_access_mode() in (EAccessMode.WO, EAccessMode.RW)

    def _set_feature(self, nm: Any, name: str, value: Any, origin: str) -> Any:
        """Set one feature with a typed, range-checked value, read it back and log it."""
        where = f"{self._where}: {origin}: feature {name}={value!r}"
        node = self._node(nm, name)
        if node is None:
            names = [n.node.name for n in nm.nodes if n.node.is_feature()]
            close = difflib.get_close_matches(name, names, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise SourceError(f"{where}: the camera has no feature {name!r}{hint}")
        access = node.node.get_access_mode()
        if access not in (EAccessMode.WO, EAccessMode.RW):
            raise SourceError(f"{where}: not writable now (access mode {_ACCESS_NAMES.get(access, access)})")
        try:
            if isinstance(node, ICommand):
                if value is not True:
                    raise SourceError(f"{where}: {name} is a command; set it to true to execute it")
                node.execute()
                readback: Any = "executed"
            else:
                node.value = self._typed(node, value, where)
                readback = node.value if self._readable(node) else "(write-only)"
        except SourceError:
            raise
        except Exception as exc:  # noqa: BLE001 - genapi rejects: out of range, locked, invalid
            raise SourceError(f"{where}: rejected by the camera: {type(exc).__name__}: {exc}") from exc
        self.applied_features[name] = readback
        if readback != value and not isinstance(node, ICommand):
            log.info("%s: feature %s requested=%r actual=%r", self._where, name, value, readback)
        else:
            log.debug("%s: feature %s=%r", self._where, name, readback)
        return readback

    @staticmethod
    def _typed(node: Any, value: Any, where: str) -> Any:
        if isinstance(node, IEnumeration):
            text = str(value)
            allowed = list(node.symbolics)
            if text not in allowed:
                raise SourceError(f"{where}: not one of {', '.join(allowed)}")
            return text
        if isinstance(node, IBoolean):
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
            raise SourceError(f"{where}: expected true or false")
        if isinstance(node, IInteger):
            if isinstance(value, bool) or not (
                isinstance(value, int) or (isinstance(value, float) and value.is_integer())
                or (isinstance(value, str) and value.strip().lstrip("-").isdigit())
            ):
                raise SourceError(f"{where}: expected an integer")
            number = int(value)
            lo, hi, inc = node.min, node.max, node.inc
            if not lo <= number <= hi:
                raise SourceError(f"{where}: out of range [{lo}, {hi}]")
            if inc and (number - lo) % inc:
                raise SourceError(f"{where}: must be {lo} + a multiple of {inc}")
            return number
        if isinstance(node, IFloat):
            try:
                number = float(value) if not isinstance(value, bool) else None
            except ValueError:
                number = None
            if number is None:
                raise SourceError(f"{where}: expected a number")
            lo, hi = node.min, node.max
            if not lo <= number <= hi:
                raise SourceError(f"{where}: out of range [{lo}, {hi}]")
            return number
        if isinstance(node, IString):
            return str(value)
        raise SourceError(f"{where}: feature type {type(node).__name__} cannot be set from the config")

    def _find_chunk_nodes(self, nm: Any) -> list[str]:
        category = self._node(nm, "ChunkDataControl")
        if category is None or not isinstance(category, ICategory):
            return []
        names: list[str] = []
        stack = list(category.features)
        while stack:
            node = stack.pop(0)
            if isinstance(node, ICategory):
                stack.extend(node.features)
                continue
            name = node.node.name
            if name in _CHUNK_CONTROL or name.endswith("Selector") or isinstance(node, ICommand):
                continue
            names.append(name)
        return names

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
