"""The running model: load, verify on golden images, swap atomically between frames, roll back."""
from __future__ import annotations

import logging
import threading
from pathlib import Path

from linesight.errors import LinesightError
from linesight.export.engine import Engine
from linesight.project.workspace import Project

log = logging.getLogger(__name__)


class ModelRefused(LinesightError):
    """A bundle failed to load or to reproduce its golden scores; the previous model keeps running."""


def _stamp(path: Path) -> tuple[str, float, int] | None:
    """Change detector for a .zip or a bundle folder (a folder is replaced atomically by write_bundle); the path
    is part of it, so a project activating another version is a change."""
    try:
        target = path / "manifest.json" if path.is_dir() else path
        st = target.stat()
        return str(path), st.st_mtime, st.st_size
    except OSError:
        return None


class ModelHolder:
    """`engine` is read by the processing loop once per frame; a swap is a single reference assignment."""

    def __init__(self, path: Path | None, *, project: Path | None = None, threads: int | None = None,
                 golden_tolerance: float = 1e-3, min_defect_px: float | None = None):
        self.project = project
        self.path = Path(path) if path is not None else Path(project or ".")  # a project's: set by the first load
        self.min_defect_px = min_defect_px
        self.threads = threads
        self.golden_tolerance = golden_tolerance
        self.engine: Engine | None = None
        self.previous: Engine | None = None
        self._stamp = None
        self._lock = threading.Lock()  # one load at a time

    def load(self, path: Path | None = None, *, only_if_new: bool = False) -> Engine | None:
        """Load and verify a bundle, then make it current. Raises ModelRefused; the old model stays.
        only_if_new (the file watcher): the same content rewritten or touched is no model change -> None."""
        path = Path(path) if path else self.target()
        with self._lock:
            stamp = _stamp(path)
            try:
                engine = Engine(path, threads=self.threads)
            except LinesightError as exc:
                raise ModelRefused(f"bundle {path} refused: {exc}") from exc
            except Exception as exc:  # never let a load failure end the reload thread or the start-up
                log.exception("unexpected error loading bundle %s", path)
                raise ModelRefused(f"bundle {path} refused: {type(exc).__name__}: {exc}") from exc
            if only_if_new and self.engine is not None and engine.bundle.digest == self.engine.bundle.digest:
                self._stamp = stamp
                log.debug("bundle %s rewritten with the active content; nothing to reload", path)
                return None
            if self.min_defect_px is not None and engine.smallest_defect_px() > self.min_defect_px * 1.001:
                raise ModelRefused(f"bundle {path} refused: its finest scale sees defects from "
                                   f"{engine.smallest_defect_px():.0f} px, the station needs "
                                   f"{self.min_defect_px:g} px (model.min_defect_px); fit with --defect-size")
            problems = engine.check_golden(self.golden_tolerance)
            if problems:
                raise ModelRefused(f"bundle {path} refused: golden images do not reproduce: {'; '.join(problems)}")
            self.previous, self.engine = self.engine, engine
            self.path, self._stamp = path, stamp
            log.info("model %s active (provider %s)", engine.bundle.label, engine.provider,
                     extra={"model_id": engine.manifest.model.id, "model_version": engine.manifest.model.version})
            return engine

    def rollback(self) -> Engine:
        with self._lock:
            if self.previous is None:
                raise ModelRefused("no previous model to roll back to")
            self.engine, self.previous = self.previous, self.engine
            log.warning("rolled back to model %s", self.engine.bundle.label)
            return self.engine

    def target(self) -> Path:
        """The bundle to load: the configured one, or the project's active version as metadata.json says now."""
        if self.project is None:
            return self.path
        try:
            return Project.open(self.project).active_bundle()
        except LinesightError as exc:
            raise ModelRefused(str(exc)) from exc

    def changed(self) -> bool:
        """True when the bundle on disk differs from what was last loaded (or last refused)."""
        try:
            stamp = _stamp(self.target())
        except ModelRefused as exc:  # a project mid-edit or without an active version: keep what runs
            log.debug("model source unreadable: %s", exc)
            return False
        if stamp is None or stamp == self._stamp:
            return False
        self._stamp = stamp  # refuse a bad bundle once, not on every poll
        return True

    @property
    def info(self) -> dict | None:
        if self.engine is None:
            return None
        return dict(self.engine.identity)
