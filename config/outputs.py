"""Validated settings for the daemon's outputs: MQTT, ZeroMQ, Prometheus metrics, the frame archive and the
verdict log.

Why a separate module: these settings are edited by integrators on site (PLC gateway, HMI, monitoring),
so every field documents itself, unknown keys are rejected (a typo must not silently disable an output),
and secrets are never accepted inline - only the *name* of an environment variable or a file path.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from linesight.config.base import Strict

# One MQTT topic level: no separators, wildcards, NUL or leading '$' (reserved for broker topics).
_TOPIC_LEVEL = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_ZMQ_ENDPOINT = re.compile(r"^(tcp|ipc|inproc)://\S+$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

#: Commands the daemon accepts on ``<prefix>/<site>/<line>/<station>/cmd/<name>``.
MQTT_COMMANDS: tuple[str, ...] = ("reload", "pause", "resume", "feedback", "part")


def _topic_level(value: str, field: str) -> str:
    if not _TOPIC_LEVEL.match(value):
        raise ValueError(
            f"{field}={value!r} is not a valid MQTT topic level: use 1-64 characters from "
            "letters, digits, '_', '-', '.' (no '/', '+', '#', spaces)"
        )
    return value


class MqttTlsConfig(Strict):
    """TLS for the broker connection; the broker's certificate is always verified unless `insecure`."""


    ca_file: Path | None = Field(
        default=None,
        description="PEM CA bundle that signed the broker certificate; None uses the system trust store.",
    )
    cert_file: Path | None = Field(
        default=None, description="PEM client certificate for mutual TLS (requires key_file)."
    )
    key_file: Path | None = Field(
        default=None, description="PEM private key of cert_file (requires cert_file)."
    )
    insecure: bool = Field(
        default=False,
        description="Skip broker hostname verification. Only for commissioning; never in production.",
    )

    @model_validator(mode="after")
    def _pair(self) -> MqttTlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("mqtt.tls: set both cert_file and key_file for client certificates, or neither")
        return self


class MqttConfig(Strict):
    """Verdicts, alarms, status and commands over MQTT v5 (the PLC gateway / MES path)."""


    enabled: bool = Field(default=True, description="Publish to an MQTT broker (a section that is present is on; "
                          "`enabled: false` or no section turns it off).")
    host: str = Field(default="127.0.0.1", min_length=1, description="Broker host name or IP.")
    port: int = Field(default=1883, ge=1, le=65535, description="Broker port (1883 plain, 8883 TLS).")
    client_id: str | None = Field(
        default=None,
        max_length=128,
        description="MQTT client id; None derives 'linesight-<site>-<line>-<station>' so a restarted "
        "daemon replaces its own old session and two stations never collide.",
    )
    tls: MqttTlsConfig | None = Field(default=None, description="TLS settings; None = plain TCP.")
    username: str | None = Field(default=None, description="Broker user name (None = anonymous).")
    password_env: str | None = Field(
        default=None,
        description="Name of the environment variable holding the password (the value is never logged).",
    )
    password_file: Path | None = Field(
        default=None,
        description="File whose first line is the password (e.g. a systemd credential); never logged.",
    )
    topic_prefix: str = Field(default="linesight", description="First topic level of every topic.")
    site: str = Field(default="site1", description="Site topic level.")
    line: str = Field(default="line1", description="Production line topic level.")
    station: str = Field(default="station1", description="Station (camera position) topic level.")
    keepalive_s: int = Field(
        default=15,
        ge=5,
        le=600,
        description="MQTT keepalive; a dead link is detected after ~1.5x this, then verdicts are dropped.",
    )
    qos_verdict: Literal[0, 1, 2] = Field(default=1, description="QoS of verdict messages.")
    stats_interval_s: float = Field(
        default=10.0, ge=0.0, description="Period of the stats message (0 disables it)."
    )
    reconnect_min_s: int = Field(default=1, ge=1, description="First reconnect delay (doubles per failure).")
    reconnect_max_s: int = Field(default=2, ge=1, description="Upper bound of the reconnect delay: the PLC link is "
                                 "back within this many seconds of the broker's return.")
    commands: list[Literal[MQTT_COMMANDS]] = Field(
        default_factory=lambda: list(MQTT_COMMANDS),
        description="Commands this station executes; others are answered 'not enabled' (e.g. [pause, resume, "
        "feedback] where model changes must come from the engineering PC). Pair with a broker ACL.",
    )
    max_queued_messages: int = Field(
        default=1000,
        ge=4,
        le=10_000,
        description="Cap on messages waiting for a broker ACK (about 1 KB each); beyond it verdicts are dropped, "
        "counted and reported by alarm verdicts_dropped instead of piling up in memory (their MQTT expiry is the "
        "deadline anyway). The former default of 32 dropped 12 verdicts at 200 frames/s on a loaded 2-core box.",
    )

    @property
    def station_id(self) -> str:
        """site/line/station: names the station in verdicts, alarms and its state file."""
        return f"{self.site}/{self.line}/{self.station}"

    @field_validator("topic_prefix", "site", "line", "station")
    @classmethod
    def _levels(cls, v: str, info: ValidationInfo) -> str:
        return _topic_level(v, f"mqtt.{info.field_name}")

    @field_validator("password_env")
    @classmethod
    def _env(cls, v: str | None) -> str | None:
        if v is not None and not _ENV_NAME.match(v):
            raise ValueError(
                f"mqtt.password_env={v!r} must be the NAME of an environment variable "
                "(e.g. LINESIGHT_MQTT_PASSWORD), not the password itself"
            )
        return v

    @model_validator(mode="after")
    def _consistent(self) -> MqttConfig:
        if self.password_env is not None and self.password_file is not None:
            raise ValueError("mqtt: set password_env or password_file, not both")
        if (self.password_env is not None or self.password_file is not None) and not self.username:
            raise ValueError("mqtt: a password (password_env/password_file) needs a username")
        if self.reconnect_min_s > self.reconnect_max_s:
            raise ValueError(
                f"mqtt: reconnect_min_s={self.reconnect_min_s} is larger than reconnect_max_s={self.reconnect_max_s}"
            )
        return self

    @property
    def base_topic(self) -> str:
        """`<prefix>/<site>/<line>/<station>`: the root of every topic this station uses."""
        return f"{self.topic_prefix}/{self.site}/{self.line}/{self.station}"

    @property
    def effective_client_id(self) -> str:
        return self.client_id or f"linesight-{self.site}-{self.line}-{self.station}"


class ZmqConfig(Strict):
    """Low-latency local feed for HMIs: verdicts and (optionally) images over ZeroMQ PUB sockets."""


    enabled: bool = Field(default=True, description="Publish on ZeroMQ.")
    verdict_endpoint: str = Field(
        default="tcp://127.0.0.1:5556", description="Bind address of the verdict PUB socket."
    )
    image_endpoint: str | None = Field(
        default="tcp://127.0.0.1:5557",
        description="Bind address of the image PUB socket; None disables images (verdicts still flow).",
    )
    verdict_sndhwm: int = Field(
        default=100, ge=1, description="Per-subscriber send queue (messages) for verdicts."
    )
    image_sndhwm: int = Field(
        default=4, ge=1, description="Per-subscriber send queue (messages) for images; keep small."
    )
    image_format: Literal["jpeg", "png"] = Field(default="jpeg", description="Image encoding.")
    jpeg_quality: int = Field(default=85, ge=1, le=100, description="JPEG quality when image_format=jpeg.")
    send_heatmap: bool = Field(default=True, description="Attach the colour-mapped anomaly heatmap.")

    @field_validator("verdict_endpoint", "image_endpoint")
    @classmethod
    def _endpoint(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is not None and not _ZMQ_ENDPOINT.match(v):
            raise ValueError(
                f"zmq.{info.field_name}={v!r} is not a ZeroMQ endpoint; expected e.g. 'tcp://127.0.0.1:5556' "
                "or 'ipc:///run/linesight/verdicts'"
            )
        return v

    @model_validator(mode="after")
    def _distinct(self) -> ZmqConfig:
        if self.image_endpoint is not None and self.image_endpoint == self.verdict_endpoint:
            raise ValueError("zmq: verdict_endpoint and image_endpoint must differ")
        return self


class MetricsConfig(Strict):
    """Prometheus `/metrics` and `/healthz` HTTP endpoint."""


    enabled: bool = Field(default=True, description="Serve /metrics and /healthz.")
    host: str = Field(
        default="127.0.0.1", description="Listen address; 0.0.0.0 only behind a firewall."
    )
    port: int = Field(default=9108, ge=0, le=65535, description="Listen port (0 = any free port).")


class ArchiveConfig(Strict):
    """On-disk archive of inspected frames for audits and re-training, bounded in size and age."""


    enabled: bool = Field(default=True, description="Write frames to the archive (a section that is present is on; "
                          "`enabled: false` or no section turns it off).")
    dir: Path = Field(default=Path("/var/lib/linesight/archive"), description="Archive root directory.")
    save_ok_fraction: float = Field(
        default=0.01,
        ge=0.0,
        le=1.0,
        description="Fraction of OK frames kept (chosen deterministically from seq); NG is always kept.",
    )
    max_bytes: int = Field(
        default=20 * 1024**3, ge=1024 * 1024, description="Total size cap; oldest records are deleted first."
    )
    max_age_days: float = Field(default=30.0, gt=0.0, description="Records older than this are deleted.")
    min_free_bytes: int = Field(
        default=1024**3, ge=0, description="Free space kept on the archive's disk for everything else on the box: "
        "the oldest records are deleted to keep it; when the archive is empty and it is still short, frames are "
        "not archived (alarm archive_error).",
    )
    image_format: Literal["png", "jpeg"] = Field(
        default="png", description="Image encoding; png is lossless (best for re-training)."
    )
    jpeg_quality: int = Field(default=95, ge=1, le=100, description="JPEG quality when image_format=jpeg.")


class VerdictLogConfig(Strict):
    """Every verdict as one JSON line on local disk (traceability: which part got which decision, when, from
    which model), kept whatever MQTT does; size-rotated like logrotate: path, path.1 ... path.<keep>."""


    enabled: bool = Field(default=True, description="Write the verdict log (a section that is present is on; "
                          "`enabled: false` or no section turns it off).")
    path: Path = Field(default=Path("/var/lib/linesight/verdicts.jsonl"),
                       description="The current log file; rotated files get .1 (newest) to .<keep> beside it.")
    max_bytes: int = Field(default=64 * 1024**2, ge=64 * 1024, description="Rotate when the file would grow "
                           "past this size.")
    keep: int = Field(default=10, ge=1, le=1000, description="Rotated files kept; the oldest is deleted.")


class OutputsConfig(Strict):
    """All outputs of one daemon instance. A section that is present is on unless it says `enabled: false`
    (an `mqtt:` block with a host was silently off before); a section left out keeps its default: mqtt,
    archive and verdict_log off, zmq and metrics (loopback-only) on."""


    mqtt: MqttConfig = Field(default_factory=lambda: MqttConfig(enabled=False), description="MQTT v5 output.")
    zmq: ZmqConfig = Field(default_factory=ZmqConfig, description="ZeroMQ HMI feed.")
    metrics: MetricsConfig = Field(default_factory=MetricsConfig, description="Prometheus endpoint.")
    archive: ArchiveConfig = Field(default_factory=lambda: ArchiveConfig(enabled=False), description="Frame archive.")
    verdict_log: VerdictLogConfig = Field(default_factory=lambda: VerdictLogConfig(enabled=False),
                                          description="JSONL verdict log.")

    def summary(self) -> dict[str, str]:
        """Each output: 'off' or where it goes; the start-up log lists them so an output that is off is seen."""
        m, z, a, v, p = self.mqtt, self.zmq, self.archive, self.verdict_log, self.metrics
        return {
            "mqtt": f"{'mqtts' if m.tls else 'mqtt'}://{m.host}:{m.port}/{m.base_topic}" if m.enabled else "off",
            "zmq": f"verdicts {z.verdict_endpoint}, images {z.image_endpoint or 'off'}" if z.enabled else "off",
            "metrics": f"http://{p.host}:{p.port}/metrics" if p.enabled else "off",
            "archive": str(a.dir) if a.enabled else "off",
            "verdict_log": str(v.path) if v.enabled else "off",
        }
