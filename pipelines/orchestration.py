"""Glue between Airflow task bodies and :mod:`pipelines.stages`.

Task bodies in ``dags/`` stay one line: ``return run_stage(stages.train, plan, fs, family=...)``.
This module turns XCom dicts into records, loads the config from the DAG run's params,
and records a failure's reason for ``factory nightly`` to print. Whether a failed task retries is not
decided here but by :func:`retry_policy`, declared on every task of both DAGs and read from the error's
cause (:mod:`factory_core.errors`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import shutil
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from factory_core.config import FactoryConfig, load_config, redact
from factory_core.contracts import Record
from factory_core.errors import FINAL, RETRYABLE, disk_full
from factory_core.fsutil import delete, list_json, put_json, release_space

log = logging.getLogger(__name__)

RETRAIN_ASSET = "model-factory://retrain"
"""The Airflow Asset ``drift_monitor`` updates to ask for retraining; the nightly is scheduled on it."""
TIMING_KEY = "factory_timing"
"""XCom key of a task's body timestamps (``body_start``, ``body_end``: epoch seconds), pushed by :func:`run_stage`.
Against the task instance's ``start_date`` and ``end_date`` they split a task's time into the stage's own work and
the per-task overhead around it (``benchmarks/fleet_throughput.py``). Beside them the task process's CPU seconds
before the body (start-up, DAG parse) and in it (lazy imports included): on a shared host these, not the wall
times, tell a warm worker from a cold one."""


def retry_policy():
    """The one retry rule of the factory's tasks (Airflow's ``ExceptionRetryPolicy``), decided by the error's cause.

    Bad input, bad config, a missing capability and a full disk (``factory_core.errors.FINAL``) fail at once: the
    same input fails the same way. An unreachable service and a lock held by another (``RETRYABLE``) retry
    wherever they are raised, preflight included. Anything else (a bug, a store that found bad data) takes the
    task's ordinary retries. Each DAG declares it once in ``default_args``; the task's ``retries`` still bound it.
    """
    from airflow.sdk import ExceptionRetryPolicy, RetryAction, RetryRule

    return ExceptionRetryPolicy(rules=[
        RetryRule(exception=list(FINAL), action=RetryAction.FAIL,
                  reason="final: bad input or config, a missing capability or a full disk fails the same way again"),
        RetryRule(exception=list(RETRYABLE), action=RetryAction.RETRY,
                  reason="retry: a service did not answer or a lock is held; either may be over at the next try"),
    ])


def retrain_request(context: Mapping[str, Any]) -> tuple[list[str] | None, str]:
    """(families, reason) from the asset events that triggered this run; (None, schedule|manual) otherwise."""
    events = context.get("triggering_asset_events") or {}
    families: set[str] = set()
    reasons: list[str] = []
    for evs in events.values():
        for ev in evs:
            extra = getattr(ev, "extra", None) or {}
            families.update(extra.get("families", []))
            reasons.extend(extra.get("reasons", []))
    if reasons or families:
        return sorted(families) or None, "drift: " + " | ".join(reasons)
    run_type = str(getattr(context.get("dag_run"), "run_type", "")).lower()
    return None, "manual" if "manual" in run_type else "schedule"


def queue_outcomes(plan: Mapping[str, Any], targets: list[Any], wait_s: float) -> dict[str, str]:
    """``{target: reason}`` for each of ``targets`` (each on its own queue) that gets no worker tonight.

    A target the run's params leave out is listed without waiting (its tasks must not be queued either). The
    others wait in parallel, each up to ``wait_s``, for a live worker on their queue; a ``required`` one without
    a worker fails the task (and so the night) with the same words.
    """
    from concurrent.futures import ThreadPoolExecutor

    from .fleet import NoQueueWorker, celery_queue_workers, wait_for_queue

    out = {t.name: f"target {t.name} left out of this run by its params (targets: {plan['targets']})"
           for t in targets if t.name not in plan["targets"]}
    waiting = [t for t in targets if t.name not in out]
    workers = celery_queue_workers()
    with ThreadPoolExecutor(max_workers=max(1, len(waiting))) as pool:
        reasons = list(pool.map(lambda t: wait_for_queue(str(t.queue), wait_s, workers), waiting))
    for t, reason in zip(waiting, reasons):
        if reason is None:
            continue
        if t.required:
            raise NoQueueWorker(f"target {t.name} is required: {reason}")  # final: retry_policy()
        log.warning("target %s skipped: %s", t.name, reason)
        out[t.name] = reason
    return out


def unreported_in(context: Mapping[str, Any]) -> Callable[[set[str]], dict[str, str]]:
    """``reported -> {task: reason}`` for this run's failed tasks that left no failure record (see
    :func:`pipelines.fleet.unreported_failures`)."""
    from .fleet import unreported_failures

    dag_id, run_id = context["dag"].dag_id, context["run_id"]
    return lambda reported: unreported_failures(dag_id, run_id, reported)


def xcom_items(seq: Any) -> list:
    """A mapped task's results as a list. Index by length: iterating a lazy XCom sequence probes one past its end."""
    return [seq[i] for i in range(len(seq))]


def config_from_params(params: Mapping[str, Any]) -> FactoryConfig:
    """The worker's config (``$FACTORY_CONFIG``, the same file that shaped the DAG) at the run's profile: a
    profile sizes a night, it never changes which tasks exist (``tests/unit/test_config.py`` holds that).

    Also points this process's clients at the config's endpoints (S3 endpoint, MLflow retries), so every task
    body (a stage, the outcome, the drift check) reaches the same run root and registry."""
    from factory_core.logsafe import install_log_redaction

    from .preflight import apply_client_limits

    install_log_redaction()  # a task process on a worker: its task log never shows a credential
    cfg = load_config(None, params.get("profile") or None)
    apply_client_limits(cfg)
    return cfg


def run_date(context: Mapping[str, Any]) -> str:
    """The night's date: the logical date, or the run's ``run_after`` for runs without one."""
    when = context.get("logical_date") or context["dag_run"].run_after
    return when.date().isoformat() if isinstance(when, dt.datetime) else str(when)[:10]


def record_failure(cfg: FactoryConfig, date: str, task: str, exc: BaseException) -> str:
    """``failures/<task>.json``: the error's class, its reason and traceback, with every URI's credentials
    redacted. On a full disk, the home's reserve is released to make room for the record itself."""
    record = {"task": task, "error": type(exc).__name__, "reason": redact(str(exc)),
              "traceback": redact(traceback.format_exc())}
    uri = cfg.run_layout(date).failure(task)
    try:
        return put_json(uri, record)
    except OSError as err:
        if disk_full(err) is None or not release_space(cfg.home):
            raise
        return put_json(uri, record)


@contextlib.contextmanager
def task_home(cfg: FactoryConfig) -> Iterator[FactoryConfig]:
    """The config a task runs with: with ``runs.isolate_tasks``, a fresh, empty ``home`` removed afterwards."""
    if not cfg.runs.isolate_tasks:
        yield cfg
        return
    fresh = Path(tempfile.mkdtemp(prefix="factory-task-"))
    try:
        yield cfg.model_copy(update={"home": fresh})
    finally:
        shutil.rmtree(fresh, ignore_errors=True)


def _cpu_s() -> float:
    """CPU seconds of this process and of the children it waited for (the export's fresh interpreter)."""
    import resource

    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + kids.ru_utime + kids.ru_stime


def run_stage(stage: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run ``stage(cfg, *records, **kwargs)`` inside an Airflow task.

    Positional args are XCom dicts; each is turned back into the record type the
    stage's signature names. Returns the stage's record as an XCom dict. A failure is recorded
    (``failures/<task>.json``) and raised as it is; the task's :func:`retry_policy` decides from its cause.
    The stage call's start and end go to XCom ``TIMING_KEY``: what the task spends outside them is overhead.
    """
    from airflow.sdk import get_current_context

    ctx = get_current_context()
    ti = ctx["ti"]
    # One failure file per task instance: the family when it is an argument, else the map index.
    # (Not the target: a gate_<target> task is mapped over families, its instances share the target.)
    map_index = getattr(ti, "map_index", -1)
    label = kwargs.get("family") or ("" if map_index in (-1, None) else map_index)
    task = ti.task_id + (f"[{label}]" if label != "" else "")
    with task_home(config_from_params(ctx["params"])) as cfg:
        try:
            records = [_to_record(stage, i, a) for i, a in enumerate(args)]
            ctx["factory_label"] = _label(records, kwargs)  # rendered by the DAG's map_index_template
            body_start, cpu_start = time.time(), _cpu_s()
            result = stage(cfg, *records, **kwargs)
            body_end, cpu_end = time.time(), _cpu_s()
        except Exception as exc:
            full = disk_full(exc, cfg.home)
            if full is not None and full is not exc:  # named, and final: a retry on the same disk fails the same
                full.__cause__, exc = exc, full
            record_failure(cfg, run_date(ctx), task, exc)
            raise exc  # retry or not: retry_policy(), from the error's cause
        delete(cfg.run_layout(run_date(ctx)).failure(task))  # a retry succeeded
    ti.xcom_push(key=TIMING_KEY, value={"body_start": body_start, "body_end": body_end,
                                        "cpu_before_body": cpu_start, "cpu_body": cpu_end - cpu_start})
    if isinstance(result, Record):
        return result.to_xcom()
    if isinstance(result, list):
        return [r.to_xcom() if isinstance(r, Record) else r for r in result]
    return str(result) if isinstance(result, Path) else result


def _label(records: list[Any], kwargs: Mapping[str, Any]) -> str:
    """``fraud_risk``, ``fraud_risk/int8``: the family a task works on (and the precision), for people."""
    family = kwargs.get("family") or next((getattr(r, "family") for r in records if hasattr(r, "family")), "")
    return "/".join(str(x) for x in (family, kwargs.get("precision")) if x)


def _to_record(stage: Callable[..., Any], index: int, value: Any) -> Any:
    import inspect
    import types
    import typing

    hints = typing.get_type_hints(stage)
    params = [p for p in inspect.signature(stage).parameters.values()][1:]  # skip cfg
    target = hints.get(params[index].name)
    if typing.get_origin(target) in (typing.Union, types.UnionType):
        target = next(a for a in typing.get_args(target) if a is not type(None))
    origin = typing.get_origin(target)
    if origin is list:
        (item,) = typing.get_args(target)
        return [item.model_validate(v) for v in value]
    if isinstance(target, type) and issubclass(target, Record):
        return target.model_validate(value)
    return value


def read_failures(cfg: FactoryConfig, date: str) -> list[dict[str, str]]:
    return list_json(cfg.run_layout(date).failures())


def clear_failures(cfg: FactoryConfig, date: str) -> None:
    for f in read_failures(cfg, date):
        delete(cfg.run_layout(date).failure(f["task"]))
