"""Images from a directory: replay once, loop forever, or watch for new files.

Why each rule:
- Files are decoded by `export.images.decode_image` (the trainer's decoder): 16-bit PNG/TIFF keep their
  depth, a truncated JPEG (no end-of-image marker) or one corrupt mid-stream (strict libjpeg-turbo) is a bad
  frame instead of half-decoded garbage scored as a normal part.
- A file that cannot be read or decoded is returned as a bad Frame naming the file: the part it shows
  gets the fail-safe verdict instead of silently disappearing.
- watch mode reads a new file only after its size and mtime were unchanged for `watch_settle_s`, so a
  file still being written is never decoded. Writers should still prefer write-then-rename (a name the
  patterns do not match, then `rename`), which is atomic. A name is inspected once; if it disappears
  and reappears it is inspected again.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import time
from collections import deque
from pathlib import Path

import numpy as np

from linesight.config.sources import FolderSourceConfig
from linesight.errors import DataError
from linesight.export.images import decode_image, to_bgr_or_gray

from .base import EndOfStream, Frame, Pacer, Source, SourceError

log = logging.getLogger(__name__)

_JPEG_SUFFIXES = {".jpg", ".jpeg", ".jpe", ".jfif"}


def header_size(data: np.ndarray) -> tuple[int, int] | None:
    """(width, height) from a PNG or JPEG header without decoding; None for other formats or odd headers."""
    head = bytes(data[:24])
    if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR":
        return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    if not head.startswith(b"\xff\xd8"):
        return None
    pos, n = 2, len(data)
    while pos + 9 < n:  # walk the marker segments to the frame header (SOFn)
        if data[pos] != 0xFF:
            return None
        marker = int(data[pos + 1])
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
            return int(data[pos + 7]) << 8 | int(data[pos + 8]), int(data[pos + 5]) << 8 | int(data[pos + 6])
        pos += 2 + (int(data[pos + 2]) << 8 | int(data[pos + 3]))
    return None


def decode_image_file(path: Path, grayscale: bool, max_pixels: int) -> tuple[np.ndarray | None, str | None]:
    """(image, None) or (None, reason). Never raises for a bad file: the reason names it."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        return None, f"cannot read image file {path}: {exc.strerror or exc}"
    if path.suffix.lower() in _JPEG_SUFFIXES:
        tail = bytes(data[-64:]).rstrip(b"\x00\r\n\t ")
        if not tail.endswith(b"\xff\xd9"):
            return None, f"image file {path} is a truncated JPEG (no end-of-image marker)"
    size = header_size(data)
    if size is not None and size[0] * size[1] > max_pixels:
        return None, (f"image file {path} is {size[0]}x{size[1]} px, more than source.max_frame_pixels "
                      f"({max_pixels}): not decoded")
    try:
        return to_bgr_or_gray(decode_image(data, str(path)), grayscale), None
    except DataError as exc:
        return None, str(exc)
    except ValueError as exc:
        return None, f"image file {path}: {exc}"


def _matches(name: str, patterns: list[str]) -> bool:
    lower = name.lower()
    return any(fnmatch.fnmatchcase(lower, p.lower()) for p in patterns)


def scan_folder(path: Path, patterns: list[str]) -> dict[str, tuple[int, int]]:
    """name -> (size, mtime_ns) of matching regular files. Raises OSError if the folder is gone."""
    found: dict[str, tuple[int, int]] = {}
    with os.scandir(path) as it:
        for entry in it:
            if not _matches(entry.name, patterns):
                continue
            try:
                if not entry.is_file():
                    continue
                st = entry.stat()
            except OSError:
                continue  # vanished between listing and stat: next poll decides
            found[entry.name] = (st.st_size, st.st_mtime_ns)
    return found


def check_folder(cfg: FolderSourceConfig) -> dict[str, tuple[int, int]]:
    """What `open()` requires of the folder (the start-up check calls it too): it exists, can be listed and,
    unless watched, holds matching files. Returns the scan; SourceError names `source.path`."""
    where, path = f"folder source {cfg.name!r}", Path(cfg.path)
    if not path.exists():
        raise SourceError(f"{where}: path {path} does not exist; set path to the image directory",
                          field="source.path")
    if not path.is_dir():
        raise SourceError(f"{where}: path {path} is not a directory; set path to the image directory",
                          field="source.path")
    try:
        current = scan_folder(path, cfg.patterns)
    except OSError as exc:
        raise SourceError(f"{where}: cannot list {path}: {exc.strerror or exc}; check permissions",
                          field="source.path") from exc
    if cfg.mode != "watch" and not current:
        raise SourceError(f"{where}: no files matching {', '.join(cfg.patterns)} in {path}; check path and "
                          "patterns", field="source.path")
    return current


class FolderSource(Source):
    """Frames from image files; `Frame.name` is the file name, `chunk['path']` the full path."""

    def __init__(self, cfg: FolderSourceConfig) -> None:
        super().__init__(cfg.name)
        self.cfg = cfg
        self.path = Path(cfg.path)
        self._pacer = Pacer(cfg.rate_hz)
        self._files: list[Path] = []
        self._index = 0
        # watch mode state
        self._seen: set[str] = set()
        self._pending: dict[str, tuple[tuple[int, int], float]] = {}
        self._ready: deque[str] = deque()
        self._next_poll = 0.0

    # -- listing -----------------------------------------------------------------------------
    def _scan(self) -> dict[str, tuple[int, int]]:
        return scan_folder(self.path, self.cfg.patterns)

    def _list_sorted(self) -> list[Path]:
        return [self.path / n for n in sorted(self._scan())]

    # -- lifecycle ---------------------------------------------------------------------------
    def open(self) -> None:
        if self._opened:
            return
        current = check_folder(self.cfg)
        if self.cfg.mode == "watch":
            if not self.cfg.watch_existing:
                self._seen = set(current)
        else:
            self._files = [self.path / n for n in sorted(current)]
        self._index = 0
        self._opened = True
        self._set_up()
        log.info("folder source open name=%s path=%s mode=%s files=%d",
                 self.name, self.path, self.cfg.mode, len(current))

    def close(self) -> None:
        if self._opened:
            self._opened = False
            self._set_down()

    # -- reading -----------------------------------------------------------------------------
    def read(self, timeout_s: float | None = 1.0) -> Frame | None:
        self._require_open()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        if self.cfg.mode == "watch":
            path = self._next_watched(timeout_s)
        else:
            path = self._next_listed(timeout_s)
        if path is None:
            return None
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not self._pacer.wait(remaining):
            self._push_back(path)
            return None
        host_ts = time.time_ns()
        image, error = decode_image_file(path, self.cfg.grayscale, self.cfg.max_frame_pixels)
        if error is not None:
            log.warning("bad image source=%s file=%s: %s", self.name, path.name, error)
        self._pacer.emitted()
        return self._make_frame(image, host_ts_ns=host_ts, error=error, name=path.name,
                                chunk={"path": str(path)})

    def _push_back(self, path: Path) -> None:
        """The pacer ran out of time: deliver this file on the next read instead."""
        if self.cfg.mode == "watch":
            self._ready.appendleft(path.name)
        else:
            self._index -= 1

    def _next_listed(self, timeout_s: float | None) -> Path | None:
        if self._index >= len(self._files):
            if self.cfg.mode == "once":
                raise EndOfStream(f"folder source {self.name!r}: all {len(self._files)} files delivered")
            try:
                self._files = self._list_sorted()
            except OSError as exc:
                self._files = []
                self._set_down(f"cannot list {self.path}: {exc.strerror or exc}")
            self._index = 0
            if not self._files:
                self._set_down(f"no files matching {', '.join(self.cfg.patterns)} in {self.path}")
                time.sleep(self.cfg.watch_poll_s if timeout_s is None else min(timeout_s, self.cfg.watch_poll_s))
                return None
            self._set_up()
        path = self._files[self._index]
        self._index += 1
        return path

    def _next_watched(self, timeout_s: float | None) -> Path | None:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            if self._ready:
                return self.path / self._ready.popleft()
            now = time.monotonic()
            if now >= self._next_poll:
                self._poll()
                self._next_poll = now + self.cfg.watch_poll_s
                if self._ready:
                    continue
            wait = self._next_poll - time.monotonic()
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                wait = min(wait, remaining)
            if wait > 0:
                time.sleep(wait)

    def _poll(self) -> None:
        """One directory scan: track new files until size+mtime are stable for watch_settle_s."""
        now = time.monotonic()
        try:
            current = self._scan()
        except OSError as exc:
            self._set_down(f"cannot list {self.path}: {exc.strerror or exc}")
            return
        if not self.status.up:
            self._set_up()
        self._seen &= current.keys()  # a vanished name may come back and is then inspected again
        for name in [n for n in self._pending if n not in current]:
            del self._pending[name]
        for name, sig in current.items():
            if name in self._seen:
                continue
            prev = self._pending.get(name)
            if prev is None or prev[0] != sig:
                self._pending[name] = (sig, now)
        ready = [(sig[1], name) for name, (sig, since) in self._pending.items()
                 if now - since >= self.cfg.watch_settle_s]
        for _, name in sorted(ready):
            del self._pending[name]
            self._seen.add(name)
            self._ready.append(name)
