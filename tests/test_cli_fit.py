"""`linesight fit` flags reach the fit: an index or precision flag that is accepted must change the bundle."""
from __future__ import annotations

import pytest

from helpers import make_subset
from linesight.cli import main
from linesight.export.bundle import load_bundle

FIT = ["--weights", "none", "--input-size", "64", "--embedding-dim", "16", "--coreset-ratio", "0.5"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_subset(tmp_path_factory.mktemp("d") / "data", n_train=8, n_good=1, defects={"crack": 1})


@pytest.mark.parametrize("knn", ["flat", "hnsw", "ivf"])
def test_knn_flag_picks_the_stored_index(data, tmp_path, knn):
    assert main(["fit", str(data), "-o", str(tmp_path / "b"), *FIT, "--knn", knn]) == 0
    m = load_bundle(tmp_path / "b").manifest
    # a forced approximate index that misses the 1 % bound ships as flat with a warning, never silently
    kinds = {s.index.kind for s in m.scales}
    assert kinds == {knn} or (kinds == {"flat"} and any("exact search (flat) instead" in w for w in m.warnings))


def test_quantize_flag_runs_the_int8_gates_and_records_their_verdict(data, tmp_path):
    assert main(["fit", str(data), "-o", str(tmp_path / "f"), *FIT]) == 0
    assert load_bundle(tmp_path / "f").manifest.onnx.int8 is None  # default: no int8 attempt
    assert main(["fit", str(data), "-o", str(tmp_path / "q"), *FIT, "--quantize", "int8"]) == 0
    m = load_bundle(tmp_path / "q").manifest
    assert m.onnx.int8 is not None and m.onnx.int8.calibration_images > 0
    assert m.onnx.precision == ("int8" if m.onnx.int8.kept else "float32")
    assert m.onnx.int8.kept or any("int8 refused" in w for w in m.warnings)


def test_unknown_knn_choice_is_a_usage_error(data, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["fit", str(data), "-o", str(tmp_path / "x"), "--knn", "annoy"])
    assert exc.value.code == 2 and "invalid choice: 'annoy'" in capsys.readouterr().err
