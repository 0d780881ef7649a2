"""Precision variants of an FP32 ONNX graph: FP16, and INT8 as explicit Q/DQ from NVIDIA ModelOpt.

Precision lives in the graph, so every variant runs (and is measured) in ONNX Runtime
on a CPU before any GPU is involved; TensorRT 11 builds such graphs strongly typed.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from factory_core.errors import BadInput
from factory_core.fsutil import sha256_file

from .export import INPUT_NAME

log = logging.getLogger(__name__)


FP16_KEEP_FP32 = ("LayerNormalization", "Softmax", "ReduceMean", "Sigmoid", "Erf", "Sub", "Div", "GRU", "Transpose")
"""Ops kept in FP32 in the FP16 graph. Normalisation, softmax, reductions, GELU's erf and
the output sigmoid lose accuracy in half precision; the input standardisation (Sub/Div)
sees raw features up to ~1e4; GRU has no FP16 CPU kernel; and ONNX Runtime 1.24's CPU
provider crashed on an FP16 Transpose in the price_direction graph (measured)."""

INT8_OP_TYPES = ("Conv", "MatMul", "Gemm")


class CalibrationError(BadInput, ValueError):
    """The calibration set is unusable (NaN/inf, empty, wrong shape)."""


@dataclass(frozen=True)
class Coverage:
    """Which compute ops of a quantized graph run in INT8 (have DQ on their inputs)."""

    quantized: dict[str, int] = field(default_factory=dict)
    not_quantized: dict[str, int] = field(default_factory=dict)
    qdq_pairs: int = 0

    @property
    def fraction(self) -> float:
        q, n = sum(self.quantized.values()), sum(self.not_quantized.values())
        return q / (q + n) if q + n else 0.0


def onnx_fp32_to_fp16(src: Path, dest: Path) -> list[str]:
    """Write an FP16 graph with FP32 inputs/outputs; returns the op types kept in FP32."""
    import onnx
    from onnxconverter_common import float16

    model = onnx.load(str(src))
    present = sorted({n.op_type for n in model.graph.node} & set(FP16_KEEP_FP32))
    fp16 = float16.convert_float_to_float16(model, keep_io_types=True, op_block_list=list(FP16_KEEP_FP32))
    _fp32_outputs(fp16)
    _save_atomic(fp16, dest)
    return present


def _fp32_outputs(model) -> None:
    """Make every FLOAT16 graph output FLOAT32 with a Cast inside the graph.

    ``keep_io_types`` leaves an output FP16 when its producer is a blocked op (measured: the converter
    wraps the kept-FP32 Sigmoid in casts and the last cast writes ``prob`` as float16), while every runner
    and the documented contract read FP32 I/O.
    """
    from onnx import TensorProto, helper

    for out in model.graph.output:
        tt = out.type.tensor_type
        if tt.elem_type != TensorProto.FLOAT16:
            continue
        half = f"{out.name}__fp16"
        for node in model.graph.node:
            node.output[:] = [half if o == out.name else o for o in node.output]
            node.input[:] = [half if i == out.name else i for i in node.input]
        model.graph.node.append(helper.make_node("Cast", [half], [out.name], to=TensorProto.FLOAT,
                                                 name=f"{out.name}_to_fp32"))
        tt.elem_type = TensorProto.FLOAT


def calibration_set(x: np.ndarray, state: np.ndarray, tail: np.ndarray, n: int = 1000, seed: int = 0) -> np.ndarray:
    """About ``n`` windows stratified across market states, with every tail event kept (up to a quarter of ``n``).

    ``state`` labels each window's stratum (:attr:`pipelines.datasets.Split.state`: the trailing-volatility tercile,
    computed from the data; any labels work). ``tail`` marks extreme-move windows (the seeds warn INT8 misjudges
    extreme markets, so the calibration ranges must see them).
    """
    if len(x) == 0:
        raise CalibrationError("calibration pool is empty")
    rng = np.random.default_rng(seed)
    tail_idx = np.flatnonzero(tail)
    tail_idx = rng.permutation(tail_idx)[: n // 4]
    rest = np.setdiff1d(np.arange(len(x)), tail_idx)
    groups = [rest[state[rest] == s] for s in np.unique(state[rest])]
    per_group = max(1, (n - len(tail_idx)) // max(len(groups), 1))
    picked = [tail_idx] + [rng.permutation(g)[:per_group] for g in groups]
    return x[np.sort(np.concatenate(picked))]


def check_calibration(x: np.ndarray, n_features: int) -> None:
    """Raise :class:`CalibrationError` unless ``x`` is a finite, non-empty ``[N, (T,) F]`` batch."""
    if x.size == 0 or x.ndim not in (2, 3):
        raise CalibrationError(f"calibration set must be a non-empty [N, F] or [N, T, F] array, got {x.shape}")
    if x.shape[-1] != n_features:
        raise CalibrationError(f"calibration set has {x.shape[-1]} features, the model expects {n_features}")
    bad = ~np.isfinite(x)
    if bad.any():
        first = np.argwhere(bad)[0].tolist()
        raise CalibrationError(f"calibration set has {int(bad.sum())} NaN/inf value(s), first at index {first}")


def array_sha256(x: np.ndarray) -> str:
    h = hashlib.sha256(str((x.dtype.str, x.shape)).encode())
    h.update(np.ascontiguousarray(x).tobytes())
    return h.hexdigest()


def onnx_fp32_to_int8(src: Path, dest: Path, calib: np.ndarray, method: str, cache_dir: Path,
                      opt_batch: int = 32) -> bool:
    """Write an explicit Q/DQ INT8 graph calibrated by ModelOpt on CPU (ONNX Runtime).

    ModelOpt leaves out GEMMs TensorRT would run as GEMV or with K/N < 16; it judges
    that at ``opt_batch`` (the engine profile's opt batch), not at batch 1, where every
    dense layer of a 2-D model looks like a GEMV.

    The result is cached under ``cache_dir`` by (ONNX sha256, calibration sha256,
    method, opt batch): unchanged data and model reuse the calibrated graph. Returns
    True on a cache hit.
    """
    from modelopt.onnx.quantization import quantize

    shapes = f"{INPUT_NAME}:" + "x".join(str(d) for d in (opt_batch, *calib.shape[1:]))
    key = hashlib.sha256(f"{sha256_file(src)}|{array_sha256(calib)}|{method}|{shapes}".encode()).hexdigest()[:24]
    cached = cache_dir / key / "model.int8.onnx"
    if cached.is_file():
        shutil.copyfile(cached, dest)
        return True
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        out = Path(tmp) / "model.int8.onnx"
        # ModelOpt rewrites the file it is given (measured: the input's sha256 changes),
        # so it gets a private copy and the FP32 artifact stays byte-identical.
        work = Path(tmp) / "input.fp32.onnx"
        shutil.copyfile(src, work)
        with _no_progress_bars():
            quantize(str(work), quantize_mode="int8", calibration_data={INPUT_NAME: calib},
                     calibration_method=method, calibration_eps=["cpu"], high_precision_dtype="fp32",
                     op_types_to_quantize=list(INT8_OP_TYPES), calibration_shapes=shapes, output_path=str(out),
                     log_level="WARNING")
        if not out.is_file():
            raise RuntimeError(f"ModelOpt produced no output for {src}")
        cached.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out, cached)
        os.replace(out, dest)
    return False


@contextlib.contextmanager
def _no_progress_bars():
    """ModelOpt's calibration draws tqdm bars on stderr, which Airflow files as error-level task log lines."""
    before = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = before


def quantization_coverage(path: Path) -> Coverage:
    import onnx

    graph = onnx.load(str(path)).graph
    dq_outputs = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    quantized: collections.Counter[str] = collections.Counter()
    not_quantized: collections.Counter[str] = collections.Counter()
    for node in graph.node:
        if node.op_type in INT8_OP_TYPES + ("GRU", "LSTM"):
            (quantized if any(i in dq_outputs for i in node.input) else not_quantized)[node.op_type] += 1
    pairs = sum(1 for n in graph.node if n.op_type == "QuantizeLinear")
    return Coverage(dict(quantized), dict(not_quantized), pairs)


def _save_atomic(model, dest: Path) -> None:
    import onnx

    fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=dest.parent)
    os.close(fd)
    try:
        onnx.save(model, tmp)
        onnx.checker.check_model(tmp)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
