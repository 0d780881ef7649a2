"""Serving-side observability for ``EngineRunner``: Prometheus metrics and a sampled prediction log.

Metrics: a latency histogram per (family, target) with buckets fine enough for
sub-millisecond engines (p50/p99 through ``histogram_quantile``), a failure counter,
requests refused for breaking the engine's input contract by reason (the caller's fault,
kept apart from failures), and the active model version as an info-style gauge. The prediction log samples
(features, prediction, latency, version, timestamp) into a bounded queue that a
background thread writes as Parquet batches under
``<root>/predictions/<family>/<target>/date=YYYY-MM-DD/`` (a path or ``s3://``; by
default the engine store); when the queue is full a record is dropped and counted, so
logging never blocks or slows inference. :func:`read_predictions` reads a time range back
for the drift monitor.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import queue
import random
import threading
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from factory_core import layout

LATENCY_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25)


class ServingMetrics:
    """Prometheus series of one served model; pass a ``CollectorRegistry`` to keep them apart in tests."""

    def __init__(self, family: str, target: str, registry: Any = None):
        from prometheus_client import REGISTRY, Counter, Gauge, Histogram

        registry = registry or REGISTRY
        self.labels = {"family": family, "target": target}
        self.latency = Histogram("factory_inference_latency_seconds", "Inference latency per request",
                                 ["family", "target"], buckets=LATENCY_BUCKETS, registry=registry)
        self.failures = Counter("factory_inference_failures", "Failed inference requests", ["family", "target"],
                                registry=registry)
        self.active = Gauge("factory_model_active", "1 for the model version being served",
                            ["family", "target", "version"], registry=registry)
        self.dropped = Counter("factory_prediction_log_dropped", "Prediction-log records dropped (queue full)",
                               ["family", "target"], registry=registry)
        self.breaker = Gauge("factory_serving_breaker_state", "Circuit breaker of the GPU engine: 0 closed, "
                             "1 open (serving the CPU fallback), 2 half-open (trying the GPU engine)",
                             ["family", "target"], registry=registry)
        self.fallback_requests = Counter("factory_serving_fallback_requests", "Requests served by the fallback engine",
                                         ["family", "target"], registry=registry)
        self.canary_refused = Counter("factory_canary_refused", "Swaps refused by the preflight canary, by reason",
                                      ["family", "target", "reason"], registry=registry)
        self.engine_choice = Gauge("factory_serving_engine_choice", "1 for the engine this host resolved, with why",
                                   ["family", "target", "chosen", "step"], registry=registry)
        self.failures_captured = Counter("factory_failures_captured", "Failed requests saved for replay",
                                         ["family", "target"], registry=registry)
        self.failures_dropped = Counter("factory_failures_dropped", "Failed requests not saved (store full)",
                                        ["family", "target"], registry=registry)
        self.failures_duplicate = Counter("factory_failures_duplicate", "Failed requests not saved: enough examples "
                                          "of the same version and error are kept this hour", ["family", "target"],
                                          registry=registry)
        self.requests_refused = Counter("factory_requests_refused", "Requests refused for breaking the engine's "
                                        "declared input contract (the caller's fault: never an engine failure, never "
                                        "counted by the breaker), by reason", ["family", "target", "reason"],
                                        registry=registry)
        self._version: str | None = None
        self._previous: str | None = None

    def observe(self, seconds: float) -> None:
        self.latency.labels(**self.labels).observe(seconds)

    def failed(self) -> None:
        self.failures.labels(**self.labels).inc()

    def set_breaker(self, state: int) -> None:
        self.breaker.labels(**self.labels).set(state)

    def fell_back(self) -> None:
        self.fallback_requests.labels(**self.labels).inc()

    def refused(self, reason: str) -> None:
        self.canary_refused.labels(**self.labels, reason=reason).inc()

    def captured(self, outcome: str) -> None:
        """``outcome`` of :meth:`model_registry.runtime.FailureStore.offer`: ``saved``, ``duplicate`` or ``full``."""
        counter = {"saved": self.failures_captured, "duplicate": self.failures_duplicate}.get(outcome,
                                                                                          self.failures_dropped)
        counter.labels(**self.labels).inc()

    def bad_request(self, reason: str) -> None:
        self.requests_refused.labels(**self.labels, reason=reason).inc()

    def set_version(self, version: str) -> None:
        """``version`` is served (1); the one it replaced stays at 0 (a swap is visible in a query over an hour) and
        the one before that is removed, so the series do not grow with every version a host ever served."""
        if version == self._version:
            return
        if self._previous is not None and self._previous != version:
            with contextlib.suppress(KeyError):
                self.active.remove(*self.labels.values(), self._previous)
        if self._version is not None:
            self.active.labels(**self.labels, version=self._version).set(0)
        self.active.labels(**self.labels, version=version).set(1)
        self._previous, self._version = self._version, version


class PredictionLog:
    """Sampled, bounded, non-blocking prediction logging to Parquet batches."""

    def __init__(self, root: str | Path, family: str, target: str, sample_rate: float = 0.1, max_queue: int = 10_000,
                 batch_rows: int = 5_000, metrics: ServingMetrics | None = None, seed: int | None = None,
                 s3_endpoint_url: str | None = None):
        from factory_core.fsutil import filesystem

        self.fs, base = filesystem(str(root), s3_endpoint_url)
        self.dir = f"{base}/{log_prefix(family, target)}"
        self.sample_rate, self.batch_rows, self.metrics = sample_rate, batch_rows, metrics
        self.queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self.dropped = 0
        self._rng = random.Random(seed)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def record(self, x: np.ndarray, prediction: np.ndarray, latency_s: float, version: str,
               ts: dt.datetime | None = None) -> None:
        """Called on the request path: a coin flip and a non-blocking put, nothing more.

        ``ts`` stamps the record (a replay passes the simulated time); default now, UTC.
        """
        if self._rng.random() >= self.sample_rate:
            return
        try:
            self.queue.put_nowait((ts or dt.datetime.now(dt.timezone.utc), np.array(x, copy=True),
                                   np.array(prediction, copy=True), latency_s, version))
        except queue.Full:
            self.dropped += 1
            if self.metrics:
                self.metrics.dropped.labels(**self.metrics.labels).inc()

    def _run(self) -> None:
        rows: list[dict[str, Any]] = []
        while not (self._stop.is_set() and self.queue.empty()):
            try:
                ts, x, pred, latency, version = self.queue.get(timeout=0.2)
            except queue.Empty:
                if rows and self._stop.is_set():
                    self._write(rows)
                    rows = []
                continue
            for i in range(len(x)):
                rows.append({"ts": ts, "version": version, "latency_s": latency,
                             "features": x[i].reshape(-1).tolist(), "feature_shape": list(x[i].shape),
                             "prediction": pred[i].reshape(-1).tolist()})
            if len(rows) >= self.batch_rows:
                self._write(rows)
                rows = []
        if rows:
            self._write(rows)

    def _write(self, rows: list[dict[str, Any]]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        by_date: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            by_date.setdefault(r["ts"].date().isoformat(), []).append(r)
        import pyarrow.fs as pafs

        for date, part in by_date.items():
            folder = f"{self.dir}/date={date}"
            self.fs.create_dir(folder, recursive=True)
            name = f"part-{dt.datetime.now(dt.timezone.utc):%H%M%S}-{uuid.uuid4().hex[:8]}.parquet"
            table = pa.Table.from_pylist(part)
            if isinstance(self.fs, pafs.LocalFileSystem):  # readers never see a partial batch
                tmp = f"{folder}/.{name}.tmp"
                pq.write_table(table, tmp, filesystem=self.fs)
                self.fs.move(tmp, f"{folder}/{name}")
            else:  # an object PUT is atomic
                pq.write_table(table, f"{folder}/{name}", filesystem=self.fs)

    def close(self, timeout: float = 10.0) -> None:
        """Flush what is queued and stop the writer."""
        self._stop.set()
        self._thread.join(timeout)


def log_prefix(family: str, target: str) -> str:
    return layout.predictions(family, target)


def read_predictions(root: str | Path, family: str, target: str, since: dt.datetime, until: dt.datetime,
                     s3_endpoint_url: str | None = None) -> "Any":
    """The logged rows with ``since <= ts < until`` as a DataFrame (empty when none).

    Reads only the ``date=`` partitions the range touches. Columns: ``ts``, ``version``,
    ``latency_s``, ``features`` (flattened), ``feature_shape``, ``prediction``.
    """
    import pandas as pd
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    from factory_core.fsutil import filesystem

    fs, base = filesystem(str(root), s3_endpoint_url)
    frames = []
    day = since.date()
    while day <= until.date():
        folder = f"{base}/{log_prefix(family, target)}/date={day.isoformat()}"
        infos = fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
        for info in sorted(infos, key=lambda i: i.path):
            if info.type == pafs.FileType.File and info.base_name.endswith(".parquet") and \
                    not info.base_name.startswith("."):
                frames.append(pq.read_table(info.path, filesystem=fs).to_pandas())
        day += dt.timedelta(days=1)
    if not frames:
        return pd.DataFrame(columns=["ts", "version", "latency_s", "features", "feature_shape", "prediction"])
    df = pd.concat(frames, ignore_index=True)
    ts = pd.to_datetime(df["ts"], utc=True)
    return df[(ts >= pd.Timestamp(since)) & (ts < pd.Timestamp(until))].sort_values("ts").reset_index(drop=True)
