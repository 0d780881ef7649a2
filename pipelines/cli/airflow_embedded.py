"""An embedded Airflow for one machine: its metadata DB on SQLite under ``$FACTORY_HOME/airflow``, the factory's
DAGs, its pools, and runs through ``dag.test``. Airflow is imported only after its environment is set."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import sys
from pathlib import Path

from factory_core.config import FactoryConfig

DAGS_DIR = Path(__file__).resolve().parents[2] / "dags"
NIGHTLY_DAG = "nightly_model_factory"
DRIFT_DAG = "drift_monitor"


def airflow_env(cfg: FactoryConfig) -> dict[str, str]:
    """Environment for an embedded Airflow on SQLite under ``$FACTORY_HOME/airflow``."""
    home = cfg.home / "airflow"
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_DIR),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__DAGBAG_IMPORT_ERROR_TRACEBACKS": "True",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        "FACTORY_HOME": str(cfg.home),
    }


def prepare_airflow(cfg: FactoryConfig) -> None:
    """Point Airflow at the factory's SQLite DB and DAGs, migrating the DB on first use.

    Must run before anything imports ``airflow``.
    """
    env = airflow_env(cfg)
    Path(env["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)
    os.environ.update(env)
    if "airflow" in sys.modules:
        raise RuntimeError("airflow was imported before its environment was set")
    from airflow.utils import db

    # One set-up per home at a time: two nights (two dates) started at once in a fresh home both created the
    # tables and one crashed ("table asset_alias_asset_event already exists"). The second waits, then finds the
    # schema current and only checks it.
    with home_lock(cfg, "airflow-db"):
        logging.getLogger(__name__).info("airflow: migrating metadata DB at %s",
                                         env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
        db.initdb()
        from pipelines.fleet import ensure_pools

        ensure_pools()  # infra/airflow/pools.json, as `factory airflow init` does for a deployment


@contextlib.contextmanager
def home_lock(cfg: FactoryConfig, name: str, timeout_s: float = 600.0):
    """An exclusive advisory lock ``<home>/locks/<name>.lock`` (``flock``: released by the kernel if the holder
    dies, so a killed night never leaves it held). Waits up to ``timeout_s``, then says who holds it."""
    import fcntl
    import time

    path = cfg.home / "locks" / f"{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    f.seek(0)
                    raise TimeoutError(f"{path}: held for more than {timeout_s:g} s by {f.read().strip() or '?'}")
                time.sleep(0.2)
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}\n")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def run_drift_monitor(cfg: FactoryConfig, config_path: str | None, windows: list[tuple[dt.datetime, dt.datetime]],
                      families: list[str]) -> list[dict]:
    """Run ``drift_monitor`` through ``dag.test`` once per window; per run its state and retrain request.

    The DAGs are synced to the metadata DB and the nightly unpaused first (once), so an
    asset event queues a nightly run exactly as the scheduler would see it.
    """
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db
    from airflow.models.asset import AssetDagRunQueue, AssetEvent
    from airflow.models.dag import DagModel
    from airflow.models.dagbundle import DagBundleModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    bag = DagBag(dag_folder=str(DAGS_DIR))
    if bag.import_errors:
        raise RuntimeError(f"DAG import errors: {bag.import_errors}")
    with create_session() as session:
        session.merge(DagBundleModel(name="dags-folder"))
    sync_bag_to_db(bag, "dags-folder", None)
    with create_session() as session:
        session.get(DagModel, NIGHTLY_DAG).is_paused = False
    runs = []
    for since, until in windows:
        if config_path:  # the one config channel: the file every task of the DAG reads
            os.environ["FACTORY_CONFIG"] = str(Path(config_path).resolve())
        run = bag.dags[DRIFT_DAG].test(run_conf={"profile": cfg.profile,
                                                 "since": since.isoformat(), "until": until.isoformat(),
                                                 "families": families})
        with create_session() as session:
            events = [{"asset": e.uri, "extra": e.extra, "timestamp": str(e.timestamp)} for e in session.scalars(
                select(AssetEvent).where(AssetEvent.source_run_id == run.run_id))]
            queued = [q.target_dag_id for q in session.scalars(select(AssetDagRunQueue))]
        runs.append({"state": str(run.state), "asset_events": events, "queued": queued})
    return runs
