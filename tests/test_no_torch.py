"""The daemon host needs no torch: importing the runtime packages must not import it."""
import subprocess
import sys

MODULES = ["linesight.export.engine", "linesight.export.bundle", "linesight.export.preprocess", "linesight.daemon",
           "linesight.config.manifest", "linesight.config.fit", "linesight.export.analysis",
           "linesight.config.inspection", "linesight.config.project", "linesight.project.workspace",
           "linesight.project.data", "linesight.project.transfer", "linesight.config.ui", "linesight.cli_ui",
           "linesight.ui.app", "linesight.ui.auth", "linesight.ui.events", "linesight.ui.feeds", "linesight.ui.inspect",
           "linesight.ui.commands", "linesight.ui.review", "linesight.ui.jobs", "linesight.ui.projects",
           "linesight.ui.uploads", "linesight.ui.trends", "linesight.trainer.labels"]


def test_runtime_packages_do_not_import_torch():
    code = ("import sys, importlib\n"
            f"for m in {MODULES!r}: importlib.import_module(m)\n"
            "import pkgutil, linesight.daemon as d\n"
            "for info in pkgutil.walk_packages(d.__path__, 'linesight.daemon.'):\n"
            "    try: importlib.import_module(info.name)\n"
            "    except ImportError as e:\n"
            "        if 'harvesters' not in str(e) and 'genicam' not in str(e): raise\n"
            "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
            "print(len(bad)); sys.exit(1 if bad else 0)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
