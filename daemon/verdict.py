"""Verdict messages (schema linesight.verdict/1): one per triggered frame, decided or fail-safe."""
from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any

from linesight.daemon.sources.base import Frame
from linesight.export.engine import Prediction

SCHEMA = "linesight.verdict/1"
FAIL_SAFE_REASONS = ("deadline_missed", "frame_dropped", "inference_error", "no_model", "camera_error", "bad_frame",
                     "alignment_failed")


def iso(ts_ns: int) -> str:
    return datetime.fromtimestamp(ts_ns / 1e9, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def build(frame: Frame, *, seq: int, run: int, part_id: str, station: str, model: dict | None, deadline_ms: float,
          prediction: Prediction | None = None, fail_safe: str | None = None, fail_safe_verdict: str = "NG",
          detail: str | None = None, inference_ms: float | None = None,
          analysis: dict[str, Any] | None = None) -> dict[str, Any]:
    """A decided verdict (prediction, no fail_safe) or a fail-safe one (reason code + detail).

    `analysis` is export.analysis.to_verdict_dict(): its decision (spec grade) replaces the bare score
    verdict and its typed, graded defects replace the raw regions; `reason` is then the spec's basis."""
    now = time.time_ns()
    v: dict[str, Any] = {
        "schema": SCHEMA, "seq": seq, "run": run, "part_id": part_id, "station": station,
        "camera": {"name": frame.source, "frame_id": frame.frame_id, "ts_ns": frame.camera_ts_ns,
                   "source_seq": frame.seq, "file": frame.name},
        "host_ts": iso(frame.host_ts_ns),
        "model": model, "deadline_ms": deadline_ms,
        "latency_ms": {"inference": None if inference_ms is None else round(inference_ms, 3),
                       "total": round((now - frame.host_ts_ns) / 1e6, 3)},
    }
    if prediction is not None:
        v.update(score=round(prediction.score, 5), threshold=round(prediction.threshold, 5),
                 defects=[r.to_dict() for r in prediction.regions])
        if prediction.frame is not None:
            v["frame"] = prediction.frame  # alignment shift/angle/quality: jitter shows up here first
    if fail_safe is not None:
        if fail_safe not in FAIL_SAFE_REASONS:
            raise ValueError(f"unknown fail-safe reason {fail_safe}")
        v.update(verdict=fail_safe_verdict, reason=fail_safe, fail_safe=True, detail=detail)
    else:
        assert prediction is not None
        v.update(verdict=prediction.verdict, fail_safe=False,
                 reason="score_above_threshold" if prediction.verdict == "NG" else "score_below_threshold")
        if analysis is not None:
            v.update(analysis)
            v["verdict"] = analysis["verdict"]
            v["reason"] = analysis["basis"]
    return v
