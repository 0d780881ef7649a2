"""The smoke night on a real Celery fleet: four worker hosts (two on one GPU queue) in their own network, UTS and
mount namespaces, Airflow and MLflow on PostgreSQL, Redis as the broker, runs and engines on an S3 server,
triggered over REST (the fleet: ``conftest.py``, shared with ``test_faults``).

``make test`` skips it (with the reason) where root, PostgreSQL or redis-server are missing; ``.ci/run``
installs them and sets ``FACTORY_REQUIRE_CLUSTER=1``, under which a missing piece fails instead.
"""

from __future__ import annotations

import pytest

from .conftest import NIGHT, NO_POOLS, WORKERS, s3_json as _s3_json

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def test_unpausing_starts_no_run(before_pools):
    assert before_pools["unpause_runs"] == []


def test_a_missing_pool_fails_the_first_task_naming_it(fleet, before_pools):
    assert before_pools["run"]["state"] == "failed"
    states = {t["task_id"]: t["state"] for t in before_pools["tis"]}
    assert states["plan"] == "failed" and not any(s == "success" for k, s in states.items() if k != "plan")
    assert before_pools["seconds"] < 120, "a missing pool must end the night at once, not after a wait"
    s3, _ = _s3_json(fleet, "")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="fleet", Prefix=f"runs/{NO_POOLS}/")["Contents"]]
    failure = next(k for k in keys if "/failures/" in k and "plan" in k)
    reason = _s3_json(fleet, failure)[1]["reason"]
    assert "engines_cpu" in reason and "engines_sm_90" in reason and "factory airflow init" in reason


def test_the_smoke_night_succeeds_on_the_hosts_of_its_queues(fleet, night):
    assert "pool engines_cpu" in night["init"]
    failed = [(t["task_id"], t["map_index"], t["state"]) for t in night["tis"] if t["state"] not in
              ("success", "skipped")]
    assert night["run"]["state"] == "success", failed
    ran = {}
    for t in night["tis"]:
        if t["state"] == "success":
            ran.setdefault(t["task_id"], set()).add(t["hostname"])
    assert ran["train"] == {"w-train"}
    gpu90 = {w.name for w in WORKERS if "gpu_sm_90" in w.queues}
    assert ran["engine_sm_90"] <= gpu90 and ran["gate_sm_90"] <= gpu90
    for task, hosts in ran.items():
        if task not in ("train", "engine_sm_90", "gate_sm_90"):
            assert hosts == {"w-default"}, (task, hosts)
    print(f"\nfleet up in {fleet.started_s:.0f}s; smoke night {night['seconds']:.0f}s on {len(WORKERS)} workers")


def test_a_queue_without_worker_is_skipped_with_the_reason(fleet, night):
    states = {t["task_id"]: t["state"] for t in night["tis"]}
    assert states["route_sm_80"] == "success" and states["engine_sm_80"] == "skipped"
    assert states["gate_sm_80"] == "skipped" and states["route_sm_90"] == "success"
    _, report = _s3_json(fleet, f"runs/{NIGHT}/gates/report.json")
    sm80 = [g for g in report["targets"] if g["target"] == "sm_80"]
    assert len(sm80) == 3 and all(g["status"] == "skipped" and "no worker on queue gpu_sm_80" in g["reason"]
                                  for g in sm80)
    sm90 = [g for g in report["targets"] if g["target"] == "sm_90"]  # a worker, but no GPU or TensorRT here
    assert sm90 and all(g["status"] == "skipped" and "no worker" not in g["reason"] for g in sm90)


def test_runs_and_engines_live_on_s3_and_mlflow_on_postgres(fleet, night):
    from model_registry.registry import Registry

    s3, summary = _s3_json(fleet, f"runs/{NIGHT}/summary.json")
    assert {r["family"] for r in summary["families"]} == {"market_alert", "price_direction", "fraud_risk"}
    engines = s3.list_objects_v2(Bucket="fleet", Prefix="engines/")["KeyCount"]
    assert engines > 0
    reg = Registry(fleet.mlflow_url)
    for fam in ("market_alert", "price_direction", "fraud_risk"):
        assert reg.client.get_model_version_by_alias(f"{fam}.cpu", "challenger")


def test_no_worker_can_see_another_workers_disk(fleet, night):
    """Each worker's local disk is a tmpfs in its own mount namespace: the control plane sees an empty folder."""
    assert list(fleet.local.iterdir()) == []
    hosts = {t["hostname"] for t in night["tis"] if t["hostname"]}
    assert {"w-default", "w-train"} < hosts <= {w.name for w in WORKERS}  # and one of the GPU hosts
