"""`check-config` and `run` make the same start-up checks, all at once, each naming file:line and field.

Real files, real sockets: ports are occupied by real listeners, endpoints by real ZeroMQ binds, secrets by
real environment variables and files."""
from __future__ import annotations

import copy
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml
import zmq
from conftest import free_port

from linesight.cli import main
from linesight.daemon.preflight import load_station, preflight

ROOT = os.geteuid() == 0 if hasattr(os, "geteuid") else False


def station(tmp: Path, **sections: dict) -> dict:
    """A config that passes every check on this machine; `sections` are merged into it (None deletes)."""
    bundle = tmp / "model.zip"
    bundle.write_bytes(b"stand-in: without --bundle check-config only needs it to exist")
    cfg = {
        "model": {"bundle": str(bundle)},
        "source": {"type": "synthetic", "name": "synth", "width": 64, "height": 64, "rate_hz": 20},
        "pipeline": {"deadline_ms": 3000},
        "outputs": {
            "mqtt": {"enabled": False},
            "zmq": {"enabled": True, "verdict_endpoint": f"tcp://127.0.0.1:{free_port()}",
                    "image_endpoint": f"tcp://127.0.0.1:{free_port()}"},
            "metrics": {"enabled": True, "host": "127.0.0.1", "port": free_port()},
            "archive": {"enabled": True, "dir": str(tmp / "archive")},
        },
    }
    _merge(cfg, sections)
    return cfg


def _merge(into: dict, extra: dict) -> None:
    for key, value in extra.items():
        if value is None:
            into.pop(key, None)
        elif isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = copy.deepcopy(value)


def write(tmp: Path, cfg: dict, name: str = "station.yaml") -> Path:
    path = tmp / name
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def line_of(path: Path, key: str, after: str | None = None) -> int:
    """1-based line of the first `key:` (below the first `after:` when given), read from the text itself."""
    lines = path.read_text().splitlines()
    start = 0
    if after is not None:
        start = next(i for i, text in enumerate(lines) if text.strip().startswith(f"{after}:")) + 1
    return next(i + 1 for i, text in enumerate(lines[start:], start) if text.strip().startswith(f"{key}:"))


def check(path: Path, capsys) -> tuple[int, list[str], list[str]]:
    """check-config in-process: (exit code, problems from the JSON, problem lines printed on stderr)."""
    rc = main(["check-config", str(path)])
    cap = capsys.readouterr()
    printed = [line for line in cap.err.splitlines() if line.startswith(str(path))]
    return rc, json.loads(cap.out)["problems"], printed


def assert_one(path: Path, capsys, field: str, line: int, *words: str) -> str:
    rc, problems, printed = check(path, capsys)
    assert rc == 2 and problems == printed, (problems, printed)
    hits = [p for p in problems if p.startswith(f"{path}:{line}: {field}: ")]
    assert len(hits) == 1, problems
    for word in words:
        assert word in hits[0], hits[0]
    return hits[0]


# ------------------------------------------------------------------------------------------- good config


def test_good_config_passes_check_config(tmp_path, capsys, monkeypatch, tls_material):
    monkeypatch.setenv("LS_PF_PASSWORD", "hunter2-never-shown")
    cfg = station(tmp_path, outputs={"mqtt": {
        "enabled": True, "username": "u", "password_env": "LS_PF_PASSWORD",
        "tls": {"ca_file": str(tls_material.ca_crt), "cert_file": str(tls_material.server_crt),
                "key_file": str(tls_material.server_key)}}})
    rc, problems, printed = check(write(tmp_path, cfg), capsys)
    assert (rc, problems, printed) == (0, [], [])
    assert not (tmp_path / "archive").exists(), "check-config must not create the archive folder"


def test_good_config_runs_and_takes_the_ports_the_check_released(tmp_path):
    """Start-up checks bind and release the metrics/ZeroMQ ports; the daemon then binds them itself."""
    cfg = station(tmp_path)
    path = write(tmp_path, cfg)
    port = cfg["outputs"]["metrics"]["port"]
    proc = subprocess.Popen([sys.executable, "-m", "linesight", "run", "--config", str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.communicate()[0][-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as r:
                    assert b"linesight_frames_total" in r.read()
                break
            except OSError:
                assert time.monotonic() < deadline, "the daemon never served /metrics"
                time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out[-3000:]
    assert "cannot start" not in out and "Traceback" not in out


# ------------------------------------------------------------------------------------------------- MQTT


def mqtt(**settings) -> dict:
    return {"outputs": {"mqtt": {"enabled": True, "host": "127.0.0.1", **settings}}}


def test_missing_ca_file(tmp_path, capsys):
    path = write(tmp_path, station(tmp_path, **mqtt(tls={"ca_file": str(tmp_path / "ca.crt")})))
    assert_one(path, capsys, "outputs.mqtt.tls.ca_file", line_of(path, "ca_file"), "not found", "ca.crt")


def test_ca_file_that_is_not_pem_and_mismatched_client_key(tmp_path, capsys, tls_material):
    junk = tmp_path / "ca.crt"
    junk.write_text("not a certificate\n")
    path = write(tmp_path, station(tmp_path, **mqtt(tls={"ca_file": str(junk)})))
    assert_one(path, capsys, "outputs.mqtt.tls.ca_file", line_of(path, "ca_file"), "cannot load CA certificates")
    path = write(tmp_path, station(tmp_path, **mqtt(tls={"cert_file": str(tls_material.ca_crt),
                                                         "key_file": str(tls_material.server_key)})))
    assert_one(path, capsys, "outputs.mqtt.tls.cert_file", line_of(path, "cert_file"),
               "cannot load the client certificate", "belong together")


def test_missing_cert_and_key_are_both_reported(tmp_path, capsys):
    path = write(tmp_path, station(tmp_path, **mqtt(tls={"cert_file": str(tmp_path / "c.pem"),
                                                         "key_file": str(tmp_path / "k.pem")})))
    assert_one(path, capsys, "outputs.mqtt.tls.cert_file", line_of(path, "cert_file"), "not found")
    assert_one(path, capsys, "outputs.mqtt.tls.key_file", line_of(path, "key_file"), "not found")


def test_unset_password_env(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("LS_PF_UNSET", raising=False)
    path = write(tmp_path, station(tmp_path, **mqtt(username="u", password_env="LS_PF_UNSET")))
    assert_one(path, capsys, "outputs.mqtt.password_env", line_of(path, "password_env"),
               "LS_PF_UNSET is not set", "EnvironmentFile")


def test_empty_missing_and_unreadable_password_file(tmp_path, capsys):
    empty = tmp_path / "password"
    empty.write_text("\n")
    path = write(tmp_path, station(tmp_path, **mqtt(username="u", password_file=str(empty))))
    assert_one(path, capsys, "outputs.mqtt.password_file", line_of(path, "password_file"), "is empty")
    path = write(tmp_path, station(tmp_path, **mqtt(username="u", password_file=str(tmp_path / "nope"))))
    assert_one(path, capsys, "outputs.mqtt.password_file", line_of(path, "password_file"), "cannot read")
    if not ROOT:  # root reads any file
        secret = tmp_path / "secret"
        secret.write_text("hunter2\n")
        secret.chmod(0)
        path = write(tmp_path, station(tmp_path, **mqtt(username="u", password_file=str(secret))))
        assert_one(path, capsys, "outputs.mqtt.password_file", line_of(path, "password_file"), "Permission")


def test_password_is_never_printed(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LS_PF_SECRET", "hunter2-env")
    secret = tmp_path / "secret"
    secret.write_text("hunter2-file\n")
    for settings in ({"password_env": "LS_PF_SECRET"}, {"password_file": str(secret)}):
        path = write(tmp_path, station(tmp_path, model={"bundle": str(tmp_path / "gone.zip")},
                                       **mqtt(username="u", **settings)))
        rc = main(["check-config", str(path)])
        cap = capsys.readouterr()
        assert rc == 2 and "gone.zip" in cap.err
        assert "hunter2" not in cap.out + cap.err


# ----------------------------------------------------------------------------------- ports and endpoints


def test_metrics_port_in_use(tmp_path, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = write(tmp_path, station(tmp_path, outputs={"metrics": {"port": port}}))
        assert_one(path, capsys, "outputs.metrics.port", line_of(path, "port", after="metrics"),
                   f"port {port} on 127.0.0.1 is in use (another linesight or exporter?)")


def test_metrics_host_not_on_this_machine(tmp_path, capsys):
    path = write(tmp_path, station(tmp_path, outputs={"metrics": {"host": "192.0.2.1"}}))  # TEST-NET-1
    assert_one(path, capsys, "outputs.metrics.port", line_of(path, "port", after="metrics"),
               "cannot listen on 192.0.2.1", "address of this machine")


def test_zmq_endpoint_in_use_and_invalid(tmp_path, capsys):
    ctx = zmq.Context()
    held = ctx.socket(zmq.PUB)
    try:
        held.bind("tcp://127.0.0.1:*")
        endpoint = held.getsockopt_string(zmq.LAST_ENDPOINT)
        path = write(tmp_path, station(tmp_path, outputs={"zmq": {"verdict_endpoint": endpoint,
                                                                   "image_endpoint": "tcp://127.0.0.1:port"}}))
        assert_one(path, capsys, "outputs.zmq.verdict_endpoint", line_of(path, "verdict_endpoint"),
                   f"cannot bind {endpoint}", "Address already in use")
        assert_one(path, capsys, "outputs.zmq.image_endpoint", line_of(path, "image_endpoint"),
                   "cannot bind tcp://127.0.0.1:port", "Invalid argument")
    finally:
        held.close(0)
        ctx.term()


def test_ipc_endpoint_of_a_running_daemon_is_in_use_and_not_stolen(tmp_path, capsys):
    """libzmq unlinks an ipc path before binding: checking must not take a running daemon's socket."""
    endpoint = f"ipc://{tmp_path}/verdicts"
    ctx = zmq.Context()
    pub, sub = ctx.socket(zmq.PUB), ctx.socket(zmq.SUB)
    try:
        pub.bind(endpoint)
        path = write(tmp_path, station(tmp_path, outputs={"zmq": {"verdict_endpoint": endpoint}}))
        assert_one(path, capsys, "outputs.zmq.verdict_endpoint", line_of(path, "verdict_endpoint"),
                   "in use by a running process")
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(endpoint)  # still reaches the original publisher
        deadline = time.monotonic() + 5
        while not sub.poll(50):
            assert time.monotonic() < deadline, "the running publisher lost its ipc endpoint"
            pub.send(b"still here")
        assert sub.recv() == b"still here"
    finally:
        pub.close(0)
        sub.close(0)
        ctx.term()


def test_metrics_and_zmq_on_the_same_port_clash(tmp_path, capsys):
    port = free_port()
    path = write(tmp_path, station(tmp_path, outputs={"metrics": {"port": port},
                                                      "zmq": {"verdict_endpoint": f"tcp://127.0.0.1:{port}"}}))
    assert_one(path, capsys, "outputs.zmq.verdict_endpoint", line_of(path, "verdict_endpoint"),
               "Address already in use")


# ------------------------------------------------------------------------------------ folders and files


def test_archive_dir_unusable(tmp_path, capsys):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    path = write(tmp_path, station(tmp_path, outputs={"archive": {"dir": str(blocker)}}))
    assert_one(path, capsys, "outputs.archive.dir", line_of(path, "dir"), "is not a folder")
    path = write(tmp_path, station(tmp_path, outputs={"archive": {"dir": str(blocker / "sub")}}))
    assert_one(path, capsys, "outputs.archive.dir", line_of(path, "dir"), "cannot create", "frames are not archived")
    if not ROOT:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        path = write(tmp_path, station(tmp_path, outputs={"archive": {"dir": str(locked)}}))
        assert_one(path, capsys, "outputs.archive.dir", line_of(path, "dir"), "cannot write")


def test_archive_check_leaves_an_existing_folder_as_it_was(tmp_path, capsys):
    archive = tmp_path / "archive"
    archive.mkdir()
    (archive / "keep.txt").write_text("x")
    rc, problems, _ = check(write(tmp_path, station(tmp_path)), capsys)
    assert rc == 0, problems
    assert sorted(p.name for p in archive.iterdir()) == ["keep.txt"]


def test_missing_and_broken_spec_and_knowledge(tmp_path, capsys):
    path = write(tmp_path, station(tmp_path, analysis={"spec": "nope_spec.yaml", "knowledge": "nope_kb.yaml"}))
    assert_one(path, capsys, "analysis.spec", line_of(path, "spec"), "nope_spec.yaml does not exist")
    assert_one(path, capsys, "analysis.knowledge", line_of(path, "knowledge"), "nope_kb.yaml does not exist")
    (tmp_path / "spec.yaml").write_text("types: [crack]\nzones:\n  - nmae: edge\n")
    path = write(tmp_path, station(tmp_path, analysis={"spec": "spec.yaml"}))
    rc, problems, _ = check(path, capsys)
    assert rc == 2 and problems  # one problem per line of the spec's own error, each with its file:line
    for problem in problems:
        assert problem.startswith(f"{path}:{line_of(path, 'spec')}: analysis.spec: inspection spec does not load: "
                                  f"{tmp_path / 'spec.yaml'}:3: zones[0]"), problem
    assert any("unknown field 'nmae' (did you mean 'name'?)" in p for p in problems)


def test_missing_and_empty_folder_source(tmp_path, capsys):
    path = write(tmp_path, station(tmp_path, source={"type": "folder", "path": str(tmp_path / "frames"),
                                                     "width": None, "height": None, "rate_hz": None}))
    assert_one(path, capsys, "source.path", line_of(path, "path"), "does not exist")
    (tmp_path / "frames").mkdir()
    assert_one(path, capsys, "source.path", line_of(path, "path"), "no files matching")
    cfg = yaml.safe_load(path.read_text())
    cfg["source"]["mode"] = "watch"  # watching an empty folder is fine: files arrive later
    rc, problems, _ = check(write(tmp_path, cfg), capsys)
    assert rc == 0, problems


def test_missing_video_file(tmp_path, capsys):
    path = write(tmp_path, station(tmp_path, source={"type": "video", "uri": str(tmp_path / "clip.avi"),
                                                     "width": None, "height": None, "rate_hz": None}))
    assert_one(path, capsys, "source.uri", line_of(path, "uri"), "file does not exist")


def test_missing_genicam_producer(tmp_path, capsys):
    path = write(tmp_path, station(tmp_path, source={"type": "genicam", "cti": str(tmp_path / "vendor.cti"),
                                                     "width": None, "height": None, "rate_hz": None}))
    assert_one(path, capsys, "source.cti", line_of(path, "cti"), "vendor.cti does not exist")


def test_missing_bundle_and_reload_dir(tmp_path, capsys):
    path = write(tmp_path, station(tmp_path, model={"bundle": str(tmp_path / "gone.zip"),
                                                    "reload_dirs": [str(tmp_path), str(tmp_path / "nodir")]}))
    assert_one(path, capsys, "model.bundle", line_of(path, "bundle"), "gone.zip does not exist", "no_model")
    assert_one(path, capsys, "model.reload_dirs[1]", line_of(path, "bundle") + 3, "nodir does not exist")


# ------------------------------------------------------------------------------- all at once, and `run`


def many_problems(tmp_path: Path, port: int, monkeypatch) -> Path:
    monkeypatch.delenv("LS_PF_UNSET", raising=False)
    cfg = station(tmp_path, source={"type": "folder", "path": str(tmp_path / "frames"), "width": None,
                                    "height": None, "rate_hz": None},
                  analysis={"spec": "missing_spec.yaml"},
                  outputs={"mqtt": {"enabled": True, "username": "u", "password_env": "LS_PF_UNSET",
                                    "tls": {"ca_file": str(tmp_path / "ca.crt")}},
                           "metrics": {"port": port}})
    return write(tmp_path, cfg, "bad.yaml")


EXPECTED = {"source.path", "analysis.spec", "outputs.mqtt.tls.ca_file", "outputs.mqtt.password_env",
            "outputs.metrics.port"}


def test_several_problems_are_reported_at_once_in_file_order(tmp_path, capsys, monkeypatch):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        path = many_problems(tmp_path, taken.getsockname()[1], monkeypatch)
        rc, problems, printed = check(path, capsys)
    assert rc == 2 and problems == printed
    assert [p.split(": ")[1] for p in problems] == sorted(EXPECTED, key=lambda f: line_of(path, f.split(".")[-1]))
    lines = [int(p.split(": ")[0].rsplit(":", 1)[1]) for p in problems]
    assert lines == sorted(lines) and len(set(lines)) == len(EXPECTED)


def test_run_refuses_the_same_config_before_building_anything(tmp_path, capsys, monkeypatch):
    """In-process: the Service (which binds ports, opens the camera) is never constructed."""
    from linesight.daemon import service

    def never(*_a, **_k):
        raise AssertionError("Service built although start-up checks failed")

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        path = many_problems(tmp_path, taken.getsockname()[1], monkeypatch)
        _, problems, _ = check(path, capsys)
        monkeypatch.setattr(service, "Service", never)
        assert main(["run", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"linesight run: error: {path}: cannot start (5 problems):" in err
    assert [line for line in err.splitlines() if line.startswith(f"{path}:")] == problems
    assert not (tmp_path / "archive").exists()


def test_run_cli_exits_2_with_one_line_per_problem(tmp_path, monkeypatch):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        path = many_problems(tmp_path, taken.getsockname()[1], monkeypatch)
        cfg, doc = load_station(path)
        expected = [str(p) for p in preflight(cfg, doc)]
        r = subprocess.run([sys.executable, "-m", "linesight", "run", "--config", str(path)],
                           check=False, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    assert [line for line in r.stderr.splitlines() if line.startswith(f"{path}:")] == expected
    assert len(expected) == len(EXPECTED)
    assert not (tmp_path / "archive").exists()
