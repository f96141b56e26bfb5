"""`linesight types`: learn defect types from labeled examples into a bundle."""
from __future__ import annotations

import argparse
import json

from linesight.errors import LinesightError

DESCRIPTION = """\
Learn a few-shot defect-type classifier from labeled examples and store it in BUNDLE.

DATASET is an MVTec-layout folder: test/<type>/*.png with ground_truth/<type>/<stem>_mask.png (the folder
name is the type; test/good is ignored). Every image runs through the bundle's engine; each connected
ground-truth region (>= 16 px; smaller specks are annotation noise) becomes one example, described by
the bundle's own patch features pooled inside the region. The classifier is cross-validated with folds
grouped by image (stratified by type), then fitted on all examples and written into the bundle as
types/* files (no pickle; the manifest hashes them). After this, the daemon's and the evaluation
report's defect analysis name regions by these types, with a confidence, and answer "unknown" (falling
back to the shape rules, flagged) when no labeled example is close.
"""

EPILOG = """\
example:
  linesight types tile.zip DATASET --folds 5 -o types_report/     # DATASET: e.g. magnetic tile, docs/data.md

prints accuracy, per-type recall, the confusion matrix (with an 'unknown' column) and the unknown
rate; -o also writes REPORT_DIR/types_cv.json and types_cv.txt. Inspection specs and knowledge bases
can then name these types (spec: `types: [crack, ...]`).
"""


def _types(a: argparse.Namespace) -> int:
    from linesight.trainer.types import format_cv_table, train_types

    if a.folds < 2:
        raise LinesightError(f"types: --folds {a.folds}: cross-validation needs at least 2 folds")
    res = train_types(a.bundle, a.dataset, folds=a.folds, method=a.method, report_dir=a.output, seed=a.seed)
    print(format_cv_table(res["cv"]))
    print(json.dumps({"bundle": res["bundle"], "types": res["types"], "unknown_floor": round(res["floor"], 4),
                      "skipped": len(res["skipped"]), "report": a.output}, indent=2))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    t = subparsers.add_parser("types", help="learn defect types from labeled examples (few-shot), store in the bundle",
                              description=DESCRIPTION, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("bundle", help="bundle folder or .zip (updated in place: only its types/* files change)")
    t.add_argument("dataset", help="MVTec-layout folder with test/<type>/ images and ground_truth/<type>/ masks")
    t.add_argument("--folds", type=int, default=5, help="cross-validation folds, grouped by image (default 5)")
    t.add_argument("--method", default="knn", choices=["knn", "logreg"],
                   help="knn: cosine k-nearest labeled regions (default); logreg: class-balanced logistic regression")
    t.add_argument("--seed", type=int, default=0, help="seed of the fold assignment (default 0)")
    t.add_argument("-o", "--output", metavar="REPORT_DIR", default=None,
                   help="also write the CV figures to REPORT_DIR/types_cv.json and types_cv.txt")
    t.set_defaults(func=_types)
