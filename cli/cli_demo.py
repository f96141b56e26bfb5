"""`linesight demo`: the main job end to end, offline, in a few minutes (generated data, or --data DIR)."""
from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

log = logging.getLogger("linesight.demo")
FROM_DATA = "from --data"  # the summary's data kind for a dataset the user named (else: generated)


def demo(out: Path, data: Path | None, weights: str, frames: int) -> int:
    from linesight.config.daemon import DaemonConfig
    from linesight.config.fit import preset
    from linesight.daemon.service import Service
    from linesight.export.images import IMAGE_SUFFIXES
    from linesight.trainer.calibration import describe, pct
    from linesight.trainer.evaluate import calibrate, evaluate
    from linesight.trainer.fit import fit

    out.mkdir(parents=True, exist_ok=True)
    data, data_kind = _demo_data(out, data)
    bundle = out / "model.zip"
    log.info("1/4 fit (fast preset, weights=%s) on %s", weights, data)
    fit(data, bundle, preset("fast", weights=weights, model_id="demo"))
    log.info("2/4 calibrate thresholds by the default false-reject target on the labeled test set")
    cal = calibrate(bundle, data).calibration
    log.info("calibrated for false reject <= %s: false reject %s; escape %s", pct(cal.target.max_false_reject),
             describe(cal.false_reject, "good parts"), describe(cal.escape, "defective parts"))
    log.info("3/4 evaluate -> %s", out / "eval" / "report.html")
    metrics = evaluate(bundle, data, out / "eval")

    log.info("4/4 daemon: %d test images through the inspection pipeline (folder source)", frames)
    with tempfile.TemporaryDirectory() as tmp:
        images = sorted(p for p in (data / "test").rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        pick = images[:: max(1, len(images) // frames)]
        for p in pick[:frames]:
            os.symlink(p.resolve(), Path(tmp) / f"{p.parent.name}__{p.name}")
        from importlib.resources import files

        examples = files("linesight.config.examples")
        # the example spec grades magnetic tiles; generated defects are typed by the default shape rules
        analysis = {"spec": str(examples / "inspection_spec.yaml"),
                    "knowledge": str(examples / "knowledge_magnetic_tile.yaml")} if data_kind == FROM_DATA \
            else {"knowledge": str(examples / "knowledge_generic.yaml")}
        cfg = DaemonConfig.model_validate({
            "model": {"bundle": str(bundle), "watch": False},
            "analysis": analysis,
            "source": {"type": "folder", "name": "demo-folder", "path": tmp, "mode": "once", "rate_hz": 15},
            "pipeline": {"deadline_ms": 2000, "part_id": {"mode": "filename"}},
            "outputs": {"mqtt": {"enabled": False}, "zmq": {"enabled": False}, "metrics": {"enabled": False},
                        "archive": {"enabled": True, "dir": str(out / "archive"), "save_ok_fraction": 0.0}}})
        svc = Service(cfg)
        truth: dict[str, int] = {"correct": 0, "false_reject": 0, "escape": 0}

        def record(v: dict) -> None:
            fh.write(json.dumps(v) + "\n")
            good = (v["camera"]["file"] or "").startswith("good__")  # the test folder is the label
            truth["correct" if (v["verdict"] == "OK") == good else "false_reject" if good else "escape"] += 1

        with (out / "verdicts.jsonl").open("w") as fh:
            svc.pipeline.on_verdict = record
            svc.run()
    counts = svc.pipeline.counts
    summary = {"data": {"path": str(data), "kind": data_kind}, "bundle": str(bundle),
               "report": str(out / "eval" / "report.html"),
               "image_auroc": metrics["image_auroc"], "pixel_auroc": metrics["pixel_auroc"], "aupro": metrics["aupro"],
               "daemon": {"frames": svc.pipeline.frames_in, "verdicts": counts["verdicts"], "OK": counts["verdict_OK"],
                          "NG": counts["verdict_NG"], "against_labels": truth,
                          "verdicts_file": str(out / "verdicts.jsonl"), "archive": str(out / "archive")},
               "warnings": metrics["model"]["warnings"]}
    print(json.dumps(summary, indent=2))
    if summary["warnings"]:
        log.warning("DEMO RAN WITHOUT PRETRAINED FEATURES: the scores above are near chance and are no result. "
                    "Use the default --weights imagenet (installed with linesight[train], offline) or --weights self.")
    return 0


def _demo_data(out: Path, data: Path | None) -> tuple[Path, str]:
    """The dataset the demo runs on and what it is: `data` if given (must be MVTec layout), else generated."""
    from linesight.demo_data import DESCRIPTION, write_demo_dataset
    from linesight.errors import DataError

    if data is not None:
        if not (data / "train" / "good").is_dir() or not (data / "test").is_dir():
            raise DataError(f"demo: --data {data} is not an MVTec-layout folder (train/good, test/<type>); "
                            "see docs/data.md (`linesight data prepare-magnetic-tile SRC DST`)")
        log.info("demo data: %s (%s)", data, FROM_DATA)
        return data, FROM_DATA
    write_demo_dataset(out / "data")
    log.info("demo data: %s; for real data use --data DIR, see docs/data.md", DESCRIPTION)
    return out / "data", DESCRIPTION
