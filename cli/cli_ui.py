"""`linesight ui --config ui.yaml`: the web pages and HTTP API (docs/ui.md), a process of its own beside the
stations' daemons, so nothing it does can slow or stop one."""
from __future__ import annotations

import argparse
import logging
import socket

from linesight.errors import LinesightError

DESCRIPTION = """\
Serve the pages (Stations / live: every station's latest frame, heatmap, verdicts and counters, live; Review:
its archive with filters and feedback buttons; Project & data; Training: fit, learn and tune jobs with live
progress; Models: versions, reports, threshold preview, activate; Trends: control charts) and the HTTP API under
/api/v1 (OpenAPI: /api/v1/openapi.json), including POST /api/v1/inspect: an image in, a verdict in the daemon's
schema out.

The UI subscribes to each station's ZeroMQ feeds (the daemon's outputs.zmq endpoints) and reads its archive
folder; it acts on a station only through the station's MQTT commands (pause, resume, reload, feedback), with a
token. It listens on 127.0.0.1:8090 unless the config says otherwise; for other machines put a TLS reverse
proxy in front (docs/ui.md has an nginx example). Errors in the config are one line naming file:line.
"""

EPILOG = """\
example ui.yaml (every key: config/examples/ui.yaml):
  stations:
    - {name: line3, verdict_endpoint: "tcp://127.0.0.1:5556", image_endpoint: "tcp://127.0.0.1:5557",
       mqtt: {site: site1, line: line3, station: cam1}, archive_dir: /var/lib/linesight/archive}
  inspect: {project: /srv/tiles}          # or {bundle: model.zip}; POST /api/v1/inspect needs a token:
  auth: {tokens_env: LINESIGHT_UI_TOKEN}   # curl -H "Authorization: Bearer $TOKEN" --data-binary @part.png \\
                                           #   -H "Content-Type: image/png" http://127.0.0.1:8090/api/v1/inspect
then open http://127.0.0.1:8090/ (linesight -v ui ... for debug logs and every request)
"""


def _free(host: str, port: int) -> None:
    """Refuse a taken address in one line before the server starts (uvicorn would log and exit)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise LinesightError(f"cannot listen on {host}:{port} ({exc.strerror}); another process holds it "
                                 "or the address is not this machine's: change listen in the UI config") from None


def _ui(a: argparse.Namespace) -> int:
    from linesight.config.ui import load_ui_config

    cfg = load_ui_config(a.config)
    try:
        import uvicorn

        from linesight.ui.app import create_app
    except ImportError as exc:
        raise LinesightError(f"linesight ui needs the ui extra ({exc.name} is missing): "
                             "pip install 'linesight[ui]'") from None
    app = create_app(cfg)
    _free(cfg.listen.host, cfg.listen.port)
    logging.getLogger("linesight").info("ui on http://%s:%d/", cfg.listen.host, cfg.listen.port)
    # open event streams never end by themselves: on SIGTERM they get 2 s, then the server stops anyway
    uvicorn.run(app, host=cfg.listen.host, port=cfg.listen.port, log_config=None, access_log=a.verbose,
                log_level="debug" if a.verbose else "info", timeout_graceful_shutdown=2)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    u = subparsers.add_parser("ui", help="web pages and HTTP API: live stations, POST /api/v1/inspect",
                              description=DESCRIPTION, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    u.add_argument("--config", required=True, metavar="UI.yaml", help="the UI config (${ENV} substitution "
                   "supported; relative paths are relative to it)")
    u.set_defaults(func=_ui)
