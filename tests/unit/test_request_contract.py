"""``EngineRunner`` enforces the engine's declared input on every request: a request outside it (batch or window
outside the profile, another rank or dtype, NaN/inf values) is refused with a ``BadRequest`` naming the input and
the bound, before any engine runs, and never counts against the engine, the breaker or the failure store; a
non-finite *output* on a valid request is still the engine's fault (``NonFiniteOutput``). A stream of one engine
failure fills the failure store with a few examples, not to its cap.

Real ONNX Runtime CPU engines, built by the factory's own builder from a small market_alert-shaped graph
([batch, seq, 16] → [batch, 1]; profile batch 1..256, seq 30..120 from the smoke config).
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from factory_core.config import Family, TargetConfig, load_config
from model_registry.batching import BatchingRunner
from model_registry.runtime import BadRequest, EngineRunner, FailureStore, NonFiniteOutput
from monitoring.serving import ServingMetrics
from pipelines import faults
from pipelines.engines.base import BuildSpec, build_engine, onnx_io
from pipelines.engines.onnxruntime_builder import OnnxRuntimeBuilder
from pipelines.export import INPUT_NAME, OUTPUT_NAME

LABELS = {"family": "market_alert", "target": "sm_90"}


def _graph(dest: Path, scale: float) -> Path:
    """prob = sigmoid(scale * mean(x over seq and features)): dynamic batch and seq, 16 features."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", "seq", 16])
    y = helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", 1])
    inits = [helper.make_tensor("axes", TensorProto.INT64, [2], [1, 2]),
             helper.make_tensor("scale", TensorProto.FLOAT, [], [scale])]
    nodes = [helper.make_node("ReduceMean", [INPUT_NAME, "axes"], ["m"], keepdims=0),
             helper.make_node("Unsqueeze", ["m", "one"], ["m1"]),
             helper.make_node("Mul", ["m1", "scale"], ["z"]),
             helper.make_node("Sigmoid", ["z"], [OUTPUT_NAME])]
    inits.append(helper.make_tensor("one", TensorProto.INT64, [1], [1]))
    model = helper.make_model(helper.make_graph(nodes, "tiny_alert", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 18)])
    dest.parent.mkdir(parents=True, exist_ok=True)
    onnx.checker.check_model(model)
    onnx.save(model, str(dest))
    return dest


def _build(onnx_path: Path, dest: Path, version: str) -> Path:
    cfg = load_config(profile="smoke", env={})
    fam = Family.MARKET_ALERT
    inputs, outputs, profile = onnx_io(onnx_path, fam, cfg.families[fam])
    spec = BuildSpec(family=fam.value, version=version, precision="fp32", target=TargetConfig(name="cpu"),
                     onnx=onnx_path, calibration_sha256=None, profile=profile,
                     options={"graph_optimization_level": "extended", "intra_op_threads": 1, "build_timeout_s": 120})
    build_engine(OnnxRuntimeBuilder(), spec, dest, inputs, outputs, {"hostname": "test"})
    return dest


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    root = tmp_path_factory.mktemp("contract")
    primary = _build(_graph(root / "a" / "model.onnx", 1.0), root / "primary", "20261201.0000000a")
    fallback = _build(_graph(root / "b" / "model.onnx", 2.0), root / "fallback", "20261201.0000000b")
    nan = shutil.copytree(primary, root / "nan")  # NaN wherever feature 0 exceeds 5 in the window: a rare input
    faults.replace_engine(nan, faults.nan_on_rare_inputs(root / "a" / "model.onnx", root / "nan.onnx", 0, 5.0))
    return {"primary": primary, "fallback": fallback, "nan": nan}


def _x(batch: int = 4, seq: int = 40, dtype=np.float32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(batch, seq, 16)).astype(dtype)


def _bad_requests() -> list[tuple[np.ndarray, str, str]]:
    nan, inf = _x(), _x()
    nan[1, 7, 3] = np.nan
    inf[2, 0, 0] = np.inf
    return [
        (_x(batch=10_240), "batch", "input 'features': batch of 10240 rows is above the profile's max 256 (send at "
                                    "most 256 rows per request)"),
        (_x(batch=0), "batch", "input 'features': batch of 0 rows is below the profile's min 1"),
        (_x(seq=1), "axis", "input 'features': axis 1 (seq) is 1, below the profile's min 30 (the engine serves "
                            "seq 30..120)"),
        (_x(seq=5000, batch=1), "axis", "input 'features': axis 1 (seq) is 5000, above the profile's max 120 (the "
                                        "engine serves seq 30..120)"),
        (_x()[:, 0, :], "rank", "input 'features': rank 2 (shape (4, 16)), but the engine declares rank 3: "
                                "[batch 1..256, seq 30..120, 16] float32"),
        (_x()[..., :15], "shape", "input 'features': axis 2 is 15, but the engine declares 16 (shape (4, 40, 15), declared "
                                 "[batch 1..256, seq 30..120, 16] float32)"),
        (_x(dtype=np.float64), "dtype", "input 'features': dtype float64, but the engine declares float32 "
                                        "(requests are not cast: convert to float32 before sending)"),
        ((_x() * 10).astype(np.int64), "dtype", "input 'features': dtype int64, but the engine declares float32"),
        (_x().astype(np.complex64), "dtype", "input 'features': dtype complex64, but the engine declares float32"),
        (nan, "non-finite", "input 'features': 1 NaN/inf value(s), first at index (1, 7, 3): non-finite inputs are "
                            "refused"),
        (inf, "non-finite", "input 'features': 1 NaN/inf value(s), first at index (2, 0, 0)"),
        (_x().tolist(), "type", "input 'features': expected a numpy array of float32, got list"),
    ]


def test_each_request_outside_the_contract_is_refused_naming_the_input_and_the_bound(engines, tmp_path):
    prom = CollectorRegistry()
    metrics = ServingMetrics(*LABELS.values(), registry=prom)
    store = FailureStore(tmp_path / "failures")
    runner = EngineRunner(engines["primary"], metrics=metrics, fallback=engines["fallback"], failures=store,
                          breaker_failures=3, breaker_cooldown_s=60)
    counts: dict[str, int] = {}
    for _ in range(10):  # many bad requests, from one client: far past breaker_failures
        for x, reason, message in _bad_requests():
            with pytest.raises(BadRequest) as err:
                runner.predict(x)
            assert message in str(err.value) and err.value.reason == reason, str(err.value)
            counts[reason] = counts.get(reason, 0) + 1
    # none of it counted against the engine: breaker closed, no failure kept, no failure or fallback counted
    assert (runner.breaker.state, runner.breaker.consecutive) == (0, 0)
    assert store.list() == [] and store.dropped == store.duplicates == 0
    for series in ("factory_inference_failures_total", "factory_serving_fallback_requests_total",
                   "factory_failures_captured_total"):
        assert prom.get_sample_value(series, LABELS) is None, series
    assert prom.get_sample_value("factory_serving_breaker_state", LABELS) == 0
    for reason, n in counts.items():
        assert prom.get_sample_value("factory_requests_refused_total", {**LABELS, "reason": reason}) == n
    # the next good request is served by the primary engine, at any window the profile allows
    for seq in (30, 40, 120):
        x = _x(seq=seq)
        assert np.array_equal(runner.predict(x), runner._current.engine.infer(x))
    assert runner.predict(_x(batch=256)).shape == (256, 1)


def test_a_non_finite_output_on_a_valid_request_is_still_the_engines_fault(engines, tmp_path):
    prom = CollectorRegistry()
    metrics = ServingMetrics(*LABELS.values(), registry=prom)
    store = FailureStore(tmp_path / "failures")
    runner = EngineRunner(engines["nan"], metrics=metrics, failures=store)  # no fallback: the caller sees it
    x = _x()
    x[0, 3, 0] = 9.0  # a finite, valid input on which this engine overflows
    with pytest.raises(NonFiniteOutput, match="1 non-finite outputs from 20261201.0000000a"):
        runner.predict(x)
    assert prom.get_sample_value("factory_inference_failures_total", LABELS) == 1
    assert prom.get_sample_value("factory_requests_refused_total", {**LABELS, "reason": "non-finite"}) is None
    (rec,) = store.list()
    assert "NonFiniteOutput" in rec["error"]
    # with a fallback, the same output opens the breaker as before (the engine's fault)
    runner = EngineRunner(engines["nan"], fallback=engines["fallback"], breaker_failures=3, breaker_cooldown_s=60)
    for _ in range(3):
        runner.predict(x)
    assert runner.breaker.state == 1


def test_a_stream_of_one_engine_failure_keeps_a_few_examples_not_the_whole_store(engines, tmp_path):
    prom = CollectorRegistry()
    metrics = ServingMetrics(*LABELS.values(), registry=prom)
    store = FailureStore(tmp_path / "failures", max_items=1000, per_kind=20)
    runner = EngineRunner(engines["nan"], metrics=metrics, failures=store)
    x = _x()
    x[:, 0, 0] = 9.0
    for _ in range(300):
        with pytest.raises(NonFiniteOutput):
            runner.predict(x)
    assert len(store.list()) == 20 and store.duplicates == 280 and store.dropped == 0
    assert prom.get_sample_value("factory_failures_captured_total", LABELS) == 20
    assert prom.get_sample_value("factory_failures_duplicate_total", LABELS) == 280
    assert prom.get_sample_value("factory_inference_failures_total", LABELS) == 300
    # another error (or another version) still gets its own examples
    assert store.offer(x, runner.version, "RuntimeError: CUDA error (stand-in)")[1] == "saved"
    assert store.offer(x, "20261202.0000000c", "NonFiniteOutput: 4 non-finite outputs")[1] == "saved"


def test_through_the_batcher_a_bad_request_fails_only_its_own_caller(engines):
    runner = EngineRunner(engines["primary"], fallback=engines["fallback"], breaker_failures=3)
    front = BatchingRunner(runner, window_ms=2.0)
    good, bad = _x(batch=1), _x(batch=1)
    bad[0, 0, 0] = np.nan
    want = runner._current.engine.infer(good)
    served, refused, wrong = [0], [0], []

    def client(x, n):
        for _ in range(n):
            try:
                out = front.predict(x)
                if not np.array_equal(out, want):
                    wrong.append(out)
                served[0] += 1
            except BadRequest:
                refused[0] += 1

    threads = [threading.Thread(target=client, args=(good, 50)) for _ in range(4)]
    threads += [threading.Thread(target=client, args=(bad, 50)),
                threading.Thread(target=client, args=(good.astype(np.float64), 50))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    front.close()
    assert served[0] == 200 and refused[0] == 100 and not wrong
    assert (runner.breaker.state, runner.breaker.consecutive) == (0, 0)
