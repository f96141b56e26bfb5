"""The stations as the UI sees them: one thread per station reads its ZeroMQ verdict and image feeds (the wire
format of daemon.sinks.zmq_sink) into a `StationState` the routes read.

Why SUB sockets that only connect: the daemon binds and never waits for a subscriber, so this process can start,
stop, crash or fall behind without a station noticing. What falls behind is dropped here (small receive queue for
images, the newest picture wins), never queued in the daemon.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any, Literal

import zmq
from pydantic import Field, ValidationError

from linesight.config.base import Strict
from linesight.config.ui import StationFeedConfig
from linesight.daemon.sinks.zmq_sink import TOPIC_IMAGE, TOPIC_VERDICT
from linesight.daemon.verdict import Verdict
from linesight.ui.events import Broadcaster, Event
from linesight.ui.trends import StationTrends

log = logging.getLogger(__name__)

KEEP = 1000  # verdicts kept per station (GET .../verdicts pages through them)
SNAPSHOT = 50  # verdicts a page gets when it opens the event stream
POLL_MS = 200  # how often a feed thread looks at its stop flag
_MEDIA = {"jpeg": "image/jpeg", "png": "image/png"}


@dataclass(frozen=True)
class Picture:
    """The latest frame or heatmap as the daemon encoded it, and the seq of the verdict it belongs to."""

    seq: int
    data: bytes
    media_type: str


class Counters(Strict):
    """Since the UI started; derived from the verdict messages alone."""

    verdicts: int = Field(description="Verdict messages received since the UI started")
    ok: int = Field(description="Decided OK")
    ng: int = Field(description="Decided NG")
    fail_safe: dict[str, int] = Field(description="Fail-safe verdicts by reason")
    missed: int = Field(description="Verdicts never received: gaps in seq within one run (slow UI, network)")
    bad_messages: int = Field(description="Messages that were not linesight.verdict/1 (wrong endpoint?)")


class LastVerdict(Strict):
    """The newest verdict in a line: what a station card shows first."""

    seq: int
    part_id: str
    host_ts: str
    verdict: str
    fail_safe: bool
    reason: str
    score: float | None
    threshold: float | None
    grade: str | None
    defect_type: str | None = Field(description="Type of the first (decisive) defect, when the analysis typed it")


class StationAlarm(Strict):
    """One alarm the station published on MQTT (linesight.alarm/1), as the card lists it."""

    code: str
    message: str
    host_ts: str | None = Field(description="When the station raised it (UTC)")


ALARMS_KEPT = 20  # alarms a card lists, newest first
STATUS_STATES = ("online", "degraded", "offline")


class StationSummary(Strict):
    """One station as GET /api/v1/stations and the `summary` events give it."""

    name: str
    connected: bool = Field(description="A message arrived within stale_after_s")
    last_message_age_s: float | None = Field(description="Seconds since the last message; null: none yet")
    stale_after_s: float
    error: str | None = Field(description="Why the feed cannot be read, when it cannot")
    counters: Counters
    last: LastVerdict | None
    model: dict[str, Any] | None = Field(description="id, version, hash of the model in the latest verdict")
    frame_seq: int | None = Field(description="seq of the latest frame received; null: none yet")
    heatmap: bool = Field(description="The latest frame came with a heatmap")
    commands: bool = Field(description="The UI can send it commands (it has an mqtt section)")
    archive: bool = Field(description="Its archive can be reviewed (it has an archive_dir)")
    status: str | None = Field(description="The station's MQTT status: online, degraded or offline (its Last Will); "
                               "null: no mqtt section, or nothing received yet")
    camera: Literal["up", "down"] | None = Field(description="From its camera_down / camera_up alarms since the UI "
                                                 "started; null: neither seen")
    alarms: list[StationAlarm] = Field(description=f"Its last {ALARMS_KEPT} MQTT alarms, newest first (mqtt only)")


def _last(v: dict[str, Any]) -> LastVerdict:
    defects = v.get("defects") or []
    first = defects[0] if defects and "type" in defects[0] and "grade" in defects[0] else None
    return LastVerdict(seq=v["seq"], part_id=v["part_id"], host_ts=v["host_ts"], verdict=v["verdict"],
                       fail_safe=v["fail_safe"], reason=str(v["reason"]), score=v.get("score"),
                       threshold=v.get("threshold"), grade=v.get("grade"),
                       defect_type=None if first is None else first["type"])


class StationState:
    """Everything the pages show about one station; written by its feed thread, read by the routes."""

    def __init__(self, cfg: StationFeedConfig, stale_after_s: float) -> None:
        self.cfg = cfg
        self.stale_after_s = stale_after_s
        self.events = Broadcaster()
        self.trends = StationTrends(cfg.name, cfg.trends)
        self._lock = threading.Lock()
        self._verdicts: deque[dict[str, Any]] = deque(maxlen=KEEP)
        self._counts: Counter[str] = Counter()
        self._fail_safe: Counter[str] = Counter()
        self._seen: float | None = None
        self._frame: Picture | None = None
        self._heatmap: Picture | None = None
        self._status: str | None = None
        self._camera: Literal["up", "down"] | None = None
        self._alarms: deque[StationAlarm] = deque(maxlen=ALARMS_KEPT)
        self.error: str | None = None

    # ------------------------------------------------------------------ written by the feed thread
    def on_verdict(self, payload: bytes) -> None:
        try:
            v = Verdict.parse(payload).to_dict()
        except (ValidationError, ValueError) as exc:
            self.bad(f"verdict: {str(exc).splitlines()[0]}")
            return
        with self._lock:
            self._seen = time.monotonic()
            prev = self._verdicts[-1] if self._verdicts else None
            if prev is not None and prev["run"] == v["run"] and v["seq"] > prev["seq"] + 1:
                self._counts["missed"] += v["seq"] - prev["seq"] - 1
            self._verdicts.append(v)
            self._counts["verdicts"] += 1
            if v["fail_safe"]:
                self._fail_safe[v["reason"]] += 1
            else:
                self._counts[v["verdict"]] += 1
        self.events.publish(Event("verdict", v))
        self.events.publish(Event("summary", self.summary().model_dump(mode="json")))
        for alarm in self.trends.on_verdict(v):  # O(1) per verdict: the daemon's own trend charts
            self.events.publish(Event("trend", alarm.model_dump(mode="json")))

    def on_image(self, header: bytes, image: bytes, heatmap: bytes) -> None:
        try:
            meta = json.loads(header)
            seq = int(meta["verdict"]["seq"])
            image_fmt = (meta.get("image") or {}).get("format")
            heatmap_fmt = (meta.get("heatmap") or {}).get("format")
        except (ValueError, TypeError, KeyError) as exc:
            self.bad(f"image header: {exc}")
            return
        with self._lock:
            self._seen = time.monotonic()
            if not image or image_fmt not in _MEDIA:  # the daemon dropped this frame's pictures (over budget)
                return
            self._frame = Picture(seq, image, _MEDIA[image_fmt])
            self._heatmap = Picture(seq, heatmap, _MEDIA[heatmap_fmt]) if heatmap and heatmap_fmt in _MEDIA \
                else None
            has_heatmap = self._heatmap is not None
        self.events.publish(Event("frame", {"seq": seq, "heatmap": has_heatmap}))

    def on_status(self, payload: bytes) -> None:
        """The station's retained MQTT status (read on the UI's command link: paho's thread)."""
        text = payload.decode("utf-8", "replace").strip()
        with self._lock:
            self._status = text if text in STATUS_STATES else None
        self.events.publish(Event("summary", self.summary().model_dump(mode="json")))

    def on_alarm(self, payload: bytes) -> None:
        """One of the station's MQTT alarms: listed on its card, and an `alarm` event for the open pages."""
        try:
            body = json.loads(payload)
            alarm = StationAlarm(code=str(body["code"]), message=str(body["message"]), host_ts=body.get("host_ts"))
        except (ValueError, TypeError, KeyError, ValidationError) as exc:
            self.bad(f"alarm: {exc}")
            return
        with self._lock:
            self._alarms.appendleft(alarm)
            if alarm.code in ("camera_down", "camera_up"):
                self._camera = "down" if alarm.code == "camera_down" else "up"
        self.events.publish(Event("alarm", alarm.model_dump(mode="json")))
        self.events.publish(Event("summary", self.summary().model_dump(mode="json")))

    def bad(self, why: str) -> None:
        """Count a message that is not the daemon's wire format; say so in the log once."""
        with self._lock:
            self._seen = time.monotonic()
            self._counts["bad_messages"] += 1
            first = self._counts["bad_messages"] == 1
        if first:  # a wrong endpoint would otherwise log every message
            log.warning("station %s: message not understood (%s); is the endpoint a linesight daemon's?",
                        self.cfg.name, why)

    # ------------------------------------------------------------------ read by the routes
    def summary(self) -> StationSummary:
        with self._lock:
            age = None if self._seen is None else time.monotonic() - self._seen
            last = self._verdicts[-1] if self._verdicts else None
            c = self._counts
            return StationSummary(
                name=self.cfg.name, connected=age is not None and age <= self.stale_after_s,
                last_message_age_s=None if age is None else round(age, 3), stale_after_s=self.stale_after_s,
                error=self.error,
                counters=Counters(verdicts=c["verdicts"], ok=c["OK"], ng=c["NG"], fail_safe=dict(self._fail_safe),
                                  missed=c["missed"], bad_messages=c["bad_messages"]),
                last=None if last is None else _last(last), model=None if last is None else last.get("model"),
                frame_seq=None if self._frame is None else self._frame.seq, heatmap=self._heatmap is not None,
                commands=self.cfg.mqtt is not None, archive=self.cfg.archive_dir is not None, status=self._status,
                camera=self._camera, alarms=list(self._alarms))

    def verdicts(self, limit: int, before_seq: int | None = None) -> list[dict[str, Any]]:
        """Newest first, at most `limit`, only seqs below `before_seq` when given (the next page)."""
        with self._lock:
            out = []
            for v in reversed(self._verdicts):
                if before_seq is None or v["seq"] < before_seq:
                    out.append(v)
                    if len(out) == limit:
                        break
            return out

    def picture(self, heatmap: bool) -> Picture | None:
        with self._lock:
            return self._heatmap if heatmap else self._frame

    def snapshot(self) -> list[Event]:
        """What a page opening the event stream starts from."""
        return [Event("snapshot", {"summary": self.summary().model_dump(mode="json"),
                                   "verdicts": self.verdicts(SNAPSHOT)})]


class Feeds:
    """The configured stations' states and the threads that fill them; `start()` / `stop()`."""

    def __init__(self, stations: list[StationFeedConfig], stale_after_s: float) -> None:
        self.states = {s.name: StationState(s, stale_after_s) for s in stations}
        self._ctx: zmq.Context | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        self._ctx = zmq.Context()
        self._stop.clear()
        for state in self.states.values():
            t = threading.Thread(target=self._run, args=(state,), name=f"ui-feed-{state.cfg.name}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(2.0)
        self._threads.clear()
        if self._ctx is not None:
            self._ctx.destroy(linger=0)
            self._ctx = None

    def _socket(self, endpoint: str, topic: bytes, hwm: int) -> zmq.Socket:
        assert self._ctx is not None
        sock = self._ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, hwm)
        sock.connect(endpoint)
        sock.subscribe(topic)
        return sock

    def _run(self, state: StationState) -> None:
        cfg = state.cfg
        try:
            socks = {self._socket(cfg.verdict_endpoint, TOPIC_VERDICT, KEEP): "verdict"}
            if cfg.image_endpoint is not None:
                socks[self._socket(cfg.image_endpoint, TOPIC_IMAGE, 2)] = "image"
        except zmq.ZMQError as exc:
            state.error = f"cannot connect to {cfg.verdict_endpoint} / {cfg.image_endpoint}: {exc}"
            log.error("station %s: %s", cfg.name, state.error)
            return
        poller = zmq.Poller()
        for sock in socks:
            poller.register(sock, zmq.POLLIN)
        log.info("station %s: subscribed to %s", cfg.name, ", ".join(s for s in (cfg.verdict_endpoint,
                                                                                   cfg.image_endpoint) if s))
        try:
            while not self._stop.is_set():
                for sock, _ in poller.poll(POLL_MS):
                    while (parts := _recv(sock)) is not None:
                        if socks[sock] == "verdict" and len(parts) == 2:
                            state.on_verdict(parts[1])
                        elif socks[sock] == "image" and len(parts) == 4:
                            state.on_image(*parts[1:])
                        else:
                            state.bad(f"{socks[sock]} message of {len(parts)} parts")
        except zmq.ZMQError as exc:  # the context was destroyed under us: stopping
            if not self._stop.is_set():
                state.error = f"feed stopped: {exc}"
                log.error("station %s: %s", cfg.name, state.error)
        finally:
            for sock in socks:
                sock.close(0)


def _recv(sock: zmq.Socket) -> list[bytes] | None:
    try:
        return sock.recv_multipart(zmq.NOBLOCK)
    except zmq.Again:
        return None
