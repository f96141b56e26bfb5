"""VerdictLog on the real filesystem: byte-identical lines, size rotation that keeps every line and only its own
files, problems counted instead of raised, recovery when the disk is back, and the start-up check."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from linesight.config.outputs import VerdictLogConfig
from linesight.daemon.sinks.encoding import verdict_json
from linesight.daemon.sinks.verdict_log import (
    VerdictLog,
    check_verdict_log,
    check_verdict_log_dir,
    rotated,
)
from linesight.errors import ConfigError

MAX = 64 * 1024  # the smallest max_bytes the config allows


def verdict(seq: int) -> dict:
    return {"schema": "linesight.verdict/1", "seq": seq, "part_id": f"A-{seq:08d}",
            "verdict": "NG" if seq % 7 else "OK",
            "score": 3.25, "threshold": 2.5, "model": {"id": "m", "version": 1, "hash": "ab" * 8},
            "defects": [{"type": "scratch", "bbox": [1, 2, 30, 40], "area_px": 412}] * 3, "note": "x" * 200}


def seqs(path: Path) -> list[int]:
    return [json.loads(line)["seq"] for line in path.read_bytes().splitlines()]


def test_lines_are_the_mqtt_payload_and_rotation_keeps_every_recent_line(tmp_path) -> None:
    path = tmp_path / "log" / "verdicts.jsonl"
    vlog = VerdictLog(VerdictLogConfig(path=path, max_bytes=MAX, keep=3))
    n = 600  # ~1 KiB per line: about 9 files' worth, so rotation runs and the oldest are deleted
    assert all(vlog.write(verdict(i)) for i in range(n))
    vlog.close()
    assert path.read_bytes().splitlines()[-1] == verdict_json(verdict(n - 1))  # what the PLC got, byte for byte
    files = [rotated(path, 3), rotated(path, 2), rotated(path, 1), path]
    assert all(f.stat().st_size <= MAX for f in files) and not rotated(path, 4).exists()
    kept = [s for f in files for s in seqs(f)]
    assert kept == list(range(kept[0], n)) and kept[0] > 0  # contiguous up to the newest; the oldest rotated out
    assert sorted(p.name for p in path.parent.iterdir()) == sorted(f.name for f in files)
    assert vlog.counters == {"written": n, "errors": 0}


def test_rotation_never_overwrites_a_foreign_file(tmp_path, caplog) -> None:
    path = tmp_path / "verdicts.jsonl"
    foreign = rotated(path, 2)
    foreign.write_text("2026-11-29 syslog line that someone keeps here\n")
    cfg = VerdictLogConfig(path=path, max_bytes=MAX, keep=2)
    with pytest.raises(ConfigError, match=r"verdicts.jsonl.2 exists and is not a linesight verdict log"):
        check_verdict_log(cfg)
    vlog = VerdictLog(cfg)
    results = [vlog.write(verdict(i)) for i in range(300)]
    vlog.close()
    assert foreign.read_text() == "2026-11-29 syslog line that someone keeps here\n"
    assert results.count(False) >= 1 and vlog.counters["errors"] == results.count(False)
    assert seqs(path) == list(range(300))  # nothing lost: the file grows past max_bytes instead
    assert "is not a linesight verdict log" in vlog.last_problem
    assert sum("cannot rotate" in r.getMessage() for r in caplog.records if r.levelname == "ERROR") == 1


def test_a_foreign_file_at_the_path_itself_is_left_alone(tmp_path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("not a verdict\n")
    vlog = VerdictLog(VerdictLogConfig(path=path))
    assert not vlog.write(verdict(1))
    assert path.read_text() == "not a verdict\n" and vlog.counters == {"written": 0, "errors": 1}


def test_disk_problems_are_counted_not_raised_and_writing_resumes(tmp_path) -> None:
    blocker = tmp_path / "logs"
    blocker.write_text("a file where the log folder should be")
    cfg = VerdictLogConfig(path=blocker / "verdicts.jsonl")
    with pytest.raises(ConfigError, match="cannot write in"):
        check_verdict_log_dir(cfg)
    vlog = VerdictLog(cfg)
    assert not vlog.write(verdict(1)) and not vlog.write(verdict(2))
    assert vlog.counters == {"written": 0, "errors": 2} and vlog.last_problem
    blocker.unlink()  # the disk is back
    assert vlog.write(verdict(3)) and vlog.last_problem is None
    vlog.close()
    assert seqs(cfg.path) == [3]


def test_a_line_cut_short_spoils_only_itself(tmp_path) -> None:
    path = tmp_path / "verdicts.jsonl"
    path.write_bytes(verdict_json(verdict(1)) + b"\n" + verdict_json(verdict(2))[:40])  # crash mid-line
    vlog = VerdictLog(VerdictLogConfig(path=path))
    assert vlog.write(verdict(3))
    vlog.close()
    lines = path.read_bytes().splitlines()
    assert json.loads(lines[0])["seq"] == 1 and json.loads(lines[-1])["seq"] == 3 and len(lines) == 3
    first_cut = tmp_path / "first.jsonl"  # the crash hit the very first line: still its own file
    first_cut.write_bytes(verdict_json(verdict(1))[:40])
    vlog = VerdictLog(VerdictLogConfig(path=first_cut))
    assert vlog.write(verdict(2))
    vlog.close()
    assert json.loads(first_cut.read_bytes().splitlines()[1])["seq"] == 2


def test_start_up_check_refuses_a_foreign_file_and_tolerates_a_missing_disk(tmp_path) -> None:
    """`check-config` and `run` name the setting: a file rotation would overwrite stops the start; a folder the
    daemon cannot write in yet does not (the log alarms and retries, like the archive)."""
    from linesight.config.daemon import DaemonConfig
    from linesight.daemon.preflight import preflight

    def problems(path: Path) -> list:
        cfg = DaemonConfig.model_validate({
            "model": {"bundle": str(tmp_path / "model.zip")},
            "source": {"type": "synthetic", "name": "synth", "width": 64, "height": 64},
            "outputs": {"zmq": {"enabled": False}, "metrics": {"enabled": False}, "verdict_log": {"path": str(path)}},
        })
        return [p for p in preflight(cfg) if p.field == "outputs.verdict_log.path"]

    (tmp_path / "model.zip").write_bytes(b"stand-in")
    assert problems(tmp_path / "verdicts.jsonl") == []
    foreign = tmp_path / "syslog"
    foreign.write_text("Nov 29 kernel: something\n")
    [p] = problems(foreign)
    assert p.blocks_start and "is not a linesight verdict log" in p.message
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the log folder should be")
    [p] = problems(blocker / "verdicts.jsonl")
    assert not p.blocks_start and "verdicts are not logged until the folder is usable" in p.message
