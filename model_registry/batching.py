"""Micro-batching in front of :class:`~model_registry.runtime.EngineRunner` (opt-in, like Triton's dynamic batcher).

Callers call :meth:`BatchingRunner.predict` from any thread with their own rows. One worker thread collects
requests for up to ``window_ms`` after the first one (default 2 ms, the seeds' window) or until ``max_batch``
rows are waiting, runs them as one batch, and hands each caller its own rows, in order. A request alone still
runs when its window closes. Each request is checked against the engine's input contract in its caller's
thread before it joins a batch (``runner.check_request``: dtype, rank, the profile's bounds, finite values), so a
bad request fails only its own caller, with :class:`~model_registry.runtime.BadRequest`, and never a batch of
others. Batches never exceed ``max_batch`` (a request larger than it runs alone, in chunks); requests of another
trailing shape (another window length) wait for their own batch. A failed batch fails each of its callers with
the same error.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from typing import Any

import numpy as np


class BatchingRunner:
    """``runner``: an :class:`~model_registry.runtime.EngineRunner` (``predict``, ``check_request``, ``manifest``)."""

    def __init__(self, runner: Any, window_ms: float = 2.0, max_batch: int | None = None):
        prof = runner.manifest.inputs[0].profile or {}
        self.profile_max = int(prof["max"][0]) if prof.get("max") else None
        opt = int(prof["opt"][0]) if prof.get("opt") else None
        self.max_batch = min(x for x in (max_batch or opt or self.profile_max, self.profile_max) if x)
        self.runner, self.window_s = runner, window_ms / 1e3
        self.batches: list[int] = []  # rows per executed batch (observability and tests)
        self._q: queue.Queue = queue.Queue()
        self._carry: list[tuple[np.ndarray, Future]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="batching", daemon=True)
        self._thread.start()

    @property
    def manifest(self) -> Any:
        return self.runner.manifest

    def predict(self, x: np.ndarray) -> np.ndarray:
        x = self.runner.check_request(x)  # refused here, in the caller's thread: never part of anyone's batch
        fut: Future = Future()
        self._q.put((x, fut))
        return fut.result()

    def close(self) -> None:
        self._stop.set()
        self._q.put(None)
        self._thread.join(timeout=5)

    # -- the worker ----------------------------------------------------------------------------------------
    def _next(self, timeout: float | None) -> tuple[np.ndarray, Future] | None:
        if self._carry:
            return self._carry.pop(0)
        try:
            return self._q.get(timeout=timeout)
        except queue.Empty:
            return None

    def _loop(self) -> None:
        while not self._stop.is_set():
            first = self._next(None)
            if first is None:
                continue
            batch, rows, tail = [first], len(first[0]), first[0].shape[1:]
            deadline = time.perf_counter() + self.window_s
            held = []
            while rows < self.max_batch:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                item = self._next(left)
                if item is None:
                    break
                if item[0].shape[1:] != tail or rows + len(item[0]) > self.max_batch:
                    held.append(item)  # another shape, or it would overflow the profile: the next batch
                    if rows + len(item[0]) > self.max_batch and item[0].shape[1:] == tail:
                        break
                    continue
                batch.append(item)
                rows += len(item[0])
            self._carry = held + self._carry
            self._run(batch)

    def _run(self, batch: list[tuple[np.ndarray, Future]]) -> None:
        try:
            xs = [x for x, _ in batch]
            whole = np.concatenate(xs) if len(xs) > 1 else xs[0]
            outs = [self.runner.predict(whole[i:i + self.max_batch]) for i in range(0, len(whole), self.max_batch)]
            out = np.concatenate(outs) if len(outs) > 1 else outs[0]
            self.batches.append(len(whole))
        except Exception as exc:  # noqa: BLE001 - every caller of the batch gets the error
            for _, fut in batch:
                fut.set_exception(exc)
            return
        start = 0
        for x, fut in batch:
            fut.set_result(out[start:start + len(x)])
            start += len(x)
