"""sd_notify against a real AF_UNIX datagram socket standing in for systemd's notify socket."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from linesight.daemon.notify import Notifier


class FakeClock:
    """Deterministic monotonic clock so rate limiting is tested without sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def receiver() -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket and the NOTIFY_SOCKET value pointing at it.

    A short mkdtemp path keeps us under the 108-byte sun_path limit that deep pytest tmp
    paths can exceed.
    """
    d = tempfile.mkdtemp(prefix="lsn-", dir="/tmp")
    path = os.path.join(d, "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2.0)
    try:
        yield sock, path
    finally:
        sock.close()
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def abstract_receiver() -> Iterator[tuple[socket.socket, str]]:
    name = f"linesight-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2.0)
    try:
        yield sock, "@" + name
    finally:
        sock.close()


def _recv(sock: socket.socket) -> bytes:
    return sock.recv(4096)


def _assert_nothing_pending(sock: socket.socket) -> None:
    sock.settimeout(0.05)
    with pytest.raises(TimeoutError):
        sock.recv(4096)
    sock.settimeout(2.0)


def test_exact_datagrams_on_path_socket(receiver: tuple[socket.socket, str]) -> None:
    sock, path = receiver
    n = Notifier.from_env({"NOTIFY_SOCKET": path})
    assert n.enabled

    assert n.ready() is True
    assert _recv(sock) == b"READY=1"
    n.ready(status="inspecting station1")
    assert _recv(sock) == b"READY=1\nSTATUS=inspecting station1"
    n.status("camera reconnecting\nattempt 3")
    assert _recv(sock) == b"STATUS=camera reconnecting attempt 3"
    n.stopping()
    assert _recv(sock) == b"STOPPING=1"
    n.close()


def test_watchdog_datagrams(receiver: tuple[socket.socket, str]) -> None:
    sock, path = receiver
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}
    n = Notifier.from_env(env)
    assert n.watchdog_interval_s == 30.0
    assert n.watchdog() is True
    assert _recv(sock) == b"WATCHDOG=1"
    n.close()


def test_abstract_namespace_socket(abstract_receiver: tuple[socket.socket, str]) -> None:
    sock, value = abstract_receiver
    n = Notifier.from_env({"NOTIFY_SOCKET": value})
    n.ready(status="up")
    assert _recv(sock) == b"READY=1\nSTATUS=up"
    n.stopping()
    assert _recv(sock) == b"STOPPING=1"
    n.close()


def test_from_env_reads_os_environ(
    receiver: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, path = receiver
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    n = Notifier.from_env()
    n.ready()
    assert _recv(sock) == b"READY=1"
    # No WATCHDOG_USEC: the watchdog is off and nothing is sent for it.
    assert n.watchdog_interval_s is None
    assert n.watchdog_due() is False
    assert n.watchdog() is False
    _assert_nothing_pending(sock)


def test_watchdog_due_rate_limits_to_half_interval(receiver: tuple[socket.socket, str]) -> None:
    sock, path = receiver
    clock = FakeClock()
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "10000000"}  # 10 s, no WATCHDOG_PID
    n = Notifier.from_env(env, clock=clock)
    assert n.watchdog_interval_s == 10.0

    assert n.watchdog_due() is True  # never pinged yet
    assert n.watchdog_if_due() is True
    assert _recv(sock) == b"WATCHDOG=1"

    clock.now += 4.9
    assert n.watchdog_due() is False
    assert n.watchdog_if_due() is False
    _assert_nothing_pending(sock)

    clock.now += 0.1  # exactly half the interval since the last ping
    assert n.watchdog_due() is True
    assert n.watchdog_if_due() is True
    assert _recv(sock) == b"WATCHDOG=1"
    assert n.watchdog_due() is False
    n.close()


def test_watchdog_pid_mismatch_disables_watchdog(receiver: tuple[socket.socket, str]) -> None:
    sock, path = receiver
    other_pid = os.getpid() + 1
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(other_pid)}
    n = Notifier.from_env(env)
    assert n.watchdog_interval_s is None
    assert n.watchdog_due() is False
    assert n.watchdog() is False
    _assert_nothing_pending(sock)
    # Other notifications still go out: only the watchdog belongs to another process.
    n.ready()
    assert _recv(sock) == b"READY=1"
    n.close()


@pytest.mark.parametrize("usec", ["0", "-5", "abc"])
def test_invalid_watchdog_usec_disables_watchdog(
    receiver: tuple[socket.socket, str], usec: str
) -> None:
    _, path = receiver
    n = Notifier.from_env({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": usec})
    assert n.watchdog_interval_s is None
    assert n.watchdog_due() is False


def test_no_socket_is_noop_and_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="linesight.daemon.notify")
    n = Notifier.from_env({"WATCHDOG_USEC": "30000000"})
    assert not n.enabled
    assert n.watchdog_interval_s is None
    assert n.ready(status="x") is False
    assert n.status("x") is False
    assert n.watchdog() is False
    assert n.watchdog_due() is False
    assert n.stopping() is False
    noop = [r for r in caplog.records if "NOTIFY_SOCKET not set" in r.getMessage()]
    assert len(noop) == 1


def test_relative_notify_socket_is_rejected(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="linesight.daemon.notify")
    n = Notifier.from_env({"NOTIFY_SOCKET": "relative/notify.sock"})
    assert not n.enabled
    assert any("neither an absolute path" in r.getMessage() for r in caplog.records)


def test_send_errors_are_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="linesight.daemon.notify")
    d = tempfile.mkdtemp(prefix="lsn-", dir="/tmp")
    try:
        missing = str(Path(d) / "gone.sock")  # nobody bound: sendto fails with ENOENT
        n = Notifier.from_env({"NOTIFY_SOCKET": missing, "WATCHDOG_USEC": "1000000"})
        assert n.ready() is False
        assert n.watchdog() is False
        assert n.watchdog_due() is True  # a failed ping does not count as fed
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "sd_notify failed" in warnings[0].getMessage()

        # The manager's socket appears (e.g. after a re-exec): sending recovers.
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(missing)
        sock.settimeout(2.0)
        try:
            assert n.ready() is True
            assert sock.recv(4096) == b"READY=1"
        finally:
            sock.close()
        n.close()
    finally:
        shutil.rmtree(d, ignore_errors=True)
