"""`linesight demo` on a fresh machine: its generated dataset, and the whole run on it (no ../shared)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from linesight.cli import main
from linesight.demo_data import DESCRIPTION, KINDS, write_demo_dataset
from linesight.errors import DataError
from linesight.trainer.data import open_dataset


def digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_generated_dataset_is_a_small_deterministic_mvtec_set_with_masks(tmp_path: Path) -> None:
    counts = write_demo_dataset(tmp_path / "a")
    assert counts == {"train/good": 60, "test/good": 20, "test/scratch": 7, "test/spot": 7, "test/crack": 6}
    write_demo_dataset(tmp_path / "b")
    write_demo_dataset(tmp_path / "c", seed=1)
    assert digest(tmp_path / "a") == digest(tmp_path / "b") != digest(tmp_path / "c")
    ds = open_dataset(tmp_path / "a")
    assert len(ds.train) == 60 and sorted({s.defect_type for s in ds.test}) == sorted({"good", *KINDS})
    assert all(s.mask_path is not None for s in ds.test if s.label)
    for kind in KINDS:
        for img in (tmp_path / "a" / "test" / kind).iterdir():
            mask = cv2.imread(str(tmp_path / "a" / "ground_truth" / kind / f"{img.stem}_mask.png"), 0)
            assert mask.shape == cv2.imread(str(img), 0).shape and set(np.unique(mask)) == {0, 255}


def test_generated_dataset_never_overwrites_a_folder_it_did_not_write(tmp_path: Path) -> None:
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "x.png").write_bytes(b"keep")
    with pytest.raises(DataError, match="did not write"):
        write_demo_dataset(tmp_path / "theirs")
    assert [p.name for p in (tmp_path / "theirs").iterdir()] == ["x.png"]


def test_demo_refuses_data_that_is_not_an_mvtec_folder(tmp_path: Path, capsys) -> None:
    assert main(["demo", "-o", str(tmp_path / "out"), "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "not an MVTec-layout folder" in err and "docs/data.md" in err and err.count("\n") == 1


@pytest.mark.slow
def test_demo_runs_end_to_end_on_its_generated_data(tmp_path: Path, capsys, caplog) -> None:
    caplog.set_level("INFO")
    out = tmp_path / "demo"
    assert main(["demo", "-o", str(out), "--frames", "20"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["data"] == {"path": str(out / "data"), "kind": DESCRIPTION}
    assert f"demo data: {DESCRIPTION}; for real data use --data DIR, see docs/data.md" in caplog.text
    assert summary["image_auroc"] > 0.85 and not summary["warnings"]  # pretrained features see the defects
    daemon = summary["daemon"]
    assert daemon["frames"] == daemon["verdicts"] == 20 == sum(daemon["against_labels"].values())
    assert daemon["against_labels"]["correct"] >= 16
    lines = (out / "verdicts.jsonl").read_text().splitlines()
    assert len(lines) == 20 and all(json.loads(v)["camera"]["file"].endswith(".png") for v in lines)
    assert (out / "eval" / "report.html").is_file()
