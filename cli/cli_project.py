"""`linesight project <verb>`: an inspection project — its images, train config and versioned models."""
from __future__ import annotations

import argparse
import json

from linesight.argtypes import fraction

DESCRIPTION = """\
An inspection project keeps everything about one inspection in one folder: the images (content-addressed,
labeled, with masks), the train config, every model version with its bundle, report, config and data
fingerprint, which version is active, and the history of what was done. Stations run a project's active
version with `model: {project: DIR}` in their config. Layout and files: docs/project.md.
"""

EPILOG = """\
workflow:
  linesight project init tiles --name "magnetic tile, line 3"
  linesight project add -p tiles DATASET/train/good                       # label good (default)
  linesight project add -p tiles DATASET/test/crack --label crack --masks DATASET/ground_truth/crack
  linesight project fit -p tiles                                          # -> models/v1 (never overwrites)
  linesight project versions -p tiles
  linesight project activate -p tiles v1
  linesight project tune -p tiles v1 --max-escape 0.05                    # v2: v1's model, another threshold
  linesight project diff -p tiles v1 v2
  linesight project rollback -p tiles                                     # back to the previous active one
  linesight project export -p tiles tiles.zip                             # one hash-checked zip
  linesight project import tiles.zip tiles-copy                           # into a new or empty folder

-p/--project defaults to the current folder. Errors in your input are reported in one line, exit 2.
"""


def _version(text: str) -> int:
    """`v3` or `3`."""
    t = text.removeprefix("v")
    if not t.isdigit() or int(t) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a version: write v1, v2, ...")
    return int(t)


def _open(a: argparse.Namespace):
    from linesight.project.workspace import Project

    return Project.open(a.project)


def _init(a: argparse.Namespace) -> int:
    from linesight.project.workspace import Project

    p = Project.init(a.dir, a.name, a.description or "")
    print(json.dumps({"project": str(p.root), "name": p.metadata().name}, indent=2))
    return 0


def _add(a: argparse.Namespace) -> int:
    from linesight.project.data import add_images

    r = add_images(_open(a), a.inputs, a.label, a.masks)
    print(json.dumps({"added": r.added, "duplicates": r.duplicates, "masks": r.masks,
                      "unreadable": r.unreadable}, indent=2))
    return 0 if r.added or r.duplicates else 2


def _fit(a: argparse.Namespace) -> int:
    from linesight.config.loader import load_model
    from linesight.config.project import TrainConfig
    from linesight.project.training import fit_version

    config = load_model(a.config, TrainConfig) if a.config else None
    info = fit_version(_open(a), config)
    print(json.dumps(info.model_dump(mode="json", by_alias=True, exclude={"train_config"}), indent=2))
    return 0


def _tune(a: argparse.Namespace) -> int:
    from linesight.config.manifest import CalibrationTarget
    from linesight.project.training import tune_version

    p = _open(a)
    given = {k: v for k, v in (("max_false_reject", a.max_false_reject), ("max_escape", a.max_escape),
                               ("max_false_pixel_area", a.max_false_pixel_area)) if v is not _KEEP}
    target = CalibrationTarget.model_validate(p.version(a.version).train_config.calibration.model_dump() | given)
    info = tune_version(p, a.version, target)
    print(json.dumps(info.model_dump(mode="json", by_alias=True, exclude={"train_config"}) | {
        "calibration": info.train_config.calibration.model_dump(mode="json")}, indent=2))
    return 0


_KEEP = object()  # a target not given on the command line: the version's own


def _target(text: str) -> float | None:
    """A rate in [0, 1), or `none` (max-escape only: the false-reject target decides)."""
    return None if text.lower() == "none" else fraction(text)


def _rate(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def versions_table(project) -> str:
    active = project.metadata().active
    rows = [("", "version", "created", "backbone", "image thr", "AUROC", "false rej", "escape", "hash")]
    for v in project.versions():
        m = v.metrics
        rows.append(("*" if v.version == active else "", f"v{v.version}", v.created.replace("+00:00", "Z"),
                     v.backbone, f"{v.image_threshold:.4g}", "-" if m.image_auroc is None else f"{m.image_auroc:.3f}",
                     _rate(m.false_reject_rate), _rate(m.escape_rate), v.bundle_hash))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join([*lines, "(* = active)" if active else "(no version active)"])


def _versions(a: argparse.Namespace) -> int:
    p = _open(a)
    if a.json:
        print(json.dumps([v.model_dump(mode="json", by_alias=True) for v in p.versions()], indent=2))
    else:
        print(versions_table(p))
    return 0


def _diff(a: argparse.Namespace) -> int:
    from linesight.project.workspace import version_diff

    rows = version_diff(_open(a), a.a, a.b)
    if a.json:
        print(json.dumps([{"field": k, f"v{a.a}": x, f"v{a.b}": y} for k, x, y in rows], indent=2))
        return 0
    if not rows:
        print(f"v{a.a} and v{a.b} do not differ (beyond their number and time)")
    for k, x, y in rows:
        print(f"{k}: {json.dumps(x)} -> {json.dumps(y)}")
    return 0


def _activate(a: argparse.Namespace) -> int:
    info = _open(a).activate(a.version)
    print(json.dumps({"active": f"v{info.version}", "bundle_hash": info.bundle_hash}))
    return 0


def _rollback(a: argparse.Namespace) -> int:
    p = _open(a)
    back = p.rollback()
    print(json.dumps({"active": f"v{back}", "bundle_hash": p.version(back).bundle_hash}))
    return 0


def _evaluate(a: argparse.Namespace) -> int:
    from linesight.project.training import evaluate_version

    out = evaluate_version(_open(a), a.version)
    print(json.dumps(out, indent=2))
    return 0


def _export(a: argparse.Namespace) -> int:
    from linesight.project.transfer import export_project

    r = export_project(_open(a), a.zip, results=not a.no_results, force=a.force)
    print(json.dumps({"zip": str(r.zip), "files": r.files, "bytes": r.bytes, "zip_bytes": r.zip_bytes,
                      "detect_results": r.results, "skipped": r.skipped}, indent=2))
    return 0


def _import(a: argparse.Namespace) -> int:
    from linesight.project.transfer import MAX_IMPORT_BYTES, import_project

    limit = MAX_IMPORT_BYTES if a.max_size_gb is None else int(a.max_size_gb * 1024**3)
    r = import_project(a.zip, a.dir, max_bytes=limit)
    print(json.dumps({"project": str(r.project), "name": r.name, "files": r.files, "bytes": r.bytes,
                      "exported": r.exported, "exported_by": f"linesight {r.linesight}"}, indent=2))
    return 0


def _gib(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = 0.0
    if not 0 < v < 1e9:  # nan and inf refused too
        raise argparse.ArgumentTypeError(f"{text!r}: give a size in GiB above 0, e.g. 16")
    return v


def _feedback(a: argparse.Namespace) -> int:
    """Feedback from the CLI: each image is scored by the active version, so the record carries the verdict it
    corrects, as a station's does."""
    from linesight.export.engine import Engine
    from linesight.export.images import read_image
    from linesight.project.data import collect
    from linesight.project.feedback import append, new_record

    p = _open(a)
    active = p.metadata().active
    engine = Engine(p.bundle_path(active)) if active is not None else None
    out = []
    for path in collect(a.images):
        fields: dict = {"label": a.label, "source": "cli", "by": a.by, "note": a.note, "image": str(path.resolve())}
        if engine is not None:
            pred = engine.predict(read_image(path))
            fields |= {"version": active, "model_hash": engine.identity["hash"], "score": pred.score,
                       "verdict": "NG" if pred.score >= engine.threshold else "OK"}
        record = new_record(**fields)
        append(p.feedback_dir, record)
        out.append({"id": record.id, "image": record.image, "verdict": record.verdict, "label": record.label})
    print(json.dumps(out, indent=2))
    return 0


def _learn(a: argparse.Namespace) -> int:
    from linesight.project.feedback import pending
    from linesight.project.learning import learn

    p = _open(a)
    if a.if_pending and not pending(p):
        print(json.dumps({"version": None, "learned": 0, "reason": "no pending feedback"}))
        return 0
    r = learn(p, a.parent)
    if a.activate:
        p.activate(r.info.version)
    print(json.dumps({"version": f"v{r.info.version}", "parent": f"v{r.info.parent}", "learned": len(
        r.info.learned_feedback), "bank_rows_added": r.rows_added, "types_added": r.types_added,
        "before": r.parent.text(), "after": r.learned.text(), "seconds": r.info.seconds,
        "active": f"v{p.metadata().active}" if p.metadata().active else None, "skipped": r.skipped}, indent=2))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("project", help="an inspection project: images, train config, model versions",
                              description=DESCRIPTION, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="project_verb", required=True, metavar="ACTION")

    def action(name: str, help_: str, func, with_project: bool = True) -> argparse.ArgumentParser:
        s = sub.add_parser(name, help=help_, description=help_[0].upper() + help_[1:] + ".")
        if with_project:
            s.add_argument("-p", "--project", default=".", metavar="DIR", help="the project folder (default: .)")
        s.set_defaults(func=func)
        return s

    s = action("init", "create a project folder (new or empty)", _init, with_project=False)
    s.add_argument("dir")
    s.add_argument("--name", help="shown in reports and the UI (default: the folder name)")
    s.add_argument("--description", help="what is inspected, where")
    s = action("add", "copy images in (content-addressed: a duplicate is skipped) with a label and masks", _add)
    s.add_argument("inputs", nargs="+", metavar="DIR|FILE", help="image files or folders (searched recursively)")
    s.add_argument("--label", default="good", help="good (default) or a defect type, e.g. crack")
    s.add_argument("--masks", metavar="DIR", help="defect masks: DIR/<stem>_mask.png or DIR/<stem>.png per image")
    s = action("fit", "train the next version (models/vN: bundle, report, config, data fingerprint)", _fit)
    s.add_argument("--config", metavar="TRAIN.json", help="train config to use instead of the project's "
                   "train_config.json (recorded in the version)")
    s = action("evaluate", "evaluate a version on the project's current held-out images", _evaluate)
    s.add_argument("version", type=_version, help="vN")
    s = action("versions", "list the versions: created, backbone, threshold, AUROC, false reject, escape", _versions)
    s.add_argument("--json", action="store_true")
    s = action("diff", "what differs between two versions: config, thresholds, plan, metrics", _diff)
    s.add_argument("a", type=_version, metavar="vA")
    s.add_argument("b", type=_version, metavar="vB")
    s.add_argument("--json", action="store_true")
    s = action("activate", "make vN the version stations running this project inspect with", _activate)
    s.add_argument("version", type=_version, metavar="vN")
    action("rollback", "activate the version that was active before the current one", _rollback)
    s = action("feedback", "say what parts really were (OK, NG or a defect type): input for `project learn`",
               _feedback)
    s.add_argument("images", nargs="+", metavar="IMAGE", help="the inspected images (files or folders)")
    s.add_argument("--label", required=True, help="OK, NG, or a defect type (e.g. crack)")
    s.add_argument("--by", help="who says so (recorded)")
    s.add_argument("--note", help="free text (recorded)")
    s = action("learn", "a new version from the pending feedback, without a refit: rejected good parts extend "
               "the memory bank, typed defects extend the learned types; refused if it lets more labeled defects "
               "through", _learn)
    s.add_argument("--parent", type=_version, metavar="vN", help="the version to learn from (default: the active "
                   "one, else the newest)")
    s.add_argument("--activate", action="store_true", help="activate the learned version (stations running the "
                   "project switch to it); a refused one changes nothing")
    s.add_argument("--if-pending", action="store_true", help="exit 0 without a version when no feedback is pending "
                   "(for a schedule: systemd/linesight-learn@.timer)")
    s = action("tune", "a new version with vN's model and thresholds calibrated to other targets (no training): "
               "refused when no threshold meets them", _tune)
    s.add_argument("version", type=_version, metavar="vN")
    s.add_argument("--max-false-reject", type=_target, default=_KEEP, metavar="RATE",
                   help="good parts the threshold may reject (default: vN's target)")
    s.add_argument("--max-escape", type=_target, default=_KEEP, metavar="RATE|none",
                   help="defective parts it may pass; when set it decides the threshold (none: the false-reject "
                        "target decides; default: vN's)")
    s.add_argument("--max-false-pixel-area", type=_target, default=_KEEP, metavar="FRACTION",
                   help="good-image pixel share at or above the pixel threshold (default: vN's)")
    s = action("export", "write the project into one zip (every file with its sha256 in a manifest)", _export)
    s.add_argument("zip", metavar="FILE.zip")
    s.add_argument("--no-results", action="store_true", help="leave detect_results/ out")
    s.add_argument("--force", action="store_true", help="replace FILE.zip even if it is not a project export")
    s = action("import", "unpack a project export into a new or empty folder, every file hash-checked", _import,
               with_project=False)
    s.add_argument("zip", metavar="FILE.zip")
    s.add_argument("dir", metavar="DIR", help="the new project folder (must not exist, or be empty)")
    s.add_argument("--max-size-gb", type=_gib, metavar="N",
                   help="refuse a zip that expands to more than N GiB (default: 16; a zip bomb stops here)")

