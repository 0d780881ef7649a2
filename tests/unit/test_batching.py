"""Micro-batching returns each caller its own rows, in order, never exceeds the profile, runs a lone request
when its window closes, and refuses a bad request to its own caller only."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from factory_core.contracts import TensorInfo
from model_registry.batching import BatchingRunner
from model_registry.runtime import BadRequest, RequestContract


class _Runner:
    """A stand-in engine: row i of the output is a function of row i of the input alone; records batch shapes.
    Its requests are checked by the real :class:`RequestContract` of its declared input, as ``EngineRunner``'s."""

    def __init__(self, opt=8, max_=16, fail=False):
        self.manifest = SimpleNamespace(inputs=[TensorInfo(name="features", dtype="float32", shape=["batch", "?"],
                                                           profile={"min": [1, 3], "opt": [opt, 3],
                                                                    "max": [max_, 5]})])
        self.shapes, self.fail = [], fail

    def check_request(self, x):
        return RequestContract.of(self.manifest.inputs[0]).check(x)

    def predict(self, x):
        self.shapes.append(x.shape)
        if self.fail:
            raise RuntimeError("engine failed (stand-in)")
        time.sleep(0.0005)
        return x.reshape(len(x), -1).sum(axis=1, keepdims=True) * 2


def test_every_caller_gets_its_own_rows_in_order_within_the_profile():
    inner = _Runner(opt=8, max_=16)
    br = BatchingRunner(inner, window_ms=2.0)
    results, errors = {}, []

    def client(i):
        x = np.full((1 + i % 3, 3), float(i), np.float32)
        x[:, 0] += np.arange(len(x))  # rows differ: order matters
        try:
            results[i] = (x, br.predict(x))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    br.close()
    assert not errors and len(results) == 64
    for x, out in results.values():
        assert np.array_equal(out, x.sum(axis=1, keepdims=True) * 2)
    assert max(s[0] for s in inner.shapes) <= 8 and max(br.batches) <= 8  # the opt batch, within the profile
    assert len(inner.shapes) < 64  # requests were batched together


def test_a_lone_request_runs_when_its_window_closes():
    br = BatchingRunner(_Runner(), window_ms=20.0)
    t0 = time.perf_counter()
    out = br.predict(np.ones((1, 3), np.float32))
    waited = time.perf_counter() - t0
    br.close()
    assert out.shape == (1, 1) and 0.019 <= waited < 0.5


def test_a_request_larger_than_the_batch_runs_in_chunks_and_shapes_never_mix():
    inner = _Runner(opt=8, max_=16)
    br = BatchingRunner(inner, window_ms=5.0, max_batch=64)  # asked for 64: the profile caps it at 16
    assert br.max_batch == 16
    with pytest.raises(BadRequest, match="batch of 40 rows is above the profile's max 16"):
        br.predict(np.zeros((40, 3), np.float32))  # beyond the engine's contract: refused, not chunked
    br.close()
    br = BatchingRunner(inner, window_ms=5.0, max_batch=6)  # within the profile, above the batch: chunks
    x = np.arange(16 * 3, dtype=np.float32).reshape(16, 3)
    assert np.array_equal(br.predict(x), x.sum(axis=1, keepdims=True) * 2)
    assert [s[0] for s in inner.shapes] == [6, 6, 4]
    other = threading.Thread(target=br.predict, args=(np.ones((2, 5), np.float32),))
    other.start()
    br.predict(np.ones((2, 3), np.float32))
    other.join()
    br.close()
    assert all(s[1] in (3, 5) for s in inner.shapes) and (2, 5) in inner.shapes


def test_a_failed_batch_fails_each_of_its_callers():
    br = BatchingRunner(_Runner(fail=True), window_ms=2.0)
    with pytest.raises(RuntimeError, match="stand-in"):
        br.predict(np.ones((1, 3), np.float32))
    br.close()


def test_a_bad_request_fails_only_its_caller_and_is_never_cast():
    inner = _Runner(opt=8, max_=16)
    br = BatchingRunner(inner, window_ms=20.0)
    good = np.ones((2, 3), np.float32)
    results = []
    t = threading.Thread(target=lambda: results.append(br.predict(good)))
    t.start()
    for bad, match in ((good.astype(np.float64), "dtype float64, but the engine declares float32"),
                       (np.full((2, 3), np.nan, np.float32), "6 NaN/inf value"),
                       (np.ones((2, 3, 1), np.float32), "rank 3")):
        with pytest.raises(BadRequest, match=match):
            br.predict(bad)  # refused in this thread, while the good request waits in its window
    t.join()
    br.close()
    assert len(results) == 1 and np.array_equal(results[0], good.sum(axis=1, keepdims=True) * 2)
    assert inner.shapes == [(2, 3)]  # only the good request reached the engine
