"""Learned defect types: hand-made features with known classes, the bundle round trip (no pickle), CV on a
real magnetic_tile subset through the engine, the `types` verb, and analyze() using the classifier."""
from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from linesight.errors import BundleError, LinesightError
from linesight.export.type_classifier import (
    CLASSIFIER_FILE,
    EMBEDDINGS_FILE,
    LABELS_FILE,
    TypeClassifier,
    embed_regions,
    grid_cells,
)
from linesight.trainer.type_training import fit_classifier

D, G, S = 16, 8, 64  # channels, patch grid, image size (8 px per cell)


def _scene(rng: np.random.Generator, protos: dict[str, np.ndarray], kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(D, G, G) features: background noise + the type's prototype in a 3x3-cell square; its image mask."""
    feats = rng.normal(0, 0.3, (D, G, G)).astype(np.float32) + 1.0
    y, x = rng.integers(0, G - 3, 2)
    feats[:, y:y + 3, x:x + 3] += 3 * protos[kind][:, None, None] + rng.normal(0, 0.2, (D, 3, 3))
    mask = np.zeros((S, S), bool)
    mask[y * 8:(y + 3) * 8, x * 8:(x + 3) * 8] = True
    return feats, mask


def _protos(rng: np.random.Generator) -> dict[str, np.ndarray]:
    basis = np.linalg.qr(rng.normal(size=(D, D)))[0]
    return {"crack": basis[0], "pit": basis[1], "stain": basis[2]}


@pytest.mark.parametrize("method", ["knn", "logreg"])
def test_hand_made_classes_are_separated_and_far_query_is_unknown(method):
    rng = np.random.default_rng(0)
    protos = _protos(rng)
    emb, labels, groups = [], [], []
    for i in range(30):
        kind = ["crack", "pit", "stain"][i % 3]
        f, m = _scene(rng, protos, kind)
        emb.append(embed_regions(f, [m])[0])
        labels.append(kind)
        groups.append(i)
    clf = fit_classifier(np.stack(emb), labels, groups, method=method)
    assert clf.labels == ["crack", "pit", "stain"] and -1.0 < clf.floor < 1.0
    for kind in ("crack", "pit", "stain"):
        f, m = _scene(rng, protos, kind)
        (ans,) = clf.classify(f, [m])
        assert ans.type == kind and ans.confidence > 0.5, (kind, ans)
    # a region made of a direction no example has: nothing is close -> unknown, the best guess is kept
    far = np.zeros((D, G, G), np.float32)
    far[:] = -5 * np.linalg.qr(rng.normal(size=(D, D)))[0][:, 5][:, None, None]
    m = np.zeros((S, S), bool)
    m[8:32, 8:32] = True
    (ans,) = clf.classify(far, [m])
    assert ans.type == "unknown" and ans.confidence == 0.0 and ans.guess in clf.labels
    assert ans.similarity < clf.floor


def test_grid_cells_small_region_peak_and_letterbox():
    tiny = np.zeros((S, S), bool)
    tiny[21, 45] = True  # one pixel: covers no cell enough -> the cell under the peak
    w = grid_cells(tiny, (G, G), peak_xy=(45, 21))
    assert w.sum() == 1.0 and w[21 // 8, 45 // 8] == 1.0
    # letterbox: a 64 x 128 frame sits in rows 16..47 of a 64 x 64 input; its top-left quarter -> rows 2..3
    wide = np.zeros((64, 128), bool)
    wide[:32, :64] = True
    lb = grid_cells(wide, (G, G), input_hw=(64, 64), resize="letterbox")
    assert set(np.flatnonzero(lb.any(axis=1))) == {2, 3} and set(np.flatnonzero(lb.any(axis=0))) == {0, 1, 2, 3}
    st = grid_cells(wide, (G, G))  # stretch: the same quarter covers the top-left 4 x 4 cells
    assert st[:4, :4].all() and not st[4:].any() and not st[:, 4:].any()


def test_extras_round_trip_without_pickle_and_stale_backbone_refused():
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(12, 2 * D)).astype(np.float32)
    clf = fit_classifier(emb, ["a", "b", "c"] * 4, list(range(12)), method="logreg", input_hw=(64, 64),
                         info={"backbone_sha256": "ab" * 32, "cv": {"accuracy": 0.5}})
    extras = clf.to_extras()
    arr = np.load(io.BytesIO(extras[EMBEDDINGS_FILE]), allow_pickle=False)
    assert arr.dtype == np.float32 and arr.shape == (12, 2 * D)
    assert np.load(io.BytesIO(extras[LABELS_FILE]), allow_pickle=False).dtype == np.int32
    back = TypeClassifier.from_extras(extras, onnx_sha256="ab" * 32)
    q = rng.normal(size=(5, 2 * D)).astype(np.float32)
    assert [a.to_dict() for a in back.predict_embeddings(q)] == [a.to_dict() for a in clf.predict_embeddings(q)]
    assert back.info["cv"] == {"accuracy": 0.5} and back.input_hw == (64, 64)
    with pytest.raises(BundleError, match="another backbone"):
        TypeClassifier.from_extras(extras, onnx_sha256="cd" * 32)
    broken = dict(extras)
    del broken[LABELS_FILE]
    with pytest.raises(BundleError, match="re-run `linesight types`"):
        TypeClassifier.from_extras(broken)
    with pytest.raises(LinesightError, match="unknown"):
        fit_classifier(emb[:2], ["unknown", "a"], [0, 1])


@pytest.fixture(scope="module")
def typed_bundle(small_bundle, tmp_path_factory):
    """The session's small real bundle + a classifier learned on 3 real magnetic_tile types via the CLI."""
    from helpers import make_subset

    root = tmp_path_factory.mktemp("types")
    data = make_subset(root / "labeled", n_train=3, n_good=1, defects={"blowhole": 5, "crack": 5, "uneven": 5})
    bundle = root / "model"
    shutil.copytree(small_bundle, bundle)
    r = subprocess.run([sys.executable, "-m", "linesight", "types", str(bundle), str(data), "--folds", "3",
                        "-o", str(root / "rep")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return bundle, data, root, r.stdout


def test_types_verb_cross_validates_and_stores_the_classifier(typed_bundle, small_bundle):
    from linesight.export.bundle import load_bundle

    bundle, data, root, out = typed_bundle
    assert "3 folds grouped by image" in out and "true \\ predicted" in out and "unknown" in out
    cv = json.loads((root / "rep" / "types_cv.json").read_text())["cv"]
    assert cv["n_images"] == 15 and set(cv["per_type_recall"]) == {"blowhole", "crack", "uneven"}
    assert sum(map(sum, cv["confusion"]["matrix"])) == cv["n_regions"]
    assert 0.0 <= cv["accuracy"] <= 1.0 and 0.0 <= cv["unknown_rate"] <= 1.0
    b, before = load_bundle(bundle), load_bundle(small_bundle)  # load_bundle verifies every hash
    assert {CLASSIFIER_FILE, EMBEDDINGS_FILE, LABELS_FILE} <= set(b.manifest.files)
    for name, digest in before.manifest.files.items():  # nothing else re-recorded
        assert b.manifest.files[name] == digest, name
    clf = TypeClassifier.from_bundle(b)
    assert clf.labels == ["blowhole", "crack", "uneven"] and clf.info["cv"]["accuracy"] == cv["accuracy"]
    assert clf.info["backbone_sha256"] == b.manifest.files["backbone.onnx"]
    r = subprocess.run([sys.executable, "-m", "linesight", "types", str(bundle), str(data), "--folds", "1"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "at least 2 folds" in r.stderr and "Traceback" not in r.stderr


def test_analyze_uses_learned_types_and_falls_back_on_unknown(typed_bundle):
    from linesight.export import analysis as A
    from linesight.export.engine import Engine
    from linesight.export.images import read_image

    bundle, data, _, _ = typed_bundle
    engine = Engine(bundle)
    clf = TypeClassifier.from_bundle(engine.bundle)
    img = read_image(sorted((data / "test" / "crack").iterdir())[0])
    pred = engine.predict_batch([img], keep_features=True)[0]
    thr = float(np.quantile(pred.anomaly_map, 0.97))  # a pixel threshold that surely gives regions
    a = A.analyze(pred, thr, img, classifier=clf)
    assert a.regions and all(r.learned_type is not None for r in a.regions)
    for r in a.regions:
        if r.learned_type == "unknown":
            assert r.type_source == "rules" and r.type == r.shape_type
        else:
            assert r.type_source == "learned" and r.type == r.learned_type in clf.labels and r.type_confidence > 0
    compact, header = A.to_verdict_dict(a), A.to_header_dict(a)
    assert all("type_source" in d and "confidence" in d for d in compact["defects"])
    assert header["regions"][0]["learned_type"] == a.regions[0].learned_type
    # every region unknown (floor above any similarity): rule types stand, flagged as such
    clf.floor = 2.0
    b = A.analyze(pred, thr, img, classifier=clf)
    assert all(r.type_source == "rules" and r.learned_type == "unknown" for r in b.regions)
    assert [r.type for r in b.regions] == [r.type for r in A.analyze(pred, thr, img).regions]
    assert A.to_verdict_dict(b)["defects"][0]["learned_type"] == "unknown"
    # no features on the prediction: shape rules only, nothing claimed as learned
    plain = engine.predict(img)
    c = A.analyze(plain, thr, img, classifier=clf)
    assert all(r.type_source == "rules" and r.learned_type is None for r in c.regions)


def test_typing_from_the_labelling_matches_frame_size_region_masks(typed_bundle, monkeypatch):
    """Regions are typed from crops of the one labelling: the same pixels as the frame-size mask of each
    region, and the same types as typing with those masks through cv2's coverage (the former path)."""
    import cv2

    from linesight.export import analysis as A
    from linesight.export.engine import Engine
    from linesight.export.images import read_image
    from linesight.export.views import View

    bundle, data, _, _ = typed_bundle
    engine = Engine(bundle)
    clf = TypeClassifier.from_bundle(engine.bundle)
    paths = [sorted((data / "test" / kind).iterdir())[0] for kind in ("blowhole", "crack", "uneven")]
    preds = [(read_image(p), engine.predict_batch([read_image(p)], keep_features=True)[0]) for p in paths]
    runs = []
    for img, pred in preds:
        thr = float(np.quantile(pred.anomaly_map, 0.97))
        regions, crops = A.locate_regions(pred.anomaly_map, thr, img)
        _, labels = cv2.connectedComponents((pred.anomaly_map >= thr).astype(np.uint8), connectivity=8)
        for r, c in zip(regions, crops):
            full = np.zeros(c.frame_hw, bool)
            full[c.y:c.y + c.mask.shape[0], c.x:c.x + c.mask.shape[1]] = c.mask
            assert np.array_equal(full, labels == labels[r.peak_xy[1], r.peak_xy[0]])
        runs.append((img, pred, thr))
    now = [[(r.type, r.type_confidence) for r in A.analyze(p, t, i, classifier=clf).regions] for i, p, t in runs]

    def frame_size(self, crop):  # the former path: the region's frame-size mask through cv2's resizes
        full = np.zeros(crop.frame_hw, np.float32)
        full[crop.y:crop.y + crop.mask.shape[0], crop.x:crop.x + crop.mask.shape[1]] = crop.mask
        return self.coverage(full)

    monkeypatch.setattr(View, "crop_coverage", frame_size)
    before = [[(r.type, r.type_confidence) for r in A.analyze(p, t, i, classifier=clf).regions] for i, p, t in runs]
    assert sum(map(len, now)) >= 3
    assert [[t for t, _ in img] for img in now] == [[t for t, _ in img] for img in before]
    assert np.allclose([c for img in now for _, c in img], [c for img in before for _, c in img], atol=1e-5)


def test_daemon_verdicts_carry_learned_types(typed_bundle, tmp_path):
    """The daemon's pipeline (real engine, frames handed in) types NG regions with the bundle's classifier."""
    import time

    from linesight.config.daemon import DaemonConfig
    from linesight.daemon.model import ModelHolder
    from linesight.daemon.pipeline import Pipeline
    from linesight.daemon.sources.base import Frame
    from linesight.daemon.sources.synthetic import SyntheticSource
    from linesight.export.bundle import load_bundle, write_bundle
    from linesight.export.images import read_image

    bundle, data, _, _ = typed_bundle
    b = load_bundle(bundle)
    b.manifest.thresholds.image = 0.0  # every frame NG, so every frame is analysed
    b.manifest.thresholds.pixel = 1e-6
    path = write_bundle(tmp_path / "ng.zip", b)
    cfg = DaemonConfig.model_validate({"model": {"bundle": str(path)}, "source": {"type": "synthetic", "name": "s"},
                                       "pipeline": {"deadline_ms": 60000}})
    holder = ModelHolder(cfg.model.bundle)
    holder.load()
    out, headers, alarms = [], [], []
    p = Pipeline(cfg, SyntheticSource(cfg.source), holder, lambda v, img, m, t, h: (out.append(v), headers.append(h)),
                 lambda code, msg, **k: alarms.append(code), station="a/b/c")
    img = read_image(sorted((data / "test" / "blowhole").iterdir())[0])
    p.process([p.admit(Frame(image=img, seq=0, host_ts_ns=time.time_ns(), source="s", frame_id=0))])
    v, h = out[0], headers[0]
    assert not alarms and v["defects_total"] >= 1
    d = v["defects"][0]
    assert d["type_source"] in ("learned", "rules") and "confidence" in d
    assert h["regions"][0]["learned_type"] is not None  # the classifier ran on this frame
    if d["type_source"] == "learned":
        assert d["type"] in ("blowhole", "crack", "uneven")
    else:
        assert d["learned_type"] == "unknown"


def test_spec_grades_by_the_learned_type():
    """A spec naming a learned type (declared under `types`) grades regions the classifier gave that type."""
    from pydantic import ValidationError

    from linesight.config.inspection import InspectionSpec
    from linesight.export import analysis as A
    from linesight.export.engine import Prediction

    rules = [{"name": "pit-reject", "types": ["pit"], "grade": "reject"}]
    with pytest.raises(ValidationError, match="unknown defect type 'pit'"):
        InspectionSpec.model_validate({"rules": rules})
    spec = InspectionSpec.model_validate({"types": ["crack", "pit", "stain"], "default_grade": "A", "rules": rules})
    rng = np.random.default_rng(3)
    protos = _protos(rng)
    emb, labels = [], []
    for i in range(18):
        kind = ["crack", "pit", "stain"][i % 3]
        f, m = _scene(rng, protos, kind)
        emb.append(embed_regions(f, [m])[0])
        labels.append(kind)
    clf = fit_classifier(np.stack(emb), labels, list(range(18)))
    for kind, verdict in (("pit", "NG"), ("stain", "OK")):
        f, m = _scene(rng, protos, kind)
        pred = Prediction(1.0, "NG", 0.5, m.astype(np.float32), features=f)
        a = A.analyze(pred, 0.5, spec=spec, classifier=clf)
        assert [r.type for r in a.regions] == [kind] and a.regions[0].type_source == "learned"
        assert a.decision.verdict == verdict, (kind, a.decision)


def test_knn_temperature_is_fitted_so_confidence_tracks_accuracy():
    from linesight.trainer.type_training import fit_temperature

    rng = np.random.default_rng(4)
    y = rng.integers(0, 3, 400)
    clean = rng.normal(0.95, 0.002, (400, 3))
    clean[np.arange(400), y] += 0.02  # the true class always clearly closest -> confident (small temperature)
    noisy = rng.normal(0.95, 0.01, (400, 3))  # similarities say nothing -> humble (large temperature)
    t_clean, t_noisy = fit_temperature(clean, y), fit_temperature(noisy, y)
    assert t_clean < 0.005 < t_noisy


def test_a_region_spread_by_the_receptive_field_is_typed_by_its_core(monkeypatch):
    """Types are learned from tight ground-truth masks; a map region spreads far past the defect (bench_daemon:
    one scratch lifted ~60 % of a 224² frame). Typing the whole region averages in normal texture."""
    from linesight.export import analysis as A
    from linesight.export.analysis import learned
    from linesight.export.engine import Prediction

    rng = np.random.default_rng(3)
    protos = _protos(rng)
    emb, labels = [], []
    for i in range(30):
        f, m = _scene(rng, protos, ["crack", "pit", "stain"][i % 3])
        emb.append(embed_regions(f, [m])[0])
        labels.append(["crack", "pit", "stain"][i % 3])
    clf = fit_classifier(np.stack(emb), labels, list(range(30)), input_hw=(S, S))
    answers = {}
    for core in (A.TYPE_CORE, 0.0):
        monkeypatch.setattr(learned, "TYPE_CORE", core)  # region_core reads it there
        right = 0
        for kind in ("crack", "pit", "stain") * 3:
            f, m = _scene(rng, protos, kind)
            amap = np.zeros((S, S), np.float32)
            amap[4:60, 4:60] = 1.0  # the halo: one region, most of the frame
            amap[m] = 3.0  # the defect itself
            pred = Prediction(score=3.0, verdict="NG", threshold=2.0, anomaly_map=amap, features=f)
            (r,) = A.analyze(pred, 0.5, classifier=clf).regions
            right += r.type == kind
        answers[core] = right
    assert answers[0.85] == 9 and answers[0.0] <= 3, answers


def test_extending_a_classifier_adds_examples_and_new_types_and_refits_logreg():
    from linesight.trainer.type_training import extend_classifier, fit_classifier

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(6, 8)) + 3, rng.normal(size=(6, 8)) - 3
    for method in ("knn", "logreg"):
        clf = fit_classifier(np.concatenate([a, b]), ["a"] * 6 + ["b"] * 6, list(range(12)), method=method)
        c = rng.normal(size=(2, 8)) * 0.1 + np.array([3, -3] * 4)
        grown = extend_classifier(clf, c, ["c", "c"], "test")
        assert grown.labels == ["a", "b", "c"] and len(grown.embeddings) == 14 and list(grown.targets[-2:]) == [2, 2]
        assert (grown.floor, grown.temperature, grown.info["learned_examples"]) == (clf.floor, clf.temperature,
                                                                                  {"c": 2})
        assert [x.type for x in grown.predict_embeddings(c)] == ["c", "c"]
        assert grown.logreg is None if method == "knn" else grown.logreg.shape == (9, 5)
    with pytest.raises(LinesightError, match="'unknown' is the classifier's answer"):
        extend_classifier(clf, c[:1], ["unknown"], "test")
