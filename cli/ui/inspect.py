"""POST /api/v1/inspect behind the route: an uploaded image through the one inference path (Engine, then the
defect analysis) into a verdict of the daemon's schema, from the UI's own station name, run and seq.

Why a lock around the engine: an Engine is for one thread at a time; requests run in the server's worker threads
(never on its event loop) and take turns, and more than `max_waiting` of them are refused instead of piling up.
Why the daemon's ModelHolder: the same load, golden-image check and "the project activated another version"
detection as a station, so this endpoint answers with what the line would run.
"""
from __future__ import annotations

import base64
import logging
import threading
import time
from typing import Any

import numpy as np
from pydantic import Field

from linesight.config.base import Strict
from linesight.config.ui import InspectConfig
from linesight.daemon import verdict as V
from linesight.daemon.identity import SeqStore
from linesight.daemon.model import ModelHolder, ModelRefused
from linesight.daemon.sinks.encoding import encode_image
from linesight.daemon.sources.base import Frame
from linesight.daemon.sources.folder import header_size
from linesight.errors import DataError, LinesightError
from linesight.export.engine import Engine
from linesight.export.images import check_image, decode_image
from linesight.ui.uploads import Upload

log = logging.getLogger(__name__)

SOURCE = "upload"  # camera.name of the verdicts this endpoint gives


class Unavailable(LinesightError):
    """No model can answer now (none configured, refused, or the engine is busy): 503 with this message."""


class InspectAnswer(Strict):
    """What POST /api/v1/inspect answers."""

    verdict: dict[str, Any] = Field(description="linesight.verdict/1, as a station publishes it "
                                    "(docs/verdict.schema.json)")
    analysis: dict[str, Any] | None = Field(description="The full defect analysis of an NG image (every region, "
                                            "decision, advice, basis), as in the ZeroMQ image header")
    overlay_png: str | None = Field(description="With ?overlay=true: base64 PNG of original | heatmap with "
                                    "numbered region boxes | colour bar, under the verdict (as predict --overlay)")


class ModelState(Strict):
    """GET /api/v1/inspect: which model answers, or why none does."""

    configured: bool = Field(description="The UI config has an inspect section")
    model: dict[str, Any] | None = Field(description="id, version, hash of the loaded model; null: none")
    problem: str | None = Field(description="Why the model could not be loaded (the 503 message)")


def decode_upload(upload: Upload, max_pixels: int) -> np.ndarray:
    """The project's decoder on the request bytes; PNG/JPEG too large are refused from their header, undecoded."""
    where = f"upload {upload.name!r}" if upload.name else "upload"
    data = np.frombuffer(upload.data, np.uint8)
    size = header_size(data)
    if size is None or size[0] * size[1] <= max_pixels:
        image = decode_image(data, where)
        check_image(image, where)
        size = (image.shape[1], image.shape[0])  # formats without a parsed header: checked once decoded
    if size[0] * size[1] > max_pixels:
        raise DataError(f"{where} is {size[0]}x{size[1]} px, more than inspect.max_frame_pixels ({max_pixels})")
    return image


class Inspector:
    """The inspect station: its model, its run and seq, its spec and knowledge base."""

    def __init__(self, cfg: InspectConfig) -> None:
        from linesight.config.inspection import load_inspection_spec, load_knowledge_base

        self.cfg = cfg
        self.spec = load_inspection_spec(cfg.spec) if cfg.spec else None  # file:line errors at start
        self.kb = load_knowledge_base(cfg.knowledge, self.spec) if cfg.knowledge else None
        self.holder = ModelHolder(cfg.bundle, project=cfg.project, threads=cfg.threads)
        self.seqs = SeqStore(None, cfg.station)  # memory only: run = start time, seq from 1
        self.problem: str | None = None
        self._lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._inside = 0
        self._types: tuple[Engine, Any] | None = None

    @property
    def state(self) -> ModelState:
        return ModelState(configured=True, model=self.holder.info, problem=self.problem)

    def load(self) -> None:
        """Load (or reload) the model; a refusal is kept as `problem` (the 503 message) and logged."""
        try:
            self.holder.load(only_if_new=self.holder.engine is not None)
            self.problem = None
        except ModelRefused as exc:
            self.problem = str(exc)
            kept = "" if self.holder.engine is None else f"; still answering with {self.holder.engine.bundle.label}"
            log.error("inspect: %s%s", exc, kept)

    def _engine(self) -> Engine:
        if self.holder.changed():  # a rewritten bundle, or the project activated another version
            self.load()
        if self.holder.engine is None:
            raise Unavailable(f"inspect has no model: {self.problem or 'not loaded'}")
        return self.holder.engine

    def _classifier(self, engine: Engine) -> Any:
        """The bundle's learned defect types, once per engine; a broken one leaves typing to the shape rules."""
        from linesight.export.type_classifier import TypeClassifier

        if self._types is None or self._types[0] is not engine:
            try:
                clf = TypeClassifier.from_bundle(engine.bundle)
            except LinesightError as exc:
                log.error("inspect: learned defect types disabled: %s", exc)
                clf = None
            self._types = (engine, clf)
        return self._types[1]

    def inspect(self, upload: Upload, *, part_id: str | None = None, overlay: bool = False) -> InspectAnswer:
        """Decide one uploaded image. DataError: the bytes are no usable image; Unavailable: no model or busy."""
        host_ts = time.time_ns()
        image = decode_upload(upload, self.cfg.max_frame_pixels)
        with self._count_lock:
            if self._inside > self.cfg.max_waiting:
                raise Unavailable(f"inspect is busy ({self._inside} requests ahead); retry shortly")
            self._inside += 1
        try:
            with self._lock:
                return self._decide(upload, image, host_ts, part_id, overlay)
        finally:
            with self._count_lock:
                self._inside -= 1

    def _decide(self, upload: Upload, image: np.ndarray, host_ts: int, part_id: str | None,
                overlay: bool) -> InspectAnswer:
        from linesight.export import analysis as A

        engine = self._engine()
        seq = self.seqs.next()
        frame = Frame(image=image, seq=seq, host_ts_ns=host_ts, source=SOURCE, name=upload.name)
        common = dict(seq=seq, run=self.seqs.run, part_id=part_id or f"{seq:08d}", station=self.cfg.station,
                      deadline_ms=self.cfg.deadline_ms)
        classifier = self._classifier(engine)
        t0 = time.perf_counter()
        try:
            pred = engine.predict_batch([image], regions=False, keep_features=classifier is not None)[0]
        except Exception as exc:  # the engine failed on a valid image: the fail-safe verdict, as on a station
            log.exception("inspect: inference failed", extra={"seq": seq})
            failure = V.Failure(V.FailSafe.INFERENCE_ERROR, f"{type(exc).__name__}: {exc}")
            verdict = V.build(frame, model=dict(engine.identity), failure=failure, **common)
            return InspectAnswer(verdict=verdict.to_dict(), analysis=None, overlay_png=None)
        ms = (time.perf_counter() - t0) * 1e3
        found, header, regions = None, None, pred.regions
        if pred.verdict == "NG":
            try:
                a = A.analyze(pred, engine.pixel_threshold, image, spec=self.spec, kb=self.kb,
                              evidence=pred.nearest, classifier=classifier)
                found = V.VerdictAnalysis.model_validate({**A.to_verdict_dict(a), "verdict": a.decision.verdict})
                header, regions = A.to_header_dict(a), a.regions
            except Exception:  # analysis must not cost the verdict: the score verdict stands, as on a station
                log.exception("inspect: defect analysis failed", extra={"seq": seq})
        failure = None
        if pred.failure_code is not None:
            failure = V.Failure(V.FailSafe(pred.failure_code), pred.failure)
        elif time.time_ns() > host_ts + self.cfg.deadline_ms * 1e6:
            failure = V.Failure(V.FailSafe.DEADLINE_MISSED,
                                f"decided after the {self.cfg.deadline_ms:g} ms deadline (inspect.deadline_ms)")
        verdict = V.build(frame, model=pred.model, prediction=pred, failure=failure, inference_ms=ms,
                          analysis=None if failure is not None else found, **common)
        picture = None
        if overlay:
            from linesight.export.overlay import inspection_image

            shown = verdict.verdict if failure is None else f"{verdict.verdict} ({failure.code})"
            view = inspection_image(image, pred.anomaly_map, engine.pixel_threshold, score=pred.score,
                                    threshold=pred.threshold, verdict=shown, regions=regions)
            picture = base64.b64encode(encode_image(view, "png")).decode("ascii")
        return InspectAnswer(verdict=verdict.to_dict(), analysis=None if failure is not None else header,
                             overlay_png=picture)
