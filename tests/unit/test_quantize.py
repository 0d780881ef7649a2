"""Precision variants: FP16 and ModelOpt INT8 Q/DQ graphs run in ONNX Runtime; calibration is checked and cached."""

import numpy as np
import onnx
import pytest

from factory_core.config import Family
from factory_core.fsutil import sha256_file
from model_registry.runners import OnnxRuntimeRunner
from pipelines.export import INPUT_NAME, OUTPUT_NAME
from pipelines.quantize import (
    CalibrationError,
    array_sha256,
    calibration_set,
    check_calibration,
    onnx_fp32_to_fp16,
    onnx_fp32_to_int8,
    quantization_coverage,
)


@pytest.fixture(scope="module")
def pdir_onnx(tmp_path_factory, export_small_model):
    x = np.random.default_rng(0).normal(size=(300, 64, 16)).astype(np.float32)
    _, path = export_small_model(Family.PRICE_DIRECTION, x, tmp_path_factory.mktemp("m") / "model.fp32.onnx",
                                 fit_norm=True)
    return path, x


def _run(path, x):
    with OnnxRuntimeRunner(path, threads=0) as runner:
        return runner.infer_named({INPUT_NAME: x})[OUTPUT_NAME]


def test_fp16_graph_runs_and_stays_close(pdir_onnx, tmp_path):
    src, x = pdir_onnx
    kept = onnx_fp32_to_fp16(src, tmp_path / "model.fp16.onnx")
    assert {"Softmax", "LayerNormalization"} <= set(kept)
    graph = onnx.load(str(tmp_path / "model.fp16.onnx")).graph
    assert any(init.data_type == onnx.TensorProto.FLOAT16 for init in graph.initializer)
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # FP32 I/O kept
    assert [o.type.tensor_type.elem_type for o in graph.output] == [onnx.TensorProto.FLOAT]
    assert _run(tmp_path / "model.fp16.onnx", x[:4]).dtype == np.float32
    np.testing.assert_allclose(_run(tmp_path / "model.fp16.onnx", x[:32]), _run(src, x[:32]), atol=2e-2)


def test_int8_graph_holds_qdq_around_quantizable_ops_and_is_cached(pdir_onnx, tmp_path):
    src, x = pdir_onnx
    calib = x[:128]
    src_sha = sha256_file(src)
    hit = onnx_fp32_to_int8(src, tmp_path / "model.int8.onnx", calib, "max", tmp_path / "cache")
    assert hit is False
    cov = quantization_coverage(tmp_path / "model.int8.onnx")
    assert cov.quantized.get("Conv") == 2 and cov.quantized.get("MatMul", 0) >= 1
    assert cov.qdq_pairs > 0 and cov.fraction > 0.5
    out = _run(tmp_path / "model.int8.onnx", x[:32])
    assert np.isfinite(out).all() and np.allclose(out.sum(-1), 1, atol=1e-3)
    assert sha256_file(src) == src_sha  # the FP32 source is left untouched
    # the same model and data reuse the calibrated graph; other data does not
    assert onnx_fp32_to_int8(src, tmp_path / "again.onnx", calib, "max", tmp_path / "cache") is True
    assert onnx_fp32_to_int8(src, tmp_path / "other.onnx", x[128:256], "max", tmp_path / "cache") is False


def test_calibration_set_is_stratified_and_keeps_tails():
    rng = np.random.default_rng(0)
    n = 5000
    x = rng.normal(size=(n, 4)).astype(np.float32)
    state = rng.choice([0, 1, 2], n, p=[0.8, 0.15, 0.05])  # trailing-volatility terciles (Split.state)
    x[:, 1] = state
    tail = np.zeros(n, bool)
    tail[rng.choice(n, 40, replace=False)] = True
    x[tail] = 99.0
    calib = calibration_set(x, state, tail, n=600)
    assert 500 <= len(calib) <= 600
    assert (calib[:, 0] == 99.0).sum() == 40  # every tail event kept
    kept = calib[calib[:, 0] != 99.0, 1]
    assert np.bincount(kept.astype(int)).min() >= 150  # stratified: the 5 % state as often as the 80 % one
    assert array_sha256(calib) == array_sha256(calibration_set(x, state, tail, n=600))  # deterministic


def test_bad_calibration_sets_are_named():
    x = np.zeros((10, 64, 16), np.float32)
    x[3, 5, 2] = np.nan
    with pytest.raises(CalibrationError, match=r"NaN/inf value\(s\), first at index \[3, 5, 2\]"):
        check_calibration(x, 16)
    with pytest.raises(CalibrationError, match="expects 16"):
        check_calibration(np.zeros((10, 64, 8), np.float32), 16)
    with pytest.raises(CalibrationError, match="non-empty"):
        check_calibration(np.zeros((0, 16), np.float32), 16)


def test_fp16_outputs_are_fp32_for_every_family_and_halves_are_never_read_as_floats(tmp_path, export_small_model):
    """The converter wrote ``prob`` as float16 (measured on all three families); a runner that reads those
    bytes as float32 scores garbage. The graph casts inside, and runners read the declared dtype."""
    from model_registry.trt import TensorRTRunner

    shapes = {Family.MARKET_ALERT: (8, 40, 16), Family.PRICE_DIRECTION: (8, 64, 16), Family.FRAUD_RISK: (8, 11)}
    for fam, shape in shapes.items():
        x = np.random.default_rng(1).normal(size=shape).astype(np.float32)
        _, src = export_small_model(fam, x, tmp_path / f"{fam}.fp32.onnx", fit_norm=True)
        onnx_fp32_to_fp16(src, tmp_path / f"{fam}.fp16.onnx")
        out = _run(tmp_path / f"{fam}.fp16.onnx", x)
        assert out.dtype == np.float32 and np.allclose(out, _run(src, x), atol=2e-2), fam
    # TensorRT runner: buffers follow the engine's declared tensor dtypes (stand-in engine, no TensorRT here)
    import torch

    class _Trt:
        @staticmethod
        def nptype(t):
            return {"half": np.float16, "float": np.float32}[t]

    class _Engine:
        def get_tensor_dtype(self, name):
            return "half" if name == "prob" else "float"

    runner = TensorRTRunner.__new__(TensorRTRunner)
    runner.trt, runner.torch, runner.engine, runner.input, runner.output = _Trt, torch, _Engine(), "features", "prob"
    assert runner.dtype("prob") == np.float16 and runner.dtype("features") == np.float32
    assert runner.output_buffer_dtype() is torch.float16  # the buffer _bind allocates for this engine
