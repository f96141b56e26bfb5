"""Issue 13: the kNN index chosen per bank (and its accuracy gate) and the int8 graph (parity + AUROC gates)."""
from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest

from linesight.config.fit import FitConfig, preset
from linesight.trainer.compute import AUTO_FLAT_ROWS, choose_index, int8_verdict


def clustered(n: int, dim: int, centres: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Points around `centres` random centres (patch features are clustered like this, not uniform)."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, dim)).astype(np.float32) * 4
    lab = rng.integers(0, centres, n)
    return (c[lab] + rng.standard_normal((n, dim)).astype(np.float32)).astype(np.float32), lab


def queries(bank_like: tuple[np.ndarray, np.ndarray], n_images: int, per: int,
            seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n_images x per query patches near the data, and the image each belongs to."""
    x, _ = bank_like
    rng = np.random.default_rng(seed)
    n = n_images * per
    q = x[rng.choice(len(x), n)] + rng.standard_normal((n, x.shape[1])).astype(np.float32) * 0.5
    return np.ascontiguousarray(q, dtype=np.float32), np.repeat(np.arange(n_images), per)


def test_auto_picks_flat_for_small_banks():
    bank, _ = clustered(2000, 16, 20, 0)
    q, img = queries((bank, None), 4, 50, 1)
    info, cent, warning = choose_index(bank, q, img, 4, FitConfig())
    assert info.kind == "flat" and info.requested == "auto" and cent is None and warning is None
    assert str(AUTO_FLAT_ROWS) in info.reason and info.check is None


def test_auto_picks_hnsw_on_a_big_bank_with_the_smallest_ef_search_within_the_bound():
    from linesight.export.knn import hnsw_index, knn_search

    data = clustered(AUTO_FLAT_ROWS + 4000, 16, 200, 0)
    q, img = queries(data, 10, 100, 1)
    info, graph, warning = choose_index(data[0], q, img, 10, FitConfig())
    assert info.kind == "hnsw" and warning is None and graph.dtype == np.int32 and info.hnsw_m == 32
    assert info.check.passed and info.check.image_error_max <= 0.01 and info.check.patch_error_mean <= 0.01
    assert info.check.n_queries == 1000 and 0 < info.check.recall_at_1 <= 1
    assert all(not t.passed for t in info.tried)  # every smaller efSearch was measured and missed the bound
    assert [int(t.setting.split()[-1]) for t in info.tried] == [e for e in (16, 32, 64, 128) if e < info.ef_search]
    index = hnsw_index(data[0], graph, info.hnsw_m, info.ef_search, info.entry_point)  # what the engine loads
    d, _ = knn_search(index, None, q, 1, img)
    flat = np.sqrt(((q[:, None, :] - data[0][None]) ** 2).sum(-1)).min(axis=1)
    assert np.mean(np.abs(d[:, 0] - flat) / flat) == pytest.approx(info.check.patch_error_mean, abs=1e-4)


def test_hnsw_search_refines_each_images_top_patches():
    """The image score is the max patch score: each image's highest patches are searched again, wider."""
    from linesight.export.knn import REFINE_TOP, hnsw_index, knn_search, top_per_group
    from linesight.trainer.compute import build_hnsw

    s = np.array([5, 1, 9, 3, 7, 2, 8.0])
    assert sorted(top_per_group(s, np.array([0, 0, 0, 1, 1, 1, 2]), 2).tolist()) == [0, 2, 3, 4, 6]
    rng = np.random.default_rng(0)
    bank = rng.standard_normal((6000, 24)).astype(np.float32)  # unclustered: hard for a narrow HNSW search
    q = rng.standard_normal((40 * 64, 24)).astype(np.float32) * 1.5
    img = np.repeat(np.arange(40), 64)
    graph, entry = build_hnsw(bank)
    index = hnsw_index(bank, graph, 32, 2, entry)
    exact = np.sqrt(((q[:, None, :] - bank[None]) ** 2).sum(-1)).min(axis=1)
    plain = knn_search(index, None, q, 1)[0][:, 0]
    refined = knn_search(index, None, q, 1, img)[0][:, 0]
    changed = np.nonzero(refined < plain)[0]
    assert len(changed) and np.isin(changed, top_per_group(plain, img, REFINE_TOP)).all()  # only top patches move
    assert np.all(refined <= plain) and np.all(refined >= exact - 1e-4)

    def worst(d: np.ndarray) -> float:
        e, a = (np.maximum.reduceat(v, np.arange(0, len(v), 64)) for v in (exact, d))
        return float(np.max((a - e) / e))

    assert worst(refined) < worst(plain)


def test_ivf_tunes_nprobe_smallest_first():
    data = clustered(8000, 16, 100, 0)
    q, img = queries(data, 10, 100, 1)
    info, cent, warning = choose_index(data[0], q, img, 10, FitConfig(index={"kind": "ivf"}))
    assert info.kind == "ivf" and warning is None and cent.shape == (info.nlist, 16) and info.check.passed
    assert [int(t.setting.split()[-1]) for t in info.tried] == [p for p in (1, 2, 4, 8, 16) if p < info.nprobe]


def test_index_gate_says_no_to_a_bad_ivf_setting_and_falls_back_to_flat():
    """nprobe 1 of 256 lists on unclustered data misses most true neighbours: exact search instead, loudly."""
    rng = np.random.default_rng(0)
    bank = rng.standard_normal((4096, 32)).astype(np.float32)
    q = rng.standard_normal((400, 32)).astype(np.float32)
    cfg = FitConfig(index={"kind": "ivf", "ivf_nlist": 256, "ivf_nprobe": 1})
    info, cent, warning = choose_index(bank, q, np.repeat(np.arange(4), 100), 4, cfg, where="scale whole")
    assert info.kind == "flat" and cent is None and info.requested == "ivf"
    assert warning and "scale whole" in warning and "exact search" in warning and info.reason == warning
    bad = info.tried[0]
    assert not bad.passed and bad.setting == "ivf nlist 256 nprobe 1" and bad.recall_at_1 < 0.5
    assert bad.image_error_max > 0.01


def test_index_check_on_big_banks_searches_whole_images_up_to_the_cap(monkeypatch):
    from linesight.trainer import compute

    monkeypatch.setattr(compute, "MAX_CHECK_QUERIES", 100)
    feats = np.arange(300, dtype=np.float32)[:, None]
    got, image, n = compute._some_images(feats, np.repeat(np.arange(10), 30), 10, seed=0)
    assert n == 3 and len(got) == 90 and np.array_equal(np.bincount(image), [30, 30, 30])
    assert all(np.ptp(got[image == i, 0]) == 29 for i in range(3))  # whole images, never part of one


def test_ivf_bundle_records_its_check_and_reproduces_it(small_dataset, tmp_path):
    """An explicit IVF on a tiny bank: checked at fit, its figures in the manifest, the engine runs it."""
    from linesight.export.engine import Engine
    from linesight.trainer.fit import fit

    b = fit(small_dataset, tmp_path / "ivf", preset("fast", weights="none", input_size=96, embedding_dim=32,
                                                    coreset={"ratio": 0.5}, index={"kind": "ivf", "max_error": 0.5}))
    info = b.manifest.scales[0].index
    assert info.kind == "ivf" and info.check.passed and info.nprobe == 1  # tuned: 1 is within a 50 % bound
    assert b.manifest.scoring.index == "ivf" and b.manifest.scoring.nprobe == 1
    assert info.check.n_images == 2 * b.manifest.dataset.n_holdout  # held-out good + synthetic defects
    eng = Engine(tmp_path / "ivf")
    assert type(eng.scales[0].index).__name__ == "IndexIVFFlat" and eng.scales[0].index.nprobe == 1
    assert eng.check_golden() == []


def test_fit_falls_back_to_flat_when_the_requested_index_fails_its_check(small_dataset, tmp_path):
    from linesight.export.engine import Engine
    from linesight.trainer.fit import fit

    b = fit(small_dataset, tmp_path / "bad", preset("fast", weights="none", input_size=96, embedding_dim=32,
                                                    coreset={"ratio": 1.0},
                                                    index={"kind": "ivf", "ivf_nlist": 256, "ivf_nprobe": 1}))
    info = b.manifest.scales[0].index
    assert info.kind == "flat" and not info.tried[0].passed
    assert any("exact search (flat) instead" in w for w in b.manifest.warnings)
    eng = Engine(tmp_path / "bad")
    assert type(eng.scales[0].index).__name__ == "IndexFlatL2"


def test_hnsw_bundle_runs_its_stored_graph_and_refuses_a_corrupt_one(small_dataset, tmp_path):
    from linesight.errors import BundleError
    from linesight.export.bundle import bank_bytes, load_bundle
    from linesight.export.engine import Engine
    from linesight.trainer.fit import fit

    fit(small_dataset, tmp_path / "h", preset("fast", weights="none", input_size=96, embedding_dim=32,
                                              coreset={"ratio": 0.5}, index={"kind": "hnsw"}))
    b = load_bundle(tmp_path / "h")
    info = b.manifest.scales[0].index
    assert info.kind == "hnsw" and info.check.passed and b.manifest.scales[0].hnsw_file in b.extras
    eng = Engine(b)
    assert type(eng.scales[0].index).__name__ == "IndexHNSWFlat" and eng.scales[0].index.hnsw.efSearch == info.ef_search
    assert eng.check_golden() == []  # the stored graph: the same neighbours as at fit
    graph = np.load(io.BytesIO(b.extras[b.manifest.scales[0].hnsw_file]), allow_pickle=False)
    graph[len(b.bank) + 3] = len(b.bank)  # a neighbour that is not a bank row
    b.extras[b.manifest.scales[0].hnsw_file] = bank_bytes(graph, np.int32)
    with pytest.raises(BundleError, match="HNSW graph"):
        Engine(b)


def test_old_bundles_without_per_scale_index_still_load(small_bundle):
    """Manifests before issue 13 carry only scoring.index: the engine reads that."""
    import json

    from linesight.export.engine import Engine

    raw = json.loads((small_bundle / "manifest.json").read_text())
    assert raw["scales"][0]["index"]["kind"] == "flat"  # the fixture's tiny bank: auto -> exact
    from linesight.export.bundle import load_bundle

    b = load_bundle(small_bundle)
    b.manifest.scales[0].index = None
    assert Engine(b).scales[0].index.ntotal == b.bank.shape[0]


# ------------------------------------------------------------------ int8


def test_int8_verdict_refuses_an_auroc_drop_and_keeps_a_match():
    from linesight.config.manifest import Int8Info

    labels = np.repeat([0, 1], 50)
    rng = np.random.default_rng(0)
    f = np.where(labels == 1, 2.0, 1.0) + rng.normal(0, 0.3, 100)
    base = {"kept": False, "reason": "", "format": "x", "calibration_images": 4, "parity_tolerance": 0.3,
            "auroc_max_drop": 0.005}
    same = int8_verdict(Int8Info(**base), f, f * 1.01, labels)
    assert same.kept and same.auroc_int8 == pytest.approx(same.auroc_float) and same.score_correlation > 0.99
    worse = int8_verdict(Int8Info(**base), f, f + rng.normal(0, 0.5, 100), labels)
    assert not worse.kept and worse.auroc_float - worse.auroc_int8 > 0.005 and "keeping the float graph" in worse.reason
    assert "synthetic" in worse.labels


@pytest.fixture(scope="module")
def graphs(small_dataset) -> tuple[bytes, bytes, np.ndarray]:
    """lite0 with its installed ImageNet weights at 96 px: the float graph, its int8 graph, held-out images."""
    from linesight.export.images import list_images, read_image
    from linesight.export.preprocess import preprocess_batch
    from linesight.trainer import onnx_export
    from linesight.trainer.backbones import input_spec
    from linesight.trainer.fit import build_model

    cfg = preset("fast", input_size=96)
    module, _ = build_model(cfg, "imagenet")
    spec = input_spec(cfg.backbone, 96, "stretch")
    with contextlib.redirect_stdout(io.StringIO()):
        fb = onnx_export.export_onnx(module, 96, 96)
    imgs = [read_image(p) for p in list_images(small_dataset / "train" / "good")]
    return fb, onnx_export.quantize_int8(fb, preprocess_batch(imgs[:12], spec)), preprocess_batch(imgs[12:], spec)


def test_int8_parity_passes_the_real_graph_and_refuses_a_corrupt_scale(graphs):
    import onnx
    from onnx import numpy_helper

    from linesight.trainer.onnx_export import INT8_PARITY_TOLERANCE, Int8ParityError, parity_int8

    fb, qb, held = graphs
    err = parity_int8(fb, qb, held)
    assert 0 < err <= INT8_PARITY_TOLERANCE  # int8 really differs from float, within the measured bound
    model = onnx.load_from_string(qb)
    inits = {i.name: i for i in model.graph.initializer}
    dq = next(n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
              and inits[n.input[0]].data_type == onnx.TensorProto.INT8)  # the first conv's weights
    scale = inits[dq.input[1]]
    scale.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scale) * 8, scale.name))
    with pytest.raises(Int8ParityError, match="relative RMS") as refused:
        parity_int8(fb, model.SerializeToString(), held)
    assert refused.value.error > INT8_PARITY_TOLERANCE


def test_int8_bundle_loads_and_scores_in_the_engine(small_dataset, tmp_path):
    import onnx

    from linesight.export.engine import Engine
    from linesight.export.images import read_image
    from linesight.trainer.fit import fit

    # the AUROC gate is unit-tested above; on 4 held-out images it is too coarse to pin down here
    b = fit(small_dataset, tmp_path / "int8", preset("fast", weights="imagenet", input_size=96,
                                                     quantize={"mode": "int8", "max_auroc_drop": 1.0},
                                                     holdout_fraction=0.25))
    m = b.manifest
    assert m.onnx.precision == "int8" and m.onnx.int8.kept
    assert m.onnx.int8.parity_rel_rms <= m.onnx.int8.parity_tolerance
    assert m.onnx.int8.auroc_float is not None and m.onnx.int8.calibration_images == 12
    ops = {n.op_type for n in onnx.load_from_string((tmp_path / "int8" / "backbone.onnx").read_bytes()).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # the bundle runs the int8 graph
    eng = Engine(tmp_path / "int8")
    assert eng.check_golden() == []
    img = read_image(next((small_dataset / "test" / "crack").iterdir()))
    p = eng.predict(img)
    assert np.isfinite(p.score) and p.score > 0 and p.anomaly_map.shape == img.shape[:2]
