"""The daemon's HTTP endpoint: `/metrics` (Prometheus exposition) and `/healthz` (JSON, 200 or 503)."""
from __future__ import annotations

import errno
import json
import logging
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST

from linesight.errors import ConfigError

log = logging.getLogger("linesight.daemon.metrics")  # the operator's view: one logger for metrics and endpoint
HEALTH_OK = ("ok", "degraded")  # answered with 200; anything else -> 503
HealthFn = Callable[[], Mapping[str, Any]]


def listen_http(host: str, port: int, handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
    """Bind the metrics HTTP server (SO_REUSEADDR, like every http.server); the start-up check binds and
    closes it the same way, so a port it passes is one `serve` can take. ConfigError names the fix."""
    try:
        return ThreadingHTTPServer((host, port), handler)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            why = f"port {port} on {host} is in use (another linesight or exporter?); stop it or change metrics.port"
        else:
            why = (f"cannot listen on {host}:{port} ({exc.strerror or exc}); metrics.host must be an address of "
                   "this machine (127.0.0.1, or the plant-network address) and metrics.port a free port")
        raise ConfigError(why, field="outputs.metrics.port") from None


def make_handler(exposition: Callable[[], bytes], health: HealthFn) -> type[BaseHTTPRequestHandler]:
    """`/metrics` answers exposition(), `/healthz` health(): ok/degraded 200, anything else or an exception 503."""
    class Handler(BaseHTTPRequestHandler):
        server_version = "linesight-metrics"

        def do_GET(self) -> None:  # noqa: N802 - http.server API
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, CONTENT_TYPE_LATEST, exposition())
            elif path == "/healthz":
                code, body = health_response(health)
                self._send(code, "application/json", body)
            else:
                self._send(404, "text/plain; charset=utf-8", b"not found; try /metrics or /healthz\n")

        def _send(self, code: int, ctype: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt: str, *args: Any) -> None:  # keep scrapes out of stderr
            log.debug("metrics http %s " + fmt, self.client_address[0], *args)

    return Handler


def health_response(health: HealthFn) -> tuple[int, bytes]:
    try:
        report = dict(health())
        status = report.get("status")
    except Exception as exc:
        log.exception("metrics: health callback failed")
        report, status = {"status": "unhealthy", "error": f"health check failed: {type(exc).__name__}"}, "unhealthy"
    code = 200 if status in HEALTH_OK else 503
    return code, json.dumps(report, default=str).encode()
