"""Scales and tiles: view geometry, seamless stitching, multi-scale bundles through the one engine."""
from __future__ import annotations

import json

import numpy as np
import pytest

from linesight.config.manifest import ScaleInfo
from linesight.export.preprocess import PreprocessSpec
from linesight.export.views import iter_tiles, make_view, render

SPEC = PreprocessSpec(96, 96)
TILES = ScaleInfo(name="t", mode="tiles", pixels_per_input=0.5, overlap=32, bank_file="x", n_bank=1)


@pytest.mark.parametrize("hw", [(50, 50), (200, 333), (97, 1500), (96, 96)])
def test_every_cell_is_owned_by_exactly_one_tile(hw):
    v = make_view(hw, TILES, SPEC, 8)
    count = np.zeros(v.grid_hw, int)
    for gy, gx, ty, tx in v.keep():
        count[gy, gx] += 1
        assert ty.start >= 0 and ty.stop <= 12 and tx.start >= 0 and tx.stop <= 12
    assert (count == 1).all()
    assert v.plane_hw[0] >= 96 and v.plane_hw[0] % 8 == 0
    centres = lambda n: int(np.sum(np.arange(n // 8 + 2) * 8 + 4 < n))  # noqa: E731  cells centred on the canvas
    assert v.valid_cells().sum() == centres(v.canvas_hw[0]) * centres(v.canvas_hw[1])
    assert v.canvas_hw == (round(hw[0] / 0.5), round(hw[1] / 0.5))


def test_stitched_tiles_reassemble_the_plane():
    """Per-tile grids that hold the plane's own cell values stitch back to exactly that plane."""
    frame = np.random.default_rng(0).integers(0, 255, (150, 420), np.uint8)
    v = make_view(frame.shape, TILES, SPEC, 8)
    plane = render(frame, v)
    truth = plane[::8, ::8][: v.grid_hw[0], : v.grid_hw[1]].astype(np.float32)
    out = np.full(v.grid_hw, -1.0, np.float32)
    for (y, x), (gy, gx, ty, tx) in zip(v.tiles, v.keep()):
        tile_grid = plane[y:y + 96:8, x:x + 96:8].astype(np.float32)
        out[gy, gx] = tile_grid[ty, tx]
    assert np.array_equal(out, truth)
    assert len(v.tiles) > 4 and v.canvas_hw == (300, 840)


def test_letterbox_keeps_aspect_and_marks_padding_invalid():
    spec = PreprocessSpec(96, 96, resize="letterbox")
    whole = ScaleInfo(name="whole", mode="whole", bank_file="x", n_bank=1)
    v = make_view((100, 300), whole, spec, 8)
    assert v.canvas_hw == (32, 96) and v.offset_yx == (32, 0)
    valid = v.valid_cells()
    assert valid[4:8].all() and not valid[:4].any() and not valid[8:].any()
    amap = np.arange(96 * 96, dtype=np.float32).reshape(96, 96)
    assert v.to_frame(amap).shape == (100, 300)


def test_tiles_are_batched_with_bounded_size():
    frames = [np.zeros((120, 500), np.uint8), np.zeros((60, 60, 3), np.uint16)]
    views = [make_view(f.shape[:2], TILES, SPEC, 8) for f in frames]
    planes = [render(f, v) for f, v in zip(frames, views)]
    seen = []
    for batch, chunk in iter_tiles(planes, views, SPEC, 5):
        assert batch.shape[0] == len(chunk) <= 5 and batch.shape[1:] == (3, 96, 96) and batch.dtype == np.float32
        seen += chunk
    assert seen == [(i, t) for i, v in enumerate(views) for t in range(len(v.tiles))]


def test_plan_from_defect_size():
    from linesight.trainer.plan import make_plan

    scales, why = make_plan((2048, 8192), (8, 200), 224, letterbox=True, overlap=32)
    assert [s.mode for s in scales][0] == "tiles" and scales[0].pixels_per_input == pytest.approx(8 / 12, rel=1e-3)
    assert len(scales) >= 2 and any("fusion" in w for w in why)
    one, _ = make_plan((224, 224), (30, 100), 224, letterbox=False, overlap=32)
    assert [s.mode for s in one] == ["whole"]


def test_multiscale_bundle_through_the_engine(small_dataset, tmp_path):
    """Fit two scales (whole + tiles) on real images; the engine fuses them and maps at frame size."""
    from linesight.config.fit import preset
    from linesight.export.engine import Engine
    from linesight.export.images import read_image
    from linesight.trainer.fit import fit

    out = tmp_path / "ms"
    b = fit(small_dataset, out, preset("fast", weights="none", input_size=96, embedding_dim=32, coreset={"ratio": 0.05},
                                       views={"scales": [0, 1.5], "resize": "letterbox"}))
    m = b.manifest
    assert [s.mode for s in m.scales] == ["whole", "tiles"] and m.plan.fusion == "max_normalised"
    assert all(s.good_max > s.good_median for s in m.scales)
    manifest = json.loads((out / "manifest.json").read_text())
    assert "banks/scale1.npy" in manifest["files"] and manifest["preprocess"]["resize"] == "letterbox"
    eng = Engine(out)
    assert eng.check_golden() == []
    img = read_image(next((small_dataset / "test" / "blowhole").iterdir()))
    p = eng.predict(img)
    assert p.anomaly_map.shape == img.shape[:2] and p.score >= 0
    assert {"scale:whole", "scale:tiles@1.5"} <= set(p.timings_ms)
    good = read_image(next((small_dataset / "test" / "good").iterdir()))
    big = np.tile(good, (2, 3)) if good.ndim == 2 else np.tile(good, (2, 3, 1))
    q = eng.predict(big)  # a frame larger than any training frame: more tiles, same engine
    assert q.anomaly_map.shape == big.shape[:2] and np.isfinite(q.score)


def test_fit_plan_from_cli(small_dataset, tmp_path, capsys):
    from linesight.cli import main

    rc = main(["fit", str(small_dataset), "-o", str(tmp_path / "p"), "--weights", "none", "--input-size", "96",
               "--embedding-dim", "32", "--coreset-ratio", "0.05", "--defect-size", "4", "400"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["scales"]) >= 2 and any("asked: defects of 4..400" in line for line in out["plan"])
    rc = main(["fit", str(small_dataset), "-o", str(tmp_path / "q"), "--weights", "none", "--scales", "0",
               "--defect-size", "4", "40"])
    assert rc == 2 and "either defect_size" in capsys.readouterr().err


def test_daemon_refuses_a_bundle_too_coarse_for_the_station(small_bundle):
    """model.min_defect_px: a whole-frame bundle cannot promise 2-px defects; the station refuses it."""
    from linesight.daemon.model import ModelHolder, ModelRefused
    from linesight.export.engine import Engine

    finest = Engine(small_bundle).smallest_defect_px()
    assert finest > 2
    with pytest.raises(ModelRefused, match="min_defect_px"):
        ModelHolder(small_bundle, min_defect_px=2).load()
    assert ModelHolder(small_bundle, min_defect_px=finest * 1.5).load() is not None


def test_ivf_index_matches_exact_scores_closely(small_dataset, tmp_path):
    """knn ivf: centroids stored in the bundle (same lists on every load), scores close to exact kNN."""
    import numpy as np

    from linesight.config.fit import preset
    from linesight.export.engine import Engine
    from linesight.export.images import read_image
    from linesight.trainer.fit import fit

    common = dict(weights="none", input_size=96, embedding_dim=32, coreset={"ratio": 0.2})
    fit(small_dataset, tmp_path / "flat", preset("fast", **common))
    fit(small_dataset, tmp_path / "ivf", preset("fast", index={"kind": "ivf", "ivf_nprobe": 8}, **common))
    flat, ivf = Engine(tmp_path / "flat"), Engine(tmp_path / "ivf")
    assert ivf.manifest.scoring.index == "ivf" and ivf.manifest.scales[0].ivf_file
    assert ivf.check_golden() == []  # rebuilt from the stored centroids: the same scores as at fit
    imgs = [read_image(p) for p in sorted((small_dataset / "test").rglob("*.*"))[:6]]
    assert len(imgs) == 6 and flat.predict_batch([]) == []
    a = np.array([p.score for p in flat.predict_batch(imgs)])
    b = np.array([p.score for p in ivf.predict_batch(imgs)])
    assert np.all(b >= a - 1e-4)  # approximate neighbours are never nearer than the exact ones
    assert np.allclose(a, b, rtol=0.15)


@pytest.mark.parametrize("hw, scale, spec", [
    ((2048, 2448), ScaleInfo(name="whole", mode="whole", bank_file="x", n_bank=1), PreprocessSpec(224, 224)),
    ((2048, 2448), TILES.model_copy(update={"pixels_per_input": 4.0}), PreprocessSpec(224, 224)),
    ((50, 70), ScaleInfo(name="whole", mode="whole", bank_file="x", n_bank=1), SPEC),  # enlarged
    ((1000, 60), ScaleInfo(name="whole", mode="whole", bank_file="x", n_bank=1), SPEC),  # one axis each way
    ((60, 500), ScaleInfo(name="whole", mode="whole", bank_file="x", n_bank=1),
     PreprocessSpec(96, 96, resize="letterbox")),
    ((150, 420), TILES, SPEC),
    ((333, 200), TILES.model_copy(update={"pixels_per_input": 1.5}), SPEC),
], ids=["whole-5mp", "tiles-5mp", "whole-up", "whole-mixed", "letterbox", "tiles-up", "tiles-down"])
def test_crop_coverage_is_the_frame_mask_coverage(hw, scale, spec):
    """A region given as a crop covers the grid exactly as its frame-size mask does (cv2's resizes), in every
    resize regime cv2 has: region typing needs no frame-size mask per region."""
    from linesight.export.views import MaskCrop

    v = make_view(hw, scale, spec, 8)
    rng = np.random.default_rng(hw[0])
    for _ in range(4):
        m = np.zeros(hw, bool)
        y, x = int(rng.integers(0, hw[0])), int(rng.integers(0, hw[1]))
        m[y:y + int(rng.integers(1, hw[0] // 2 + 2)), x:x + int(rng.integers(1, hw[1] // 2 + 2))] = True
        m &= rng.random(hw) < 0.7
        crop = MaskCrop.of(m)
        assert crop.mask.size < m.size or m.all()
        assert np.allclose(v.crop_coverage(crop), v.coverage(m), rtol=0, atol=1e-6)


def test_box_then_area_resampling_averages_the_same_pixels_and_old_bundles_keep_one_area_pass(small_bundle):
    """New fits record box-area-down (a k x k box mean, then area: ~10x faster on camera frames); a manifest that
    says area-down/linear-up (every bundle before) is resized exactly as it was fitted."""
    import cv2

    from linesight.export.bundle import load_bundle
    from linesight.export.preprocess import AREA, BOX_AREA, resize_native

    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (2048, 2448), dtype=np.uint8)
    blocks = img.reshape(128, 16, 153, 16).mean(axis=(1, 3))  # 16 x 16 box means: exact for this size
    box = resize_native(img, (128, 153), BOX_AREA)
    assert np.abs(box.astype(float) - blocks).max() <= 1.0  # two roundings to uint8 only
    np.testing.assert_array_equal(resize_native(img, (128, 128), AREA),
                                  cv2.resize(img, (128, 128), interpolation=cv2.INTER_AREA))
    odd = rng.integers(0, 255, (2050, 2449), dtype=np.uint8)  # not a multiple of k: edge rows repeated, none lost
    odd[-1, :] = 255
    assert resize_native(odd, (128, 128), BOX_AREA)[-1, :].mean() > resize_native(odd[:-1], (128, 128),
                                                                                  BOX_AREA)[-1, :].mean()
    flat = np.full((2050, 2449), 77, np.uint8)
    assert (resize_native(flat, (128, 128), BOX_AREA) == 77).all()
    b = load_bundle(small_bundle)
    assert b.manifest.preprocess.interpolation == BOX_AREA  # what new fits record
    raw = b.manifest.preprocess.model_dump()
    raw.pop("interpolation")
    from linesight.config.manifest import PreprocessInfo

    assert PreprocessInfo.model_validate(raw).interpolation == AREA  # a manifest written before: its own resampling
