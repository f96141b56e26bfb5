"""`project fit`: train the next version from the project's images and train config, with the same trainer verbs
(fit, calibrate, evaluate) a user runs by hand, on an MVTec-layout view of the project's data.

Good images are split into training and held-out test by content hash, so every fit of the same data holds out
the same images; all defect images are test images (they calibrate and evaluate, never train).
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import time
from pathlib import Path

from linesight.config.manifest import CalibrationTarget
from linesight.config.project import GOOD, DataIndex, ImageEntry, TrainConfig, VersionInfo, VersionMetrics
from linesight.errors import DataError
from linesight.project.workspace import BUNDLE_DIR, REPORT_DIR, Project, now

log = logging.getLogger(__name__)


def held_out(entry: ImageEntry, fraction: float) -> bool:
    """Deterministic by content: the same image is always on the same side. A good image learned from feedback
    is never a test image (the model has seen it)."""
    return entry.origin == "add" and int(entry.sha256[:8], 16) / 2**32 < fraction


def data_fingerprint(index: DataIndex) -> str:
    """sha256 over every image's hash, label and mask: which data a version saw."""
    lines = sorted(f"{e.sha256} {e.label} {e.mask or '-'}" for e in index.images)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _place(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)  # no copy of the data where the file system allows it
    except OSError:
        shutil.copyfile(src, dst)


def build_view(project: Project, index: DataIndex, fraction: float, view: Path) -> tuple[int, int, int]:
    """MVTec layout under `view` (train/good, test/<label>, ground_truth/<label>): (train, test good, defects)."""
    counts = [0, 0, 0]
    for e in index.images:
        src = project.data_dir / e.file
        name = Path(e.file).name
        if e.label != GOOD:
            _place(src, view / "test" / e.label / name)
            if e.mask:
                _place(project.data_dir / e.mask, view / "ground_truth" / e.label / f"{e.sha256}_mask.png")
            counts[2] += 1
        elif held_out(e, fraction):
            _place(src, view / "test" / GOOD / name)
            counts[1] += 1
        else:
            _place(src, view / "train" / GOOD / name)
            counts[0] += 1
    return counts[0], counts[1], counts[2]


def _model_id(project: Project) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", project.metadata().name).strip("-")[:64] or "project"


def fit_version(project: Project, config: TrainConfig | None = None) -> VersionInfo:
    """Train, calibrate (when the project has defect images) and evaluate the next version; returns its info.
    Nothing of an earlier version is touched; a failed fit leaves no version behind."""
    from linesight.trainer.fit import fit

    t0 = time.monotonic()
    tc = config or project.train_config()
    index = project.data_index()
    fit_fields = {"model_id": _model_id(project)} | tc.fit
    cfg = TrainConfig(preset=tc.preset, fit=fit_fields, calibration=tc.calibration,
                      test_fraction=tc.test_fraction)
    n, build = project.new_version()
    view = build / ".data"
    try:
        n_train, n_good, n_bad = build_view(project, index, tc.test_fraction, view)
        if n_train < 3:
            raise DataError(f"project {project.root}: need at least 3 good training images, have {n_train} "
                            f"(+{n_good} held out for testing); add some with `linesight project add DIR`")
        log.info("project %s: fitting v%d on %d good images (%d good + %d defective held out)", project.root, n,
                 n_train, n_good, n_bad)
        fit(view, build / BUNDLE_DIR, cfg.fit_config())
        if not (n_bad and n_good):
            log.warning("project %s: no %s; v%d keeps the fit's threshold from held-out good images and has no "
                        "measured rates", project.root, "defect images" if n_good else "held-out good images", n)
        info = _finish(project, n, build, view, cfg, n_train, (n_good, n_bad), t0, "fit", None)
        return info
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)  # ours (dot-named build folder): no half version stays
        raise


def tune_version(project: Project, parent: int, target: CalibrationTarget) -> VersionInfo:
    """The next version: vN's model with thresholds calibrated to other targets on the project's held-out labeled
    images, then evaluated. No training; the bank and features are vN's. Refused (ThresholdRefused) when no
    threshold meets the targets."""
    t0 = time.monotonic()
    pinfo = project.version(parent)
    index = project.data_index()
    cfg = pinfo.train_config.model_copy(update={"calibration": target})
    n, build = project.new_version()
    view = build / ".data"
    try:
        _, n_good, n_bad = build_view(project, index, cfg.test_fraction, view)
        if not (n_good and n_bad):
            raise DataError(f"project {project.root}: tuning needs held-out good images and defect images; have "
                            f"{n_good} good and {n_bad} defective (add defects with `project add --label TYPE`)")
        shutil.copytree(project.bundle_path(parent), build / BUNDLE_DIR)
        return _finish(project, n, build, view, cfg, pinfo.n_train, (n_good, n_bad), t0, "tune", parent)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise


def _finish(project: Project, n: int, build: Path, view: Path, cfg: TrainConfig, n_train: int,
            held_out: tuple[int, int], t0: float, how: str, parent: int | None) -> VersionInfo:
    """Calibrate the built bundle to `cfg`'s targets and evaluate it (when there are labeled images both ways), then
    commit it as version n: what a fit and a tune share."""
    from linesight.export.bundle import load_bundle
    from linesight.trainer.evaluate import calibrate, evaluate

    n_good, n_bad = held_out
    metrics = VersionMetrics(n_good=n_good, n_defective=n_bad)
    if n_bad and n_good:
        calibrate(build / BUNDLE_DIR, view, cfg.calibration)
        m = evaluate(build / BUNDLE_DIR, view, build / REPORT_DIR)
        point = m["operating_points"][0]
        metrics = VersionMetrics(image_auroc=m.get("image_auroc"), pixel_auroc=m.get("pixel_auroc"),
                                 false_reject_rate=point["false_reject_rate"], escape_rate=point["escape_rate"],
                                 n_good=n_good, n_defective=n_bad)
    final = load_bundle(build / BUNDLE_DIR)
    t = final.manifest.thresholds
    info = VersionInfo(version=n, created=now(), how=how, parent=parent, bundle_hash=final.digest[:16],
                       backbone=final.manifest.backbone.name, train_config=cfg,
                       data_fingerprint=data_fingerprint(project.data_index()), n_train=n_train,
                       image_threshold=t.image, pixel_threshold=t.pixel, policy=t.policy,
                       plan=final.manifest.plan.reasoning if final.manifest.plan else [],
                       metrics=metrics, seconds=round(time.monotonic() - t0, 1))
    shutil.rmtree(view)
    project.commit_version(n, build, info)
    return info


def evaluate_version(project: Project, n: int) -> dict:
    """Evaluate vN on the project's held-out images as they are now (more may have been added since its fit);
    the report goes to models/vN/evaluations/<time>/, the version itself is not changed."""
    from linesight.trainer.evaluate import evaluate

    info = project.version(n)
    index = project.data_index()
    stamp = now().replace(":", "").replace("+0000", "Z")
    out = project.version_dir(n) / "evaluations" / stamp
    view = out / ".data"
    try:
        _, n_good, n_bad = build_view(project, index, info.train_config.test_fraction, view)
        if not (n_good and n_bad):
            raise DataError(f"project {project.root}: evaluation needs held-out good images and defect images; "
                            f"have {n_good} good and {n_bad} defective (add defects with `project add --label TYPE`)")
        m = evaluate(project.bundle_path(n), view, out)
    finally:
        shutil.rmtree(view, ignore_errors=True)
    point = m["operating_points"][0]
    return {"version": f"v{n}", "report": str(out / "report.html"), "image_auroc": m.get("image_auroc"),
            "false_reject_rate": point["false_reject_rate"], "escape_rate": point["escape_rate"],
            "good": n_good, "defective": n_bad, "data_fingerprint": data_fingerprint(index),
            "same_data_as_fit": data_fingerprint(index) == info.data_fingerprint}
