"""`linesight demo`: the main job end to end on magnetic_tile, offline, in a few minutes."""
from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

log = logging.getLogger("linesight.demo")


def demo(out: Path, data: Path, weights: str, frames: int) -> int:
    from linesight.config.daemon import DaemonConfig
    from linesight.config.fit import preset
    from linesight.daemon.service import Service
    from linesight.trainer.evaluate import calibrate, evaluate
    from linesight.trainer.fit import fit

    out.mkdir(parents=True, exist_ok=True)
    bundle = out / "model.zip"
    log.info("1/4 fit (fast preset, weights=%s) on %s", weights, data)
    fit(data, bundle, preset("fast", weights=weights, model_id="demo-magnetic-tile"))
    log.info("2/4 calibrate thresholds (f1_optimal) on the labeled test set")
    calibrate(bundle, data, "f1_optimal")
    log.info("3/4 evaluate -> %s", out / "eval" / "report.html")
    metrics = evaluate(bundle, data, out / "eval")

    log.info("4/4 daemon: %d test images through the inspection pipeline (folder source)", frames)
    with tempfile.TemporaryDirectory() as tmp:
        pick = sorted((data / "test").rglob("*.jpg"))[:: max(1, len(list((data / "test").rglob("*.jpg"))) // frames)]
        for p in pick[:frames]:
            os.symlink(p.resolve(), Path(tmp) / f"{p.parent.name}__{p.name}")
        from importlib.resources import files

        examples = files("linesight.config.examples")
        cfg = DaemonConfig.model_validate({
            "model": {"bundle": str(bundle), "watch": False},
            "analysis": {"spec": str(examples / "inspection_spec.yaml"),
                         "knowledge": str(examples / "knowledge_magnetic_tile.yaml")},
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
    summary = {"bundle": str(bundle), "report": str(out / "eval" / "report.html"),
               "image_auroc": metrics["image_auroc"], "pixel_auroc": metrics["pixel_auroc"], "aupro": metrics["aupro"],
               "daemon": {"frames": svc.pipeline.frames_in, "verdicts": counts["verdicts"], "OK": counts["verdict_OK"],
                          "NG": counts["verdict_NG"], "against_labels": truth, "verdicts_file": str(out / "verdicts.jsonl"),
                          "archive": str(out / "archive")},
               "warnings": metrics["model"]["warnings"]}
    print(json.dumps(summary, indent=2))
    if summary["warnings"]:
        log.warning("DEMO RAN WITHOUT PRETRAINED FEATURES: the scores above are near chance and are no result. "
                    "Use the default --weights imagenet (installed with linesight[train], offline) or --weights self.")
    return 0
