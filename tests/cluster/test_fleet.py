"""The smoke night on a real Celery fleet: four worker hosts (two on one GPU queue) in their own network, UTS and
mount namespaces, Airflow and MLflow on PostgreSQL, Redis as the broker, runs and engines on an S3 server,
triggered over REST (the fleet: ``conftest.py``); then the fault nights on the same fleet (below).

``make test`` skips it (with the reason) where root, PostgreSQL or redis-server are missing; ``.ci/run``
installs them and sets ``FACTORY_REQUIRE_CLUSTER=1``, under which a missing piece fails instead.

Faults, injected into later nights of the same fleet. The fault night (one family, targets cpu and sm_90, smoke) takes six faults, each at its own stage:
the scheduler restarted during ``ingest``, Redis restarted during ``features``, ``kill -9`` of the host running
``train`` (it comes back 10 s later), PostgreSQL restarted during ``variants``, ``kill -9`` of the GPU host running
``engine_sm_90`` (it stays down: the retry moves to the queue's other host), and the link of the host running
``gate_cpu`` cut for 60 s. The night must complete with nothing duplicated or lost: every task instance
succeeded or was skipped for a recorded reason, one registry version per family × target for the date, its tags
matching the engine store.

The stuck night: the only ``train`` host is dead when the night starts, so ``train`` sits in ``queued`` with no
worker. The scheduler (restarted with a short ``task_queued_timeout``, no requeue) fails it within that bound,
and the night fails naming it in ``failures/`` and in the outcome task's error: never a silent hang.

Outcomes, bounds and what the nights add to CI's time: docs/operations.md, "Faults".

One module, so that pytest-xdist's ``--dist loadscope`` (``make test``) keeps the fleet's tests on one worker.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import time

import pytest

from .conftest import HEARTBEAT_TIMEOUT_S, NIGHT, NO_POOLS, RETRY_DELAY_S, WORKERS, s3_json as _s3_json

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


# The fault nights, after the smoke night on the same fleet.

FAULTS, STUCK = "2026-11-23", "2026-11-24"
FAMILY = "fraud_risk"
CONF = {"profile": "smoke", "families": [FAMILY], "targets": ["cpu", "sm_90"]}
LINK_DOWN_S = 60
QUEUED_TIMEOUT_S, QUEUED_CHECK_S = 30, 10
"""The stuck night's ``[scheduler] task_queued_timeout`` and its check interval (600 s and 120 s by default)."""


def _when(t: str | None) -> float | None:
    return dt.datetime.fromisoformat(t).timestamp() if t else None


def _running(fleet, run_id: str, task_id: str, timeout: float = 900) -> dict:
    """The first instance of ``task_id`` seen running (polled every 0.5 s)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tis = fleet.task_instances(run_id)
        hit = next((t for t in tis if t["task_id"] == task_id and t["state"] == "running" and t["hostname"]), None)
        if hit:
            return hit
        done = [t for t in tis if t["task_id"] == task_id and t["state"] in ("success", "failed", "skipped")]
        if done:
            raise AssertionError(f"{task_id} finished ({done[0]['state']}) before it was seen running: no fault")
        time.sleep(0.5)
    raise AssertionError(f"{task_id} not running within {timeout} s")


def inject(fleet, run_id: str) -> list[dict]:
    """The six faults, each when its stage runs; returns what was done, to whom, when (epoch seconds)."""
    done = []

    def mark(fault: str, ti: dict, **kw) -> None:
        done.append({"fault": fault, "task": ti["task_id"], "map_index": ti["map_index"], "host": ti["hostname"],
                     "try": ti["try_number"], "at": time.time(), **kw})

    ti = _running(fleet, run_id, "ingest")
    fleet.restart("scheduler")
    mark("scheduler restarted", ti)
    ti = _running(fleet, run_id, "features")
    fleet.restart("redis")
    mark("redis restarted (no persistence: its queues start empty)", ti)
    ti = _running(fleet, run_id, "train")
    fleet.kill_host(ti["hostname"])
    mark("kill -9 of the host running train", ti)
    time.sleep(10)
    fleet.start_worker(fleet.worker(ti["hostname"]))
    ti = _running(fleet, run_id, "variants")
    fleet.restart("postgres", pause_s=5)
    mark("postgres restarted (fast shutdown, 5 s down)", ti)
    ti = _running(fleet, run_id, "engine_sm_90")
    fleet.kill_host(ti["hostname"])
    mark("kill -9 of the GPU host running engine_sm_90 (stays down)", ti)
    ti = _running(fleet, run_id, "gate_cpu")
    fleet.set_link(ti["hostname"], False)
    mark(f"link of the host running gate_cpu down for {LINK_DOWN_S} s", ti)
    time.sleep(LINK_DOWN_S)
    fleet.set_link(ti["hostname"], True)
    return done


@pytest.fixture(scope="module")
def fault_night(fleet, night):
    run_id = fleet.trigger(FAULTS, CONF)
    t0 = time.time()
    faults = inject(fleet, run_id)
    run = fleet.wait_run(run_id, 1800)
    wall = time.time() - t0
    for w in fleet.workers:  # the GPU host killed for good comes back for the nights after
        if w.proc.poll() is not None:
            fleet.start_worker(w)
    tis = fleet.task_instances(run_id)
    print(f"\nfault night {wall:.0f} s")
    for f in faults:
        last = next(t for t in tis if t["task_id"] == f["task"] and t["map_index"] == f["map_index"])
        f.update(end_state=last["state"], end_try=last["try_number"], end_host=last["hostname"],
                 to_success_s=round(_when(last["end_date"]) - f["at"], 1) if last["end_date"] else None)
        print(f"  {f['fault']}: {f['task']}[{f['map_index']}] try {f['try']} on {f['host']} -> {f['end_state']} "
              f"try {f['end_try']} on {f['end_host']}, {f['to_success_s']} s after the fault")
    restarted = [r for r in fleet.restarts if r["at"] >= t0]
    for r in restarted:
        print(f"  supervisor: {r['service']} exited {r['exit']}, started again "
              f"{r['at'] - t0:.0f} s into the night")
    return {"run": run, "wall_s": wall, "tis": tis, "faults": faults, "run_id": run_id, "restarted": restarted}


def test_the_fault_night_completes(fault_night):
    bad = [(t["task_id"], t["map_index"], t["state"]) for t in fault_night["tis"]
           if t["state"] not in ("success", "skipped")]
    assert fault_night["run"]["state"] == "success", bad
    assert not bad


def test_a_killed_worker_s_task_is_retried_where_its_queue_has_a_host(fault_night):
    by = {f["task"]: f for f in fault_night["faults"]}
    train, gpu = by["train"], by["engine_sm_90"]
    assert train["end_state"] == "success" and train["end_try"] > train["try"]
    assert train["end_host"] == train["host"]  # the trainer came back; the retry waited for it
    assert gpu["end_state"] == "success" and gpu["end_try"] > gpu["try"]
    assert gpu["end_host"] != gpu["host"]  # moved to the queue's other host
    bound = HEARTBEAT_TIMEOUT_S + 10 + 4 * RETRY_DELAY_S + 120  # detection, its interval, backoff, the task itself
    assert train["to_success_s"] < bound and gpu["to_success_s"] < bound, (train, gpu)


def test_service_restarts_and_a_cut_link_lose_nothing(fleet, fault_night):
    for f in fault_night["faults"]:
        assert f["end_state"] == "success", f
    s3, summary = _s3_json(fleet, f"runs/{FAULTS}/summary.json")
    assert [r["family"] for r in summary["families"]] == [FAMILY]
    left = s3.list_objects_v2(Bucket="fleet", Prefix=f"runs/{FAULTS}/failures/").get("KeyCount", 0)
    assert left == 0, "a retry that succeeded removes its failure record"


def test_the_registry_holds_one_version_per_family_target_and_date_matching_the_store(fleet, fault_night):
    from model_registry.registry import Registry, model_name

    reg = Registry(fleet.mlflow_url)
    s3, report = _s3_json(fleet, f"runs/{FAULTS}/gates/report.json")
    passed = {g["target"] for g in report["targets"] if g["family"] == FAMILY and g["status"] == "ok"}
    assert "cpu" in passed
    for target in ("cpu", "sm_90"):
        versions = reg.find(FAMILY, target, date=FAULTS) if target in passed else []
        assert len(versions) == (1 if target in passed else 0), (target, [v.version for v in versions])
        for mv in versions:
            bucket_key = mv.source.removeprefix("s3://fleet/").rstrip("/") + "/manifest.json"
            manifest = s3.get_object(Bucket="fleet", Key=bucket_key)["Body"].read()
            assert mv.tags["manifest_sha256"] == hashlib.sha256(manifest).hexdigest(), model_name(FAMILY, target)
            engine = __import__("json").loads(manifest)["sha256"]["engine"]
            assert mv.tags["engine_sha256"] == engine


@pytest.fixture(scope="module")
def stuck_night(fleet, fault_night):
    """No live ``train`` host; the scheduler restarted with a short queued bound and no requeue."""
    trainer = next(w for w in fleet.workers if "train" in w.queues)
    fleet.kill_host(trainer.name)
    fleet.restart("scheduler", env={"AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": str(QUEUED_TIMEOUT_S),
                                    "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT_CHECK_INTERVAL": str(QUEUED_CHECK_S),
                                    "AIRFLOW__SCHEDULER__NUM_STUCK_IN_QUEUED_RETRIES": "0"})
    run_id = fleet.trigger(STUCK, {**CONF, "targets": ["cpu"]})
    t0 = time.time()
    run = fleet.wait_run(run_id, 900)
    wall = time.time() - t0
    tis = fleet.task_instances(run_id)
    train = next(t for t in tis if t["task_id"] == "train")
    queued_s = _when(train["end_date"]) - _when(train["queued_when"]) if train["end_date"] else None
    print(f"\nstuck night {wall:.0f} s; train {train['state']} after {queued_s} s queued")
    return {"run": run, "wall_s": wall, "tis": tis, "train": train, "queued_s": queued_s}


def test_a_task_queued_with_no_worker_fails_within_the_bound_and_is_named(fleet, stuck_night):
    assert stuck_night["run"]["state"] == "failed"
    train = stuck_night["train"]
    assert train["state"] == "failed" and not train["hostname"] and train["try_number"] <= 1  # it never ran
    assert stuck_night["queued_s"] <= QUEUED_TIMEOUT_S + 2 * QUEUED_CHECK_S + 15
    s3, _ = _s3_json(fleet, "")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="fleet", Prefix=f"runs/{STUCK}/failures/")["Contents"]]
    assert [k.rsplit("/", 1)[1] for k in keys if "/train" in k], keys
    record = _s3_json(fleet, next(k for k in keys if "/train" in k))[1]
    assert "queue train" in record["reason"] and "queued" in record["reason"], record
    outcome = next(t for t in stuck_night["tis"] if t["task_id"] == "outcome")
    assert outcome["state"] == "failed"
