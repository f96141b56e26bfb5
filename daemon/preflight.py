"""Checks of a station config against this machine: files, secrets, ports, folders, before anything runs.

Why: the schema cannot know that the CA file is missing or port 9108 is taken, so `check-config` used
to pass configs that `run` then refused one problem per restart. `check-config` and `run` both call
`preflight`, which runs the very functions the sinks and sources call at start-up (no second copy of
a rule), collects every problem instead of stopping at the first, and points each at the YAML line
of its setting.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from linesight.config.daemon import AnalysisConfig, DaemonConfig, ModelConfig
from linesight.config.loader import YamlDocument, load_model_and_document
from linesight.config.outputs import MqttConfig, ZmqConfig
from linesight.config.sources import (
    FolderSourceConfig,
    GenICamSourceConfig,
    SourceConfig,
    VideoSourceConfig,
)
from linesight.errors import ConfigError, LinesightError
from linesight.project.workspace import DETECT_RESULTS, Project

__all__ = ["Problem", "check_before_start", "load_station", "preflight"]

log = logging.getLogger(__name__)

_PATH_PART = re.compile(r"\[(\d+)\]|([^.\[\]]+)")


@dataclass(frozen=True)
class Problem:
    """One reason the station would not run as configured on this machine."""

    where: str  # "station.yaml:12", or the file when the setting is not written in it (a default)
    field: str  # dotted config path, e.g. "outputs.mqtt.tls.ca_file"
    message: str  # what is wrong and how to fix it, one line
    blocks_start: bool = True  # False: `run` starts anyway, degraded by design (e.g. no model yet)

    def __str__(self) -> str:
        return f"{self.where}: {self.field}: {self.message}"


def load_station(path: str | Path) -> tuple[DaemonConfig, YamlDocument]:
    """The station config with relative model/spec paths resolved against the config's folder, plus its
    YAML document so problems found later can name the line of their setting."""
    cfg, doc = load_model_and_document(path, DaemonConfig)
    base = Path(path).resolve().parent
    m = cfg.model
    if m.bundle is not None and not m.bundle.is_absolute():
        m.bundle = base / m.bundle
    if m.project is not None:
        m.project = m.project if m.project.is_absolute() else base / m.project
        if "dir" not in cfg.outputs.archive.model_fields_set:  # detect results land in the project
            cfg.outputs.archive.dir = m.project / DETECT_RESULTS
    for key in ("spec", "knowledge"):
        value = getattr(cfg.analysis, key)
        if value is not None and not value.is_absolute():
            setattr(cfg.analysis, key, base / value)
    return cfg, doc


class _Found:
    """The problems found so far, each with the line of its setting (for sorting into file order)."""

    def __init__(self, doc: YamlDocument | None) -> None:
        self.doc = doc
        self.items: list[tuple[int, Problem]] = []

    def add(self, field: str, message: str, *, blocks_start: bool = True) -> None:
        line = None
        if self.doc is not None:
            path: tuple[str | int, ...] = tuple(
                int(i) if i else name for i, name in _PATH_PART.findall(field))
            while path and path not in self.doc.lines:
                path = path[:-1]  # a default the file does not write: point at its section
            line = self.doc.lines.get(path) if path else None
        name = self.doc.source_name if self.doc is not None else "config"
        where = f"{name}:{line}" if line is not None else name
        order = line if line is not None else sys.maxsize  # settings the file does not write: last
        self.items.append((order, Problem(where, field, message, blocks_start)))

    def run(self, field: str, check: Callable[..., Any], *args: Any, unless_start: str = "") -> Any:
        """`check(*args)`, or None after turning its LinesightError into a problem on the error's own field
        (else `field`). With `unless_start` the daemon tolerates the problem at start-up; the text says how."""
        try:
            return check(*args)
        except LinesightError as exc:
            message = exc.detail + (f"; `run` starts anyway: {unless_start}" if unless_start else "")
            self.add(exc.field or field, message, blocks_start=not unless_start)
            return None


def preflight(cfg: DaemonConfig, doc: YamlDocument | None = None) -> list[Problem]:
    """Every problem that would stop (or degrade) `linesight run` with `cfg` on this machine, in file order.

    Ports are bound and released again, all at once so two settings naming the same port clash here too;
    the archive check writes and removes one temp file. Nothing else is created or changed.
    """
    found = _Found(doc)
    _model(found, cfg.model)
    _source(found, cfg.source)
    _analysis(found, cfg.analysis)
    out = cfg.outputs
    from linesight.daemon.identity import check_state, state_dir_of

    station = out.mqtt.station_id
    found.run("pipeline.state_dir", check_state, state_dir_of(cfg.pipeline.state_dir), station)
    if out.mqtt.enabled:
        _mqtt(found, out.mqtt)
    with contextlib.ExitStack() as held:  # every listener stays bound until all are tried
        if out.metrics.enabled:
            from http.server import BaseHTTPRequestHandler

            from linesight.daemon.metrics_http import listen_http

            server = found.run("outputs.metrics.port", listen_http, out.metrics.host, out.metrics.port,
                               BaseHTTPRequestHandler)
            if server is not None:
                held.callback(server.server_close)
        if out.zmq.enabled:
            _zmq(found, out.zmq, held)
    if out.archive.enabled:
        from linesight.daemon.sinks.archive import check_archive_dir

        found.run("outputs.archive.dir", check_archive_dir, out.archive.dir,
                  unless_start="frames are not archived until the folder is usable")
    if out.verdict_log.enabled:
        from linesight.daemon.sinks import verdict_log

        found.run("outputs.verdict_log.path", verdict_log.check_verdict_log, out.verdict_log)
        found.run("outputs.verdict_log.path", verdict_log.check_verdict_log_dir, out.verdict_log,
                  unless_start="verdicts are not logged until the folder is usable")
    return [p for _, p in sorted(found.items, key=lambda item: item[0])]


def check_before_start(cfg: DaemonConfig, doc: YamlDocument | None = None) -> None:
    """`run`'s gate, called before anything binds a port or opens the camera: ConfigError listing every
    problem that would stop the daemon; problems it runs degraded with are logged as warnings."""
    problems = preflight(cfg, doc)
    for p in problems:
        if not p.blocks_start:
            log.warning("%s", p)
    fatal = [str(p) for p in problems if p.blocks_start]
    if fatal:
        name = doc.source_name if doc is not None else "config"
        noun = "problem" if len(fatal) == 1 else "problems"
        raise ConfigError("\n".join([f"{name}: cannot start ({len(fatal)} {noun}):", *fatal]))


# ---------------------------------------------------------------------- one section each


def _model(found: _Found, m: ModelConfig) -> None:
    if m.project is not None:
        try:
            Project.open(m.project).active_bundle()
        except LinesightError as exc:
            found.add("model.project", f"{exc}; `run` starts anyway: every frame gets the fail-safe verdict "
                      "(no_model) until a version is activated", blocks_start=False)
    elif not m.bundle.exists():
        found.add("model.bundle", f"{m.bundle} does not exist; `run` starts anyway: every frame gets the "
                  "fail-safe verdict (no_model) until a bundle appears there or arrives by cmd/reload",
                  blocks_start=False)
    for i, folder in enumerate(m.reload_dirs or []):
        if not folder.is_dir():
            state = "is not a folder" if folder.exists() else "does not exist"
            found.add(f"model.reload_dirs[{i}]", f"{folder} {state}; `run` starts anyway, but cmd/reload "
                      "cannot load bundles from it", blocks_start=False)


def _source(found: _Found, src: SourceConfig) -> None:
    if isinstance(src, FolderSourceConfig):
        from linesight.daemon.sources.folder import check_folder

        found.run("source.path", check_folder, src)
    elif isinstance(src, VideoSourceConfig):
        from linesight.daemon.sources.video import is_stream_uri, open_video_file

        if not is_stream_uri(src.uri):  # streams and devices are reconnected at run time, not refused
            cap = found.run("source.uri", open_video_file, src)
            if cap is not None:
                cap.release()
    elif isinstance(src, GenICamSourceConfig):
        from linesight.daemon.sources.factory import require_camera_support

        before = len(found.items)
        found.run("source.type", require_camera_support, src)
        if len(found.items) == before:  # the producer lookup needs the camera packages
            from linesight.daemon.sources.genicam import producer_files

            found.run("source.cti", producer_files, src.cti)


def _analysis(found: _Found, a: AnalysisConfig) -> None:
    from linesight.config.inspection import load_inspection_spec, load_knowledge_base

    spec = None
    if a.spec is not None:
        spec = _yaml_file(found, "analysis.spec", "inspection spec", a.spec, load_inspection_spec)
    if a.knowledge is not None:
        _yaml_file(found, "analysis.knowledge", "knowledge base", a.knowledge, load_knowledge_base, spec)


def _yaml_file(found: _Found, field: str, what: str, path: Path, load: Callable[..., Any], *args: Any) -> Any:
    """Load a YAML file the config names with its own loader; each of its file:line errors is a problem."""
    if not path.is_file():
        state = "is not a file" if path.exists() else "does not exist"
        found.add(field, f"{what} {path} {state} (relative paths are relative to the station config)")
        return None
    try:
        return load(path, *args)
    except ConfigError as exc:
        lines = exc.detail.splitlines()
        for line in lines[1:] if len(lines) > 1 else lines:  # drop the "N problems:" header
            found.add(field, f"{what} does not load: {line.strip()}")
        return None


def _mqtt(found: _Found, mqtt: MqttConfig) -> None:
    from linesight.daemon.sinks.mqtt_secrets import (
        read_password,
        tls_context,
        tls_file_problems,
    )

    if mqtt.username:
        found.run("outputs.mqtt.password_env", read_password, mqtt)  # the value is dropped, never shown
    if mqtt.tls is not None:
        unusable = tls_file_problems(mqtt.tls)
        for exc in unusable:
            found.add(exc.field or "outputs.mqtt.tls", exc.detail)
        if not unusable:
            found.run("outputs.mqtt.tls", tls_context, mqtt.tls)


def _zmq(found: _Found, cfg: ZmqConfig, held: contextlib.ExitStack) -> None:
    import zmq

    from linesight.daemon.sinks.zmq_sink import bind_socket, sockets

    ctx = zmq.Context()
    held.callback(ctx.term)  # runs after the sockets below are closed (ExitStack unwinds in reverse)
    for field, kind, endpoint, hwm in sockets(cfg):
        sock = found.run(field, bind_socket, ctx, kind, endpoint, hwm, field)
        if sock is not None:
            held.callback(sock.close, 0)
