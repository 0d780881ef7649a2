"""The DAG folder imports cleanly, fast, and without heavy libraries."""

import json
import subprocess
import sys
from pathlib import Path

DAGS = Path(__file__).resolve().parents[2] / "dags"
HEAVY = ["torch", "onnx", "onnxruntime", "modelopt", "mlflow", "evidently", "pynvml", "tensorrt", "sklearn", "pandas"]

PROBE = r"""
import json, os, sys, time
t = time.perf_counter()
from airflow.dag_processing.dagbag import DagBag
t_airflow = time.perf_counter() - t
t = time.perf_counter()
bag = DagBag(dag_folder=sys.argv[1])
parse = time.perf_counter() - t
heavy = [m for m in json.loads(sys.argv[2]) if m in sys.modules]
dag = bag.dags.get("nightly_model_factory")
drift = bag.dags.get("drift_monitor")
sched = dag.timetable if dag else None
print(json.dumps({"errors": {k: str(v) for k, v in bag.import_errors.items()}, "dags": sorted(bag.dag_ids),
                  "parse_s": parse, "heavy": heavy, "schedule": sched.timetable.expression if dag else None,
                  "schedule_assets": [a.uri for a in sched.asset_condition.objects] if dag else [],
                  "drift": {"schedule": drift.timetable.expression, "tasks": sorted(drift.task_ids),
                            "outlets": [o.uri for o in drift.get_task("request_retrain").outlets],
                            "checks": drift.get_task("check").op_kwargs_expand_input.value["family_target"]}
                  if drift else None,
                  "catchup": dag.catchup if dag else None, "retries": dag.default_args.get("retries") if dag else None,
                  "tasks": sorted(dag.task_ids) if dag else [], "doc": bool(dag and dag.doc_md),
                  "policies": {d.dag_id: sorted({type(t.retry_policy).__name__ for t in d.tasks
                                                 if getattr(t, "retries", 0)}) for d in (dag, drift) if d},
                  "engines": {t.task_id: [t.queue, t.pool] for t in dag.tasks if t.task_id.startswith("engine_")}
                  if dag else {}}))
"""


def _probe(tmp_path, **extra_env):
    env = {"AIRFLOW_HOME": str(tmp_path / "airflow"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{tmp_path / 'airflow.db'}",
           "PATH": "/usr/bin:/bin", "FACTORY_HOME": str(tmp_path / "factory"),
           "PYTHONPATH": str(DAGS.parent),  # this checkout's packages, not whichever one the venv installed
           **extra_env}
    out = subprocess.run([sys.executable, "-c", PROBE, str(DAGS), json.dumps(HEAVY)], env=env, capture_output=True,
                         text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_dagbag_imports_without_errors_or_heavy_modules(tmp_path):
    r = _probe(tmp_path)
    assert r["errors"] == {}
    assert "nightly_model_factory" in r["dags"]
    assert r["heavy"] == [], f"DAG parsing imported heavy modules: {r['heavy']}"
    # A generous bound: parsing must not do work. Real numbers are ~0.1-0.5 s here.
    assert r["parse_s"] < 5.0, f"DAG folder took {r['parse_s']:.2f}s to parse"


def test_nightly_dag_shape(tmp_path):
    r = _probe(tmp_path)
    assert r["schedule"] == "0 2 * * *"
    assert r["schedule_assets"] == ["model-factory://retrain/"]  # drift_monitor can trigger it too
    assert r["catchup"] is False and r["retries"] >= 1 and r["doc"]
    assert {"plan", "ingest", "features", "train", "export", "summarize", "outcome"} <= set(r["tasks"])


def test_drift_monitor_is_hourly_per_family_and_target_and_updates_the_retrain_asset(tmp_path):
    d = _probe(tmp_path)["drift"]
    assert d["schedule"] == "0 * * * *"
    assert d["tasks"] == ["check", "request_retrain", "summary"]
    assert d["outlets"] == ["model-factory://retrain/"]
    assert sorted(d["checks"]) == ["fraud_risk:cpu", "market_alert:cpu", "price_direction:cpu"]
    cfg = tmp_path / "factory.yaml"
    cfg.write_text("monitoring:\n  drift:\n    schedule: '*/15 * * * *'\n    targets: [cpu, sm_90]\n"
                   "families:\n  price_direction: {enabled: false}\n")
    d = _probe(tmp_path, FACTORY_CONFIG=str(cfg))["drift"]
    assert d["schedule"] == "*/15 * * * *"
    assert sorted(d["checks"]) == ["fraud_risk:cpu", "fraud_risk:sm_90", "market_alert:cpu", "market_alert:sm_90"]


def test_one_engine_task_per_target_on_its_queue_and_pool(tmp_path):
    r = _probe(tmp_path)
    assert set(r["engines"]) == {f"engine_{t}" for t in ("cpu", "sm_80", "sm_86", "sm_89", "sm_90", "sm_100")}
    assert r["engines"]["engine_sm_86"] == ["gpu_sm_86", "engines_sm_86"]
    assert r["engines"]["engine_cpu"] == ["default", "engines_cpu"]
    assert _probe(tmp_path, FACTORY_PROFILE="smoke")["engines"] == r["engines"]  # a profile sizes, never shapes
    cfg = tmp_path / "factory.yaml"
    cfg.write_text("engines:\n  targets:\n    - {name: cpu, queue: cpu_builds}\n"
                   "    - {name: sm_89, queue: l40s, pool: l40s_gpus}\n")
    assert _probe(tmp_path, FACTORY_CONFIG=str(cfg))["engines"] == {"engine_cpu": ["cpu_builds", "engines_cpu"],
                                                                    "engine_sm_89": ["l40s", "l40s_gpus"]}


def test_targets_auto_is_resolved_on_the_worker_not_at_parse(tmp_path):
    cfg = tmp_path / "factory.yaml"
    cfg.write_text("engines:\n  targets: auto\n")
    r = _probe(tmp_path, FACTORY_CONFIG=str(cfg))
    assert r["engines"] == {"engine_cpu": ["default", "engines_cpu"], "engine_auto": ["default", "engines_auto"]}
    assert "pynvml" not in r["heavy"] and r["heavy"] == []  # parsing probed nothing


def test_both_dags_declare_the_one_retry_policy_on_every_retried_task(tmp_path):
    """The retry rule (by the error's cause) is declared once per DAG, in default_args, so every task that retries
    carries it: Airflow's ExceptionRetryPolicy (pipelines.orchestration.retry_policy)."""
    assert _probe(tmp_path)["policies"] == {"nightly_model_factory": ["ExceptionRetryPolicy"],
                                            "drift_monitor": ["ExceptionRetryPolicy"]}
