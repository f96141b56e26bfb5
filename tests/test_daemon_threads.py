"""The daemon's real threads (acquire, processing, publish, model-reload, paho, /healthz HTTP) driven end to end
against a real mosquitto, one test per gate that must be able to say no: rollback, hot and file-watch reloads,
pause, health, the deadline after inference, analysis failure, the golden check, calibrated thresholds.

`Service.run()` runs on a thread of its own exactly as `linesight run` runs it (only the signal handlers are
left out), so a test can also reach the process from inside: wrap an engine to make it slow, or break analysis.
"""
from __future__ import annotations

import contextlib
import json
import shutil
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from linesight.config.daemon import DaemonConfig
from linesight.daemon.model import ModelHolder
from linesight.daemon.notify import Notifier
from linesight.daemon.service import Service
from linesight.export.bundle import load_bundle, new_revision, write_bundle
from linesight.export.engine import Engine

BASE = "linesight/s1/l1/cam1"
VERDICT, ALARM, STATUS = f"{BASE}/verdict", f"{BASE}/alarm", f"{BASE}/status"


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def bundles(small_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """a, b: the session's model under two identities (same scores, different content hash), so a swap shows
    only in the hash verdicts carry; ng: thresholds 0, every frame NG (analysis and fail-safe verdicts)."""
    models = tmp_path_factory.mktemp("threads") / "models"
    out = {}
    for name, version in (("a", 1), ("b", 2)):
        b = load_bundle(small_bundle)
        b.manifest.model.id, b.manifest.model.version = "threads-test", version
        out[name] = write_bundle(models / f"{name}.zip", b)
    ng = load_bundle(small_bundle)
    ng.manifest.thresholds.image, ng.manifest.thresholds.pixel = 0.0, 1e-6
    out["ng"] = write_bundle(models / "ng.zip", ng)
    return out


def model_hash(bundle: Path) -> str:
    return load_bundle(bundle).identity["hash"]


def station(bundle: Path, broker, *, source: dict | None = None, model: dict | None = None,
            metrics_port: int | None = None, analysis: dict | None = None, **pipeline) -> DaemonConfig:
    """A station config: synthetic camera at 10 Hz, MQTT on the test broker, no file watch unless asked."""
    return DaemonConfig.model_validate({
        "model": {"bundle": str(bundle), "watch": False, **(model or {})},
        "source": source or {"type": "synthetic", "name": "synth", "width": 128, "height": 96, "rate_hz": 10},
        "pipeline": {"deadline_ms": 3000, "stats_interval_s": 0.5, **pipeline},
        "analysis": analysis or {},
        "outputs": {
            "mqtt": {"enabled": True, "host": "127.0.0.1", "port": broker.port, "site": "s1", "line": "l1",
                     "station": "cam1", "reconnect_min_s": 1, "reconnect_max_s": 1, "keepalive_s": 5},
            "metrics": {"enabled": metrics_port is not None, "host": "127.0.0.1", "port": metrics_port or 9108},
            "zmq": {"enabled": False},  # the default ports may be taken by another suite on this machine
        },
    })


class Daemon:
    """`Service.run()` on its own thread: the processing loop there, acquire/publish/reload/paho on theirs."""

    def __init__(self, cfg: DaemonConfig) -> None:
        self.svc = Service(cfg, notifier=Notifier(None))
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="linesight-run", daemon=True)

    def _run(self) -> None:
        try:
            self.svc.run()
        except Exception as exc:  # noqa: BLE001 - handed to the test thread, re-raised by join()
            self.error = exc

    def join(self, timeout: float = 30.0) -> None:
        """Wait for run() to return (source ended, or stop()); it must end cleanly and in time."""
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the daemon did not stop in time"
        if self.error is not None:
            raise self.error


@contextlib.contextmanager
def running(cfg: DaemonConfig, *, until_source_ends: bool = False) -> Iterator[Daemon]:
    """Start the daemon; on exit stop it (or, with until_source_ends, let a `count` source finish) and check
    it shut down cleanly."""
    d = Daemon(cfg)
    d.thread.start()
    try:
        yield d
    except BaseException:
        d.svc.stop()
        d.thread.join(30)
        raise
    if not until_source_ends:
        d.svc.stop()
    d.join(60)


def body(m) -> dict:  # conftest.Received
    return json.loads(m.payload)


def is_verdict(m, model: str | None = None) -> bool:
    """A verdict decided by the model with this hash (any verdict when model is None)."""
    if m.topic != VERDICT:
        return False
    return model is None or (not body(m)["fail_safe"] and body(m)["model"]["hash"] == model)


def is_status(state: str) -> Callable[..., bool]:
    return lambda m: m.topic == STATUS and m.payload == state.encode()


def is_alarm(code: str) -> Callable[..., bool]:
    return lambda m: m.topic == ALARM and body(m)["code"] == code


def is_reply(command: str, req_id: str) -> Callable[..., bool]:
    return lambda m: m.topic == f"{BASE}/cmd/{command}/reply" and body(m)["id"] == req_id


def verdicts(probe) -> list[dict]:
    """Every verdict received so far, in arrival order (probe.all keeps what wait_for consumed)."""
    return [body(m) for m in list(probe.all) if m.topic == VERDICT]


def model_runs(vs: list[dict]) -> list[str]:
    """The hashes of decided verdicts with repeats collapsed: [a, b] is one clean switch, [a, b, a] a switch
    back; anything flapping (a, b, a, b) shows up as extra entries."""
    runs: list[str] = []
    for v in vs:
        if not v["fail_safe"] and (not runs or runs[-1] != v["model"]["hash"]):
            runs.append(v["model"]["hash"])
    return runs


def await_all(probe, timeout: float = 20.0, **wanted: Callable[..., bool]) -> dict:
    """Read the stream until each predicate matched one message, whatever order they arrive in
    (MqttProbe.wait_for consumes: waiting for them one after the other could skip one)."""
    got: dict = {}
    deadline = time.monotonic() + timeout
    while len(got) < len(wanted):
        m = probe.wait_for(lambda m: any(k not in got and p(m) for k, p in wanted.items()),
                           timeout=max(0.01, deadline - time.monotonic()))
        got[next(k for k, p in wanted.items() if k not in got and p(m))] = m
    return got


def reload(probe, request: dict, timeout: float = 30.0) -> tuple[dict, dict]:
    """cmd/reload -> (its reply, the model_changed/model_refused alarm carrying the reply's job id). The outcome
    can come before the reply (a refused rollback needs no load), so both are read in one loop."""
    probe.publish(f"{BASE}/cmd/reload", json.dumps(request))
    reply, outcomes = None, []
    deadline = time.monotonic() + timeout
    while True:
        m = probe.wait_for(lambda m: is_reply("reload", request["id"])(m) or is_alarm("model_changed")(m)
                           or is_alarm("model_refused")(m), timeout=max(0.01, deadline - time.monotonic()))
        if m.topic == ALARM:
            outcomes.append(body(m))
        else:
            reply = body(m)
            assert reply["ok"] is True, reply
        if reply is not None:
            mine = [a for a in outcomes if a["context"].get("job") == reply["result"]["job"]]
            if mine:
                return reply, mine[0]


def send(probe, command: str, req_id: str) -> None:
    probe.publish(f"{BASE}/cmd/{command}", json.dumps({"id": req_id}))


def healthz(port: int) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:  # 503 is an answer, not a failure
        return exc.code, json.loads(exc.read())


def healthz_until(port: int, status: str, timeout: float) -> tuple[int, dict]:
    """Poll /healthz until it reports `status` (HTTP has no event to wait on); timeout is an upper bound."""
    deadline = time.monotonic() + timeout
    while True:
        code, h = healthz(port)
        if h["status"] == status or time.monotonic() > deadline:
            return code, h
        time.sleep(0.1)


@pytest.fixture
def engine_hook(monkeypatch: pytest.MonkeyPatch) -> Callable[[Callable], None]:
    """Wrap predict_batch of every engine the daemon loads from now on, after its golden check passed.
    No real engine can be made slow or hung on demand: a wrapper is the only way to get one."""

    def install(make_wrapper: Callable) -> None:
        real_load = ModelHolder.load

        def load(self, path=None, **kw):
            engine = real_load(self, path, **kw)
            if engine is not None:  # None: the watcher found the active content rewritten, nothing loaded
                engine.predict_batch = make_wrapper(engine.predict_batch)
            return engine

        monkeypatch.setattr(ModelHolder, "load", load)

    return install


# ------------------------------------------------------------------------------------------------ model swaps
def test_rollback_goes_back_to_the_previous_model_and_is_refused_without_one(bundles, mosquitto, mqtt_probe):
    """A rollback is a real swap with its own job and outcome; with no previous model it must say no, loudly."""
    ha, hb = model_hash(bundles["a"]), model_hash(bundles["b"])
    assert ha != hb
    probe = mqtt_probe(mosquitto, [f"{BASE}/#"])
    with running(station(bundles["a"], mosquitto)):
        probe.wait_for(lambda m: is_verdict(m, ha), timeout=60)
        reply, outcome = reload(probe, {"id": "rb-none", "rollback": True})
        assert outcome["code"] == "model_refused" and "no previous model" in outcome["message"]
        assert reply["result"]["rollback"] is True
        probe.wait_for(lambda m: is_verdict(m, ha), timeout=10)  # the running model keeps deciding

        reply, outcome = reload(probe, {"id": "to-b", "bundle": str(bundles["b"])})
        assert outcome["code"] == "model_changed" and "v2" in outcome["message"]
        probe.wait_for(lambda m: is_verdict(m, hb), timeout=20)

        reply, outcome = reload(probe, {"id": "back", "rollback": True})
        assert outcome["code"] == "model_changed" and "v1" in outcome["message"]
        probe.wait_for(lambda m: is_verdict(m, ha), timeout=20)
    probe.wait_for(is_status("offline"), timeout=20)
    assert model_runs(verdicts(probe)) == [ha, hb, ha]


def test_hot_reload_switches_hash_once_and_loses_no_frame(bundles, mosquitto, mqtt_probe):
    """Frames keep flowing while B loads on the reload thread: each gets exactly one verdict, A's until the
    swap and B's from then on, never mixed. (Frames already inside the engine at the swap are A's and may be
    published just after the alarm, so the switch is checked on the verdict stream, not against the alarm.)"""
    ha, hb = model_hash(bundles["a"]), model_hash(bundles["b"])
    probe = mqtt_probe(mosquitto, [f"{BASE}/#"])
    with running(station(bundles["a"], mosquitto)) as d:
        probe.wait_for(lambda m: is_verdict(m, ha), timeout=60)
        reply, outcome = reload(probe, {"id": "hot", "bundle": str(bundles["b"])})
        assert outcome["code"] == "model_changed" and reply["result"]["bundle"] == str(bundles["b"])
        replied_at = next(i for i, m in enumerate(probe.all) if is_reply("reload", "hot")(m))
        before = [body(m) for m in probe.all[:replied_at] if m.topic == VERDICT]
        assert before and all(v["model"]["hash"] == ha for v in before), before
        for _ in range(3):  # after the alarm, B decides
            probe.wait_for(lambda m: is_verdict(m, hb), timeout=20)
    probe.wait_for(is_status("offline"), timeout=20)  # published after the last verdict
    vs = verdicts(probe)
    frames = d.svc.pipeline.frames_in
    seqs = sorted(v["camera"]["source_seq"] for v in vs)
    assert len(vs) == frames and seqs == list(range(seqs[0], seqs[0] + frames)), (len(vs), frames, seqs)
    assert not [v for v in vs if v["fail_safe"]], [v["reason"] for v in vs if v["fail_safe"]]
    assert model_runs(vs) == [ha, hb]


def test_replacing_the_bundle_on_disk_reloads_it_without_a_command(tmp_path, bundles, mosquitto, mqtt_probe):
    """model.watch: a new revision written over the configured path (atomically, as fit/calibrate/roi do) is
    picked up by the reload thread on its own."""
    live = tmp_path / "model.zip"
    shutil.copy(bundles["a"], live)
    ha = model_hash(live)
    probe = mqtt_probe(mosquitto, [f"{BASE}/#"])
    with running(station(live, mosquitto, model={"watch": True, "watch_interval_s": 0.2})):
        probe.wait_for(lambda m: is_verdict(m, ha), timeout=60)
        newer = load_bundle(live)
        new_revision(newer.manifest, "test: a newer revision")
        write_bundle(live, newer)
        hb = newer.identity["hash"]
        assert hb != ha
        changed = body(probe.wait_for(is_alarm("model_changed"), timeout=20))
        assert "job" not in changed["context"] and "v2" in changed["message"]  # no command asked for it
        probe.wait_for(lambda m: is_verdict(m, hb), timeout=20)
    assert not [m for m in probe.all if "/cmd/" in m.topic]
    assert model_runs(verdicts(probe)) == [ha, hb]


# ------------------------------------------------------------------------------------------------ pause, health
def test_pause_stops_acquisition_and_resume_restarts_it(bundles, mosquitto, mqtt_probe):
    """Paused: no frame is acquired or decided and the station says degraded; resumed: verdicts and online."""
    probe = mqtt_probe(mosquitto, [f"{BASE}/#"])
    # no periodic status re-announcement during the test: pause and resume must publish the change themselves
    with running(station(bundles["a"], mosquitto, stats_interval_s=60)) as d:
        probe.wait_for(is_status("online"), timeout=60)
        for _ in range(3):  # also consumes every start-up status: all are announced before acquisition starts
            probe.wait_for(is_verdict, timeout=20)
        send(probe, "pause", "p")
        got = await_all(probe, timeout=5, reply=is_reply("pause", "p"), degraded=is_status("degraded"))
        assert body(got["reply"])["result"] == {"paused": True}
        frames_at_pause = d.svc.pipeline.frames_in
        time.sleep(1.5)  # an observation window (15 frames at 10 Hz if acquisition went on): no event to await
        # at most the frame being read when the pause arrived gets through; every frame still gets its verdict
        assert d.svc.pipeline.frames_in - frames_at_pause <= 1
        assert len(verdicts(probe)) <= frames_at_pause + 1
        assert not [m for m in probe.all[probe.all.index(got["degraded"]):] if is_status("online")(m)]
        mark = len(verdicts(probe))
        send(probe, "resume", "r")
        await_all(probe, timeout=5, reply=is_reply("resume", "r"), online=is_status("online"))
        for _ in range(3):
            probe.wait_for(is_verdict, timeout=20)
        assert len(verdicts(probe)) >= mark + 3 and d.svc.pipeline.frames_in >= frames_at_pause + 3


def test_healthz_over_http_says_ok_degraded_and_unhealthy(tmp_path, bundles, mosquitto, mqtt_probe, free_tcp_port,
                                                         engine_hook):
    """/healthz is what the supervisor and the line PLC poll: degraded without a model and while paused (200),
    ok while deciding, 503 once the processing loop has not turned for 5 s."""
    stall, release = threading.Event(), threading.Event()

    def hangs(predict):  # blocks like a hung accelerator call until the test releases it
        def wrapped(images, **kw):
            if stall.is_set():
                release.wait(30)
            return predict(images, **kw)
        return wrapped

    engine_hook(hangs)
    port = free_tcp_port()
    live = tmp_path / "model.zip"  # not there yet: the daemon starts without a model
    ha = model_hash(bundles["a"])
    probe = mqtt_probe(mosquitto, [f"{BASE}/#"])
    with running(station(live, mosquitto, metrics_port=port)):
        probe.wait_for(lambda m: is_verdict(m) and body(m)["reason"] == "no_model", timeout=60)
        code, h = healthz(port)
        assert (code, h["status"], h["model"]) == (200, "degraded", None), h

        shutil.copy(bundles["a"], live)
        _, outcome = reload(probe, {"id": "load"})
        assert outcome["code"] == "model_changed"
        probe.wait_for(lambda m: is_verdict(m, ha), timeout=20)
        code, h = healthz(port)
        assert (code, h["status"], h["model"]["hash"]) == (200, "ok", ha), h

        send(probe, "pause", "p")
        probe.wait_for(is_reply("pause", "p"))
        code, h = healthz(port)
        assert (code, h["status"], h["paused"]) == (200, "degraded", True), h
        send(probe, "resume", "r")
        probe.wait_for(is_reply("resume", "r"))
        assert healthz(port)[1]["status"] == "ok"

        stall.set()
        t0 = time.monotonic()
        code, h = healthz_until(port, "unhealthy", timeout=20)
        assert (code, h["status"], h.get("reason")) == (503, "unhealthy", "processing loop stalled"), h
        assert time.monotonic() - t0 > 4.0  # 5 s without a turn of the loop, not earlier
        stall.clear()
        release.set()
        code, h = healthz_until(port, "ok", timeout=20)
        assert (code, h["status"]) == (200, "ok"), h


# ------------------------------------------------------------------------------------------------ per-frame gates
def test_deadline_is_checked_after_inference(bundles, mosquitto, mqtt_probe, engine_hook):
    """A frame that was on time when inference started but decided late gets the configured fail-safe verdict;
    the score it got still travels with it."""

    def slow(predict):  # an engine slower than the deadline (sleep wrapper)
        def wrapped(images, **kw):
            time.sleep(0.8)
            return predict(images, **kw)
        return wrapped

    engine_hook(slow)
    probe = mqtt_probe(mosquitto, [f"{BASE}/#"])
    # every score is >= the ng bundle's threshold 0, so a decided verdict would be NG: the fail-safe one is OK
    cfg = station(bundles["ng"], mosquitto, deadline_ms=400, fail_safe_verdict="OK", analysis={"enabled": False},
                  source={"type": "synthetic", "name": "synth", "width": 128, "height": 96, "rate_hz": 1,
                          "count": 2})
    with running(cfg, until_source_ends=True):
        pass
    probe.wait_for(is_status("offline"), timeout=20)
    vs = verdicts(probe)
    assert len(vs) == 2, vs
    for v in vs:
        assert (v["reason"], v["fail_safe"], v["verdict"]) == ("deadline_missed", True, "OK"), v
        assert "decided after the 400 ms deadline" in v["detail"]
        assert v["score"] >= 0.0 and v["threshold"] == 0.0 and v["latency_ms"]["inference"] >= 800
        assert v["model"]["hash"] == model_hash(bundles["ng"])


def test_analysis_failure_keeps_the_score_verdict_and_alarms(bundles, mosquitto, mqtt_probe, monkeypatch):
    """Defect analysis that raises must not cost the verdict: NG from the score, no analysis fields, an alarm."""
    from linesight.export import analysis

    calls = []

    def broken(*a, **kw):  # no real input makes analysis fail on demand
        calls.append(1)
        raise RuntimeError("injected analysis fault")

    monkeypatch.setattr(analysis, "analyze", broken)
    probe = mqtt_probe(mosquitto, [f"{BASE}/#"])
    cfg = station(bundles["ng"], mosquitto, source={"type": "synthetic", "name": "synth", "width": 128,
                                                    "height": 96, "rate_hz": 10, "count": 2})
    with running(cfg, until_source_ends=True):
        pass
    probe.wait_for(is_status("offline"), timeout=20)
    vs = verdicts(probe)
    assert len(vs) == 2 and len(calls) == 2
    for v in vs:
        assert (v["verdict"], v["fail_safe"], v["reason"]) == ("NG", False, "score_above_threshold"), v
        assert v["score"] >= v["threshold"] == 0.0
        assert not {"grade", "basis", "defects_total"} & set(v), v
    alarms = [body(m) for m in probe.all if is_alarm("analysis_error")(m)]
    assert len(alarms) == 1 and "defect analysis failed" in alarms[0]["message"]
    assert "injected analysis fault" in alarms[0]["message"]


# ------------------------------------------------------------------------------------------------ golden check
def consistent_but_wrong(src: Path, dst: Path, how: str) -> Path:
    """A bundle whose files all match their manifest hashes (so the sha256 gate passes) but that no longer
    scores as recorded: `bank` is a re-export with a different memory bank but the old golden scores, `score`
    a manifest whose first golden score was edited. Flipped bytes would be caught earlier, by the hashes."""
    b = load_bundle(src)
    if how == "bank":
        b.bank = (b.bank * np.float32(1.25)).astype(np.float32)
    else:
        b.manifest.golden[0].score *= 1.1
    return write_bundle(dst, b)


def test_check_golden_lists_every_mismatch(bundles, tmp_path):
    """check_golden is the load gate: [] for an intact bundle, one line per golden image that moved."""
    assert Engine(bundles["a"]).check_golden() == []
    n_golden = len(load_bundle(bundles["a"]).manifest.golden)
    assert n_golden >= 1
    bank = Engine(consistent_but_wrong(bundles["a"], tmp_path / "bank.zip", "bank")).check_golden()
    assert len(bank) == n_golden and all("manifest recorded" in p for p in bank), bank
    edited = consistent_but_wrong(bundles["a"], tmp_path / "score.zip", "score")
    first = load_bundle(edited).manifest.golden[0]
    problems = Engine(edited).check_golden()
    assert len(problems) == 1 and first.file in problems[0] and f"{first.score:.6g}" in problems[0], problems


def test_daemon_refuses_a_bundle_that_fails_its_golden_check(tmp_path, bundles, mosquitto, mqtt_probe):
    """On reload the golden images are re-scored; a mismatch refuses the bundle by job id and A keeps running."""
    ha = model_hash(bundles["a"])
    bad = consistent_but_wrong(bundles["a"], tmp_path / "drifted.zip", "bank")
    probe = mqtt_probe(mosquitto, [f"{BASE}/#"])
    cfg = station(bundles["a"], mosquitto, model={"reload_dirs": [str(tmp_path), str(bundles["a"].parent)]})
    with running(cfg):
        probe.wait_for(lambda m: is_verdict(m, ha), timeout=60)
        _, outcome = reload(probe, {"id": "drift", "bundle": str(bad)})
        assert outcome["code"] == "model_refused", outcome
        assert "golden images do not reproduce" in outcome["message"] and "drifted.zip" in outcome["message"]
        for _ in range(3):
            probe.wait_for(lambda m: is_verdict(m, ha), timeout=20)
    assert model_runs(verdicts(probe)) == [ha]


# ------------------------------------------------------------------------------------------------ calibration
@pytest.fixture(scope="module")
def test_scores(small_bundle: Path, small_dataset: Path) -> tuple[list[float], list[float]]:
    """Scores of the dataset's labeled test images (good, defective), taken here through the engine."""
    from linesight.export.images import read_image

    engine = Engine(small_bundle)
    good, bad = [], []
    for folder in sorted((small_dataset / "test").iterdir()):
        for p in sorted(folder.iterdir()):
            (good if folder.name == "good" else bad).append(engine.predict(read_image(p)).score)
    assert len(good) >= 2 and len(bad) >= 2
    return good, bad


def best_cut(good: list[float], bad: list[float], cost: Callable[[int, int, int], float]) -> float:
    """The documented rule for fewest_errors/f1_optimal, worked out by brute force: try every split of the
    sorted distinct scores (NG iff score >= threshold), keep the lowest one with the best cost, and return the
    midpoint of its gap (the lowest score when everything is NG)."""
    u = sorted(set(good) | set(bad))
    best_j, best = 0, None
    for j in range(len(u) + 1):
        cut = u[j] if j < len(u) else float("inf")
        tp, fp = sum(s >= cut for s in bad), sum(s >= cut for s in good)
        c = cost(tp, fp, len(bad) - tp)
        if best is None or c < best:
            best_j, best = j, c
    if best_j == 0:  # everything NG
        return u[0]
    if best_j == len(u):  # everything OK: just above the highest score
        return float(np.nextafter(np.float32(u[-1]), np.float32(np.inf)))
    return (u[best_j - 1] + u[best_j]) / 2


@pytest.mark.parametrize("policy", ["no_false_reject", "no_miss", "fewest_errors", "f1_optimal"])
def test_calibrate_stores_the_threshold_its_policy_selects(policy, small_bundle, small_dataset, tmp_path,
                                                          test_scores, capsys):
    """`linesight calibrate --policy P` must store P's threshold (a mix-up between policies must show)."""
    from linesight.cli import main

    good, bad = test_scores
    copy = write_bundle(tmp_path / "model.zip", load_bundle(small_bundle))  # calibrate rewrites in place
    assert main(["calibrate", str(copy), str(small_dataset), "--policy", policy, "--force", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    stored = load_bundle(copy).manifest.thresholds
    assert stored.policy == policy and stored.calibrated and printed["image"] == stored.image
    t = stored.image
    if policy == "no_false_reject":  # every good part passes, with the least margin a float32 can hold
        assert t > max(good) and np.float32(t) == t
        assert float(np.nextafter(np.float32(t), np.float32(-np.inf))) <= max(good)
        assert t != pytest.approx(min(bad), rel=1e-6)  # the policies differ here: a mix-up would fail
    elif policy == "no_miss":  # every defect caught: exactly the lowest defect score
        assert t == pytest.approx(min(bad), rel=1e-9) and all(s >= t for s in bad)
        assert t != pytest.approx(float(np.nextafter(np.float32(max(good)), np.float32(np.inf))), rel=1e-6)
    elif policy == "fewest_errors":
        assert t == pytest.approx(best_cut(good, bad, lambda tp, fp, fn: fp + fn), rel=1e-9)
    else:
        assert t == pytest.approx(best_cut(good, bad, lambda tp, fp, fn: -2 * tp / max(2 * tp + fp + fn, 1)),
                                  rel=1e-9)
    assert load_bundle(copy).manifest.model.version == load_bundle(small_bundle).manifest.model.version + 1
