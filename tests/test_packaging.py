"""A built wheel installs into a fresh venv and every subpackage imports from it (not from the checkout)."""
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_installs_and_imports(tmp_path):
    r = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path / "dist"),
                        str(ROOT)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    wheel = next((tmp_path / "dist").glob("linesight-*.whl"))
    subprocess.run([sys.executable, "-m", "venv", str(tmp_path / "venv")], check=True)
    py = tmp_path / "venv" / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True)
    # Dependencies come from the test environment's site-packages via PYTHONPATH (no .pth files are read
    # from there, so the editable install of the checkout stays invisible).
    deps = sysconfig.get_paths()["purelib"]
    code = ("import linesight, linesight.export.engine, linesight.trainer.fit, linesight.daemon,"
            " linesight.config.manifest, linesight.daemon.sources, linesight.daemon.sinks, linesight.cli,"
            " linesight.ui.app;"
            " print(linesight.__file__);"
            " from importlib.resources import files; print(files('linesight.config') / 'examples');"
            " assert all((files('linesight.ui') / 'static' / f).is_file() for f in"
            f" {tuple(sorted(p.name for p in (Path(__file__).resolve().parents[1] / 'cli/ui/static').iterdir()))});"
            " assert (files('linesight.config') / 'examples' / 'ui.yaml').is_file()")
    r = subprocess.run([str(py), "-c", code], capture_output=True, text=True, cwd=tmp_path,
                       env={"PYTHONPATH": deps, "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert str(tmp_path / "venv") in r.stdout.splitlines()[0]
    r = subprocess.run([str(tmp_path / "venv" / "bin" / "linesight"), "--help"], capture_output=True, text=True,
                       env={"PYTHONPATH": deps, "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0 and "fit" in r.stdout
