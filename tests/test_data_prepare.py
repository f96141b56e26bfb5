"""`linesight data prepare-magnetic-tile`: a fake copy of the public repository (real files) -> MVTec layout."""
from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from helpers import need_data
from linesight.cli import main
from linesight.cli_data import DEFECTS, GOOD, is_test_good, prepare_magnetic_tile
from linesight.errors import DataError

GOOD_STEMS = [f"exp{i % 3}_num_{1000 + 37 * i}" for i in range(30)]


def fake_repository(root: Path, mask_shape: tuple[int, int] | None = None) -> Path:
    """The public repository's layout, as its GitHub zip unpacks: <repo>-master/MT_<Type>/Imgs/<stem>.jpg + .png."""
    repo = root / "Magnetic-tile-defect-datasets.-master"
    rng = np.random.default_rng(0)
    for folder in (GOOD, *DEFECTS):
        imgs = repo / folder / "Imgs"
        imgs.mkdir(parents=True)
        stems = GOOD_STEMS if folder == GOOD else [f"exp1_num_{folder[3:].lower()}{k}" for k in range(2)]
        for stem in stems:
            img = rng.integers(0, 255, (40, 60), dtype=np.uint8)
            cv2.imwrite(str(imgs / f"{stem}.jpg"), img)
            mask = np.zeros(mask_shape or img.shape, np.uint8)
            if folder != GOOD:
                mask[10:20, 5:30] = 200  # not 255: the repository's masks are binarised on the way
                mask[0, 0] = 90
            cv2.imwrite(str(imgs / f"{stem}.png"), mask)
    (repo / "README.md").write_text("dataset\n")
    return repo


def test_lays_out_the_mvtec_layout_with_the_sha1_split_and_binary_masks(tmp_path: Path) -> None:
    fake_repository(tmp_path / "src")
    dst = tmp_path / "mt"
    assert main(["data", "prepare-magnetic-tile", str(tmp_path / "src"), str(dst)]) == 0
    train = sorted(p.stem for p in (dst / "train" / "good").iterdir())
    test = sorted(p.stem for p in (dst / "test" / "good").iterdir())
    assert sorted(train + test) == sorted(GOOD_STEMS) and train and test
    assert all(not is_test_good(s) for s in train) and all(is_test_good(s) for s in test)
    for kind in DEFECTS.values():
        images = sorted((dst / "test" / kind).iterdir())
        assert len(images) == 2 and all(p.suffix == ".jpg" for p in images)
        for img in images:
            mask = cv2.imread(str(dst / "ground_truth" / kind / f"{img.stem}_mask.png"), cv2.IMREAD_GRAYSCALE)
            assert set(np.unique(mask)) == {0, 255} and mask[15, 10] == 255 and mask[0, 0] == 0
    src_jpg = tmp_path / "src" / "Magnetic-tile-defect-datasets.-master" / GOOD / "Imgs" / f"{GOOD_STEMS[0]}.jpg"
    copied = dst / ("test" if is_test_good(GOOD_STEMS[0]) else "train") / "good" / src_jpg.name
    assert copied.read_bytes() == src_jpg.read_bytes()
    assert not list((dst / "train" / "good").glob("*.png"))  # MT_Free's all-zero masks are not images
    assert "no licence" in (dst / "README.md").read_text()


def test_known_names_fall_on_the_documented_side_of_the_split() -> None:
    assert is_test_good("exp0_num_743") and is_test_good("exp1_num_106151")  # test/good of the shared copy
    assert not is_test_good("exp1_num_10181") and not is_test_good("exp1_num_10334")  # its train/good


def test_the_split_reproduces_the_shared_dataset() -> None:
    data = need_data()
    train = [p.stem for p in (data / "train" / "good").iterdir()]
    test = [p.stem for p in (data / "test" / "good").iterdir()]
    assert len(train) == 749 and len(test) == 203
    assert not any(map(is_test_good, train)) and all(map(is_test_good, test))


def test_a_zip_gives_the_same_dataset(tmp_path: Path) -> None:
    repo = fake_repository(tmp_path / "src")
    archive = tmp_path / "repo.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in repo.rglob("*"):
            zf.write(p, p.relative_to(tmp_path / "src"))
    from_dir = prepare_magnetic_tile(tmp_path / "src", tmp_path / "a")
    assert prepare_magnetic_tile(archive, tmp_path / "b") == from_dir
    files = sorted(str(p.relative_to(tmp_path / "a")) for p in (tmp_path / "a").rglob("*"))
    assert files == sorted(str(p.relative_to(tmp_path / "b")) for p in (tmp_path / "b").rglob("*"))


def test_refuses_a_folder_it_did_not_write_and_reruns_into_its_own(tmp_path: Path, capsys) -> None:
    fake_repository(tmp_path / "src")
    dst = tmp_path / "mine"
    dst.mkdir()
    (dst / "notes.txt").write_text("keep me")
    assert main(["data", "prepare-magnetic-tile", str(tmp_path / "src"), str(dst)]) == 2
    assert "did not write" in capsys.readouterr().err
    assert sorted(p.name for p in dst.iterdir()) == ["notes.txt"]
    out = tmp_path / "out"
    assert prepare_magnetic_tile(tmp_path / "src", out) == prepare_magnetic_tile(tmp_path / "src", out)


def test_missing_class_folder_and_mask_errors_name_the_problem(tmp_path: Path, capsys) -> None:
    repo = fake_repository(tmp_path / "src")
    shutil.rmtree(repo / "MT_Crack")
    assert main(["data", "prepare-magnetic-tile", str(repo), str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "no MT_Crack folder" in err and err.count("\n") == 1
    assert not (tmp_path / "a").exists()  # nothing written before the source is known to be complete

    fake_repository(tmp_path / "src2", mask_shape=(41, 60))
    with pytest.raises(DataError, match="not the size of its mask"):
        prepare_magnetic_tile(tmp_path / "src2", tmp_path / "b")
    shutil.rmtree(tmp_path / "b")
    repo = fake_repository(tmp_path / "src3")
    next((repo / "MT_Fray" / "Imgs").glob("*.png")).unlink()
    with pytest.raises(DataError, match="mask .* is missing"):
        prepare_magnetic_tile(repo, tmp_path / "c")
