"""Serving-side observability for ``EngineRunner``: Prometheus metrics and a sampled prediction log.

Metrics: a latency histogram per (family, target) with buckets fine enough for
sub-millisecond engines (p50/p99 through ``histogram_quantile``), a failure counter,
and the active model version as an info-style gauge. The prediction log samples
(features, prediction, latency, version, timestamp) into a bounded queue that a
background thread writes as Parquet batches under
``<root>/predictions/<family>/<target>/date=YYYY-MM-DD/``; when the queue is full a
record is dropped and counted, so logging never blocks or slows inference.
"""

from __future__ import annotations

import datetime as dt
import queue
import random
import threading
import uuid
from pathlib import Path
from typing import Any

import numpy as np

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
        self._version: str | None = None

    def observe(self, seconds: float) -> None:
        self.latency.labels(**self.labels).observe(seconds)

    def failed(self) -> None:
        self.failures.labels(**self.labels).inc()

    def set_version(self, version: str) -> None:
        if self._version is not None:
            self.active.labels(**self.labels, version=self._version).set(0)
        self.active.labels(**self.labels, version=version).set(1)
        self._version = version


class PredictionLog:
    """Sampled, bounded, non-blocking prediction logging to Parquet batches."""

    def __init__(self, root: Path, family: str, target: str, sample_rate: float = 0.1, max_queue: int = 10_000,
                 batch_rows: int = 5_000, metrics: ServingMetrics | None = None, seed: int | None = None):
        self.dir = Path(root) / "predictions" / family / target
        self.sample_rate, self.batch_rows, self.metrics = sample_rate, batch_rows, metrics
        self.queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self.dropped = 0
        self._rng = random.Random(seed)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def record(self, x: np.ndarray, prediction: np.ndarray, latency_s: float, version: str) -> None:
        """Called on the request path: a coin flip and a non-blocking put, nothing more."""
        if self._rng.random() >= self.sample_rate:
            return
        try:
            self.queue.put_nowait((dt.datetime.now(dt.timezone.utc), np.array(x, copy=True),
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
        for date, part in by_date.items():
            folder = self.dir / f"date={date}"
            folder.mkdir(parents=True, exist_ok=True)
            name = f"part-{dt.datetime.now(dt.timezone.utc):%H%M%S}-{uuid.uuid4().hex[:8]}.parquet"
            tmp = folder / f".{name}.tmp"
            pq.write_table(pa.Table.from_pylist(part), tmp)
            tmp.replace(folder / name)  # readers never see a partial batch

    def close(self, timeout: float = 10.0) -> None:
        """Flush what is queued and stop the writer."""
        self._stop.set()
        self._thread.join(timeout)
