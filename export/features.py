"""ONNX Runtime feature extractor: the trainer builds its memory bank with it, the engine scores with it."""
from __future__ import annotations

import logging
import os

import numpy as np
import onnxruntime as ort

from linesight.errors import BundleError, ConfigError

log = logging.getLogger(__name__)


def providers(prefer_gpu: bool = True) -> list[str]:
    available = ort.get_available_providers()
    if prefer_gpu and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def thread_count(threads: int | None) -> int | None:
    """`threads`, else LINESIGHT_THREADS (the one place it is read), else None: the libraries' default."""
    if threads:
        return threads
    raw = os.environ.get("LINESIGHT_THREADS", "").strip()
    if not raw:
        return None
    if not raw.isdigit():
        raise ConfigError(f"LINESIGHT_THREADS={raw!r}: use a whole number of threads (0 = library default)")
    return int(raw) or None


class OnnxFeatures:
    """(B, 3, H, W) normalised float32 -> (B, D, h, w) patch embeddings."""

    def __init__(self, onnx: bytes, *, threads: int | None = None, prefer_gpu: bool = True, where: str = "bundle"):
        opts = ort.SessionOptions()
        threads = thread_count(threads)
        if threads:
            opts.intra_op_num_threads = threads
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Spinning worker threads steal the cores from faiss, acquisition and publishing threads
        # on small edge CPUs; measured in bench/bench_daemon.py.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(onnx, opts, providers=providers(prefer_gpu))
        except Exception as exc:  # onnxruntime raises untyped errors for bad graphs
            raise BundleError(f"{where}: backbone.onnx cannot be loaded by onnxruntime: {exc}") from exc
        self.provider = self.session.get_providers()[0]
        self.input_name = self.session.get_inputs()[0].name
        self.channels = self.session.get_outputs()[0].shape[1]
        log.info("onnxruntime session on %s", self.provider, extra={"provider": self.provider})

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})[0]
