"""Minimal PLC-gateway / HMI-side MQTT subscriber for linesight verdicts - copy it as a starting point.

Run (as a read-only broker user, see config/mosquitto/linesight.acl and docs/mqtt-security.md)::

    LS_MQTT_PASSWORD=... python examples/mqtt_subscriber.py --username hmi \\
        --password-env LS_MQTT_PASSWORD --topic 'linesight/site1/line1/+/verdict'
    python examples/mqtt_subscriber.py --host broker --port 8883 --ca-file ca.crt ...

Output: one line per verdict, ``<seq> <part_id> <OK|NG> <reason> score=<score>``. A verdict that arrives
after its deadline is not printed as a decision: one ``stale verdict ...`` line goes to stderr and it is
counted. Why the check is needed although every verdict carries MQTT message expiry: expiry only stops
the *broker* from handing out an old verdict. Once a verdict is in the subscriber's TCP buffer or its
client library's queue, nothing removes it; a slow consumer measured 226 of 235 verdicts arriving after
their deadline, up to 109 s late. Check ``host_ts + deadline_ms`` (`is_stale`) on arrival and treat a stale
verdict like a fail-safe one - never act on a stale OK. Host and consumer clocks must agree (NTP/PTP).

Every key of a verdict, and when it is left out (a fail-safe verdict without a prediction has no `score`):
docs/verdict.schema.json; in Python `linesight.daemon.verdict.Verdict.parse(payload)` checks a payload.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import sys
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from zmq_subscriber import is_stale  # the file beside this one: copy both, the same check for both feeds


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Print linesight verdicts from MQTT, dropping stale ones.")
    p.add_argument("--host", default="127.0.0.1", help="broker host")
    p.add_argument("--port", type=int, default=1883, help="broker port (8883 for TLS)")
    p.add_argument("--topic", default="linesight/+/+/+/verdict", help="verdict topic filter")
    p.add_argument("--username", default=None, help="broker user (read-only role)")
    p.add_argument("--password-env", default=None, help="NAME of the environment variable holding the password")
    p.add_argument("--ca-file", default=None, help="CA bundle: connect with TLS and verify the broker")
    p.add_argument("--count", type=int, default=0, help="exit after this many verdicts (0 = run forever)")
    p.add_argument("--timeout-s", type=float, default=0.0, help="exit with status 1 after this long idle (0 = never)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    inbox: queue.Queue[Any] = queue.Queue()  # paho's thread only enqueues; decisions happen here
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    if args.username:
        client.username_pw_set(args.username, os.environ[args.password_env] if args.password_env else None)
    if args.ca_file:
        client.tls_set(ca_certs=args.ca_file)

    def on_connect(cl: mqtt.Client, _ud: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            inbox.put(RuntimeError(f"broker refused the connection: {reason}"))
        else:  # clean session: no verdicts stored while we were away (they would all be stale)
            cl.subscribe(args.topic, qos=1)

    client.on_connect = on_connect
    client.on_message = lambda _cl, _ud, msg: inbox.put(msg.payload)
    client.connect(args.host, args.port, keepalive=15, clean_start=True)
    client.loop_start()
    seen = stale = 0
    try:
        while args.count == 0 or seen < args.count:
            try:
                item = inbox.get(timeout=args.timeout_s or None)
            except queue.Empty:
                sys.stderr.write(f"no message for {args.timeout_s}s\n")
                return 1
            if isinstance(item, Exception):
                sys.stderr.write(f"{item}\n")
                return 2
            v = json.loads(item)
            seen += 1
            if is_stale(v):  # the part is gone: handle it as fail-safe, never act on this (stale OK!)
                stale += 1
                sys.stderr.write(f"stale verdict seq={v.get('seq')} part_id={v.get('part_id')} ({v.get('verdict')}, "
                                 f"host_ts={v.get('host_ts')}, deadline_ms={v.get('deadline_ms')}) arrived after its "
                                 f"deadline: ignored, part is fail-safe ({stale} stale so far)\n")
                continue
            print(f"{v.get('seq')} {v.get('part_id')} {v.get('verdict')} {v.get('reason')} score={v.get('score')}",
                  flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        client.disconnect()
        client.loop_stop()
        if stale:
            sys.stderr.write(f"{stale} of {seen} verdicts arrived after their deadline and were ignored\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
