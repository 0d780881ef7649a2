"""Drift of served inputs and predictions against the champion's reference window (Evidently 0.7).

The reference window is a sample of the test split (model inputs and the FP32 model's
predictions) saved as an MLflow artifact of the run that registered the champion
(:data:`REFERENCE_ARTIFACT`). The current window is what the serving hosts logged
(:func:`monitoring.serving.read_predictions`). Both become one column per feature (for
sequence models, the window's last tick: the tick the prediction is about) plus a
``prediction`` column, and Evidently's ``DataDriftPreset`` (features) and ``ValueDrift``
(prediction) compare them: per column the stattest, its score and whether it drifted, and
the share of drifted feature columns.

A check *triggers* retraining when the feature drift share reaches ``drift_share``, or one column's score
reaches ``severe_score`` (one input far out of its range: a liquidity shock moves book depth alone), or the
prediction drifted (with ``prediction_drift``), and only once per drift episode: the
episode state lives on the registered model in MLflow (tag :data:`EPISODE_TAG`), so every
worker sees it; an episode ends after ``clean_checks_to_close`` clean checks in a row, at a clean check
below the lower share (hysteresis), or when the champion changes.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from factory_core.config import DriftConfig, FactoryConfig
from factory_core.errors import FactoryError

from .performance_estimate import PerformanceEstimate, add_gauges

log = logging.getLogger(__name__)

REFERENCE_ARTIFACT = "reference/reference.parquet"
EPISODE_TAG = "drift.episode"
PREDICTION = "prediction"
LABEL = "label"
SPLIT = "split"


class DriftStatus(StrEnum):
    DRIFT = "drift"
    OK = "ok"
    INSUFFICIENT = "insufficient"
    """Fewer logged rows than ``min_rows``: says nothing, never triggers."""
    NO_CHAMPION = "no_champion"


class DriftError(FactoryError, RuntimeError):
    """A drift check cannot run (no champion, no reference, bad log); the message says which."""


def feature_names(family: str) -> list[str]:
    from factory_core.families import spec

    return list(spec(family).features)


def monitored_columns(family: str, dcfg: DriftConfig) -> list[str]:
    """The feature columns a drift check compares: all but ``dcfg.ignore_columns``."""
    return [n for n in feature_names(family) if n not in dcfg.ignore_columns]


def to_columns(x: np.ndarray, names: list[str]) -> Any:
    """Model inputs ``[N, F]`` or ``[N, T, F]`` as a DataFrame with one column per feature (last tick)."""
    import pandas as pd

    x = np.asarray(x, dtype=np.float32)
    last = x[:, -1, :] if x.ndim == 3 else x
    if last.ndim != 2 or last.shape[1] != len(names):
        raise DriftError(f"inputs of shape {x.shape} do not match the {len(names)} features {names[:3]}…")
    return pd.DataFrame(last, columns=names)


def reference_frame(x: np.ndarray, prediction: np.ndarray, names: list[str], rows: int,
                    labels: np.ndarray | None = None, splits: np.ndarray | None = None) -> Any:
    """The reference window: ``rows`` evenly spaced samples of (inputs, prediction); with ``labels`` and
    ``splits`` also ``label`` and ``split`` (which the label-free estimate checks calibration on)."""
    idx = np.arange(len(x)) if len(x) <= rows else np.linspace(0, len(x) - 1, rows).round().astype(int)
    df = to_columns(np.asarray(x)[idx], names)
    df[PREDICTION] = np.asarray(prediction, dtype=np.float32).reshape(len(x), -1)[idx, 0]
    if labels is not None:
        df[LABEL] = np.asarray(labels, dtype=np.float32).reshape(len(x), -1)[idx, 0]
    if splits is not None:
        df[SPLIT] = np.asarray(splits).astype(str)[idx]
    return df


def served_frame(logged: Any, names: list[str]) -> Any:
    """Prediction-log rows as feature columns + ``prediction``; a row whose shape does not fit is an error."""
    import pandas as pd

    if len(logged) == 0:
        return pd.DataFrame(columns=[*names, PREDICTION], dtype=np.float32)
    last = np.empty((len(logged), len(names)), np.float32)
    for i, (flat, shape) in enumerate(zip(logged["features"], logged["feature_shape"])):
        shape = tuple(int(s) for s in shape)
        if not shape or shape[-1] != len(names) or int(np.prod(shape)) != len(flat):
            raise DriftError(f"prediction log row {i}: features of shape {shape} do not match the "
                             f"{len(names)} features of this family")
        last[i] = np.asarray(flat, np.float32).reshape(shape)[-1] if len(shape) == 2 else np.asarray(flat, np.float32)
    df = pd.DataFrame(last, columns=names)
    df[PREDICTION] = np.array([p[0] for p in logged["prediction"]], np.float32)
    return df


@dataclass
class ColumnDrift:
    column: str
    method: str
    score: float
    threshold: float
    drifted: bool


@dataclass
class DriftResult:
    family: str
    target: str
    since: str
    until: str
    status: DriftStatus
    reason: str = ""
    champion_version: str | None = None
    champion_run: str | None = None
    n_reference: int = 0
    n_current: int = 0
    drift_share: float = 0.0
    drifted_columns: int = 0
    severe_columns: list[str] = field(default_factory=list)
    """Columns whose score reached ``severe_score``: drift on their own, whatever the share."""
    dataset_drift: bool = False
    prediction: ColumnDrift | None = None
    columns: list[ColumnDrift] = field(default_factory=list)
    triggered: bool = False
    """This check started a drift episode and asked for retraining."""
    episode: dict[str, Any] | None = None
    estimate: PerformanceEstimate | None = None
    """Label-free performance on the window, for a family whose labels arrive late (:mod:`.performance_estimate`)."""
    html_uri: str | None = None
    json_uri: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types only (an XCom and summary.json)."""
        out = dataclasses.asdict(self) | {"status": self.status.value}
        if self.estimate is not None:
            out["estimate"]["calibration"]["status"] = self.estimate.calibration.status.value
        return out


def compare(reference: Any, current: Any, names: list[str], drift_share: float = 0.5, method: str | None = None,
            threshold: float | None = None, severe_score: float | None = None) -> tuple[dict[str, Any], Any]:
    """Run Evidently on the two windows. Returns (figures, Evidently snapshot for HTML). Dataset drift: the share
    of drifted feature columns reaches ``drift_share``, or a feature column's score reaches ``severe_score`` (a
    distance stattest's; see :class:`~factory_core.config.DriftConfig`)."""
    from evidently import Report
    from evidently.metrics import ValueDrift
    from evidently.presets import DataDriftPreset

    opts = {k: v for k, v in (("method", method), ("threshold", threshold)) if v is not None}
    report = Report([DataDriftPreset(columns=names, drift_share=drift_share, **opts),
                     ValueDrift(column=PREDICTION, **opts)], include_tests=True)
    snapshot = report.run(current_data=current[[*names, PREDICTION]], reference_data=reference[[*names, PREDICTION]])
    out = snapshot.dict()
    failed = {t["metric_config"]["metric_id"] for t in out["tests"] if t["status"] == "FAIL"}
    columns, share, count = {}, 0.0, 0
    for m in out["metrics"]:
        kind = m["config"]["type"].rsplit(":", 1)[-1]
        if kind == "ValueDrift":
            c = m["config"]
            columns[c["column"]] = ColumnDrift(c["column"], c["method"], float(m["value"]), float(c["threshold"]),
                                               m["id"] in failed)
        elif kind == "DriftedColumnsCount":
            share, count = float(m["value"]["share"]), int(m["value"]["count"])
    missing = [n for n in [*names, PREDICTION] if n not in columns]
    if missing:
        raise DriftError(f"Evidently returned no drift result for {missing}")
    severe = [n for n in names if severe_score is not None and columns[n].score >= severe_score]
    return {"columns": [columns[n] for n in names], "prediction": columns[PREDICTION], "drift_share": share,
            "drifted_columns": count, "severe_columns": severe,
            "dataset_drift": share >= drift_share or bool(severe)}, snapshot


def is_drift(result: DriftResult, prediction_drift: bool) -> bool:
    """Dataset drift, or (with ``prediction_drift``) a drifted prediction column."""
    return result.dataset_drift or (prediction_drift and result.prediction is not None and result.prediction.drifted)


def next_episode(state: dict[str, Any] | None, drifting: bool, champion: str, now: str, reason: str,
                 share: float | None = None, clean_to_close: int = 1,
                 close_below_share: float | None = None) -> tuple[dict[str, Any] | None, bool]:
    """Episode bookkeeping with hysteresis: returns (new state, fire?). Fires on the first drifting check only.

    An episode opens at a drifting check and stays open while checks keep drifting against the
    same champion. It closes after ``clean_to_close`` consecutive clean checks, or at once when a
    clean check's drift ``share`` is below ``close_below_share`` (clearly back to normal). A share
    that hovers around the threshold (0.38 / 0.50 / 0.44 / 0.50) keeps one episode open instead of
    firing on every upward crossing. A new champion starts a new episode (its own reference window).
    """
    open_same = bool(state and state.get("open") and state.get("champion") == champion)
    if not drifting:
        if not open_same:
            return state, False
        clean = int(state.get("clean", 0)) + 1
        clearly_back = close_below_share is not None and share is not None and share < close_below_share
        if clean >= clean_to_close or clearly_back:
            return {**state, "open": False, "clean": clean, "closed_at": now}, False
        return {**state, "clean": clean, "last_clean": now}, False
    if open_same:
        return {**state, "last_seen": now, "checks": int(state.get("checks", 1)) + 1, "clean": 0}, False
    return {"open": True, "champion": champion, "started": now, "last_seen": now, "checks": 1, "clean": 0,
            "reason": reason}, True


def drift_reason(result: DriftResult) -> str:
    top = sorted((c for c in result.columns if c.drifted), key=lambda c: c.column)
    parts = [f"{result.drifted_columns}/{len(result.columns)} feature columns drifted "
             f"(share {result.drift_share:.2f})"]
    severe = [c for c in result.columns if c.column in result.severe_columns]
    if severe:
        parts.append("severe: " + ", ".join(f"{c.column} {c.method} {c.score:.3g}" for c in severe))
    if top:
        parts.append("e.g. " + ", ".join(f"{c.column} {c.method} {c.score:.3g}" for c in top[:4]))
    if result.prediction is not None and result.prediction.drifted:
        parts.append(f"prediction drifted ({result.prediction.method} {result.prediction.score:.3g})")
    return f"{result.family}/{result.target} vs champion v{result.champion_version}: " + "; ".join(parts)


def load_reference(cfg: FactoryConfig, run_id: str) -> Any:
    """The champion's reference window, from its registering run's artifacts."""
    import os

    import mlflow
    import pandas as pd

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one small file; keep task logs clean
    mlflow.set_tracking_uri(cfg.tracking_uri)
    try:
        path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=REFERENCE_ARTIFACT)
    except Exception as exc:
        raise DriftError(f"run {run_id} has no reference window ({REFERENCE_ARTIFACT}): {exc}") from exc
    return pd.read_parquet(path)


def export_metrics(cfg: FactoryConfig, result: DriftResult) -> Path:
    """Drift figures for Prometheus (see :mod:`monitoring.batch`)."""
    from prometheus_client import CollectorRegistry, Gauge

    from .batch import publish

    reg = CollectorRegistry()
    labels = {"family": result.family, "target": result.target}
    Gauge("factory_drift_share", "Share of feature columns drifted in the last check", list(labels),
          registry=reg).labels(**labels).set(result.drift_share)
    Gauge("factory_drift_detected", "1 when the last check found dataset or prediction drift", list(labels),
          registry=reg).labels(**labels).set(float(result.status == DriftStatus.DRIFT))
    Gauge("factory_drift_check_timestamp_seconds", "When the last drift check ran", list(labels),
          registry=reg).labels(**labels).set_to_current_time()
    Gauge("factory_drift_current_rows", "Logged predictions in the last check's window", list(labels),
          registry=reg).labels(**labels).set(result.n_current)
    Gauge("factory_drift_retrain_triggered", "1 when the last check triggered retraining", list(labels),
          registry=reg).labels(**labels).set(float(result.triggered))
    col = Gauge("factory_drift_column_score", "Per-column drift score of the last check (see method)",
                [*labels, "column", "method"], registry=reg)
    for c in [*result.columns, *([result.prediction] if result.prediction else [])]:
        col.labels(**labels, column=c.column, method=c.method).set(c.score)
    if result.estimate is not None:
        add_gauges(reg, labels, result.estimate)
    return publish(cfg, f"factory_drift_{result.family}_{result.target}", reg, labels)
