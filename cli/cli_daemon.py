"""Daemon verbs (run, check-config, config reference) and the demo; kept apart so training verbs never import
daemon code."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

log = logging.getLogger("linesight")


def _run(a: argparse.Namespace) -> int:
    from linesight.daemon.preflight import load_station
    from linesight.daemon.service import run_service

    cfg, doc = load_station(a.config)
    if not a.verbose:  # -v means DEBUG, whatever the station file says
        logging.getLogger().setLevel(cfg.log_level)
    return run_service(cfg, doc)


def _check(a: argparse.Namespace) -> int:
    """Schema, then every check `run` makes at start-up (files, secrets, ports, folders): all problems at once."""
    from linesight.daemon.preflight import load_station, preflight

    cfg, doc = load_station(a.config)
    found = preflight(cfg, doc)
    problems = [str(p) for p in found]
    for line in problems:
        print(line, file=sys.stderr)
    warnings = []
    bundle = cfg.model.bundle
    if cfg.model.project is not None and not any(p.field == "model.project" for p in found):
        from linesight.project.workspace import Project

        bundle = Project.open(cfg.model.project).active_bundle()
    if a.bundle and bundle is not None and bundle.exists():
        from linesight.export.bundle import load_bundle

        warnings = load_bundle(bundle).manifest.warnings
        for w in warnings:  # the daemon runs such a bundle, with a model_warning alarm: say so here first
            log.warning("bundle %s: %s", bundle, w.upper())
    print(json.dumps({"config": a.config, "valid": not problems, "problems": problems, "warnings": warnings,
                      "station": cfg.outputs.mqtt.station_id, "source": cfg.source.type,
                      "bundle": None if bundle is None else str(bundle),
                      "project": None if cfg.model.project is None else str(cfg.model.project)}, indent=2))
    return 0 if not problems else 2


def _reference(_a: argparse.Namespace) -> int:
    from linesight.config.reference import reference_yaml

    sys.stdout.write(reference_yaml())
    return 0


def _demo(a: argparse.Namespace) -> int:
    from linesight.cli_demo import demo

    return demo(Path(a.output), Path(a.data) if a.data else None, a.weights, a.frames)


def add_verbs(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("run", help="run the inspection daemon for one station",
                       description="Grab frames, decide OK/NG with the bundle, publish verdicts (MQTT, ZeroMQ), "
                                   "metrics (/metrics) and archive NG images, until SIGTERM. See "
                                   "config/examples/daemon.yaml for every option.")
    r.add_argument("--config", required=True, help="station YAML (${ENV} substitution supported)")
    r.set_defaults(func=_run)

    c = sub.add_parser("check-config", help="validate a daemon YAML without running it",
                       description="Validate the YAML against the schema, then make every check `run` makes "
                                   "at start-up (files, secrets, ports, folders, source); each problem names "
                                   "file:line and field. Exit 2 if any.")
    c.add_argument("config")
    c.add_argument("--bundle", action="store_true", help="also load and verify the bundle it names")
    c.set_defaults(func=_check)

    cfg = sub.add_parser("config", help="the station config's reference",
                         description="Print reference material generated from the config models.")
    cfg_verbs = cfg.add_subparsers(dest="config_verb", required=True, metavar="VERB")
    cfg_verbs.add_parser("reference", help="every key with its default and description, as commented YAML",
                         description="Print every station-config key with its default and description (YAML with "
                                     "comments; alternatives commented out). docs/reference-config.yaml is this "
                                     "output.").set_defaults(func=_reference)

    d = sub.add_parser("demo", help="the main job end to end on the bundled defaults",
                       description="fit (fast preset) -> calibrate -> evaluate with HTML report -> run the daemon "
                                   "on test images, printing where everything went. Without --data it runs on a "
                                   "small dataset generated into OUTPUT/data (texture + synthetic defects).")
    d.add_argument("-o", "--output", default="demo-out", help="output folder (default demo-out)")
    d.add_argument("--data", default=None, metavar="DIR",
                   help="MVTec-layout dataset, e.g. magnetic_tile laid out by `linesight data prepare-magnetic-tile` "
                        "(default: generated; see docs/data.md)")
    d.add_argument("--weights", default="imagenet",
                   help="imagenet (default: the installed EfficientNet-Lite0 weights, offline) | none | self | PATH")
    d.add_argument("--frames", type=int, default=40, help="test images the daemon inspects (default 40)")
    d.set_defaults(func=_demo)
