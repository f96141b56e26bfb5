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


#: every fit flag -> (a value, the FitConfig field it must reach (section.field inside a section), its value there)
FLAG_FIELDS = [
    (["--model-id", "m7"], "model_id", "m7"), (["--backbone", "resnet18"], "backbone", "resnet18"),
    (["--weights", "none"], "weights", "none"), (["--adapt", "self"], "adapt", "self"),
    (["--selfsup-minutes", "2"], "selfsup.minutes", 2.0), (["--selfsup-steps", "9"], "selfsup.steps", 9),
    (["--save-weights", "w.pth", "--weights", "self"], "selfsup.save", "w.pth"),
    (["--input-size", "96"], "input_size", 96), (["--embedding-dim", "32"], "embedding_dim", 32),
    (["--coreset-ratio", "0.3"], "coreset.ratio", 0.3), (["--k", "3"], "k", 3), (["--reweight"], "reweight", True),
    (["--knn", "hnsw"], "index.kind", "hnsw"), (["--quantize", "int8"], "quantize.mode", "int8"),
    (["--seed", "5"], "seed", 5),
    (["--photometric", "clahe"], "frame", "clahe"), (["--align", "rigid"], "frame", "rigid"),
    (["--resize", "letterbox"], "views.resize", "letterbox"),
    (["--defect-size", "8", "200"], "views.defect_size", (8.0, 200.0)),
    (["--px-per-mm", "20", "--defect-size", "1", "2"], "views.px_per_mm", 20.0),
    (["--scales", "0", "1"], "views.scales", [0, 1]),
    (["--tile-overlap", "32"], "views.tile_overlap", 32), (["--roi", "roi.png"], "domain.mask", "roi.png"),
    (["--auto-foreground"], "domain.mode", "auto"), (["--dark", "--auto-foreground"], "domain.dark", True),
    (["--erode", "4", "--auto-foreground"], "domain.erode", 4),
]
#: flags of the verb itself, not fit options
VERB_FLAGS = {"-h", "--help", "-o", "--output", "--force", "--preset", "--config"}


def _fit_parser():
    import argparse

    from linesight.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return build_parser(), sub.choices["fit"]


def test_every_fit_flag_reaches_a_fit_config_field_and_none_is_ignored():
    from linesight.cli import fit_overrides
    from linesight.config.fit import FitConfig

    parser, fit_parser = _fit_parser()
    flags = {s for a in fit_parser._actions for s in a.option_strings}
    covered = {argv[0] for argv, _, _ in FLAG_FIELDS}
    assert flags - VERB_FLAGS == covered, "a fit flag without a FitConfig field here: add it to FLAG_FIELDS"
    for argv, field, value in FLAG_FIELDS:
        got = fit_overrides(parser.parse_args(["fit", "data", "-o", "out", *argv]))
        model, seen = FitConfig, got
        for name in field.split("."):  # "coreset.ratio": the section, then its field
            assert name in model.model_fields, field
            model, seen = model.model_fields[name].annotation, seen[name]
        if field == "frame":
            seen = next(v["mode"] for v in seen.values())
        assert seen == value, (argv, got)
