"""The CI skip gate (tests/skip_gate.py): real pytest runs on small test files, with and without --strict-skips."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from skip_gate import ALLOWED_SKIPS

TESTS = Path(__file__).resolve().parent

CASES = '''
import pytest

def test_passes():
    pass

def test_needs_a_tool():
    pytest.skip("frobnicator not installed (apt-get install -y frobnicator)")

@pytest.mark.skipif(True, reason="ALLOWED")
def test_root_only():
    pass

@pytest.mark.xfail(reason="known bug", run=False)
def test_expected_failure():
    pass
'''


def run(tmp_path: Path, source: str, *args: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_cases.py").write_text(source.replace("ALLOWED", next(iter(ALLOWED_SKIPS))))
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "skip_gate", "-p", "no:cacheprovider", "-rs",
                           "--rootdir", str(tmp_path), *args, str(tmp_path)],
                          check=False, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)


def test_without_the_flag_skips_pass_and_are_listed(tmp_path: Path) -> None:
    res = run(tmp_path, CASES)
    assert res.returncode == 0, res.stdout
    assert "SKIPPED [1] test_cases.py:8: frobnicator not installed" in res.stdout
    assert "not allowed on CI" not in res.stdout


def test_strict_fails_on_a_forbidden_skip_and_names_it(tmp_path: Path) -> None:
    res = run(tmp_path, CASES, "--strict-skips")
    assert res.returncode == 1, res.stdout
    gate = res.stdout.split("skips not allowed on CI")[1]
    assert "test_cases.py::test_needs_a_tool: frobnicator not installed" in gate
    assert "test_root_only" not in gate and "test_expected_failure" not in gate  # allowed reason, xfail


def test_strict_passes_when_only_allowed_reasons_skip(tmp_path: Path) -> None:
    res = run(tmp_path, CASES.replace('pytest.skip("frobnicator', 'pass  # ("frobnicator'), "--strict-skips")
    assert res.returncode == 0, res.stdout
    assert "SKIPPED [1]" in res.stdout  # still in the -rs summary


def test_strict_catches_a_module_level_skip(tmp_path: Path) -> None:
    (tmp_path / "test_other.py").write_text("def test_passes():\n    pass\n")
    res = run(tmp_path, 'import pytest\npytest.skip("no camera simulator", allow_module_level=True)\n',
              "--strict-skips")
    assert res.returncode == 1 and "test_cases.py: no camera simulator" in res.stdout, res.stdout


def test_a_failing_run_keeps_its_failure_status(tmp_path: Path) -> None:
    res = run(tmp_path, CASES + "\ndef test_fails():\n    assert False\n", "--strict-skips")
    assert res.returncode == 1 and "1 failed" in res.stdout


def test_allowed_reasons_are_the_ones_the_suite_uses() -> None:
    """An allowed reason that no test gives any more is a hole in the gate: keep the list exact."""
    sources = "".join(p.read_text() for p in TESTS.glob("test_*.py"))
    assert all(f'"{reason}"' in sources for reason in ALLOWED_SKIPS)
