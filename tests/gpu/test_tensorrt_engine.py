"""A real TensorRT engine per precision, checked against ONNX Runtime on the same inputs.

Runs wherever ``import tensorrt`` works and a GPU is visible (the NGC TensorRT image;
see docs/tensorrt.md); skipped elsewhere with the reason.
"""

from __future__ import annotations

import numpy as np
import pytest

from factory_core.availability import first_gpu, gpus, tensorrt_version

pytestmark = [pytest.mark.tensorrt, pytest.mark.gpu]

if not tensorrt_version():
    pytest.skip(tensorrt_version().reason, allow_module_level=True)
if first_gpu() is None:
    pytest.skip(gpus().reason, allow_module_level=True)


@pytest.fixture(scope="module")
def variants(tmp_path_factory, export_small_model):
    from factory_core.config import Family, load_config
    from pipelines.quantize import calibration_set, onnx_fp32_to_fp16, onnx_fp32_to_int8

    cfg = load_config(profile="smoke", env={})
    x = np.random.default_rng(0).normal(size=(512, 64, 16)).astype(np.float32)
    folder = tmp_path_factory.mktemp("pdir")
    _, fp32 = export_small_model(Family.PRICE_DIRECTION, x, folder / "model.fp32.onnx", fit_norm=True)
    onnx_fp32_to_fp16(fp32, folder / "model.fp16.onnx")
    calib = calibration_set(x, np.zeros(len(x), dtype=np.int64), np.zeros(len(x), bool), 256, 0)
    onnx_fp32_to_int8(fp32, folder / "model.int8.onnx", calib, "max", folder / "cache")
    return cfg, folder, x[256:]


@pytest.mark.parametrize("precision, atol", [("fp32", 1e-4), ("fp16", 1e-2), ("int8", 5e-2)])
def test_engine_matches_onnxruntime(variants, tmp_path, precision, atol):
    import onnxruntime as ort
    from polygraphy.backend.common import BytesFromPath
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    from factory_core.config import Family, TargetConfig
    from pipelines.engines.base import BuildSpec, build_engine, onnx_io, verify_manifest
    from pipelines.engines.tensorrt_builder import TensorRTBuilder
    from pipelines.export import INPUT_NAME, OUTPUT_NAME

    cfg, folder, x = variants
    gpu = first_gpu()
    target = TargetConfig(name=gpu.target_name)
    onnx_path = folder / f"model.{precision}.onnx"
    inputs, outputs, profile = onnx_io(onnx_path, Family.PRICE_DIRECTION, cfg.families[Family.PRICE_DIRECTION])
    opts = cfg.engines.tensorrt.model_dump()
    spec = BuildSpec(family="price_direction", version="test", precision=precision, target=target, onnx=onnx_path,
                     calibration_sha256=None, profile=profile, options=opts)
    builder = TensorRTBuilder(tmp_path / "store")
    m = build_engine(builder, spec, tmp_path / "engine", inputs, outputs, {"gpu": gpu.name})
    verify_manifest(tmp_path / "engine")
    assert builder.timing_cache().is_file()  # saved for the next build on this arch and version

    ref = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    with TrtRunner(EngineFromBytes(BytesFromPath(str(tmp_path / "engine" / m.engine_file)))) as runner:
        for batch in (1, 32, 200):
            xb = x[:batch]
            got = runner.infer({INPUT_NAME: xb})[OUTPUT_NAME]
            want = ref.run([OUTPUT_NAME], {INPUT_NAME: xb})[0]
            assert np.isfinite(got).all()
            np.testing.assert_allclose(got, want, atol=atol)
