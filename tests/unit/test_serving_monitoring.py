"""Serving metrics and the prediction log: counted, bounded, never blocking inference."""

from __future__ import annotations

import numpy as np
import pandas as pd
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from monitoring.serving import PredictionLog, ServingMetrics


def _samples(registry, name):
    fams = {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}
    return fams[name].samples


def test_metrics_latency_failures_and_active_version():
    reg = CollectorRegistry()
    m = ServingMetrics("fraud_risk", "cpu", registry=reg)
    m.set_version("v1")
    for s in (0.0002, 0.0004, 0.003):
        m.observe(s)
    m.failed()
    m.set_version("v2")
    count = [s for s in _samples(reg, "factory_inference_latency_seconds") if s.name.endswith("_count")]
    assert count[0].value == 3
    assert _samples(reg, "factory_inference_failures")[0].value == 1
    active = {s.labels["version"]: s.value for s in _samples(reg, "factory_model_active")}
    assert active == {"v1": 0.0, "v2": 1.0}
    for v in ("v3", "v4", "v3"):  # a host serving for months: the served version and the one it replaced, no more
        m.set_version(v)
    active = {s.labels["version"]: s.value for s in _samples(reg, "factory_model_active")}
    assert active == {"v4": 0.0, "v3": 1.0}


def test_prediction_log_samples_writes_partitioned_parquet(tmp_path):
    log = PredictionLog(tmp_path, "fraud_risk", "cpu", sample_rate=0.5, batch_rows=50, seed=0)
    x = np.arange(22, dtype=np.float32).reshape(2, 11)
    for _ in range(200):
        log.record(x, np.array([[0.1], [0.9]], np.float32), 0.0001, "v1")
    log.close()
    files = list((tmp_path / "predictions" / "fraud_risk" / "cpu").glob("date=*/part-*.parquet"))
    assert files and not list(tmp_path.rglob(".*.tmp"))
    df = pd.concat(pd.read_parquet(f) for f in files)
    assert 150 < len(df) < 250  # ~half of 200 requests x 2 rows
    assert set(df.columns) == {"ts", "version", "latency_s", "features", "feature_shape", "prediction"}
    assert list(df.iloc[0]["features"])[:3] == [0.0, 1.0, 2.0] and list(df.iloc[0]["feature_shape"]) == [11]


def test_a_full_queue_drops_and_counts_instead_of_blocking(tmp_path):
    reg = CollectorRegistry()
    metrics = ServingMetrics("fraud_risk", "cpu", registry=reg)
    log = PredictionLog(tmp_path, "fraud_risk", "cpu", sample_rate=1.0, max_queue=5, metrics=metrics, seed=0)
    log._stop.set()  # stall the writer so the queue fills
    log._thread.join()
    x, p = np.zeros((1, 11), np.float32), np.zeros((1, 1), np.float32)
    for _ in range(1000):  # put_nowait: a full queue drops instead of waiting
        log.record(x, p, 0.0, "v1")
    assert log.queue.qsize() == 5 and log.dropped == 995
    assert _samples(reg, "factory_prediction_log_dropped")[0].value == 995
