"""Synthetic defect generator: determinism, exact masks, every kind, size control, speed, MVTec output."""
from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from linesight.errors import DataError
from linesight.trainer.data import load_images, open_dataset, read_mask
from linesight.trainer.synth import KINDS, DefectSynth, fractal, perlin, write_dataset


def texture(seed: int, h: int = 256, w: int = 256, channels: int = 0) -> np.ndarray:
    """A tile-like textured image (grain + gradient) in [0.2, 0.8], so every fill visibly changes pixels."""
    rng = np.random.default_rng(seed)
    grain = cv2.GaussianBlur(rng.random((h, w)).astype(np.float32), (0, 0), 1.5)
    img = 0.2 + 0.3 * grain / grain.max() + 0.3 * np.linspace(0, 1, w, dtype=np.float32)[None, :]
    return np.repeat(img[..., None], channels, 2) if channels else img


def test_perlin_is_smooth_and_bounded():
    rng = np.random.default_rng(0)
    n = perlin(64, 80, (4, 5), rng)
    assert n.shape == (64, 80) and np.abs(n).max() < 0.8 and n.std() > 0.05
    assert np.abs(np.diff(n, axis=1)).max() < 0.2  # gradient noise, not white noise
    f = fractal(50, 50, 2, 3, rng)
    assert f.shape == (50, 50) and np.abs(f).max() <= 1.0


def test_deterministic_with_seed():
    synth = DefectSynth([texture(9)])
    img = texture(1)
    a = synth(img, np.random.default_rng(42))
    b = synth(img, np.random.default_rng(42))
    c = synth(img, np.random.default_rng(43))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
    assert not np.array_equal(a[1], c[1])
    assert np.array_equal(img, texture(1))  # the input is never modified


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("channels", [0, 3])
def test_mask_is_exactly_where_pixels_changed(kind: str, channels: int):
    synth = DefectSynth([texture(7, 300, 200, channels)], kinds=[kind], count=(1, 2))
    rng = np.random.default_rng(5)
    for i in range(15):
        img = texture(i, 256, 192, channels)
        out, mask, kinds = synth(img, rng)
        assert out.shape == img.shape and out.dtype == np.float32 and mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 1} and mask.any() and set(kinds) == {kind}
        diff = np.abs(out - img)
        changed = diff.max(axis=2) > 0 if channels else diff > 0
        assert not (changed & (mask == 0)).any(), f"{kind}: pixels changed outside the mask"
        # soft edges ramp inside the mask; allow a thin rim of (almost) unchanged pixels
        assert changed[mask > 0].mean() > 0.95, f"{kind}: mask claims pixels that did not change"
        assert out.min() >= 0 and out.max() <= 1


def test_size_range_is_respected():
    lo, hi = 0.1, 0.2
    rng = np.random.default_rng(3)
    for kind in KINDS:
        synth = DefectSynth([texture(8)], kinds=[kind], size_range=(lo, hi), count=(1, 1))
        for i in range(20):
            _, mask, _ = synth(texture(i, 240, 320), rng)
            ys, xs = np.nonzero(mask)
            extent = max(np.ptp(ys), np.ptp(xs)) + 1
            assert extent <= hi * 240 + 1, f"{kind}: defect of {extent} px exceeds {hi} x 240"
    big = DefectSynth([texture(8)], kinds=["uneven"], size_range=(0.5, 0.6), count=(1, 1))
    small = DefectSynth([texture(8)], kinds=["uneven"], size_range=(0.05, 0.06), count=(1, 1))
    assert big(texture(0), rng)[1].sum() > 10 * small(texture(0), rng)[1].sum()


def test_count_controls_number_of_defects():
    synth = DefectSynth([texture(8)], kinds=["spot"], size_range=(0.05, 0.08), count=(3, 3))
    _, mask, kinds = synth(texture(0), np.random.default_rng(0))
    assert len(kinds) == 3
    n_regions = cv2.connectedComponents(mask)[0] - 1
    assert 1 <= n_regions <= 3


def test_fast_enough_for_on_the_fly_training():
    synth = DefectSynth([texture(8, channels=3)])
    rng = np.random.default_rng(0)
    img = texture(1, channels=3)
    synth(img, rng)
    t = time.perf_counter()
    for _ in range(50):
        synth(img, rng)
    ms = (time.perf_counter() - t) / 50 * 1000
    assert ms < 5.0, f"{ms:.2f} ms per 256x256 RGB image"


def test_bad_arguments_are_reported():
    with pytest.raises(DataError, match="unknown defect kind"):
        DefectSynth(kinds=["dent"])
    with pytest.raises(DataError, match="size range"):
        DefectSynth(size_range=(0.5, 0.1))
    with pytest.raises(DataError, match="count"):
        DefectSynth(count=(0, 2))


def test_write_dataset_is_an_mvtec_folder(tmp_path: Path):
    good = tmp_path / "good"
    good.mkdir()
    for i in range(4):
        cv2.imwrite(str(good / f"g{i}.png"), (texture(i, 120, 160) * 255).astype(np.uint8))
    paths = sorted(good.iterdir())
    counts = write_dataset(paths, tmp_path / "out", 12, np.random.default_rng(0), DefectSynth(count=(1, 1)))
    assert sum(counts.values()) == 12 and "mixed" not in counts
    ds = open_dataset(tmp_path / "out")
    assert sorted(p.name for p in ds.train) == [p.name for p in paths]
    assert len(ds.test) == 12 and all(s.label == 1 and s.mask_path is not None for s in ds.test)
    imgs, kept, skipped = load_images([s.path for s in ds.test])
    assert not skipped
    for s, img in zip(ds.test, imgs):
        assert img.shape == (120, 160)
        assert read_mask(s, img.shape).any()
    # same seed, same images
    write_dataset(paths, tmp_path / "again", 12, np.random.default_rng(0), DefectSynth(count=(1, 1)))
    first = sorted((tmp_path / "out" / "test").rglob("*.png"))
    again = sorted((tmp_path / "again" / "test").rglob("*.png"))
    assert [p.relative_to(tmp_path / "out") for p in first] == [p.relative_to(tmp_path / "again") for p in again]
    assert all(p.read_bytes() == q.read_bytes() for p, q in zip(first, again))


def test_cli_synth(tmp_path: Path, capsys):
    from linesight.cli import main

    good = tmp_path / "good"
    good.mkdir()
    for i in range(3):
        cv2.imwrite(str(good / f"g{i}.png"), (texture(i, 64, 64, 3) * 255).astype(np.uint8))
    rc = main(["synth", str(good), "-o", str(tmp_path / "o"), "--n", "5", "--seed", "2", "--kinds", "crack",
               "spot", "--size-range", "0.1", "0.3", "--count", "1", "1"])
    assert rc == 0
    assert len(open_dataset(tmp_path / "o").test) == 5
    assert main(["synth", str(tmp_path / "nope"), "-o", str(tmp_path / "x"), "--n", "1"]) == 2
    assert "not a folder" in capsys.readouterr().err
