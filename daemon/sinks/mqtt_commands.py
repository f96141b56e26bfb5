"""The MQTT command protocol: commands in on ``base/cmd/<name>``, replies out on ``base/cmd/<name>/reply``.

    base/cmd/<name>          in:  JSON object, optional "id"; names: config.outputs.MQTT_COMMANDS
    base/cmd/<name>/reply    out: {"id", "command", "ok": true, "result": {...}}
                                  or {"id", "command", "ok": false, "error"}

This module parses the topic and the payload's envelope (size, UTF-8 JSON object, "id"), hands the payload
to the handler - the daemon's `commands.Dispatcher`, which validates each command against its model and runs
it - and publishes the reply (MQTT v5 CorrelationData echoed). The MQTT transport (`mqtt_sink.MqttSink`)
only subscribes `topic_filter` with `subscribe_options` and hands every inbound message to `handle`.

Commands are subscribed with ``cmd/+`` (not ``cmd/#``, which would echo our own replies back), with
retained messages refused (a retained "pause" must not re-pause the line on every restart); the transport's
clean session means commands sent while the daemon was offline are not executed late.

Threads: `handle` runs on paho's network thread, and so does the handler: keep it short, hand slow work
(e.g. a model reload) to another thread and reply with "accepted". It returns the reply's "result" dict;
a LinesightError or ValueError it raises becomes an error reply carrying its message, any other exception
an "internal error" reply (logged with traceback). Payloads are never logged, only command names and ids.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import Any

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from linesight.config.outputs import MQTT_COMMANDS
from linesight.daemon.sinks.encoding import verdict_json
from linesight.errors import LinesightError

log = logging.getLogger(__name__)

_MAX_COMMAND_BYTES = 64 * 1024
_MAX_ID_LEN = 128

CommandHandler = Callable[[str, dict[str, Any]], dict[str, Any]]
#: publish(topic, payload, properties) at QoS1, not retained: what the transport lends for replies
Send = Callable[[str, bytes, Properties | None], Any]


def parse_command(name: str, raw: bytes) -> dict[str, Any]:
    """The payload of command `name` as a JSON object; LinesightError (a reply for the sender) otherwise."""
    if name not in MQTT_COMMANDS:
        raise LinesightError(f"unknown command {name[:64]!r}; valid: {', '.join(MQTT_COMMANDS)}")
    if len(raw) > _MAX_COMMAND_BYTES:
        raise LinesightError(f"command payload is {len(raw)} bytes; limit is {_MAX_COMMAND_BYTES}")
    try:
        payload = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LinesightError("command payload is not valid UTF-8 JSON "
                             f"({exc}); send a JSON object, e.g. {{}}") from None
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


class CommandChannel:
    """One station's command topics. `handler` None: every command is answered with an error reply."""

    def __init__(self, base_topic: str, handler: CommandHandler | None) -> None:
        self.topic_filter = f"{base_topic}/cmd/+"
        self._prefix = f"{base_topic}/cmd/"
        self._handler = handler
        self._lock = threading.Lock()
        self._counters = dict.fromkeys(("commands_ok", "commands_rejected"), 0)

    @property
    def subscribe_options(self) -> SubscribeOptions:
        """Live commands only: no retained message, none of our own publishes."""
        return SubscribeOptions(qos=1, noLocal=True, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND)

    @property
    def counters(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counters)

    def _count(self, key: str) -> None:
        with self._lock:
            self._counters[key] += 1

    def handle(self, topic: str, raw: bytes, properties: Properties | None, send: Send) -> None:
        """One inbound message: parse, dispatch, reply on ``<topic>/reply``. Topics outside cmd/ are ignored."""
        if not topic.startswith(self._prefix):
            return
        name = topic[len(self._prefix):]
        reply_props = None
        correlation = getattr(properties, "CorrelationData", None) if properties else None
        if correlation is not None:
            reply_props = Properties(PacketTypes.PUBLISH)
            reply_props.CorrelationData = correlation

        def reply(body: dict[str, Any]) -> None:
            send(f"{topic}/reply", verdict_json(body), reply_props)

        req_id: str | int | None = None
        try:
            payload = parse_command(name, raw)
            req_id = payload.get("id")
            if self._handler is None:
                raise LinesightError("this daemon does not accept commands (no handler configured)")
        except LinesightError as exc:
            self._count("commands_rejected")
            log.warning("mqtt command rejected name=%s: %s", name[:64], exc)
            reply({"id": req_id, "command": name, "ok": False, "error": str(exc)})
            return

        log.info("mqtt command name=%s id=%s", name, req_id)
        try:
            result = self._handler(name, payload)
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
