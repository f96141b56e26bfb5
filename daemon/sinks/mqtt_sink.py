"""MQTT v5 transport: verdicts, alarms, status and stats out; inbound messages to the command protocol.

Topic tree (base = ``<prefix>/<site>/<line>/<station>``)::

    base/verdict             QoS1, not retained, MessageExpiryInterval = ceil(deadline_ms / 1000) s (>= 1)
    base/alarm               QoS1, not retained   {"schema": "linesight.alarm/1", code, message, context}
    base/status              QoS1, retained       "online" | "degraded" | "offline" (Last Will = "offline")
    base/stats               QoS0, not retained   {"schema": "linesight.stats/1", ...}
    base/cmd/<name>[/reply]  commands and their replies: mqtt_commands.py

This module is the transport: paho client, connect/reconnect, publishing, counters, stats. What commands
mean lives in mqtt_commands.py (topic parsing, replies) and commands.py (the Dispatcher); credentials and
TLS in mqtt_secrets.py; the paho client's construction and workarounds in mqtt_paho.py; the record of
dropped verdicts in mqtt_outage.py.

Why verdicts are never delivered late: a PLC that acts on a verdict for a part that has already left
the station rejects the wrong part. paho would queue QoS1 messages while disconnected and replay them
after reconnecting, so:

1. while the client is not connected, `publish_verdict` drops the verdict and counts it
   (`dropped_disconnected`) instead of handing it to paho;
2. `max_queued_messages_set` caps what can pile up while a dead link is still undetected
   (publishes beyond it are dropped and counted as `dropped_queue_full`);
3. on every reconnect, before paho replays its unacknowledged messages, verdicts still waiting for a
   PUBACK from the previous connection are purged (`dropped_stale`; `mqtt_paho.purge_unacked`, which
   reaches into paho internals: if those disappear the sink logs an error once and relies on 1 + 2);
4. every verdict carries MessageExpiryInterval, so a broker never hands it to a slow or returning
   subscriber after the part is gone.

A clean session (clean_start) on every connect: no verdicts or commands carried over from before.

Threads: publish_* may be called from any thread and never block on the network (paho's network
thread does the I/O). `on_command` runs on paho's network thread (contract: mqtt_commands.py).
"""

from __future__ import annotations

import logging
import math
import sys
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.properties import Properties

from linesight.config.outputs import MqttConfig
from linesight.daemon.sinks.encoding import verdict_json
from linesight.daemon.sinks.mqtt_commands import CommandChannel, CommandHandler
from linesight.daemon.sinks.mqtt_outage import DropLedger, utc_now
from linesight.daemon.sinks.mqtt_paho import build_client, expiry_properties, purge_unacked
from linesight.errors import LinesightError

log = logging.getLogger(__name__)

STATUS_STATES = ("online", "degraded", "offline")


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
        self._commands = CommandChannel(cfg.base_topic, on_command)  # what arrives: the command protocol
        self._stats_provider = stats_provider
        base = cfg.base_topic
        self.topic_verdict = f"{base}/verdict"
        self.topic_alarm = f"{base}/alarm"
        self.topic_status = f"{base}/status"
        self.topic_stats = f"{base}/stats"
        self._lock = threading.Lock()
        # alarm_verdicts_dropped is exposed as linesight_alarms_total{code="verdicts_dropped"}
        self._counters = dict.fromkeys(("published", "acked", "dropped_disconnected", "dropped_queue_full",
                                       "dropped_stale", "publish_errors", "connects", "alarm_verdicts_dropped"), 0)
        if initial_state not in STATUS_STATES:
            raise ValueError(f"MQTT status must be one of {STATUS_STATES}, got {initial_state!r}")
        self._state = initial_state  # state re-announced on every (re)connect
        self._dropped = DropLedger()  # verdicts dropped since the last verdicts_dropped alarm
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
        client, self._unfilter_paho_log = build_client(cfg, self.topic_status, f"{__name__}.paho")
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
        self._unfilter_paho_log()
        log.info("mqtt stopped counters=%s", self.counters)

    # ------------------------------------------------------------------ state

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.is_connected()

    @property
    def commands_ready(self) -> bool:
        """True once the broker acknowledged the command subscription on the current connection."""
        return self._cmd_ready.is_set() and self.connected

    @property
    def counters(self) -> dict[str, int]:
        with self._lock:
            own = dict(self._counters)
        return {**own, **self._commands.counters}

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
            self._dropped.note(verdict.get("seq"))
            return False
        if payload is None:
            payload = verdict_json(verdict)
        props = self._expiry(verdict.get("deadline_ms"))
        info = client.publish(self.topic_verdict, payload, qos=self._cfg.qos_verdict, retain=False, properties=props)
        sent = self._account(info.rc, "verdict")
        if not sent:  # queue full (the broker acknowledges too slowly) or the link just dropped: alarm follows
            self._dropped.note(verdict.get("seq"))
        return sent

    def _report_outage(self) -> None:
        """Alarm verdicts_dropped for what was dropped since the last report (on reconnect, and on the next
        acknowledgement after a full send queue); kept for the next try if the alarm itself cannot go out."""
        outage = self._dropped.take()
        if not outage:
            return
        if self.publish_alarm("verdicts_dropped", DropLedger.message(outage), **outage):
            self._count("alarm_verdicts_dropped")  # this alarm bypasses Service.alarm: count it here
            return
        self._dropped.give_back(outage)

    def publish_alarm(self, code: str, message: str, **context: Any) -> bool:
        """Alarm for operators (camera lost, model missing...). Dropped, not queued, while disconnected."""
        body = {
            "schema": "linesight.alarm/1",
            "code": code,
            "message": message,
            "station": self._cfg.base_topic,
            "host_ts": utc_now(),
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
        body = {"schema": "linesight.stats/1", "host_ts": utc_now(), **stats}
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
        return expiry_properties(seconds)

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
        _rc, self._cmd_sub_mid = client.subscribe(self._commands.topic_filter,
                                                  options=self._commands.subscribe_options)
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
                      self._commands.topic_filter, ", ".join(str(r) for r in reasons),
                      self._cfg.username or "anonymous")

    def _on_disconnect(self, _client: mqtt.Client, _ud: Any, _flags: Any, reason: Any, _props: Any) -> None:
        self._cmd_ready.clear()
        if self._stopping.is_set():
            return
        self._problem(
            logging.WARNING,
            f"mqtt lost broker {self._cfg.host}:{self._cfg.port} ({reason}); "
            "reconnecting, verdicts are dropped meanwhile",
        )

    def _on_publish(self, _client: mqtt.Client, _ud: Any, _mid: int, _reason: Any, _props: Any) -> None:
        self._count("acked")
        if self._dropped.pending and not self._stopping.is_set():  # the queue drains: report what it dropped
            self._report_outage()

    def _problem(self, level: int, message: str) -> None:
        """Log each distinct connection problem loudly once per outage, then quietly (no log flood)."""
        log.log(level if message not in self._logged_problems else logging.DEBUG, message)
        if len(self._logged_problems) < 32:
            self._logged_problems.add(message)

    def _purge_stale_verdicts(self, client: mqtt.Client) -> int:
        if self._purge_broken:
            return 0
        seqs = purge_unacked(client, self.topic_verdict)
        if seqs is None:
            self._purge_broken = True
            log.error("paho-mqtt internals changed: cannot purge unacknowledged verdicts on reconnect")
            return 0
        if seqs:
            self._count("dropped_stale", len(seqs))
        for seq in seqs:  # sent before the link died, never acknowledged: part of the outage alarm
            self._dropped.note(seq)
        return len(seqs)

    def _on_message(self, client: mqtt.Client, _ud: Any, msg: mqtt.MQTTMessage) -> None:
        def send(topic: str, payload: bytes, props: Properties | None) -> None:
            client.publish(topic, payload, qos=1, retain=False, properties=props)

        try:
            self._commands.handle(msg.topic, msg.payload, msg.properties, send)
        except Exception:  # never let anything escape into paho's network thread
            log.exception("mqtt command handling failed topic=%s", msg.topic)

    # ------------------------------------------------------------------ stats

    def _stats_loop(self) -> None:
        assert self._stats_provider is not None
        while not self._stopping.wait(self._cfg.stats_interval_s):
            try:
                self.publish_stats(self._stats_provider())
            except Exception:
                log.exception("mqtt stats provider failed; next attempt in %.1fs", self._cfg.stats_interval_s)
