"""`linesight segment`: train the supervised segmentation head (#17 slice 2) from labels; an ONNX graph and a
report, not yet a bundle the Engine runs (slice 3)."""
from __future__ import annotations

import argparse
import json

from linesight.errors import LinesightError, validation_problems
from linesight.outputs import output_folder

MARKER = ".linesight-segment"  # marks a folder this verb wrote, so a rerun may overwrite it
ONNX_FILE, REPORT_FILE = "segmentation.onnx", "report.json"

DESCRIPTION = """\
Train a supervised defect segmentation head on labeled images: a small decoder over the frozen, installed
ImageNet EfficientNet-Lite backbone's stride-8 and stride-16 maps, on CPU, in minutes.

LABELS are read by the label readers of docs/data.md: an MVTec folder (test/<class>/ images with
ground_truth/<class>/<stem>_mask.png; train/good/ images are negatives), a COCO .json, a YOLO folder
(data.yaml or classes.txt) or a Pascal VOC folder; --format auto tells them apart by layout. Images are
stretched to --input-size as in the anomaly path; each epoch sees every training image and one augmented
copy (flips, 90-degree turns, brightness/contrast; the labels move with the image). The loss is
class-weighted cross-entropy (median frequency balancing) plus Dice, so rare small defects count.

A share of the images (--holdout, per class, by image, seeded) is held out: training stops when their
mean IoU has not improved for --patience epochs or after --max-seconds, keeping the best epoch. The
figures (per-class pixel IoU and F1 at the images' own resolution, mean IoU, image AUROC of the highest
defect probability when good images are held out) are measured on those same held-out images, so they
are slightly optimistic. The ONNX graph (backbone + head in one, output = per-class probabilities at
input size, channel 0 background) is checked against torch before it is written.

Not yet part of a bundle: `linesight fit`, the engine and the daemon do not use this graph (#17 slice 3).
"""

EPILOG = """\
examples:
  linesight segment $MT -o seg/                          # magnetic tile masks (docs/data.md)
  linesight segment labels.json -o seg/ --epochs 40       # COCO boxes/polygons, images beside the JSON
  linesight segment yolo_set/ -o seg/ --max-seconds 600 --input-size 192

writes OUT/segmentation.onnx and OUT/report.json (classes, input size, per-class IoU/F1, mean IoU,
image AUROC, loss and held-out IoU per epoch, held-out image list, ONNX parity) and prints the summary.
OUT must be new, empty, or an earlier `segment` output.
"""


def _segment(a: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from linesight.config.fit import SegmentConfig
    from linesight.trainer.labels import read_labels
    from linesight.trainer.segmentation import train_segmentation

    try:
        cfg = SegmentConfig(backbone=a.backbone, input_size=a.input_size, epochs=a.epochs,
                            max_seconds=a.max_seconds, holdout_fraction=a.holdout, patience=a.patience, seed=a.seed)
    except ValidationError as exc:
        raise LinesightError(f"invalid segment options: {validation_problems(exc, 'options')}") from None
    out = output_folder(a.output, "segment", marker=MARKER)
    res = train_segmentation(read_labels(a.labels, format=a.format), cfg)
    (out / ONNX_FILE).write_bytes(res.onnx)
    (out / REPORT_FILE).write_text(res.report.model_dump_json(indent=2))
    r = res.report
    print(json.dumps({"onnx": str(out / ONNX_FILE), "report": str(out / REPORT_FILE), "mean_iou": round(r.mean_iou, 4),
                      "per_class": {c.name: {"iou": c.iou, "f1": c.f1} for c in r.per_class},
                      "image_auroc": r.image_auroc, "epochs": r.epochs, "best_epoch": r.best_epoch,
                      "stopped": r.stopped, "seconds": r.seconds}, indent=2))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    s = subparsers.add_parser("segment", help="train a supervised defect segmentation head from labels (ONNX + report)",
                              description=DESCRIPTION, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("labels", metavar="LABELS", help="MVTec folder with masks, COCO .json, YOLO or VOC folder")
    s.add_argument("-o", "--output", metavar="OUT", required=True,
                   help="folder for segmentation.onnx and report.json (new, empty, or an earlier segment output)")
    s.add_argument("--format", default="auto", choices=["auto", "masks", "coco", "yolo", "voc"],
                   help="label format (default auto: told apart by layout)")
    s.add_argument("--backbone", default="efficientnet_lite0",
                   choices=["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"],
                   help="installed ImageNet backbone, frozen (default efficientnet_lite0)")
    s.add_argument("--input-size", type=int, default=128, help="square model input in px (default 128)")
    s.add_argument("--epochs", type=int, default=60, help="max epochs (default 60)")
    s.add_argument("--max-seconds", type=float, default=1200.0,
                   help="training time budget; the best epoch so far is kept (default 1200)")
    s.add_argument("--holdout", type=float, default=0.25,
                   help="share of images held out per class for early stopping and the figures (default 0.25)")
    s.add_argument("--patience", type=int, default=8,
                   help="stop after this many epochs without a better held-out mean IoU (default 8)")
    s.add_argument("--seed", type=int, default=0, help="seed of the split, the head's init and batch order")
    s.set_defaults(func=_segment)
