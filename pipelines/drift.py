"""The hourly drift check as a stage: resolve the champion in the registry, compare what serving logged
against its reference window (:mod:`monitoring.drift`), record the episode, publish the report.

It lives here, beside the other stages, because it joins the registry and the store to the drift
statistics; :mod:`monitoring` itself depends only on the ground floor.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path
from typing import Any

from factory_core import layout
from factory_core.config import FactoryConfig
from factory_core.families import spec
from monitoring.drift import (
    EPISODE_TAG,
    PREDICTION,
    DriftResult,
    DriftStatus,
    compare,
    drift_reason,
    export_metrics,
    feature_names,
    is_drift,
    load_reference,
    monitored_columns,
    next_episode,
    served_frame,
)
from monitoring.performance_estimate import PerformanceEstimate, estimate_performance

log = logging.getLogger(__name__)


def check(cfg: FactoryConfig, family: str, target: str, since: dt.datetime, until: dt.datetime, *,
          dest: Path | None = None, now: dt.datetime | None = None, record_episode: bool = True) -> DriftResult:
    """One drift check of ``family``/``target`` over ``[since, until)``.

    Writes ``report.html`` and ``summary.json`` to the store (``drift/<family>/<target>/<stamp>/``)
    and to an MLflow run, and exports the figures as Prometheus metrics (textfile collector,
    and the Pushgateway when configured). With ``record_episode`` (the DAG) it also updates
    the episode tag and sets ``triggered``; without (``factory drift check``) the episode is
    only read, because only the DAG can emit the retrain asset event that must follow.
    """
    from model_registry.registry import NoSuchAlias, Registry
    from monitoring.serving import read_predictions

    dcfg = cfg.monitoring.drift
    now = now or dt.datetime.now(dt.timezone.utc)
    result = DriftResult(family, target, since.isoformat(), until.isoformat(), status=DriftStatus.OK)
    registry = Registry(cfg.tracking_uri)
    try:
        champion = registry.resolve(family, target, "champion")
    except NoSuchAlias as exc:  # an outage raises: the check fails rather than reading "no champion"
        result.status, result.reason = DriftStatus.NO_CHAMPION, str(exc)
        log.warning("drift %s/%s: %s", family, target, exc)
        return result
    result.champion_version, result.champion_run = str(champion.version), champion.run_id
    names = monitored_columns(family, dcfg)
    reference = load_reference(cfg, champion.run_id)
    current = served_frame(read_predictions(cfg.prediction_log_uri, family, target, since, until,
                                            cfg.registry.s3_endpoint_url), feature_names(family))
    result.n_reference, result.n_current = len(reference), len(current)
    snapshot = None
    if len(current) < dcfg.min_rows:
        result.status = DriftStatus.INSUFFICIENT
        result.reason = f"{len(current)} logged predictions in the window, fewer than min_rows={dcfg.min_rows}"
    else:
        figures, snapshot = compare(reference, current, names, dcfg.share_for(family), dcfg.method, dcfg.threshold,
                                    dcfg.severe_score)
        for k, v in figures.items():
            setattr(result, k, v)
        result.status = DriftStatus.DRIFT if is_drift(result, dcfg.prediction_drift) else DriftStatus.OK
        result.reason = drift_reason(result)
        result.estimate = estimate_without_labels(cfg, family, reference, current)
    drifting = result.status is DriftStatus.DRIFT
    state = registry.get_model_tag(family, target, EPISODE_TAG)
    result.episode = json.loads(state) if state else None
    if record_episode and result.status is not DriftStatus.INSUFFICIENT:  # too little data says nothing about the episode
        new_state, result.triggered = next_episode(result.episode, drifting, result.champion_version,
                                                   now.isoformat(), result.reason, share=result.drift_share,
                                                   clean_to_close=dcfg.clean_checks_to_close,
                                                   close_below_share=dcfg.close_below_share_for(family))
        if new_state is not None:
            registry.set_model_tag(family, target, EPISODE_TAG, json.dumps(new_state, sort_keys=True))
        result.episode = new_state
    _publish(cfg, result, snapshot, now, dest)
    export_metrics(cfg, result)
    log.info("drift %s/%s: %s%s — %s", family, target, result.status, " (retrain triggered)" if result.triggered else "",
             result.reason)
    return result


def estimate_without_labels(cfg: FactoryConfig, family: str, reference: Any,
                            current: Any) -> PerformanceEstimate | None:
    """For a family whose labels arrive late (``label_delay_days``): AUC, precision and recall at its threshold on
    the window, estimated from the champion's probabilities (CBPE), after checking their calibration on the
    reference's labelled rows. None for a family whose labels are there when the drift check runs."""
    s = spec(family)
    if s.label_delay_days <= 0 or s.classes != 1:  # the estimate reads `prediction` as P(positive): one sigmoid
        return None
    est = estimate_performance(reference, current[PREDICTION].to_numpy(), cfg.families[s.family].threshold)
    log.info("estimate %s: AUC %s precision %s recall %s (%s)", family, est.auc, est.precision, est.recall, est.reason)
    return est


def latest_check(cfg: FactoryConfig, family: str, target: str) -> dict[str, Any] | None:
    """The newest drift check recorded for ``family``/``target`` (its ``summary.json``, with the label-free
    estimate), from the drift experiment in MLflow; None when none was recorded. A registry outage raises."""
    import tempfile

    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(cfg.tracking_uri)
    exp = client.get_experiment_by_name(f"{cfg.registry.experiment}-drift")
    if exp is None:
        return None
    runs = client.search_runs([exp.experiment_id], f"tags.family = '{family}' and tags.target = '{target}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(runs[0].info.run_id, "drift/summary.json", tmp)
        except MlflowException as exc:  # a check whose artifacts never landed: say so on the page, not fail publish
            log.warning("drift %s/%s: run %s has no drift/summary.json: %s", family, target, runs[0].info.run_id, exc)
            return None
        return json.loads(Path(path).read_text())


def _publish(cfg: FactoryConfig, result: DriftResult, snapshot: object, now: dt.datetime, dest: Path | None) -> None:
    """HTML + JSON side by side: locally (``<home>/drift/…`` or ``dest``), in the store, in an MLflow run."""
    import mlflow

    from model_registry.registry import use_experiment
    from model_registry.store import open_store

    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    folder = Path(dest) if dest else cfg.home / "drift" / result.family / result.target / stamp
    folder.mkdir(parents=True, exist_ok=True)
    if snapshot is not None:
        snapshot.save_html(str(folder / "report.html"))
    (folder / "summary.json").write_text(json.dumps(result.to_dict(), indent=2, default=str))
    store = open_store(cfg.store_uri, cfg.registry.s3_endpoint_url)
    uri = store.put_files(folder, layout.drift_report(result.family, result.target, stamp))
    result.json_uri = f"{uri}/summary.json"
    result.html_uri = f"{uri}/report.html" if snapshot is not None else None
    use_experiment(cfg, f"{cfg.registry.experiment}-drift")
    with mlflow.start_run(run_name=f"drift {result.family}/{result.target} {stamp}",
                          tags={"family": result.family, "target": result.target, "status": result.status,
                                "champion_version": str(result.champion_version),
                                "triggered": str(result.triggered).lower()}):
        mlflow.log_metrics({"drift_share": result.drift_share, "drifted_columns": result.drifted_columns,
                            "n_current": result.n_current, "n_reference": result.n_reference}
                           | ({"prediction_score": result.prediction.score} if result.prediction else {})
                           | {f"estimated_{k}": v for k in ("auc", "precision", "recall")
                              if result.estimate is not None and result.estimate.trusted
                              and (v := getattr(result.estimate, k)) is not None}
                           | {f"score.{c.column}": c.score for c in result.columns})
        mlflow.log_artifacts(str(folder), "drift")
    (folder / "summary.json").write_text(json.dumps(result.to_dict(), indent=2, default=str))  # with the URIs
