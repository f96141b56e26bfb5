"""Logging set-up for every verb: text or JSON lines on stderr; library chatter quiet unless `-v`.

Why quiet by default: on a 24/7 box the journal is read when something went wrong, and lines such as faiss'
'Could not load library with AVX512 support ... ModuleNotFoundError' (normal: it falls back) look like
the problem. `-v` shows everything again, at DEBUG.

JSON (`--log-format json`): one object per line with ts, level, logger, message and every `extra={...}`
field of the call, so journald / log shippers get the structured context the daemon logs with.
"""
from __future__ import annotations

import json
import logging
import sys
import warnings
from datetime import UTC, datetime
from typing import Any, Literal

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[str, ...] = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: Libraries whose INFO lines are progress chatter (faiss.loader: which SIMD build it tried and why not).
QUIET_LOGGERS = ("faiss", "onnxscript", "onnx_ir", "torch.onnx", "torch._export", "torch.export")
#: (logger, message start) of library warnings that never concern linesight: the ONNX exporter lists
#: torchvision ops it cannot register, but no linesight backbone uses them.
NOISE = (("torch.onnx._internal.exporter._registration", "torchvision is not installed"),)
#: (category, message regex) of Python warnings raised inside torch's exporter, not by anything linesight calls.
NOISE_WARNINGS = ((FutureWarning, r"`isinstance\(treespec, LeafSpec\)` is deprecated"),)

_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts (UTC ISO-8601), level, logger, message, the call's extra fields, exc."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        out: dict[str, Any] = {"ts": ts.replace("+00:00", "Z"), "level": record.levelname, "logger": record.name,
                               "message": record.getMessage()}
        out.update((k, v) for k, v in vars(record).items() if k not in _RECORD_FIELDS and not k.startswith("_"))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str, ensure_ascii=False)


class _DropStartingWith(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def setup_logging(verbose: bool = False, fmt: LogFormat = "text") -> None:
    """Root handler on stderr in `fmt`; INFO (DEBUG with `verbose`). Without `verbose` the QUIET_LOGGERS say only
    WARNING and up, and the NOISE lines and warnings are dropped (a logger-level filter: torch installs its own
    handlers, which a root-handler filter would not cover)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])
    if verbose:
        return
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for name, prefix in NOISE:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropStartingWith) and f.prefix == prefix for f in logger.filters):
            logger.addFilter(_DropStartingWith(prefix))
    for category, message in NOISE_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
