"""`linesight predict`: files, folders (recursive) and globs through one engine; overlays a person can read
(original | overlay with numbered boxes = regions[i] | colour bar, verdict and score vs threshold on top),
unique overlay names for equal file names, a CSV/JSONL summary, exit 0 / one-line exit 2."""
from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from linesight.cli import main
from linesight.cli_predict import expand_inputs
from linesight.export.analysis import measure_regions
from linesight.export.overlay import (
    BOX_BGR,
    MIN_VIEW_HEIGHT,
    colour_bar,
    inspection_image,
)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "linesight", *args], capture_output=True, text=True, timeout=300,
                          check=False)


def _magenta(img: np.ndarray) -> np.ndarray:
    return np.all(img == np.array(BOX_BGR, np.uint8), axis=2)


def test_inspection_image_boxes_numbered_like_the_regions():
    rng = np.random.default_rng(0)
    img = rng.integers(60, 120, (120, 200), dtype=np.uint8)
    amap = np.zeros((120, 200), np.float32)
    for (y, x, v) in ((20, 20, 3.0), (70, 120, 5.0), (30, 150, 2.0)):  # three separate hot squares
        amap[y:y + 20, x:x + 25] = v
    regions = measure_regions(amap, 1.0, img)
    assert [r.index for r in regions] == [0, 1, 2] and regions[0].bbox == (120, 70, 25, 20)  # worst first
    view = inspection_image(img, amap, 1.0, score=4.2, threshold=2.5, verdict="NG", regions=regions)
    _, png = cv2.imencode(".png", view)
    view = cv2.imdecode(png, cv2.IMREAD_COLOR)  # what a reader of the file gets
    f = math.ceil(MIN_VIEW_HEIGHT / 120)
    h = 120 * f
    top = view.shape[0] - h  # banner height
    assert top > 0 and np.all(view[2, 2] == (40, 40, 200))  # a red banner: NG
    gap = max(6, h // 60)
    over = view[top:, 200 * f + gap: 400 * f + gap]
    outer, _ = cv2.findContours(_magenta(over).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    assert len(outer) == len(regions)  # one box (with its number tag) per region, nothing else magenta
    _, labels, stats, _ = cv2.connectedComponentsWithStats(_magenta(over).astype(np.uint8), connectivity=8)
    for r in regions:
        x, y, w, hh = (v * f for v in r.bbox)
        assert _magenta(over)[y + hh // 2, x] and _magenta(over)[y + hh // 2, x + w - 1]  # box edges
        comp = labels[y + hh // 2, x]
        cx, cy, cw = stats[comp, :3]
        assert x - 3 * f <= cx <= x and cx + cw >= x + w - 1 and cy < y  # tag on the top-left corner, above
    assert not _magenta(view[top:, :200 * f]).any()  # the original is left untouched
    bar = colour_bar(h, 1.0)
    assert np.array_equal(view[top:, -bar.shape[1]:], bar)  # the map's colour key on the right
    calm = inspection_image(img, np.zeros_like(amap), 1.0, score=0.3, threshold=2.5, verdict="OK")
    assert np.all(calm[2, 2] == (60, 140, 60)) and not _magenta(calm).any()


def test_expand_inputs_gives_unique_names(tmp_path):
    for rel in ("a/x.png", "b/x.png", "a/x.jpg", "a b/y.png", "a_b/y.png", "b/deep/er/z.bmp", "b/notes.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    items = expand_inputs([str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "a*" / "y.png"),
                           str(tmp_path / "a" / "x.png")])  # the last is a repeat: scored once
    assert [str(i.path.relative_to(tmp_path)) for i in items] == [
        "a/x.jpg", "a/x.png", "b/deep/er/z.bmp", "b/x.png", "a b/y.png", "a_b/y.png"]  # notes.txt is no image
    assert [i.name for i in items] == ["a__x", "a__x-2", "b__deep__er__z", "b__x", "a_b__y", "a_b__y-2"]


@pytest.fixture(scope="module")
def tree(small_dataset, tmp_path_factory) -> Path:
    """Two folders holding images with the same file names, plus a loose folder for a glob."""
    root = tmp_path_factory.mktemp("inputs")
    goods = sorted((small_dataset / "test" / "good").iterdir())
    cracks = sorted((small_dataset / "test" / "crack").iterdir())
    for sub, src in (("line1/lot", goods[:2]), ("line2/lot", cracks[:2])):
        (root / sub).mkdir(parents=True)
        for i, p in enumerate(src):
            shutil.copy(p, root / sub / f"part{i}{p.suffix}")
    (root / "loose").mkdir()
    for p in sorted((small_dataset / "test" / "blowhole").iterdir())[:2]:
        shutil.copy(p, root / "loose" / p.name)
    return root


def test_predict_folders_globs_overlays_and_summary(small_bundle, tree, tmp_path):
    ov = tmp_path / "ov"
    glob_arg = str(tree / "loose" / "*.*")
    r = _cli("predict", str(small_bundle), str(tree / "line1"), str(tree / "line2"), glob_arg,
             "--overlay", str(ov), "--summary", str(tmp_path / "s.csv"))
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(rows) == 6 and all(row["verdict"] in ("OK", "NG") for row in rows)
    overlays = sorted(p.name for p in ov.iterdir())
    assert len(overlays) == 6 and {"line1__lot__part0_overlay.png", "line2__lot__part0_overlay.png"} <= set(overlays)
    with open(tmp_path / "s.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert [t["image"] for t in table] == [row["image"] for row in rows]
    assert [int(t["regions"]) for t in table] == [len(row["regions"]) for row in rows]
    assert [float(t["score"]) for t in table] == [row["score"] for row in rows]
    boxed = 0
    for row in rows:
        view = cv2.imread(row["overlay"])
        img = cv2.imread(row["image"], cv2.IMREAD_UNCHANGED)
        f = math.ceil(MIN_VIEW_HEIGHT / img.shape[0])
        h, w = img.shape[0] * f, img.shape[1] * f
        top = view.shape[0] - h
        over = view[top:, w + max(6, h // 60): 2 * w + max(6, h // 60)]
        banner_red = bool(np.all(view[2, 2] == (40, 40, 200)))
        assert banner_red == (row["verdict"] == "NG")
        for reg in row["regions"]:  # box i where regions[i] says, in the PNG read back
            x, y, bw, bh = (v * f for v in reg["bbox"])
            assert _magenta(over)[y + bh // 2, x] and _magenta(over)[y + bh - 1, x + bw // 2], reg
            boxed += 1
        if not row["regions"]:
            assert not _magenta(over).any()
    assert boxed > 0, "no region in any prediction: the box check proved nothing"
    r = _cli("predict", str(small_bundle), str(tree / "loose"), "--summary", str(tmp_path / "s.jsonl"))
    assert r.returncode == 0
    assert [json.loads(x) for x in (tmp_path / "s.jsonl").read_text().splitlines()] == \
        [json.loads(x) for x in r.stdout.splitlines()]


def test_predict_uses_one_engine_for_the_run(small_bundle, tree, monkeypatch, capsys):
    from linesight.export import engine as E

    made = []

    class Counting(E.Engine):
        def __init__(self, *a, **kw):
            made.append(1)
            super().__init__(*a, **kw)

    monkeypatch.setattr(E, "Engine", Counting)
    assert main(["predict", str(small_bundle), str(tree)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 6 and made == [1]


def test_predict_user_errors_are_one_line_exit_2(small_bundle, tree, tmp_path):
    for args, msg in (([str(tmp_path / "nope.png")], "no such file or folder"),
                      ([str(tmp_path / "*.png")], "no image matches"),
                      ([str(tree / "loose"), "--summary", str(tmp_path / "s.txt")], "name it .csv or .jsonl")):
        r = _cli("predict", str(small_bundle), *args)
        errors = [line for line in r.stderr.splitlines() if "error" in line]  # the rest is INFO logging
        assert r.returncode == 2 and r.stdout == "" and len(errors) == 1 and msg in errors[0], (args, r.stderr)
        assert "Traceback" not in r.stderr
    bad = tmp_path / "corrupt.png"
    bad.write_bytes(b"\x89PNG not really")
    good = next((tree / "loose").iterdir())
    r = _cli("predict", str(small_bundle), str(good), str(bad))
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert r.returncode == 2 and "score" in rows[0] and "error" in rows[1]  # the run goes on, then says so
    errors = [line for line in r.stderr.splitlines() if "error" in line]  # the rest is INFO logging
    assert errors == ["linesight predict: error: 1 of 2 images could not be read (corrupt.png); see their error lines"]
    assert os.path.basename(rows[1]["image"]) == "corrupt.png"
