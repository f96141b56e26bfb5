"""Schemas of an inspection project's files: metadata.json, train_config.json, train_data/index.json and each
version's version.json (docs/project.md), and a project export's manifest. A file of another schema version is
refused, not guessed at."""
from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator

from linesight.config.base import Strict
from linesight.config.fit import FitConfig, preset
from linesight.config.manifest import CalibrationTarget
from linesight.errors import validation_problems

PROJECT_SCHEMA = "linesight.project/1"
DATA_SCHEMA = "linesight.project-data/1"
VERSION_SCHEMA = "linesight.project-version/1"
EXPORT_SCHEMA = "linesight.project-export/1"
GOOD = "good"
#: A label is "good" or a defect type: a short lowercase name that is also a safe folder name.
LABEL = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
PRESETS = ("fast", "balanced", "accurate")


class HistoryEntry(Strict):
    time: str = Field(description="UTC ISO-8601")
    action: Literal["init", "add", "fit", "activate", "rollback", "import", "learn", "tune"]
    detail: str


class ProjectMetadata(Strict):
    schema_: Literal["linesight.project/1"] = Field(PROJECT_SCHEMA, alias="schema")
    name: str = Field(min_length=1, max_length=200)
    description: str = Field("", max_length=4000)
    created: str
    modified: str
    active: int | None = Field(None, ge=1, description="The version a station running this project inspects with")
    activations: list[int] = Field(default_factory=list, description="Versions activated, oldest first: "
                                   "`project rollback` goes back one")
    history: list[HistoryEntry] = Field(default_factory=list)


def check_label(label: str) -> str:
    if not LABEL.match(label):
        raise ValueError(f"label {label!r}: use 'good' or a defect type of lowercase letters, digits, '_' or '-' "
                         "(at most 64, e.g. crack)")
    return label


def check_feedback_label(label: str) -> str:
    """What a part really was: OK, NG, or a defect type (a label)."""
    return label if label in ("OK", "NG") else check_label(label)


class FeedbackRecord(Strict):
    """What an operator or engineer said a part really was, with the verdict it answers (one line of
    feedback/feedback.jsonl). `project learn` turns these into a new version."""

    id: str = Field(pattern=r"^[0-9a-f]{32}$")
    time: str
    label: str = Field(description="OK, NG, or the defect type it showed")
    source: Literal["mqtt", "cli", "ui"]
    by: str | None = Field(None, max_length=200, description="Who gave it")
    station: str | None = None
    run: int | None = None
    seq: int | None = None
    part_id: str | None = None
    model_hash: str | None = Field(None, description="The bundle hash the verdict carried")
    version: int | None = Field(None, description="The project version that gave the verdict")
    verdict: Literal["OK", "NG"] | None = None
    score: float | None = None
    image: str | None = Field(None, description="The inspected frame: an archived record's image or a file")
    note: str | None = Field(None, max_length=1000)

    @field_validator("label")
    @classmethod
    def _label_ok(cls, v: str) -> str:
        return check_feedback_label(v)


class ImageEntry(Strict):
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    file: str = Field(description="Path under train_data/, e.g. images/<sha256>.png")
    label: str
    mask: str | None = Field(None, description="Path under train_data/ of the defect mask (white = defect)")
    name: str = Field(description="The file name it was added from (for people; never used as a path)")
    added: str
    origin: Literal["add", "feedback"] = Field("add", description="feedback: learned from; never a test image")

    @field_validator("label")
    @classmethod
    def _label_ok(cls, v: str) -> str:
        return check_label(v)


class DataIndex(Strict):
    schema_: Literal["linesight.project-data/1"] = Field(DATA_SCHEMA, alias="schema")
    images: list[ImageEntry] = Field(default_factory=list)


class TrainConfig(Strict):
    """train_config.json: what `project fit` trains with. `fit` holds FitConfig fields over the preset (the same
    sections as `linesight fit --config FIT.yaml`)."""

    preset: Literal["fast", "balanced", "accurate"] = "fast"
    fit: dict[str, Any] = Field(default_factory=dict, description="FitConfig fields over the preset")
    calibration: CalibrationTarget = Field(default_factory=CalibrationTarget)
    test_fraction: float = Field(0.25, ge=0.0, lt=0.9, description="Good images held out of training for "
                                 "calibration and evaluation (chosen by content hash, the same on every fit)")

    @field_validator("fit")
    @classmethod
    def _fit_fields_exist(cls, fit: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        try:  # an unknown or invalid fit field is an error in this file, not at fit time
            preset(info.data.get("preset", "fast"), **fit)
        except ValidationError as exc:
            raise ValueError(validation_problems(exc, "fit", "fit")) from None
        return fit

    def fit_config(self) -> FitConfig:
        """The FitConfig this file describes."""
        return preset(self.preset, **self.fit)


class VersionMetrics(Strict):
    """What the version achieved on the project's held-out labeled images (None: no such images)."""

    image_auroc: float | None = None
    pixel_auroc: float | None = None
    false_reject_rate: float | None = None
    escape_rate: float | None = None
    n_good: int = 0
    n_defective: int = 0


class VersionInfo(Strict):
    schema_: Literal["linesight.project-version/1"] = Field(VERSION_SCHEMA, alias="schema")
    version: int = Field(ge=1)
    created: str
    how: Literal["fit", "learn", "tune", "import"] = "fit"
    parent: int | None = Field(None, description="The version this one was derived from (learn, tune)")
    bundle_hash: str = Field(description="The bundle's content hash, as verdicts carry it")
    backbone: str
    train_config: TrainConfig
    data_fingerprint: str = Field(description="sha256 over the images (and labels) this version saw")
    n_train: int
    image_threshold: float
    pixel_threshold: float
    policy: str
    plan: list[str] = Field(default_factory=list)
    metrics: VersionMetrics = Field(default_factory=VersionMetrics)
    seconds: float = 0.0
    learned_feedback: list[str] = Field(default_factory=list, description="Feedback record ids this version "
                                        "learned (learn versions)")


class ExportedFile(Strict):
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)


class ExportManifest(Strict):
    """linesight-project-export.json, the first member of a `project export` zip: what the zip must hold, byte
    for byte, so an import can refuse anything added, missing or changed."""

    schema_: Literal["linesight.project-export/1"] = Field(EXPORT_SCHEMA, alias="schema")
    project: str = Field(min_length=1, max_length=200, description="The project's name when it was exported")
    created: str = Field(description="UTC ISO-8601")
    linesight: str = Field(description="The linesight version that wrote the export")
    files: dict[str, ExportedFile] = Field(description="Every other member: relative POSIX path -> hash and size")
