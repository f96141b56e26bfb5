"""The shipped systemd unit, sysusers and tmpfiles snippets, checked by systemd's own tools."""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
from pathlib import Path

import pytest

SYSTEMD_DIR = Path(__file__).resolve().parents[1] / "systemd"
UNIT = SYSTEMD_DIR / "linesight@.service"
SYSUSERS = SYSTEMD_DIR / "linesight.sysusers.conf"
TMPFILES = SYSTEMD_DIR / "linesight.tmpfiles.conf"
TEST_UNIT_NAME = "linesight@test.service"
REAL_EXEC = "/opt/linesight/venv/bin/linesight"

ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    ANALYZE is None, reason="systemd-analyze not installed (apt-get install -y systemd)"
)


def _systemd_version() -> int:
    """Major version ('systemd 252 (252.38-1~deb12u1)' -> 252); 0 when unknown."""
    if ANALYZE is None:
        return 0
    out = subprocess.run([ANALYZE, "--version"], capture_output=True, text=True, timeout=30)
    words = out.stdout.split()
    return int(words[1]) if len(words) > 1 and words[1].isdigit() else 0


# `security --offline/--threshold` and `sysusers --dry-run` arrived in systemd 250.
needs_systemd_250 = pytest.mark.skipif(
    _systemd_version() < 250, reason="needs systemd >= 250 (Debian 12 / Ubuntu 24.04 have it)"
)


def _unit_settings() -> dict[str, dict[str, list[str]]]:
    """Parse the unit into {section: {key: [values...]}} (keys may repeat, e.g. Environment=)."""
    settings: dict[str, dict[str, list[str]]] = {}
    section = ""
    for raw in UNIT.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            settings.setdefault(section, {})
            continue
        assert not line.endswith("\\"), f"line continuations are not expected: {raw!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {raw!r}"
        settings[section].setdefault(key.strip(), []).append(value.strip())
    return settings


def _verifiable_copy(tmp_path: Path, text: str | None = None) -> Path:
    """The unit as `linesight@test.service` with ExecStart pointing at an existing binary.

    `systemd-analyze verify` fails when the ExecStart binary does not exist, and the venv
    path /opt/linesight/venv/bin/linesight only exists on an installed station. Only the
    binary path is swapped (to /bin/true); every other line is verified as shipped.
    """
    text = UNIT.read_text(encoding="utf-8") if text is None else text
    assert f"ExecStart={REAL_EXEC} " in text
    patched = text.replace(f"ExecStart={REAL_EXEC} ", "ExecStart=/bin/true ", 1)
    dest = tmp_path / TEST_UNIT_NAME
    dest.write_text(patched, encoding="utf-8")
    return dest


def _verify(unit: Path) -> tuple[int, list[str]]:
    """Run `systemd-analyze verify`; return rc and the output lines about this unit file.

    Without a running systemd (containers, CI) the tool also prints noise about the host
    (no PID 1, missing units elsewhere); only lines naming our unit are findings.
    """
    proc = subprocess.run(
        [ANALYZE, "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_PAGER": ""},
    )
    output = (proc.stdout + proc.stderr).splitlines()
    return proc.returncode, [line for line in output if unit.name in line]


@needs_analyze
def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    # The exit code is not asserted: host noise (no PID 1, distro units) can make it non-zero.
    _, findings = _verify(_verifiable_copy(tmp_path))
    assert findings == [], "\n".join(findings)


@needs_analyze
def test_verify_filter_catches_a_broken_unit(tmp_path: Path) -> None:
    # Guards the test above: a misspelt key in the same unit must produce a finding.
    broken = UNIT.read_text(encoding="utf-8").replace("WatchdogSec=", "WatchdogSecs=", 1)
    _, findings = _verify(_verifiable_copy(tmp_path, broken))
    assert any("Unknown key" in line and "WatchdogSecs" in line for line in findings), findings


@needs_analyze
@needs_systemd_250
def test_unit_hardening_exposure_stays_low(tmp_path: Path) -> None:
    # systemd's offline exposure score (0 = locked down, 10 = unprotected); the unit scores
    # about 2.0. --threshold=30 (i.e. 3.0) fails if hardening is removed without thought.
    proc = subprocess.run(
        [ANALYZE, "security", "--offline=true", "--threshold=30", "--no-pager",
         str(_verifiable_copy(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


def test_unit_key_settings() -> None:
    s = _unit_settings()
    unit, service, install = s["Unit"], s["Service"], s["Install"]

    assert service["Type"] == ["notify"]
    assert service["NotifyAccess"] == ["main"]
    assert service["ExecStart"] == [f"{REAL_EXEC} run --config /etc/linesight/%i.yaml"]
    assert service["WatchdogSec"] == ["30"]
    assert service["Restart"] == ["on-failure"]
    assert service["RestartSec"] == ["5"]
    assert service["TimeoutStopSec"] == ["20"]
    assert service["KillSignal"] == ["SIGTERM"]
    assert "StartLimitIntervalSec" in unit and "StartLimitBurst" in unit
    assert service["User"] == ["linesight"] and service["Group"] == ["linesight"]
    assert service["StateDirectory"] == ["linesight/%i"]
    assert "LogsDirectory" in service
    assert service["ConfigurationDirectory"] == ["linesight"]
    assert "PYTHONUNBUFFERED=1" in service["Environment"]
    assert service["EnvironmentFile"] == ["-/etc/linesight/%i.env"]
    assert install["WantedBy"] == ["multi-user.target"]

    hardening = {
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectControlGroups": "yes",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6 AF_NETLINK",
    }
    for key, value in hardening.items():
        assert service.get(key) == [value], key


def test_unit_keeps_camera_and_gpu_devices_reachable() -> None:
    # Each of these silently blocks /dev/nvidia* or USB cameras (ProtectClock implies a
    # DeviceAllow= entry, which switches DevicePolicy=auto to an allow-list).
    service = _unit_settings()["Service"]
    for key in ("PrivateDevices", "ProtectClock", "DeviceAllow", "DevicePolicy", "PrivateUsers"):
        assert key not in service, f"{key}= would cut off camera/GPU device access"
    # SupplementaryGroups must stay opt-in: a group missing on the host fails the start.
    assert "SupplementaryGroups" not in service


def test_unit_parses_as_ini() -> None:
    # Catches stray characters that systemd tolerates but tooling (and humans) trip over.
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment]
    parser.read_string(UNIT.read_text(encoding="utf-8"))
    assert parser.sections() == ["Unit", "Service", "Install"]


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="systemd-sysusers missing")
@needs_systemd_250
def test_sysusers_snippet_creates_the_service_account(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    for name in ("passwd", "group", "shadow", "gshadow"):
        (root / "etc" / name).touch()
    conf = tmp_path / "linesight.conf"
    shutil.copy(SYSUSERS, conf)
    # --dry-run parses and plans without writing, so it works as non-root too.
    proc = subprocess.run(
        ["systemd-sysusers", "--dry-run", f"--root={root}", str(conf)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "Creating user 'linesight'" in out
    assert "Creating group 'linesight'" in out


@pytest.mark.skipif(
    shutil.which("systemd-sysusers") is None or shutil.which("systemd-tmpfiles") is None,
    reason="systemd-sysusers/systemd-tmpfiles missing",
)
@pytest.mark.skipif(os.geteuid() != 0, reason="tmpfiles chown()s to root:linesight; needs root")
def test_tmpfiles_snippet_sets_config_permissions(tmp_path: Path) -> None:
    root = tmp_path / "root"
    etc = root / "etc"
    (etc / "linesight").mkdir(parents=True)
    for name in ("passwd", "group", "shadow", "gshadow"):
        (etc / name).touch()
    subprocess.run(
        ["systemd-sysusers", f"--root={root}", str(SYSUSERS.resolve())],
        check=True, capture_output=True, timeout=60,
    )
    gid = next(
        int(line.split(":")[2])
        for line in (etc / "group").read_text().splitlines()
        if line.startswith("linesight:")
    )
    (etc / "linesight" / "s1.yaml").write_text("name: s1\n")
    (etc / "linesight" / "s1.env").write_text("MQTT_PASSWORD=x\n")
    for f in (etc / "linesight").iterdir():
        f.chmod(0o666)

    proc = subprocess.run(
        ["systemd-tmpfiles", "--create", f"--root={root}", str(TMPFILES.resolve())],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr

    yaml_stat = (etc / "linesight" / "s1.yaml").stat()
    env_stat = (etc / "linesight" / "s1.env").stat()
    assert (yaml_stat.st_mode & 0o777, yaml_stat.st_uid, yaml_stat.st_gid) == (0o640, 0, gid)
    assert (env_stat.st_mode & 0o777, env_stat.st_uid, env_stat.st_gid) == (0o600, 0, 0)
    for parent in ("var/lib/linesight", "var/log/linesight", "var/cache/linesight"):
        assert (root / parent).is_dir(), parent


def test_unit_caps_memory() -> None:
    """A leak must end in a clean OOM kill and a restart, not a swapping line PC."""
    lines = [ln.strip() for ln in UNIT.read_text().splitlines()]
    assert "MemoryHigh=3G" in lines and "MemoryMax=4G" in lines


# --- scheduled learning (issue 15): linesight-learn@.service + .timer ----------------------------------------
LEARN = SYSTEMD_DIR / "linesight-learn@.service"
LEARN_TIMER = SYSTEMD_DIR / "linesight-learn@.timer"


def _learn_pair(tmp_path: Path, service_text: str | None = None) -> tuple[Path, Path]:
    """The learn service and timer as instance `tiles`, ExecStart swapped to an existing binary (see
    _verifiable_copy); the linesight command line itself is checked by the CLI test below."""
    text = LEARN.read_text(encoding="utf-8") if service_text is None else service_text
    assert f"ExecStart={REAL_EXEC} project learn " in text
    service = tmp_path / "linesight-learn@tiles.service"
    service.write_text(text.replace(f"ExecStart={REAL_EXEC} ", "ExecStart=/bin/true ", 1), encoding="utf-8")
    timer = tmp_path / "linesight-learn@tiles.timer"
    timer.write_text(LEARN_TIMER.read_text(encoding="utf-8"), encoding="utf-8")
    return service, timer


@needs_analyze
def test_learn_service_and_timer_pass_verify_and_a_misspelt_key_is_caught(tmp_path: Path) -> None:
    service, timer = _learn_pair(tmp_path)
    for unit in (service, timer):
        _, findings = _verify(unit)
        assert findings == [], "\n".join(findings)
    broken, _ = _learn_pair(tmp_path, LEARN.read_text(encoding="utf-8").replace("IOSchedulingClass=", "IOSchedClass="))
    _, findings = _verify(broken)
    assert any("Unknown key" in line and "IOSchedClass" in line for line in findings), findings


@needs_analyze
@needs_systemd_250
def test_learn_service_is_locked_down(tmp_path: Path) -> None:
    """It only reads a project and writes into it: no network, no devices; exposure well under the daemon's."""
    service, _ = _learn_pair(tmp_path)
    proc = subprocess.run([ANALYZE, "security", "--offline=true", "--threshold=20", "--no-pager", str(service)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


def test_learn_service_runs_a_command_the_cli_accepts() -> None:
    """The unit's command line parses with the real CLI parser (a renamed flag would fail every hour)."""
    from linesight.cli import build_parser

    line = next(v for v in LEARN.read_text(encoding="utf-8").splitlines() if v.startswith("ExecStart="))
    argv = line.removeprefix(f"ExecStart={REAL_EXEC} ").replace("%i", "tiles").split()
    a = build_parser().parse_args(argv)
    assert (a.project, a.if_pending, a.activate) == ("/srv/linesight/tiles", True, True)


# --- the web UI (issue 16): linesight-ui.service ------------------------------------------------------------
UI_UNIT = SYSTEMD_DIR / "linesight-ui.service"


def _ui_copy(tmp_path: Path, text: str | None = None) -> Path:
    text = UI_UNIT.read_text(encoding="utf-8") if text is None else text
    assert f"ExecStart={REAL_EXEC} ui " in text
    dest = tmp_path / "linesight-ui.service"
    dest.write_text(text.replace(f"ExecStart={REAL_EXEC} ", "ExecStart=/bin/true ", 1), encoding="utf-8")
    return dest


@needs_analyze
def test_ui_unit_passes_verify_and_a_misspelt_key_is_caught(tmp_path: Path) -> None:
    _, findings = _verify(_ui_copy(tmp_path))
    assert findings == [], "\n".join(findings)
    (tmp_path / "bad").mkdir()
    _, findings = _verify(_ui_copy(tmp_path / "bad", UI_UNIT.read_text(encoding="utf-8").replace("CPUWeight=",
                                                                                                 "CPUWieght=")))
    assert any("Unknown key" in line and "CPUWieght" in line for line in findings), findings


@needs_analyze
@needs_systemd_250
def test_ui_unit_is_locked_down(tmp_path: Path) -> None:
    proc = subprocess.run([ANALYZE, "security", "--offline=true", "--threshold=25", "--no-pager",
                           str(_ui_copy(tmp_path))], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


def test_ui_unit_runs_a_command_the_cli_accepts() -> None:
    from linesight.cli import build_parser

    line = next(v for v in UI_UNIT.read_text(encoding="utf-8").splitlines() if v.startswith("ExecStart="))
    a = build_parser().parse_args(line.removeprefix(f"ExecStart={REAL_EXEC} ").split())
    assert a.config == "/etc/linesight/ui.yaml"
