"""
### nightly_model_factory

Every night at 02:00 UTC: **plan** (first: fails at once, naming them, when the target pools of
`infra/airflow/pools.json` are missing; then the preflight of every service) → **ingest** the lake days before the logical date (the
embedded simulator fills missing days) → **features** → **train**, mapped over the
enabled families → **export** each to FP32 ONNX with parity against PyTorch → **variants**: FP16 and
INT8 (ModelOpt explicit Q/DQ, regime-stratified calibration) graphs, each scored in
ONNX Runtime on validation → **engine_<target>**: one task per target of the matrix
(`engines.targets`), on that target's queue and pool, mapped over family × precision:
ONNX Runtime for `cpu`, TensorRT through Polygraphy for `sm_XY`. A target whose
hardware or backend this worker lacks records `skipped` with the reason (a failure
when the target is `required`) → **accuracy** per family: every variant's own outputs
against the FP32 PyTorch model's on every test window (agreement with measured bounds,
metric deltas rejected only on paired-bootstrap evidence, NaN) → **gate_<target>** per
family, on the target's queue and pool: each engine scored on its own outputs the same
way, lineage to the variant that passed, parity vs its ONNX (diagnostic), latency
interleaved with the champion in rounds, the paired champion comparison, and the selection →
**gate_report**: `gates/report.json` and the accuracy-vs-p99 plot → **publish** per
family: an MLflow run (params, metrics, PyTorch and ONNX models, gate report), each
selected engine pushed to the engine store and registered as a version of
`<family>.<target>` with alias `challenger` (and `champion` under `gates.auto_promote`)
→ **summarize**.

Also triggered by the Airflow Asset `model-factory://retrain`, which `drift_monitor`
updates when a family's served data drifts: such a run retrains the drifted families
only, and records the drift reason in its plan. A last task, **outcome** (runs
whatever happened), exports the night's outcome and each champion's promotion time
to Prometheus, for the "nightly failed" and "no fresh champion" alerts.

Under the CeleryExecutor, **queues** waits up to `engines.worker_wait_s` for a live worker on each GPU
target's queue (`gpu_sm_XY`); **route_<target>** skips the build and gate of a target without one, which the
gate report records `skipped`: "no worker on queue gpu_sm_XY" (a `required` target fails the night instead).
`train` runs on `train.queue` (the trainer host in a fleet). Unpausing starts nothing: the first run is the
next 02:00 (no `start_date`); see docs/operations.md.

The target matrix is read from the factory config when the DAG is parsed
(`$FACTORY_CONFIG` or `./factory.yaml`, profile `$FACTORY_PROFILE`).

Params: `profile` (`default` | `smoke`: the size of a night), and `families` and `targets`, which narrow the
night (a target left out records `skipped` with the reason). The DAG's shape (its `engine_<target>` and
`gate_<target>` tasks) comes from the config file alone (`$FACTORY_CONFIG`), the same file every worker reads;
`targets: auto` is resolved by the worker that builds, not where this file is parsed.
Outputs live under `$FACTORY_HOME/runs/<date>/`. Every task is idempotent on the
logical date: it writes to a temporary directory and renames it into place.
Retries follow the error's cause, declared once for every task (`retry_policy`): bad input
(a malformed partition, a wrong config, a broken export, a malformed manifest) fails at once and
names what is wrong; an unreachable service (preflight's included) retries with backoff
(`runs.task_retries`, from `runs.retry_delay_s`), as does any other error.

This file is wiring only: each task calls one function of `pipelines.stages`.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Asset, AssetOrTimeSchedule, CronTriggerTimetable, Param, dag, get_current_context, task

from factory_core.config import load_config
from pipelines import stages
from pipelines.orchestration import (
    RETRAIN_ASSET,
    config_from_params,
    queue_outcomes,
    retrain_request,
    retry_policy,
    run_date,
    run_stage,
    unreported_in,
    xcom_items,
)

LABEL = "{{ factory_label }}"
"""A mapped task instance's name in the UI and in ``factory nightly``'s progress: its family (and precision)."""
SHAPE = load_config()  # the DAG's shape: the config file alone, never a run's params
TARGETS = SHAPE.declared_targets()
ROUTED = [t for t in TARGETS if t.queue != "default"]
"""Targets on their own queue: a night waits a bounded time for a live worker there (``engines.worker_wait_s``)."""


@dag(
    dag_id="nightly_model_factory",
    schedule=AssetOrTimeSchedule(timetable=CronTriggerTimetable("0 2 * * *", timezone="UTC"),
                                 assets=[Asset(RETRAIN_ASSET)]),
    # No start_date: unpausing waits for the next 02:00 instead of starting a run for the slot that just passed.
    catchup=False,
    max_active_runs=1,  # one night at a time: a run writes runs/<date>/ and moves the registry's aliases
    default_args={"retries": SHAPE.runs.task_retries, "retry_delay": timedelta(seconds=SHAPE.runs.retry_delay_s),
                  "retry_exponential_backoff": True, "retry_policy": retry_policy()},
    params={
        "profile": Param("default", enum=["default", "smoke"], description="size of the night (never its shape)"),
        "families": Param(None, type=["null", "array"], items={"type": "string"},
                          description="train only these families (default: every enabled one)"),
        "targets": Param(None, type=["null", "array"], items={"type": "string"},
                         description="build only these configured targets; the others record skipped"),
    },
    tags=["model-factory", "nightly"],
    doc_md=__doc__,
)
def nightly_model_factory():
    @task
    def plan() -> dict:
        ctx = get_current_context()
        families, trigger = retrain_request(ctx)
        return run_stage(stages.plan, run_date(ctx), families=families or ctx["params"].get("families"),
                         trigger=trigger, targets=ctx["params"].get("targets"),
                         pools=sorted({str(t.pool) for t in TARGETS}))  # a missing pool: tasks never scheduled

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
    def queues(plan: dict) -> dict:
        """Waits (bounded) for a live worker on each routed target's queue; ``{target: reason}`` for those without."""
        return queue_outcomes(plan, ROUTED, SHAPE.engines.worker_wait_s)

    @task.short_circuit(ignore_downstream_trigger_rules=False)
    def route(outcomes: dict, target: str) -> bool:
        """False (skips this target's build and gate) when its queue has no worker; the report records why."""
        return target not in outcomes

    @task(map_index_template=LABEL, queue=SHAPE.train.queue)
    def train(plan: dict, feature_set: dict, family: str) -> dict:
        return run_stage(stages.train, plan, feature_set, family=family)

    @task(map_index_template=LABEL)
    def export(plan: dict, trained: dict) -> dict:
        return run_stage(stages.export, plan, trained)

    @task(map_index_template=LABEL)
    def variants(plan: dict, exported: dict) -> dict:
        return run_stage(stages.make_variants, plan, exported)

    @task(map_index_template=LABEL)
    def engine(plan: dict, variant_set: dict, precision: str, target: str) -> dict:
        return run_stage(stages.build_engine, plan, variant_set, precision=precision, target=target)

    @task(map_index_template=LABEL)
    def accuracy(plan: dict, variant_set: dict) -> dict:
        return run_stage(stages.gate_accuracy, plan, variant_set)

    @task(map_index_template=LABEL)
    def gate(plan: dict, accuracy: dict, built: list[dict], target: str) -> dict:
        return run_stage(stages.gate_target, plan, accuracy, xcom_items(built), target=target)

    @task(trigger_rule="none_failed")  # a target skipped for want of a worker is recorded, not a failure
    def gate_report(plan: dict, accuracy: list[dict], gates: list, unavailable: dict) -> dict:
        return run_stage(stages.gate_report, plan, xcom_items(accuracy), [g for seq in gates for g in xcom_items(seq)],
                         unavailable=unavailable)

    @task(map_index_template=LABEL)
    def publish(plan: dict, report: dict, night: tuple) -> dict:
        trained, exported = night
        return run_stage(stages.publish, plan, trained, exported, report)

    @task(trigger_rule="none_failed")
    def summarize(plan: dict, trained: list[dict], exported: list[dict], variant_sets: list[dict],
                  engines: list, report: dict, published: list[dict], unavailable: dict) -> str:
        built = [e for per_target in engines for e in xcom_items(per_target)]
        return run_stage(stages.summarize, plan, xcom_items(trained), xcom_items(exported), xcom_items(variant_sets),
                         built, report, xcom_items(published), unavailable=unavailable)

    @task(trigger_rule="all_done", retries=0)
    def outcome() -> None:
        from airflow.sdk.exceptions import AirflowFailException

        ctx = get_current_context()
        failed = stages.record_outcome(config_from_params(ctx["params"]), run_date(ctx), unreported_in(ctx))
        if failed:  # keep the run failed: this task is its only leaf
            raise AirflowFailException(f"nightly failed: {', '.join(failed)}")

    p = plan()
    snap = ingest(p)
    fs = features(p, snap)
    trained = train.partial(plan=p, feature_set=fs).expand(family=families(p))
    exported = export.partial(plan=p).expand(trained=trained)
    variant_sets = variants.partial(plan=p).expand(exported=exported)
    acc = accuracy.partial(plan=p).expand(variant_set=variant_sets)
    q = queues(p)
    built, gated = [], []
    for t in TARGETS:  # each target's build and gate run on its own workers
        on_target = {"queue": t.queue, "pool": t.pool}
        b = engine.override(task_id=f"engine_{t.name}", **on_target).partial(plan=p, target=t.name)
        b = b.expand(variant_set=variant_sets, precision=t.precisions)
        g = gate.override(task_id=f"gate_{t.name}", **on_target).partial(plan=p, built=b, target=t.name)
        g = g.expand(accuracy=acc)
        if t.queue != "default":
            route.override(task_id=f"route_{t.name}")(q, t.name) >> b
        built.append(b)
        gated.append(g)
    report = gate_report(p, acc, gated, q)
    published = publish.partial(plan=p, report=report).expand(night=trained.zip(exported))
    summarize(p, trained, exported, variant_sets, built, report, published, q) >> outcome()


nightly_model_factory()
