"""Micro-batching returns each caller its own rows, in order, never exceeds the profile, and runs a lone request
when its window closes."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from model_registry.batching import BatchingRunner


class _Runner:
    """A stand-in engine: row i of the output is a function of row i of the input alone; records batch shapes."""

    def __init__(self, opt=8, max_=16, fail=False):
        self.manifest = SimpleNamespace(inputs=[SimpleNamespace(profile={"min": [1, 3], "opt": [opt, 3],
                                                                         "max": [max_, 3]})])
        self.shapes, self.fail = [], fail

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


def test_a_request_larger_than_the_profile_runs_in_chunks_and_shapes_never_mix():
    inner = _Runner(opt=8, max_=16)
    br = BatchingRunner(inner, window_ms=5.0, max_batch=64)  # asked for 64: the profile caps it at 16
    assert br.max_batch == 16
    x = np.arange(40 * 3, dtype=np.float32).reshape(40, 3)
    assert np.array_equal(br.predict(x), x.sum(axis=1, keepdims=True) * 2)
    assert [s[0] for s in inner.shapes] == [16, 16, 8]
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
