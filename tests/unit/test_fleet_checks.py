"""A night never hangs on the deployment: missing pools fail its first task by name; a queue without a live
worker is waited on for a bounded time, then skipped (or fails the night when required), in the same words.

The Celery inspection and the pool listing are the seams replaced here; tests/cluster runs both for real."""

from __future__ import annotations

import time

import pytest
import yaml

from factory_core.config import load_config
from factory_core.errors import BadInput, is_final
from pipelines import fleet
from pipelines.orchestration import queue_outcomes


def test_wait_for_queue_returns_once_a_worker_appears_and_names_the_queue_when_none_does():
    calls = iter([[], [], ["celery@w-gpu90"]])
    assert fleet.wait_for_queue("gpu_sm_90", 5, lambda q: next(calls), poll_s=0.01) is None
    t0 = time.monotonic()
    reason = fleet.wait_for_queue("gpu_sm_90", 0.2, lambda q: [], poll_s=0.05)
    assert 0.2 <= time.monotonic() - t0 < 2
    assert reason.startswith("no worker on queue gpu_sm_90")
    assert fleet.wait_for_queue("gpu_sm_90", 100, None) is None  # queues not routed (LocalExecutor, dag.test)


def _targets(required: bool):
    cfg = load_config(env={}, overrides={"engines": {"targets": [{"name": "cpu"}, {"name": "sm_90", "required": required},
                                                                 {"name": "sm_80"}]}})
    return [t for t in cfg.declared_targets() if t.queue != "default"]


def test_an_optional_target_without_a_worker_is_skipped_and_a_required_one_fails_the_night(monkeypatch):
    from airflow.sdk import RetryAction

    from pipelines.orchestration import retry_policy

    live = {"gpu_sm_80": ["celery@w-a100"]}
    monkeypatch.setattr(fleet, "celery_queue_workers", lambda: lambda q: live.get(q, []))
    plan = {"targets": ["cpu", "sm_80", "sm_90"]}
    out = queue_outcomes(plan, _targets(required=False), wait_s=0.1)
    assert list(out) == ["sm_90"] and out["sm_90"].startswith("no worker on queue gpu_sm_90")
    with pytest.raises(fleet.NoQueueWorker, match="target sm_90 is required: no worker on queue gpu_sm_90") as err:
        queue_outcomes(plan, _targets(required=True), wait_s=0.1)
    assert retry_policy().evaluate(err.value, 1, 3).action == RetryAction.FAIL  # final: the night fails now
    # a target the run's params leave out is not waited on, and its tasks are not queued either
    out = queue_outcomes({"targets": ["cpu", "sm_80"]}, _targets(required=True), wait_s=30)
    assert list(out) == ["sm_90"] and "left out of this run" in out["sm_90"]


def test_missing_pools_are_named_with_the_command_that_creates_them(monkeypatch):
    monkeypatch.setattr(fleet, "existing_pools", lambda: {"default_pool", "engines_cpu"})
    with pytest.raises(fleet.MissingPools) as err:
        fleet.check_pools(["engines_cpu", "engines_sm_90", "engines_sm_80"])
    assert "['engines_sm_80', 'engines_sm_90']" in str(err.value) and "factory airflow init" in str(err.value)
    assert is_final(err.value)
    fleet.check_pools(["engines_cpu"])


def test_a_malformed_pools_file_is_named(tmp_path):
    bad = tmp_path / "pools.json"
    bad.write_text('{"engines_cpu": {"slots": "two"}}')
    with pytest.raises(BadInput, match="engines_cpu"):
        fleet.declared_pools(bad)
    bad.write_text("{not json")
    with pytest.raises(BadInput, match=str(bad)):
        fleet.declared_pools(bad)


def test_factory_airflow_init_refuses_a_target_whose_pool_is_not_declared(tmp_path, capsys):
    from pipelines.cli import main

    cfg = tmp_path / "factory.yaml"
    cfg.write_text(yaml.safe_dump({"engines": {"targets": [{"name": "cpu"}, {"name": "sm_90", "pool": "h100_pool"}]}}))
    assert main(["airflow", "init", "--config", str(cfg)]) == 2
    assert "h100_pool" in capsys.readouterr().err


def test_a_task_the_scheduler_failed_without_running_it_is_named_with_its_queue_and_the_scheduler_s_event(
        monkeypatch):
    tis = [{"task_id": "train", "map_index": 0, "rendered_map_index": None, "queue": "train", "hostname": ""},
           {"task_id": "engine_cpu", "map_index": 0, "rendered_map_index": "fraud_risk/fp32", "queue": "default",
            "hostname": "w-default"},  # wrote failures/engine_cpu[0].json itself
           {"task_id": "gate_sm_90", "map_index": 0, "rendered_map_index": "fraud_risk", "queue": "gpu_sm_90",
            "hostname": "w-gpu90"},
           {"task_id": "outcome", "map_index": -1, "rendered_map_index": None, "queue": "default", "hostname": "w"}]
    events = [{"event": "stuck in queued tries exceeded", "task_id": "train", "map_index": 0,
               "when": "2026-11-24T02:03:00Z", "extra": "Task was requeued more than 0 times and will be failed."},
              {"event": "running", "task_id": "gate_sm_90", "map_index": 0, "when": "2026-11-24T02:04:00Z"},
              {"event": "heartbeat timeout", "task_id": "gate_sm_90", "map_index": 0, "when": "2026-11-24T02:05:00Z",
               "extra": "Task did not send a heartbeat for 60 s"}]
    paths = []

    def get(base, login, password, path, timeout=10):
        paths.append(path)
        return {"task_instances": tis} if "/taskInstances" in path else {"event_logs": events}

    monkeypatch.setattr(fleet, "_api_connection", lambda: ("http://api", None, None))
    monkeypatch.setattr(fleet, "_get", get)
    out = fleet.unreported_failures("nightly_model_factory", "manual__2026-11-24T02:00:00+00:00", {"engine_cpu[0]"})
    assert set(out) == {"train[0]", "gate_sm_90[fraud_risk]"}
    assert out["train[0]"] == ("train[0] failed without reporting (queue train, never ran): stuck in queued tries "
                               "exceeded: Task was requeued more than 0 times and will be failed.")
    assert "last on host w-gpu90): heartbeat timeout" in out["gate_sm_90[fraud_risk]"]
    assert "state=failed" in paths[0] and "manual__2026-11-24T02%3A00%3A00%2B00%3A00" in paths[0]
    monkeypatch.setattr(fleet, "_api_connection", lambda: None)  # dag.test: every failure is its task's own record
    assert fleet.unreported_failures("nightly_model_factory", "r", set()) == {}


def test_the_outcome_records_a_failure_no_task_reported(smoke_cfg):
    from factory_core.fsutil import put_json
    from pipelines.orchestration import read_failures
    from pipelines.stages import record_outcome

    date = "2026-11-24"
    put_json(smoke_cfg.run_layout(date).failure("plan"), {"task": "plan", "error": "X", "reason": "x"})
    seen = []
    failed = record_outcome(smoke_cfg, date, lambda reported: seen.append(reported) or {"train[0]": "train[0] ..."})
    assert seen == [{"plan"}] and sorted(failed) == ["plan", "train[0]"]
    assert {f["task"]: f["error"] for f in read_failures(smoke_cfg, date)} == {"plan": "X", "train[0]": "NotReported"}
