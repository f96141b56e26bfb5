"""Part identity: every verdict belongs to the frame it names, under overload and across restarts."""
from __future__ import annotations

import json
import threading

import pytest

from linesight.config.daemon import DaemonConfig
from linesight.daemon.identity import BLOCK, SeqStore, StateError
from linesight.daemon.service import Service


def station_cfg(bundle, state_dir, count: int, **pipeline) -> DaemonConfig:
    return DaemonConfig.model_validate({
        "model": {"bundle": str(bundle), "watch": False},
        "source": {"type": "synthetic", "name": "cam", "width": 64, "height": 64, "rate_hz": None, "count": count},
        "pipeline": {"deadline_ms": 60000, "queue_size": 1, "max_batch": 1, "state_dir": str(state_dir),
                     "part_id": {"mode": "counter", "prefix": "P"}, **pipeline},
        # no fixed ports: suites run side by side
        "outputs": {"zmq": {"enabled": False}, "metrics": {"enabled": False}},
    })


def run_station(cfg: DaemonConfig) -> list[dict]:
    """The real daemon threads (acquire, processing, publish) until the source ends; verdicts as published."""
    svc = Service(cfg)
    got: list[dict] = []
    lock = threading.Lock()

    def keep(v):
        with lock:
            got.append(v)
    svc.pipeline.on_verdict = keep
    svc.run()
    return got


def test_overload_keeps_every_verdict_on_its_own_frame_across_a_restart(small_bundle, tmp_path):
    """Frames arrive as fast as the source can make them (far over capacity, queue of 1): dropped frames get
    their fail-safe NG ahead of queued ones, yet each verdict's seq/part id is the one its frame was given."""
    runs = [run_station(station_cfg(small_bundle, tmp_path / "state", 300)) for _ in range(2)]
    for got in runs:
        assert len(got) == 300
        dropped = sum(v["reason"] == "frame_dropped" for v in got)
        assert dropped > 30, f"only {dropped} frames dropped: not an overload"
        order = [v["camera"]["source_seq"] for v in got]
        assert order != sorted(order), "verdicts were emitted in frame order: the test proves nothing"
        first = min(v["seq"] for v in got)
        for v in got:  # source_seq counts frames as the camera delivered them (from 0)
            assert v["seq"] - first == v["camera"]["source_seq"], v
            assert v["part_id"] == f"P{v['seq']:08d}"
    a, b = ([v["seq"] for v in got] for got in runs)
    assert sorted(a) == list(range(1, 301)) and sorted(b) == list(range(301, 601))  # no gap, no duplicate
    assert {v["run"] for v in runs[0]} == {1} and {v["run"] for v in runs[1]} == {2}


def test_external_part_ids_are_taken_when_the_frame_arrives(small_bundle, tmp_path):
    cfg = station_cfg(small_bundle, tmp_path, 120, part_id={"mode": "external"})
    svc = Service(cfg)
    svc.pipeline.part_ids.extend(f"X{i}" for i in range(120))  # announced by the PLC ahead of the parts
    got: list[dict] = []
    svc.pipeline.on_verdict = got.append
    svc.run()
    assert sum(v["reason"] == "frame_dropped" for v in got) > 10
    assert all(v["part_id"] == f"X{v['camera']['source_seq']}" for v in got)


def test_seq_store_crash_leaves_a_gap_never_a_duplicate(tmp_path):
    s = SeqStore(tmp_path, "a/b/c")
    seqs = [s.next() for _ in range(BLOCK + 5)]  # crosses one reservation
    s._fh.close()  # a crash: no close(), only the lock goes with the process
    s2 = SeqStore(tmp_path, "a/b/c")
    assert s2.run == 2 and s2.next() > max(seqs)
    s2.close()
    s3 = SeqStore(tmp_path, "a/b/c")
    assert s3.next() == s2._next  # clean stop: continues exactly
    s3.close()


def test_two_daemons_for_one_station_are_refused(tmp_path):
    s = SeqStore(tmp_path, "a/b/c")
    with pytest.raises(StateError, match="another linesight daemon is running for station a/b/c"):
        SeqStore(tmp_path, "a/b/c")
    SeqStore(tmp_path, "a/b/other").close()  # another station in the same folder is fine
    s.close()


@pytest.mark.parametrize("text", ["{", json.dumps({"schema": "linesight.state/1", "run": "7", "next_seq": 1}),
                                  json.dumps([1, 2])])
def test_a_corrupt_state_file_is_one_clear_error(tmp_path, text):
    (tmp_path / "state-a_b_c.json").write_text(text)
    with pytest.raises(StateError, match="state-a_b_c.json.*fix or remove it"):
        SeqStore(tmp_path, "a/b/c")


def test_without_a_state_dir_run_is_the_start_time(tmp_path):
    import time

    s = SeqStore(None, "a/b/c")
    assert abs(s.run - time.time()) < 5 and s.next() == 1
    s.close()
    assert list(tmp_path.iterdir()) == []


def test_check_config_names_a_station_whose_daemon_is_running(tmp_path, small_bundle, capsys):
    """check-config makes the start-up check of the state folder: a running daemon's lock is reported."""
    import yaml

    from linesight.cli import main

    cfg = tmp_path / "station.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"bundle": str(small_bundle)},
                                   "source": {"type": "synthetic", "name": "cam"},
                                   "pipeline": {"state_dir": str(tmp_path / "state")},
                                   "outputs": {"zmq": {"enabled": False}, "metrics": {"enabled": False}}}))
    assert main(["check-config", str(cfg)]) == 0
    running = SeqStore(tmp_path / "state", "site1/line1/station1")
    try:
        assert main(["check-config", str(cfg)]) == 2
    finally:
        running.close()
    err = capsys.readouterr().err
    assert "station.yaml:" in err and "pipeline.state_dir" in err and "another linesight daemon is running" in err
