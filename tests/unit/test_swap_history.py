"""Nothing kept per swap or per request grows with a long-lived serving process: ``EngineRunner.swaps`` holds the
newest ``swap_history`` swaps while ``swaps_total`` counts them all, and the failure store forgets a (version, error
type) whose window is over.

A real fraud_risk-shaped CPU engine built by the factory's own builder, in two versions."""

from __future__ import annotations

import json
import shutil
import time
from collections import deque

import numpy as np
import pytest

from factory_core.config import load_config
from factory_core.contracts import MANIFEST
from model_registry.runtime import SWAP_HISTORY, EngineRunner, FailureStore

from .test_canary_sample import _engine, _graph


@pytest.fixture(scope="module")
def versions(tmp_path_factory):
    root = tmp_path_factory.mktemp("history")
    sample = np.random.default_rng(0).normal(0, 2, size=(64, 11)).astype(np.float32)
    v1 = _engine(load_config(profile="smoke", env={}), _graph(root / "model.onnx"), root / "v1", sample)
    v2 = shutil.copytree(v1, root / "v2")
    m = json.loads((v2 / MANIFEST).read_text())
    m["version"] = "20261201.00000002"  # the manifest is not among its own hashed files
    (v2 / MANIFEST).write_text(json.dumps(m, indent=2))
    return v1, v2


def test_the_swap_history_holds_the_bound_and_the_total_counts_every_swap(versions):
    v1, v2 = versions
    runner = EngineRunner(v1, canary=False, swap_history=3)
    for i in range(7):
        runner.swap(v2 if i % 2 == 0 else v1)
    assert isinstance(runner.swaps, deque) and len(runner.swaps) == 3 and runner.swaps_total == 7
    # the newest three, oldest first: swaps 5, 6 and 7 (v1→v2, v2→v1, v1→v2)
    assert [(s["from"], s["to"]) for s in runner.swaps] == [
        ("20261201.00000001", "20261201.00000002"), ("20261201.00000002", "20261201.00000001"),
        ("20261201.00000001", "20261201.00000002")]
    assert runner.swaps[-1]["canary_seconds"] is None and runner.version == "20261201.00000002"
    assert EngineRunner(v1, canary=False).swaps.maxlen == SWAP_HISTORY


def test_a_swap_history_below_one_is_refused(versions):
    with pytest.raises(ValueError, match="swap_history >= 1, got 0"):
        EngineRunner(versions[0], canary=False, swap_history=0)


def test_the_failure_store_forgets_versions_whose_window_is_over(tmp_path):
    store = FailureStore(tmp_path, kind_window_s=0.05)
    x = np.zeros((1, 11), np.float32)
    for v in range(5):
        assert store.save(x, f"2026120{v}.00000001", "NonFiniteOutput: 1 non-finite outputs") is not None
        time.sleep(0.06)  # past the window: the next version's first failure forgets this one's
    assert list(store._kinds) == [("20261204.00000001", "NonFiniteOutput")]
    assert len(store.list()) == 5  # what was saved stays on disk for replay
