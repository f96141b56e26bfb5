"""Operator feedback on a running station (issue 15): cmd/feedback is recorded with the verdict it answers — its
identity, model, score and archived frame — into the project (or the archive), and refused for a seq the station
did not give. Real Service, real pipeline and publish threads, real archive files; no network output."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from linesight.config.daemon import DaemonConfig
from linesight.daemon.notify import Notifier
from linesight.daemon.service import Service
from linesight.daemon.sinks.archive import Archive
from linesight.daemon.sources.base import Frame


def station(model: dict, archive: Path | None) -> DaemonConfig:
    outputs = {"mqtt": {"enabled": False}, "zmq": {"enabled": False}, "metrics": {"enabled": False}}
    if archive is not None:
        outputs["archive"] = {"enabled": True, "dir": str(archive), "save_ok_fraction": 1.0}
    return DaemonConfig.model_validate({
        "model": model, "source": {"type": "synthetic", "name": "s", "width": 96, "height": 80, "rate_hz": None},
        "pipeline": {"deadline_ms": 60000}, "outputs": outputs})


def run_frames(svc: Service, n: int) -> list[dict]:
    """n frames through the real pipeline, publish and archive threads; the verdicts as published."""
    published: list[dict] = []
    real = svc.feedback.recent.note
    svc.feedback.recent.note = lambda v: published.append(v) or real(v)
    svc.holder.load()
    if svc.cfg.outputs.archive.enabled:
        svc.archive = Archive(svc.cfg.outputs.archive)
        svc._start_thread(svc._archive_loop, "archive")
    svc._start_thread(svc._publish_loop, "publish")
    for i in range(n):
        img = np.full((80, 96), 120, np.uint8)
        svc.pipeline.process([svc.pipeline.admit(Frame(image=img, seq=i, host_ts_ns=time.time_ns(), source="s"))])
    deadline = time.monotonic() + 10
    while len(published) < n and time.monotonic() < deadline:
        time.sleep(0.02)
    while svc.archive and svc.archive.counters["saved"] < n and time.monotonic() < deadline:
        time.sleep(0.02)
    return published


def test_feedback_is_recorded_with_the_verdict_it_answers_and_its_archived_frame(small_bundle, tmp_path):
    svc = Service(station({"bundle": str(small_bundle)}, tmp_path / "archive"), notifier=Notifier(None))
    try:
        v = run_frames(svc, 3)[1]
        reply = svc._commands()("feedback", {"seq": v["seq"], "label": "crack", "by": "anna", "note": "hairline"})
        assert reply["recorded"] is True and reply["image"] is True
        (line,) = (tmp_path / "archive" / "feedback.jsonl").read_text().splitlines()
        rec = json.loads(line)
        assert rec["id"] == reply["id"] and (rec["seq"], rec["run"], rec["part_id"]) == (v["seq"], v["run"],
                                                                                          v["part_id"])
        assert (rec["label"], rec["by"], rec["note"], rec["source"]) == ("crack", "anna", "hairline", "mqtt")
        assert (rec["model_hash"], rec["verdict"], rec["score"]) == (v["model"]["hash"], v["verdict"], v["score"])
        assert rec["station"] == svc.station and Path(rec["image"]).is_file()
        assert Path(rec["image"]).name.startswith(f"{v['seq']:012d}_")
    finally:
        svc.shutdown()


def test_feedback_for_a_seq_the_station_did_not_give_or_another_part_is_refused(small_bundle, tmp_path):
    svc = Service(station({"bundle": str(small_bundle)}, tmp_path / "archive"), notifier=Notifier(None))
    try:
        with pytest.raises(ValueError) as exc:
            svc._commands()("feedback", {"seq": 5, "label": "OK"})
        assert str(exc.value) == "seq 5 is not a verdict this station gave lately (remembered: seqs none yet)"
        seqs = [v["seq"] for v in run_frames(svc, 2)]
        with pytest.raises(ValueError, match=f"remembered: seqs {seqs[0]}..{seqs[1]}"):
            svc._commands()("feedback", {"seq": seqs[1] + 100, "label": "OK"})
        with pytest.raises(ValueError, match=f"seq {seqs[0]} was part '.*', not 'P-9'"):
            svc._commands()("feedback", {"seq": seqs[0], "label": "OK", "part_id": "P-9"})
        assert not (tmp_path / "archive" / "feedback.jsonl").exists()
    finally:
        svc.shutdown()


def test_without_project_or_archive_feedback_is_only_logged_and_says_so(small_bundle):
    svc = Service(station({"bundle": str(small_bundle)}, None), notifier=Notifier(None))
    try:
        v = run_frames(svc, 1)[0]
        assert svc._commands()("feedback", {"seq": v["seq"], "label": "OK"}) == {
            "recorded": False, "why": "no project and no archive configured: feedback is only logged"}
    finally:
        svc.shutdown()


def test_the_recent_verdicts_are_bounded():
    from linesight.daemon.feedback import RecentVerdicts

    r = RecentVerdicts(size=3)
    for seq in range(1, 6):
        r.note({"seq": seq, "run": 1, "part_id": f"P{seq}", "verdict": "OK", "score": 1.0, "host_ts": "t"})
    assert r.get(2) is None and r.get(3).part_id == "P3" and r.span() == "3..5"


def test_a_project_station_feeds_back_into_the_project_and_learn_uses_the_archived_frame(tmp_path):
    """End to end: a station runs a project's active version, archives into its detect_results/, records an
    operator's "that was good" into its feedback/, and `project learn` makes the next version from that frame."""
    from helpers import need_data
    from linesight.config.project import TrainConfig
    from linesight.project.data import add_images
    from linesight.project.feedback import pending
    from linesight.project.learning import learn
    from linesight.project.training import fit_version
    from linesight.project.workspace import Project

    goods = sorted((need_data() / "train" / "good").iterdir())[:10]
    p = Project.init(tmp_path / "tiles")
    add_images(p, goods)
    fit_version(p, TrainConfig(fit={"weights": "none", "input_size": 96, "embedding_dim": 64}, test_fraction=0.3))
    p.activate(1)
    cfg = station({"project": str(p.root)}, None)
    cfg.outputs.archive.enabled, cfg.outputs.archive.dir, cfg.outputs.archive.save_ok_fraction = (
        True, p.results_dir, 1.0)  # what load_station sets for a project station
    svc = Service(cfg, notifier=Notifier(None))
    try:
        v = run_frames(svc, 2)[0]
        assert v["model"]["hash"] == p.version(1).bundle_hash
        reply = svc._commands()("feedback", {"seq": v["seq"], "label": "OK", "by": "anna"})
        assert reply["recorded"] is True and reply["image"] is True
    finally:
        svc.shutdown()
    (rec,) = pending(p)
    assert (rec.version, rec.station, rec.seq) == (1, svc.station, v["seq"])
    assert Path(rec.image).is_relative_to(p.results_dir)
    r = learn(p)
    assert (r.info.version, r.info.parent, r.info.learned_feedback) == (2, 1, [rec.id]) and pending(p) == []
