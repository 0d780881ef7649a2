"""
### nightly_model_factory

Every night at 02:00 UTC: **ingest** the lake days before the logical date (the
embedded simulator fills missing days) → **features** → **train**, mapped over the
enabled families → **export** each to FP32 ONNX with parity against PyTorch → **variants**: FP16 and
INT8 (ModelOpt explicit Q/DQ, regime-stratified calibration) graphs, each scored in
ONNX Runtime on validation → **summarize**.

Params: `profile` (`default` | `smoke`) and `config_path` (a `factory.yaml`).
Outputs live under `$FACTORY_HOME/runs/<date>/`. Every task is idempotent on the
logical date: it writes to a temporary directory and renames it into place.
Bad input (a malformed partition, a wrong config, a broken export) fails at once
without retries and names what is wrong; other errors retry with backoff.

This file is wiring only: each task calls one function of `pipelines.stages`.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Param, dag, get_current_context, task

from pipelines import stages
from pipelines.orchestration import run_date, run_stage


@dag(
    dag_id="nightly_model_factory",
    schedule="0 2 * * *",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=2), "retry_exponential_backoff": True},
    params={
        "profile": Param("default", enum=["default", "smoke"], description="size of the night"),
        "config_path": Param(None, type=["null", "string"], description="factory.yaml to use"),
    },
    tags=["model-factory", "nightly"],
    doc_md=__doc__,
)
def nightly_model_factory():
    @task
    def plan() -> dict:
        return run_stage(stages.plan, run_date(get_current_context()))

    @task
    def families(plan: dict) -> list[str]:
        return plan["families"]

    @task
    def ingest(plan: dict) -> dict:
        return run_stage(stages.ingest, plan)

    @task
    def features(plan: dict, snapshot: dict) -> dict:
        return run_stage(stages.build_features, plan, snapshot)

    @task
    def train(plan: dict, feature_set: dict, family: str) -> dict:
        return run_stage(stages.train, plan, feature_set, family=family)

    @task
    def export(plan: dict, trained: dict) -> dict:
        return run_stage(stages.export, plan, trained)

    @task
    def variants(plan: dict, exported: dict) -> dict:
        return run_stage(stages.make_variants, plan, exported)

    @task
    def summarize(plan: dict, trained: list[dict], exported: list[dict], variant_sets: list[dict]) -> str:
        # Index by length: iterating a lazy XCom sequence probes one past its end.
        return run_stage(stages.summarize, plan, *([seq[i] for i in range(len(seq))]
                                                   for seq in (trained, exported, variant_sets)))

    p = plan()
    snap = ingest(p)
    fs = features(p, snap)
    trained = train.partial(plan=p, feature_set=fs).expand(family=families(p))
    exported = export.partial(plan=p).expand(trained=trained)
    variant_sets = variants.partial(plan=p).expand(exported=exported)
    summarize(p, trained, exported, variant_sets)


nightly_model_factory()
