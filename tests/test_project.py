"""Inspection projects (issue 15): init, add, fit into versions, versions/diff/activate/rollback, evaluate, and
every refusal with its one-line reason. Real images (magnetic_tile), real fits (tiny, random-init: machinery,
not accuracy), driven through the CLI where a user would."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from helpers import need_data
from linesight.cli import main
from linesight.config.project import TrainConfig
from linesight.errors import ConfigError, DataError
from linesight.project.data import add_images
from linesight.project.training import data_fingerprint, fit_version, held_out
from linesight.project.workspace import Project

TINY = {"weights": "none", "input_size": 96, "embedding_dim": 64, "coreset": {"ratio": 0.1}}


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    """Copies of real images (good, crack + masks) in plain folders, as an engineer would have them."""
    src = need_data()
    root = tmp_path_factory.mktemp("incoming")
    for sub in ("good", "crack", "crack_masks"):
        (root / sub).mkdir()
    for p in sorted((src / "train" / "good").iterdir())[:14]:
        shutil.copy(p, root / "good" / p.name)
    for p in sorted((src / "test" / "crack").iterdir())[:4]:
        shutil.copy(p, root / "crack" / p.name)
        shutil.copy(src / "ground_truth" / "crack" / f"{p.stem}_mask.png", root / "crack_masks")
    return {"good": root / "good", "crack": root / "crack", "masks": root / "crack_masks"}


@pytest.fixture(scope="module")
def fitted(images, tmp_path_factory) -> Project:
    """A project with goods and cracks and two versions (v1 default calibration, v2 another target)."""
    p = Project.init(tmp_path_factory.mktemp("proj") / "tiles", "tile line 3")
    add_images(p, [images["good"]])
    add_images(p, [images["crack"]], "crack", images["masks"])
    fit_version(p, TrainConfig(fit=TINY, test_fraction=0.3))
    fit_version(p, TrainConfig(fit=TINY, test_fraction=0.3, calibration={"max_false_reject": 0.2}))
    return p


# ------------------------------------------------------------------------------------------------ init
def test_init_makes_the_layout_and_metadata_with_history(tmp_path, capsys):
    rc, out, _ = cli(capsys, "project", "init", str(tmp_path / "p"), "--name", "line 3", "--description", "tiles")
    assert rc == 0 and json.loads(out)["name"] == "line 3"
    root = tmp_path / "p"
    assert {p.name for p in root.iterdir()} == {"metadata.json", "train_config.json", "train_data", "models",
                                                 "detect_results", "feedback"}
    meta = json.loads((root / "metadata.json").read_text())
    assert meta["schema"] == "linesight.project/1" and meta["description"] == "tiles" and meta["active"] is None
    assert [h["action"] for h in meta["history"]] == ["init"] and meta["created"] == meta["modified"]
    assert TrainConfig.model_validate_json((root / "train_config.json").read_text()) == TrainConfig()


def test_init_never_takes_over_a_folder_with_files_or_a_file(tmp_path, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    rc, _, err = cli(capsys, "project", "init", str(tmp_path / "mine"))
    assert rc == 2 and err.strip() == (f"linesight project: error: project init: {tmp_path / 'mine'} already holds "
                                       "files; choose a new or empty folder (nothing was changed)")
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]
    Project.init(tmp_path / "p")
    with pytest.raises(DataError, match="already holds a linesight project; choose a new or empty folder"):
        Project.init(tmp_path / "p")
    (tmp_path / "f").write_text("x")
    with pytest.raises(DataError, match="is a file; choose a new folder"):
        Project.init(tmp_path / "f")


def test_a_folder_that_is_not_a_project_is_named_with_the_fix(tmp_path, capsys):
    rc, _, err = cli(capsys, "project", "versions", "-p", str(tmp_path))
    assert rc == 2 and err.strip() == (f"linesight project: error: {tmp_path} is not a linesight project (no "
                                       f"metadata.json); create one with `linesight project init {tmp_path}`")


def test_a_damaged_metadata_file_is_reported_with_file_and_line(tmp_path):
    p = Project.init(tmp_path / "p")
    (p.root / "metadata.json").write_text('{"schema": "linesight.project/1",\n "name": 5}\n')
    with pytest.raises(ConfigError) as exc:
        Project.open(p.root)
    assert f"{p.root / 'metadata.json'}:2: name" in str(exc.value)
    (p.root / "metadata.json").write_text('{"schema": "linesight.project/9", "name": "x", "created": "", '
                                          '"modified": ""}')
    with pytest.raises(ConfigError, match="schema"):
        Project.open(p.root)


# ------------------------------------------------------------------------------------------------ add
def test_add_copies_by_content_hash_skips_duplicates_and_reports_unreadable_files(images, tmp_path, capsys):
    p = Project.init(tmp_path / "p")
    incoming = tmp_path / "in"
    shutil.copytree(images["good"], incoming)
    (incoming / "broken.png").write_bytes(b"not a png")
    rc, out, _ = cli(capsys, "project", "add", "-p", str(p.root), str(incoming))
    r = json.loads(out)
    assert rc == 0 and (r["added"], r["duplicates"]) == (14, 0)
    assert len(r["unreadable"]) == 1 and r["unreadable"][0].startswith(f"{incoming / 'broken.png'}: ")
    index = p.data_index()
    for e in index.images:
        data = (p.data_dir / e.file).read_bytes()
        assert e.label == "good" and e.mask is None and e.file == f"images/{e.sha256}.jpg"
        assert data == (incoming / e.name).read_bytes()
    shutil.copy(incoming / index.images[0].name, incoming / "same_bytes_other_name.jpg")
    r2 = add_images(p, [incoming])
    assert (r2.added, r2.duplicates) == (0, 15)
    assert (incoming / "broken.png").read_bytes() == b"not a png"  # the user's files are only read
    assert [h.action for h in p.metadata().history] == ["init", "add"]


def test_add_keeps_labels_and_masks_and_refuses_bad_labels_and_mismatched_masks(images, tmp_path, capsys):
    p = Project.init(tmp_path / "p")
    r = add_images(p, [images["crack"]], "crack", images["masks"])
    assert (r.added, r.masks) == (4, 4)
    for e in p.data_index().images:
        assert e.label == "crack" and e.mask == f"masks/{e.sha256}.png"
        assert (p.data_dir / e.mask).read_bytes() == (images["masks"] / f"{Path(e.name).stem}_mask.png").read_bytes()
    rc, _, err = cli(capsys, "project", "add", "-p", str(p.root), str(images["crack"]), "--label", "Crack")
    assert rc == 2 and "project add: --label 'Crack': use 'good' or a defect type" in err
    with pytest.raises(DataError, match="--masks goes with a defect --label"):
        add_images(p, [images["good"]], "good", images["masks"])
    with pytest.raises(DataError, match="does not exist"):
        add_images(p, [tmp_path / "nowhere"])
    small = tmp_path / "small_masks"
    small.mkdir()
    import cv2
    import numpy as np

    name = sorted(images["crack"].iterdir())[0]
    cv2.imwrite(str(small / f"{name.stem}_mask.png"), np.zeros((5, 5), np.uint8))
    q = Project.init(tmp_path / "q")
    r = add_images(q, [name], "crack", small)
    assert r.added == 0 and len(r.unreadable) == 1 and "mask" in r.unreadable[0]


# ------------------------------------------------------------------------------------------------ versions
def test_fit_writes_numbered_versions_with_config_fingerprint_metrics_and_report(fitted):
    v1, v2 = fitted.versions()
    assert (v1.version, v2.version) == (1, 2) and fitted.version_numbers() == [1, 2]
    index = fitted.data_index()
    goods = [e for e in index.images if e.label == "good"]
    held = sum(held_out(e, 0.3) for e in goods)
    assert v1.n_train == len(goods) - held and v1.metrics.n_good == held and v1.metrics.n_defective == 4
    assert v1.data_fingerprint == v2.data_fingerprint == data_fingerprint(index)
    assert v1.train_config.fit["weights"] == "none" and v1.train_config.fit["model_id"] == "tile-line-3"
    assert v2.train_config.calibration.max_false_reject == 0.2
    assert v1.metrics.image_auroc is not None and v1.policy == "max_false_reject"
    from linesight.export.bundle import load_bundle

    b1 = load_bundle(fitted.bundle_path(1))
    assert b1.digest[:16] == v1.bundle_hash and b1.manifest.thresholds.image == pytest.approx(v1.image_threshold)
    assert (fitted.version_dir(1) / "report" / "report.html").is_file()
    assert not [p for p in fitted.models_dir.iterdir() if p.name.startswith(".")]  # no build folder left
    assert [h.action for h in fitted.metadata().history][-2:] == ["fit", "fit"]


def test_a_failed_fit_leaves_no_version_and_touches_none(fitted, tmp_path):
    p = Project.init(tmp_path / "p")
    with pytest.raises(DataError, match="need at least 3 good training images, have 0"):
        fit_version(p, TrainConfig(fit=TINY))
    assert p.version_numbers() == [] and list(p.models_dir.iterdir()) == []


def test_versions_table_diff_activate_and_rollback(fitted, capsys):
    root = str(fitted.root)
    rc, out, _ = cli(capsys, "project", "versions", "-p", root)
    assert rc == 0 and out.splitlines()[-1] == "(no version active)" and "v2" in out
    rc, out, _ = cli(capsys, "project", "diff", "-p", root, "v1", "v2")
    assert rc == 0 and "calibration.max_false_reject: 0.01 -> 0.2" in out.splitlines()
    assert any(line.startswith("bundle_hash: ") for line in out.splitlines())
    rc, out, _ = cli(capsys, "project", "diff", "-p", root, "v1", "v1")
    assert out.strip() == "v1 and v1 do not differ (beyond their number and time)"
    for v in ("v1", "2"):
        assert cli(capsys, "project", "activate", "-p", root, v)[0] == 0
    rc, out, _ = cli(capsys, "project", "versions", "-p", root)
    assert [line.split()[1] for line in out.splitlines() if line.startswith("*")] == ["v2"]
    assert fitted.active_bundle() == fitted.bundle_path(2)
    rc, out, _ = cli(capsys, "project", "rollback", "-p", root)
    assert json.loads(out)["active"] == "v1" and fitted.metadata().activations == [1]
    rc, _, err = cli(capsys, "project", "rollback", "-p", root)
    assert rc == 2 and "nothing to roll back to (activated: v1)" in err
    rc, _, err = cli(capsys, "project", "activate", "-p", root, "v9")
    assert rc == 2 and err.strip().endswith("has no version v9; versions: v1, v2")
    with pytest.raises(SystemExit):
        main(["project", "activate", "-p", root, "latest"])
    assert "'latest' is not a version: write v1, v2, ..." in capsys.readouterr().err


def test_tune_makes_a_version_with_the_same_model_and_new_thresholds_or_refuses_with_the_numbers(fitted, tmp_path,
                                                                                                     capsys):
    import numpy as np

    from linesight.export.bundle import load_bundle

    proj = inactive_copy(fitted, tmp_path / "tiles")
    rc, out, err = cli(capsys, "project", "tune", "-p", str(proj.root), "v1", "--max-false-reject", "0.5")
    assert rc == 0, err
    r = json.loads(out)
    assert (r["version"], r["how"], r["parent"], r["calibration"]["max_false_reject"]) == (3, "tune", 1, 0.5)
    v1, v3 = load_bundle(proj.bundle_path(1)), load_bundle(proj.bundle_path(3))
    assert np.array_equal(v1.bank, v3.bank) and v1.onnx == v3.onnx  # no training: the same model
    assert v3.digest != v1.digest and v3.manifest.thresholds.image <= v1.manifest.thresholds.image
    assert (proj.version_dir(3) / "report" / "report.html").is_file() and proj.version(3).metrics.n_defective == 4
    assert proj.metadata().history[-1].action == "tune" and proj.metadata().active is None
    rc, _, err = cli(capsys, "project", "tune", "-p", str(proj.root), "v1", "--max-false-reject", "0",
                     "--max-escape", "0")  # every good part passes and no defect escapes: tiny random features cannot
    assert rc == 2 and "no threshold meets both targets" in err and proj.version_numbers() == [1, 2, 3]
    with pytest.raises(SystemExit):
        main(["project", "tune", "-p", str(proj.root), "v1", "--max-escape", "1"])
    assert "'1' is not a fraction in [0, 1)" in capsys.readouterr().err


def test_a_damaged_version_is_refused_at_activation(fitted, tmp_path):
    copy = Project(tmp_path / "copy")
    shutil.copytree(fitted.root, copy.root)
    bank = copy.bundle_path(2) / "memory_bank.npy"
    bank.write_bytes(bank.read_bytes()[:-8])
    before = copy.metadata().active
    from linesight.errors import BundleError

    with pytest.raises(BundleError, match="does not match its sha256"):
        copy.activate(2)
    assert copy.metadata().active == before


def test_no_active_version_is_a_clear_error(tmp_path):
    p = Project.init(tmp_path / "p")
    with pytest.raises(ConfigError, match="has no active version; run `linesight project fit`"):
        p.active_bundle()


def test_evaluate_reports_on_current_data_without_changing_the_version(fitted, capsys):
    before = (fitted.version_dir(1) / "version.json").read_bytes()
    rc, out, _ = cli(capsys, "project", "evaluate", "-p", str(fitted.root), "v1")
    r = json.loads(out)
    assert rc == 0 and r["same_data_as_fit"] is True and r["defective"] == 4 and Path(r["report"]).is_file()
    assert (fitted.version_dir(1) / "version.json").read_bytes() == before
    assert not list(Path(r["report"]).parent.glob(".data"))


def test_a_train_config_with_an_unknown_fit_field_is_refused_with_its_line(tmp_path, capsys):
    p = Project.init(tmp_path / "p")
    cfg = tmp_path / "train.json"
    cfg.write_text('{"preset": "fast",\n "fit": {"coreset": {"ratoi": 0.5}}}\n')
    rc, _, err = cli(capsys, "project", "fit", "-p", str(p.root), "--config", str(cfg))
    assert rc == 2 and f"{cfg}:2: fit: Value error, fit.coreset.ratoi: Extra inputs are not permitted" in err
    assert p.version_numbers() == []


def test_every_project_action_has_help(capsys):
    for action in ("init", "add", "fit", "evaluate", "versions", "diff", "activate", "rollback"):
        with pytest.raises(SystemExit) as exc:
            main(["project", action, "--help"])
        assert exc.value.code == 0 and "usage: linesight project " + action in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------ stations
def station(project: Path, **model) -> dict:
    return {"model": {"project": str(project), **model},
            "source": {"type": "synthetic", "name": "s", "width": 96, "height": 80, "rate_hz": None},
            "pipeline": {"deadline_ms": 60000},
            "outputs": {"mqtt": {"enabled": False}, "zmq": {"enabled": False}, "metrics": {"enabled": False}}}


def test_a_station_names_a_bundle_or_a_project_never_both_nor_neither(tmp_path):
    from pydantic import ValidationError

    from linesight.config.daemon import ModelConfig

    with pytest.raises(ValidationError, match="give either bundle .* or project .*, not both"):
        ModelConfig(bundle=tmp_path / "m.zip", project=tmp_path)
    with pytest.raises(ValidationError, match="not neither"):
        ModelConfig()
    assert ModelConfig(project=tmp_path).models_folder() == tmp_path / "models"
    assert ModelConfig(bundle=tmp_path / "m.zip").models_folder() == tmp_path


def test_a_station_runs_the_active_version_and_follows_activate_and_rollback(fitted, tmp_path):
    import threading
    import time

    from linesight.config.daemon import DaemonConfig
    from linesight.daemon.model import ModelHolder
    from linesight.daemon.pipeline import Pipeline
    from linesight.daemon.sources.synthetic import SyntheticSource

    proj = Project(tmp_path / "tiles")
    shutil.copytree(fitted.root, proj.root)
    proj.activate(1)
    cfg = DaemonConfig.model_validate(station(proj.root, watch_interval_s=0.2))
    holder = ModelHolder(None, project=proj.root)
    holder.load()
    assert holder.engine.bundle.digest[:16] == proj.version(1).bundle_hash
    alarms: list[tuple[str, dict]] = []
    p = Pipeline(cfg, SyntheticSource(cfg.source), holder, lambda *a: None,
                 lambda code, msg, **ctx: alarms.append((code, ctx)), station="a/b/c")
    t = threading.Thread(target=p.reload_loop, daemon=True)
    t.start()

    def becomes(version: int) -> bool:
        deadline = time.monotonic() + 10
        want = proj.version(version).bundle_hash
        while time.monotonic() < deadline:
            if holder.engine.bundle.digest[:16] == want:
                return True
            time.sleep(0.05)
        return False

    try:
        time.sleep(0.5)
        assert alarms == []  # nothing activated: no reload
        proj.activate(2)
        assert becomes(2)
        proj.rollback()
        assert becomes(1)
        assert [c for c, _ in alarms if c != "model_warning"] == ["model_changed", "model_changed"]
    finally:
        p.stop_event.set()
        t.join(5)


def inactive_copy(project: Project, dst: Path) -> Project:
    """A copy of the fitted project with no version active (as after `project fit`, before `activate`)."""
    from linesight.project.workspace import write_json

    copy = Project(dst)
    shutil.copytree(project.root, copy.root)
    meta = copy.metadata()
    meta.active, meta.activations = None, []
    write_json(copy.root / "metadata.json", meta)
    return copy


def test_a_project_without_an_active_version_is_refused_with_the_fix(fitted, tmp_path):
    from linesight.daemon.model import ModelHolder, ModelRefused

    proj = inactive_copy(fitted, tmp_path / "tiles")
    holder = ModelHolder(None, project=proj.root)
    with pytest.raises(ModelRefused, match="has no active version; run `linesight project fit` and"):
        holder.load()
    assert holder.changed() is False and holder.engine is None


def test_station_config_puts_detect_results_in_the_project_and_refuses_named_bundles(fitted, tmp_path):
    import yaml

    from linesight.daemon.commands import Reload
    from linesight.daemon.notify import Notifier
    from linesight.daemon.preflight import load_station, preflight
    from linesight.daemon.service import Service

    proj = inactive_copy(fitted, tmp_path / "tiles")
    path = tmp_path / "station.yaml"
    path.write_text(yaml.safe_dump(station(Path("tiles"))))  # relative to the station file
    cfg, doc = load_station(path)
    assert cfg.model.project == proj.root and cfg.outputs.archive.dir == proj.root / "detect_results"
    (problem,) = [p for p in preflight(cfg, doc) if p.field == "model.project"]
    assert "has no active version" in problem.message and not problem.blocks_start
    proj.activate(2)
    assert not [p for p in preflight(cfg, doc) if p.field == "model.project"]
    svc = Service(cfg, notifier=Notifier(None))
    try:
        with pytest.raises(ValueError, match="runs project .*: activate a version with `linesight project activate`"):
            svc._cmd_reload(Reload(bundle=str(proj.bundle_path(1))))
    finally:
        svc.seqs.close()


# ------------------------------------------------------------------------------------------------ feedback, learn
def test_cli_feedback_records_the_verdict_it_corrects_and_refuses_bad_labels(fitted, images, tmp_path, capsys):
    from linesight.project.feedback import pending, read_all

    proj = inactive_copy(fitted, tmp_path / "tiles")
    proj.activate(1)
    goods = sorted(images["good"].iterdir())[:3]
    rc, out, _ = cli(capsys, "project", "feedback", "-p", str(proj.root), *map(str, goods), "--label", "OK",
                     "--by", "anna")
    assert rc == 0 and len(json.loads(out)) == 3
    records = read_all(proj)
    assert [r.image for r in records] == [str(g.resolve()) for g in goods] and pending(proj) == records
    r = records[0]
    assert (r.label, r.by, r.source, r.version, r.model_hash) == ("OK", "anna", "cli", 1, proj.version(1).bundle_hash)
    assert r.verdict in ("OK", "NG") and r.score is not None
    rc, _, err = cli(capsys, "project", "feedback", "-p", str(proj.root), str(goods[0]), "--label", "Bad")
    assert rc == 2 and "feedback: label: Value error, label 'Bad'" in err and len(read_all(proj)) == 3
    (proj.feedback_dir / "feedback.jsonl").open("a").write("{broken\n")
    assert len(read_all(proj)) == 3  # a damaged line is left out (and logged), the rest still count


@pytest.fixture(scope="module")
def blobs(images, tmp_path_factory) -> Project:
    """A project whose defects are unmistakable (a bright square painted on a good tile): even tiny random-init
    features separate them, so what learning does to recall shows, not the features' noise."""
    import cv2
    import numpy as np

    root = tmp_path_factory.mktemp("blobs")
    (root / "bad").mkdir()
    (root / "masks").mkdir()
    for k, src in enumerate(sorted(images["good"].iterdir())[-4:]):
        img = cv2.imread(str(src), cv2.IMREAD_GRAYSCALE)
        h, w = img.shape
        mask = np.zeros_like(img)
        mask[h // 3: h // 3 + h // 4, w // 3: w // 3 + w // 4] = 255
        img[mask > 0] = 255
        cv2.imwrite(str(root / "bad" / f"blob{k}.png"), img)
        cv2.imwrite(str(root / "masks" / f"blob{k}_mask.png"), mask)
    p = Project.init(root / "proj", "blobs")
    add_images(p, sorted(images["good"].iterdir())[:-4])
    add_images(p, [root / "bad"], "blob", root / "masks")
    fit_version(p, TrainConfig(fit=TINY, test_fraction=0.3, calibration={"max_false_reject": 0.2}))
    return p


def test_learn_makes_a_child_version_from_feedback_and_consumes_it(blobs, tmp_path, capsys):
    from linesight.project.feedback import append, new_record, pending

    proj = inactive_copy(blobs, tmp_path / "tiles")
    rc, _, err = cli(capsys, "project", "learn", "-p", str(proj.root))
    assert rc == 2 and "no pending feedback" in err
    extra = sorted(need_data().joinpath("test", "good").iterdir())[:4]
    for path in extra:  # good parts it never saw
        append(proj.feedback_dir, new_record(label="OK", source="cli", image=str(path), verdict="NG"))
    append(proj.feedback_dir, new_record(label="OK", source="mqtt", seq=9))  # not archived: no image
    rc, out, err = cli(capsys, "project", "learn", "-p", str(proj.root))
    assert rc == 0, err
    r = json.loads(out)
    assert (r["version"], r["parent"], r["learned"]) == ("v2", "v1", 4)
    assert r["bank_rows_added"][0] > 0 and len(r["skipped"]) == 1 and "no image" in r["skipped"][0]
    v2 = proj.version(2)
    assert (v2.how, v2.parent, len(v2.learned_feedback)) == ("learn", 1, 4)
    from linesight.export.bundle import load_bundle
    from linesight.export.engine import Engine

    b1, b2 = load_bundle(proj.bundle_path(1)), load_bundle(proj.bundle_path(2))
    assert len(b2.bank) == len(b1.bank) + r["bank_rows_added"][0] and b2.manifest.golden
    assert b2.manifest.model.version > b1.manifest.model.version and b2.digest[:16] == v2.bundle_hash
    assert Engine(b2).check_golden() == []  # golden scores re-recorded for the grown bank
    assert sum(e.origin == "feedback" for e in proj.data_index().images) == 4  # kept, never as test images
    assert [x.seq for x in pending(proj)] == [9]  # only the record without an image is still pending


def test_typed_feedback_teaches_the_learned_types_and_a_schedule_learns_only_when_something_is_pending(
        blobs, tmp_path, capsys):
    """A part the operator types "scar" becomes a learned-type example (the region the line itself finds);
    `--if-pending` makes an idle schedule a no-op, `--activate` switches the project to the learned version."""
    import cv2

    from linesight.export.analysis import analyze
    from linesight.export.engine import Engine
    from linesight.export.images import read_image
    from linesight.export.type_classifier import TypeClassifier
    from linesight.project.feedback import append, new_record
    from linesight.project.training import build_view
    from linesight.trainer.types import train_types

    proj = inactive_copy(blobs, tmp_path / "tiles")
    rc, out, err = cli(capsys, "project", "learn", "-p", str(proj.root), "--if-pending")
    assert (rc, json.loads(out)) == (0, {"version": None, "learned": 0, "reason": "no pending feedback"}), err
    assert proj.version_numbers() == [1]
    scar = tmp_path / "scar.png"  # a dark bar across a good tile: not the bright blobs the types know
    img = cv2.imread(str(sorted(need_data().joinpath("test", "good").iterdir())[0]), cv2.IMREAD_GRAYSCALE)
    h, w = img.shape
    img[h // 2 - h // 20: h // 2 + h // 20, w // 5: 4 * w // 5] = 0
    cv2.imwrite(str(scar), img)
    append(proj.feedback_dir, new_record(label="scar", source="cli", image=str(scar), verdict="NG"))
    rc, out, err = cli(capsys, "project", "learn", "-p", str(proj.root))  # v1 has no learned types yet
    assert rc == 0, err
    r = json.loads(out)
    assert r["types_added"] == {} and r["active"] is None
    assert any("kept as labeled data only: the version has no learned types" in s for s in r["skipped"])

    build_view(proj, proj.data_index(), 0.3, tmp_path / "view")
    train_types(proj.bundle_path(2), tmp_path / "view", folds=2)  # the engineer starts learned types on v2
    before = TypeClassifier.from_bundle(Engine(proj.bundle_path(2)).bundle)
    assert before.labels == ["blob"]  # "scar" is in the view, but without a mask it teaches no region
    append(proj.feedback_dir, new_record(label="scar", source="ui", image=str(scar), verdict="NG"))
    rc, out, err = cli(capsys, "project", "learn", "-p", str(proj.root), "--parent", "v2", "--activate")
    assert rc == 0, err
    r = json.loads(out)
    assert (r["version"], r["types_added"], r["active"]) == ("v3", {"scar": 1}, "v3")
    engine = Engine(proj.bundle_path(3))
    clf = TypeClassifier.from_bundle(engine.bundle)
    assert clf.labels == ["blob", "scar"] and len(clf.embeddings) == len(before.embeddings) + 1
    assert clf.info["learned_examples"] == {"scar": 1} and (clf.floor, clf.temperature) == (before.floor,
                                                                                            before.temperature)
    image = read_image(scar)
    pred = engine.predict_batch([image], regions=False, keep_features=True)[0]
    a = analyze(pred, engine.pixel_threshold, image, classifier=clf)
    assert a.regions[0].learned_type == "scar" and a.regions[0].type == "scar"  # the line now names it


def test_the_learn_gate_refuses_lost_recall_more_false_rejects_and_golden_mismatches_with_the_numbers():
    from linesight.project.learning import LearnRefused, Rates, _gate

    _gate(1, Rates(2, 5, 1, 4), Rates(0, 5, 1, 4), [])  # fewer false rejects, same escapes: passes
    with pytest.raises(LearnRefused) as exc:
        _gate(1, Rates(1, 5, 1, 4), Rates(0, 5, 2, 4), [])
    assert str(exc.value) == ("learned version refused: it lets more labeled defects through than v1 (v1: false "
                              "reject 1/5, escape 1/4; learned: false reject 0/5, escape 2/4)")
    with pytest.raises(LearnRefused) as exc:
        _gate(3, Rates(1, 5, 1, 4), Rates(2, 5, 0, 4), [])
    assert str(exc.value) == ("learned version refused: it rejects more held-out good parts than v3 (v3: false "
                              "reject 1/5, escape 1/4; learned: false reject 2/5, escape 0/4)")
    with pytest.raises(LearnRefused, match="golden images do not reproduce: golden image g.png missing"):
        _gate(1, Rates(1, 5, 1, 4), Rates(1, 5, 1, 4), ["golden image g.png missing"])


def test_a_build_folder_that_is_not_ours_is_never_removed(tmp_path):
    p = Project.init(tmp_path / "p")
    n, build = p.new_version()
    assert (n, (build / ".linesight-build").is_file()) == (1, True)
    assert p.new_version() == (1, build)  # an interrupted build of ours: started again
    (build / ".linesight-build").unlink()
    (build / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="exists and is not a linesight build; move it away"):
        p.new_version()
    assert (build / "notes.txt").read_text() == "mine"
