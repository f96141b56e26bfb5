"""Feedback learning on magnetic tile (issue 15): does `project learn` cut false rejects without a refit?

A project starts from a model fitted on 50 good images (fast preset, ImageNet EfficientNet-Lite0), calibrated
on 10 labeled defects per type plus the held-out goods to let at most --max-escape of them through. The
remaining good images (train and test) and the remaining defective images are streamed in a seeded random
order, in blocks of --block parts, through the active version's engine (what `predict` and the daemon run).
After each block every false reject is fed back as OK and `project learn` makes the next version, which is
activated and scores the next block. Printed per block: false rejects per 100 parts and per good part and the
escape rate, by the active version and (the same parts) by the first version, and the update time.
--compare-refit also fits a version from scratch (backbone features, bank, calibration) on the same images after
the first update (a copy of the project) and scores the second block with it: what a full refit would have given.

    python3 bench/bench_learn.py [--seed 0] [--block 100] [--updates 6] [--compare-refit]
"""
from __future__ import annotations

import argparse
import json
import logging
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "magnetic_tile"
TYPES = ("blowhole", "break", "crack", "fray", "uneven")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--block", type=int, default=100, help="parts per block (one update after each)")
    ap.add_argument("--updates", type=int, default=6, help="learn updates (blocks scored: updates + 1)")
    ap.add_argument("--train", type=int, default=50, help="good images the first version is fitted on")
    ap.add_argument("--max-escape", type=float, default=0.2, help="calibration target of the first version (the "
                    "line catches defects first; false rejects are what feedback must bring down)")
    ap.add_argument("--compare-refit", action="store_true", help="after the first update, also refit from scratch "
                    "on the same images and score the second block with that version")
    a = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from linesight.config.project import TrainConfig
    from linesight.export.engine import Engine
    from linesight.export.images import read_image
    from linesight.project.data import add_images
    from linesight.project.feedback import append, new_record
    from linesight.project.learning import LearnRefused, learn
    from linesight.project.training import fit_version
    from linesight.project.workspace import Project

    rng = random.Random(a.seed)
    goods = sorted((a.data / "train" / "good").iterdir()) + sorted((a.data / "test" / "good").iterdir())
    rng.shuffle(goods)
    defects = {t: sorted((a.data / "test" / t).iterdir()) for t in TYPES}
    for t in TYPES:
        rng.shuffle(defects[t])
    tmp = Path(tempfile.mkdtemp(prefix="bench_learn_"))
    p = Project.init(tmp / "tiles", "magnetic tile bench")
    # held-out share 0.25: about a quarter of the first goods calibrate, the rest train (aim: --train images)
    first = goods[: round(a.train / 0.75)]
    add_images(p, first)
    for t in TYPES:
        add_images(p, defects[t][:10], t, a.data / "ground_truth" / t)
    t0 = time.monotonic()
    v1 = fit_version(p, TrainConfig(test_fraction=0.25, calibration={"max_escape": a.max_escape,
                                                                     "max_false_reject": 0.99}))
    fit_s = time.monotonic() - t0
    p.activate(1)
    v1_engine = Engine(p.bundle_path(1))
    stream = [(g, False) for g in goods[len(first):]] + [(d, True) for t in TYPES for d in defects[t][10:]]
    rng.shuffle(stream)
    print(json.dumps({"first_version": {"trained_on": v1.n_train, "held_out_good": v1.metrics.n_good,
                                        "labeled_defects": v1.metrics.n_defective, "fit_s": round(fit_s, 1),
                                        "threshold": round(v1.image_threshold, 4)},
                      "stream": {"parts": len(stream), "defective": sum(d for _, d in stream)}}), flush=True)
    rows, refit = [], None
    for block in range(a.updates + 1):
        part = stream[block * a.block:(block + 1) * a.block]
        if not part:
            break
        active = p.metadata().active
        row = {"block": block + 1, "version": f"v{active}", "parts": len(part)}
        rejected: list[Path] = []
        scorers = [("", Engine(p.bundle_path(active))), ("v1_", v1_engine)]  # the same parts, also by v1
        if refit is not None and block == 1:
            scorers.append(("refit_", refit))
        for name, engine in scorers:
            fr, esc = [], 0
            for path, bad in part:
                ng = engine.predict(read_image(path)).score >= engine.threshold
                fr += [path] if ng and not bad else []
                esc += bad and not ng
            n_bad = sum(bad for _, bad in part)
            row |= {f"{name}false_rejects": len(fr), f"{name}escapes": esc, f"{name}defective": n_bad,
                    f"{name}false_rejects_per_100_parts": round(100 * len(fr) / len(part), 1),
                    f"{name}false_reject_rate": round(len(fr) / max(len(part) - n_bad, 1), 4),
                    f"{name}escape_rate": round(esc / max(n_bad, 1), 4)}
            rejected = rejected or fr
        if block < a.updates and rejected:
            for path in rejected:  # the operator: "that part was good"
                append(p.feedback_dir, new_record(label="OK", source="cli", by="bench", image=str(path),
                                                  version=active, verdict="NG"))
            t1 = time.monotonic()
            try:
                r = learn(p)
                p.activate(r.info.version)
                row |= {"update_s": round(time.monotonic() - t1, 1), "bank_rows_added": r.rows_added,
                        "gate": f"{r.parent.text()} -> {r.learned.text()}"}
                if a.compare_refit and block == 0:  # the same images (first goods + fed back), fitted from scratch
                    shutil.copytree(p.root, tmp / "refit")
                    q = Project(tmp / "refit")
                    t2 = time.monotonic()
                    info = fit_version(q, q.version(1).train_config)
                    refit = Engine(q.bundle_path(info.version))
                    row |= {"refit_s": round(time.monotonic() - t2, 1), "refit_trained_on": info.n_train}
            except LearnRefused as exc:
                row |= {"update_s": round(time.monotonic() - t1, 1), "refused": str(exc)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    updates = [r["update_s"] for r in rows if "update_s" in r]
    learned = [r for r in rows if r["version"] != "v1"]  # blocks scored by a learned version, and by v1
    fr_v1 = sum(r["v1_false_rejects_per_100_parts"] for r in learned)
    fr_new = sum(r["false_rejects_per_100_parts"] for r in learned)
    print(json.dumps({"blocks_scored_by_learned_versions": len(learned),
                      "false_rejects_per_100_there": {"v1": round(fr_v1 / max(len(learned), 1), 1),
                                                      "learned": round(fr_new / max(len(learned), 1), 1)},
                      "reduction": round(1 - fr_new / fr_v1, 3) if fr_v1 else None,
                      "escapes_there": {"v1": sum(r["v1_escapes"] for r in learned),
                                        "learned": sum(r["escapes"] for r in learned),
                                        "of": sum(r["defective"] for r in learned)},
                      "first_update": {k: learned[0][k] for k in ("block", "version", "false_rejects_per_100_parts",
                                                                  "v1_false_rejects_per_100_parts", "escape_rate",
                                                                  "v1_escape_rate")} if learned else None,
                      "refit_on_block_2": {k: learned[0][k] for k in ("refit_false_rejects_per_100_parts",
                                                                      "refit_escape_rate")} if refit else None,
                      "update_s_max": max(updates) if updates else None, "project": str(p.root)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
