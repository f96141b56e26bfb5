"""Log set-up with the real libraries: faiss' loader chatter and torch's ONNX-exporter warnings are gone by
default and back with -v (torch installs its own handlers, so this runs them for real), and the JSON format."""
from __future__ import annotations

import json
import logging
import subprocess
import sys

from linesight.logs import JsonFormatter

NOISY = """
import logging, sys
from linesight.logs import setup_logging
setup_logging(verbose=sys.argv[1] == "-v")
import faiss  # its loader logs which SIMD builds it tried (INFO)
from torch.onnx._internal.exporter import _registration
_registration.ONNXRegistry.from_torchlib()  # what `fit` runs: WARNING per torchvision op it skips
logging.getLogger("linesight.test").warning("a real warning stays")
"""


def test_library_noise_is_quiet_by_default_and_back_with_verbose() -> None:
    procs = {flag: subprocess.Popen([sys.executable, "-c", NOISY, flag], stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True) for flag in ("", "-v")}
    out = {flag: p.communicate(timeout=300)[0] for flag, p in procs.items()}
    assert all(p.returncode == 0 for p in procs.values()), out
    assert "faiss" not in out[""] and "torchvision is not installed" not in out[""], out[""]
    assert "WARNING linesight.test: a real warning stays" in out[""]
    assert "INFO faiss.loader:" in out["-v"] and "torchvision is not installed" in out["-v"]


def test_json_lines_carry_the_extra_context_and_the_traceback() -> None:
    log = logging.getLogger("linesight.daemon.service")
    record = log.makeRecord(log.name, logging.WARNING, __file__, 1, "alarm %s: %s", ("camera_down", "cable"), None,
                            extra={"alarm": "camera_down", "ctx_seq": 17, "model": {"id": "m", "version": 3}})
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "alarm camera_down: cable" and line["level"] == "WARNING"
    assert line["logger"] == "linesight.daemon.service" and line["ts"].endswith("Z")
    assert (line["alarm"], line["ctx_seq"], line["model"]) == ("camera_down", 17, {"id": "m", "version": 3})
    assert "args" not in line and "msg" not in line  # LogRecord internals stay out
    try:
        raise OSError("disk gone")
    except OSError:
        record = log.makeRecord(log.name, logging.ERROR, __file__, 1, "archive failed", (), sys.exc_info())
    assert "OSError: disk gone" in json.loads(JsonFormatter().format(record))["exc"]
