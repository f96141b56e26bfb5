"""Commands to a station from the UI, the way every command reaches a station: the daemon's command models
(daemon.commands) over its MQTT command protocol (daemon.sinks.mqtt_commands).

    UI  -> <base>/cmd/<name>          the payload, checked first against the command's model; MQTT v5
                                      CorrelationData = a fresh random id; expires after the reply timeout
    UI <-  <base>/cmd/<name>/reply    the station's {"id", "command", "ok", "result" | "error"}, CorrelationData
                                      echoed: the waiting request is matched by it, replies to others ignored
    UI <-  <base>/status, <base>/alarm  the station's state (retained) and alarms, shown on its card

The broker's PUBACK says early what would otherwise be a silent wait: "not authorized" (the UI's broker user may
not write there: its ACL) and "no matching subscribers" (no station daemon listens on these topics) end the
request at once; a broker that does not say so leaves it to the reply timeout.

Why MQTT and not a socket of its own: the station keeps one way in, one set of checks (its Dispatcher) and one
authorisation (the broker's ACL); the UI is one more sender, like the engineering PC. Why one persistent client per
station: no connect per click, and the reply subscription is in place (acknowledged) before a command goes out, so
no reply is missed. Why `send` blocks: it runs in a worker thread (the route hands it over), never on the server's
event loop. Payloads are never logged (they may hold an operator's note), only command names, stations and who.
"""
from __future__ import annotations

import json
import logging
import math
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from linesight.config.ui import StationMqttConfig
from linesight.daemon.sinks.mqtt_paho import build_client
from linesight.errors import ConfigError

log = logging.getLogger(__name__)


class Unreachable(Exception):
    """The broker cannot be reached or refused us: nothing was sent (HTTP 502)."""


class NoReply(Exception):
    """Sent, but the station did not answer in time (HTTP 504): its daemon is not running, or not on this broker."""


#: PUBACK reason (MQTT v5) for a message nobody subscribes to: no station listens on the topic
NO_SUBSCRIBERS = 16


@dataclass
class _Waiting:
    done: threading.Event = field(default_factory=threading.Event)
    reply: dict[str, Any] | None = None
    puback: str | None = None  # the broker's reason when it did not pass the command on


class Listener(Protocol):
    """Who hears a station's status and alarms on its link (the station's feed state)."""

    def on_status(self, payload: bytes) -> None: ...

    def on_alarm(self, payload: bytes) -> None: ...


class StationLink:
    """One station's command topics on its broker: `start()`, `send()` from worker threads, `stop()`.

    Built (credentials read, TLS context made) at construction, so a password variable that is not set stops
    the UI at start with one line, not on the first click."""

    def __init__(self, station: str, cfg: StationMqttConfig, listener: Listener) -> None:
        self.station, self.timeout_s, self.listener = station, cfg.reply_timeout_s, listener
        broker = cfg.daemon_view(client_id=f"linesight-ui-{station}-{uuid.uuid4().hex[:8]}")
        self.base, self._host, self._port = broker.base_topic, broker.host, broker.port
        self.where = f"{broker.host}:{broker.port}"
        try:
            self._client, self._unfilter = build_client(broker, None, f"{__name__}.paho")
        except ConfigError as exc:  # it names outputs.mqtt.*, the daemon's key: name the UI's instead
            key = (exc.field or "").removeprefix("outputs.mqtt.")
            raise ConfigError(f"station {station}: mqtt{'.' + key if key else ''}: {exc.detail}") from None
        self._client.on_connect = self._on_connect
        self._client.on_connect_fail = self._on_connect_fail
        self._client.on_disconnect = self._on_disconnect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._client.on_publish = self._on_publish
        self._ready = threading.Event()  # connected, and the broker acknowledged the reply subscription
        self._problem = "not connected yet"
        self._sub_mid: int | None = None
        self._waiting: dict[bytes, _Waiting] = {}  # by CorrelationData: the replies
        self._by_mid: dict[int, _Waiting] = {}  # by message id: the broker's PUBACK
        self._early: dict[int, str] = {}  # a PUBACK saying no that came before its mid was noted here
        self._lock = threading.Lock()
        self._keepalive = broker.keepalive_s

    def start(self) -> None:
        """Connect in the background (returns at once) and keep reconnecting with the daemon's backoff."""
        log.info("ui commands to station %s: broker %s, topics %s/cmd/*", self.station, self.where, self.base)
        self._client.connect_async(self._host, self._port, keepalive=self._keepalive, clean_start=True)
        self._client.loop_start()

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
        self._unfilter()

    def send(self, name: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Publish command `name` (an already validated payload) and return the station's reply (a JSON object).
        Unreachable: nothing was sent; NoReply: no answer within the reply timeout."""
        if not self._ready.wait(self.timeout_s):
            raise Unreachable(f"station {self.station}: the MQTT broker {self.where} is not reachable "
                              f"({self._problem}); check the broker and the station's mqtt section of the UI config")
        correlation = uuid.uuid4().bytes
        waiting = _Waiting()
        info = None
        props = Properties(PacketTypes.PUBLISH)
        props.CorrelationData = correlation
        props.ContentType = "application/json"
        props.MessageExpiryInterval = math.ceil(self.timeout_s)  # not carried out after the sender gave up
        with self._lock:
            self._waiting[correlation] = waiting
        try:
            info = self._client.publish(f"{self.base}/cmd/{name}", json.dumps(payload).encode(), qos=1,
                                        retain=False, properties=props)  # never under self._lock: see _on_publish
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                raise Unreachable(f"station {self.station}: command not sent to the MQTT broker {self.where} "
                                  f"({mqtt.error_string(info.rc)}); try again")
            with self._lock:
                waiting.puback = self._early.pop(info.mid, None)
                self._by_mid[info.mid] = waiting
            if waiting.puback is None:
                waiting.done.wait(self.timeout_s)
        finally:
            with self._lock:
                self._waiting.pop(correlation, None)
                if info is not None:
                    self._by_mid.pop(info.mid, None)
        self._no_answer(name, waiting)
        if waiting.reply is None:
            raise Unreachable(f"station {self.station} answered {name} with something that is not a JSON object")
        return waiting.reply

    def _no_answer(self, name: str, waiting: _Waiting) -> None:
        """Raise why `waiting` got no reply, if it got none."""
        if waiting.reply is not None or (waiting.done.is_set() and waiting.puback is None):
            return
        where = f"its daemon running, with outputs.mqtt on {self.where} and topics {self.base}"
        if waiting.puback == "nobody":
            raise NoReply(f"station {self.station} did not answer: nothing on the broker subscribes to "
                          f"{self.base}/cmd/{name}; is {where}?")
        if waiting.puback is not None:
            raise Unreachable(f"station {self.station}: the MQTT broker {self.where} did not pass {name} on "
                              f"({waiting.puback}): the UI's broker user needs write on {self.base}/cmd/+ (its ACL)")
        raise NoReply(f"station {self.station} did not answer within {self.timeout_s:g} s: is {where}?")

    # ------------------------------------------------------------------ paho's network thread

    def _on_connect(self, client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            self._problem = f"the broker refused the connection: {reason}"
            log.warning("ui commands to station %s: broker %s refused the connection: %s", self.station,
                        self.where, reason)
            return
        self._sub_mid = client.subscribe(f"{self.base}/cmd/+/reply", qos=1)[1]
        client.subscribe([(f"{self.base}/status", 1), (f"{self.base}/alarm", 1)])  # the card: state and alarms

    def _on_connect_fail(self, _client: mqtt.Client, _userdata: Any) -> None:
        self._problem = "cannot connect"
        log.debug("ui commands to station %s: cannot connect to %s", self.station, self.where)

    def _on_disconnect(self, _client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        self._ready.clear()
        self._problem = f"disconnected: {reason}"
        log.info("ui commands to station %s: disconnected from %s (%s)", self.station, self.where, reason)

    def _on_subscribe(self, _client: mqtt.Client, _userdata: Any, mid: int, reasons: list[Any], _props: Any) -> None:
        if mid != self._sub_mid:
            return
        if any(r.is_failure for r in reasons):
            self._problem = f"the broker refused the subscription to {self.base}/cmd/+/reply (its ACL?)"
            log.warning("ui commands to station %s: %s", self.station, self._problem)
            return
        self._ready.set()
        log.info("ui commands to station %s: connected to %s", self.station, self.where)

    def _on_publish(self, _client: mqtt.Client, _userdata: Any, mid: int, reason: Any, _props: Any) -> None:
        """paho calls this holding its own message lock, so `send` publishes without holding self._lock."""
        if reason.is_failure:
            said = str(reason)
        elif reason.value == NO_SUBSCRIBERS:
            said = "nobody"
        else:
            return
        with self._lock:
            waiting = self._by_mid.pop(mid, None)
            if waiting is None:  # before send noted the mid
                self._early[mid] = said
                return
        waiting.puback = said
        waiting.done.set()

    def _on_message(self, _client: mqtt.Client, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == f"{self.base}/status":
            self.listener.on_status(msg.payload)
            return
        if msg.topic == f"{self.base}/alarm":
            self.listener.on_alarm(msg.payload)
            return
        correlation = getattr(msg.properties, "CorrelationData", None) if msg.properties else None
        with self._lock:
            waiting = self._waiting.get(bytes(correlation)) if correlation is not None else None
        if waiting is None:  # a reply to another sender, or to a request that gave up
            return
        try:
            reply = json.loads(msg.payload)
        except ValueError:
            reply = None
        waiting.reply = reply if isinstance(reply, dict) else None
        waiting.done.set()


class CommandLinks:
    """A StationLink for each station with an mqtt section; started and stopped with the app."""

    def __init__(self, stations: dict[str, tuple[StationMqttConfig, Listener]]) -> None:
        self.links = {name: StationLink(name, cfg, listener) for name, (cfg, listener) in stations.items()}

    def start(self) -> None:
        for link in self.links.values():
            link.start()

    def stop(self) -> None:
        for link in self.links.values():
            link.stop()
