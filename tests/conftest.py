"""Shared fixtures: real mosquitto brokers (plain, and TLS + password) and an MQTT probe client.

The brokers are real Debian mosquitto processes on free 127.0.0.1 ports with throw-away configs, so
tests exercise the same wire protocol as production. Each broker can be killed (SIGKILL) and
restarted on the same port to test reconnect behaviour. Missing mosquitto -> the tests skip and
say how to install it (`apt-get install -y mosquitto`, see .ci/mosquitto.sh).
"""

from __future__ import annotations

import getpass
import os
import queue
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytest_plugins = ["skip_gate"]  # --strict-skips (.ci/run): a skip not allowed there fails the run

MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd")
_INSTALL_HINT = "mosquitto is not installed; run `sudo .ci/mosquitto.sh install` (apt-get install -y mosquitto)"


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (the broker binds it right after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(host: str, port: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.02)
    return False


class Broker:
    """A mosquitto process with a fixed port and config; start/kill/restart/stop."""

    host = "127.0.0.1"

    def __init__(self, workdir: Path, port: int, conf_lines: list[str]) -> None:
        self.workdir = workdir
        self.port = port
        self.conf = workdir / "mosquitto.conf"
        self.log_path = workdir / "mosquitto.log"
        self.conf.write_text("\n".join(conf_lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None
        self.username: str | None = None
        self.password: str | None = None
        self.ca_file: Path | None = None

    def start(self, timeout: float = 5.0) -> None:
        assert MOSQUITTO is not None
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited rc={self.proc.returncode}:\n{self.log()}")
            if wait_port(self.host, self.port, 0.2):
                return
        raise RuntimeError(f"mosquitto did not listen on {self.port} within {timeout}s:\n{self.log()}")

    def kill(self) -> None:
        """SIGKILL: the broker vanishes without saying goodbye (clients see a dropped TCP link)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)
        self.proc = None

    def restart(self) -> None:
        self.kill()
        self.start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def _base_conf(port: int) -> list[str]:
    return [
        f"listener {port} 127.0.0.1",
        "persistence false",
        # As root mosquitto would switch to user 'mosquitto', which cannot read pytest's 0700 tmp dirs.
        f"user {getpass.getuser()}",
        "log_dest stderr",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",
    ]


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Broker]:
    """Plain-TCP anonymous broker on a free port."""
    if MOSQUITTO is None:
        pytest.skip(_INSTALL_HINT)
    workdir = tmp_path / "mosquitto"
    workdir.mkdir()
    port = free_port()
    broker = Broker(workdir, port, [*_base_conf(port), "allow_anonymous true"])
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@dataclass
class TlsMaterial:
    dir: Path
    ca_crt: Path
    server_crt: Path
    server_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    res = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed:\n{res.stderr}")


@pytest.fixture(scope="session")
def tls_material(tmp_path_factory: pytest.TempPathFactory) -> TlsMaterial:
    """Throw-away CA and a server certificate for 127.0.0.1/localhost, made with the openssl CLI."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not installed (apt-get install -y openssl)")
    d = tmp_path_factory.mktemp("tls")
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
             "-subj", "/CN=linesight-test-ca", cwd=d)
    _openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost", cwd=d)
    (d / "ext.cnf").write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n"
    )
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "server.crt", "-days", "2", "-extfile", "ext.cnf", cwd=d)
    return TlsMaterial(d, d / "ca.crt", d / "server.crt", d / "server.key")


@pytest.fixture
def mosquitto_tls(tmp_path: Path, tls_material: TlsMaterial) -> Iterator[Broker]:
    """TLS-only broker requiring user 'linesight' with a password from `mosquitto_passwd -b`."""
    if MOSQUITTO is None or MOSQUITTO_PASSWD is None:
        pytest.skip(_INSTALL_HINT)
    workdir = tmp_path / "mosquitto-tls"
    workdir.mkdir()
    port = free_port()
    username, password = "linesight", "s3cret-Pa55word-" + os.urandom(4).hex()
    pwfile = workdir / "passwd"
    subprocess.run([MOSQUITTO_PASSWD, "-c", "-b", str(pwfile), username, password], check=True,
                   capture_output=True)
    broker = Broker(
        workdir,
        port,
        [
            *_base_conf(port),
            f"cafile {tls_material.ca_crt}",
            f"certfile {tls_material.server_crt}",
            f"keyfile {tls_material.server_key}",
            "allow_anonymous false",
            f"password_file {pwfile}",
        ],
    )
    broker.username, broker.password, broker.ca_file = username, password, tls_material.ca_crt
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@dataclass
class Received:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    properties: object
    at: float = field(default_factory=time.monotonic)


class MqttProbe:
    """Test-side MQTT v5 client: subscribes, records every message, resubscribes after reconnects."""

    def __init__(self, broker: Broker, topics: list[str], *, tls: bool = False,
                 username: str | None = None, password: str | None = None) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.messages: queue.Queue[Received] = queue.Queue()
        self.all: list[Received] = []
        self.subscribed = threading.Event()
        self._topics = topics
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"probe-{os.getpid()}-{id(self):x}",
            protocol=mqtt.MQTTv5,
        )
        if username:
            self.client.username_pw_set(username, password)
        if tls:
            self.client.tls_set(ca_certs=str(broker.ca_file))
        self.client.reconnect_delay_set(1, 1)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *_a: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port, keepalive=10, clean_start=True)
        self.client.loop_start()
        if not self.subscribed.wait(5):
            raise RuntimeError("probe could not subscribe")

    def _on_connect(self, client, _ud, _flags, reason, _props) -> None:  # noqa: ANN001
        if not reason.is_failure:
            client.subscribe([(t, 1) for t in self._topics])

    def _on_message(self, _client, _ud, msg) -> None:  # noqa: ANN001
        rec = Received(msg.topic, msg.payload, msg.qos, bool(msg.retain), msg.properties)
        self.all.append(rec)
        self.messages.put(rec)

    def wait_for(self, predicate: Callable[[Received], bool], timeout: float = 5.0) -> Received:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no matching MQTT message within {timeout}s; "
                                     f"got {[(m.topic, m.payload) for m in self.all]}")
            try:
                rec = self.messages.get(timeout=left)
            except queue.Empty:
                continue
            if predicate(rec):
                return rec

    def publish(self, topic: str, payload: bytes | str, **kw) -> None:  # noqa: ANN003
        self.client.publish(topic, payload, qos=1, **kw).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def mqtt_probe() -> Iterator[Callable[..., MqttProbe]]:
    """Factory for MqttProbe clients; all are disconnected at teardown."""
    probes: list[MqttProbe] = []

    def make(broker: Broker, topics: list[str], **kw) -> MqttProbe:  # noqa: ANN003
        p = MqttProbe(broker, topics, **kw)
        probes.append(p)
        return p

    yield make
    for p in probes:
        p.close()


@pytest.fixture
def free_tcp_port() -> Callable[[], int]:
    """Callable returning a currently free 127.0.0.1 TCP port."""
    return free_port


# ---------------------------------------------------------------------------------------- small real bundle
@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few real magnetic_tile images in MVTec layout (skips when ../shared is absent)."""
    from helpers import make_subset

    return make_subset(tmp_path_factory.mktemp("mt") / "subset")


@pytest.fixture(scope="session")
def small_bundle(small_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real bundle (folder) fitted on the subset: random-init weights, tiny input — machinery, not accuracy."""
    from linesight.config.fit import preset
    from linesight.trainer.fit import fit

    out = tmp_path_factory.mktemp("bundle") / "model"
    fit(small_dataset, out, preset("fast", weights="none", input_size=96, embedding_dim=64, coreset={"ratio": 0.1},
                                   model_id="test-model"))
    return out


# ---------------------------------------------------------------------------------------- real browser
#: Debian's chromium flags that work headless as root in a container (headless itself is Playwright's option).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
_BROWSER_SKIP = "needs chromium (Debian package) and playwright"  # not in skip_gate.ALLOWED_SKIPS: CI must have both


@pytest.fixture(scope="module")
def chromium_browser() -> Iterator[object]:
    """Debian's /usr/bin/chromium driven by Playwright (never Playwright's own downloaded browser).

    Module scope: the Playwright driver and its event loop live only while the module that asked runs.
    Missing chromium or playwright -> skip, which .ci/run's --strict-skips turns into a failure.
    """
    exe = shutil.which("chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        exe = None
    if exe is None:
        pytest.skip(_BROWSER_SKIP)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()
