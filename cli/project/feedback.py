"""A project's feedback: what people said parts really were, one JSON line each in feedback/feedback.jsonl.

Appended, never rewritten (a station and an engineer may add at the same time: one write per record); which
records a version learned is kept in that version's version.json, so the log itself stays as given.
"""
from __future__ import annotations

import json
import logging
import os
import uuid
from pathlib import Path

from pydantic import ValidationError

from linesight.config.project import FeedbackRecord
from linesight.errors import DataError, validation_problems
from linesight.project.workspace import Project, now

log = logging.getLogger(__name__)

FEEDBACK_FILE = "feedback.jsonl"


def new_record(**fields) -> FeedbackRecord:
    """A record with a fresh id and the current time; `fields` as FeedbackRecord names them."""
    try:
        return FeedbackRecord(id=uuid.uuid4().hex, time=now(), **fields)
    except ValidationError as exc:
        raise DataError(f"feedback: {validation_problems(exc, 'record')}") from None


def append(project_feedback_dir: Path, record: FeedbackRecord) -> None:
    """One O_APPEND write per record, so concurrent writers never interleave inside a line."""
    project_feedback_dir.mkdir(parents=True, exist_ok=True)
    line = (record.model_dump_json(exclude_none=True) + "\n").encode()
    fd = os.open(project_feedback_dir / FEEDBACK_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def read_all(project: Project) -> list[FeedbackRecord]:
    """Every record; a damaged line is reported with its line number and left out (the rest still count)."""
    path = project.feedback_dir / FEEDBACK_FILE
    if not path.is_file():
        return []
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(FeedbackRecord.model_validate(json.loads(line)))
        except (json.JSONDecodeError, ValidationError) as exc:
            why = validation_problems(exc, "record") if isinstance(exc, ValidationError) else str(exc)
            log.warning("%s:%d: left out: %s", path, n, why)
    return out


def pending(project: Project) -> list[FeedbackRecord]:
    """Records no version has learned yet."""
    learned = {i for v in project.versions() for i in v.learned_feedback}
    return [r for r in read_all(project) if r.id not in learned]


def image_of(project: Project, record: FeedbackRecord) -> Path:
    """The file a record's image names (absolute, or relative to the project); DataError when it is gone."""
    if record.image is None:
        raise DataError(f"feedback {record.id}: no image (the frame was not archived)")
    path = Path(record.image)
    path = path if path.is_absolute() else project.root / path
    if not path.is_file():
        raise DataError(f"feedback {record.id}: image {path} does not exist (archive pruned?)")
    return path
