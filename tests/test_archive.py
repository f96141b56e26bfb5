"""Archive on a real filesystem (pytest tmp dirs): quota, age retention, sidecars, sampling, disk errors."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from linesight.config.outputs import ArchiveConfig
from linesight.daemon.sinks.archive import Archive, keep_ok, sanitise_part_id
from linesight.daemon.sinks.encoding import Pictures

MiB = 1024 * 1024


def verdict(seq: int, v: str = "NG", part_id: str | None = None) -> dict:
    return {"schema": "linesight.verdict/1", "seq": seq, "part_id": part_id or f"A-{seq:06d}", "verdict": v,
            "reason": "score_above_threshold" if v == "NG" else "score_below_threshold", "score": 3.41,
            "threshold": 2.8, "defects": [], "model": {"id": "mt-fast", "version": 3}, "deadline_ms": 200}


def disk_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def cfg(tmp_path: Path, **kw) -> ArchiveConfig:  # noqa: ANN003
    return ArchiveConfig(**{"enabled": True, "dir": tmp_path / "archive", **kw})


def test_sidecar_image_heatmap_round_trip(tmp_path: Path) -> None:
    arch = Archive(cfg(tmp_path))
    image = np.random.default_rng(1).integers(0, 255, (64, 96), dtype=np.uint8)
    heatmap = np.linspace(0, 6, 48 * 32, dtype=np.float32).reshape(32, 48)
    v = verdict(18231, part_id="../../etc/passwd A/B")
    assert arch.save(v, Pictures(image, heatmap, v["threshold"]))
    files = sorted(p for p in (tmp_path / "archive").rglob("*") if p.is_file())
    assert len(files) == 3 and all(p.parent.parent == tmp_path / "archive" for p in files)  # no traversal
    sidecar = next(p for p in files if p.suffix == ".json")
    assert sidecar.name == "000000018231_etc-passwd-A-B_NG.json"
    assert json.loads(sidecar.read_text()) == v
    img = next(p for p in files if p.name.endswith(".image.png"))
    np.testing.assert_array_equal(cv2.imread(str(img), cv2.IMREAD_UNCHANGED), image)
    hm = cv2.imread(str(next(p for p in files if p.name.endswith(".heatmap.png"))))
    assert hm.shape == (32, 48, 3)
    assert arch.size_bytes == disk_bytes(tmp_path / "archive")
    # a restarted daemon starts seq again: the old record must survive, not be overwritten
    assert arch.save(v, Pictures(image))
    assert len(list((tmp_path / "archive").rglob("*.json"))) == 2
    # fail-safe verdict without any frame: sidecar only
    assert arch.save({**verdict(5), "reason": "frame_dropped"})
    assert arch.size_bytes == disk_bytes(tmp_path / "archive")


def test_quota_respected_under_many_writes_oldest_first(tmp_path: Path) -> None:
    c = cfg(tmp_path, max_bytes=1 * MiB)
    arch = Archive(c)
    rng = np.random.default_rng(0)
    noise = [rng.integers(0, 255, (96, 128), dtype=np.uint8) for _ in range(4)]  # ~12 KiB PNG each
    for seq in range(300):
        assert arch.save(verdict(seq), Pictures(noise[seq % 4]))
        assert arch.size_bytes <= c.max_bytes
    on_disk = disk_bytes(tmp_path / "archive")
    assert arch.size_bytes == on_disk and on_disk > 0.8 * c.max_bytes
    kept = sorted(int(p.name[:12]) for p in (tmp_path / "archive").rglob("*.json"))
    assert kept == list(range(300 - len(kept), 300))  # a contiguous tail: oldest deleted first
    assert arch.counters["deleted_quota"] == 300 - len(kept)
    # a restart rescans once and continues with the same accounting
    again = Archive(c)
    assert again.size_bytes == on_disk
    assert again.save(verdict(300), Pictures(noise[0])) and again.size_bytes <= c.max_bytes


def test_age_retention(tmp_path: Path) -> None:
    arch = Archive(cfg(tmp_path, max_age_days=30))
    for seq in range(5):
        assert arch.save(verdict(seq), Pictures(np.zeros((16, 16), np.uint8)))
    old = time.time() - 40 * 86400
    for p in (tmp_path / "archive").rglob("*"):
        if p.is_file() and int(p.name[:12]) < 3:
            os.utime(p, (old, old))
    arch = Archive(cfg(tmp_path, max_age_days=30))  # restart: mtimes come from the disk scan
    assert arch.save(verdict(10))
    kept = sorted(int(p.name[:12]) for p in (tmp_path / "archive").rglob("*.json"))
    assert kept == [3, 4, 10] and arch.counters["deleted_age"] == 3
    assert arch.size_bytes == disk_bytes(tmp_path / "archive")

    short = Archive(cfg(tmp_path / "short", max_age_days=1.2e-5))  # ~1 s, within one run
    assert short.save(verdict(1))
    time.sleep(1.2)
    short.prune()
    assert short.size_bytes == 0 and not list((tmp_path / "short").rglob("*.json"))
    assert not [d for d in (tmp_path / "short" / "archive").iterdir()]  # empty day dir removed


def test_ok_sampling_is_deterministic_by_seq(tmp_path: Path) -> None:
    picks = [s for s in range(20_000) if keep_ok(s, 0.01)]
    assert 150 <= len(picks) <= 250
    assert picks == [s for s in range(20_000) if keep_ok(s, 0.01)]
    assert not any(keep_ok(s, 0.0) for s in range(1000)) and all(keep_ok(s, 1.0) for s in range(1000))
    # parts from the same fixture nest (every k-th seq) must not be systematically favoured or ignored
    for k in (2, 3, 4, 8, 12, 16, 89, 144):
        assert 150 <= len([s for s in range(0, 20_000 * k, k) if keep_ok(s, 0.01)]) <= 250, k
    arch = Archive(cfg(tmp_path, save_ok_fraction=0.01))
    saved = [s for s in range(2000) if arch.save(verdict(s, "OK"))]
    assert saved == [s for s in range(2000) if keep_ok(s, 0.01)]
    assert arch.save(verdict(2001, "NG"))  # NG: always
    assert arch.counters["skipped_ok"] == 2000 - len(saved)
    assert sanitise_part_id("") == "noid" and sanitise_part_id("A-1_ok") == "A-1_ok"
    assert not Archive(ArchiveConfig(enabled=False, dir=tmp_path / "off")).save(verdict(1))
    assert not (tmp_path / "off").exists()


def _rerun_unprivileged(test_name: str, tmp_path: Path) -> None:
    """Root ignores directory permissions, so re-run the test as uid 1000 in a user namespace."""
    probe = subprocess.run(["unshare", "--user", "--map-user=1000", "true"], capture_output=True)
    if shutil.which("unshare") is None or probe.returncode != 0:
        pytest.skip("running as root and user namespaces are unavailable: permissions cannot be tested")
    res = subprocess.run(
        ["unshare", "--user", "--map-user=1000", sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         f"--basetemp={tmp_path / 'unpriv'}", f"{Path(__file__).resolve()}::{test_name}"],
        capture_output=True, text=True, timeout=60,
    )
    assert res.returncode == 0 and " passed" in res.stdout, res.stdout + res.stderr


def test_read_only_dir_does_not_raise(tmp_path: Path, caplog) -> None:
    if os.geteuid() == 0:
        _rerun_unprivileged("test_read_only_dir_does_not_raise", tmp_path)
        return
    arch = Archive(cfg(tmp_path))
    root = tmp_path / "archive"
    root.chmod(0o555)
    try:
        with caplog.at_level(logging.ERROR, logger="linesight.daemon.sinks.archive"):
            assert not arch.save(verdict(1), Pictures(np.zeros((8, 8), np.uint8)))
            assert not arch.save(verdict(2), Pictures(np.zeros((8, 8), np.uint8)))
    finally:
        root.chmod(0o755)
    assert arch.counters["errors"] == 2
    assert len([r for r in caplog.records if "Permission denied" in r.getMessage()]) == 1  # logged once


def test_disk_errors_do_not_raise_and_recover(tmp_path: Path, caplog) -> None:
    # 1) archive root unusable at start-up (its parent is a regular file): no exception, not healthy
    blocker = tmp_path / "mnt"
    blocker.write_text("not a directory")
    arch = Archive(ArchiveConfig(enabled=True, dir=blocker / "archive"))
    assert not arch.healthy
    with caplog.at_level(logging.ERROR, logger="linesight.daemon.sinks.archive"):
        assert not arch.save(verdict(1), Pictures(np.zeros((8, 8), np.uint8)))
    assert arch.counters["errors"] >= 1 and "cannot scan the archive" in caplog.text
    # ... and it recovers once the disk is back (e.g. the USB drive is re-plugged)
    blocker.unlink()
    assert arch.save(verdict(2), Pictures(np.zeros((8, 8), np.uint8))) and arch.healthy

    # 2) today's directory path blocked by a file: the write fails cleanly, nothing half-written stays
    arch2 = Archive(cfg(tmp_path / "two"))
    today = time.strftime("%Y-%m-%d", time.gmtime())
    (tmp_path / "two" / "archive" / today).write_text("in the way")
    assert not arch2.save(verdict(3), Pictures(np.zeros((8, 8), np.uint8)))
    assert arch2.size_bytes == 0 and arch2.counters["errors"] == 1

    # 3) a frame OpenCV cannot encode is an error count, not an exception
    arch3 = Archive(cfg(tmp_path / "three"))
    assert not arch3.save(verdict(4), Pictures(np.zeros((8, 8), np.float64)))
    assert arch3.counters["errors"] == 1

    # 4) a single record bigger than the whole quota is refused, nothing is deleted for it
    arch4 = Archive(cfg(tmp_path / "four", max_bytes=MiB))
    assert arch4.save(verdict(5))
    huge = np.random.default_rng(0).integers(0, 255, (1200, 1200), dtype=np.uint8)
    assert not arch4.save(verdict(6), Pictures(huge))
    assert arch4.counters["deleted_quota"] == 0 and len(list((tmp_path / "four").rglob("*.json"))) == 1


def test_free_space_floor_deletes_oldest_then_refuses(tmp_path: Path) -> None:
    """A floor above what the disk has (real statvfs, no mock): our own oldest records go first, then frames
    are not archived and the reason names the floor."""
    arch = Archive(cfg(tmp_path, min_free_bytes=0))
    for i in range(3):
        assert arch.save(verdict(i), Pictures(np.zeros((8, 8), np.uint8)))
    (tmp_path / "archive" / "user-notes.txt").write_text("not ours")  # outside the date folders: never touched
    free = shutil.disk_usage(tmp_path).free
    arch._cfg = cfg(tmp_path, min_free_bytes=free + 10 * 2**30)  # noqa: SLF001 - the operator raised the floor
    assert not arch.save(verdict(9), Pictures(np.zeros((8, 8), np.uint8)))
    assert arch.counters["deleted_space"] == 3 and arch.size_bytes == 0 and arch.counters["errors"] == 1
    assert "disk nearly full" in arch.last_problem and "min_free_bytes" in arch.last_problem and not arch.healthy
    assert (tmp_path / "archive" / "user-notes.txt").exists()
    arch._cfg = cfg(tmp_path, min_free_bytes=0)  # noqa: SLF001 - space freed: archiving resumes, alarm clears
    assert arch.save(verdict(10), Pictures(np.zeros((8, 8), np.uint8))) and arch.healthy and arch.last_problem is None
