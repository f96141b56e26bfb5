"""paho-mqtt specifics of the MQTT transport: the client built from the config (credentials, TLS, Last Will,
reconnect backoff, send-queue cap), its log noise, the purge of its resend queue, cached publish properties."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from linesight.config.outputs import MqttConfig
from linesight.daemon.sinks.mqtt_secrets import read_password, tls_context

log = logging.getLogger(__name__)


class NoSocketNoise(logging.Filter):
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


def build_client(cfg: MqttConfig, will_topic: str | None,
                 logger_name: str) -> tuple[mqtt.Client, Callable[[], None]]:
    """An MQTT v5 client configured from `cfg`, not connected, logging to `logger_name` (its 'Client is not
    connected' noise lowered to DEBUG); and the call that removes that log filter once the client is stopped.
    `will_topic`: where the broker says "offline" (retained) when the link dies; None: no Last Will (a client
    that is no station, e.g. the UI sending commands).

    Raises ConfigError (from mqtt_secrets) when the password or a TLS file cannot be used."""
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=cfg.effective_client_id,
                         protocol=mqtt.MQTTv5)
    paho_log = logging.getLogger(logger_name)
    client.enable_logger(paho_log)
    noise = NoSocketNoise(f"paho-mqtt-client-{cfg.effective_client_id}")
    paho_log.addFilter(noise)
    if cfg.username:
        client.username_pw_set(cfg.username, read_password(cfg))
    if cfg.tls is not None:
        client.tls_set_context(tls_context(cfg.tls))
        if cfg.tls.insecure:
            log.warning("mqtt.tls.insecure=true: broker hostname is NOT verified")
            client.tls_insecure_set(True)
    if will_topic is not None:
        client.will_set(will_topic, "offline", qos=1, retain=True)
    client.reconnect_delay_set(cfg.reconnect_min_s, cfg.reconnect_max_s)
    client.max_queued_messages_set(cfg.max_queued_messages)
    return client, functools.partial(paho_log.removeFilter, noise)


@functools.lru_cache(maxsize=64)  # a handful of distinct deadlines at most: objects packed once, reused
def expiry_properties(seconds: int) -> Properties:
    """PUBLISH properties of a JSON message the broker discards after `seconds`."""
    props = Properties(PacketTypes.PUBLISH)
    props.MessageExpiryInterval = seconds
    props.ContentType = "application/json"
    return props


def purge_unacked(client: mqtt.Client, topic: str) -> list[Any] | None:
    """Remove from paho's resend queue every message on `topic` still waiting for its PUBACK; their seqs
    (None where a payload has none). None: paho's internals changed and nothing could be purged.

    paho has no public API for this: we take its own `_out_message_mutex` and remove entries from
    `_out_messages` (checked against paho-mqtt 2.2)."""
    try:
        mutex = client._out_message_mutex  # noqa: SLF001 - see the docstring
        messages = client._out_messages  # noqa: SLF001
    except AttributeError:
        return None
    with mutex:
        stale = [mid for mid, m in messages.items() if m.topic == topic]
        payloads = [messages.pop(mid).payload for mid in stale]
    seqs = []
    for payload in payloads:  # sent before the link died, never acknowledged: part of the outage alarm
        try:
            seqs.append(json.loads(payload).get("seq"))
        except (ValueError, AttributeError):
            seqs.append(None)
    return seqs
