"""sd_notify(3) protocol spoken directly over a unix datagram socket.

Why not libsystemd: the daemon must run the same in a venv, a container and under systemd, and
the protocol is a few newline-separated KEY=VALUE lines in one datagram. Failures to notify are
logged and never raised: losing a STATUS line must not stop a production line.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)

# The service manager waits for datagrams; a stuck receiver must not freeze the frame loop forever.
_SEND_TIMEOUT_S = 0.0  # non-blocking: a stuck receiver must never stall the processing loop


def _parse_address(raw: str) -> str | None:
    """NOTIFY_SOCKET value -> address for sendto(); '@name' is the abstract namespace."""
    if raw.startswith("@"):
        return "\0" + raw[1:]
    if raw.startswith("/"):
        return raw
    return None


def _parse_watchdog(env: Mapping[str, str], pid: int) -> float | None:
    """WATCHDOG_USEC/WATCHDOG_PID -> timeout in seconds, or None when not for this process."""
    raw_usec = env.get("WATCHDOG_USEC")
    if not raw_usec:
        return None
    try:
        usec = int(raw_usec)
    except ValueError:
        log.warning("ignoring WATCHDOG_USEC=%r: not an integer; watchdog disabled", raw_usec)
        return None
    if usec <= 0:
        log.warning("ignoring WATCHDOG_USEC=%r: not positive; watchdog disabled", raw_usec)
        return None
    raw_pid = env.get("WATCHDOG_PID")
    if raw_pid:
        try:
            watched = int(raw_pid)
        except ValueError:
            log.warning("ignoring WATCHDOG_PID=%r: not an integer; watchdog disabled", raw_pid)
            return None
        if watched != pid:
            # The variables were inherited from a parent: the watchdog is not ours to feed.
            log.debug("WATCHDOG_PID=%d is not this process (%d); watchdog disabled", watched, pid)
            return None
    return usec / 1_000_000


def _one_line(text: str) -> str:
    """A STATUS value must not contain newlines: each line would be parsed as an assignment."""
    return " ".join(text.splitlines())


class Notifier:
    """Sends readiness, status and watchdog messages to the service manager.

    Every method is a no-op when there is no NOTIFY_SOCKET (not started by systemd, or
    Type= is not notify), so the daemon calls them unconditionally.
    """

    def __init__(
        self,
        address: str | None,
        watchdog_timeout_s: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """address: a filesystem path or '\\0'-prefixed abstract name (None disables)."""
        self._address = address
        self._watchdog_timeout_s = watchdog_timeout_s
        self._clock = clock
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._last_watchdog: float | None = None
        self._noop_logged = False
        self._failing = False

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> Notifier:
        """Build from NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID (os.environ by default)."""
        env = os.environ if env is None else env
        raw = env.get("NOTIFY_SOCKET") or None
        address = None
        if raw is not None:
            address = _parse_address(raw)
            if address is None:
                log.warning(
                    "NOTIFY_SOCKET=%r is neither an absolute path nor an '@abstract' name; "
                    "service notifications disabled",
                    raw,
                )
        watchdog = _parse_watchdog(env, os.getpid()) if address is not None else None
        if watchdog is not None:
            log.info("systemd watchdog enabled", extra={"watchdog_timeout_s": watchdog})
        return cls(address, watchdog, clock=clock)

    @property
    def enabled(self) -> bool:
        """True when a service manager is listening."""
        return self._address is not None

    @property
    def watchdog_interval_s(self) -> float | None:
        """The watchdog timeout systemd enforces (WatchdogSec=), or None when disabled."""
        return self._watchdog_timeout_s

    def ready(self, status: str | None = None) -> bool:
        """Startup finished: camera, model and sinks are up. Also ends a reload."""
        return self._send("READY=1", status)

    def status(self, text: str) -> bool:
        """Free-form one-line state shown by `systemctl status`."""
        return self._send(None, text)

    def stopping(self, status: str | None = None) -> bool:
        """Shutdown began; systemd stops expecting watchdog pings."""
        return self._send("STOPPING=1", status)

    def watchdog(self) -> bool:
        """Feed the watchdog. Call from the processing loop so a stalled loop stops feeding."""
        if self._watchdog_timeout_s is None:
            return False
        sent = self._send("WATCHDOG=1", None)
        if sent:
            self._last_watchdog = self._clock()
        return sent

    def watchdog_due(self) -> bool:
        """True when a ping is needed: half the timeout has passed since the last one.

        Cheap (one clock read) so the loop can ask every frame.
        """
        if self._watchdog_timeout_s is None:
            return False
        if self._last_watchdog is None:
            return True
        return self._clock() - self._last_watchdog >= self._watchdog_timeout_s / 2

    def watchdog_if_due(self) -> bool:
        """watchdog() when watchdog_due(); returns whether a ping was sent."""
        return self.watchdog() if self.watchdog_due() else False

    def close(self) -> None:
        """Release the socket (the notifier still works: it reopens on the next send)."""
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    def _send(self, state: str | None, status: str | None) -> bool:
        if self._address is None:
            if not self._noop_logged:
                self._noop_logged = True
                log.debug("NOTIFY_SOCKET not set; service notifications are no-ops")
            return False
        lines = [state] if state else []
        if status is not None:
            lines.append("STATUS=" + _one_line(status))
        payload = "\n".join(lines).encode("utf-8")
        with self._lock:
            try:
                if self._sock is None:
                    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                    sock.settimeout(_SEND_TIMEOUT_S)
                    self._sock = sock
                self._sock.sendto(payload, self._address)
            except OSError as exc:
                # Log the first failure of a run loudly, repeats quietly (the loop calls often).
                level = logging.DEBUG if self._failing else logging.WARNING
                self._failing = True
                log.log(
                    level,
                    "sd_notify failed: %s",
                    exc,
                    extra={
                        "notify_socket": self._address.replace("\0", "@"),
                        "notify_payload": payload.decode("utf-8"),
                    },
                )
                return False
        if self._failing:
            self._failing = False
            log.info("sd_notify works again")
        return True
