"""Who a frame is: its seq and part id are fixed the moment it is acquired, and (station, run, seq) is unique
for the life of the station.

Why at acquisition: a fail-safe verdict for a dropped frame is emitted ahead of frames still queued for
inference; identity taken at emission would put that NG on the wrong part and let the uninspected one pass.
Why a state file: seq restarting at 1 on every start gives duplicate ids (and archive name clashes) to the
MES. The file holds the run number and the next seq; seqs are reserved in blocks, so it is written once per
`BLOCK` frames, a crash skips the rest of a block (a gap, never a duplicate) and a clean stop resumes exactly.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from linesight.daemon.sources.base import Frame
from linesight.errors import LinesightError

log = logging.getLogger(__name__)
BLOCK = 1000
SCHEMA = "linesight.state/1"


class StateError(LinesightError):
    """The state directory cannot be used (unwritable, corrupt file, another daemon owns the station)."""


@dataclass(frozen=True)
class Acquired:
    """A frame with the identity it was given on arrival; every verdict about it carries exactly this."""

    frame: Frame
    seq: int
    part_id: str


def state_dir_of(configured: Path | None) -> Path | None:
    """pipeline.state_dir, else the first folder of systemd's $STATE_DIRECTORY (StateDirectory= in the unit)."""
    env = os.environ.get("STATE_DIRECTORY")
    return configured or (Path(env.split(":")[0]) if env else None)


def state_path(state_dir: Path, station: str) -> Path:
    return Path(state_dir) / f"state-{re.sub(r'[^A-Za-z0-9_.-]', '_', station)}.json"


def check_state(state_dir: Path | None, station: str) -> None:
    """What SeqStore() would refuse, without starting a run: StateError naming the problem."""
    if state_dir is None:
        return
    SeqStore(state_dir, station, dry_run=True)


class SeqStore:
    """Run number and seq counter of one station, persisted under `state_dir` (None: memory only, and the
    run id is the start time in Unix seconds so (station, run, seq) still does not repeat)."""

    def __init__(self, state_dir: Path | None, station: str, *, dry_run: bool = False) -> None:
        self._lock = threading.Lock()
        self.path = None if state_dir is None else state_path(state_dir, station)
        self._fh = None
        if self.path is None:
            self.run, self._next, self._reserved = int(time.time()), 1, None
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path.with_suffix(".lock"), "a")  # noqa: SIM115 - held for the daemon's life
            fcntl.flock(self._fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StateError(f"{self.path}: another linesight daemon is running for station {station}; one "
                             "station, one daemon (two would hand out the same part ids)") from None
        except OSError as exc:
            raise StateError(f"state directory {self.path.parent}: {exc.strerror}; set pipeline.state_dir to a "
                             "writable folder") from None
        state = self._read()
        if dry_run:  # check-config: usable, readable, not owned by a running daemon; nothing changed
            self._fh.close()
            self._fh = None
            return
        self.run = int(state.get("run", 0)) + 1
        self._next = int(state.get("next_seq", 1))
        self._reserved = self._next + BLOCK
        self._write(self._reserved)

    def _read(self) -> dict:
        try:
            state = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise StateError(f"{self.path}: unreadable ({exc}); fix or remove it (seq then restarts at 1)") from None
        if not isinstance(state, dict) or state.get("schema") != SCHEMA or not all(  # run 0: never ran; seqs from 1
                isinstance(state.get(k), int) and state[k] >= least for k, least in (("run", 0), ("next_seq", 1))):
            raise StateError(f"{self.path}: not a {SCHEMA} file; fix or remove it (seq then restarts at 1)")
        return state

    def _write(self, next_seq: int) -> None:
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as fh:
            json.dump({"schema": SCHEMA, "run": self.run, "next_seq": next_seq}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)

    def next(self) -> int:
        with self._lock:
            seq = self._next
            self._next += 1
            if self._reserved is not None and self._next > self._reserved:
                self._reserved = self._next + BLOCK
                try:
                    self._write(self._reserved)
                except OSError as exc:  # ids stay unique in this run; a crash now could repeat some later
                    log.error("cannot persist seq to %s: %s", self.path, exc)
            return seq

    def close(self) -> None:
        """Clean stop: the next run continues at the exact next seq (no gap)."""
        with self._lock:
            if self._fh is None:
                return
            try:
                self._write(self._next)
            except OSError as exc:
                log.error("cannot persist seq to %s: %s", self.path, exc)
            self._reserved = None
            self._fh.close()
            self._fh = None
