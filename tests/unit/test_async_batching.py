"""The asyncio front of dynamic batching: each awaiting caller gets its own rows in order; a request that finds the
engine free goes to the engine at once, in the engine's own thread (never the event loop's); what queues while the
engine is busy goes as one batch of one trailing shape when it frees, within max_batch; the queue policy (depth,
deadline, cancellation, close) and the batch errors are those of the thread front, named and counted. No timed
asserts on speed: that is ``benchmarks/serving_batching.py --front asyncio``."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from model_registry.batching import (AsyncBatchingRunner, BatcherClosed, DeadlineExceeded, QueueFull,
                                     RowCountMismatch)
from model_registry.runtime import BadRequest

from .test_batching import WAIT_S, _rows, _Runner, _SelfChecking, _want


async def _entered(inner):
    assert await asyncio.to_thread(inner.entered.wait, WAIT_S), "the engine was never entered"


async def _queued(br, n):
    for _ in range(int(WAIT_S / 0.001)):
        if br.counters()["queued"] >= n:
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"{n} requests never queued")


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, WAIT_S * 3))


def test_a_free_engine_runs_at_once_then_what_queued_goes_as_one_batch_each_caller_its_own_rows():
    async def main():
        inner = _Runner(opt=8, max_=16, hold=True)
        br = AsyncBatchingRunner(inner)
        first = asyncio.create_task(br.predict(_rows(0)))
        await _entered(inner)
        rest = [asyncio.create_task(br.predict(_rows(i, n=1 + i % 2))) for i in range(1, 6)]
        await _queued(br, 5)
        inner.release()
        outs = await asyncio.gather(first, *rest)
        return inner, br, outs

    inner, br, outs = run(main())
    for i, out in enumerate(outs):
        np.testing.assert_array_equal(out, _want(_rows(i, n=1 if i == 0 else 1 + i % 2)))
    assert inner.shapes == [(1, 3), (8, 3)]  # the lone first at once, then the five queued (8 rows) together
    assert all(name.startswith("factory-engine") for name, _ in inner.calls)  # never the event loop's thread
    c = br.counters()
    assert (c["requests"], c["ran_at_once"], c["queued"], c["batches"], c["rows"]) == (6, 1, 5, 2, 9)


def test_batches_never_exceed_max_batch_never_mix_shapes_and_a_large_request_runs_alone_in_chunks():
    async def main():
        inner = _Runner(opt=4, max_=16, hold=True)
        br = AsyncBatchingRunner(inner)
        first = asyncio.create_task(br.predict(_rows(0)))
        await _entered(inner)
        xs = [_rows(1, n=3), _rows(2, n=2, width=4), _rows(3, n=1), _rows(4, n=10), _rows(5, n=2, width=4)]
        rest = [asyncio.create_task(br.predict(x)) for x in xs]
        await _queued(br, 5)
        inner.release()
        return inner, xs, await asyncio.gather(first, *rest)

    inner, xs, outs = run(main())
    for x, out in zip(xs, outs[1:]):
        np.testing.assert_array_equal(out, _want(x))
    # width 3 first (3 + 1 rows: the 10-row request does not fit after them), then width 4 (2 + 2), then the 10 rows
    # alone in chunks of max_batch 4
    assert inner.shapes == [(1, 3), (4, 3), (4, 4), (4, 3), (4, 3), (2, 3)]


def test_a_failed_batch_fails_each_caller_and_a_bad_request_fails_only_its_own():
    async def main():
        inner = _Runner(hold=True, fail=True)
        br = AsyncBatchingRunner(inner)
        first = asyncio.create_task(br.predict(_rows(0)))
        await _entered(inner)
        with pytest.raises(BadRequest, match="dtype float64"):
            await br.predict(_rows(9).astype(np.float64))
        rest = [asyncio.create_task(br.predict(_rows(i))) for i in (1, 2)]
        await _queued(br, 2)
        inner.release()
        return br, await asyncio.gather(first, *rest, return_exceptions=True)

    br, outs = run(main())
    assert all(isinstance(o, RuntimeError) and "engine failed" in str(o) for o in outs)
    assert br.counters()["failed_batches"] == 2 and br.counters()["requests"] == 3


def test_queue_depth_deadline_and_cancellation_are_enforced_named_and_counted_while_the_engine_hangs():
    async def main():
        inner = _Runner(hold=True)
        br = AsyncBatchingRunner(inner, max_queue=2)
        first = asyncio.create_task(br.predict(_rows(0)))
        await _entered(inner)
        late = asyncio.create_task(br.predict(_rows(1), deadline_ms=20))
        gone = asyncio.create_task(br.predict(_rows(2)))
        await _queued(br, 2)
        with pytest.raises(QueueFull, match="max_queue 2"):
            await br.predict(_rows(3))
        with pytest.raises(DeadlineExceeded, match="past its deadline of 20.0 ms"):
            await late  # the engine still hangs: the request leaves the queue at its deadline all the same
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        kept = asyncio.create_task(br.predict(_rows(4)))
        await _queued(br, 3)
        inner.release()
        return inner, br, await first, await kept

    inner, br, out0, out4 = run(main())
    np.testing.assert_array_equal(out4, _want(_rows(4)))
    assert inner.shapes == [(1, 3), (1, 3)]  # neither the late nor the cancelled request ran
    c = br.counters()
    assert (c["queue_full"], c["deadline"], c["cancelled"], c["batches"]) == (1, 1, 1, 2)


def test_a_wrong_row_count_fails_every_caller_of_the_batch_naming_the_counts():
    async def main():
        br = AsyncBatchingRunner(_Runner(rows_off=1))
        return br, await asyncio.gather(br.predict(_rows(0, n=2)), return_exceptions=True)

    br, (err,) = run(main())
    assert isinstance(err, RowCountMismatch) and "1 output rows for a batch of 2 input rows" in str(err)
    assert br.counters()["row_count_mismatch"] == 1


def test_close_refuses_new_requests_lets_queued_ones_run_and_histories_are_bounded():
    async def main():
        inner = _Runner(hold=True)
        br = AsyncBatchingRunner(inner, history=2)
        first = asyncio.create_task(br.predict(_rows(0)))
        await _entered(inner)
        queued = asyncio.create_task(br.predict(_rows(1)))
        await _queued(br, 1)
        br.close()
        with pytest.raises(BatcherClosed):
            await br.predict(_rows(2))
        inner.release()
        await asyncio.gather(first, queued)
        return br, await queued

    br, out = run(main())
    np.testing.assert_array_equal(out, _want(_rows(1)))
    assert br.counters()["closed"] == 1 and len(br.batches) == 2

    async def many():
        b = AsyncBatchingRunner(_Runner(), history=3)
        for i in range(10):
            await b.predict(_rows(i))
        return b

    b = run(many())
    assert len(b.batches) == 3 and b.counters()["batches"] == 10


def test_one_event_loop_and_arguments_checked_by_name():
    with pytest.raises(ValueError, match="max_queue"):
        AsyncBatchingRunner(_Runner(), max_queue=0)
    with pytest.raises(ValueError, match="no 'predict'"):
        AsyncBatchingRunner(object())
    br = AsyncBatchingRunner(_Runner())
    run(br.predict(_rows(0)))
    with pytest.raises(RuntimeError, match="one event loop"):
        run(br.predict(_rows(1)))


def test_with_two_instances_two_batches_run_at_once_and_the_rest_queue_behind_them():
    async def main():
        inner = _Runner(hold=True)
        br = AsyncBatchingRunner(inner, instances=2)
        both = [asyncio.create_task(br.predict(_rows(i))) for i in (0, 1)]
        for _ in range(int(WAIT_S / 0.001)):
            if len(inner.calls) == 2:
                break
            await asyncio.sleep(0.001)
        assert len(inner.calls) == 2, "the second request did not start while the first held its engine thread"
        rest = [asyncio.create_task(br.predict(_rows(i))) for i in (2, 3, 4)]
        await _queued(br, 3)
        inner.release()
        return inner, br, await asyncio.gather(*both, *rest)

    inner, br, outs = run(main())
    for i, out in enumerate(outs):
        np.testing.assert_array_equal(out, _want(_rows(i)))
    c = br.counters()
    assert (c["ran_at_once"], c["queued"], c["rows"]) == (2, 3, 5) and inner.shapes[:2] == [(1, 3), (1, 3)]


def test_a_runner_that_checks_its_own_requests_is_not_checked_twice_and_its_refusal_fails_only_its_caller():
    async def main():
        inner = _SelfChecking()
        br = AsyncBatchingRunner(inner)
        out = await br.predict(_rows(1))
        bad = await asyncio.gather(br.predict(_rows(2, width=9)), return_exceptions=True)
        return inner, br, out, bad[0]

    inner, br, out, bad = run(main())
    np.testing.assert_array_equal(out, _want(_rows(1)))
    assert isinstance(bad, BadRequest) and br.counters()["failed_batches"] == 0
    assert inner.checked == 2  # once per request, in the engine's predict
