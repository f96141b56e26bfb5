"""acquire -> engine -> publish, in threads joined by bounded queues; exactly one verdict per frame.

Threads: acquisition (source.read, never blocks on inference: a full queue gives the frame the fail-safe
verdict `frame_dropped`), processing (this is `run()`'s thread: deadline checks, the engine, the systemd
watchdog), publishing (MQTT, ZeroMQ, metrics) and archiving (drops archive writes, never verdicts, when
the disk is slow). Model loads happen on their own thread and swap in between frames.
"""
from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from linesight.config.daemon import DaemonConfig
from linesight.daemon import verdict as V
from linesight.daemon.identity import Acquired, SeqStore
from linesight.daemon.model import ModelHolder, ModelRefused
from linesight.daemon.sources.base import EndOfStream, Frame, Source
from linesight.errors import DataError
from linesight.export.images import check_image

if TYPE_CHECKING:
    from linesight.daemon.trends import TrendMonitor

log = logging.getLogger(__name__)
RELOAD_QUEUE = 8  # reload requests waiting at most; more are refused with a reason

# (verdict, image, anomaly map, pixel threshold, full analysis for the ZMQ header or None)
Publish = Callable[[dict, np.ndarray | None, Callable[[], np.ndarray | None] | None, float | None, dict | None], None]
Alarm = Callable[..., None]


class Pipeline:
    def __init__(self, cfg: DaemonConfig, source: Source, holder: ModelHolder, publish: Publish, alarm: Alarm,
                 *, station: str, on_tick: Callable[[], None] | None = None, observe: Callable[..., None] | None = None,
                 seqs: SeqStore | None = None):
        self.cfg, self.source, self.holder = cfg, source, holder
        self._publish, self._alarm, self._on_tick = publish, alarm, on_tick or (lambda: None)
        self.on_verdict = observe or (lambda v: None)  # extra listener (demo, tests)
        self.on_drop: Callable[[str], None] = lambda reason: None
        self.on_stage: Callable[[str, float], None] = lambda stage, seconds: None
        self.on_types: Callable[[list[str]], None] = lambda names: None  # a bundle's learned defect types
        self.trends: TrendMonitor | None = None  # the service's trend charts, for knowledge-base conditions
        self.station = station
        p = cfg.pipeline
        self.deadline_ns = int(p.deadline_ms * 1e6)
        self.in_q: queue.Queue[Acquired] = queue.Queue(maxsize=p.queue_size)
        self.seqs = seqs or SeqStore(None, station)
        self.stop_event = threading.Event()
        self.paused = threading.Event()
        self.acquisition_done = threading.Event()
        self.counts: Counter[str] = Counter()
        self._alarm_times: dict[str, float] = {}
        self._reloads: queue.Queue[tuple[int | None, str | None, bool]] = queue.Queue(maxsize=RELOAD_QUEUE)
        self._jobs = itertools.count(1)
        self.frames_in = 0
        self._load_analysis()
        self.part_ids: deque[str] = deque(maxlen=1000)  # external "part arrived" ids, oldest first
        self.last_tick = time.monotonic()

    # ---------------------------------------------------------------- analysis
    def _load_analysis(self) -> None:
        """Spec and knowledge base are read at start: a broken file stops the daemon with file:line."""
        from linesight.config.inspection import load_inspection_spec, load_knowledge_base

        a = self.cfg.analysis
        self.spec = load_inspection_spec(a.spec) if a.spec else None
        self.kb = load_knowledge_base(a.knowledge, self.spec) if a.knowledge else None
        self.history: deque[list[str]] = deque(maxlen=a.trend_window)  # defect types of recent parts
        self.recent_ng: deque[bool] = deque(maxlen=a.trend_window)
        self._types: tuple[Any, Any] | None = None  # (engine, its learned type classifier or None)

    def _type_classifier(self, engine):
        """The engine's learned type classifier (bundle types/*), loaded once per engine; a broken or stale
        one is alarmed once and the shape rules type the regions instead."""
        from linesight.errors import LinesightError
        from linesight.export.type_classifier import TypeClassifier

        if engine is None or not self.cfg.analysis.enabled:
            return None
        if self._types is None or self._types[0] is not engine:
            try:
                clf = TypeClassifier.from_bundle(engine.bundle)
                if clf is not None:
                    self.on_types(clf.labels)
            except LinesightError as exc:
                self.alarm_limited("analysis_error", f"learned defect types disabled: {exc}")
                clf = None
            self._types = (engine, clf)
        return self._types[1]

    def _analyse(self, frame: Frame, pred, pixel_threshold: float,
                 classifier=None) -> tuple[V.VerdictAnalysis | None, dict | None]:
        """NG frames only: measure, type (learned with `classifier`, else rules), grade (spec), advise
        (knowledge base). -> (the verdict's part, full)."""
        from linesight.export import analysis as A
        from linesight.export.analysis.advice import Trend

        if not self.cfg.analysis.enabled or pred.verdict != "NG":
            self.history.append([])
            self.recent_ng.append(False)
            return None, None
        trend = Trend(ng_rate=sum(self.recent_ng) / len(self.recent_ng) if self.recent_ng else 0.0,
                      history=list(self.history), charts=None if self.trends is None else self.trends.out_of_control)
        a = A.analyze(pred, pixel_threshold, frame.image, spec=self.spec, kb=self.kb, trend=trend,
                      evidence=pred.nearest, max_regions=self.cfg.analysis.max_regions, classifier=classifier)
        self.history.append([r.type for r in a.regions])
        self.recent_ng.append(a.decision.verdict == "NG")
        part = V.VerdictAnalysis.model_validate({**A.to_verdict_dict(a), "verdict": a.decision.verdict})
        return part, A.to_header_dict(a)

    # ---------------------------------------------------------------- verdicts
    def _emit(self, item: Acquired, *, prediction=None, fail_safe: str | None = None, detail: str | None = None,
              inference_ms: float | None = None,
              analysis: tuple[V.VerdictAnalysis | None, dict | None] = (None, None)) -> dict:
        frame, seq = item.frame, item.seq
        # the model and thresholds that decided travel with the prediction: a swap in between cannot relabel it
        model = prediction.model if prediction is not None else self.holder.info
        failure = None if fail_safe is None else V.Failure(V.FailSafe(fail_safe), detail)  # unknown: ValueError
        v = V.build(frame, seq=seq, run=self.seqs.run, part_id=item.part_id, station=self.station, model=model,
                    deadline_ms=self.cfg.pipeline.deadline_ms, prediction=prediction, failure=failure,
                    fail_safe_verdict=self.cfg.pipeline.fail_safe_verdict, inference_ms=inference_ms,
                    analysis=analysis[0]).to_dict()
        self.counts["verdicts"] += 1
        self.counts[f"verdict_{v['verdict']}"] += 1
        if fail_safe:
            self.counts[f"failsafe_{fail_safe}"] += 1
            self.alarm_limited(fail_safe, detail or fail_safe, seq=seq, part_id=v["part_id"])
        # the frame-size map is built only if an output asks for it (NG archive, heatmap feed): not for OK frames
        amap = (lambda: prediction.anomaly_map) if prediction is not None else None
        thr = prediction.pixel_threshold if prediction is not None else None
        self.on_verdict(v)
        self._publish(v, frame.image, amap, thr, analysis[1])
        return v

    def admit(self, frame: Frame) -> Acquired:
        """Give an arriving frame its seq and part id (acquisition thread; tests hand frames in here)."""
        seq = self.seqs.next()
        return Acquired(frame, seq, self._part_id(frame, seq))

    def _part_id(self, frame: Frame, seq: int) -> str:
        pid = self.cfg.pipeline.part_id
        if pid.mode == "filename" and frame.name:
            return frame.name
        if pid.mode == "chunk" and pid.chunk_key in frame.chunk:
            return str(frame.chunk[pid.chunk_key])
        if pid.mode == "external":
            try:
                return self.part_ids.popleft()
            except IndexError:
                self.counts["part_id_missing"] += 1
                return f"unassigned-{seq:08d}"
        return f"{pid.prefix}{seq:08d}"

    def alarm_limited(self, code: str, message: str, every_s: float = 30.0, **context: Any) -> None:
        """One alarm per code per interval: a dead camera must not flood the PLC network."""
        now = time.monotonic()
        if now - self._alarm_times.get(code, -1e9) >= every_s:
            self._alarm_times[code] = now
            self._alarm(code, message, **context)

    # ---------------------------------------------------------------- acquisition
    def acquire_loop(self) -> None:
        max_frames = self.cfg.pipeline.max_frames
        try:
            while not self.stop_event.is_set():
                if self.paused.is_set():
                    time.sleep(0.05)
                    continue
                try:
                    frame = self.source.read(0.25)
                except EndOfStream:
                    log.info("source %s ended", self.source.name)
                    break
                except Exception as exc:  # a source must not kill acquisition: alarm, back off, retry
                    self.counts["source_errors"] += 1
                    self.alarm_limited("camera_error", f"source {self.source.name}: {exc}")
                    time.sleep(0.5)
                    continue
                if frame is None:
                    continue
                self.frames_in += 1
                item = self.admit(frame)
                try:
                    self.in_q.put_nowait(item)
                except queue.Full:
                    self.on_drop("queue_full")
                    self._emit(item, fail_safe="frame_dropped", detail="inference queue full (frames arrive "
                               "faster than the model decides)")
                if max_frames and self.frames_in >= max_frames:
                    break
        finally:
            self.acquisition_done.set()

    def trigger_loop(self, hz: float) -> None:
        period = 1.0 / hz
        nxt = time.monotonic()
        while not self.stop_event.is_set() and not self.acquisition_done.is_set():
            if not self.paused.is_set():
                try:
                    self.source.trigger()
                except Exception as exc:
                    self.alarm_limited("camera_error", f"software trigger failed: {exc}")
            nxt += period
            time.sleep(max(0.0, nxt - time.monotonic()))

    # ---------------------------------------------------------------- processing
    def _frame_problem(self, frame: Frame) -> str | None:
        """Why a frame cannot be inspected (from any source), checked once at the pipeline's door."""
        if not frame.ok:
            return frame.error or "empty frame"
        h, w = frame.image.shape[:2]
        if h * w > self.cfg.source.max_frame_pixels:
            return f"frame of {w}x{h} px is larger than source.max_frame_pixels ({self.cfg.source.max_frame_pixels})"
        try:
            check_image(frame.image)
        except DataError as exc:
            return str(exc)
        return None

    def process(self, items: list[Acquired]) -> None:
        """Decide a micro-batch (frames that queued up while the engine was busy): each frame still gets
        its own deadline check and exactly one verdict; an inference error is retried frame by frame so
        one bad frame cannot fail its neighbours."""
        engine = self.holder.engine
        ready = []
        for item in items:
            problem = self._frame_problem(item.frame)
            if problem:
                self._emit(item, fail_safe="bad_frame", detail=problem)
            elif engine is None:
                self._emit(item, fail_safe="no_model", detail="no valid model loaded")
            elif time.time_ns() > item.frame.host_ts_ns + self.deadline_ns:
                self._emit(item, fail_safe="deadline_missed", detail="deadline passed before inference started")
            else:
                ready.append(item)
        if not ready:
            return
        t0 = time.perf_counter()
        classifier = self._type_classifier(engine)
        try:
            preds = engine.predict_batch([it.frame.image for it in ready], regions=not self.cfg.analysis.enabled,
                                         keep_features=classifier is not None)
        except Exception as exc:  # bad pixels or a runtime failure: fail safe, keep running
            if len(ready) > 1:
                for item in ready:
                    self.process([item])
                return
            log.exception("inference failed", extra={"camera": ready[0].frame.source, "seq": ready[0].seq})
            self._emit(ready[0], fail_safe="inference_error", detail=f"{type(exc).__name__}: {exc}")
            return
        ms = (time.perf_counter() - t0) * 1e3
        t = preds[0].timings_ms  # per-frame averages of this micro-batch
        for _ in ready:
            self.on_stage("preprocess", t["preprocess"] / 1e3)
            self.on_stage("inference", (t["features"] + t["knn"] + t["postprocess"]) / 1e3)
        for item, pred in zip(ready, preds):
            frame = item.frame
            t_an = time.perf_counter()
            try:
                found = self._analyse(frame, pred, engine.pixel_threshold, classifier)
            except Exception as exc:  # analysis must not cost the verdict: the score verdict stands
                log.exception("defect analysis failed", extra={"camera": frame.source, "seq": item.seq})
                self.alarm_limited("analysis_error", f"defect analysis failed: {type(exc).__name__}: {exc}")
                found = (None, None)
            if found[0] is not None:
                self.on_stage("analysis", time.perf_counter() - t_an)
            if pred.failure_code is not None:  # e.g. the frame did not align: not inspected as trained
                self._emit(item, prediction=pred, fail_safe=pred.failure_code, inference_ms=ms,
                           detail=pred.failure)
            elif time.time_ns() > frame.host_ts_ns + self.deadline_ns:
                self._emit(item, prediction=pred, fail_safe="deadline_missed", inference_ms=ms,
                           detail=f"decided after the {self.cfg.pipeline.deadline_ms:g} ms deadline")
            else:
                self._emit(item, prediction=pred, inference_ms=ms, analysis=found)

    def request_reload(self, path: str | None = None, rollback: bool = False) -> int:
        """Queue a reload (or rollback); each one runs, in order. Returns its job id; the outcome is an alarm
        (model_changed / model_refused) carrying that id. A full queue is refused, never silently dropped."""
        job = next(self._jobs)
        try:
            self._reloads.put_nowait((job, path, rollback))
        except queue.Full:
            raise ValueError(f"{RELOAD_QUEUE} reloads are already waiting; retry after their outcomes") from None
        return job

    def _reload(self, job: int | None, path: str | None, rollback: bool, *, only_if_new: bool = False) -> None:
        ctx = {} if job is None else {"job": job}
        try:
            engine = self.holder.rollback() if rollback else self.holder.load(path, only_if_new=only_if_new)
            if engine is None:
                return
            self._alarm("model_changed", f"model {engine.bundle.label} active", severity="info", **ctx)
            self.warn_model(engine, **ctx)
        except ModelRefused as exc:
            self.counts["reload_refused"] += 1
            self._alarm("model_refused", str(exc), **ctx)

    def warn_model(self, engine, **ctx) -> None:
        """A bundle that carries warnings (untrained features, stale thresholds) runs, but never silently."""
        if engine.manifest.warnings:
            self._alarm("model_warning", f"model {engine.bundle.label}: {'; '.join(engine.manifest.warnings)}", **ctx)

    def reload_loop(self) -> None:
        """Loads happen here, off the processing thread; the swap itself is one assignment."""
        interval = self.cfg.model.watch_interval_s
        next_check = time.monotonic() + interval
        while not self.stop_event.is_set():
            try:
                self._reload(*self._reloads.get(timeout=0.1))
                continue
            except queue.Empty:
                pass
            if self.cfg.model.watch and time.monotonic() >= next_check:
                next_check = time.monotonic() + interval
                if self.holder.changed():
                    log.info("bundle %s changed on disk: reloading", self.holder.path)
                    self._reload(None, None, False, only_if_new=True)

    def run(self) -> None:
        """The processing loop (caller's thread). Returns when stopped or the source has ended."""
        while True:
            self.last_tick = time.monotonic()
            self._on_tick()
            try:
                batch = [self.in_q.get(timeout=0.2)]
            except queue.Empty:
                if self.acquisition_done.is_set() or (self.stop_event.is_set() and self.in_q.empty()):
                    break
                continue
            while len(batch) < self.cfg.pipeline.max_batch:
                try:
                    batch.append(self.in_q.get_nowait())
                except queue.Empty:
                    break
            now_ns = time.time_ns()
            for item in batch:  # trigger -> processing starts: transfer, decoding, waiting in the queue
                self.on_stage("acquire", (now_ns - item.frame.host_ts_ns) / 1e9)
            self.process(batch)
