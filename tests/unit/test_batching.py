"""Dynamic batching returns each caller its own rows, in order, never exceeds the profile, runs a request that finds
the engine free at once in its caller's thread (no window), batches what queues while the engine is busy, waits
the window only for a nearly full batch, refuses a bad request to its own caller only, enforces its queue policy
(depth, deadline) with named, counted errors, refuses to split a batch whose row count came back wrong, and keeps
bounded histories. No timed asserts on speed: that is ``benchmarks/serving_batching.py``."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from factory_core.contracts import TensorInfo
from factory_core.errors import BadInput, FactoryError, is_final
from model_registry.batching import (BatcherClosed, BatchingRunner, DeadlineExceeded, QueueFull, RequestRejected,
                                     RowCountMismatch)
from model_registry.runtime import BadRequest, RequestContract

WAIT_S = 10.0  # the most a test waits for threads to reach a state: a bound against hanging, never a measurement


class _Runner:
    """A stand-in engine: row i of the output is a function of row i of the input alone; records batch shapes,
    the thread and the time of each call. Its requests are checked by the real :class:`RequestContract` of its
    declared input, as ``EngineRunner``'s. ``hold``: the engine blocks in its first call until ``release()``
    (``entered`` is set once it is in), so tests can queue requests behind a busy engine without timing.
    ``rows_off``: the engine returns that many rows fewer than it was given."""

    def __init__(self, opt=8, max_=16, fail=False, hold=False, rows_off=0, profile=True):
        prof = {"min": [1, 3], "opt": [opt, 3], "max": [max_, 5]} if profile else None
        self.manifest = SimpleNamespace(inputs=[TensorInfo(name="features", dtype="float32", shape=["batch", "?"],
                                                           profile=prof)])
        self.shapes, self.calls, self.fail, self.rows_off = [], [], fail, rows_off
        self.entered, self._go = threading.Event(), threading.Event()
        if not hold:
            self._go.set()

    def release(self):
        self._go.set()

    def check_request(self, x):
        return RequestContract.of(self.manifest.inputs[0]).check(x)

    def predict(self, x):
        self.shapes.append(x.shape)
        self.calls.append((threading.current_thread().name, time.perf_counter()))
        self.entered.set()
        assert self._go.wait(WAIT_S)
        if self.fail:
            raise RuntimeError("engine failed (stand-in)")
        time.sleep(0.0005)
        out = x.reshape(len(x), -1).sum(axis=1, keepdims=True) * 2
        return out[:len(out) - self.rows_off]


class _SelfChecking(_Runner):
    """A runner whose predict checks (and counts) each request itself, as EngineRunner's does."""

    checks_requests = True

    def __init__(self, **kw):
        super().__init__(**kw)
        self.checked = 0

    def check_request(self, x):
        self.checked += 1
        return super().check_request(x)

    def predict(self, x):
        return super().predict(self.check_request(x))


def _want(x):
    return x.reshape(len(x), -1).sum(axis=1, keepdims=True) * 2


def _rows(i, n=1, width=3):
    x = np.full((n, width), float(i), np.float32)
    x[:, 0] += np.arange(n)  # rows differ: order matters
    return x


def _submit(br, x, results, key, **kw):
    """``br.predict(x)`` in a new thread; its output (or exception) lands in ``results[key]``."""
    def run():
        try:
            results[key] = br.predict(x, **kw)
        except Exception as exc:  # noqa: BLE001 - the test looks at it
            results[key] = exc

    t = threading.Thread(target=run, name=f"client-{key}")
    t.start()
    return t


def _until(cond, what):
    end = time.monotonic() + WAIT_S
    while not cond():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.001)


def _busy(inner, br):
    """A first request that holds the (held) engine: returns its thread, once the engine is in its call."""
    results = {}
    t = _submit(br, _rows(0), results, "first")
    assert inner.entered.wait(WAIT_S)
    return t, results


def test_every_caller_gets_its_own_rows_in_order_within_the_profile():
    inner = _Runner(opt=8, max_=16, hold=True)
    br = BatchingRunner(inner)
    first, results = _busy(inner, br)
    threads = [_submit(br, _rows(i, 1 + i % 3), results, i) for i in range(1, 64)]
    _until(lambda: br.counters()["queued"] == 63, "63 requests queued behind the busy engine")
    inner.release()
    for t in [first, *threads]:
        t.join(WAIT_S)
    assert len(results) == 64 and not [r for r in results.values() if isinstance(r, Exception)]
    for i in range(1, 64):
        assert np.array_equal(results[i], _want(_rows(i, 1 + i % 3)))
    assert max(s[0] for s in inner.shapes) <= 8 and max(br.batches) <= 8  # the opt batch, within the profile
    assert len(inner.shapes) < 30  # the 63 queued requests (126 rows) went in batches of up to 8 rows
    c = br.counters()
    assert (c["requests"], c["ran_at_once"], c["queued"], c["rows"]) == (64, 1, 63, 1 + sum(1 + i % 3
                                                                                             for i in range(1, 64)))


def test_a_request_that_finds_the_engine_free_runs_at_once_in_its_callers_thread():
    """An idle engine costs no latency: the request runs in the caller's own thread, without the window (here
    0.5 s, so a batcher that waited it could not pass by chance)."""
    inner = _Runner()
    br = BatchingRunner(inner, window_ms=500.0)
    for i in range(3):
        t0 = time.perf_counter()
        out = br.predict(_rows(i))
        name, called = inner.calls[-1]
        assert name == threading.current_thread().name  # no hand-off to another thread
        assert called - t0 < 0.25  # the engine was called long before a 0.5 s window could have closed
        assert np.array_equal(out, _want(_rows(i)))
    c = br.counters()
    assert (c["requests"], c["ran_at_once"], c["queued"], c["batches"], c["lingered"]) == (3, 3, 0, 3, 0)


def test_while_the_engine_is_busy_requests_accumulate_and_go_as_one_batch_when_it_frees():
    inner = _Runner(opt=8, max_=16, hold=True)
    br = BatchingRunner(inner, window_ms=0.0)
    first, results = _busy(inner, br)
    threads = [_submit(br, _rows(i), results, i) for i in range(1, 11)]
    _until(lambda: br.counters()["queued"] == 10, "10 requests queued")
    inner.release()
    for t in [first, *threads]:
        t.join(WAIT_S)
    assert [s[0] for s in inner.shapes] == [1, 8, 2]  # capped at max_batch, oldest first
    assert all(np.array_equal(results[i], _want(_rows(i))) for i in range(1, 11))
    batch_threads = {name for name, _ in inner.calls}
    assert batch_threads <= {t.name for t in [first, *threads]}  # each batch ran in one of its callers' threads


def test_a_nearly_full_batch_waits_up_to_the_window_for_the_rest_and_a_smaller_one_does_not():
    inner = _Runner(opt=8, max_=16, hold=True)
    br = BatchingRunner(inner, window_ms=5_000.0)  # 3/4 of 8 = 6 rows make a batch nearly full
    first, results = _busy(inner, br)
    threads = [_submit(br, _rows(i), results, i) for i in range(1, 7)]
    _until(lambda: br.counters()["queued"] == 6, "6 requests queued")
    inner.release()
    _until(lambda: br.counters()["lingered"] == 1, "the batch of 6 to wait for the rest")
    threads += [_submit(br, _rows(i), results, i) for i in (7, 8)]  # they arrive while it waits
    for t in [first, *threads]:
        t.join(WAIT_S)
    assert [s[0] for s in inner.shapes] == [1, 8]  # topped up to max_batch, then it went at once
    assert all(np.array_equal(results[i], _want(_rows(i))) for i in range(1, 9))

    inner = _Runner(opt=8, max_=16, hold=True)
    br = BatchingRunner(inner, window_ms=5_000.0)
    first, results = _busy(inner, br)
    threads = [_submit(br, _rows(i), results, i) for i in range(1, 6)]  # 5 rows: not nearly full
    _until(lambda: br.counters()["queued"] == 5, "5 requests queued")
    inner.release()
    for t in [first, *threads]:
        t.join(WAIT_S)
    assert all(not t.is_alive() for t in threads)  # done well within the 5 s window: it never waited for it
    assert [s[0] for s in inner.shapes] == [1, 5] and br.counters()["lingered"] == 0


def test_a_request_larger_than_the_batch_runs_in_chunks_and_shapes_never_mix():
    inner = _Runner(opt=8, max_=16)
    br = BatchingRunner(inner, window_ms=5.0, max_batch=64)  # asked for 64: the profile caps it at 16
    assert br.max_batch == 16
    with pytest.raises(BadRequest, match="batch of 40 rows is above the profile's max 16"):
        br.predict(np.zeros((40, 3), np.float32))  # beyond the engine's contract: refused, not chunked
    br = BatchingRunner(inner, window_ms=5.0, max_batch=6)  # within the profile, above the batch: chunks
    x = np.arange(16 * 3, dtype=np.float32).reshape(16, 3)
    assert np.array_equal(br.predict(x), _want(x))
    assert [s[0] for s in inner.shapes] == [6, 6, 4]

    inner = _Runner(opt=8, max_=16, hold=True)
    br = BatchingRunner(inner, window_ms=0.0)
    first, results = _busy(inner, br)
    threads = [_submit(br, np.ones((2, 5), np.float32), results, "wide"),
               _submit(br, np.ones((2, 3), np.float32), results, "narrow")]
    _until(lambda: br.counters()["queued"] == 2, "2 requests queued")
    inner.release()
    for t in [first, *threads]:
        t.join(WAIT_S)
    assert inner.shapes == [(1, 3), (2, 5), (2, 3)]  # another trailing shape: its own batch
    assert np.array_equal(results["wide"], _want(np.ones((2, 5), np.float32)))


def test_a_failed_batch_fails_each_of_its_callers():
    br = BatchingRunner(_Runner(fail=True))
    with pytest.raises(RuntimeError, match="stand-in"):
        br.predict(np.ones((1, 3), np.float32))
    inner = _Runner(fail=True, hold=True)
    br = BatchingRunner(inner, window_ms=0.0)
    first, results = _busy(inner, br)
    threads = [_submit(br, _rows(i), results, i) for i in (1, 2)]
    _until(lambda: br.counters()["queued"] == 2, "2 requests queued")
    inner.release()
    for t in [first, *threads]:
        t.join(WAIT_S)
    assert all(isinstance(results[k], RuntimeError) for k in ("first", 1, 2))
    assert br.counters()["failed_batches"] == 2


def test_a_bad_request_fails_only_its_caller_and_is_never_cast():
    inner = _Runner(opt=8, max_=16, hold=True)
    br = BatchingRunner(inner, window_ms=20.0)
    good = np.ones((2, 3), np.float32)
    results = {}
    t = _submit(br, good, results, "good")
    assert inner.entered.wait(WAIT_S)  # the good request holds the engine
    for bad, match in ((good.astype(np.float64), "dtype float64, but the engine declares float32"),
                       (np.full((2, 3), np.nan, np.float32), "6 NaN/inf value"),
                       (np.ones((2, 3, 1), np.float32), "rank 3")):
        with pytest.raises(BadRequest, match=match):
            br.predict(bad)  # refused in this thread, before it could queue
    inner.release()
    t.join(WAIT_S)
    assert np.array_equal(results["good"], _want(good))
    assert inner.shapes == [(2, 3)]  # only the good request reached the engine
    c = br.counters()
    assert (c["requests"], c["queued"], c["queue_full"], c["deadline"]) == (1, 0, 0, 0)  # a refusal is no request


def test_a_full_queue_refuses_with_queue_full_and_counts_it():
    inner = _Runner(hold=True)
    br = BatchingRunner(inner, window_ms=0.0, max_queue=2)
    first, results = _busy(inner, br)
    threads = [_submit(br, _rows(i), results, i) for i in (1, 2)]
    _until(lambda: br.counters()["queued"] == 2, "2 requests queued")
    for _ in range(3):
        with pytest.raises(QueueFull, match=r"2 requests already wait for the engine \(max_queue 2\)"):
            br.predict(_rows(9))
    inner.release()
    for t in [first, *threads]:
        t.join(WAIT_S)
    assert all(np.array_equal(results[i], _want(_rows(i))) for i in (1, 2))  # the queued ones still ran
    c = br.counters()
    assert (c["queue_full"], c["requests"], c["max_queued"]) == (3, 3, 2)
    assert [s[0] for s in inner.shapes] == [1, 2]


def test_a_request_past_its_deadline_leaves_the_queue_with_deadline_exceeded_and_is_counted():
    inner = _Runner(hold=True)
    br = BatchingRunner(inner, window_ms=0.0, deadline_ms=30_000.0)
    first, results = _busy(inner, br)
    with pytest.raises(DeadlineExceeded, match="past its deadline of 20.0 ms, without starting to run"):
        br.predict(_rows(1), deadline_ms=20.0)  # per request: the engine stays busy past it
    late = _submit(br, _rows(2), results, "default")  # the default deadline (30 s) is not reached
    _until(lambda: br.counters()["queued"] == 2, "the second request queued")
    inner.release()
    for t in (first, late):
        t.join(WAIT_S)
    assert np.array_equal(results["default"], _want(_rows(2)))
    assert [s[0] for s in inner.shapes] == [1, 1]  # the late request never reached the engine
    assert br.counters()["deadline"] == 1
    with pytest.raises(ValueError, match="deadline_ms: expected a finite number > 0, got -1"):
        br.predict(_rows(3), deadline_ms=-1)


def test_an_engine_returning_the_wrong_row_count_fails_every_caller_of_the_batch_with_the_counts():
    br = BatchingRunner(_Runner(rows_off=1))
    with pytest.raises(RowCountMismatch, match="returned 1 output rows for a batch of 2 input rows"):
        br.predict(_rows(0, 2))  # run at once: checked too
    inner = _Runner(rows_off=1, hold=True)
    br = BatchingRunner(inner, window_ms=0.0)
    first, results = _busy(inner, br)
    threads = [_submit(br, _rows(i, i), results, i) for i in (1, 2)]
    _until(lambda: br.counters()["queued"] == 2, "2 requests queued")
    inner.release()
    for t in [first, *threads]:
        t.join(WAIT_S)
    assert isinstance(results["first"], RowCountMismatch)
    for i in (1, 2):  # never a silently short slice: both callers of the batch get the error, with the counts
        assert isinstance(results[i], RowCountMismatch)
        assert "returned 2 output rows for a batch of 3 input rows (requests of 1, 2 rows)" in str(results[i])
    c = br.counters()
    assert (c["row_count_mismatch"], c["failed_batches"], c["batches"]) == (2, 2, 0)


def test_histories_are_bounded_and_totals_are_counters():
    br = BatchingRunner(_Runner(), history=5)
    for i in range(20):
        br.predict(_rows(i, 1 + i % 2))
    assert list(br.batches) == [1 + i % 2 for i in range(15, 20)]
    c = br.counters()
    assert (c["batches"], c["rows"], c["requests"]) == (20, 30, 20)


@pytest.mark.parametrize("kwargs, match", [
    ({"window_ms": -1}, "window_ms: expected a finite number >= 0, got -1"),
    ({"window_ms": float("nan")}, "window_ms: expected a finite number >= 0, got nan"),
    ({"window_ms": "2"}, "window_ms: expected a finite number >= 0, got '2'"),
    ({"max_batch": 0}, "max_batch: expected an integer >= 1, got 0"),
    ({"max_batch": 2.5}, "max_batch: expected an integer >= 1, got 2.5"),
    ({"max_batch": True}, "max_batch: expected an integer >= 1, got True"),
    ({"max_queue": 0}, "max_queue: expected an integer >= 1, got 0"),
    ({"deadline_ms": 0}, "deadline_ms: expected a finite number > 0, got 0"),
    ({"history": 0}, "history: expected an integer >= 1, got 0"),
])
def test_constructor_arguments_are_validated_by_name(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BatchingRunner(_Runner(), **kwargs)


def test_a_runner_or_profile_it_cannot_batch_is_refused_by_name():
    with pytest.raises(ValueError, match="runner: object has no 'predict'"):
        BatchingRunner(object())
    with pytest.raises(ValueError, match="max_batch: the engine's profile declares no opt or max batch"):
        BatchingRunner(_Runner(profile=False))
    assert BatchingRunner(_Runner(profile=False), max_batch=4).max_batch == 4


def test_rejections_are_transient_factory_errors_and_a_closed_batcher_refuses_new_requests():
    for cls in (QueueFull, DeadlineExceeded, BatcherClosed):
        assert issubclass(cls, RequestRejected) and issubclass(cls, FactoryError) and not issubclass(cls, BadInput)
        assert not is_final(cls("x"))  # overload: a retry later can succeed
    assert issubclass(DeadlineExceeded, TimeoutError)
    br = BatchingRunner(_Runner())
    assert np.array_equal(br.predict(_rows(1)), _want(_rows(1)))
    br.close()
    with pytest.raises(BatcherClosed):
        br.predict(_rows(1))
    assert br.counters()["closed"] == 1


def test_under_free_running_concurrency_every_caller_still_gets_its_own_rows():
    """No hold: requests race the engine's hand-offs (rule 1, queueing, leading a batch) in every order."""
    inner = _Runner(opt=8, max_=16)
    br = BatchingRunner(inner, window_ms=0.5)
    wrong, done = [], []

    def client(i):
        rng = np.random.default_rng(i)
        for k in range(60):
            x = _rows(i * 100 + k, int(rng.integers(1, 12)), width=int(rng.choice([3, 5])))
            if not np.array_equal(br.predict(x), _want(x)):
                wrong.append((i, k))
            done.append(1)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT_S * 3)
    assert not wrong and len(done) == 12 * 60
    assert max(s[0] for s in inner.shapes) <= 8  # every engine call within max_batch (larger requests: chunks)
    c = br.counters()
    assert c["requests"] == 12 * 60 and c["ran_at_once"] + c["queued"] == c["requests"]


def test_a_runner_that_checks_its_own_requests_is_not_checked_twice_but_still_before_a_request_queues():
    inner = _SelfChecking(hold=True)
    br = BatchingRunner(inner, window_ms=0.0)
    first, results = _busy(inner, br)
    assert inner.checked == 1  # ran at once: checked once, by the runner's own predict
    with pytest.raises(BadRequest, match="6 NaN/inf value"):
        br.predict(np.full((2, 3), np.nan, np.float32))  # the engine is busy: checked here before it could queue
    t = _submit(br, _rows(1), results, 1)
    _until(lambda: br.counters()["queued"] == 1, "a request queued")
    inner.release()
    for th in (first, t):
        th.join(WAIT_S)
    assert np.array_equal(results[1], _want(_rows(1)))
    assert inner.checked == 4  # + the refused one, + the queued one before it queued, + its batch in predict
