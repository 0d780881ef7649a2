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
    from polygraphy.backend.common import BytesFromPath
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    from factory_core.config import Family, TargetConfig
    from model_registry.runners import open_runner
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

    ref = open_runner(onnx_path, "onnxruntime", output=OUTPUT_NAME)
    with TrtRunner(EngineFromBytes(BytesFromPath(str(tmp_path / "engine" / m.engine_file)))) as runner:
        for batch in (1, 32, 200):
            xb = x[:batch]
            got = runner.infer({INPUT_NAME: xb})[OUTPUT_NAME]
            want = ref.infer(xb)
            assert np.isfinite(got).all()
            np.testing.assert_allclose(got, want, atol=atol)


@pytest.mark.parametrize("cuda_graph", [False, True])
def test_serving_path_on_a_real_engine(variants, tmp_path, cuda_graph):
    """The serving runner on a real plan: pinned buffers per shape, a context per thread, CUDA graphs per shape,
    the profile enforced; and EngineRunner's canary accepts the engine with its recorded sample."""
    import threading

    from factory_core.config import Family, TargetConfig
    from model_registry.canary import preflight
    from model_registry.runners import open_engine, open_runner
    from model_registry.runtime import EngineRunner
    from pipelines.engines.base import BuildSpec, build_engine, onnx_io
    from pipelines.engines.tensorrt_builder import TensorRTBuilder
    from pipelines.export import INPUT_NAME, OUTPUT_NAME

    cfg, folder, x = variants
    onnx_path = folder / "model.fp32.onnx"
    inputs, outputs, profile = onnx_io(onnx_path, Family.PRICE_DIRECTION, cfg.families[Family.PRICE_DIRECTION])
    spec = BuildSpec(family="price_direction", version="serve", precision="fp32",
                     target=TargetConfig(name=first_gpu().target_name), onnx=onnx_path, calibration_sha256=None,
                     profile=profile, options=cfg.engines.tensorrt.model_dump())
    m = build_engine(TensorRTBuilder(tmp_path / "store"), spec, tmp_path / "engine", inputs, outputs, {}, sample=x[:8])
    runner = open_engine(tmp_path / "engine", m, cuda_graph=cuda_graph)  # the engine's names, as serving does
    assert runner.output == OUTPUT_NAME and [t.name for t in runner.inputs()] == [INPUT_NAME]
    ref = open_runner(onnx_path, "onnxruntime")
    results: dict[int, bool] = {}

    def client(i: int) -> None:
        ok = True
        for b in (1, 7, 32, 7):
            xb = x[i * 40:i * 40 + b]
            ok &= np.allclose(runner.infer(xb), ref.infer(xb), atol=1e-4)
        results[i] = ok

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: True for i in range(4)}
    with pytest.raises(ValueError, match="outside the engine's profile"):
        runner.infer(np.repeat(x[:1], profile[INPUT_NAME].max[0] + 1, axis=0))
    assert preflight(tmp_path / "engine", m, timeout_s=120).checks[-1].startswith("recorded sample")
    served = EngineRunner(tmp_path / "engine")
    assert served.predict(x[:4]).shape == (4, 2)
