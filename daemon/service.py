"""`linesight run`: wire source, model, pipeline, sinks, metrics and systemd together; stop cleanly.

Readiness (sd_notify READY=1) is sent once the source is open, the model is loaded (or definitively
refused: the daemon then runs degraded, every frame fail-safe `no_model`) and the MQTT broker is connected
(or `mqtt_wait_s` has passed: verdicts are then dropped+counted until it connects). WATCHDOG=1 comes from
the processing loop, so a hung engine stops the pings and systemd restarts the service.

Outputs: each verdict is JSON-encoded once (`Outgoing`) and those bytes go to MQTT, ZeroMQ, the verdict log and
the archive; its frame and map travel as `Pictures`, rendered once for the ZeroMQ feed and the archive. The
hand-off to the publish thread (`PublishQueue`) never blocks processing: over `pipeline.publish_queue_mb`
pictures are dropped and counted, verdicts never.
"""
from __future__ import annotations

import logging
import queue
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from linesight.config.daemon import DaemonConfig
from linesight.config.inspection import InspectionSpec
from linesight.daemon.commands import Dispatcher, Feedback, Part, Pause, Reload, Resume
from linesight.daemon.feedback import FeedbackDesk
from linesight.daemon.identity import SeqStore, state_dir_of
from linesight.daemon.metrics import Metrics
from linesight.daemon.model import ModelHolder, ModelRefused
from linesight.daemon.notify import Notifier
from linesight.daemon.pipeline import Pipeline
from linesight.daemon.sinks.encoding import Outgoing, Pictures, verdict_json
from linesight.daemon.sinks.publish_queue import PublishQueue
from linesight.daemon.sources.factory import build_source
from linesight.daemon.trends import Observation, TrendMonitor

log = logging.getLogger(__name__)
#: Verdicts waiting to be published from which pictures are dropped and alarm publish_stalled is raised (the
#: publish thread is that far behind); verdicts themselves are always queued, see PublishQueue.
PUBLISH_QUEUE_ITEMS = 256


class Service:
    def __init__(self, cfg: DaemonConfig, *, notifier: Notifier | None = None, mqtt_wait_s: float = 10.0):
        self.cfg = cfg
        self.notifier = notifier or Notifier.from_env()
        self.mqtt_wait_s = mqtt_wait_s
        out = cfg.outputs
        self.station = out.mqtt.station_id
        self.metrics = Metrics(deadline_s=cfg.pipeline.deadline_ms / 1000.0)
        self.holder = ModelHolder(cfg.model.bundle, project=cfg.model.project, threads=cfg.model.threads,
                                  golden_tolerance=cfg.model.golden_tolerance,
                                  min_defect_px=cfg.model.min_defect_px)
        self.source = build_source(cfg.source)
        state_dir = state_dir_of(cfg.pipeline.state_dir)
        self.seqs = SeqStore(state_dir, self.station)
        if state_dir is None:
            log.warning("pipeline.state_dir not set: seq restarts at 1 on every start (run id %d = start time)",
                        self.seqs.run)
        self.mqtt = self.zmq = self.archive = self.verdict_log = None
        self.pub_q = PublishQueue(int(cfg.pipeline.publish_queue_mb * 2**20), PUBLISH_QUEUE_ITEMS)
        self.arch_q: queue.Queue[Outgoing | None] = queue.Queue(maxsize=16)
        self.feedback = FeedbackDesk(self.station, cfg.model.project,
                                     Path(out.archive.dir) if out.archive.enabled else None)
        self.archive_prune_s = 60.0  # age retention between records (a test shortens it)
        # which pictures any output uses: the others are never held in the queue
        images_out = out.zmq.enabled and out.zmq.image_endpoint is not None
        self._keep_image = images_out or out.archive.enabled
        self._keep_map = (images_out and out.zmq.send_heatmap) or out.archive.enabled
        self.pipeline = Pipeline(cfg, self.source, self.holder, self._enqueue, self.alarm, station=self.station,
                                 on_tick=self._tick, seqs=self.seqs)
        self.metrics.watch_frames(lambda: self.pipeline.frames_in)
        self.pipeline.on_drop = self.metrics.frame_dropped
        self.pipeline.on_stage = self.metrics.observe_stage
        self.pipeline.on_types = self.metrics.add_defect_types  # learned types, when a bundle brings them
        self.metrics.add_defect_types((self.pipeline.spec or InspectionSpec()).known_types())
        self.trends = self.pipeline.trends = TrendMonitor(cfg.trends) if cfg.trends.enabled else None
        self.metrics.watch_trends(self.trends)
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._next_stats = time.monotonic() + cfg.pipeline.stats_interval_s
        self._camera_up = True

    # ---------------------------------------------------------------- outputs
    def _enqueue(self, verdict: dict, image: np.ndarray | None, amap: Callable[[], np.ndarray | None] | None,
                 _pixel_thr: float | None,
                 analysis: dict | None) -> None:
        """Processing (and acquisition) thread: encode the verdict once for every output and hand it over;
        never waits (a full queue drops pictures, counted, see PublishQueue)."""
        frame_hw = None if image is None else image.shape[:2]
        image = image if self._keep_image else None
        amap = amap if self._keep_map else None
        thr = verdict.get("threshold")
        pictures = None if image is None and amap is None else \
            Pictures(image, amap, float(thr) if isinstance(thr, (int, float)) else None, frame_hw)
        self.pub_q.put(Outgoing(verdict, verdict_json(verdict), analysis, pictures))
        if self.pub_q.backlogged:  # an output hangs the publish thread: say so, keep the verdicts
            self.pipeline.alarm_limited("publish_stalled", f"{len(self.pub_q)} verdicts wait for the outputs: a "
                                        "stuck output (the verdict log's disk?) delays every verdict; they are "
                                        "kept and sent late, frames and heatmaps are dropped meanwhile",
                                        seq=verdict.get("seq"))

    def _publish_loop(self) -> None:
        while (item := self.pub_q.get()) is not None:
            verdict = item.verdict
            t0 = time.perf_counter()
            try:
                if self.mqtt:
                    self.mqtt.publish_verdict(verdict, item.payload)
                if self.zmq:
                    self.zmq.publish(verdict, item.pictures, payload=item.payload, analysis=item.analysis)
            except Exception:  # an output bug must never stop verdicts for the next frames
                log.exception("publishing verdict %s failed", verdict.get("seq"))
            if self.verdict_log and not self.verdict_log.write(verdict, item.payload):  # never raises
                self.pipeline.alarm_limited("verdict_log_error", f"verdict log {self.verdict_log.path}: "
                                            f"{self.verdict_log.last_problem}", seq=verdict.get("seq"))
            self.metrics.record_verdict(verdict)
            self.feedback.recent.note(verdict)  # O(1): what cmd/feedback answers
            for a in self.trends.update(Observation.from_verdict(verdict)) if self.trends else ():  # O(1), ~5 us
                self.alarm(a.code, a.message, seq=verdict.get("seq"), chart=a.kind, defect_type=a.defect_type)
            self.metrics.observe_stage("publish", time.perf_counter() - t0)
            if self.archive and item.pictures is not None:
                try:
                    self.arch_q.put_nowait(item)  # the archive thread releases its bytes
                    continue
                except queue.Full:
                    log.warning("archive queue full: frame %s not archived", verdict.get("seq"))
            self.pub_q.release(item)

    def _archive_loop(self) -> None:
        """Writes queued records; between them, age retention runs every `archive_prune_s` so max_age_days
        holds on a stopped line too (save() alone only prunes when frames arrive); the first run is at start, so
        records a long stop aged out are gone before the first frame."""
        next_prune = time.monotonic()
        while True:
            if time.monotonic() >= next_prune:
                next_prune = time.monotonic() + self.archive_prune_s
                self.archive.prune()
                self.metrics.set_archive_bytes(self.archive.size_bytes)
            try:
                item = self.arch_q.get(timeout=min(1.0, self.archive_prune_s))
            except queue.Empty:
                continue
            if item is None:
                return
            errors = self.archive.counters["errors"]
            self.archive.save(item.verdict, item.pictures, item.payload)
            self.pub_q.release(item)
            self.metrics.set_archive_bytes(self.archive.size_bytes)
            if self.archive.counters["errors"] > errors:  # full disk, unplugged drive: never silent
                self.pipeline.alarm_limited("archive_error", f"archive {self.cfg.outputs.archive.dir}: "
                                            f"{self.archive.last_problem}", seq=item.verdict.get("seq"))

    def _drain_archive(self, timeout_s: float = 8.0) -> None:
        """On stop the archive thread writes what is queued (NG evidence), bounded by systemd's stop timeout."""
        thread = next((t for t in self._threads if t.name == "archive"), None)
        if thread is None:
            return
        ended = True  # the end marker got into the queue (it is no record)
        try:
            self.arch_q.put(None, timeout=timeout_s)
        except queue.Full:
            ended = False
        thread.join(timeout=timeout_s)
        if thread.is_alive():
            log.error("archive still writing after %.1f s: %d queued records not archived", timeout_s,
                      self.arch_q.qsize() - int(ended))

    def alarm(self, code: str, message: str, **context: Any) -> None:
        """Log, count (linesight_alarms_total{code}: alerting must not depend on MQTT being up) and publish."""
        self.metrics.alarm_raised(code)
        log.warning("alarm %s: %s", code, message, extra={"alarm": code, **{f"ctx_{k}": v for k, v in context.items()}})
        if self.mqtt:
            self.mqtt.publish_alarm(code, message, station=self.station, **context)

    # ---------------------------------------------------------------- commands (paho thread: keep short)
    def _commands(self) -> Dispatcher:
        return Dispatcher({Reload: self._cmd_reload, Pause: self._cmd_pause, Resume: self._cmd_resume,
                           Feedback: self._cmd_feedback, Part: self._cmd_part},
                          allowed=tuple(self.cfg.outputs.mqtt.commands))

    def _cmd_reload(self, cmd: Reload) -> dict:
        """Queued in order, never collapsed: the reply names the job, its outcome comes as an alarm with it."""
        if cmd.bundle is not None and self.cfg.model.project is not None:
            raise ValueError(f"this station runs project {self.cfg.model.project}: activate a version with "
                             "`linesight project activate` (it reloads by itself) instead of naming a bundle")
        if cmd.bundle is not None:
            where = Path(cmd.bundle).resolve()
            allowed = [d.resolve() for d in (self.cfg.model.reload_dirs or [self.cfg.model.models_folder()])]
            if not any(where.is_relative_to(d) for d in allowed):
                raise ValueError(f"bundle {cmd.bundle} is outside the folders this station loads models from "
                                 f"({', '.join(map(str, allowed))}; model.reload_dirs)")
        job = self.pipeline.request_reload(cmd.bundle, rollback=cmd.rollback)
        return {"job": job, "bundle": cmd.bundle or str(self.holder.path), "rollback": cmd.rollback,
                "outcome": f"alarm model_changed or model_refused with job {job}"}

    def _cmd_pause(self, _cmd: Pause) -> dict:
        self.pipeline.paused.set()
        self._status()
        return {"paused": True}

    def _cmd_resume(self, _cmd: Resume) -> dict:
        self.pipeline.paused.clear()
        self._status()
        return {"paused": False}

    def _cmd_feedback(self, cmd: Feedback) -> dict:
        reply = self.feedback.answer(cmd, self.archive.image_of if self.archive else lambda _seq: None)
        self.metrics.feedback_received("OK" if cmd.label == "OK" else "NG")
        return reply

    def _cmd_part(self, cmd: Part) -> dict:
        self.pipeline.part_ids.append(cmd.part_id)
        return {"queued": len(self.pipeline.part_ids)}

    def _stats(self) -> dict:
        c = self.pipeline.counts
        st = self.source.status
        return {"frames": self.pipeline.frames_in, "verdicts": c["verdicts"], "ok": c["verdict_OK"],
                "ng": c["verdict_NG"], "failsafe": {k.removeprefix("failsafe_"): v for k, v in c.items()
                                                    if k.startswith("failsafe_")},
                "queue_depth": self.pipeline.in_q.qsize(), "camera": {"up": st.up, "reconnects": st.reconnects,
                                                                       "last_error": st.last_error},
                # what went wrong without a verdict saying so: source reads that raised, refused model loads,
                # frames that got an `unassigned-` id (part_id.mode external, no cmd/part id waiting)
                "source_errors": c["source_errors"], "reload_refused": c["reload_refused"],
                "part_id_missing": c["part_id_missing"],
                "model": self.holder.info, "paused": self.pipeline.paused.is_set()}

    def health(self) -> dict:
        """ok: deciding; degraded: fail-safe verdicts (no model / camera down / paused); unhealthy: the
        processing loop has not turned for 5 s (hung) -> /healthz answers 503."""
        if time.monotonic() - self.pipeline.last_tick > 5.0:
            return {"status": "unhealthy", "reason": "processing loop stalled", **self._stats()}
        ok = self.holder.engine is not None and self.source.status.up and not self.pipeline.paused.is_set()
        if self.mqtt and not self.mqtt.connected:  # verdicts are being dropped: never "ok"
            return {"status": "degraded", "reason": "mqtt broker unreachable", **self._stats()}
        if self.archive and self.archive.last_problem:  # NG evidence is not being kept
            return {"status": "degraded", "reason": f"archive: {self.archive.last_problem}", **self._stats()}
        if self.verdict_log and self.verdict_log.last_problem:  # the trace of decisions has a gap
            return {"status": "degraded", "reason": f"verdict log: {self.verdict_log.last_problem}", **self._stats()}
        return {"status": "ok" if ok else "degraded", **self._stats()}

    def _status(self) -> None:
        if not self.mqtt:
            return
        degraded = self.holder.engine is None or not self.source.status.up or self.pipeline.paused.is_set()
        self.mqtt.publish_status("degraded" if degraded else "online")

    def _tick(self) -> None:
        """Called by the processing loop on every frame and at least every 0.2 s when idle."""
        self.notifier.watchdog_if_due()
        up = self.source.status.up
        if up != self._camera_up:
            self._camera_up = up
            self.metrics.set_camera_up(up)
            self._status()
            if up:
                self.alarm("camera_up", f"source {self.source.name} delivering again", severity="info")
            else:
                self.alarm("camera_down", f"source {self.source.name} down: {self.source.status.last_error}")
        now = time.monotonic()
        if now >= self._next_stats:
            self._next_stats = now + self.cfg.pipeline.stats_interval_s
            self.metrics.set_camera_up(self.source.status.up)
            self.metrics.set_queue_depth("inference", self.pipeline.in_q.qsize())
            self.metrics.set_queue_depth("publish", len(self.pub_q))
            if self.holder.info:
                self.metrics.set_model(self.holder.info)
            self._status()

    # ---------------------------------------------------------------- lifecycle
    def _start_thread(self, target, name: str) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def start(self) -> None:
        out = self.cfg.outputs
        outputs = out.summary()  # every output, on or off: an output left off by mistake shows here
        log.info("outputs: %s", "; ".join(f"{k} {v}" for k, v in outputs.items()), extra={"outputs": outputs})
        if out.metrics.enabled:
            self.metrics.serve(out.metrics.host, out.metrics.port, health=self.health)
        if out.mqtt.enabled:
            from linesight.daemon.sinks.mqtt_sink import MqttSink

            self.mqtt = MqttSink(out.mqtt, on_command=self._commands(), stats_provider=self._stats,
                                 initial_state="degraded")  # "online" only once a model decides frames
            self.metrics.watch_sink("mqtt", lambda: self.mqtt.counters)
            self.metrics.watch_mqtt_connected(lambda: self.mqtt.connected)
            self.mqtt.start()
        if out.zmq.enabled:
            from linesight.daemon.sinks.zmq_sink import ZmqSink

            self.zmq = ZmqSink(out.zmq)
            self.metrics.watch_sink("zmq", lambda: self.zmq.counters)
        if out.archive.enabled:
            from linesight.daemon.sinks.archive import Archive

            self.archive = Archive(out.archive)
            self.metrics.watch_sink("archive", lambda: self.archive.counters)
            self.metrics.watch_archive_disk(out.archive.dir)
            self._start_thread(self._archive_loop, "archive")
        if out.verdict_log.enabled:
            from linesight.daemon.sinks.verdict_log import VerdictLog

            self.verdict_log = VerdictLog(out.verdict_log)
            self.metrics.watch_sink("verdict_log", lambda: self.verdict_log.counters)
        self.metrics.watch_sink("publish", lambda: self.pub_q.counters)
        self._start_thread(self._publish_loop, "publish")
        try:
            engine = self.holder.load()
            self.metrics.set_model(engine.identity)
            self.pipeline.warn_model(engine)
        except ModelRefused as exc:
            self.alarm("no_model", str(exc))
        self.source.open()
        self.metrics.set_camera_up(self.source.status.up)
        self._status()
        if self.mqtt:
            deadline = time.monotonic() + self.mqtt_wait_s
            while not self.mqtt.connected and time.monotonic() < deadline:
                time.sleep(0.05)
            if not self.mqtt.connected:
                self.alarm("mqtt_down", f"broker not reachable after {self.mqtt_wait_s:g} s; verdicts are dropped "
                                        "and counted until it is")
        self._start_thread(self.pipeline.acquire_loop, "acquire")
        self._start_thread(self.pipeline.reload_loop, "model-reload")
        if self.cfg.pipeline.software_trigger_hz:
            self._start_thread(lambda: self.pipeline.trigger_loop(self.cfg.pipeline.software_trigger_hz), "trigger")
        self.metrics.set_up(True)
        self._status()
        self.notifier.ready(status=f"inspecting: model {self.holder.info}, source {self.source.name}")
        log.info("linesight daemon running", extra={"station": self.station, "model": self.holder.info})

    def run(self) -> int:
        self.start()
        try:
            self.pipeline.run()
        finally:
            self.shutdown()
        return 0

    def stop(self, *_: Any) -> None:
        """Signal handler: stop acquiring; in-flight frames are finished (or fail-safe) before exit."""
        if not self._stopping.is_set():
            log.info("stopping: no new frames; finishing %d queued", self.pipeline.in_q.qsize())
            self._stopping.set()
            self.notifier.stopping()
            self.pipeline.stop_event.set()

    def shutdown(self) -> None:
        self.pipeline.stop_event.set()
        for t in self._threads:
            if t.name == "acquire":
                t.join(timeout=5)
        while not self.pipeline.in_q.empty():  # frames queued after the loop ended still get verdicts
            self.pipeline.process([self.pipeline.in_q.get_nowait()])
        self.pub_q.close()
        for t in self._threads:
            if t.name == "publish":
                t.join(timeout=10)
                if t.is_alive():  # an output hangs: what is still queued is lost with the process
                    log.error("publish thread still busy after 10 s: %d verdicts not published", len(self.pub_q))
        if self.verdict_log:
            self.verdict_log.close()
        self._drain_archive()
        self.seqs.close()
        try:
            self.source.close()
        except Exception:
            log.exception("closing source failed")
        if self.mqtt:
            self.mqtt.stop()
        if self.zmq:
            self.zmq.close()
        self.metrics.set_up(False)
        self.metrics.stop()
        log.info("linesight daemon stopped", extra={"verdicts": self.pipeline.counts["verdicts"]})


def run_service(cfg: DaemonConfig, doc: Any = None) -> int:
    """Run until SIGTERM/SIGINT. `doc` (the YamlDocument from `preflight.load_station`) lets start-up
    problems name their file:line. The checks run first, before anything binds a port or opens the camera,
    and raise one ConfigError listing every problem (the same lines `check-config` prints)."""
    from linesight.daemon.preflight import check_before_start

    check_before_start(cfg, doc)
    svc = Service(cfg)
    signal.signal(signal.SIGTERM, svc.stop)
    signal.signal(signal.SIGINT, svc.stop)
    return svc.run()

