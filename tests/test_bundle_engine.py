"""Trainer -> bundle -> engine on a small real subset of magnetic_tile (random-init weights: we test the
machinery here, not accuracy)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from linesight.errors import BundleError, DataError
from linesight.export.bundle import load_bundle
from linesight.export.engine import Engine
from linesight.export.images import read_image


@pytest.fixture(scope="module")
def dataset(small_dataset) -> Path:
    return small_dataset


@pytest.fixture(scope="module")
def bundle_dir(small_bundle) -> Path:
    return small_bundle


def test_bundle_contents_and_manifest(bundle_dir):
    names = {p.name for p in bundle_dir.iterdir()}
    assert {"manifest.json", "backbone.onnx", "memory_bank.npy", "golden"} <= names
    raw = json.loads((bundle_dir / "manifest.json").read_text())
    assert raw["schema"] == "linesight.bundle/1"
    assert raw["backbone"]["weights"] == {"source": "none", "pretrained": False, "detail": "random init (seeded)",
                                          "sha256": None, "package": None, "training": None}
    assert raw["backbone"]["name"] == "efficientnet_lite0" and raw["backbone"]["layers"] == ["_blocks.4", "_blocks.10"]
    assert raw["preprocess"]["mean"] == pytest.approx([127 / 255] * 3)  # the normalisation lite was trained with
    assert "features not pretrained: accuracy will be poor" in raw["warnings"]
    assert set(raw["files"]) >= {"backbone.onnx", "memory_bank.npy"}
    assert raw["onnx"]["parity_max_abs_diff"] <= raw["onnx"]["parity_tolerance"]
    assert raw["thresholds"]["policy"] == "no_false_reject" and np.isfinite(raw["thresholds"]["image"])
    assert len(raw["golden"]) == min(3, raw["dataset"]["n_holdout"]) >= 1 and len(raw["dataset"]["fingerprint"]) == 64
    gh, gw = raw["features"]["grid"]
    assert raw["memory"]["n_patches"] == raw["dataset"]["n_train"] * gh * gw
    bank = np.load(bundle_dir / "memory_bank.npy", allow_pickle=False)
    assert bank.shape == (raw["memory"]["n_bank"], 64) and bank.dtype == np.float32


def test_zip_round_trip_scores_identically(bundle_dir, tmp_path, dataset):
    from linesight.export.bundle import write_bundle

    b = load_bundle(bundle_dir)
    z = write_bundle(tmp_path / "m.zip", b)
    assert z.stat().st_mode & 0o777 == 0o644 and bundle_dir.stat().st_mode & 0o777 == 0o755  # service user reads
    img = read_image(next((dataset / "test" / "crack").iterdir()))
    a, bz = Engine(bundle_dir).predict(img), Engine(z).predict(img)
    assert a.score == pytest.approx(bz.score, rel=1e-6)
    assert np.allclose(a.anomaly_map, bz.anomaly_map)


def test_golden_images_reproduce(bundle_dir):
    assert Engine(bundle_dir).check_golden() == []


def test_knn_scores_match_brute_force(bundle_dir, dataset):
    eng = Engine(bundle_dir)
    img = read_image(next((dataset / "test" / "blowhole").iterdir()))
    from linesight.export.preprocess import preprocess_batch

    feats = eng.features(preprocess_batch([img], eng.spec))
    patch, _, _ = eng._knn(feats, eng.scales[0])  # the engine's kNN step, on whole-frame features
    flat = feats[0].reshape(feats.shape[1], -1).T.astype(np.float64)
    bank = eng.bundle.bank.astype(np.float64)
    d = np.sqrt(((flat[:, None, :] - bank[None]) ** 2).sum(-1)).min(axis=1)
    assert np.allclose(patch.reshape(-1), d, rtol=1e-4, atol=1e-4)
    assert patch.max() == pytest.approx(d.max(), rel=1e-4)
    pred = eng.predict(img)
    assert pred.anomaly_map.shape == img.shape[:2] and pred.anomaly_map.dtype == np.float32
    assert pred.score == pytest.approx(d.max(), rel=1e-4)


def test_batch_equals_single(bundle_dir, dataset):
    eng = Engine(bundle_dir)
    imgs = [read_image(p) for p in sorted((dataset / "test" / "good").iterdir())[:3]]
    batch = eng.predict_batch(imgs)
    for img, b in zip(imgs, batch):
        assert eng.predict(img).score == pytest.approx(b.score, rel=1e-4)


def test_odd_images(bundle_dir, tmp_path):
    eng = Engine(bundle_dir)
    rng = np.random.default_rng(0)
    cases = {
        "gray16": rng.integers(0, 65535, (120, 90), dtype=np.uint16),
        "bgr8": rng.integers(0, 255, (50, 70, 3), dtype=np.uint8),
        "bgra8": rng.integers(0, 255, (40, 40, 4), dtype=np.uint8),
        "tiny": rng.integers(0, 255, (3, 3), dtype=np.uint8),
        "huge": rng.integers(0, 255, (3000, 4000), dtype=np.uint8),
    }
    for name, img in cases.items():
        path = tmp_path / f"{name}.png"
        cv2.imwrite(str(path), img)
        back = read_image(path)
        assert back.dtype == img.dtype, name
        pred = eng.predict(back)
        assert pred.anomaly_map.shape == img.shape[:2] and np.isfinite(pred.score), name
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(DataError, match="corrupt.png"):
        read_image(tmp_path / "corrupt.png")
    with pytest.raises(DataError, match="shape"):
        eng.predict(np.zeros((10, 10, 2), np.uint8))


def test_tampered_truncated_wrong_schema(bundle_dir, tmp_path):
    bad = tmp_path / "tampered"
    shutil.copytree(bundle_dir, bad)
    bank = np.load(bad / "memory_bank.npy")
    bank[0, 0] += 1
    np.save(bad / "memory_bank.npy", bank)
    with pytest.raises(BundleError, match="memory_bank.npy does not match its sha256"):
        load_bundle(bad)

    trunc = tmp_path / "trunc"
    shutil.copytree(bundle_dir, trunc)
    data = (trunc / "backbone.onnx").read_bytes()
    (trunc / "backbone.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(BundleError, match="backbone.onnx"):
        load_bundle(trunc)

    schema = tmp_path / "schema"
    shutil.copytree(bundle_dir, schema)
    raw = json.loads((schema / "manifest.json").read_text())
    raw["schema"] = "linesight.bundle/99"
    (schema / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="schema"):
        load_bundle(schema)

    z = tmp_path / "cut.zip"
    from linesight.export.bundle import write_bundle

    write_bundle(z, load_bundle(bundle_dir))
    z.write_bytes(z.read_bytes()[:1000])
    with pytest.raises(BundleError, match="zip"):
        load_bundle(z)

    pickled = tmp_path / "pickled"
    shutil.copytree(bundle_dir, pickled)
    np.save(pickled / "memory_bank.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    raw = json.loads((pickled / "manifest.json").read_text())
    import hashlib

    raw["files"]["memory_bank.npy"] = hashlib.sha256((pickled / "memory_bank.npy").read_bytes()).hexdigest()
    (pickled / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="not a plain numpy array"):
        load_bundle(pickled)

    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(tmp_path / "nope")


def test_cli_user_errors_are_one_line(tmp_path, bundle_dir):
    exe = [sys.executable, "-m", "linesight"]
    r = subprocess.run(exe + ["predict", str(tmp_path / "missing.zip"), "x.png"], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "does not exist" in r.stderr
    r = subprocess.run(exe + ["fit", str(tmp_path), "-o", str(tmp_path / "o"), "--weights", "none"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "holds no images" in r.stderr
    r = subprocess.run(exe + ["fit", str(tmp_path), "-o", str(tmp_path / "o"), "--weights", str(tmp_path / "w.pth")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "not 'imagenet'" in r.stderr
    img = tmp_path / "ok.png"
    cv2.imwrite(str(img), np.full((64, 64), 128, np.uint8))
    r = subprocess.run(exe + ["predict", str(bundle_dir), str(img), str(tmp_path / "missing.png"),
                              "--overlay", str(tmp_path / "ov")], capture_output=True, text=True)
    assert r.returncode == 2 and r.stdout == "" and "missing.png: no such file or folder" in r.stderr  # before scoring
    r = subprocess.run(exe + ["predict", str(bundle_dir), str(img), "--overlay", str(tmp_path / "ov")],
                       capture_output=True, text=True, check=False)
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert r.returncode == 0 and rows[0]["verdict"] in ("OK", "NG")
    assert cv2.imread(rows[0]["overlay"]) is not None


def test_local_weights_file_is_used(tmp_path):
    import torch

    from linesight.trainer.backbones import build_backbone, load_weights

    torch.manual_seed(1)
    src = build_backbone("resnet18")
    path = tmp_path / "resnet18.pth"
    torch.save(src.state_dict(), path)
    dst = build_backbone("resnet18")
    res = load_weights(dst, "resnet18", str(path))
    assert res.source == "file" and res.pretrained and len(res.sha256) == 64
    assert torch.equal(dst.layer3[0].conv1.weight, src.layer3[0].conv1.weight)
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    from linesight.errors import LinesightError

    with pytest.raises(LinesightError, match="do not fit"):
        load_weights(build_backbone("resnet18"), "resnet18", str(tmp_path / "bad.pth"))


def test_state_dict_keys_match_torchvision_layout():
    from linesight.trainer.backbones import build_backbone

    keys = set(build_backbone("wide_resnet50_2").state_dict())
    assert {"conv1.weight", "bn1.running_mean", "layer1.0.downsample.0.weight", "layer3.5.conv3.weight",
            "layer4.2.bn3.num_batches_tracked", "fc.bias"} <= keys
    assert build_backbone("wide_resnet50_2").layer1[0].conv2.weight.shape == (128, 128, 3, 3)


def test_imagenet_offline_fails_fast_with_instructions(monkeypatch, tmp_path):
    import torch

    from linesight.errors import LinesightError
    from linesight.trainer.backbones import build_backbone, load_weights

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # empty cache, so a download is attempted
    monkeypatch.setenv("no_proxy", "")
    with pytest.raises(LinesightError, match="--weights /path/to/resnet18-f37072fd.pth"):
        load_weights(build_backbone("resnet18"), "resnet18", "imagenet")


def test_bank_rows_know_their_training_patch(bundle_dir, dataset):
    """Evidence: each bank row points at (training image, patch y, x) whose feature it is."""
    from linesight.export.preprocess import preprocess_batch

    eng = Engine(bundle_dir)
    assert eng.scales[0].locations is not None and len(eng.train_images) == eng.manifest.dataset.n_train
    for row in (0, len(eng.bundle.bank) // 2, len(eng.bundle.bank) - 1):
        i, y, x = eng.scales[0].locations[row]
        img = read_image(dataset / "train" / "good" / eng.train_images[i])
        feat = eng.features(preprocess_batch([img], eng.spec))[0, :, y, x]
        assert np.allclose(feat, eng.bundle.bank[row], atol=1e-4)
    pred = eng.predict(read_image(next((dataset / "test" / "crack").iterdir())))
    ev = pred.nearest
    assert ev.image_name in eng.train_images and ev.distance == pytest.approx(pred.score, rel=1e-5)


def test_every_change_is_a_new_version_with_its_own_hash(small_bundle, small_dataset, tmp_path):
    """calibrate, roi and types each make a new version; the content hash tells every state apart; roi after a
    calibration marks the thresholds stale."""
    import shutil

    from linesight.export.bundle import load_bundle
    from linesight.trainer.evaluate import STALE_THRESHOLDS, calibrate, set_domain
    from linesight.trainer.types import train_types

    b = tmp_path / "b"
    shutil.copytree(small_bundle, b)
    seen = [load_bundle(b).identity]
    calibrate(b, small_dataset)
    seen.append(load_bundle(b).identity)
    assert STALE_THRESHOLDS not in load_bundle(b).manifest.warnings
    set_domain(b, "auto")
    seen.append(load_bundle(b).identity)
    assert STALE_THRESHOLDS in load_bundle(b).manifest.warnings
    train_types(b, small_dataset, folds=2)
    seen.append(load_bundle(b).identity)
    assert [s["version"] for s in seen] == [seen[0]["version"] + k for k in range(4)]
    assert len({s["hash"] for s in seen}) == 4
    assert Engine(b).predict(read_image(next((small_dataset / "test" / "good").iterdir()))).model == seen[-1]
    calibrate(b, small_dataset)  # recalibrating clears the stale mark
    assert STALE_THRESHOLDS not in load_bundle(b).manifest.warnings


def test_verdict_keeps_the_model_that_decided_across_a_swap(small_bundle, tmp_path):
    """The pipeline labels a verdict with the prediction's model and threshold, not whatever is loaded when it
    is emitted (a hot swap between inference and emit once relabelled verdicts)."""
    from linesight.config.daemon import DaemonConfig
    from linesight.daemon.model import ModelHolder
    from linesight.daemon.pipeline import Pipeline
    from linesight.daemon.sources.base import Frame
    from linesight.export.bundle import load_bundle, write_bundle

    v2 = load_bundle(small_bundle)
    v2.manifest.model.version += 1
    v2.manifest.thresholds.pixel *= 2
    other = write_bundle(tmp_path / "v2", v2)
    holder = ModelHolder(small_bundle)
    old = holder.load()
    img = np.full((64, 64), 128, np.uint8)
    pred = old.predict(img)
    holder.load(other)  # the swap lands after inference, before the verdict is emitted
    published: list = []
    cfg = DaemonConfig.model_validate({"model": {"bundle": str(small_bundle)},
                                       "source": {"type": "synthetic", "name": "s", "width": 64, "height": 64}})
    pipe = Pipeline(cfg, source=None, holder=holder, publish=lambda *a: published.append(a),
                    alarm=lambda *a, **k: None, station="s1/l1/cam1")
    v = pipe._emit(pipe.admit(Frame(image=img, seq=0, host_ts_ns=0, source="s")), prediction=pred)
    assert v["model"] == old.identity != holder.info
    assert published[0][3] == old.pixel_threshold != holder.engine.pixel_threshold


def test_linesight_threads_is_read_in_one_place_and_a_bad_value_is_one_line(bundle_dir, monkeypatch):
    from linesight.errors import ConfigError
    from linesight.export.features import thread_count

    monkeypatch.setenv("LINESIGHT_THREADS", "2")
    assert thread_count(None) == 2 and thread_count(3) == 3
    monkeypatch.setenv("LINESIGHT_THREADS", "0")
    assert thread_count(None) is None
    monkeypatch.setenv("LINESIGHT_THREADS", "two")
    with pytest.raises(ConfigError, match="LINESIGHT_THREADS='two': use a whole number"):
        Engine(bundle_dir)
