"""PyTorch → ONNX (FP32), with ``onnx.checker`` and output parity against PyTorch."""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from factory_core.config import Family
from factory_core.errors import BadInput
from factory_core.families import spec

log = logging.getLogger(__name__)

INPUT_NAME = "features"
OUTPUT_NAME = "prob"
MAX_BATCH = 4096
SEQ_RANGE = (8, 256)
"""Dynamic sequence range exported for market_alert (the model is trained on 30..120)."""


class ParityError(BadInput, RuntimeError):
    """ONNX output diverges from PyTorch beyond tolerance."""


@dataclass(frozen=True)
class Parity:
    max_abs_err: float
    max_rel_err: float
    n: int
    ok: bool
    """Every element within ``atol + rtol * |reference|`` (numpy ``allclose`` semantics)."""


def torch_to_onnx(model, family: Family, example: np.ndarray, dest: Path, opset: int) -> Path:
    """Export ``model`` with a dynamic batch axis (and sequence axis for market_alert).

    Writes to a temporary file beside ``dest`` and renames it into place after
    ``onnx.checker`` passes and every dynamic axis is still symbolic, so ``dest`` is
    either complete or absent. The export runs in a fresh interpreter: measured with
    torch 2.13, a second dynamo export of the GRU in one process pins its sequence axis
    to the example's length.
    """
    import subprocess
    import sys

    import torch

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        torch.save(model.eval().cpu(), Path(tmp) / "model.pt")
        np.save(Path(tmp) / "example.npy", np.ascontiguousarray(example[:2]))
        # The child gets the spec's one fact it needs, not the family: a family registered in this process only
        # (a plugin, a test) is unknown there.
        proc = subprocess.run([sys.executable, "-m", __name__, tmp, str(family), str(dest), str(opset),
                               str(int(spec(family).sequence))], capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n  ".join((proc.stderr or proc.stdout).strip().splitlines()[-12:])
        raise RuntimeError(f"{family}: ONNX export failed (exit {proc.returncode}):\n  {tail}")
    return dest


def _export_main(argv: list[str]) -> None:
    import torch

    folder, family, dest, opset, sequence = Path(argv[0]), argv[1], Path(argv[2]), int(argv[3]), argv[4] == "1"
    model = torch.load(folder / "model.pt", weights_only=False)  # written by the parent process just now
    _export(model, family, np.load(folder / "example.npy"), dest, opset, sequence)


def _export(model, family: str, example: np.ndarray, dest: Path, opset: int, sequence: bool) -> Path:
    import onnx
    import torch

    model = model.eval().cpu()
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    dims = {0: batch}
    if sequence:
        dims[1] = torch.export.Dim("seq", min=SEQ_RANGE[0], max=SEQ_RANGE[1])
    x = torch.from_numpy(np.ascontiguousarray(example[:2]))
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=dest.parent)
    os.close(fd)
    try:
        torch.onnx.export(model, (x,), tmp, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          opset_version=opset, dynamo=True, dynamic_shapes={"x": dims}, external_data=False,
                          verbose=False)
        proto = onnx.load(tmp)
        onnx.checker.check_model(proto, full_check=True)
        shape = proto.graph.input[0].type.tensor_type.shape.dim
        pinned = [i for i in dims if shape[i].HasField("dim_value")]
        if pinned:
            raise RuntimeError(f"{family}: the exporter fixed dynamic input axes {pinned} to "
                               f"{[shape[i].dim_value for i in pinned]}")
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


def onnx_parity(model, onnx_path: Path, x: np.ndarray, atol: float, rtol: float) -> Parity:
    """Max absolute and relative error of ONNX Runtime (CPU) against PyTorch on ``x``."""
    from model_registry.runners import OnnxRuntimeRunner

    from .train import predict

    with OnnxRuntimeRunner(onnx_path, threads=0, output=OUTPUT_NAME) as runner:
        got = runner.infer_named({INPUT_NAME: np.ascontiguousarray(x, dtype=np.float32)})[OUTPUT_NAME]
    ref = predict(model, x)
    abs_err = np.abs(got.astype(np.float64) - ref)
    rel_err = abs_err / np.maximum(np.abs(ref), 1e-6)
    ok = bool(np.isfinite(got).all() and (abs_err <= atol + rtol * np.abs(ref)).all())
    return Parity(float(abs_err.max()), float(rel_err.max()), len(x), ok)


if __name__ == "__main__":
    import sys

    _export_main(sys.argv[1:])
