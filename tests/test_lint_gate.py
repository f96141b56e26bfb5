"""The gates .ci/run applies before the tests say no to what they exist to catch, with the project's own config."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = ROOT / ".venv" / "bin"


def tool(name: str) -> str:
    found = BIN / name if (BIN / name).exists() else shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed: pip install -e '.[test]' (.ci/setup.sh does)")
    return str(found)


def test_ruff_refuses_an_unused_import_a_long_line_and_a_complex_function(tmp_path):
    bad = tmp_path / "bad.py"
    branches = "\n".join(f"    if x == {i}:\n        return {i}" for i in range(17))
    bad.write_text(f"import os\n\nX = '{'x' * 130}'\n\n\ndef f(x):\n{branches}\n    return -1\n")
    r = subprocess.run([tool("ruff"), "check", "--config", str(ROOT / "pyproject.toml"), "--output-format",
                        "concise", str(bad)], capture_output=True, text=True)
    assert r.returncode == 1
    assert "F401" in r.stdout and "E501" in r.stdout and "C901" in r.stdout, r.stdout


def test_vulture_refuses_a_function_nobody_calls(tmp_path):
    (tmp_path / "mod.py").write_text("def used():\n    return 1\n\n\ndef forgotten():\n    return 2\n\n\nused()\n")
    r = subprocess.run([tool("vulture"), str(tmp_path / "mod.py"), "--min-confidence", "60"], capture_output=True,
                       text=True)
    assert r.returncode == 3 and "unused function 'forgotten'" in r.stdout, r.stdout


def test_the_tree_passes_both_gates():
    assert subprocess.run([tool("ruff"), "check", "."], cwd=ROOT, capture_output=True).returncode == 0
    r = subprocess.run([tool("vulture")], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout
