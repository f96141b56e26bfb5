"""The UI's configuration (`linesight ui --config ui.yaml`): where it listens, which stations' ZeroMQ feeds it
shows, how it sends them commands (MQTT) and where their archives are, which model answers POST /api/v1/inspect,
and who may do what.

Why its own file and model: the UI is a process of its own beside the stations (a crash there never touches a
station), so it reads only the feeds' endpoints, broker and archive folder, never a station config. A station's
`mqtt` section holds the broker and topic settings of the station's outputs.mqtt and is checked by that very
model (`MqttConfig`), so topics and credentials follow one rule. Relative paths are relative to the file.
"""
from __future__ import annotations

import re
from pathlib import Path

from pydantic import Field, ValidationError, field_validator, model_validator

from linesight.config.base import Strict
from linesight.config.daemon import TrendsConfig
from linesight.config.loader import YamlDocument, format_path, load_model_and_document
from linesight.config.outputs import MqttConfig, MqttTlsConfig
from linesight.errors import ConfigError

_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_CONNECT = re.compile(r"^(tcp|ipc|inproc)://\S+$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ListenConfig(Strict):
    """The UI's HTTP address. Loopback by default: other machines reach it through a TLS reverse proxy."""

    host: str = Field("127.0.0.1", min_length=1, description="Address to listen on (127.0.0.1: this machine only; "
                      "put a TLS reverse proxy in front for others, docs/ui.md)")
    port: int = Field(8090, ge=1, le=65535, description="TCP port")


class StationMqttConfig(Strict):
    """How the UI reaches a station's commands: the broker and topic levels of the station's outputs.mqtt (copy
    them), and the UI's own broker login (a user allowed to write <base>/cmd/+ and read its replies)."""

    host: str = Field("127.0.0.1", min_length=1, description="Broker host name or IP (the station's mqtt.host)")
    port: int = Field(1883, ge=1, le=65535, description="Broker port (1883 plain, 8883 TLS)")
    tls: MqttTlsConfig | None = Field(None, description="TLS to the broker, as outputs.mqtt.tls; null: plain TCP")
    username: str | None = Field(None, description="The UI's broker user (None = anonymous), e.g. the ACL's "
                                 "engineering user")
    password_env: str | None = Field(None, description="Name of the environment variable holding its password")
    password_file: Path | None = Field(None, description="File whose first line is its password")
    topic_prefix: str = Field("linesight", description="The station's mqtt.topic_prefix")
    site: str = Field("site1", description="The station's mqtt.site")
    line: str = Field("line1", description="The station's mqtt.line")
    station: str = Field("station1", description="The station's mqtt.station")
    reply_timeout_s: float = Field(5.0, gt=0, le=60, description="How long a command waits for the station's "
                                   "reply; later is answered 504 (a command not delivered by then expires)")

    def daemon_view(self, client_id: str | None = None) -> MqttConfig:
        """The same settings as the daemon's model: its base topic, password and TLS rules apply unchanged."""
        return MqttConfig(enabled=True, client_id=client_id, **self.model_dump(exclude={"reply_timeout_s"}))

    @model_validator(mode="after")
    def _as_the_daemon_checks_it(self) -> StationMqttConfig:
        try:
            self.daemon_view()
        except ValidationError as exc:  # its messages name the setting already: one line, without pydantic's tags
            raise ValueError("; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())) from None
        return self


class StationFeedConfig(Strict):
    """One station: its ZeroMQ feeds, as its daemon binds them (station config outputs.zmq); optionally its
    commands over MQTT and its archive folder (the Review page); the settings of the Trends page's charts."""

    name: str = Field(description="Name shown on the pages and used in the URLs (/api/v1/stations/NAME)")
    verdict_endpoint: str = Field(description="The daemon's outputs.zmq.verdict_endpoint, e.g. tcp://127.0.0.1:5556")
    image_endpoint: str | None = Field(None, description="The daemon's outputs.zmq.image_endpoint (latest frame "
                                       "and heatmap); null: verdicts only")
    mqtt: StationMqttConfig | None = Field(None, description="The station's broker and topics: commands (pause, "
                                           "resume, reload, feedback) from the pages; null: none")
    archive_dir: Path | None = Field(None, description="The station's outputs.archive.dir (a project station: "
                                     "<project>/detect_results): the Review page; null: no review")
    trends: TrendsConfig = Field(default_factory=TrendsConfig, description="The Trends page's charts, run by the "
                                 "UI on the verdicts it receives: give the station's own trends section")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(f"station name {v!r}: use 1-64 letters, digits, '_', '-', '.' (it is part of URLs)")
        return v

    @field_validator("verdict_endpoint", "image_endpoint")
    @classmethod
    def _endpoint(cls, v: str | None) -> str | None:
        if v is not None and not _CONNECT.match(v):
            raise ValueError(f"{v!r} is not a ZeroMQ endpoint; write the daemon's, e.g. 'tcp://127.0.0.1:5556'")
        return v


class InspectConfig(Strict):
    """The model behind POST /api/v1/inspect: a bundle, or a project's active version (followed when it changes)."""

    bundle: Path | None = Field(None, description="Bundle folder or .zip")
    project: Path | None = Field(None, description="Project folder: its active version answers, and a newly "
                                 "activated version is loaded on the next request")
    station: str = Field("inspect-api", description="`station` of the verdicts it answers; they have their own "
                         "run and seq, never mixed into a station's")
    threads: int | None = Field(None, ge=1, description="Inference threads (default: onnxruntime's choice)")
    deadline_ms: float = Field(10_000, gt=0, description="An image decided later than this after it arrived (a "
                               "busy engine) gets the fail-safe verdict deadline_missed, as on a station")
    max_waiting: int = Field(4, ge=1, description="Requests waiting for the engine at most; more are answered "
                             "503 (retry later) instead of queueing without end")
    max_frame_pixels: int = Field(64_000_000, ge=4, description="Largest image accepted (width x height); PNG and "
                                  "JPEG are checked from their header before decoding")
    spec: Path | None = Field(None, description="Inspection spec YAML (grades and OK/NG), as the station's "
                              "analysis.spec; without one the score threshold decides")
    knowledge: Path | None = Field(None, description="Knowledge base YAML (causes, actions), as analysis.knowledge")

    @model_validator(mode="after")
    def _one_model(self) -> InspectConfig:
        if (self.bundle is None) == (self.project is None):
            raise ValueError("give either bundle (a bundle path) or project (a project folder), not "
                             + ("both" if self.bundle is not None else "neither"))
        return self


class AuthConfig(Strict):
    """Tokens (kept as sha256 hashes only, never logged) and what may be done without one."""

    tokens_file: Path | None = Field(None, description="File with one token per line (at least 16 characters), "
                                     "or `sha256:<hex>` lines holding only a token's hash; # starts a comment")
    tokens_env: str | None = Field(None, description="Name of an environment variable holding one token "
                                   "(systemd: EnvironmentFile)")
    read_open: bool = Field(True, description="Read-only pages and endpoints need no token (false: every API call "
                            "needs one; the pages ask for it)")
    open_inspect: bool = Field(False, description="POST /api/v1/inspect needs no token (a line-side tool on "
                               "loopback only)")

    @field_validator("tokens_env")
    @classmethod
    def _env(cls, v: str | None) -> str | None:
        if v is not None and not _ENV_NAME.match(v):
            raise ValueError(f"tokens_env={v!r} must be the NAME of an environment variable, not a token")
        return v

    @property
    def has_tokens(self) -> bool:
        return self.tokens_file is not None or self.tokens_env is not None


class ProjectLinkConfig(Strict):
    """A project the pages show (Project & data, Training, Models) and may change: activate, rollback, fit, learn."""

    name: str = Field(description="Name shown on the pages and used in the URLs (/api/v1/projects/NAME)")
    dir: Path = Field(description="The project folder (`linesight project init`)")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(f"project name {v!r}: use 1-64 letters, digits, '_', '-', '.' (it is part of URLs)")
        return v


class UiConfig(Strict):
    listen: ListenConfig = Field(default_factory=ListenConfig, description="HTTP address")
    stations: list[StationFeedConfig] = Field(default_factory=list, description="Stations shown on the pages")
    projects: list[ProjectLinkConfig] = Field(default_factory=list, description="Projects shown on the pages "
                                              "(versions, training jobs, activation)")
    inspect: InspectConfig | None = Field(None, description="Model of POST /api/v1/inspect; null: it answers 503")
    auth: AuthConfig = Field(default_factory=AuthConfig, description="Tokens and open access")
    max_upload_mb: float = Field(64, gt=0, description="Largest request body (MB); bigger ones are answered 413")
    stale_after_s: float = Field(10, gt=0, description="A station counts as connected while a message came "
                                 "within this many seconds")

    @model_validator(mode="after")
    def _consistent(self) -> UiConfig:
        names = [s.name for s in self.stations]
        if dup := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"station names must be unique: {', '.join(dup)} given twice")
        names = [p.name for p in self.projects]
        if dup := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"project names must be unique: {', '.join(dup)} given twice")
        if not self.auth.has_tokens:
            if not self.auth.read_open:
                raise ValueError("auth.read_open is false but no token is configured: set auth.tokens_file or "
                                 "auth.tokens_env")
            if self.inspect is not None and not self.auth.open_inspect:
                raise ValueError("inspect needs a token: set auth.tokens_file or auth.tokens_env, or "
                                 "auth.open_inspect: true")
            if self.projects:
                raise ValueError("projects (activate, rollback, training jobs) need a token: set auth.tokens_file "
                                 "or auth.tokens_env")
            if commanded := [s.name for s in self.stations if s.mqtt is not None]:
                raise ValueError(f"commands to {', '.join(commanded)} (their mqtt section) need a token: set "
                                 "auth.tokens_file or auth.tokens_env")
        return self


def _where(doc: YamlDocument, path: tuple[str | int, ...]) -> str:
    line = doc.lines.get(path, doc.lines[()])
    return f"{doc.source_name}:{line}: {format_path(path)}"


def load_ui_config(path: str | Path) -> UiConfig:
    """Validated config with relative paths resolved against the file's folder; a named file or folder that
    does not exist is a ConfigError naming file:line."""
    cfg, doc = load_model_and_document(path, UiConfig)
    base = Path(path).resolve().parent
    wanted: list[tuple[tuple[str | int, ...], Path, str]] = []
    if cfg.inspect is not None:
        for key in ("bundle", "project", "spec", "knowledge"):
            value = getattr(cfg.inspect, key)
            if value is not None:
                value = value if value.is_absolute() else base / value
                setattr(cfg.inspect, key, value)
                wanted.append((("inspect", key), value, "a folder" if key == "project" else "a file or folder"))
    for i, station in enumerate(cfg.stations):
        if station.archive_dir is not None and not station.archive_dir.is_absolute():
            station.archive_dir = base / station.archive_dir
        mqtt = station.mqtt
        if mqtt is not None and mqtt.password_file is not None:
            mqtt.password_file = mqtt.password_file if mqtt.password_file.is_absolute() else base / mqtt.password_file
            wanted.append((("stations", i, "mqtt", "password_file"), mqtt.password_file, "a file"))
        for key in ("ca_file", "cert_file", "key_file"):
            value = getattr(mqtt.tls, key) if mqtt is not None and mqtt.tls is not None else None
            if value is not None:
                value = value if value.is_absolute() else base / value
                setattr(mqtt.tls, key, value)
                wanted.append((("stations", i, "mqtt", "tls", key), value, "a file"))
    for i, project in enumerate(cfg.projects):
        project.dir = project.dir if project.dir.is_absolute() else base / project.dir
        wanted.append((("projects", i, "dir"), project.dir, "a project folder"))
    if cfg.auth.tokens_file is not None and not cfg.auth.tokens_file.is_absolute():
        cfg.auth.tokens_file = base / cfg.auth.tokens_file
    if cfg.auth.tokens_file is not None:
        wanted.append((("auth", "tokens_file"), cfg.auth.tokens_file, "a file"))
    for where, value, what in wanted:
        if not value.exists():
            raise ConfigError(f"{_where(doc, where)}: {value} does not exist (expected {what}; relative paths are "
                              "relative to the UI config)")
    return cfg
