"""Engine builds: the ONNX Runtime CPU engine for real, the TensorRT builder's logic without TensorRT."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from factory_core.config import ConfigError, Family, TargetConfig, load_config
from factory_core.contracts import Plan, Status, Variant, VariantSet
from factory_core.fsutil import sha256_file
from model_registry.runners import OnnxRuntimeRunner, open_engine
from pipelines import stages
from pipelines.engines import builder_for
from pipelines.engines.base import (
    BuildSpec,
    EngineBuildError,
    Shapes,
    TargetUnavailableError,
    build_engine,
    onnx_io,
    verify_manifest,
)
from pipelines.engines.onnxruntime_builder import OnnxRuntimeBuilder
from pipelines.engines.tensorrt_builder import (
    TensorRTBuilder,
    precision_switches,
    timing_cache_path,
    unavailable_reason,
)
from pipelines.export import INPUT_NAME, OUTPUT_NAME
from pipelines.quantize import onnx_fp32_to_fp16


@pytest.fixture(scope="module")
def alert_onnx(tmp_path_factory, export_small_model):
    """A small market_alert GRU exported to ONNX (dynamic batch and sequence)."""
    x = np.random.default_rng(0).normal(size=(64, 40, 16)).astype(np.float32)
    folder = tmp_path_factory.mktemp("alert")
    _, fp32 = export_small_model(Family.MARKET_ALERT, x, folder / "model.fp32.onnx")
    onnx_fp32_to_fp16(fp32, folder / "model.fp16.onnx")
    n = len(x)  # the splits a variant set names (the engine stage takes its canary sample from test and val)
    split = {"x": x, "y": np.zeros(n, np.float32), "ts": np.arange(n, dtype=np.int64), "state": np.zeros(n, np.int64),
             "flash": np.zeros(n, bool), "fwd_ret_bps": np.zeros(n, np.float32)}
    np.savez(folder / "splits.npz", **{f"{part}.{k}": v for part in ("val", "test", "calib") for k, v in split.items()})
    return folder, x


def _spec(cfg, onnx_path, precision="fp32", target="cpu"):
    tgt = TargetConfig(name=target)
    _, _, profile = onnx_io(onnx_path, Family.MARKET_ALERT, cfg.families[Family.MARKET_ALERT])
    opts = (cfg.engines.onnxruntime if tgt.backend == "onnxruntime" else cfg.engines.tensorrt).model_dump()
    return BuildSpec(family="market_alert", version="20261120.abcd1234", precision=precision, target=tgt,
                     onnx=onnx_path, calibration_sha256=None, profile=profile, options=opts)


def test_profile_covers_batch_and_sequence(alert_onnx, smoke_cfg):
    folder, _ = alert_onnx
    inputs, outputs, profile = onnx_io(folder / "model.fp32.onnx", Family.MARKET_ALERT, smoke_cfg.families[Family.MARKET_ALERT])
    fam = smoke_cfg.families[Family.MARKET_ALERT]
    assert profile[INPUT_NAME] == Shapes((1, 30, 16), (fam.opt_batch, fam.window, 16), (fam.max_batch, 120, 16))
    assert inputs[0].shape[2] == 16 and isinstance(inputs[0].shape[0], str)
    assert [o.name for o in outputs] == ["prob"]


def test_cpu_engine_builds_runs_and_manifest_hashes_match(alert_onnx, smoke_cfg, tmp_path):
    folder, x = alert_onnx
    for precision in ("fp32", "fp16"):
        dest = tmp_path / precision
        spec = _spec(smoke_cfg, folder / f"model.{precision}.onnx", precision)
        m = build_engine(OnnxRuntimeBuilder(), spec, dest, *onnx_io(spec.onnx, "market_alert", smoke_cfg.families["market_alert"])[:2],
                         {"hostname": "test"})
        assert sorted(p.name for p in dest.iterdir()) == ["MLmodel", "build.log", "build_result.json", "manifest.json",
                                                          "model.onnx", "model.ort.onnx", "reproduce.sh"]
        assert m.sha256["engine"] == sha256_file(dest / "model.ort.onnx")
        assert m.sha256["onnx"] == sha256_file(folder / f"model.{precision}.onnx")
        assert m.build["options"]["session_options"]["intra_op_num_threads"] == 1
        assert m.backend == "onnxruntime" and m.backend_version == ort.__version__ and m.target == "cpu"
        assert verify_manifest(dest).version == spec.version
        # the saved engine computes what its ONNX computes, at a sequence length other than the trained one
        xs = x[:8, :33]
        with OnnxRuntimeRunner(dest / "model.onnx") as ref, open_engine(dest, m) as eng:
            np.testing.assert_allclose(eng.infer_named({INPUT_NAME: xs})[OUTPUT_NAME],
                                       ref.infer_named({INPUT_NAME: xs})[OUTPUT_NAME], atol=1e-5)
    # tampering is caught by the manifest
    with open(tmp_path / "fp32" / "model.ort.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(EngineBuildError, match="sha256 of model.ort.onnx"):
        verify_manifest(tmp_path / "fp32")


def test_reproduce_sh_rebuilds_the_same_bytes(alert_onnx, smoke_cfg, tmp_path):
    folder, _ = alert_onnx
    spec = _spec(smoke_cfg, folder / "model.fp32.onnx")
    m = build_engine(OnnxRuntimeBuilder(), spec, tmp_path / "e", [], [], {})
    script = tmp_path / "e" / "reproduce.sh"
    assert script.stat().st_mode & stat.S_IXUSR
    copy = shutil.copytree(tmp_path / "e", tmp_path / "again")
    (copy / "model.ort.onnx").unlink()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run(["bash", str(copy / "reproduce.sh")], check=True, env=env, capture_output=True)
    assert sha256_file(copy / "model.ort.onnx") == m.sha256["engine"]


def test_onnx_the_backend_rejects_fails_naming_it_and_leaves_nothing(smoke_cfg, tmp_path):
    bad = tmp_path / "model.fp32.onnx"
    bad.write_bytes(b"this is not a protobuf")
    tgt = TargetConfig(name="cpu")
    spec = BuildSpec(family="fraud_risk", version="v", precision="fp32", target=tgt, onnx=bad,
                     calibration_sha256=None, profile={}, options={"graph_optimization_level": "extended",
                                                                  "intra_op_threads": 1, "build_timeout_s": 60})
    with pytest.raises(EngineBuildError, match=r"fraud_risk/fp32 for cpu .*model.fp32.onnx.*exited with code"):
        build_engine(OnnxRuntimeBuilder(), spec, tmp_path / "engine", [], [], {})
    assert not (tmp_path / "engine").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


# --- TensorRT: the logic, with TensorRT absent ------------------------------------------------------------

def test_precision_switches_per_tensorrt_version():
    assert precision_switches("11.4.1", "int8") == ["--strongly-typed"]
    assert precision_switches("11.0.0", "fp16") == ["--strongly-typed"]
    assert precision_switches("10.13.3.9", "fp32") == []
    assert precision_switches("10.13.3.9", "fp16") == ["--fp16"]
    assert precision_switches("10.8.0", "int8") == ["--int8", "--fp16"]
    with pytest.raises(EngineBuildError, match="TensorRT 8.6.1 is not supported"):
        precision_switches("8.6.1", "fp16")


def test_timing_cache_is_keyed_by_build_arch_and_tensorrt_version(tmp_path):
    a = timing_cache_path(tmp_path, (9, 0), "10.13.0")
    assert a == tmp_path / "timing_cache" / "sm_90" / "tensorrt-10.13.0.cache"
    assert len({a, timing_cache_path(tmp_path, (8, 6), "10.13.0"), timing_cache_path(tmp_path, (9, 0), "11.0.0")}) == 3


@pytest.mark.parametrize("target, trt, cc, expect", [
    (TargetConfig(name="sm_90"), "10.13.0", (9, 0), None),
    (TargetConfig(name="sm_90"), None, (9, 0), "TensorRT is not installed"),
    (TargetConfig(name="sm_90"), "10.13.0", None, "no NVIDIA GPU on this worker"),
    (TargetConfig(name="sm_86"), "10.13.0", (9, 0), "sm_86 engines are built on an sm_86 GPU; this worker has sm_90"),
    (TargetConfig(name="sm_86", hardware_compatibility="ampere_plus"), "10.13.0", (9, 0), None),
    (TargetConfig(name="sm_86", hardware_compatibility="ampere_plus"), "10.13.0", (7, 5), "need an sm_80+ GPU"),
    (TargetConfig(name="sm_100"), "11.4.1", (10, 0), None),
    (TargetConfig(name="sm_90"), "8.6.1", (9, 0), "TensorRT 8.6.1 is not supported"),
])
def test_which_targets_a_worker_can_build(target, trt, cc, expect):
    reason = unavailable_reason(target, trt, "TensorRT is not installed on this worker", cc, "NVML missing")
    assert reason is None if expect is None else expect in reason


FAKE_TRT_BUILD = textwrap.dedent("""
    # Stands in for the TensorRT child where TensorRT is absent: records its argv as the "engine".
    import json, sys
    from pathlib import Path
    args = sys.argv[1:]
    out = args[args.index("--out") + 1]
    Path(out).write_bytes(json.dumps(args).encode())
    Path("build_result.json").write_text(json.dumps({"tensorrt": "10.13.0"}))
""")


@pytest.mark.parametrize("trt, precision, switches", [("10.13.0", "int8", ["--int8", "--fp16"]),
                                                      ("11.4.1", "fp16", ["--strongly-typed"])])
def test_tensorrt_build_layout_command_and_manifest(alert_onnx, smoke_cfg, tmp_path, trt, precision, switches):
    folder, _ = alert_onnx
    fake = tmp_path / "fake_trt_build.py"
    fake.write_text(FAKE_TRT_BUILD)
    builder = TensorRTBuilder(tmp_path / "store", trt=trt, gpu_cc=(9, 0))
    builder.script = [sys.executable, str(fake)]
    spec = _spec(smoke_cfg, folder / "model.fp32.onnx", precision, target="sm_90")
    m = build_engine(builder, spec, tmp_path / "sm_90" / precision, [], [], {"gpu": "H100"})
    dest = tmp_path / "sm_90" / precision
    argv = json.loads((dest / "model.plan").read_text())
    assert argv[argv.index("--onnx") + 1] == "model.onnx" and argv[argv.index("--out") + 1] == "model.plan"
    assert [a for a in argv if a in ("--int8", "--fp16", "--strongly-typed")] == switches
    fam = smoke_cfg.families[Family.MARKET_ALERT]
    assert argv[argv.index("--min") + 1] == "features:1x30x16"
    assert argv[argv.index("--opt") + 1] == f"features:{fam.opt_batch}x{fam.window}x16"
    assert argv[argv.index("--max") + 1] == f"features:{fam.max_batch}x120x16"
    assert argv[argv.index("--workspace-mib") + 1] == str(smoke_cfg.engines.tensorrt.workspace_mib)
    assert argv[argv.index("--timing-cache") + 1] == str(tmp_path / "store" / "timing_cache" / "sm_90" /
                                                          f"tensorrt-{trt}.cache")
    assert (m.target, m.compute_capability, m.backend, m.backend_version) == ("sm_90", "9.0", "tensorrt", trt)
    assert m.sha256["engine"] == sha256_file(dest / "model.plan")
    assert (dest / "reproduce.sh").read_text().count("--onnx model.onnx") == 1


# --- the stage: skipped / required / unknown -------------------------------------------------------------

def _variant_set(folder: Path) -> VariantSet:
    vs = [Variant(precision=p, onnx_uri=str(folder / f"model.{p}.onnx"), sha256=sha256_file(folder / f"model.{p}.onnx"),
                  seconds=0.0, val_metrics={}) for p in ("fp32", "fp16")]
    return VariantSet(family="market_alert", calibration_sha256="c" * 64, calibration_method="max", variants=vs,
                      checkpoint_uri=str(folder / "model.pt"), splits_uri=str(folder / "splits.npz"))


def test_stage_builds_cpu_and_skips_gpu_targets_it_cannot_build(alert_onnx, smoke_cfg, tmp_path, monkeypatch):
    folder, _ = alert_onnx
    p = Plan(date="2026-11-20", lake_dates=[], families=["market_alert"], targets=["cpu", "sm_90"],
             run_uri=str(tmp_path / "run"))
    vs = _variant_set(folder)
    ok = stages.build_engine(smoke_cfg, p, vs, "fp16", "cpu")
    built = verify_manifest(Path(ok.engine_dir))
    assert ok.status is Status.OK and built.precision == "fp16"
    assert ok.engine_dir.endswith("market_alert/engines/cpu/fp16")
    # the serving canary's sample and the engine's own outputs, hashed like every file: every test window (fewer
    # than CANARY_ROWS here), topped up with the validation windows
    assert built.canary.rows == 128 and (built.canary.atol, built.canary.rtol) == (5e-3, 1e-2)
    with np.load(Path(ok.engine_dir) / built.canary.file) as z:
        assert z["inputs"].shape == (128, 40, 16) and z["expected"].shape == (128, 1)
    assert built.files[built.canary.file] == sha256_file(Path(ok.engine_dir) / built.canary.file)
    missing = stages.build_engine(smoke_cfg, p, vs, "int8", "cpu")
    assert missing.status is Status.SKIPPED and "no int8 variant" in missing.reason
    # this machine has no TensorRT: a GPU target is a skip with the reason, never a silent pass
    builder = builder_for("tensorrt", smoke_cfg.engine_store)
    if builder.unavailable_reason(smoke_cfg.declared_target("sm_90")) is None:
        pytest.skip("this worker can build sm_90")
    skip = stages.build_engine(smoke_cfg, p, vs, "fp16", "sm_90")
    assert skip.status is Status.SKIPPED and "TensorRT" in skip.reason and not skip.engine_dir
    assert not (tmp_path / "run" / "market_alert" / "engines" / "sm_90").exists()
    # ... and a failure when that target is required
    required = load_config(profile="smoke", overrides={"engines": {"targets": [
        {"name": "cpu", "required": True}, {"name": "sm_90", "required": True}]}})
    with pytest.raises(TargetUnavailableError, match="required target sm_90 cannot be built on this worker: "):
        stages.build_engine(required, p, vs, "fp16", "sm_90")


def test_unknown_or_malformed_targets_are_config_errors(smoke_cfg):
    with pytest.raises(ConfigError, match="unknown target 'sm_77'.*'cpu', 'sm_90'"):
        smoke_cfg.declared_target("sm_77")
    with pytest.raises(ConfigError, match="target name 'gpu0'"):
        load_config(env={}, overrides={"engines": {"targets": [{"name": "gpu0"}]}})
    with pytest.raises(ConfigError, match="backend onnxruntime is the cpu target's"):
        load_config(env={}, overrides={"engines": {"targets": [{"name": "sm_90", "backend": "onnxruntime"}]}})
    with pytest.raises(ConfigError, match="duplicate target"):
        load_config(env={}, overrides={"engines": {"targets": ["cpu", "cpu"]}})


def test_target_defaults_follow_the_name():
    t = TargetConfig(name="sm_100")
    assert (t.backend, t.queue, t.pool, t.compute_capability) == ("tensorrt", "gpu_sm_100", "engines_sm_100", (10, 0))
    c = TargetConfig(name="cpu")
    assert (c.backend, c.queue, c.compute_capability) == ("onnxruntime", "default", None)


def test_auto_is_declared_at_parse_and_resolved_on_the_worker(monkeypatch):
    import factory_core.availability as av

    calls = []
    monkeypatch.setattr(av, "local_target", lambda: calls.append(1) or av.Probe(None, "no NVIDIA GPU on w1: NVML"))
    cfg = load_config(env={}, overrides={"engines": {"targets": "auto"}})
    shape = [(t.name, t.backend, t.queue) for t in cfg.declared_targets()]
    assert shape == [("cpu", "onnxruntime", "default"), ("auto", "tensorrt", "default")] and not calls  # no probe
    assert cfg.resolve_target("auto") == (None, "targets: auto: no NVIDIA GPU on w1: NVML") and calls
    monkeypatch.setattr(av, "local_target", lambda: av.Probe("sm_89"))
    tgt, reason = cfg.resolve_target("auto")
    assert (tgt.name, tgt.backend, tgt.compute_capability, reason) == ("sm_89", "tensorrt", (8, 9), "")
    assert cfg.resolve_target("cpu") == (cfg.declared_target("cpu"), "")


def test_every_engine_carries_its_signature_for_the_registry_ui(alert_onnx, smoke_cfg, tmp_path):
    """``MLmodel`` in the engine folder (hashed in the manifest) states its tensors as MLflow reads them."""
    from mlflow.models import Model

    folder, _ = alert_onnx
    p = Plan(date="2026-11-20", lake_dates=[], families=["market_alert"], targets=["cpu"],
             run_uri=str(tmp_path / "run"))
    ok = stages.build_engine(smoke_cfg, p, _variant_set(folder), "fp32", "cpu")
    m = verify_manifest(Path(ok.engine_dir))
    assert "MLmodel" in m.files
    sig = Model.load(str(Path(ok.engine_dir) / "MLmodel")).signature
    (x,), (prob,) = sig.inputs.inputs, sig.outputs.inputs
    assert (x.name, str(x.type), x.shape) == ("features", "float32", (-1, -1, 16))  # batch and sequence are dynamic
    assert (prob.name, str(prob.type), prob.shape) == ("prob", "float32", (-1, 1))
