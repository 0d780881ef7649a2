"""Dynamic batching in front of :class:`~model_registry.runtime.EngineRunner` (opt-in) that costs no latency when
idle, like Triton's dynamic batcher.

Callers call :meth:`BatchingRunner.predict` from any thread with their own rows. The dispatch rule:

1. **Engine free**: the caller runs its request at once, in its own thread: no hand-off to another thread, no
   window. A lone request costs what it costs straight through the runner, plus taking and freeing a lock.
2. **Engine busy**: the request queues, and its thread sleeps. When the engine frees, the thread that held it
   wakes the oldest queued request's thread, which takes, in arrival order, every queued request of its trailing
   shape (another window length waits for its own batch) up to ``max_batch`` rows (default the profile's opt
   batch, never above the profile's max) and runs them at once as one batch, its own first; then it hands each
   caller its rows and passes the engine on the same way (or frees it when nothing is queued). So while the
   engine is busy, requests accumulate and go together the moment it frees, and a request alone never waits a
   window. No worker thread: each batch runs in one of its own callers' threads, so a batch needs one wake-up
   and no hand-off to a third thread (a variant with a worker thread served 0.6-0.8x these requests per second
   at 8 and 64 clients on market_alert's and fraud_risk's CPU engines of ``benchmarks/serving_batching.py``).
3. **Nearly full**: only when a batch so formed holds at least 3/4 of ``max_batch`` rows (but fewer) does it
   wait for the rest, for at most ``window_ms`` counted from its oldest request's arrival (Triton's
   ``max_queue_delay``), and only until ``max_batch`` rows are there. Traffic that queues three quarters of a
   batch during one engine call fills the last quarter in a fraction of that; topping it up saves an engine call.
   ``window_ms=0`` turns this off.

Each request is checked against the engine's input contract in its caller's thread before it joins a batch
(``runner.check_request``: dtype, rank, the profile's bounds, finite values), so a bad request fails only its own
caller, with :class:`~model_registry.runtime.BadRequest`, never a batch of others. (A request that runs at once
on an ``EngineRunner``, or on any runner with ``checks_requests = True``, is checked, and a refusal counted, by
its ``predict`` itself: not twice.) A request larger than ``max_batch`` (within the profile) runs alone, in
chunks. A failed batch fails each of its callers with the same error. Every engine call must return as many rows
as it was given, or each caller of that batch gets :class:`RowCountMismatch` naming both counts: never a wrong
slice.

Queue policy: at most ``max_queue`` requests wait (one more is refused with :class:`QueueFull`), and a request that
has not started running ``deadline_ms`` after it arrived leaves the queue with :class:`DeadlineExceeded` (default
none; per request through ``predict(x, deadline_ms=...)``); once in a running batch a request completes. Both
are :class:`RequestRejected` (overload: neither the caller's data nor an engine failure) and are counted by
reason in :meth:`BatchingRunner.counters`, beside the totals of requests, batches and rows.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import math
import threading
import time
from typing import Any

import numpy as np

from factory_core.errors import BadInput, FactoryError

NEARLY_FULL = 0.75  # a batch of at least this share of max_batch waits (up to the window) for the rest


class RequestRejected(FactoryError):
    """The batcher refused a request before it ran: the host is overloaded (or the batcher is closed). Not the
    caller's data (that is :class:`~model_registry.runtime.BadRequest`) and not an engine failure. Transient, so
    a :class:`FactoryError` (retried), not ``BadInput`` or ``Unavailable`` (final): a retry later or on another
    replica can succeed. ``reason`` is its counter's name in :meth:`BatchingRunner.counters`."""

    reason = "rejected"


class QueueFull(RequestRejected):
    """``max_queue`` requests already wait for the engine."""

    reason = "queue_full"


class DeadlineExceeded(RequestRejected, TimeoutError):
    """The request waited in the queue past its deadline without starting to run."""

    reason = "deadline"


class BatcherClosed(RequestRejected):
    """``predict`` after :meth:`BatchingRunner.close`."""

    reason = "closed"


class RowCountMismatch(FactoryError, RuntimeError):
    """The engine returned another number of rows than it was given: the batch cannot be split among its callers,
    so each of them gets this error (the engine's fault, never a silently wrong slice)."""


_QUEUED, _LEADER, _TAKEN, _DONE = range(4)


class _Request:
    __slots__ = ("x", "arrived", "deadline", "state", "out", "error", "wake")

    def __init__(self, x: np.ndarray, arrived: float, deadline: float | None):
        self.x, self.arrived, self.deadline = x, arrived, deadline
        self.state, self.out, self.error = _QUEUED, None, None
        self.wake = threading.Lock()  # held until the request leads a batch, or has its output, error or rejection
        self.wake.acquire()


class BatchingRunner:
    """``runner``: an :class:`~model_registry.runtime.EngineRunner` (``predict``, ``check_request``, ``manifest``).

    Args:
        window_ms: how long a nearly full batch may wait for the rest, from its oldest request's arrival (rule 3).
        max_batch: rows per engine call; default the profile's opt batch, capped at the profile's max.
        max_queue: most requests waiting for the engine (the running batch not counted); one more is refused
            with :class:`QueueFull`.
        deadline_ms: default for the most milliseconds a request may wait before it runs (None: no deadline);
            past it :class:`DeadlineExceeded`. ``predict(x, deadline_ms=...)`` sets it per request.
        history: how many recent batch sizes :attr:`batches` keeps (the totals are in :meth:`counters`).
    """

    def __init__(self, runner: Any, window_ms: float = 2.0, max_batch: int | None = None, max_queue: int = 1024,
                 deadline_ms: float | None = None, history: int = 1000):
        _check_number("window_ms", window_ms, strict=False)
        self.profile_max, self.max_batch = _checked_args(runner, max_batch, max_queue, deadline_ms, history)
        self.runner, self.window_s = runner, window_ms / 1e3
        self.max_queue = max_queue
        self.deadline_s = None if deadline_ms is None else deadline_ms / 1e3
        # rows of the recent batches (a request above max_batch is one batch, run in chunks)
        self.batches: collections.deque[int] = collections.deque(maxlen=history)
        self._fill = max(1, math.ceil(NEARLY_FULL * self.max_batch))
        # A runner whose predict checks (and counts) each request itself says so with ``checks_requests = True``
        # (EngineRunner does): a request run at once is then not checked twice.
        self._runner_checks = getattr(runner, "checks_requests", False) is True
        # Held by whoever runs the engine (a caller, rule 1, or a batch's leader, rule 2), and passed on from one
        # to the next, so rule 1 takes no other lock. No request is left queued on a free engine: its holder
        # frees it, then looks at the queue; a request queues, then tries to take it (see _free_engine).
        self._engine = threading.Lock()
        self._lock = threading.Lock()
        self._arrival = threading.Condition(self._lock)  # a lingering batch (rule 3) waits here for more requests
        self._lingering = self._closed = False
        self._pending: collections.deque[_Request] = collections.deque()
        # Counters of runs (batches led, rule 2: batches, rows, lingered, failed_batches, row_count_mismatch; rule
        # 1: _at_once, _at_once_rows, failed_at_once) are written by the engine's holder only; the others
        # (queued, rejections, max_queued) under _lock.
        self._n = dict.fromkeys(("queued", "batches", "rows", "lingered", "failed_batches", "failed_at_once",
                                 "row_count_mismatch", "queue_full", "deadline", "closed", "max_queued"), 0)
        self._at_once = self._at_once_rows = 0

    @property
    def manifest(self) -> Any:
        return self.runner.manifest

    def counters(self) -> dict[str, int]:
        """Totals since start (a snapshot): ``requests`` accepted, of which ``ran_at_once`` (found the engine
        free) and ``queued``; ``batches`` and ``rows`` run, ``lingered`` (batches that waited for the rest of a
        nearly full batch, rule 3), ``failed_batches``, ``row_count_mismatch``; requests rejected by reason
        (``queue_full``, ``deadline``, ``closed``); ``max_queued``, the deepest the queue has been."""
        with self._lock:
            n = dict(self._n)
            at_once, at_once_rows = self._at_once, self._at_once_rows
        failed_at_once = n.pop("failed_at_once")
        ran_at_once = at_once + failed_at_once
        return {"requests": ran_at_once + n["queued"], "ran_at_once": ran_at_once, "queued": n.pop("queued"),
                "batches": n.pop("batches") + at_once, "rows": n.pop("rows") + at_once_rows,
                "failed_batches": n.pop("failed_batches") + failed_at_once, **n}

    def predict(self, x: np.ndarray, deadline_ms: float | None = None) -> np.ndarray:
        """The engine's output rows for ``x``'s rows, in order (see the module doc for when it runs).

        Raises :class:`~model_registry.runtime.BadRequest` (this request breaks the engine's contract),
        :class:`QueueFull`, :class:`DeadlineExceeded`, :class:`BatcherClosed`, :class:`RowCountMismatch`, or the
        engine's own error for every caller of a failed batch.
        """
        if deadline_ms is not None:
            _check_number("deadline_ms", deadline_ms, strict=True)
        # On a runner that checks (and counts) each request itself (EngineRunner), a request that may run at once is
        # checked here only if it has to queue. Rule 1 is written out inline: it is an idle engine's latency.
        checked = not (self._runner_checks and type(x) is np.ndarray and x.ndim and len(x) <= self.max_batch)
        if checked:
            x = self.runner.check_request(x)  # refused here, in the caller's thread: never part of anyone's batch
        if self._engine.acquire(False):  # rule 1: run it now, in this thread
            if self._closed:
                self._free_engine()  # closed meanwhile: give it back, refused below
            else:
                rows = len(x)
                try:
                    out = self.runner.predict(x) if rows <= self.max_batch else self._call(x, (x,))
                    if type(out) is not np.ndarray or not out.ndim or len(out) != rows:
                        out = self._checked(out, x, (x,))  # rows in == rows out, or the error that says so
                except BadInput:  # the request itself, refused by EngineRunner.predict: not run, no batch failed
                    self._free_engine()
                    raise
                except BaseException:
                    self._n["failed_at_once"] += 1
                    self._free_engine()
                    raise
                self._at_once += 1
                self._at_once_rows += rows
                self.batches.append(rows)
                self._engine.release()  # _free_engine, written out
                if self._pending and self._engine.acquire(False):
                    with self._lock:
                        self._pass_engine()
                return out
        if not checked:
            x = self.runner.check_request(x)
        with self._lock:
            if self._closed:
                self._n["closed"] += 1
                raise BatcherClosed("the batcher is closed: it takes no new requests")
            if len(self._pending) >= self.max_queue:
                self._n["queue_full"] += 1
                raise QueueFull(f"{len(self._pending)} requests already wait for the engine (max_queue "
                                f"{self.max_queue}): retry later")
            self._n["queued"] += 1
            now = time.perf_counter()
            wait = self.deadline_s if deadline_ms is None else deadline_ms / 1e3
            req = _Request(x, now, None if wait is None else now + wait)
            self._pending.append(req)
            if len(self._pending) > self._n["max_queued"]:
                self._n["max_queued"] = len(self._pending)
            if self._lingering:
                self._arrival.notify()
            elif self._engine.acquire(False):  # freed since rule 1 was tried: pass it to the oldest
                self._pass_engine()
        return self._wait(req)

    def close(self) -> None:
        """Refuse new requests (:class:`BatcherClosed`); those already queued still run."""
        with self._lock:
            self._closed = True

    def _free_engine(self) -> None:
        """By the engine's holder when done, without the lock (rule 1 stays lock-free): free the engine, then if
        requests are queued, take it back (unless someone else did) to pass it to the oldest. A request that
        queues after this look tries to take the engine itself once queued (``predict``), so none is left
        waiting on a free engine."""
        self._engine.release()
        if self._pending and self._engine.acquire(False):
            with self._lock:
                self._pass_engine()

    # -- rule 2: the engine was busy -------------------------------------------------------------------------
    def _wait(self, req: _Request) -> np.ndarray:
        if req.deadline is None:
            req.wake.acquire()
        elif not req.wake.acquire(timeout=max(0.0, req.deadline - time.perf_counter())):
            with self._lock:
                if req.state == _QUEUED:  # still waiting: leave the queue, counted
                    self._pending.remove(req)
                    self._n["deadline"] += 1
                    raise _late(req, time.perf_counter())
            req.wake.acquire()  # made a leader or taken into a batch meanwhile: its wake-up is (or will be) there
        if req.state == _LEADER:
            return self._lead(req)
        if req.error is not None:
            raise req.error
        return req.out

    def _pass_engine(self) -> None:
        """With the lock held, by the engine's holder when done: the oldest queued request (within its deadline)
        leads the next batch, or the engine is free."""
        now = None
        while self._pending:
            r = self._pending.popleft()
            if r.deadline is not None and (now := now or time.perf_counter()) > r.deadline:
                self._reject_late(r, now)
                continue
            r.state = _LEADER
            r.wake.release()
            return
        self._engine.release()

    def _lead(self, first: _Request) -> np.ndarray:
        """Run the batch that ``first`` leads (the engine is its), pass the engine on, then hand out the rows."""
        batch, rows = [first], len(first.x)
        try:
            with self._lock:
                rows = self._take(batch, rows)
                lingered = False
                while self._fill <= rows < self.max_batch:  # rule 3: nearly full, top it up within the window
                    left = first.arrived + self.window_s - time.perf_counter()
                    if left <= 0:
                        break
                    if not lingered:
                        lingered = True
                        self._n["lingered"] += 1
                    self._lingering = True
                    self._arrival.wait(left)
                    self._lingering = False
                    rows = self._take(batch, rows)
            xs = [r.x for r in batch]
            out = self._call(np.concatenate(xs) if len(xs) > 1 else xs[0], xs)
        except BaseException as exc:  # every caller of the batch gets the error
            self._n["failed_batches"] += 1
            with self._lock:
                self._pass_engine()
            for r in batch[1:]:
                r.error, r.state = exc, _DONE
                r.wake.release()
            raise
        self._n["batches"] += 1
        self._n["rows"] += rows
        self.batches.append(rows)
        with self._lock:
            self._pass_engine()  # the next batch starts while this one's rows are handed out
        start = len(first.x)
        for r in batch[1:]:
            r.out, r.state = out[start:start + len(r.x)], _DONE
            start += len(r.x)
            r.wake.release()
        return out[:len(first.x)]

    def _take(self, batch: list[_Request], rows: int) -> int:
        """With the lock held: move queued requests of the batch's trailing shape into ``batch``, oldest first,
        while they fit (the first that does not stops the scan: no later request overtakes it)."""
        tail, now, skipped = batch[0].x.shape[1:], time.perf_counter(), []
        while self._pending and rows < self.max_batch:
            r = self._pending.popleft()
            if r.deadline is not None and now > r.deadline:
                self._reject_late(r, now)
            elif r.x.shape[1:] != tail:
                skipped.append(r)  # another window length: its own batch
            elif rows + len(r.x) > self.max_batch:
                self._pending.appendleft(r)
                break
            else:
                r.state = _TAKEN
                batch.append(r)
                rows += len(r.x)
        self._pending.extendleft(reversed(skipped))
        return rows

    def _reject_late(self, r: _Request, now: float) -> None:
        self._n["deadline"] += 1
        r.error, r.state = _late(r, now), _DONE
        r.wake.release()

    # -- the engine ------------------------------------------------------------------------------------------
    def _call(self, whole: np.ndarray, xs: tuple | list) -> np.ndarray:
        """``whole`` through the engine, in chunks of ``max_batch`` rows, each checked rows-in == rows-out."""
        if len(whole) <= self.max_batch:
            return self._checked(self.runner.predict(whole), whole, xs)
        return np.concatenate([self._checked(self.runner.predict(whole[i:i + self.max_batch]),
                                             whole[i:i + self.max_batch], xs)
                               for i in range(0, len(whole), self.max_batch)])

    def _checked(self, out: Any, x: np.ndarray, xs: tuple | list) -> np.ndarray:
        """``out`` if the engine returned one row per row of ``x``, else :class:`RowCountMismatch` (counted)."""
        try:
            return _rows_checked(out, x, xs)
        except RowCountMismatch:
            self._n["row_count_mismatch"] += 1
            raise


class _AsyncRequest:
    __slots__ = ("x", "fut", "arrived", "deadline", "timer")

    def __init__(self, x: np.ndarray, fut: asyncio.Future, arrived: float):
        self.x, self.fut, self.arrived, self.deadline, self.timer = x, fut, arrived, None, None


class AsyncBatchingRunner:
    """The same batching for an asyncio server (FastAPI, grpc.aio, a Ray Serve replica): ``await predict(x)`` from
    coroutines of one event loop. The engine runs in one engine thread of its own, never in the event loop.

    The dispatch rule is :class:`BatchingRunner`'s rules 1 and 2, without threads per request: a request that finds
    the engine free goes to the engine thread at once; while the engine is busy, requests wait on the event loop
    (a future each: no thread sleeps or wakes per request), and the moment a batch ends the oldest queued
    request's trailing shape takes every queued request of that shape, oldest first, up to ``max_batch`` rows, as
    the next batch, before the finished batch's outputs are handed out. It never waits for a batch to fill (no
    window: the engine is either running or has nothing queued). Each request is checked against the engine's
    contract (``runner.check_request``) in its own coroutine first, so a bad request fails only its caller with
    :class:`~model_registry.runtime.BadRequest`.

    The queue policy and errors are :class:`BatchingRunner`'s: :class:`QueueFull` past ``max_queue`` waiting
    requests, :class:`DeadlineExceeded` for a request still queued ``deadline_ms`` after it arrived (it leaves the
    queue at that moment, even if the engine hangs), :class:`BatcherClosed` after :meth:`close`, and
    :class:`RowCountMismatch` (or the engine's own error) for every caller of a failed batch. A caller cancelled
    while queued leaves the queue (counted as ``cancelled``).

    ``instances`` (Triton's ``instance_group`` count): engine threads, so up to that many batches run at once; the
    rule above then reads "an engine free". On a CPU engine with one intra-op thread, one per core the host gives
    the engine.
    """

    def __init__(self, runner: Any, max_batch: int | None = None, max_queue: int = 1024,
                 deadline_ms: float | None = None, history: int = 1000, instances: int = 1):
        _check_int("instances", instances)
        self.profile_max, self.max_batch = _checked_args(runner, max_batch, max_queue, deadline_ms, history)
        self.runner, self.max_queue, self.instances = runner, max_queue, instances
        self._runner_checks = getattr(runner, "checks_requests", False) is True
        self.deadline_s = None if deadline_ms is None else deadline_ms / 1e3
        self.batches: collections.deque[int] = collections.deque(maxlen=history)
        self._engine = concurrent.futures.ThreadPoolExecutor(instances, thread_name_prefix="factory-engine")
        self._pending: collections.deque[_AsyncRequest] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running, self._closed = 0, False  # batches in the engine threads
        # all written on the event loop's thread only
        self._n = dict.fromkeys(("requests", "ran_at_once", "queued", "batches", "rows", "failed_batches",
                                 "row_count_mismatch", "queue_full", "deadline", "closed", "cancelled",
                                 "max_queued"), 0)

    @property
    def manifest(self) -> Any:
        return self.runner.manifest

    def counters(self) -> dict[str, int]:
        """Totals since start, as :meth:`BatchingRunner.counters` gives them (``lingered`` is absent: this front
        never waits), plus ``cancelled``."""
        return dict(self._n)

    async def predict(self, x: np.ndarray, deadline_ms: float | None = None) -> np.ndarray:
        """The engine's output rows for ``x``'s rows, in order. Raises as :meth:`BatchingRunner.predict`."""
        if deadline_ms is not None:
            _check_number("deadline_ms", deadline_ms, strict=True)
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif loop is not self._loop:
            raise RuntimeError("AsyncBatchingRunner serves one event loop: it was first used from another")
        if self._closed:
            self._n["closed"] += 1
            raise BatcherClosed("the batcher is closed: it takes no new requests")
        if self._running < self.instances and self._runner_checks and type(x) is np.ndarray and x.ndim \
                and len(x) <= self.max_batch:
            # runs alone at once on a runner whose predict checks it (EngineRunner): checked there, not twice
            req = _AsyncRequest(x, loop.create_future(), time.perf_counter())
            self._n["requests"] += 1
            self._n["ran_at_once"] += 1
            self._start([req], len(x))
            return await req.fut
        x = self.runner.check_request(x)  # refused here, in the caller's coroutine: never part of anyone's batch
        req = _AsyncRequest(x, loop.create_future(), time.perf_counter())
        if self._running < self.instances:
            self._n["requests"] += 1
            self._n["ran_at_once"] += 1
            self._start([req], len(x))
        else:
            if len(self._pending) >= self.max_queue:
                self._n["queue_full"] += 1
                raise QueueFull(f"{len(self._pending)} requests already wait for the engine (max_queue "
                                f"{self.max_queue}): retry later")
            self._n["requests"] += 1
            self._n["queued"] += 1
            wait = self.deadline_s if deadline_ms is None else deadline_ms / 1e3
            if wait is not None:
                req.deadline = req.arrived + wait
                req.timer = loop.call_later(wait, self._expire, req)
            self._pending.append(req)
            if len(self._pending) > self._n["max_queued"]:
                self._n["max_queued"] = len(self._pending)
        try:
            return await req.fut
        except asyncio.CancelledError:
            if req in self._pending:  # cancelled while queued: leave the queue
                self._pending.remove(req)
                self._n["cancelled"] += 1
            raise

    def close(self) -> None:
        """Refuse new requests (:class:`BatcherClosed`); those already queued still run; the engine thread ends
        when the last batch has."""
        self._closed = True
        if not self._running:
            self._engine.shutdown(wait=False)

    def _expire(self, req: _AsyncRequest) -> None:
        if req in self._pending:
            self._pending.remove(req)
            self._n["deadline"] += 1
            if not req.fut.done():
                req.fut.set_exception(_late(req, time.perf_counter()))

    def _start(self, batch: list[_AsyncRequest], rows: int) -> None:
        self._running += 1
        xs = [r.x for r in batch]
        for r in batch:
            if r.timer is not None:
                r.timer.cancel()
        whole = np.concatenate(xs) if len(xs) > 1 else xs[0]
        done = self._engine.submit(self._call, whole, xs)
        done.add_done_callback(lambda f: self._loop.call_soon_threadsafe(self._finish, batch, rows, f))

    def _call(self, whole: np.ndarray, xs: list) -> np.ndarray:
        """In the engine thread: ``whole`` through the engine in chunks of ``max_batch`` rows, each checked."""
        mb = self.max_batch
        if len(whole) <= mb:
            return _rows_checked(self.runner.predict(whole), whole, xs)
        return np.concatenate([_rows_checked(self.runner.predict(whole[i:i + mb]), whole[i:i + mb], xs)
                               for i in range(0, len(whole), mb)])

    def _finish(self, batch: list[_AsyncRequest], rows: int, done: concurrent.futures.Future) -> None:
        """On the loop, when a batch ended: start the next batch, then hand out this one's rows (or its error)."""
        self._running -= 1
        self._next()
        exc = done.exception()
        if exc is not None and isinstance(exc, BadInput) and len(batch) == 1:
            batch[0].fut.set_exception(exc)  # a lone request refused by the runner's own check: not a failed batch
            return
        if exc is not None:
            self._n["failed_batches"] += 1
            if isinstance(exc, RowCountMismatch):
                self._n["row_count_mismatch"] += 1
            for r in batch:
                if not r.fut.done():
                    r.fut.set_exception(exc)
            return
        out = done.result()
        self._n["batches"] += 1
        self._n["rows"] += rows
        self.batches.append(rows)
        start = 0
        for r in batch:
            end = start + len(r.x)
            if not r.fut.done():  # its caller may have been cancelled meanwhile
                r.fut.set_result(out[start:end])
            start = end

    def _next(self) -> None:
        """The oldest queued request's shape takes every queued request of that shape that fits, oldest first
        (the first that does not fit stops the scan: no later request overtakes it); or the engine is free."""
        pending = self._pending
        while pending and pending[0].fut.done():
            pending.popleft()
        if not pending:
            if self._closed and not self._running:
                self._engine.shutdown(wait=False)
            return
        first = pending.popleft()
        batch, rows, tail, skipped = [first], len(first.x), first.x.shape[1:], []
        while pending and rows < self.max_batch:
            r = pending.popleft()
            if r.fut.done():
                continue
            if r.x.shape[1:] != tail:
                skipped.append(r)  # another window length: its own batch
            elif rows + len(r.x) > self.max_batch:
                pending.appendleft(r)
                break
            else:
                batch.append(r)
                rows += len(r.x)
        pending.extendleft(reversed(skipped))
        self._start(batch, rows)


def _rows_checked(out: Any, x: np.ndarray, xs: tuple | list) -> np.ndarray:
    """``out`` if the engine returned one row per row of ``x``, else :class:`RowCountMismatch` naming both counts
    and the requests' (``xs``)."""
    if type(out) is np.ndarray and out.ndim and len(out) == len(x):
        return out
    out = np.asarray(out)
    if out.ndim == 0 or len(out) != len(x):
        got = "a scalar" if out.ndim == 0 else f"{len(out)} output rows"
        sizes = ", ".join(str(len(r)) for r in xs)
        raise RowCountMismatch(f"the engine returned {got} for a batch of {len(x)} input rows (requests of "
                               f"{sizes} rows): its outputs cannot be split among the callers, so each of them "
                               f"gets this error")
    return out


def _checked_args(runner: Any, max_batch: int | None, max_queue: int, deadline_ms: float | None,
                  history: int) -> tuple[int | None, int]:
    """Both fronts' common arguments checked by name; then :func:`_batch_limits`."""
    for attr in ("predict", "check_request", "manifest"):
        if not hasattr(runner, attr):
            raise ValueError(f"runner: {type(runner).__name__} has no {attr!r} (an EngineRunner is expected)")
    if max_batch is not None:
        _check_int("max_batch", max_batch)
    _check_int("max_queue", max_queue)
    if deadline_ms is not None:
        _check_number("deadline_ms", deadline_ms, strict=True)
    _check_int("history", history)
    return _batch_limits(runner, max_batch)


def _batch_limits(runner: Any, max_batch: int | None) -> tuple[int | None, int]:
    """(the profile's max batch or None, rows per engine call): ``max_batch``, else the profile's opt batch, never
    above the profile's max."""
    prof = runner.manifest.inputs[0].profile or {}
    profile_max = int(prof["max"][0]) if prof.get("max") else None
    opt = int(prof["opt"][0]) if prof.get("opt") else None
    asked = max_batch or opt or profile_max
    if asked is None:
        raise ValueError("max_batch: the engine's profile declares no opt or max batch; pass max_batch")
    return profile_max, (min(asked, profile_max) if profile_max else asked)


def _late(r: _Request | _AsyncRequest, now: float) -> DeadlineExceeded:
    return DeadlineExceeded(f"the request waited {(now - r.arrived) * 1e3:.1f} ms in the queue, past its deadline "
                            f"of {(r.deadline - r.arrived) * 1e3:.1f} ms, without starting to run")


def _check_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")


def _check_number(name: str, value: Any, strict: bool) -> None:
    ok = (not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))
          and math.isfinite(value) and (value > 0 if strict else value >= 0))
    if not ok:
        raise ValueError(f"{name}: expected a finite number {'>' if strict else '>='} 0, got {value!r}")
