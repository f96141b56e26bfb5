"""One tile loop for fit and the engine (views.scan), geometry cached per frame shape, and the frame-size
anomaly map built only when something reads it (an OK frame's verdict needs only the cell grid)."""
from __future__ import annotations

import numpy as np
import pytest

from linesight.export import engine as engine_mod
from linesight.export import views
from linesight.export.bundle import load_bundle
from linesight.export.engine import Engine
from linesight.export.images import read_image
from linesight.trainer import patches as fit_mod  # where fit extracts its training patches


def _images(dataset, kind: str, n: int) -> list[np.ndarray]:
    return [read_image(p) for p in sorted((dataset / "test" / kind).iterdir())[:n]]


def _tiled(small_bundle) -> Engine:
    """The small bundle's bank behind a tiles view (0.5 frame px per input px): several tiles per frame."""
    b = load_bundle(small_bundle)
    b.manifest.scales = [b.manifest.scales[0].model_copy(update={"name": "tiles@0.5", "mode": "tiles",
                                                                  "pixels_per_input": 0.5, "overlap": 32})]
    return Engine(b)


def test_fit_and_engine_run_the_same_scan(small_bundle, small_dataset, monkeypatch):
    assert fit_mod.scan is engine_mod.scan is views.scan  # one function object: no second copy of the loop
    calls = []

    def spy(who):
        def run(*args, **kwargs):
            calls.append(who)
            yield from views.scan(*args, **kwargs)
        return run

    monkeypatch.setattr(fit_mod, "scan", spy("fit"))
    monkeypatch.setattr(engine_mod, "scan", spy("engine"))
    eng = Engine(small_bundle)
    img = _images(small_dataset, "good", 1)[0]
    fit_mod.extract(eng.features, [img], [None], eng.scales[0].info, eng.spec, eng.stride, eng.MAX_TILES)
    eng.predict(img)
    assert calls == ["fit", "engine"]


@pytest.mark.parametrize("tiled", [False, True], ids=["whole", "tiles"])
def test_fit_and_engine_features_are_bitwise_equal(small_bundle, small_dataset, tiled):
    """Training/runtime parity: the cells fit puts in the bank carry exactly the features the engine scores."""
    eng = _tiled(small_bundle) if tiled else Engine(small_bundle)
    img = _images(small_dataset, "crack", 1)[0]
    if tiled:
        img = img[:100, :150]
    info = eng.scales[0].info
    feats, locs = fit_mod.extract(eng.features, [img], [None], info, eng.spec, eng.stride, eng.MAX_TILES)
    pred = eng.predict_batch([img], keep_features=True)[0]
    assert (len(pred.view.tiles) > 2) == tiled
    assert len(feats) == int(pred.view.valid_cells().sum())
    assert np.array_equal(feats, pred.features[:, locs[:, 1], locs[:, 2]].T)


def test_geometry_is_computed_once_per_frame_shape(small_bundle, small_dataset, monkeypatch):
    eng = _tiled(small_bundle)
    a, b = (img[:100, :150] for img in _images(small_dataset, "good", 2))
    pa, pb = eng.predict_batch([a], keep_features=True)[0], eng.predict_batch([b], keep_features=True)[0]
    assert pa.view is pb.view  # the second frame of the shape reused the first one's view ...
    assert pa.view.keep() is pb.view.keep() and pa.view.valid_cells() is pb.view.valid_cells()  # ... and its tables
    assert not pa.view.valid_cells().flags.writeable  # shared, so nobody may write into it
    assert eng.predict_batch([a[:90]], keep_features=True)[0].view is not pa.view  # another shape, another view


def test_roi_domain_is_resized_once_per_frame_shape(small_bundle, small_dataset, monkeypatch):
    import cv2

    from linesight.config.manifest import DomainInfo
    from linesight.export.domain import Domain

    b = load_bundle(small_bundle)
    b.manifest.domain = DomainInfo(mode="mask", mask_file="roi_mask.png")
    roi = np.zeros((10, 20), np.uint8)
    roi[:, :10] = 255
    b.extras["roi_mask.png"] = cv2.imencode(".png", roi)[1].tobytes()
    eng = Engine(b)
    made, cells = [], []
    of, cells_in = Domain.of, views.View.cells_in
    monkeypatch.setattr(Domain, "of", lambda self, image: made.append(image.shape) or of(self, image))
    monkeypatch.setattr(views.View, "cells_in", lambda self, m: cells.append(1) or cells_in(self, m))
    a, b2 = (img[:120, :160] for img in _images(small_dataset, "good", 2))
    first, second = eng.predict(a), eng.predict(b2)
    assert made == [(120, 160)] and cells == [1]  # the second frame of the shape reused both
    assert np.all(first.anomaly_map[:, 80:] == 0) and np.all(second.anomaly_map[:, 80:] == 0)


def test_ok_frames_build_no_frame_map(small_bundle, small_dataset, monkeypatch):
    """The verdict comes from the cell grid; the frame-size map is made on the first read, once."""
    built = []
    make = Engine._frame_map
    monkeypatch.setattr(Engine, "_frame_map", lambda self, *a: built.append(a[-1]) or make(self, *a))
    eng = Engine(small_bundle)
    imgs = _images(small_dataset, "good", 2) + _images(small_dataset, "crack", 1)
    eng.manifest.thresholds.image = 1e9  # every frame OK
    daemon = eng.predict_batch(imgs, regions=False, keep_features=True)  # the daemon's call
    plain = eng.predict_batch(imgs)  # predict / evaluate: regions of NG frames only
    assert {p.verdict for p in daemon + plain} == {"OK"} and built == []
    amap = plain[2].anomaly_map
    assert built == [imgs[2].shape[:2]] and amap.shape == imgs[2].shape[:2] and amap.dtype == np.float32
    assert plain[2].anomaly_map is amap and len(built) == 1  # kept: a second reader gets the same array
    eng.manifest.thresholds.image = 0.0  # every frame NG: its regions need the map
    (ng,) = eng.predict_batch(imgs[2:])
    assert ng.verdict == "NG" and len(built) == 2
    assert np.array_equal(ng.anomaly_map, amap) and len(built) == 2  # regions and readers share the one build
