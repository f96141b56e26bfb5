"""`project learn`: feedback into a new version without a refit. Torch-free: features come from the version's
own ONNX graph, through the engine's frame preparation and the trainer's patch extraction (views.scan).

Good parts the model rejected add the patches its bank did not cover (greedy coreset of the new patches that
score above the held-out good median, at the version's coreset ratio). Every score moves with the bank, so the
thresholds are calibrated again to the version's targets on the project's held-out labeled images (feedback
images are never among them). Defect feedback joins that labeled set; typed defects also become learned-type
examples when the version has learned types (the region the line itself finds). The new version must pass its golden
check and may neither let more labeled defects through nor reject more held-out good parts than its parent,
else it is refused with the numbers.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from linesight.config.project import GOOD, VersionInfo, VersionMetrics
from linesight.errors import DataError, LinesightError
from linesight.export.bundle import (
    BANK_FILE,
    TRAIN_IMAGES_FILE,
    Bundle,
    bank_bytes,
    load_bundle,
    new_revision,
    write_bundle,
)
from linesight.export.engine import Engine
from linesight.export.images import read_image
from linesight.export.knn import knn_search
from linesight.project.data import add_images
from linesight.project.feedback import image_of, pending
from linesight.project.training import build_view, data_fingerprint
from linesight.project.workspace import BUNDLE_DIR, Project, now

log = logging.getLogger(__name__)
FEEDBACK_ORIGIN = "feedback"


class LearnRefused(LinesightError):
    """The learned version would be worse than its parent on the project's own labeled data."""


@dataclass
class Rates:
    false_reject: int
    good: int
    escape: int
    defective: int

    def text(self) -> str:
        return f"false reject {self.false_reject}/{self.good}, escape {self.escape}/{self.defective}"


@dataclass
class LearnResult:
    info: VersionInfo
    parent: Rates
    learned: Rates
    rows_added: list[int]  # per scale
    types_added: dict[str, int]  # learned-type examples added, per type
    skipped: list[str] = field(default_factory=list)


def _rates(engine: Engine, view: Path) -> Rates:
    """At the engine's threshold, on the view's labeled images, scored as calibrate scores them."""
    from linesight.trainer.data import open_dataset
    from linesight.trainer.evaluate import score_samples

    test = open_dataset(view).test if (view / "test").is_dir() else []
    records, _ = score_samples(engine, test)
    t = engine.manifest.thresholds.image
    good = [r.score for r in records if not r.label]
    bad = [r.score for r in records if r.label]
    return Rates(sum(s >= t for s in good), len(good), sum(s < t for s in bad), len(bad))


def _defect_patches(engine: Engine, project: Project, k: int) -> np.ndarray:
    """Scale k: the patch features inside the masks of the project's labeled defects (none when frames are
    aligned: the masks are in the unaligned frame)."""
    from linesight.export.images import read_mask
    from linesight.trainer.patches import extract

    if engine.manifest.frame.align.mode != "none":
        return np.empty((0, engine.manifest.features.embedding_dim), np.float32)
    shown = [e for e in project.data_index().images if e.label != GOOD and e.mask]
    images = [read_image(project.data_dir / e.file) for e in shown]
    masks = [read_mask(project.data_dir / e.mask, img.shape[:2]) for e, img in zip(shown, images)]
    frames, _, _ = engine.prepare(images)
    try:
        return extract(engine.features, frames, masks, engine.scales[k].info, engine.spec, engine.stride, 8)[0]
    except DataError:  # no mask covers a whole cell
        return np.empty((0, engine.manifest.features.embedding_dim), np.float32)


def _hiding(engine: Engine, k: int, candidates: np.ndarray, defects: np.ndarray) -> np.ndarray:
    """Which candidate rows would lower a labeled defect patch's score: nearer to it than its k-th bank neighbour."""
    hides = np.zeros(len(candidates), bool)
    if not len(defects) or not len(candidates):
        return hides
    scale = engine.scales[k]
    radius = knn_search(scale.index, scale.exact, defects, engine.manifest.scoring.k)[0][:, -1:]
    c2 = (candidates ** 2).sum(1)
    for s in range(0, len(defects), 256):
        g = defects[s:s + 256]
        d2 = (g ** 2).sum(1)[:, None] - 2.0 * g @ candidates.T + c2[None, :]
        hides |= (d2 < radius[s:s + 256] ** 2).any(axis=0)
    return hides


def _new_rows(engine: Engine, frames: list[np.ndarray], masks: list, k: int, ratio: float, seed: int,
              defects: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scale k: (rows to add, their (image, y, x) locations among `frames`): the new patches the bank does not
    cover yet and that would hide no labeled defect patch, thinned by the coreset at the version's ratio."""
    from linesight.trainer.coreset import greedy_coreset
    from linesight.trainer.patches import extract

    scale = engine.scales[k]
    patches, locations = extract(engine.features, frames, masks, scale.info, engine.spec, engine.stride, batch=8)
    dist, _ = knn_search(scale.index, scale.exact, patches, engine.manifest.scoring.k)
    score = dist.mean(axis=1)
    floor = scale.info.good_median if scale.info.good_median is not None else float(np.median(score))
    novel = np.nonzero(score > floor)[0]
    novel = novel[~_hiding(engine, k, patches[novel], defects)]
    n = min(len(novel), max(1, int(round(len(patches) * ratio))))
    if n == 0:
        return np.empty((0, patches.shape[1]), np.float32), np.empty((0, 3), np.int32)
    picks = novel[greedy_coreset(patches[novel], n, seed=seed)]
    return patches[picks], locations[picks]


def _grown(engine: Engine, frames: list[np.ndarray], masks: list, names: list[str], seed: int,
           what: str, project: Project) -> tuple[Bundle, list[int]]:
    """The engine's bundle with the new rows appended to every scale's bank (exact search from here on)."""
    b = engine.bundle
    m = b.manifest.model_copy(deep=True)
    extras = dict(b.extras)
    first_image = len(engine.train_images)
    added, bank0 = [], b.bank
    for k, sc in enumerate(engine.scales):
        rows, locs = _new_rows(engine, frames, masks, k, m.memory.coreset_ratio, seed,
                               _defect_patches(engine, project, k))
        locs = locs.copy()
        locs[:, 0] += first_image
        bank = np.ascontiguousarray(np.concatenate([sc.bank, rows]).astype(np.float32))
        update: dict = {"n_bank": len(bank)}
        if sc.info.index is not None and sc.info.index.kind != "flat":  # its stored graph no longer fits the bank
            update |= {"index": sc.info.index.model_copy(update={"kind": "flat", "reason": f"learn: {what}; "
                                                                 "exact search until the next fit"}),
                       "hnsw_file": None, "ivf_file": None}
            extras.pop(sc.info.hnsw_file or sc.info.ivf_file or "", None)
        if sc.info.locations_file and sc.locations is not None:
            extras[sc.info.locations_file] = bank_bytes(np.concatenate([sc.locations, locs]), np.int32)
        if sc.info.bank_file == BANK_FILE:
            bank0 = bank
        else:
            extras[sc.info.bank_file] = bank_bytes(bank)
        m.scales[k] = sc.info.model_copy(update=update)
        added.append(len(rows))
    m.memory.n_bank = len(bank0)
    if TRAIN_IMAGES_FILE in extras:
        extras[TRAIN_IMAGES_FILE] = json.dumps(engine.train_images + [f"{n} (feedback)" for n in names]).encode()
    new_revision(m, what)
    grown = Bundle(manifest=m, onnx=b.onnx, bank=bank0, golden=dict(b.golden), extras=extras)
    check = Engine(grown)
    for g in m.golden:  # the bank changed, so do the golden scores: re-recorded (and verified after calibration)
        g.score = check.predict(check.golden_image(g.file)).score
    return grown, added


@dataclass
class _Taken:
    """Pending feedback sorted for learning: record ids used, good images (bank), typed images (types)."""

    used: list[str] = field(default_factory=list)
    goods: list[tuple[Path, np.ndarray]] = field(default_factory=list)
    typed: list[tuple[Path, np.ndarray, str]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def _take(project: Project, records: list) -> _Taken:
    """Feedback images into the project's data (labeled; learned goods never test images again)."""
    t = _Taken()
    for r in records:
        try:
            path = image_of(project, r)
        except DataError as exc:
            t.skipped.append(str(exc))
            continue
        label = GOOD if r.label == "OK" else "ng" if r.label == "NG" else r.label
        rep = add_images(project, [path], label, origin=FEEDBACK_ORIGIN)
        if rep.unreadable:
            t.skipped += rep.unreadable
            continue
        t.used.append(r.id)
        if label == GOOD:
            t.goods.append((path, read_image(path)))
        elif label != "ng":
            t.typed.append((path, read_image(path), label))
    if not t.used:
        raise DataError(f"project {project.root}: {len(records)} pending feedback record(s), none with a readable "
                        f"image: {'; '.join(t.skipped[:3])}")
    index = project.data_index()
    seen = {hashlib.sha256(p.read_bytes()).hexdigest() for p, _ in t.goods}
    for e in index.images:
        if e.sha256 in seen:
            e.origin = FEEDBACK_ORIGIN
    project.save_data_index(index)
    return t


def _with_types(bundle: Bundle, typed: list[tuple[Path, np.ndarray, str]], skipped: list[str]) -> dict[str, int]:
    """Operator-typed parts join the bundle's learned-type examples (in place): each image's strongest region
    at the version's pixel threshold, seen as the line sees it (its core, export.analysis). Returns per-type counts;
    nothing when the bundle has no type classifier (`linesight types` makes one)."""
    from linesight.export.analysis.learned import region_core
    from linesight.export.analysis.regions import locate_regions
    from linesight.export.type_classifier import TypeClassifier
    from linesight.trainer.type_training import extend_classifier

    clf = TypeClassifier.from_bundle(bundle)
    if clf is None or not typed:
        if typed:
            skipped.append(f"{len(typed)} typed feedback image(s) kept as labeled data only: the version has no "
                           "learned types (run `linesight types` on it to start them)")
        return {}
    engine = Engine(bundle)
    emb, labels = [], []
    for (path, img, label), pred in zip(typed, engine.predict_batch([i for _, i, _ in typed], regions=False,
                                                                    keep_features=True)):
        regions, pixels = locate_regions(pred.anomaly_map, engine.pixel_threshold, img, max_regions=1)
        if not regions or pred.features is None:
            skipped.append(f"{path.name}: typed {label!r} but no region reaches the pixel threshold; kept as "
                           "labeled data only")
            continue
        core = region_core(pixels[0], pred.anomaly_map, regions[0].max_score)
        emb.append(clf.embed(pred.features, [core], [regions[0].peak_xy], pred.view))
        labels.append(label)
    if not labels:
        return {}
    clf = extend_classifier(clf, np.concatenate(emb), labels, "project learn (operator feedback)")
    for name in [n for n in bundle.extras if n.startswith("types/")]:
        del bundle.extras[name]
    bundle.extras.update(clf.to_extras())
    new_revision(bundle.manifest, f"learned types from {len(labels)} typed feedback image(s)")
    return {t: labels.count(t) for t in sorted(set(labels))}


def _gate(parent: int, before: Rates, after: Rates, golden_problems: list[str]) -> None:
    """The learned version verifies like any bundle (its golden images reproduce), and is no worse than its
    parent on either side of the project's held-out labeled images."""
    if golden_problems:
        raise LearnRefused(f"learned version refused: golden images do not reproduce: {'; '.join(golden_problems)}")
    if after.escape > before.escape:
        raise LearnRefused(f"learned version refused: it lets more labeled defects through than v{parent} "
                           f"(v{parent}: {before.text()}; learned: {after.text()})")
    if after.false_reject > before.false_reject:
        raise LearnRefused(f"learned version refused: it rejects more held-out good parts than v{parent} "
                           f"(v{parent}: {before.text()}; learned: {after.text()})")


def learn(project: Project, parent: int | None = None) -> LearnResult:
    """The next version from `parent` (default: the active one, else the newest) and the pending feedback.
    Feedback images join the project's data even when the learned version is refused."""
    from linesight.trainer.calibration import ThresholdRefused
    from linesight.trainer.evaluate import calibrate

    t0 = time.monotonic()
    numbers = project.version_numbers()
    parent = parent or project.metadata().active or (numbers[-1] if numbers else None)
    if parent is None:
        raise DataError(f"project {project.root} has no version to learn from; run `linesight project fit` first")
    pinfo = project.version(parent)
    records = pending(project)
    if not records:
        raise DataError(f"project {project.root}: no pending feedback (every record is learned already)")
    taken = _take(project, records)
    goods, skipped = taken.goods, taken.skipped
    index = project.data_index()
    engine = Engine(project.bundle_path(parent))
    n, build = project.new_version()
    try:
        view = build / ".data"
        build_view(project, index, pinfo.train_config.test_fraction, view)
        before = _rates(engine, view)
        grown, added = engine.bundle, [0] * len(engine.scales)
        if goods:
            frames, masks, reports = engine.prepare([img for _, img in goods])
            keep = [i for i, r in enumerate(reports) if not (r.failure or r.unaligned)]
            skipped += [f"{goods[i][0]}: does not register to the alignment reference" for i in range(len(goods))
                        if i not in keep]
            grown, added = _grown(engine, [frames[i] for i in keep], [masks[i] for i in keep],
                                  [goods[i][0].name for i in keep], pinfo.train_config.fit_config().seed,
                                  f"learned {len(keep)} good image(s) from feedback", project)
        write_bundle(build / BUNDLE_DIR, grown)
        if goods and before.good and before.defective:  # every score moved: calibrate again, to the same targets
            try:
                calibrate(build / BUNDLE_DIR, view, pinfo.train_config.calibration)
            except ThresholdRefused as exc:
                raise LearnRefused(f"learned version refused: {exc}") from None
        final = load_bundle(build / BUNDLE_DIR)
        types_added = _with_types(final, taken.typed, skipped)  # at the final thresholds: the regions the line sees
        if types_added:
            write_bundle(build / BUNDLE_DIR, final)
            final = load_bundle(build / BUNDLE_DIR)
        learned = Engine(final)
        after = _rates(learned, view)
        _gate(parent, before, after, learned.check_golden())
        shutil.rmtree(view)
        t = final.manifest.thresholds
        info = pinfo.model_copy(update={
            "version": n, "created": now(), "how": "learn", "parent": parent, "bundle_hash": final.digest[:16],
            "data_fingerprint": data_fingerprint(index), "n_train": pinfo.n_train + len(goods),
            "metrics": VersionMetrics(false_reject_rate=after.false_reject / after.good if after.good else None,
                                      escape_rate=after.escape / after.defective if after.defective else None,
                                      n_good=after.good, n_defective=after.defective),
            "image_threshold": t.image, "pixel_threshold": t.pixel, "policy": t.policy,
            "seconds": round(time.monotonic() - t0, 1), "learned_feedback": taken.used})
        project.commit_version(n, build, info)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)  # ours: no half version stays
        raise
    return LearnResult(info, before, after, added, types_added, skipped)
