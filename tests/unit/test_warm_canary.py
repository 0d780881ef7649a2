"""One runner contract and the warm canary.

The runners read their tensor names from the session (no hard-coded ``prob``); the canary sample is recorded and
checked through the same runner (bit for bit); the pre-started canary refuses every bad version of today (sha256,
contract, load, non-finite, recorded-sample disagreement, crash, hang) while the live engine serves under client
threads with no failed request, and it is restarted after a crash or a hang.

A real fraud_risk-shaped CPU engine, built by the factory's own builder with a canary sample."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from factory_core.config import load_config
from factory_core.contracts import MANIFEST
from factory_core.fsutil import sha256_file
from model_registry.canary import (
    SwapRefused,
    WarmCanary,
    check_engine,
    preflight,
    read_manifest,
)
from model_registry.runners import (
    OnnxRuntimeRunner,
    declared_mismatch,
    infer_batched,
    open_engine,
)
from model_registry.runtime import EngineRunner
from pipelines import faults
from pipelines.gates import parity_check

from .test_canary_sample import _engine, _graph


def _planted(folder: Path) -> list[str]:
    """The warm child's check, with a crash or a hang planted by the folder's name (module level: picklable)."""
    if folder.name == "segfault":
        os.kill(os.getpid(), signal.SIGSEGV)
    if folder.name == "hang":
        time.sleep(120)
    return check_engine(folder)


def _renamed(dest: Path, output: str) -> Path:
    """The tiny fraud graph with its input called ``x_in`` and its output ``output``."""
    import onnx

    model = onnx.load(str(_graph(dest)))
    old_in, old_out = model.graph.input[0].name, model.graph.output[0].name
    for node in model.graph.node:
        node.input[:] = ["x_in" if n == old_in else n for n in node.input]
        node.output[:] = [output if n == old_out else n for n in node.output]
    model.graph.input[0].name, model.graph.output[0].name = "x_in", output
    onnx.save(model, str(dest))
    return dest


def _rehash(folder: Path, name: str) -> None:
    m = json.loads((folder / MANIFEST).read_text())
    m["files"][name] = sha256_file(folder / name)
    (folder / MANIFEST).write_text(json.dumps(m, indent=2))


def _copy(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    root = tmp_path_factory.mktemp("warm")
    sample = np.random.default_rng(0).normal(0, 2, size=(300, 11)).astype(np.float32)
    return _engine(load_config(profile="smoke", env={}), _graph(root / "model.onnx"), root / "good", sample)


def test_runners_read_tensor_names_from_the_session_and_polygraphy_compares_them(tmp_path):
    path = _renamed(tmp_path / "renamed.onnx", "score")
    x = np.random.default_rng(1).normal(size=(5, 11)).astype(np.float32)
    with OnnxRuntimeRunner(path) as r:
        assert [(t.name, t.dtype) for t in r.inputs()] == [("x_in", np.float32)]
        assert [t.name for t in r.outputs()] == ["score"]
        out = r.infer(x)
        assert out.shape == (5, 1) and np.array_equal(r.infer_named({"x_in": x})["score"], out)
    # Polygraphy's comparator runs our runners (the feed named after the reference's own input)
    same = parity_check(OnnxRuntimeRunner(path), OnnxRuntimeRunner(path), [x], 1e-6, 1e-6)
    assert same.ok and same.value == 0.0


def test_the_canary_sample_is_recorded_and_checked_through_the_same_runner(good):
    m = read_manifest(good)
    with np.load(good / m.canary.file) as z:
        x, expected = z["inputs"], z["expected"]
    with open_engine(good, m) as runner:  # what check_engine and serving run
        assert declared_mismatch(runner, m) is None
        again = infer_batched(runner, x, int(m.inputs[0].profile["max"][0]))
    assert np.array_equal(again, expected)  # bit for bit: one runner, one set of options, one chunking
    assert check_engine(good)[-1].startswith(f"recorded sample of {len(x)} rows")


def test_the_warm_canary_refuses_every_bad_version_while_the_live_engine_serves(good, tmp_path):
    truncated = _copy(good, tmp_path / "truncated")  # bytes no longer match the manifest
    engine = truncated / "model.ort.onnx"
    engine.write_bytes(engine.read_bytes()[: engine.stat().st_size // 2])
    broken = _copy(good, tmp_path / "broken")  # consistent manifest, an engine that cannot load
    faults.replace_engine(broken, engine)
    renamed = _copy(good, tmp_path / "renamed")  # the engine's own output is not the manifest's
    faults.replace_engine(renamed, _renamed(tmp_path / "score.onnx", "score"))
    nan = _copy(good, tmp_path / "nan")
    faults.replace_engine(nan, faults.nan_on_rare_inputs(good / "model.onnx", tmp_path / "nan.onnx", 0, -1e9))
    disagrees = _copy(good, tmp_path / "disagrees")
    with np.load(disagrees / "canary.npz") as z:
        inputs, expected = z["inputs"], z["expected"]
    np.savez(disagrees / "canary.npz", inputs=inputs, expected=expected + 0.2)
    _rehash(disagrees, "canary.npz")
    segfault, hang = _copy(good, tmp_path / "segfault"), _copy(good, tmp_path / "hang")

    canary = WarmCanary(check=_planted)
    runner = EngineRunner(good, canary_timeout_s=60, warm_canary=canary)
    x = np.random.default_rng(0).normal(size=(4, 11)).astype(np.float32)
    stop, served, failed = threading.Event(), [0], [0]

    def client():
        while not stop.is_set():
            try:
                assert np.isfinite(runner.predict(x)).all()
                served[0] += 1
            except Exception:  # noqa: BLE001 - any failed request counts
                failed[0] += 1

    threads = [threading.Thread(target=client) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        pid = canary.check(good)["ok"] and canary.pid  # started and answering
        cases = [(truncated, "sha256"), (broken, "load"), (renamed, "contract"), (nan, "non-finite"),
                 (disagrees, "disagrees"), (segfault, "crash"), (good, None), (hang, "hang"), (good, None)]
        for folder, kind in cases:
            runner.canary_timeout_s = 3 if kind == "hang" else 60
            if kind is None:
                runner.swap(folder)  # a good version passes, in the child restarted after the crash or the hang
                continue
            with pytest.raises(SwapRefused) as err:
                runner.swap(folder)
            assert err.value.kind == kind, (folder.name, err.value)
            if kind == "crash":
                assert "SIGSEGV" in err.value.reason
    finally:
        stop.set()
        for t in threads:
            t.join()
        canary.close()
    assert failed[0] == 0 and served[0] > 0
    assert canary.restarts == 2 and canary.pid is None and pid
    assert [s["canary_seconds"] > 0 for s in runner.swaps] == [True, True]


def test_warm_and_cold_canaries_give_the_same_verdicts(good, tmp_path):
    nan = _copy(good, tmp_path / "nan")
    faults.replace_engine(nan, faults.nan_on_rare_inputs(good / "model.onnx", tmp_path / "nan.onnx", 0, -1e9))
    live = read_manifest(good)
    canary = WarmCanary()
    try:
        assert preflight(good, live, warm=canary).checks == preflight(good, live).checks
        for warm in (canary, None):
            with pytest.raises(SwapRefused) as err:
                preflight(nan, live, warm=warm)
            assert err.value.kind == "non-finite"
    finally:
        canary.close()
