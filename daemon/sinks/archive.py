"""Bounded on-disk archive of inspected frames (audits, operator review, re-training data).

Layout: ``<dir>/<YYYY-MM-DD UTC>/<seq:012d>_<part_id>_<OK|NG>.{image.png|image.jpg,heatmap.png,json}``;
the JSON sidecar is exactly the verdict and is written last (atomically, via rename), so a record
without a sidecar is an interrupted write. The heatmap is colour-mapped like the HMI feed
(clip(map/threshold*0.5,0,1), JET) for human review. Readers (the UI's review page) find records with
`stored_newest_first` and `stored`, which know this layout; nothing else parses its names.

What is kept: every NG (including fail-safe ones) and a deterministic `save_ok_fraction` of OK
frames, chosen by a hash of `seq` (splitmix64) rather than `seq % N` so periodic patterns on the line
(every 8th part from the same fixture nest) are not systematically over- or under-sampled, and a
restart reproduces the same choice.

Retention: a running byte counter (one directory scan at start, never per frame) and an in-memory,
oldest-first list of records. Before each write the oldest records are deleted until the new record
fits in `max_bytes` and leaves `min_free_bytes` free on the disk (one statvfs per write), and records older
than `max_age_days` are deleted.

Never raises into the caller on disk problems (full disk, unplugged USB drive, read-only mount):
logs (once per distinct problem), counts `errors`, keeps the message in `last_problem` (the daemon raises
alarm archive_error and /healthz says degraded) and returns False. Writing PNGs costs milliseconds:
call `save` from the daemon's output thread, not the inference thread. The frame and heatmap come as
`Pictures`, so a rendering the ZeroMQ feed already made (the coloured heatmap, an encoding in the same format)
is reused, and the sidecar as the verdict's bytes the other outputs sent.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from linesight.config.outputs import ArchiveConfig
from linesight.daemon.sinks.encoding import Pictures, verdict_json
from linesight.errors import ConfigError

log = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_DATE_DIR = re.compile(r"^\d{4}-\d{2}-\d{2}$")
#: A record's name: seq, sanitised part id, OK|NG, and a suffix when the name was taken (seq restarted).
_NAME = re.compile(r"^(?P<seq>\d{12})_(?P<part>[A-Za-z0-9_-]{1,64})_(?P<verdict>OK|NG)(?:-[0-9a-f]{8})?$")
_M64 = 0xFFFFFFFFFFFFFFFF


def sanitise_part_id(part_id: Any) -> str:
    """Part ids come from scanners/PLCs: keep [A-Za-z0-9_-], map the rest to '-', cap length."""
    cleaned = _UNSAFE.sub("-", str(part_id)).strip("-")[:64]
    return cleaned or "noid"


def record_name(verdict: dict[str, Any]) -> str:
    """`<seq:012d>_<part_id>_<OK|NG>`: the name of a verdict's record (sidecar `.json`, frame `.image.*`, map
    `.heatmap.png`); NG includes fail-safe verdicts decided NG."""
    return (f"{int(verdict.get('seq', 0)):012d}_{sanitise_part_id(verdict.get('part_id'))}_"
            f"{'OK' if verdict.get('verdict') == 'OK' else 'NG'}")


@dataclass(frozen=True)
class Stored:
    """A complete record on disk (its sidecar exists: it is written last), as its folder and name say."""

    day: str  # YYYY-MM-DD (UTC) folder
    name: str
    seq: int
    verdict: str  # OK | NG
    folder: Path

    @property
    def sidecar(self) -> Path:
        return self.folder / f"{self.name}.json"

    @property
    def complete(self) -> bool:
        """Its sidecar is there (false: pruned, or still being written)."""
        return self.sidecar.is_file()

    def picture(self, heatmap: bool) -> Path | None:
        """The heatmap PNG, or the frame (PNG or JPEG); None when the record has none."""
        names = (".heatmap.png",) if heatmap else (".image.png", ".image.jpg")
        return next((p for p in (self.folder / f"{self.name}{n}" for n in names) if p.is_file()), None)


def stored(root: Path, day: str, name: str) -> Stored | None:
    """The record `day`/`name` under `root` if both are names of the layout (so neither can lead elsewhere: no
    separator, no '..'); else None. It may not be there (`complete`)."""
    m = _NAME.match(name)
    if not _DATE_DIR.match(day) or m is None:
        return None
    return Stored(day, name, int(m["seq"]), m["verdict"], Path(root) / day)


def stored_newest_first(root: Path, before: tuple[str, str] | None = None) -> Iterator[Stored]:
    """Complete records under `root`, newest first by day, then seq (then name); `before` (day, name): only
    records after that one in this order. Reads folder listings only, a day at a time, never a file."""
    days = sorted((d.name for d in os.scandir(root) if _DATE_DIR.match(d.name) and d.is_dir()), reverse=True)
    for day in days:
        if before is not None and day > before[0]:
            continue
        folder = Path(root) / day
        try:
            found = [m for f in os.listdir(folder) if f.endswith(".json") and (m := _NAME.match(f[:-5]))]
        except FileNotFoundError:  # pruned between the two listings
            continue
        for m in sorted(found, key=lambda m: m.string, reverse=True):
            if before is None or (day, m.string) < before:
                yield Stored(day, m.string, int(m["seq"]), m["verdict"], folder)


def keep_ok(seq: int, fraction: float) -> bool:
    """Deterministic sampling of OK frames by sequence number."""
    if fraction <= 0:
        return False
    if fraction >= 1:
        return True
    # splitmix64 finaliser: a well-mixed, reproducible pseudo-random value per seq (a plain
    # multiplicative hash picks seqs at quasi-regular spacings, which can alias with line periods).
    z = (int(seq) + 0x9E3779B97F4A7C15) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    z ^= z >> 31
    return z < fraction * 2.0**64


@dataclass
class _Record:
    stem: Path  # <dir>/<date>/<name> without suffixes
    mtime: float
    size: int = 0
    files: list[Path] = field(default_factory=list)


def check_archive_dir(path: Path) -> None:
    """ConfigError unless `path` is a folder the daemon can write in, or can create (check-config creates
    nothing: it writes and removes one hidden temp file in an existing folder, and touches nothing else).

    Archive itself never raises on disk problems (see module docstring), so this is how a wrong path or
    missing permission shows up before the line runs for days without an archive."""
    field = "outputs.archive.dir"
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise ConfigError(f"{path} is not a folder; set archive.dir to a folder", field=field)
        try:
            fd, probe = tempfile.mkstemp(prefix=".linesight-write-test-", dir=path)
        except OSError as exc:
            raise ConfigError(f"cannot write in {path} ({exc.strerror}); give the daemon user write access "
                              "or choose another folder", field=field) from None
        os.close(fd)
        os.unlink(probe)
        return
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"cannot create {path}: {parent} is not a folder", field=field)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot create {path}: no write access to {parent}; create the folder for the "
                          "daemon user or choose another one", field=field)


class Archive:
    """Writes verdict records under `cfg.dir` within the configured size and age limits."""

    def __init__(self, cfg: ArchiveConfig) -> None:
        self._cfg = cfg
        self._dir = Path(cfg.dir)
        self._lock = threading.Lock()
        self._records: deque[_Record] = deque()
        self._size = 0
        self._problems: set[str] = set()
        self.counters = dict.fromkeys(("saved", "skipped_ok", "deleted_quota", "deleted_age", "deleted_space",
                                       "errors"), 0)
        self.last_problem: str | None = None
        self._scanned = False
        if cfg.enabled:
            self._scan()

    @property
    def size_bytes(self) -> int:
        """Bytes currently used by the archive (running counter; exported as linesight_archive_bytes)."""
        return self._size

    @property
    def healthy(self) -> bool:
        return self._scanned and not self._problems

    # ------------------------------------------------------------------ public

    def save(self, verdict: dict[str, Any], pictures: Pictures | None = None, payload: bytes | None = None) -> bool:
        """Archive one verdict (`payload`: its JSON when the caller has it already) with its frame and coloured
        heatmap, if the sampling policy keeps it. True if written."""
        if not self._cfg.enabled:
            return False
        is_ng = verdict.get("verdict") != "OK"
        if not is_ng and not keep_ok(int(verdict.get("seq", 0)), self._cfg.save_ok_fraction):
            self.counters["skipped_ok"] += 1
            return False
        with self._lock:
            try:
                if not self._scanned:
                    self._scan()  # the disk was missing at start-up; try again
                    if not self._scanned:
                        return False
                blobs = self._encode(verdict, pictures or Pictures(), payload)
                new_bytes = sum(len(b) for _, b in blobs)
                if new_bytes > self._cfg.max_bytes:
                    self._problem(f"record of {new_bytes} bytes exceeds archive.max_bytes={self._cfg.max_bytes}")
                    return False
                self._enforce(new_bytes)
                short = self._make_room(new_bytes)
                if short:
                    self._problem(short)
                    return False
                self._write(verdict, blobs)
            except (OSError, ValueError) as exc:  # ValueError: cv2 could not encode the frame
                self._problem(f"cannot archive seq={verdict.get('seq')}: {exc}")
                return False
            self.counters["saved"] += 1
            self._problems.clear()
            self.last_problem = None
        return True

    def image_of(self, seq: int) -> Path | None:
        """The archived frame of `seq` (newest record first); None when the archive did not keep it."""
        prefix = f"{int(seq):012d}_"
        with self._lock:
            for rec in reversed(self._records):
                if rec.stem.name.startswith(prefix):
                    return next((f for f in rec.files if ".image." in f.name), None)
        return None

    def prune(self) -> None:
        """Apply age retention now (call periodically: `save` only prunes when frames arrive)."""
        with self._lock:
            if self._scanned:
                self._enforce(0)  # _delete reports its own errors; nothing here raises OSError

    # ------------------------------------------------------------------ internals

    def _problem(self, message: str) -> None:
        self.counters["errors"] += 1
        self.last_problem = message
        key = re.sub(r"seq=\S+", "seq=*", message)
        if key not in self._problems:
            log.error("archive %s: %s", self._dir, message)
            self._problems.add(key)
        else:
            log.debug("archive %s: %s", self._dir, message)

    def _encode(self, verdict: dict[str, Any], pictures: Pictures, payload: bytes | None) -> list[tuple[str, bytes]]:
        blobs: list[tuple[str, bytes]] = []
        fmt = self._cfg.image_format
        image = pictures.encoded("image", fmt, self._cfg.jpeg_quality)
        if image is not None:
            blobs.append((f".image.{'jpg' if fmt == 'jpeg' else 'png'}", image))
        heatmap = pictures.encoded("heatmap", "png")
        if heatmap is not None:
            blobs.append((".heatmap.png", heatmap))
        blobs.append((".json", verdict_json(verdict) if payload is None else payload))  # last: the record is complete
        return blobs

    def _write(self, verdict: dict[str, Any], blobs: list[tuple[str, bytes]]) -> None:
        now = time.time()
        day = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d")
        name = record_name(verdict)
        day_dir = self._dir / day
        day_dir.mkdir(parents=True, exist_ok=True)
        if (day_dir / f"{name}.json").exists():  # seq restarts without a state_dir: never overwrite a record
            name = f"{name}-{time.time_ns() & 0xFFFFFFFF:08x}"
        rec = _Record(day_dir / name, now)
        try:
            for suffix, data in blobs:
                path = day_dir / (name + suffix)
                tmp = day_dir / f".{name}{suffix}.tmp"
                with open(tmp, "wb") as fh:
                    fh.write(data)
                os.replace(tmp, path)
                rec.files.append(path)
                rec.size += len(data)
        except OSError:
            for p in [*rec.files, *(day_dir / f".{name}{s}.tmp" for s, _ in blobs)]:
                p.unlink(missing_ok=True)
            raise
        self._records.append(rec)
        self._size += rec.size

    def _enforce(self, new_bytes: int) -> None:
        cutoff = time.time() - self._cfg.max_age_days * 86400.0
        while self._records and self._records[0].mtime < cutoff:
            self._delete(self._records.popleft(), "deleted_age")
        while self._records and self._size + new_bytes > self._cfg.max_bytes:
            self._delete(self._records.popleft(), "deleted_quota")

    def _make_room(self, new_bytes: int) -> str | None:
        """Delete oldest records until the new one leaves `min_free_bytes` free; the shortfall if it cannot."""
        floor = self._cfg.min_free_bytes
        free = shutil.disk_usage(self._dir).free
        while self._records and free - new_bytes < floor:
            rec = self._records.popleft()
            self._delete(rec, "deleted_space")
            free = shutil.disk_usage(self._dir).free
        if free - new_bytes < floor:
            return (f"disk nearly full: {free // 2**20} MiB free, archive.min_free_bytes keeps "
                    f"{floor // 2**20} MiB; frames are not archived until space is freed")
        return None

    def _delete(self, rec: _Record, reason: str) -> None:
        for p in rec.files:
            try:
                p.unlink()
            except FileNotFoundError:
                pass  # removed by hand: fine, it is gone either way
            except OSError as exc:  # forgotten here; an operator must clean it up
                self._problem(f"cannot delete {p} for retention ({exc.strerror}); it is no longer tracked")
        self._size -= rec.size
        self.counters[reason] += 1
        parent = rec.stem.parent
        try:
            parent.rmdir()  # only succeeds when the day directory became empty
        except OSError:
            pass

    def _scan(self) -> None:
        """Rebuild the record list and byte counter from disk (start-up only)."""
        try:
            self._dir.mkdir(parents=True, exist_ok=True)
            records: dict[Path, _Record] = {}
            for day_dir in self._dir.iterdir():
                if not day_dir.is_dir() or not _DATE_DIR.match(day_dir.name):
                    continue
                for f in day_dir.iterdir():
                    if f.name.startswith("."):  # a temp file from an interrupted write
                        f.unlink(missing_ok=True)
                        continue
                    st = f.stat()
                    stem = day_dir / f.name.split(".", 1)[0]
                    rec = records.setdefault(stem, _Record(stem, st.st_mtime))
                    rec.mtime = max(rec.mtime, st.st_mtime)
                    rec.size += st.st_size
                    rec.files.append(f)
        except OSError as exc:
            self._problem(f"cannot scan the archive ({exc}); frames are not archived until it is reachable")
            return
        self._records = deque(sorted(records.values(), key=lambda r: (r.mtime, str(r.stem))))
        self._size = sum(r.size for r in self._records)
        self._scanned = True
        log.info("archive %s: %d records, %d bytes", self._dir, len(self._records), self._size)
