"""MQTT v5 output: verdicts, alarms, status and stats out; commands in.

Topic tree (base = ``<prefix>/<site>/<line>/<station>``)::

    base/verdict             QoS1, not retained, MessageExpiryInterval = ceil(deadline_ms / 1000) s (>= 1)
    base/alarm               QoS1, not retained   {"schema": "linesight.alarm/1", code, message, context}
    base/status              QoS1, retained       "online" | "degraded" | "offline" (Last Will = "offline")
    base/stats               QoS0, not retained   {"schema": "linesight.stats/1", ...}
    base/cmd/<name>          in:  JSON object, optional "id"; names: reload, pause, resume, feedback
    base/cmd/<name>/reply    out: {"id", "command", "ok": true, "result": {...}} or {"id", "command", "ok": false, "error"}

Why verdicts are never delivered late: a PLC that acts on a verdict for a part that has already left
the station rejects the wrong part. paho would queue QoS1 messages while disconnected and replay them
after reconnecting, so:

1. while the client is not connected, `publish_verdict` drops the verdict and counts it
   (`dropped_disconnected`) instead of handing it to paho;
2. `max_queued_messages_set` caps what can pile up while a dead link is still undetected
   (publishes beyond it are dropped and counted as `dropped_queue_full`);
3. on every reconnect, before paho replays its unacknowledged messages, verdicts still waiting for a
   PUBACK from the previous connection are purged (`dropped_stale`). paho has no public API for that;
   we take its own `_out_message_mutex` and remove entries from `_out_messages` (checked against
   paho-mqtt 2.2; if those attributes disappear the sink logs an error once and relies on 1 + 2);
4. every verdict carries MessageExpiryInterval, so a broker never hands it to a slow or returning
   subscriber after the part is gone.

Commands are subscribed with ``cmd/+`` (not ``cmd/#``, which would echo our own replies back), with
retained messages refused (a retained "pause" must not re-pause the line on every restart), and with a
clean session so commands sent while the daemon was offline are not executed late.

Threads: publish_* may be called from any thread and never block on the network (paho's network
thread does the I/O). `on_command` runs on paho's network thread: keep it short, hand slow work
(e.g. a model reload) to another thread and reply with "accepted". It returns the reply's "result"
dict; a LinesightError or ValueError it raises becomes an error reply carrying its message, any
other exception an "internal error" reply (logged with traceback).
"""

from __future__ import annotations

import json
import logging
import math
import os
import ssl
import sys
import threading
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from linesight.config.outputs import MQTT_COMMANDS, MqttConfig, MqttTlsConfig
from linesight.daemon.sinks.encoding import verdict_json
from linesight.errors import ConfigError, LinesightError

log = logging.getLogger(__name__)

STATUS_STATES = ("online", "degraded", "offline")
_MAX_COMMAND_BYTES = 64 * 1024
_MAX_ID_LEN = 128

CommandHandler = Callable[[str, dict[str, Any]], dict[str, Any]]


class _NoSocketNoise(logging.Filter):
    """paho 2.x logs 'Client is not connected' at ERROR whenever its network loop turns without a socket:
    after our own disconnect() (a race with loop_stop, ~1 stop in 7) and between connection attempts on a
    loaded machine. The sink reports every real connection problem itself (on_connect_fail/on_disconnect,
    with broker and hint), so this line becomes DEBUG. Only for this client's network thread."""

    def __init__(self, thread_name: str) -> None:
        super().__init__()
        self._thread_name = thread_name

    def filter(self, record: logging.LogRecord) -> bool:
        if (record.levelno >= logging.ERROR and record.threadName == self._thread_name
                and str(record.msg).startswith("Client is not connected")):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# ---------------------------------------------------------------------- secrets / TLS
# Module functions, not methods: `linesight check-config` and the start-up check call the very same code
# the sink runs in start(), so a config they pass cannot be refused here.

_FIELD = "outputs.mqtt"


def read_password(cfg: MqttConfig) -> str | None:
    """The broker password from `password_env` / `password_file` (None: none configured).

    Raises ConfigError naming the setting; the value itself never appears in a message."""
    if cfg.password_env:
        value = os.environ.get(cfg.password_env)
        if value is None:
            raise ConfigError(
                f"environment variable {cfg.password_env} is not set; export it in the daemon's environment "
                "(e.g. systemd EnvironmentFile=)", field=f"{_FIELD}.password_env")
        return value
    if cfg.password_file:
        field = f"{_FIELD}.password_file"
        try:
            with open(cfg.password_file, encoding="utf-8") as fh:
                value = fh.readline().rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise ConfigError(f"cannot read {cfg.password_file} ({why}); check the path and that the daemon "
                              "user may read it", field=field) from None
        if not value:
            raise ConfigError(f"{cfg.password_file} is empty; its first line must be the broker password",
                              field=field)
        return value
    return None


def tls_file_problems(tls: MqttTlsConfig) -> list[ConfigError]:
    """One error per configured TLS file that is missing or unreadable (all of them, for check-config)."""
    problems = []
    for name in ("ca_file", "cert_file", "key_file"):
        path = getattr(tls, name)
        if path is None:
            continue
        field = f"{_FIELD}.tls.{name}"
        try:
            with open(path, "rb"):
                pass
        except FileNotFoundError:
            problems.append(ConfigError(f"file not found: {path}; fix the path", field=field))
        except IsADirectoryError:
            problems.append(ConfigError(f"{path} is a folder; name the PEM file", field=field))
        except OSError as exc:
            problems.append(ConfigError(f"cannot read {path} ({exc.strerror}); the daemon user needs read "
                                        "access", field=field))
    return problems


def _no_key_passphrase() -> str:
    # Without a callback OpenSSL would prompt on the terminal (a daemon would hang or fail obscurely).
    raise ConfigError("the private key is encrypted; linesight needs an unencrypted key (openssl pkey -in "
                      "key.pem -out plain.pem), protected by file permissions", field=f"{_FIELD}.tls.key_file")


def tls_context(tls: MqttTlsConfig) -> ssl.SSLContext:
    """The client TLS context, built exactly like paho's `tls_set` (TLS client protocol, broker certificate
    and host name verified) but with errors that name the file at fault."""
    problems = tls_file_problems(tls)
    if problems:
        raise problems[0]
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if tls.cert_file is not None:
        try:
            context.load_cert_chain(str(tls.cert_file), str(tls.key_file) if tls.key_file else None,
                                    password=_no_key_passphrase)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            raise ConfigError(f"cannot load the client certificate {tls.cert_file} with key {tls.key_file} "
                              f"({exc}); they must be PEM files and belong together",
                              field=f"{_FIELD}.tls.cert_file") from None
    context.verify_mode = ssl.CERT_REQUIRED
    if tls.ca_file is not None:
        try:
            context.load_verify_locations(str(tls.ca_file))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot load CA certificates from {tls.ca_file} ({exc}); it must hold PEM "
                              "certificates", field=f"{_FIELD}.tls.ca_file") from None
    else:
        context.load_default_certs()
    return context


class MqttSink:
    """One station's MQTT v5 connection. Create, `start()`, publish from any thread, `stop()`."""

    def __init__(
        self,
        cfg: MqttConfig,
        on_command: CommandHandler | None = None,
        *,
        stats_provider: Callable[[], dict[str, Any]] | None = None,
        initial_state: str = "online",
    ) -> None:
        """`stats_provider` (optional) is called every `cfg.stats_interval_s` on a sink-owned thread
        and its dict is published on `stats`; without it the daemon calls `publish_stats` itself.
        `initial_state` is what the first connect announces (the daemon: degraded until a model runs)."""
        self._cfg = cfg
        self._on_command = on_command
        self._stats_provider = stats_provider
        base = cfg.base_topic
        self.topic_verdict = f"{base}/verdict"
        self.topic_alarm = f"{base}/alarm"
        self.topic_status = f"{base}/status"
        self.topic_stats = f"{base}/stats"
        self.topic_cmd_filter = f"{base}/cmd/+"
        self._cmd_prefix = f"{base}/cmd/"
        self._lock = threading.Lock()
        self._counters = dict.fromkeys(
            (
                "published",
                "acked",
                "dropped_disconnected",
                "dropped_queue_full",
                "dropped_stale",
                "publish_errors",
                "connects",
                "commands_ok",
                "commands_rejected",
                "alarm_verdicts_dropped",  # exposed as linesight_alarms_total{code="verdicts_dropped"}
            ),
            0,
        )
        if initial_state not in STATUS_STATES:
            raise ValueError(f"MQTT status must be one of {STATUS_STATES}, got {initial_state!r}")
        self._state = initial_state  # state re-announced on every (re)connect
        self._outage: dict[str, Any] | None = None  # verdicts dropped since the link went down (under _lock)
        self._expiry_props: dict[int, Properties] = {}
        self._client: mqtt.Client | None = None
        self._stopping = threading.Event()
        self._cmd_ready = threading.Event()
        self._cmd_sub_mid: int | None = None
        self._stats_thread: threading.Thread | None = None
        self._logged_problems: set[str] = set()
        self._purge_broken = False

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Connect in the background (returns at once); reconnects forever with backoff."""
        if self._client is not None:
            raise LinesightError("MqttSink.start() called twice; create a new MqttSink instead")
        cfg = self._cfg
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=cfg.effective_client_id,
            protocol=mqtt.MQTTv5,
        )
        paho_log = logging.getLogger(f"{__name__}.paho")
        client.enable_logger(paho_log)
        self._paho_filter = (paho_log, _NoSocketNoise(f"paho-mqtt-client-{cfg.effective_client_id}"))
        paho_log.addFilter(self._paho_filter[1])
        if cfg.username:
            client.username_pw_set(cfg.username, read_password(cfg))
        if cfg.tls is not None:
            client.tls_set_context(tls_context(cfg.tls))
            if cfg.tls.insecure:
                log.warning("mqtt.tls.insecure=true: broker hostname is NOT verified")
                client.tls_insecure_set(True)
        client.will_set(self.topic_status, "offline", qos=1, retain=True)
        client.reconnect_delay_set(cfg.reconnect_min_s, cfg.reconnect_max_s)
        client.max_queued_messages_set(cfg.max_queued_messages)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        self._client = client
        log.info(
            "mqtt connecting broker=%s:%d client_id=%s tls=%s user=%s base=%s",
            cfg.host, cfg.port, cfg.effective_client_id, cfg.tls is not None, cfg.username or "-",
            cfg.base_topic,
        )
        # clean_start=True: no session carried over, so no stale commands or verdicts from before.
        client.connect_async(cfg.host, cfg.port, keepalive=cfg.keepalive_s, clean_start=True)
        client.loop_start()
        if self._stats_provider is not None and cfg.stats_interval_s > 0:
            self._stats_thread = threading.Thread(target=self._stats_loop, name="mqtt-stats", daemon=True)
            self._stats_thread.start()

    def stop(self, timeout_s: float = 2.0) -> None:
        """Publish retained `offline`, wait (bounded) for its ACK, disconnect, stop the network thread."""
        client = self._client
        if client is None or self._stopping.is_set():
            return
        self._stopping.set()
        if self._stats_thread is not None:
            self._stats_thread.join(timeout_s)
        if client.is_connected():
            info = client.publish(self.topic_status, "offline", qos=1, retain=True)
            try:  # both raise if the link dropped meanwhile (rc NO_CONN): the Last Will then says offline
                info.wait_for_publish(timeout_s)
                acked = info.is_published()
            except (RuntimeError, ValueError) as exc:
                acked = False
                log.warning("mqtt could not publish offline status before disconnect: %s", exc)
            if not acked:
                log.warning("mqtt offline status not acknowledged within %.1fs; the Last Will covers it", timeout_s)
        client.disconnect()
        client.loop_stop()
        logger, noise = self._paho_filter
        logger.removeFilter(noise)
        log.info("mqtt stopped counters=%s", self.counters)

    # ------------------------------------------------------------------ state

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.is_connected()

    @property
    def commands_ready(self) -> bool:
        """True once the broker acknowledged the cmd/+ subscription on the current connection."""
        return self._cmd_ready.is_set() and self.connected

    @property
    def counters(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counters)

    @property
    def published(self) -> int:
        return self._counters["published"]

    @property
    def dropped_disconnected(self) -> int:
        return self._counters["dropped_disconnected"]

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._counters[key] += n

    # ------------------------------------------------------------------ publishing

    def publish_verdict(self, verdict: dict[str, Any], payload: bytes | None = None) -> bool:
        """Send one verdict now or never. `payload`: its JSON when the caller has it already (the daemon encodes
        each verdict once for every output). Returns True if handed to the network thread."""
        client = self._client
        if client is None or not client.is_connected():
            self._count("dropped_disconnected")
            self._note_dropped(verdict.get("seq"))
            return False
        if payload is None:
            payload = verdict_json(verdict)
        props = self._expiry(verdict.get("deadline_ms"))
        info = client.publish(self.topic_verdict, payload, qos=self._cfg.qos_verdict, retain=False, properties=props)
        sent = self._account(info.rc, "verdict")
        if not sent:  # queue full (the broker acknowledges too slowly) or the link just dropped: alarm follows
            self._note_dropped(verdict.get("seq"))
        return sent

    def _note_dropped(self, seq: Any) -> None:
        """Remember which verdicts an outage swallowed, for the alarm sent when the link returns. Seqs are
        not in emission order (identity is given at acquisition): keep the lowest and highest."""
        with self._lock:
            if self._outage is None:
                self._outage = {"count": 0, "first_seq": seq, "last_seq": seq, "since": _utc_now()}
            self._outage["count"] += 1
            if isinstance(seq, int):
                o = self._outage
                o["first_seq"] = seq if not isinstance(o["first_seq"], int) else min(o["first_seq"], seq)
                o["last_seq"] = seq if not isinstance(o["last_seq"], int) else max(o["last_seq"], seq)

    def _report_outage(self) -> None:
        """Alarm verdicts_dropped for what was dropped since the last report (on reconnect, and on the next
        acknowledgement after a full send queue); kept for the next try if the alarm itself cannot go out."""
        with self._lock:
            outage, self._outage = self._outage, None
        if not outage:
            return
        if self.publish_alarm("verdicts_dropped", f"{outage['count']} verdicts (seq {outage['first_seq']}.."
                              f"{outage['last_seq']}) were dropped or never acknowledged (broker unreachable or "
                              "send queue full); those parts may have no MQTT verdict", **outage):
            self._count("alarm_verdicts_dropped")  # this alarm bypasses Service.alarm: count it here
            return
        with self._lock:  # merge back: the next report covers both
            if self._outage is None:
                self._outage = outage
            else:
                cur = self._outage
                cur["count"] += outage["count"]
                cur["since"] = outage["since"]
                for key, pick in (("first_seq", min), ("last_seq", max)):
                    a, b = cur[key], outage[key]
                    cur[key] = pick(a, b) if isinstance(a, int) and isinstance(b, int) else (a if b is None else b)

    def publish_alarm(self, code: str, message: str, **context: Any) -> bool:
        """Alarm for operators (camera lost, model missing...). Dropped, not queued, while disconnected."""
        body = {
            "schema": "linesight.alarm/1",
            "code": code,
            "message": message,
            "station": self._cfg.base_topic,
            "host_ts": _utc_now(),
            "context": context,
        }
        return self._publish_now(self.topic_alarm, verdict_json(body), qos=1, what="alarm")

    def publish_status(self, state: str) -> bool:
        """Set the retained station state; it is also re-announced on every reconnect."""
        if state not in STATUS_STATES:
            raise ValueError(f"MQTT status must be one of {STATUS_STATES}, got {state!r}")
        self._state = state
        client = self._client
        if client is None or not client.is_connected():
            return False  # announced by _on_connect once the broker is back
        info = client.publish(self.topic_status, state, qos=1, retain=True)
        return self._account(info.rc, "status")

    def publish_stats(self, stats: dict[str, Any]) -> bool:
        """Periodic counters for dashboards on the OT side (QoS0: a lost one is replaced by the next)."""
        body = {"schema": "linesight.stats/1", "host_ts": _utc_now(), **stats}
        return self._publish_now(self.topic_stats, verdict_json(body), qos=0, what="stats")

    def _publish_now(self, topic: str, payload: bytes, qos: int, what: str) -> bool:
        client = self._client
        if client is None or not client.is_connected():
            self._count("dropped_disconnected")
            return False
        return self._account(client.publish(topic, payload, qos=qos, retain=False).rc, what)

    def _account(self, rc: MQTTErrorCode, what: str) -> bool:
        if rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._count("published")
            return True
        if rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
            self._count("dropped_queue_full")
            log.debug("mqtt %s dropped: %d messages already await an ACK", what, self._cfg.max_queued_messages)
        elif rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
            # Lost the race with a disconnect; a verdict left in paho's queue is purged on reconnect.
            self._count("dropped_disconnected")
        else:
            self._count("publish_errors")
            log.warning("mqtt %s publish failed rc=%s", what, mqtt.error_string(rc))
        return False

    def _expiry(self, deadline_ms: Any) -> Properties:
        try:
            seconds = max(1, math.ceil(float(deadline_ms) / 1000.0))
        except (TypeError, ValueError):
            seconds = 1
        props = self._expiry_props.get(seconds)
        if props is None:  # a handful of distinct deadlines at most: cache the packed-once objects
            props = Properties(PacketTypes.PUBLISH)
            props.MessageExpiryInterval = seconds
            props.ContentType = "application/json"
            self._expiry_props[seconds] = props
        return props

    # ------------------------------------------------------------------ paho callbacks (network thread)

    def _on_connect(self, client: mqtt.Client, _ud: Any, _flags: Any, reason: Any, _props: Any) -> None:
        cfg = self._cfg
        if reason.is_failure:
            hint = ""
            if reason.value in (0x86, 0x87):  # Bad user name or password / Not authorized
                hint = (
                    f" - check mqtt.username ({cfg.username or 'none'}) and the password source "
                    f"({'env ' + cfg.password_env if cfg.password_env else cfg.password_file or 'none'})"
                    " and the broker's ACL"
                )
            self._problem(logging.ERROR, f"mqtt broker {cfg.host}:{cfg.port} refused the connection: {reason}{hint}")
            return
        purged = self._purge_stale_verdicts(client)
        self._logged_problems.clear()
        self._count("connects")
        log.info("mqtt connected broker=%s:%d purged_stale_verdicts=%d", cfg.host, cfg.port, purged)
        self._cmd_ready.clear()
        _rc, self._cmd_sub_mid = client.subscribe(
            self.topic_cmd_filter,
            options=SubscribeOptions(qos=1, noLocal=True, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND),
        )
        self._account(client.publish(self.topic_status, self._state, qos=1, retain=True).rc, "status")
        self._report_outage()

    def _on_connect_fail(self, _client: mqtt.Client, _ud: Any) -> None:
        exc = sys.exc_info()[1]  # paho calls us from inside its `except OSError` block
        detail = f"{type(exc).__name__}: {exc}" if exc is not None else "unknown error"
        self._problem(
            logging.WARNING,
            f"mqtt cannot connect to broker {self._cfg.host}:{self._cfg.port} ({detail}); "
            f"retrying every {self._cfg.reconnect_min_s}-{self._cfg.reconnect_max_s}s, verdicts are dropped meanwhile",
        )

    def _on_subscribe(self, _client: mqtt.Client, _ud: Any, mid: int, reasons: list[Any], _props: Any) -> None:
        if mid != self._cmd_sub_mid:
            return
        if all(not r.is_failure for r in reasons):
            self._cmd_ready.set()
        else:
            log.error("mqtt broker refused the command subscription %s (%s); check the broker ACL for user %s",
                      self.topic_cmd_filter, ", ".join(str(r) for r in reasons), self._cfg.username or "anonymous")

    def _on_disconnect(self, _client: mqtt.Client, _ud: Any, _flags: Any, reason: Any, _props: Any) -> None:
        self._cmd_ready.clear()
        if self._stopping.is_set():
            return
        self._problem(
            logging.WARNING,
            f"mqtt lost broker {self._cfg.host}:{self._cfg.port} ({reason}); reconnecting, verdicts are dropped meanwhile",
        )

    def _on_publish(self, _client: mqtt.Client, _ud: Any, _mid: int, _reason: Any, _props: Any) -> None:
        self._count("acked")
        if self._outage is not None and not self._stopping.is_set():  # the queue drains: report what it dropped
            self._report_outage()

    def _problem(self, level: int, message: str) -> None:
        """Log each distinct connection problem loudly once per outage, then quietly (no log flood)."""
        log.log(level if message not in self._logged_problems else logging.DEBUG, message)
        if len(self._logged_problems) < 32:
            self._logged_problems.add(message)

    def _purge_stale_verdicts(self, client: mqtt.Client) -> int:
        if self._purge_broken:
            return 0
        try:
            mutex = client._out_message_mutex  # noqa: SLF001 - see module docstring, point 3
            messages = client._out_messages  # noqa: SLF001
        except AttributeError:
            self._purge_broken = True
            log.error("paho-mqtt internals changed: cannot purge unacknowledged verdicts on reconnect")
            return 0
        with mutex:
            stale = [mid for mid, m in messages.items() if m.topic == self.topic_verdict]
            payloads = [messages.pop(mid).payload for mid in stale]
        if stale:
            self._count("dropped_stale", len(stale))
        for payload in payloads:  # sent before the link died, never acknowledged: part of the outage alarm
            try:
                self._note_dropped(json.loads(payload).get("seq"))
            except (ValueError, AttributeError):
                self._note_dropped(None)
        return len(stale)

    def _on_message(self, client: mqtt.Client, _ud: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            self._handle_command(client, msg)
        except Exception:  # never let anything escape into paho's network thread
            log.exception("mqtt command handling failed topic=%s", msg.topic)

    # ------------------------------------------------------------------ commands

    def _handle_command(self, client: mqtt.Client, msg: mqtt.MQTTMessage) -> None:
        topic = msg.topic
        if not topic.startswith(self._cmd_prefix):
            return
        name = topic[len(self._cmd_prefix):]
        reply_props = None
        correlation = getattr(msg.properties, "CorrelationData", None) if msg.properties else None
        if correlation is not None:
            reply_props = Properties(PacketTypes.PUBLISH)
            reply_props.CorrelationData = correlation

        def reply(body: dict[str, Any]) -> None:
            client.publish(f"{topic}/reply", verdict_json(body), qos=1, retain=False, properties=reply_props)

        req_id: str | int | None = None
        try:
            payload = self._parse_command(name, msg.payload)
            req_id = payload.get("id")
            if self._on_command is None:
                raise LinesightError("this daemon does not accept commands (no handler configured)")
        except LinesightError as exc:
            self._count("commands_rejected")
            log.warning("mqtt command rejected name=%s: %s", name[:64], exc)
            reply({"id": req_id, "command": name, "ok": False, "error": str(exc)})
            return

        log.info("mqtt command name=%s id=%s", name, req_id)
        try:
            result = self._on_command(name, payload)
            if not isinstance(result, dict):
                raise TypeError(f"command handler returned {type(result).__name__}, expected dict")
        except (LinesightError, ValueError) as exc:  # the handler refused bad arguments: tell the sender
            self._count("commands_rejected")
            log.warning("mqtt command failed name=%s id=%s: %s", name, req_id, exc)
            reply({"id": req_id, "command": name, "ok": False, "error": str(exc)})
            return
        except Exception:
            self._count("commands_rejected")
            log.exception("mqtt command handler crashed name=%s id=%s", name, req_id)
            reply({"id": req_id, "command": name, "ok": False, "error": "internal error (see daemon log)"})
            return
        self._count("commands_ok")
        reply({"id": req_id, "command": name, "ok": True, "result": result})

    @staticmethod
    def _parse_command(name: str, raw: bytes) -> dict[str, Any]:
        if name not in MQTT_COMMANDS:
            raise LinesightError(f"unknown command {name[:64]!r}; valid: {', '.join(MQTT_COMMANDS)}")
        if len(raw) > _MAX_COMMAND_BYTES:
            raise LinesightError(f"command payload is {len(raw)} bytes; limit is {_MAX_COMMAND_BYTES}")
        try:
            payload = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise LinesightError(f"command payload is not valid UTF-8 JSON ({exc}); send a JSON object, e.g. {{}}") from None
        except RecursionError:  # thousands of nested brackets fit in the size limit
            raise LinesightError("command payload is nested too deeply; commands are flat JSON objects") from None
        if not isinstance(payload, dict):
            raise LinesightError(f"command payload must be a JSON object, got {type(payload).__name__}")
        req_id = payload.get("id")
        if req_id is not None and not (
            (isinstance(req_id, str) and len(req_id) <= _MAX_ID_LEN)
            or (isinstance(req_id, int) and not isinstance(req_id, bool))
        ):
            payload.pop("id")
            raise LinesightError(f"command 'id' must be a string (<= {_MAX_ID_LEN} chars) or an integer")
        return payload

    # ------------------------------------------------------------------ stats

    def _stats_loop(self) -> None:
        assert self._stats_provider is not None
        while not self._stopping.wait(self._cfg.stats_interval_s):
            try:
                self.publish_stats(self._stats_provider())
            except Exception:
                log.exception("mqtt stats provider failed; next attempt in %.1fs", self._cfg.stats_interval_s)
