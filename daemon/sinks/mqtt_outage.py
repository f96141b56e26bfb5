"""Verdicts an MQTT outage swallowed: which ones, for the `verdicts_dropped` alarm sent when the link is back
(see `mqtt_sink`, "Why verdicts are never delivered late")."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class DropLedger:
    """Count and seq range of the verdicts dropped since the last report. Seqs are not in emission order
    (identity is given at acquisition): keep the lowest and highest. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._outage: dict[str, Any] | None = None

    @property
    def pending(self) -> bool:
        return self._outage is not None

    def note(self, seq: Any) -> None:
        with self._lock:
            if self._outage is None:
                self._outage = {"count": 0, "first_seq": seq, "last_seq": seq, "since": utc_now()}
            self._outage["count"] += 1
            if isinstance(seq, int):
                o = self._outage
                o["first_seq"] = seq if not isinstance(o["first_seq"], int) else min(o["first_seq"], seq)
                o["last_seq"] = seq if not isinstance(o["last_seq"], int) else max(o["last_seq"], seq)

    def take(self) -> dict[str, Any] | None:
        """What was dropped since the last report (None: nothing), and start afresh."""
        with self._lock:
            outage, self._outage = self._outage, None
        return outage

    def give_back(self, outage: dict[str, Any]) -> None:
        """A report that could not go out: merge it back, so the next report covers both."""
        with self._lock:
            if self._outage is None:
                self._outage = outage
            else:
                cur = self._outage
                cur["count"] += outage["count"]
                cur["since"] = outage["since"]
                for key, pick in (("first_seq", min), ("last_seq", max)):
                    a, b = cur[key], outage[key]
                    cur[key] = pick(a, b) if isinstance(a, int) and isinstance(b, int) else (a if b is None else b)

    @staticmethod
    def message(outage: dict[str, Any]) -> str:
        return (f"{outage['count']} verdicts (seq {outage['first_seq']}..{outage['last_seq']}) were dropped or "
                "never acknowledged (broker unreachable or send queue full); those parts may have no MQTT verdict")

