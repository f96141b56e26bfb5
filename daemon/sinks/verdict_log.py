"""JSONL verdict log: every published verdict as one line on local disk, size-rotated (path, path.1 ... path.<keep>).

Why: traceability must not depend on the MQTT link or on a subscriber keeping its own records; an audit asks
months later which decision a part got, when, and from which model. Each line is exactly the MQTT verdict
payload (encoding.verdict_json), so a line and the message the PLC got are byte-identical.

Never raises into the caller (it runs on the daemon's publish thread): a full disk or a vanished folder is
logged once per distinct problem, counted (`errors`), kept in `last_problem`, and `write` returns False (the
daemon raises alarm verdict_log_error). Each line is flushed when written, so it survives a daemon crash;
`close` also fsyncs. A line cut short by a full disk is ended with a newline before the next one, so it
spoils only itself.

Only its own files are touched: rotation renames or deletes a file only if it is empty or its first line is
a linesight verdict. A foreign file at path or path.N stops rotation (counted, alarmed) instead of being
overwritten; `check_verdict_log` (the start-up check) refuses to start on one.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import threading
from pathlib import Path
from typing import Any, BinaryIO

from linesight.config.outputs import VerdictLogConfig
from linesight.daemon.sinks.encoding import verdict_json
from linesight.daemon.verdict import SCHEMA
from linesight.errors import ConfigError

log = logging.getLogger(__name__)

_FIELD = "outputs.verdict_log.path"
_HEAD_BYTES = 1 << 20  # a verdict line is a few KiB; its first line must end within this
_OWN_PREFIX = f'{{"schema":"{SCHEMA}"'.encode()


def rotated(path: Path, i: int) -> Path:
    """The i-th rotated file (1 = newest)."""
    return path.with_name(f"{path.name}.{i}")


def is_own(path: Path) -> bool:
    """True if rotation may rename or delete `path`: absent, empty, or a file whose first line is a verdict."""
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):  # nothing there to overwrite
        return True
    if not stat.S_ISREG(st.st_mode):  # a symlink, folder or device is never ours
        return False
    if st.st_size == 0:
        return True
    with open(path, "rb") as fh:
        first = fh.readline(_HEAD_BYTES)
    try:
        head = json.loads(first)
    except ValueError:  # ours too if it is our first line, cut short by a crash (verdicts start with schema)
        return not first.endswith(b"\n") and first.startswith(_OWN_PREFIX)
    return isinstance(head, dict) and head.get("schema") == SCHEMA


def foreign_files(cfg: VerdictLogConfig) -> list[Path]:
    """Files at the log's names that are not verdict logs (rotation would overwrite them)."""
    names = [cfg.path, *(rotated(cfg.path, i) for i in range(1, cfg.keep + 1))]
    return [p for p in names if not is_own(p)]


def check_verdict_log(cfg: VerdictLogConfig) -> None:
    """ConfigError if a file the log would write, rename or delete is not a verdict log (start-up check)."""
    try:
        foreign = foreign_files(cfg)
    except OSError as exc:
        raise ConfigError(f"cannot read {exc.filename} ({exc.strerror}); give the daemon user read access or "
                          "choose another path", field=_FIELD) from None
    if foreign:
        raise ConfigError(f"{foreign[0]} exists and is not a linesight verdict log; rotation would overwrite it: "
                          "choose another verdict_log.path", field=_FIELD)


def check_verdict_log_dir(cfg: VerdictLogConfig) -> None:
    """ConfigError unless the log's folder exists and is writable, or can be created (creates nothing)."""
    folder = Path(cfg.path).parent
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        where = "" if probe == folder else f" (it does not exist; {probe} is the nearest existing folder)"
        raise ConfigError(f"cannot write in {folder}{where}; create it for the daemon user or choose another path",
                          field=_FIELD)


class VerdictLog:
    """Appends verdicts to `cfg.path`, rotating by size. `write` from one thread; `close` from any."""

    def __init__(self, cfg: VerdictLogConfig) -> None:
        self._cfg = cfg
        self._path = Path(cfg.path)
        self._lock = threading.Lock()
        self._fh: BinaryIO | None = None
        self._size = 0
        self._next_rotation = cfg.max_bytes
        self._problems: set[str] = set()
        self.last_problem: str | None = None
        self.counters = dict.fromkeys(("written", "errors"), 0)

    @property
    def path(self) -> Path:
        return self._path

    def write(self, verdict: dict[str, Any], payload: bytes | None = None) -> bool:
        """Append one verdict line (`payload`: its JSON when the caller has it already, as the MQTT sink takes it).
        False when this call hit a problem (the line is lost, or rotation was refused and the file grows on):
        logged once, counted, kept in `last_problem`. Never raises."""
        with self._lock:
            errors = self.counters["errors"]
            try:
                line = (verdict_json(verdict) if payload is None else payload) + b"\n"
                if self._fh is None:
                    self._open()
                if self._size > 0 and self._size + len(line) > self._next_rotation:
                    self._rotate()
                fh = self._fh
                assert fh is not None
                fh.write(line)
                fh.flush()
                self._size += len(line)
            except (OSError, ValueError, TypeError) as exc:  # TypeError: a value JSON cannot take
                self._abandon()
                self._problem(f"cannot write verdict seq={verdict.get('seq')}: {exc}")
                return False
            self.counters["written"] += 1
            if self._next_rotation == self._cfg.max_bytes:  # no refused rotation pending: all is well again
                self._problems.clear()
                self.last_problem = None
            return self.counters["errors"] == errors

    def close(self) -> None:
        """Flush and fsync the current file (called on stop, after the last verdict)."""
        with self._lock:
            fh, self._fh = self._fh, None
            if fh is None:
                return
            try:
                fh.flush()
                os.fsync(fh.fileno())
                fh.close()
            except OSError as exc:
                self._problem(f"cannot flush on close: {exc}")
        log.info("verdict log %s closed", self._path, extra={"verdict_log": self.counters})

    # ------------------------------------------------------------------ internals (under _lock)

    def _open(self) -> None:
        if not is_own(self._path):
            raise OSError(f"{self._path} is not a linesight verdict log; not writing into it")
        self._path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self._path, "ab")  # noqa: SIM115 - kept open across writes, closed in close()/_abandon()
        size = fh.tell()
        if size > 0:
            with open(self._path, "rb") as tail:
                tail.seek(size - 1)
                if tail.read(1) != b"\n":  # the last line was cut short (full disk, crash): end it
                    fh.write(b"\n")
                    fh.flush()
                    size += 1
        self._fh, self._size = fh, size

    def _abandon(self) -> None:
        """Drop the handle after an error; the next write reopens (the disk may be back)."""
        fh, self._fh = self._fh, None
        if fh is not None:
            try:
                fh.close()
            except OSError:
                pass  # the unflushed rest is lost with the failed line; the problem is already counted

    def _rotate(self) -> None:
        path, keep = self._path, self._cfg.keep
        foreign = [p for p in [path, *(rotated(path, i) for i in range(1, keep + 1))] if not is_own(p)]
        if foreign:  # never overwrite: keep appending, retry after another max_bytes
            self._next_rotation = self._size + self._cfg.max_bytes
            self._problem(f"cannot rotate: {foreign[0]} is not a linesight verdict log; move it away "
                          f"({path} grows past verdict_log.max_bytes meanwhile)")
            return
        assert self._fh is not None
        self._fh.close()
        self._fh = None
        rotated(path, keep).unlink(missing_ok=True)
        for i in range(keep - 1, 0, -1):
            if rotated(path, i).exists():
                os.replace(rotated(path, i), rotated(path, i + 1))
        os.replace(path, rotated(path, 1))
        self._next_rotation = self._cfg.max_bytes
        log.debug("verdict log %s rotated (%d kept)", path, keep)
        self._open()

    def _problem(self, message: str) -> None:
        self.counters["errors"] += 1
        self.last_problem = message
        key = re.sub(r"seq=\S+", "seq=*", message)
        if key not in self._problems:
            log.error("verdict log %s: %s", self._path, message)
            self._problems.add(key)
        else:
            log.debug("verdict log %s: %s", self._path, message)
