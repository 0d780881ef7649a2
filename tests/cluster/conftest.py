"""One fleet for the package: the smoke night of ``test_fleet`` first, then its fault nights on the same control
plane and workers (starting a fleet costs a minute of CI; the nights use their own dates). The package is one
module, so pytest-xdist's ``--dist loadscope`` (``make test``) runs it on one worker: one fleet at a time."""

from __future__ import annotations

import json
import os
import time

import pytest

from .fleet import DAG_ID, Fleet, Worker, missing

NIGHT, NO_POOLS = "2026-11-22", "2026-11-21"
WORKERS = [Worker("w-default", ["default"], 3), Worker("w-train", ["train"], 3), Worker("w-gpu90", ["gpu_sm_90"], 1),
           Worker("w-gpu90b", ["gpu_sm_90"], 1)]  # two hosts on one GPU queue: a dead one's task moves over
TARGETS = [{"name": "cpu", "required": True}, {"name": "sm_90"}, {"name": "sm_80"}]  # nobody serves gpu_sm_80
HEARTBEAT_TIMEOUT_S = 60
"""``[scheduler] task_instance_heartbeat_timeout`` (default 300 s): how long a task whose host died stays
``running`` before the scheduler fails it into its retry. Short here so a killed worker costs CI a minute."""
RETRY_DELAY_S = 5
"""``runs.retry_delay_s`` of the fleet (120 s in production): the fault tests wait for retries."""


@pytest.fixture(scope="package")
def fleet(tmp_path_factory):
    lacking = missing()
    if lacking:
        if os.environ.get("FACTORY_REQUIRE_CLUSTER") == "1":
            pytest.fail(f"cluster test required but this machine lacks: {', '.join(lacking)}")
        pytest.skip(f"no local fleet: this machine lacks {', '.join(lacking)} (.ci/run installs them)")
    f = Fleet(tmp_path_factory.mktemp("fleet"), WORKERS, TARGETS, wait_s=20,
              airflow_conf={"AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT_S)},
              runs={"retry_delay_s": RETRY_DELAY_S})
    t0 = time.monotonic()
    try:
        f.start()
        f.started_s = time.monotonic() - t0
        yield f
    finally:
        f.stop()


def s3_json(fleet: Fleet, key: str):
    import boto3

    s3 = boto3.client("s3", endpoint_url=fleet.s3_url, region_name="us-east-1", aws_access_key_id="testing",
                      aws_secret_access_key="testing")
    return s3, (json.loads(s3.get_object(Bucket="fleet", Key=key)["Body"].read()) if key else None)


@pytest.fixture(scope="package")
def before_pools(fleet):
    """Unpause (it must start nothing), then a night before `factory airflow init`: it must fail at once."""
    fleet.api("PATCH", f"/dags/{DAG_ID}", {"is_paused": False})
    time.sleep(10)  # a scheduler loop or two: a surprise run would appear now
    runs_after_unpause = fleet.api("GET", f"/dags/{DAG_ID}/dagRuns")["dag_runs"]
    run_id = fleet.trigger(NO_POOLS, {"profile": "smoke"})
    t0 = time.monotonic()
    run = fleet.wait_run(run_id, 300)
    return {"unpause_runs": runs_after_unpause, "run": run, "seconds": time.monotonic() - t0,
            "tis": fleet.task_instances(run_id)}


@pytest.fixture(scope="package")
def night(fleet, before_pools):
    init_out = fleet.init_pools()
    run_id = fleet.trigger(NIGHT, {"profile": "smoke"})
    t0 = time.monotonic()
    run = fleet.wait_run(run_id, 1500)
    return {"run": run, "seconds": time.monotonic() - t0, "tis": fleet.task_instances(run_id), "init": init_out}
