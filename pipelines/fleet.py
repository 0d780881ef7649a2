"""What a night checks about the Airflow deployment before it relies on it: pools and live queue workers.

Two ways a distributed night used to hang without a word:

- a task in a pool that does not exist is never scheduled (the scheduler only logs it);
- a task on a Celery queue that no live worker consumes stays ``queued`` for good.

:func:`missing_pools` runs in the night's first task and fails it at once, naming the pools
(declared in ``infra/airflow/pools.json``, created by ``factory airflow init``).
:func:`wait_for_queue` bounds the wait for a worker on a GPU target's queue; after
``engines.worker_wait_s`` an optional target is skipped and a required one fails the night, both with
"no worker on queue <queue>".

Airflow 3 workers have no metadata-DB access, so pools are read through the public REST API
(connection ``factory_airflow_api``: the api-server's URL, with login/password where the auth manager
wants them); a process that does have the DB (``factory nightly``'s ``dag.test``) reads them directly.
"""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable

from factory_core.errors import BadInput, Unavailable

log = logging.getLogger(__name__)

API_CONNECTION = "factory_airflow_api"
"""Airflow connection id of the api-server, for the pool check on workers without DB access."""
POOLS_FILE = Path(__file__).resolve().parents[1] / "infra" / "airflow" / "pools.json"
"""The one declaration of the factory's pools (``airflow pools import`` format); ``$FACTORY_POOLS`` overrides."""


class MissingPools(BadInput):
    """Pools the night's tasks name do not exist: their tasks would never be scheduled."""


class NoQueueWorker(Unavailable):
    """No live worker consumes a target's queue."""


def declared_pools(path: Path | None = None) -> dict[str, dict]:
    """``{name: {"slots", "description", "include_deferred"}}`` from the pools file."""
    path = Path(path or os.environ.get("FACTORY_POOLS") or POOLS_FILE)
    try:
        pools = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BadInput(f"pools file {path}: {exc}") from exc
    bad = [n for n, p in pools.items() if not isinstance(p, dict) or not isinstance(p.get("slots"), int)]
    if bad:
        raise BadInput(f"pools file {path}: pools {bad} need an integer 'slots'")
    return pools


def ensure_pools(path: Path | None = None) -> list[str]:
    """Create or resize every declared pool (needs the metadata DB: run where the scheduler runs)."""
    from airflow.models.pool import Pool

    out = []
    for name, p in declared_pools(path).items():
        Pool.create_or_update_pool(name, p["slots"], p.get("description", ""), p.get("include_deferred", False))
        out.append(f"{name}: {p['slots']} slot(s)")
    return out


def existing_pools() -> set[str]:
    """Pool names, through the REST API when the connection exists, else the metadata DB."""
    conn = _api_connection()
    if conn is not None:
        return _pools_over_rest(*conn)
    try:
        from airflow.models.pool import Pool
        from airflow.utils.session import create_session

        with create_session() as session:
            return {p.pool for p in session.query(Pool).all()}
    except Exception as exc:  # noqa: BLE001 - any failure here means "cannot tell", said with the way out
        raise BadInput(f"cannot check Airflow pools: no connection {API_CONNECTION!r} (the api-server's URL) and "
                       f"no metadata-DB access on this worker ({type(exc).__name__}: {exc})") from exc


def missing_pools(needed: list[str]) -> list[str]:
    have = existing_pools()
    return sorted(set(needed) - have)


def check_pools(needed: list[str]) -> None:
    """Raise :class:`MissingPools` naming every pool the night needs and Airflow lacks."""
    missing = missing_pools(needed)
    if missing:
        raise MissingPools(f"Airflow pools {missing} do not exist: their tasks would never be scheduled. "
                           f"Create them with `factory airflow init` (declared in infra/airflow/pools.json)")


def _api_connection() -> tuple[str, str | None, str | None] | None:
    try:
        from airflow.sdk import Connection

        c = Connection.get(API_CONNECTION)
    except Exception:  # noqa: BLE001 - not defined (or no task context): use the DB
        return None
    scheme = c.schema if c.schema in ("http", "https") else "http"
    base = c.host if "://" in (c.host or "") else f"{scheme}://{c.host}"
    if c.port:
        base = f"{base}:{c.port}"
    return base.rstrip("/"), c.login, c.password


def _get(base: str, login: str | None, password: str | None, path: str, timeout: float = 10) -> dict:
    """``GET {base}/api/v2{path}`` as JSON, with a token first where the auth manager wants a login."""
    headers = {"Accept": "application/json"}
    if login:
        req = urllib.request.Request(f"{base}/auth/token", method="POST",
                                     data=json.dumps({"username": login, "password": password}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            headers["Authorization"] = f"Bearer {json.load(r)['access_token']}"
    with urllib.request.urlopen(urllib.request.Request(f"{base}/api/v2{path}", headers=headers), timeout=timeout) as r:
        return json.load(r)


def _pools_over_rest(base: str, login: str | None, password: str | None, timeout: float = 10) -> set[str]:
    try:
        pools = _get(base, login, password, f"/pools?{urllib.parse.urlencode({'limit': 1000})}", timeout)
        return {p["name"] for p in pools["pools"]}
    except Exception as exc:  # noqa: BLE001
        raise BadInput(f"cannot list Airflow pools at {base}/api/v2/pools (connection {API_CONNECTION!r}): "
                       f"{type(exc).__name__}: {exc}") from exc


def celery_queue_workers() -> Callable[[str], list[str]] | None:
    """A function ``queue -> live worker names`` under the CeleryExecutor; None where queues are not routed."""
    from airflow.configuration import conf

    if "celery" not in conf.get("core", "executor", fallback="").lower():
        return None
    from airflow.providers.celery.executors.celery_executor_utils import app

    def workers(queue: str) -> list[str]:
        active = app.control.inspect(timeout=2.0).active_queues() or {}
        return sorted(w for w, qs in active.items() if any(q.get("name") == queue for q in qs))

    return workers


def wait_for_queue(queue: str, wait_s: float, workers: Callable[[str], list[str]] | None,
                   poll_s: float = 5.0) -> str | None:
    """None once a live worker consumes ``queue`` (at once where queues are not routed); else the reason.

    Polls for up to ``wait_s``: a GPU host may be starting while the night trains.
    """
    if workers is None:
        return None
    deadline = time.monotonic() + wait_s
    while True:
        live = workers(queue)
        if live:
            log.info("queue %s: live workers %s", queue, live)
            return None
        if time.monotonic() >= deadline:
            return f"no worker on queue {queue} (waited {wait_s:.0f} s, engines.worker_wait_s)"
        time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))


SCHEDULER_EVENTS = ("stuck in queued tries exceeded", "heartbeat timeout")
"""The scheduler's event-log entries for a task instance it failed itself: its body never reported."""


def unreported_failures(dag_id: str, run_id: str, reported: set[str]) -> dict[str, str]:
    """``{task: reason}`` for this run's failed task instances that left no failure record of their own.

    A task fails without a word when it never ran (queued with no worker on its queue, failed by the scheduler
    after ``[scheduler] task_queued_timeout``) or when its host died (no heartbeat, retries spent). The reason
    names the queue and the scheduler's event. Read over the REST API (connection ``factory_airflow_api``); {}
    where there is none (``factory nightly``'s ``dag.test``, where every failure is recorded by its task).

    Args:
        reported: the task labels that wrote ``failures/<task>.json`` (``train[fraud_risk]``, ``plan``).
    """
    conn = _api_connection()
    if conn is None:
        return {}
    run = urllib.parse.quote(run_id, safe="")
    tis = _get(*conn, f"/dags/{dag_id}/dagRuns/{run}/taskInstances?state=failed&limit=1000")["task_instances"]
    events = _get(*conn, f"/eventLogs?{urllib.parse.urlencode({'dag_id': dag_id, 'run_id': run_id, 'limit': 1000})}")
    said: dict[tuple[str, int], str] = {}
    for e in sorted(events["event_logs"], key=lambda e: e["when"]):
        if e["event"] in SCHEDULER_EVENTS:
            said[(e["task_id"], e.get("map_index", -1))] = f"{e['event']}: {e.get('extra') or ''}".strip(": ")
    out = {}
    for ti in tis:
        labels = {ti["task_id"]} if ti["map_index"] < 0 else {
            f"{ti['task_id']}[{x}]" for x in (ti["map_index"], ti.get("rendered_map_index")) if x not in (None, "")}
        if labels & reported or ti["task_id"] == "outcome":  # the outcome task reports the night, not itself
            continue
        label = max(labels, key=len)  # the family's name where the task rendered one
        where = f"queue {ti['queue']}" + (f", last on host {ti['hostname']}" if ti["hostname"] else ", never ran")
        cause = said.get((ti["task_id"], ti["map_index"]), "no event from the scheduler")
        out[label] = f"{label} failed without reporting ({where}): {cause}"
    return out
