"""Consumers must check host_ts + deadline_ms themselves: the example subscribers (ZeroMQ and MQTT), run as
real processes against a real ZmqSink / MqttSink + mosquitto, drop a verdict that is stale on arrival and
accept a fresh one. The stale cases are the two real ones: a verdict with an old host_ts, and a fresh
verdict that sat in the subscriber's TCP buffer past its deadline (process stopped with SIGSTOP), which
neither ZeroMQ nor MQTT message expiry can remove."""

from __future__ import annotations

import importlib
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from linesight.config.outputs import MqttConfig, ZmqConfig
from linesight.daemon.sinks.mqtt_sink import MqttSink
from linesight.daemon.sinks.zmq_sink import ZmqSink

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def example(name: str):
    """An example subscriber module from examples/ (they are copied to HMIs and gateways, not installed)."""
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))  # mqtt_subscriber imports is_stale from the file beside it
    return importlib.import_module(name)


def is_stale(v: dict, now: float | None = None) -> bool:
    return example("zmq_subscriber").is_stale(v, now=now)


def iso(dt: datetime) -> str:
    """host_ts as the daemon writes it (ISO-8601 UTC, milliseconds, Z)."""
    return dt.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def verdict(seq: int, *, age_s: float = 0.0, deadline_ms: float = 5000) -> dict:
    return {"schema": "linesight.verdict/1", "seq": seq, "part_id": f"P-{seq}", "verdict": "OK",
            "reason": "score_below_threshold", "score": 0.5, "fail_safe": False,
            "host_ts": iso(datetime.now(UTC) - timedelta(seconds=age_s)), "deadline_ms": deadline_ms}


def test_is_stale_at_the_deadline_and_without_proof_of_age() -> None:
    t0 = datetime(2026, 11, 24, 6, 20, 1, 123000, tzinfo=UTC)
    v = {"host_ts": "2026-11-24T06:20:01.123Z", "deadline_ms": 200.0}
    assert not is_stale(v, now=t0.timestamp() + 0.199)
    assert is_stale(v, now=t0.timestamp() + 0.2)  # at the deadline the part is gone
    assert is_stale(v, now=t0.timestamp() + 109)  # the 109 s late verdict of the issue
    assert not is_stale({**v, "host_ts": "2026-11-24T06:20:01.123"}, now=t0.timestamp())  # bare time = UTC
    assert not is_stale({**v, "host_ts": "2026-11-24T07:20:01.123+01:00"}, now=t0.timestamp() + 0.1)
    for broken in ({"deadline_ms": 200}, {**v, "host_ts": "yesterday"}, {**v, "deadline_ms": None},
                   {**v, "deadline_ms": "soon"}, {**v, "host_ts": None}, {**v, "deadline_ms": float("nan")},
                   {**v, "deadline_ms": float("inf")}):
        assert is_stale(broken, now=t0.timestamp()), broken  # age unknown: never act on it
    assert not is_stale(verdict(1))  # default now = this machine's clock
    assert is_stale(verdict(1, age_s=6))


class Example:
    """An example subscriber as a subprocess, its stdout/stderr lines collected by reader threads."""

    def __init__(self, script: str, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, str(EXAMPLES / script), *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.out: queue.Queue[str] = queue.Queue()
        self.err: list[str] = []
        threading.Thread(target=self._read, args=(self.proc.stdout, self.out.put), daemon=True).start()
        threading.Thread(target=self._read, args=(self.proc.stderr, self.err.append), daemon=True).start()
        self.accepted: list[int] = []

    @staticmethod
    def _read(stream, sink: Callable[[str], None]) -> None:  # noqa: ANN001
        for line in stream:
            sink(line.rstrip("\n"))

    def wait_accepted(self, seq: int | None, publish: Callable[[], None] | None = None, timeout: float = 15) -> None:
        """Wait until `seq` (None: any) is printed as a decision, calling `publish` meanwhile (PUB/SUB slow
        joiner: what is published before the subscription is live is lost)."""
        deadline = time.monotonic() + timeout
        while (seq not in self.accepted) if seq is not None else not self.accepted:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError(f"seq {seq} not accepted; stdout {self.accepted}, stderr {self.err}")
            if publish is not None:
                publish()
            try:
                self.accepted.append(int(self.out.get(timeout=0.1).split()[0]))
            except queue.Empty:
                pass

    def stale_seqs(self) -> list[int]:
        return [int(line.split("seq=")[1].split()[0]) for line in self.err if line.startswith("stale verdict")]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        time.sleep(0.2)  # let the reader threads take the last lines


def run_scenario(ex: Example, publish: Callable[[dict], None]) -> None:
    """Warm up with fresh verdicts, then: old host_ts (50), fresh but held in the buffer past its deadline
    while the subscriber is stopped (60), fresh (70). Only the fresh ones may be printed as decisions."""
    warm = iter(range(1000, 10_000))
    ex.wait_accepted(None, publish=lambda: publish(verdict(next(warm))))  # the subscription is live
    publish(verdict(50, age_s=60))
    ex.proc.send_signal(signal.SIGSTOP)  # a slow consumer: the next verdict waits in its socket buffer
    try:
        publish(verdict(60, deadline_ms=300))
        time.sleep(1.5)  # > deadline and > MQTT expiry (ceil(300 ms) = 1 s): the broker already handed it out
    finally:
        ex.proc.send_signal(signal.SIGCONT)
    publish(verdict(70))
    ex.wait_accepted(70)
    ex.stop()
    assert ex.proc.returncode == 0, ex.err
    assert ex.stale_seqs() == [50, 60], ex.err
    assert not {50, 60} & set(ex.accepted) and ex.accepted[-1] == 70
    assert any("2 of" in line and "arrived after their deadline" in line for line in ex.err), ex.err


def test_zmq_example_drops_stale_verdicts(free_tcp_port) -> None:
    endpoint = f"tcp://127.0.0.1:{free_tcp_port()}"
    sink = ZmqSink(ZmqConfig(verdict_endpoint=endpoint, image_endpoint=None))
    ex = Example("zmq_subscriber.py", "--verdicts", endpoint)
    try:
        run_scenario(ex, sink.publish)
    finally:
        ex.stop()
        sink.close()


def test_mqtt_example_drops_stale_verdicts_despite_message_expiry(mosquitto) -> None:
    sink = MqttSink(MqttConfig(enabled=True, host=mosquitto.host, port=mosquitto.port, site="s1", line="l1",
                               station="cam1"))
    sink.start()
    ex = Example("mqtt_subscriber.py", "--port", str(mosquitto.port),
                 "--topic", "linesight/s1/l1/cam1/verdict")
    try:
        deadline = time.monotonic() + 10
        while not sink.connected:
            assert time.monotonic() < deadline, "sink did not connect"
            time.sleep(0.05)

        def publish(v: dict) -> None:
            assert sink.publish_verdict(v)
            time.sleep(0.05)

        run_scenario(ex, publish)
    finally:
        ex.stop()
        sink.stop(timeout_s=1)


@pytest.mark.parametrize("module", ["zmq_subscriber", "mqtt_subscriber"])
def test_examples_document_the_check(module: str) -> None:
    """The module docstring is what integrators copy: it must say what to check and why."""
    doc = example(module).__doc__
    assert "host_ts + deadline_ms" in doc and "stale OK" in doc and "NTP/PTP" in doc
