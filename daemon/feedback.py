"""Operator feedback on the line: which verdict it answers, and where it is kept.

The daemon remembers the last RECENT verdicts (O(1) per frame, bounded), so `cmd/feedback {"seq": N, ...}` is
recorded with the verdict's identity, model, score and archived image — or refused when N is not a verdict
this station gave lately (or of another run, when `run` is given). Records go to the project's feedback log
(`model.project`), else to the archive's; `source` says whether it came over MQTT or from the web UI.
"""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from linesight.daemon.commands import Feedback
from linesight.project.feedback import append, new_record
from linesight.project.workspace import Project

log = logging.getLogger(__name__)

#: Verdicts remembered for feedback: hours of a busy line at a few hundred bytes each.
RECENT = 50_000


@dataclass(frozen=True)
class VerdictRef:
    run: int
    part_id: str
    verdict: str
    score: float | None
    model_hash: str | None
    host_ts: str


class RecentVerdicts:
    """seq -> VerdictRef of the last `size` published verdicts (the publish thread notes, commands read)."""

    def __init__(self, size: int = RECENT) -> None:
        self._size = size
        self._refs: OrderedDict[int, VerdictRef] = OrderedDict()
        self._lock = threading.Lock()

    def note(self, verdict: dict[str, Any]) -> None:
        model = verdict.get("model") or {}
        ref = VerdictRef(run=verdict["run"], part_id=verdict["part_id"], verdict=verdict["verdict"],
                         score=verdict.get("score"), model_hash=model.get("hash"), host_ts=verdict["host_ts"])
        with self._lock:
            self._refs[verdict["seq"]] = ref
            if len(self._refs) > self._size:
                self._refs.popitem(last=False)

    def get(self, seq: int) -> VerdictRef | None:
        with self._lock:
            return self._refs.get(seq)

    def span(self) -> str:
        with self._lock:
            return f"{next(iter(self._refs))}..{next(reversed(self._refs))}" if self._refs else "none yet"



class FeedbackDesk:
    """cmd/feedback on a station: checks the seq against the recent verdicts, records the answer where the
    station keeps feedback (the project's feedback/, else the archive folder, else only the log)."""

    def __init__(self, station: str, project: Path | None, archive_dir: Path | None) -> None:
        self.station, self.project, self.archive_dir = station, project, archive_dir
        self.recent = RecentVerdicts()

    def answer(self, cmd: Feedback, image_of: Callable[[int], Path | None]) -> dict:
        ref = self.recent.get(cmd.seq)
        if ref is None:
            raise ValueError(f"seq {cmd.seq} is not a verdict this station gave lately (remembered: seqs "
                             f"{self.recent.span()})")
        if cmd.part_id is not None and cmd.part_id != ref.part_id:
            raise ValueError(f"seq {cmd.seq} was part {ref.part_id!r}, not {cmd.part_id!r}")
        if cmd.run is not None and cmd.run != ref.run:
            raise ValueError(f"seq {cmd.seq} is of run {ref.run} here, not of run {cmd.run} (the station restarted "
                             "since): give that feedback with `linesight project feedback` and the image")
        image = image_of(cmd.seq)
        version = None
        if self.project is not None:  # which project version gave the verdict
            version = next((v.version for v in Project(self.project).versions() if v.bundle_hash == ref.model_hash),
                           None)
        rec = new_record(label=cmd.label, source=cmd.source, by=cmd.by, note=cmd.note, station=self.station,
                         run=ref.run, seq=cmd.seq, part_id=ref.part_id, model_hash=ref.model_hash, version=version,
                         verdict=ref.verdict, score=ref.score, image=None if image is None else str(image))
        log.info("operator feedback", extra={"feedback": rec.model_dump(exclude_none=True)})
        folder = Project(self.project).feedback_dir if self.project is not None else self.archive_dir
        if folder is None:
            return {"recorded": False, "why": "no project and no archive configured: feedback is only logged"}
        append(folder, rec)
        return {"recorded": True, "id": rec.id, "image": image is not None}
