"""Gates reject planted regressions with the right reason, pass healthy candidates, and time correctly."""

from __future__ import annotations

import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from pipelines.benchmark import LatencyStats, OnnxRuntimeRunner, benchmark_runner, time_calls
from pipelines.config import Family, load_config
from pipelines.datasets import Split
from pipelines.export import INPUT_NAME, OUTPUT_NAME
from pipelines.gates import (Candidate, Check, accuracy_verdict, latency_checks, onnx_runner, parity_check, select,
                             tail_mask)
from pipelines.quantize import onnx_fp32_to_int8
from pipelines.records import Status
from pipelines.train import predict

CFG = load_config(profile="smoke", env={})
PDIR = CFG.gates.families[Family.PRICE_DIRECTION]


@pytest.fixture(scope="module")
def pdir(tmp_path_factory, export_small_model):
    """A price_direction model, its FP32 ONNX, and a test split whose labels and returns follow the model."""
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(1400, 64, 16)) * rng.uniform(0.5, 3, size=16) + 2).astype(np.float32)
    folder = tmp_path_factory.mktemp("pdir")
    model, src = export_small_model(Family.PRICE_DIRECTION, x, folder / "model.fp32.onnx", fit_norm=True)
    test_x = x[800:]
    ref = predict(model, test_x)
    p_up = ref[:, 1]
    fwd = (p_up - np.median(p_up)) * 400 + rng.normal(0, 1, len(p_up))
    split = Split(x=test_x, y=(fwd > 0).astype(np.float32), ts=np.arange(len(p_up), dtype=np.int64) * 10**9,
                  regime=np.zeros(len(p_up), np.int64), anomaly=np.zeros(len(p_up), bool), fwd_ret_bps=fwd)
    return folder, src, x[:800], split, ref


def _run(path, x):
    return OnnxRuntimeRunner(path).infer(x)


def test_healthy_int8_passes_and_degenerate_calibration_is_rejected(pdir):
    folder, src, train_x, split, ref = pdir
    onnx_fp32_to_int8(src, folder / "good.int8.onnx", train_x[:400], "max", folder / "cache")
    good = accuracy_verdict(Family.PRICE_DIRECTION, "int8", split, ref, _run(folder / "good.int8.onnx", split.x),
                            PDIR, 0.5)
    assert good.status is Status.OK, good.reasons
    degenerate = np.full_like(train_x[:400], 2.0)  # one constant window: activation ranges of nothing
    onnx_fp32_to_int8(src, folder / "bad.int8.onnx", degenerate, "max", folder / "cache")
    bad = accuracy_verdict(Family.PRICE_DIRECTION, "int8", split, ref, _run(folder / "bad.int8.onnx", split.x),
                           PDIR, 0.5)
    assert bad.status is Status.REJECTED
    failed = {c.name for c in bad.checks if not c.ok}
    assert "auc_drop" in failed and any("auc dropped" in r for r in bad.reasons)


def test_nan_outputs_are_rejected_not_raised(pdir):
    _, _, _, split, ref = pdir
    prob = ref.copy()
    prob[7, 1] = np.nan
    v = accuracy_verdict(Family.PRICE_DIRECTION, "fp16", split, ref, prob, PDIR, 0.5)
    assert v.status is Status.REJECTED and v.reasons == ["1 NaN/inf outputs on the test split"]


def test_tail_collapse_is_rejected_for_the_tail(pdir):
    _, _, _, split, ref = pdir
    tail = tail_mask(Family.PRICE_DIRECTION, split)
    assert 0.03 < tail.mean() < 0.08  # top 5 % of |forward return|
    collapsed = ref.copy()
    collapsed[tail] = 0.5  # confident on calm markets, clueless on extreme ones
    v = accuracy_verdict(Family.PRICE_DIRECTION, "int8", split, ref, collapsed, PDIR, 0.5)
    assert v.status is Status.REJECTED
    assert "tail_brier" in {c.name for c in v.checks if not c.ok}
    assert any("extreme-move windows" in r for r in v.reasons)


def _nan_engine(path):
    """A graph with the family's I/O names that emits NaN."""
    nan = helper.make_tensor("nan", TensorProto.FLOAT, [1], [float("nan")])
    nodes = [helper.make_node("ReduceMean", [INPUT_NAME], ["m"], axes=[1, 2], keepdims=0),
             helper.make_node("Unsqueeze", ["m", "ax"], ["m2"]),
             helper.make_node("Mul", ["m2", "nan"], ["z"]),
             helper.make_node("Concat", ["z", "z"], [OUTPUT_NAME], axis=1)]
    ax = helper.make_tensor("ax", TensorProto.INT64, [1], [1])
    graph = helper.make_graph(nodes, "nan", [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT,
                                                                           ["batch", 64, 16])],
                              [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", 2])],
                              initializer=[nan, ax])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_engine_parity_passes_for_itself_and_rejects_a_nan_engine(pdir, tmp_path):
    folder, src, _, split, _ = pdir
    batches = [split.x[:64], split.x[64:128]]
    same = parity_check(onnx_runner(src), onnx_runner(src), batches, 1e-4, 1e-3)
    assert same.ok and same.value == 0.0
    nan = parity_check(onnx_runner(_nan_engine(tmp_path / "nan.onnx")), onnx_runner(src), batches, 1e-4, 1e-3)
    assert not nan.ok and "NaN/inf" in nan.detail


class _Slowed:
    """A real runner with a planted delay."""

    def __init__(self, inner, delay_s):
        self.inner, self.delay_s = inner, delay_s
        self.name, self.info = "slowed", inner.info

    def infer(self, x):
        time.sleep(self.delay_s)
        return self.inner.infer(x)

    def latencies(self, x, warmup, iters, max_seconds):
        return time_calls(lambda: self.infer(x), warmup, iters, max_seconds)


def test_slowed_runner_fails_the_regression_gate_and_noise_passes(pdir):
    _, src, _, split, _ = pdir
    champ = OnnxRuntimeRunner(src)
    args = dict(opt_batch=8, warmup=5, iters=40, max_seconds=2.0)
    base = benchmark_runner(champ, split.x[:16], **args)["batch1"]["p99_ms"]
    slow = benchmark_runner(_Slowed(champ, 0.02), split.x[:16], **args)["batch1"]
    assert slow["p50_ms"] >= 20.0  # the planted delay shows in every statistic
    bad = latency_checks(slow["p99_ms"], budget_ms=10_000, champion_p99_ms=base, max_regression=0.10,
                         noise_floor_ms=0.05)
    assert [c.name for c in bad if not c.ok] == ["p99_vs_champion"]
    over = latency_checks(slow["p99_ms"], budget_ms=5.0, champion_p99_ms=None, max_regression=0.10)
    assert [c.name for c in over if not c.ok] == ["p99_budget"]
    # within +10 %, or within the absolute noise floor, passes
    assert all(c.ok for c in latency_checks(1.09, 50, 1.0, 0.10, noise_floor_ms=0.05))
    assert all(c.ok for c in latency_checks(0.14, 50, 0.10, 0.10, noise_floor_ms=0.05))
    assert not all(c.ok for c in latency_checks(0.16, 50, 0.10, 0.10, noise_floor_ms=0.05))


def test_harness_statistics_on_a_synthetic_clock():
    stamps, t = [], 0
    for ms in range(1, 101):  # call k takes k ms, with 1 ms between calls
        stamps += [t, t + ms * 1_000_000]
        t += (ms + 1) * 1_000_000
    ticks = iter(stamps)
    samples = time_calls(lambda: None, warmup=3, iters=100, max_seconds=10, clock=lambda: next(ticks))
    assert samples == [ms * 1_000_000 for ms in range(1, 101)]
    s = LatencyStats.from_samples(4, samples)
    assert (s.iters, s.p50_ms, s.max_ms, s.mean_ms) == (100, 50.5, 100.0, 50.5)
    assert s.p90_ms == pytest.approx(90.1) and s.p99_ms == pytest.approx(99.01)
    assert s.throughput == pytest.approx(4 / 0.0505)
    # the time cap stops early (but never below 20 samples)
    ticks = iter(range(0, 10**12, 500_000_000))
    assert len(time_calls(lambda: None, 0, 1000, max_seconds=1.0, clock=lambda: next(ticks))) == 20


def _cand(precision, p99, ok=True):
    checks = [Check(name="accuracy", ok=ok, detail="accuracy gate: auc dropped 0.02")]
    return Candidate(precision=precision, engine_dir="", version="v", status=Status.OK if ok else Status.REJECTED,
                     checks=checks, p99_ms=p99)


def test_selection_lowest_p99_ties_to_higher_precision_and_says_why_others_lost():
    winner, out = select([_cand("fp32", 1.00), _cand("fp16", 0.50), _cand("int8", 0.30, ok=False)], 0.03)
    assert winner.precision == "fp16"
    why = {c.precision: c.outcome for c in out}
    assert why["fp32"].startswith("slower: p99 1.000 ms vs fp16 0.500 ms")
    assert why["int8"] == "rejected: accuracy gate: auc dropped 0.02"
    # INT8 slower than FP32 on this target: selection sees it
    winner, _ = select([_cand("fp32", 0.40), _cand("int8", 0.55)], 0.03)
    assert winner.precision == "fp32"
    winner, out = select([_cand("fp32", 0.41), _cand("int8", 0.40)], 0.03)
    assert winner.precision == "fp32" and "tie" in {c.precision: c.outcome for c in out}["int8"]
    assert select([_cand("int8", 0.1, ok=False)], 0.03)[0] is None
