"""The engineer's files are safe: outputs never replace what linesight did not write; any broken bundle is a
one-line BundleError (never zlib.error, never a hang on a FIFO, never reading /dev/zero into memory)."""
from __future__ import annotations

import hashlib
import os
import random
import threading
import time
import zipfile
from pathlib import Path

import pytest

from helpers import corrupt_zip, make_subset
from linesight.cli import main
from linesight.errors import BundleError
from linesight.export.bundle import load_bundle, write_bundle


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def zip_bundle(small_bundle, tmp_path_factory) -> Path:
    return write_bundle(tmp_path_factory.mktemp("z") / "model.zip", load_bundle(small_bundle))


FIT = ["--weights", "none", "--input-size", "64", "--embedding-dim", "16", "--coreset-ratio", "0.2"]


def test_fit_into_the_dataset_folder_is_refused_and_erases_nothing(tmp_path, capsys):
    data = make_subset(tmp_path / "data", n_train=6, n_good=1, defects={"crack": 1})
    before = tree_digest(data)
    t0 = time.monotonic()
    assert main(["fit", str(data), "-o", str(data), *FIT]) == 2
    err = capsys.readouterr().err
    assert "is a folder that is not a linesight bundle" in err and "nothing was changed" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert tree_digest(data) == before
    assert time.monotonic() - t0 < 5, "refused only after fitting"


def test_fit_into_the_current_folder_is_refused_before_fitting(tmp_path, monkeypatch, capsys):
    data = make_subset(tmp_path / "data", n_train=6, n_good=1, defects={"crack": 1})
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    monkeypatch.chdir(work)
    assert main(["fit", str(data), "-o", ".", *FIT]) == 2
    assert "not a linesight bundle" in capsys.readouterr().err
    assert [p.name for p in work.iterdir()] == ["notes.txt"]


def test_fit_replaces_bundles_and_only_forced_non_bundle_zips(tmp_path, capsys):
    data = make_subset(tmp_path / "data", n_train=6, n_good=1, defects={"crack": 1})
    folder = tmp_path / "b"
    assert main(["fit", str(data), "-o", str(folder), *FIT]) == 0
    assert main(["fit", str(data), "-o", str(folder), *FIT]) == 0  # a bundle is replaced: next version
    assert load_bundle(folder).manifest.model.version == 2
    other = tmp_path / "report.zip"
    with zipfile.ZipFile(other, "w") as zf:
        zf.writestr("report.txt", "not a bundle")
    capsys.readouterr()
    assert main(["fit", str(data), "-o", str(other), *FIT]) == 2
    assert "pass --force to replace it" in capsys.readouterr().err
    assert zipfile.ZipFile(other).namelist() == ["report.txt"]
    assert main(["fit", str(data), "-o", str(other), "--force", *FIT]) == 0
    assert load_bundle(other).manifest.model.version == 1
    plain = tmp_path / "notes.txt"
    plain.write_text("mine")
    assert main(["fit", str(data), "-o", str(plain), "--force", *FIT]) == 2
    assert plain.read_text() == "mine"


def test_check_target_rules(tmp_path):
    from linesight.export.bundle import check_target

    (tmp_path / "empty").mkdir()
    check_target(tmp_path / "empty")
    check_target(tmp_path / "new.zip")
    (tmp_path / "x.zip").mkdir()
    with pytest.raises(BundleError, match="is a folder, but a path ending in .zip"):
        check_target(tmp_path / "x.zip")
    user = tmp_path / "user"
    user.mkdir()
    (user / "a.png").write_bytes(b"x")
    for force in (False, True):  # a user's folder is never replaced, not even with --force
        with pytest.raises(BundleError, match="never deletes folders it did not write"):
            check_target(user, force)


def test_other_outputs_through_a_file_are_one_line_errors(tmp_path, small_bundle, small_dataset, capsys):
    afile = tmp_path / "afile"
    afile.write_text("mine")
    for argv in (["evaluate", str(small_bundle), str(small_dataset), "-o", str(afile)],
                 ["types", str(small_bundle), str(small_dataset), "-o", str(afile)],
                 ["predict", str(small_bundle), str(next((small_dataset / "test" / "good").iterdir())),
                  "--overlay", str(afile)],
                 ["synth", str(small_dataset), "-o", str(afile), "--n", "1"]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "is a file, not a folder" in err and "Traceback" not in err, (argv, err)
        assert afile.read_text() == "mine"


def test_synth_writes_only_into_new_empty_or_its_own_folders(tmp_path, small_dataset, capsys):
    user = tmp_path / "user"
    user.mkdir()
    (user / "keep.png").write_bytes(b"x")
    assert main(["synth", str(small_dataset), "-o", str(user), "--n", "1"]) == 2
    assert "did not write" in capsys.readouterr().err and [p.name for p in user.iterdir()] == ["keep.png"]
    out = tmp_path / "synth"
    assert main(["synth", str(small_dataset), "-o", str(out), "--n", "1"]) == 0
    assert main(["synth", str(small_dataset), "-o", str(out), "--n", "2"]) == 0  # its own folder: fine


@pytest.mark.parametrize("how", ["deflate", "method"])
def test_zip_corruptions_are_bundle_errors(zip_bundle, tmp_path, how):
    with pytest.raises(BundleError, match="not a bundle folder nor a readable .zip"):
        load_bundle(corrupt_zip(zip_bundle, tmp_path / f"{how}.zip", how))


def test_random_byte_flips_never_escape_as_other_errors(zip_bundle, tmp_path):
    """300 seeded flips, half anywhere, half in zip headers: each load is a BundleError or the exact bundle."""
    good = load_bundle(zip_bundle)
    data = zip_bundle.read_bytes()
    with zipfile.ZipFile(zip_bundle) as zf:
        headers = [i.header_offset + k for i in zf.infolist() for k in range(30)]
    central = data.find(b"PK\x01\x02")
    headers += list(range(central, len(data)))
    rng = random.Random(7)
    outcomes = {"refused": 0, "identical": 0}
    for n in range(300):
        flipped = bytearray(data)
        pos = rng.randrange(len(data)) if n % 2 else rng.choice(headers)
        flipped[pos] ^= 1 << rng.randrange(8)
        path = tmp_path / "f.zip"
        path.write_bytes(bytes(flipped))
        try:
            b = load_bundle(path)
        except BundleError:
            outcomes["refused"] += 1
            continue
        assert b.onnx == good.onnx and (b.bank == good.bank).all() and b.manifest == good.manifest, pos
        outcomes["identical"] += 1
    assert outcomes["refused"] > 150, outcomes


def test_special_files_and_oversized_bundles_are_refused_unread(tmp_path, zip_bundle):
    with pytest.raises(BundleError, match="not a regular file"):
        load_bundle("/dev/zero")
    fifo = tmp_path / "pipe.zip"
    os.mkfifo(fifo)
    result: list = []
    t = threading.Thread(target=lambda: result.append(pytest.raises(BundleError, load_bundle, fifo)), daemon=True)
    t.start()
    t.join(5)
    assert not t.is_alive(), "loading a FIFO blocked"
    assert "not a regular file" in str(result[0].value)
    with pytest.raises(BundleError, match="larger than"):
        load_bundle(zip_bundle, max_bytes=1000)
    bundle = write_bundle(tmp_path / "b", load_bundle(zip_bundle))
    os.mkfifo(bundle / "golden" / "odd")
    with pytest.raises(BundleError, match="is not a regular file"):
        load_bundle(bundle)
