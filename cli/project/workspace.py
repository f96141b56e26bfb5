"""An inspection project on disk: its layout, metadata and history, its versions, which one is active.

Torch-free: a station running a project (`model: {project: DIR}`) reads its active version through this module.
Every JSON file is written whole to a temporary name and renamed, so a reader never sees half a file.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel

from linesight.config.loader import load_model
from linesight.config.project import DataIndex, HistoryEntry, ProjectMetadata, TrainConfig, VersionInfo
from linesight.errors import ConfigError, DataError

METADATA = "metadata.json"
TRAIN_CONFIG = "train_config.json"
TRAIN_DATA = "train_data"
MODELS = "models"
DETECT_RESULTS = "detect_results"
FEEDBACK = "feedback"
VERSION_FILE = "version.json"
BUNDLE_DIR = "bundle"
REPORT_DIR = "report"
BUILD_MARKER = ".linesight-build"  # in models/.building-vN only while linesight builds it
#: The folders of a new project (an import recreates the empty ones a zip cannot hold).
LAYOUT = (TRAIN_DATA, f"{TRAIN_DATA}/images", f"{TRAIN_DATA}/masks", MODELS, DETECT_RESULTS, FEEDBACK)
_VERSION_DIR = re.compile(r"^v([1-9][0-9]{0,5})$")
M = TypeVar("M", bound=BaseModel)


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def write_json(path: Path, model: BaseModel) -> None:
    """Whole-file write: a temporary file in the same folder, then rename (atomic on one file system)."""
    text = json.dumps(model.model_dump(mode="json", by_alias=True), indent=2) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class Project:
    """A project folder (docs/project.md). Open one with `Project.open`, make one with `Project.init`."""

    root: Path

    # ------------------------------------------------------------------ files
    @property
    def data_dir(self) -> Path:
        return self.root / TRAIN_DATA

    @property
    def models_dir(self) -> Path:
        return self.root / MODELS

    @property
    def results_dir(self) -> Path:
        return self.root / DETECT_RESULTS

    @property
    def feedback_dir(self) -> Path:
        return self.root / FEEDBACK

    @classmethod
    def init(cls, root: str | Path, name: str | None = None, description: str = "") -> Project:
        """Create the layout in a new or empty folder; anything else is refused (nothing is overwritten)."""
        root = Path(root)
        if root.exists() and not root.is_dir():
            raise DataError(f"project init: {root} is a file; choose a new folder")
        if root.is_dir() and any(root.iterdir()):
            what = "a linesight project" if (root / METADATA).is_file() else "files"
            raise DataError(f"project init: {root} already holds {what}; choose a new or empty folder "
                            "(nothing was changed)")
        stamp = now()
        meta = ProjectMetadata(name=name or root.resolve().name, description=description, created=stamp,
                               modified=stamp, history=[HistoryEntry(time=stamp, action="init",
                                                                     detail=f"project {name or root.name!r}")])
        try:
            for sub in LAYOUT:
                (root / sub).mkdir(parents=True, exist_ok=True)
            write_json(root / TRAIN_CONFIG, TrainConfig())
            write_json(root / TRAIN_DATA / "index.json", DataIndex())
            write_json(root / METADATA, meta)  # last: a folder with metadata.json is a complete project
        except OSError as exc:
            raise DataError(f"project init: cannot create {root}: {exc.strerror or exc}") from exc
        return cls(root)

    @classmethod
    def open(cls, root: str | Path) -> Project:
        root = Path(root)
        if not (root / METADATA).is_file():
            raise DataError(f"{root} is not a linesight project (no {METADATA}); create one with "
                            f"`linesight project init {root}`")
        project = cls(root)
        project.metadata()  # validated now: a damaged metadata.json is reported before any work
        return project

    def _load(self, path: Path, model: type[M]) -> M:
        if not path.is_file():
            raise DataError(f"project {self.root}: {path.relative_to(self.root)} is missing")
        return load_model(path, model)  # file:line errors

    def metadata(self) -> ProjectMetadata:
        return self._load(self.root / METADATA, ProjectMetadata)

    def train_config(self) -> TrainConfig:
        return self._load(self.root / TRAIN_CONFIG, TrainConfig)

    def data_index(self) -> DataIndex:
        return self._load(self.data_dir / "index.json", DataIndex)

    def save_data_index(self, index: DataIndex) -> None:
        write_json(self.data_dir / "index.json", index)

    def record(self, action: str, detail: str, *, active: int | None = None, rollback: bool = False) -> None:
        """Append to the history (and change the active version when given): one metadata write."""
        meta = self.metadata()
        stamp = now()
        meta.modified = stamp
        meta.history.append(HistoryEntry(time=stamp, action=action, detail=detail))
        if active is not None:
            meta.active = active
            if rollback:
                meta.activations.pop()
            else:
                meta.activations.append(active)
        write_json(self.root / METADATA, meta)

    # ------------------------------------------------------------------ versions
    def version_numbers(self) -> list[int]:
        if not self.models_dir.is_dir():
            return []
        found = (_VERSION_DIR.match(p.name) for p in self.models_dir.iterdir() if p.is_dir())
        return sorted(int(m.group(1)) for m in found if m)

    def version_dir(self, n: int) -> Path:
        d = self.models_dir / f"v{n}"
        if not (d / VERSION_FILE).is_file():
            have = ", ".join(f"v{v}" for v in self.version_numbers()) or "none yet (run `linesight project fit`)"
            raise DataError(f"project {self.root} has no version v{n}; versions: {have}")
        return d

    def version(self, n: int) -> VersionInfo:
        return self._load(self.version_dir(n) / VERSION_FILE, VersionInfo)

    def versions(self) -> list[VersionInfo]:
        return [self.version(n) for n in self.version_numbers()]

    def bundle_path(self, n: int) -> Path:
        return self.version_dir(n) / BUNDLE_DIR

    def active_bundle(self) -> Path:
        """The bundle a station running this project loads."""
        active = self.metadata().active
        if active is None:
            raise ConfigError(f"project {self.root} has no active version; run `linesight project fit` and "
                              "`linesight project activate vN`")
        return self.bundle_path(active)

    def new_version(self) -> tuple[int, Path]:
        """Claim the next version number with a build folder; `commit_version` makes it visible."""
        self.models_dir.mkdir(parents=True, exist_ok=True)
        n = max(self.version_numbers(), default=0) + 1
        build = self.models_dir / f".building-v{n}"
        if build.exists():  # an interrupted build of the same number: removed only when it carries our marker
            if not (build / BUILD_MARKER).is_file():
                raise DataError(f"project {self.root}: {build} exists and is not a linesight build; move it away")
            shutil.rmtree(build)
        build.mkdir()
        (build / BUILD_MARKER).touch()
        return n, build

    def commit_version(self, n: int, build: Path, info: VersionInfo) -> Path:
        write_json(build / VERSION_FILE, info)
        (build / BUILD_MARKER).unlink()
        final = self.models_dir / f"v{n}"
        try:
            build.rename(final)  # refused if v<n> appeared meanwhile (two fits at once): nothing overwritten
        except OSError as exc:
            raise DataError(f"project {self.root}: cannot create {final.name} ({exc.strerror}); was another "
                            f"fit running? The build is kept in {build}") from exc
        self.record(info.how, f"v{n}: {info.backbone}, threshold {info.image_threshold:.6g}")
        return final

    def activate(self, n: int) -> VersionInfo:
        info = self.version(n)
        from linesight.export.bundle import load_bundle

        load_bundle(self.bundle_path(n))  # a damaged version is refused here, not by the station
        self.record("activate", f"v{n}", active=n)
        return info

    def rollback(self) -> int:
        """Activate the version that was active before the current one."""
        meta = self.metadata()
        if len(meta.activations) < 2:
            raise DataError(f"project {self.root}: nothing to roll back to (activated: "
                            f"{', '.join(f'v{v}' for v in meta.activations) or 'none'})")
        back = meta.activations[-2]
        self.version_dir(back)
        self.record("rollback", f"v{meta.activations[-1]} -> v{back}", active=back, rollback=True)
        return back


def _flat(prefix: str, value) -> dict[str, object]:
    if isinstance(value, dict):
        out: dict[str, object] = {}
        for k, v in value.items():
            out |= _flat(f"{prefix}.{k}" if prefix else str(k), v)
        return out
    return {prefix: value}


def version_diff(project: Project, a: int, b: int) -> list[tuple[str, object, object]]:
    """(field, in vA, in vB) for every field that differs: config (full fit config), thresholds, plan, metrics."""
    va, vb = project.version(a), project.version(b)

    def view(v) -> dict[str, object]:
        d = v.model_dump(mode="json", exclude={"version", "created", "schema_", "train_config"})
        d["fit"] = v.train_config.fit_config().model_dump(mode="json")
        d["calibration"] = v.train_config.calibration.model_dump(mode="json")
        d["preset"], d["test_fraction"] = v.train_config.preset, v.train_config.test_fraction
        return _flat("", d)

    fa, fb = view(va), view(vb)
    return [(k, fa.get(k), fb.get(k)) for k in sorted(fa.keys() | fb.keys()) if fa.get(k) != fb.get(k)]
