"""
### drift_monitor

Every hour: for each enabled family and each serving target in
`monitoring.drift.targets`, **check** compares the predictions the serving hosts logged
in the last `monitoring.drift.window_hours` (`<store>/predictions/<family>/<target>/`)
with the champion's reference window (a test-split sample stored with the run that
registered it) using Evidently 0.7: per feature column the stattest and its score,
the share of drifted columns, and drift of the prediction itself. The HTML report and
a JSON summary go to the store (`drift/<family>/<target>/<stamp>/`) and to an MLflow
run in the `<experiment>-drift` experiment; the figures go to Prometheus (textfile
collector / Pushgateway). For a family whose labels arrive late (fraud_risk), the check
also estimates AUC and precision/recall at the threshold without labels (CBPE, after a
calibration check; docs/monitoring.md, "Label-free performance").

**request_retrain** then updates the Asset `model-factory://retrain` when some check
*opened a drift episode*, with the families and reasons in the event's extra; the
nightly DAG is scheduled on that asset and retrains those families. A drift episode
fires once: later drifting checks against the same champion do not fire again; a
clean check or a new champion ends the episode. With nothing new, request_retrain is
skipped and no asset event is emitted. **summary** prints one line per check; it fails
the run when a check failed (request_retrain still runs for the checks that succeeded).

Retries follow the error's cause, the same rule as the nightly (`retry_policy`): a registry
or store that does not answer retries; a malformed manifest or a wrong config fails at once.

Params: `since` / `until` (ISO times; default: the window ending at the run's time),
`families` (default: all enabled) and `profile`. The config file is `$FACTORY_CONFIG` on every host.
"""

from __future__ import annotations

import datetime as dt

import pendulum
from airflow.sdk import Asset, Param, dag, get_current_context, task

from factory_core.config import load_config
from pipelines.orchestration import RETRAIN_ASSET, config_from_params, retry_policy, xcom_items

_CFG = load_config()
CHECKS = [f"{f.value}:{t}" for f in _CFG.enabled_families for t in _CFG.monitoring.drift.targets]
RETRAIN = Asset(RETRAIN_ASSET)


@dag(
    dag_id="drift_monitor",
    schedule=_CFG.monitoring.drift.schedule,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 1, "retry_delay": dt.timedelta(minutes=1), "retry_policy": retry_policy()},
    params={
        "profile": Param("default", enum=["default", "smoke"]),
        "since": Param(None, type=["null", "string"], description="window start, ISO 8601 (UTC if naive)"),
        "until": Param(None, type=["null", "string"], description="window end, ISO 8601 (UTC if naive)"),
        "families": Param(None, type=["null", "array"], description="check only these families"),
    },
    tags=["model-factory", "monitoring"],
    doc_md=__doc__,
)
def drift_monitor():
    @task
    def check(family_target: str) -> dict:
        from airflow.sdk.exceptions import AirflowSkipException

        from pipelines.drift import check as drift_check

        ctx = get_current_context()
        params = ctx["params"]
        family, target = family_target.split(":")
        if params.get("families") and family not in params["families"]:
            raise AirflowSkipException(f"{family} not in params.families")
        cfg = config_from_params(params)
        since, until = window(ctx, cfg.monitoring.drift.window_hours)
        return drift_check(cfg, family, target, since, until).to_dict()

    # all_done: a check that opened an episode has already recorded it, so its retrain request must go
    # out even when another family's check failed; `summary` (all_success) then fails the run.
    @task(outlets=[RETRAIN], trigger_rule="all_done")
    def request_retrain(results: list) -> dict:
        from airflow.sdk.exceptions import AirflowSkipException

        fired = [r for r in xcom_items(results) if r and r["triggered"]]
        if not fired:
            raise AirflowSkipException("no new drift episode: nothing to retrain")
        extra = {"families": sorted({r["family"] for r in fired}), "reasons": [r["reason"] for r in fired],
                 "reports": [r["html_uri"] for r in fired]}
        get_current_context()["outlet_events"][RETRAIN].extra = extra
        return extra

    @task(trigger_rule="none_failed")  # skipped checks (params.families) are fine; a failed one fails the run
    def summary(results: list) -> list[str]:
        lines = [f"{r['family']}/{r['target']}: {r['status']}{' (retrain requested)' if r['triggered'] else ''}"
                 f" — {r['reason']}" for r in xcom_items(results) if r]
        for line in lines:
            print(line)
        return lines

    checked = check.expand(family_target=CHECKS)
    request_retrain(checked)
    summary(checked)


def window(ctx, hours: float) -> tuple[dt.datetime, dt.datetime]:
    def parse(text: str) -> dt.datetime:
        t = dt.datetime.fromisoformat(text)
        return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)

    params = ctx["params"]
    until = parse(params["until"]) if params.get("until") else (ctx.get("logical_date") or ctx["dag_run"].run_after)
    since = parse(params["since"]) if params.get("since") else until - dt.timedelta(hours=hours)
    return since, until


drift_monitor()
