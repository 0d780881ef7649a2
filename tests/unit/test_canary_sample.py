"""The canary's recorded sample is large enough to see a rare failure: 1,024 test windows drawn uniformly plus the
gates' tail windows, so an engine emitting NaN on 0.5 % of inputs is refused before it takes traffic, where the
former 8-window sample let it through.

A real fraud_risk-shaped ONNX graph built into a CPU engine by the factory's own builder, with the sample the
engine stage records (``pipelines.stages._canary_sample``), then the planted fault of ``pipelines.faults``."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from factory_core.config import Family, TargetConfig
from factory_core.contracts import CANARY_ROWS, CANARY_TAIL_ROWS, VariantSet
from model_registry.canary import SwapRefused, preflight, read_manifest
from pipelines import faults, stages
from pipelines.engines.base import BuildSpec, build_engine, onnx_io
from pipelines.engines.onnxruntime_builder import OnnxRuntimeBuilder
from pipelines.export import INPUT_NAME, OUTPUT_NAME

N_TEST, N_VAL, F = 6000, 500, 11


def _splits(path: Path, n_test: int = N_TEST, n_val: int = N_VAL, seed: int = 0) -> tuple[Path, dict]:
    """test/val/calib splits of fraud_risk shape; ~2 % positives (fraud_risk's tail); features N(0, 2)."""
    rng = np.random.default_rng(seed)
    parts = {}
    for name, n in (("test", n_test), ("val", n_val), ("calib", 10)):
        parts[name] = {"x": (2 * rng.standard_normal((n, F))).astype(np.float32),
                       "y": (rng.random(n) < 0.02).astype(np.float32), "ts": np.arange(n, dtype=np.int64),
                       "state": np.zeros(n, np.int8), "flash": np.zeros(n, bool),
                       "fwd_ret_bps": np.full(n, np.nan, np.float32)}
    np.savez(path, **{f"{part}.{k}": v for part, cols in parts.items() for k, v in cols.items()})
    return path, parts


def _variant_set(splits: Path) -> VariantSet:
    return VariantSet(family="fraud_risk", calibration_sha256="c" * 64, calibration_method="max", variants=[],
                      checkpoint_uri="unused", splits_uri=str(splits))


def _graph(dest: Path) -> Path:
    """prob = sigmoid(0.1 * sum of the features): [batch, 11] → [batch, 1]."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", F])
    y = helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", 1])
    w = helper.make_tensor("w", TensorProto.FLOAT, [F, 1], [0.1] * F)
    model = helper.make_model(helper.make_graph([helper.make_node("MatMul", [INPUT_NAME, "w"], ["z"]),
                                                 helper.make_node("Sigmoid", ["z"], [OUTPUT_NAME])],
                                                "tiny_fraud", [x], [y], [w]),
                              opset_imports=[helper.make_opsetid("", 18)])
    onnx.save(model, str(dest))
    return dest


def _engine(cfg, onnx_path: Path, dest: Path, sample: np.ndarray) -> Path:
    inputs, outputs, profile = onnx_io(onnx_path, Family.FRAUD_RISK, cfg.families[Family.FRAUD_RISK])
    spec = BuildSpec(family="fraud_risk", version="20261201.00000001", precision="fp32",
                     target=TargetConfig(name="cpu"), onnx=onnx_path, calibration_sha256=None, profile=profile,
                     options={"graph_optimization_level": "extended", "intra_op_threads": 1, "build_timeout_s": 120})
    build_engine(OnnxRuntimeBuilder(), spec, dest, inputs, outputs, {"hostname": "test"}, sample=sample)
    return dest


def _rows(x: np.ndarray) -> set[bytes]:
    return {r.tobytes() for r in x}


def test_the_sample_holds_1024_uniform_test_windows_and_every_tail_window(smoke_cfg, tmp_path):
    path, parts = _splits(tmp_path / "splits.npz")
    inputs = onnx_io(_graph(tmp_path / "m.onnx"), Family.FRAUD_RISK, smoke_cfg.families[Family.FRAUD_RISK])[0]
    x = stages._canary_sample(smoke_cfg, _variant_set(path), inputs)
    test = parts["test"]
    tail = test["x"][test["y"] > 0.5]
    assert 0 < len(tail) <= CANARY_TAIL_ROWS
    assert CANARY_ROWS <= len(x) <= CANARY_ROWS + len(tail) and len(_rows(x)) == len(x)  # distinct windows
    assert _rows(tail) <= _rows(x) and _rows(x) <= _rows(test["x"])  # every tail window; only test windows
    assert (1 - 0.005) ** CANARY_ROWS <= 0.01  # a 0.5 % failure is missed with probability below 1 %
    # more than CANARY_TAIL_ROWS tail windows (here all): that many of them at random, beside the uniform draw
    path, parts = _splits(tmp_path / "many.npz", seed=1)
    with np.load(path) as z:
        arrays = {k: (np.ones_like(z[k]) if k == "test.y" else z[k]) for k in z.files}
    np.savez(path, **arrays)
    assert CANARY_ROWS < len(stages._canary_sample(smoke_cfg, _variant_set(path), inputs)) <= \
        CANARY_ROWS + CANARY_TAIL_ROWS
    # a small test split is topped up with validation windows
    path, parts = _splits(tmp_path / "small.npz", n_test=300, n_val=2000, seed=2)
    x = stages._canary_sample(smoke_cfg, _variant_set(path), inputs)
    assert len(x) == CANARY_ROWS and _rows(parts["test"]["x"]) <= _rows(x)


def test_an_engine_emitting_nan_on_half_a_percent_of_inputs_is_refused_by_the_canary(smoke_cfg, tmp_path):
    path, parts = _splits(tmp_path / "splits.npz")
    src = _graph(tmp_path / "model.onnx")
    inputs = onnx_io(src, Family.FRAUD_RISK, smoke_cfg.families[Family.FRAUD_RISK])[0]
    sample = stages._canary_sample(smoke_cfg, _variant_set(path), inputs)
    test_x = parts["test"]["x"]
    above = faults.rare_threshold(test_x, feature=0, share=0.005)  # NaN on 0.5 % of the test windows
    share = float((test_x[:, 0] > above).mean())
    assert 0.004 <= share <= 0.006
    nan = faults.nan_on_rare_inputs(src, tmp_path / "nan.onnx", feature=0, above=above)

    good = _engine(smoke_cfg, src, tmp_path / "good", sample)
    assert read_manifest(good).canary.rows == len(sample) >= CANARY_ROWS
    live = read_manifest(good)
    preflight(good, live, timeout_s=60)  # the good engine passes its own canary
    bad = faults_copy(good, tmp_path / "bad", nan)
    with pytest.raises(SwapRefused) as err:
        preflight(bad, live, timeout_s=60)
    hit = int((sample[:, 0] > above).sum())
    assert err.value.kind == "non-finite" and hit >= 1
    assert f"non-finite outputs on {hit} of the {len(sample)} windows of the recorded sample" in err.value.reason

    # the former sample (the first 8 validation windows) let the same engine through
    old = _engine(smoke_cfg, src, tmp_path / "old", parts["val"]["x"][:8])
    preflight(faults_copy(old, tmp_path / "old_bad", nan), live, timeout_s=60)


def faults_copy(engine_dir: Path, dest: Path, onnx_path: Path) -> Path:
    """A copy of a built engine whose engine file is replaced and re-hashed: only running it tells."""
    shutil.copytree(engine_dir, dest)
    faults.replace_engine(dest, onnx_path)
    return dest


def test_an_int8_cpu_engine_gated_on_other_integer_kernels_is_refused_before_loading(smoke_cfg, tmp_path):
    """ONNX Runtime's fused INT8 kernels differ between x86 CPUs with and without VNNI by more than the INT8
    canary's tolerance sees (docs/gates.md): a host refuses an INT8 cpu engine whose build host recorded other
    kernels, and takes the same engine recorded on kernels like its own, and any fp32 engine."""
    from factory_core.availability import cpu_int8_kernels

    src = _graph(tmp_path / "model.onnx")
    inputs, outputs, profile = onnx_io(src, Family.FRAUD_RISK, smoke_cfg.families[Family.FRAUD_RISK])
    here = cpu_int8_kernels()
    other = "x86-avx2" if here == "x86-vnni" else "x86-vnni"

    def built(precision: str, kernels: str) -> Path:
        spec = BuildSpec(family="fraud_risk", version="20261201.00000001", precision=precision,
                         target=TargetConfig(name="cpu"), onnx=src, calibration_sha256=None, profile=profile,
                         options={"graph_optimization_level": "extended", "intra_op_threads": 1,
                                  "build_timeout_s": 120})
        dest = tmp_path / f"{precision}-{kernels}"
        build_engine(OnnxRuntimeBuilder(), spec, dest, inputs, outputs, {"hostname": "b", "cpu_int8": kernels})
        return dest

    with pytest.raises(SwapRefused) as err:
        preflight(built("int8", other), None, child=False)
    assert err.value.kind == "cpu_int8" and f"gated on a host with {other} integer kernels; this host has {here}" \
        in err.value.reason
    assert "sha256" in " ".join(preflight(built("int8", here), None, child=False).checks)
    preflight(built("fp32", other), None, child=False)


@pytest.mark.parametrize("flags, kernels", [("fpu avx2 avx512f avx512bw avx512_vnni", "x86-vnni"),
                                            ("fpu avx2 avx_vnni", "x86-vnni"),
                                            ("fpu avx2 avx512f avx512bw", "x86-avx512"),
                                            ("fpu sse4_2 avx2", "x86-avx2")])
def test_the_integer_kernels_are_read_from_the_cpu_flags(flags, kernels, monkeypatch):
    import platform

    from factory_core.availability import cpu_int8_kernels

    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    assert cpu_int8_kernels(f"processor\t: 0\nflags\t\t: {flags}\n") == kernels
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    assert cpu_int8_kernels("") == "aarch64"
