"""torch -> ONNX with a parity check on real images; a bundle that fails parity is never written."""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import torch

from linesight.errors import LinesightError

log = logging.getLogger(__name__)

OPSET = 18
INPUT, OUTPUT = "image", "features"


def export_onnx(module: torch.nn.Module, height: int, width: int) -> bytes:
    module.eval()
    dummy = torch.zeros(2, 3, height, width)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "backbone.onnx"
        with torch.no_grad():
            torch.onnx.export(module, (dummy,), str(path), input_names=[INPUT], output_names=[OUTPUT],
                              opset_version=OPSET, dynamo=True, external_data=False,
                              dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=1024)}})
        return path.read_bytes()


def parity(module: torch.nn.Module, onnx_bytes: bytes, batch: np.ndarray, rel_tolerance: float = 1e-4) -> tuple[float, float]:
    """Max |torch - onnxruntime| on a real batch, and the tolerance it must stay under.

    Tolerance = rel_tolerance * max(1, max |feature|): random-init features can be large, where an
    absolute 1e-4 would only measure float32 rounding.
    """
    from linesight.export.features import OnnxFeatures

    with torch.no_grad():
        ref = module(torch.from_numpy(batch)).numpy()
    got = OnnxFeatures(onnx_bytes, prefer_gpu=False, where="exported graph")(batch)
    if got.shape != ref.shape:
        raise LinesightError(f"ONNX export produced shape {got.shape}, torch {ref.shape}: not writing a bundle")
    diff = float(np.abs(got - ref).max())
    tol = rel_tolerance * max(1.0, float(np.abs(ref).max()))
    log.info("ONNX parity: max abs diff %.3g (tolerance %.3g)", diff, tol)
    if not diff <= tol:
        raise LinesightError(f"ONNX Runtime features differ from torch by {diff:.3g} > tolerance {tol:.3g}: "
                             "not writing a bundle")
    return diff, tol
