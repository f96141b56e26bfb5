"""Progress with rate and ETA for long work, logged (stderr) at most every few seconds; `--log-format json` lines
carry it as a `progress` object (what the UI's training page follows)."""
from __future__ import annotations

import logging
import time

log = logging.getLogger("linesight.progress")


def _fmt(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 60}:{seconds % 60:02d}"


class Progress:
    def __init__(self, what: str, total: int, every_s: float = 3.0):
        self.what, self.total, self.every_s = what, max(total, 1), every_s
        self.start = self.last = time.monotonic()
        self.done = 0

    def __call__(self, done: int, total: int | None = None) -> None:
        self.done, self.total = done, max(total or self.total, 1)
        now = time.monotonic()
        if now - self.last >= self.every_s or done >= self.total:
            self.last = now
            elapsed = now - self.start
            rate = done / elapsed if elapsed > 0 else 0.0
            eta = (self.total - done) / rate if rate > 0 else 0.0
            log.info("%s: %d/%d (%d%%) %.1f/s elapsed %s ETA %s", self.what, done, self.total,
                     100 * done // self.total, rate, _fmt(elapsed), _fmt(eta),
                     extra={"progress": {"stage": self.what, "done": done, "total": self.total,
                                         "elapsed_s": round(elapsed, 1), "eta_s": round(eta, 1)}})
