"""A warm Celery worker: the heavy stack imported once in the worker, inherited by every task process it forks.

Under Airflow 3.3 with the Celery provider (3.26) a task starts like this, all by ``os.fork`` and never a fresh
interpreter: the worker's main process forks its prefork pool processes; a pool process runs
``execute_workload`` → ``BaseExecutor.run_workload`` → ``supervise_task``, which forks the task runner
(``supervisor.ActivitySubprocess.start``: a bare fork on Linux, fork + exec only on macOS). The Airflow 2 setting
``core.execute_tasks_new_python_interpreter`` is read only on the provider's Airflow 2 path. So whatever the
worker's main process has imported before its pool starts, every task process has too. Airflow preloads a few of
its own modules this way (``on_celery_import_modules``: a handler of Celery's ``import_modules`` signal); the
factory's tasks otherwise import torch, ONNX, ModelOpt and MLflow afresh in each task process, which on a
2-core host costs more than most tasks' work (docs/fleet-throughput.md).

Point ``[celery] celery_config_options`` at :data:`CELERY_CONFIG` (``AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS=
pipelines.worker.CELERY_CONFIG``): Airflow's default Celery config, unchanged, plus :func:`preload` on the same
signal, which Celery sends in the worker's main process only, before it forks the pool. The scheduler reads the
same option to build its Celery app and imports this module, but never gets the signal.

**A thread budget per task.** A worker runs ``-c N`` task processes at once on one host, and each CPU-bound one
(a CPU trainer, ONNX export parity) would otherwise start torch's default of one OpenMP thread per core: N times
too many threads, which spin-wait on each other. Measured on the local fleet (2 cores, a trainer with 3 slots,
smoke, 3 families): the three concurrent ``train`` bodies spent 142 CPU-s where one at a time they spend ~50,
and the night took 1.58x one process (docs/fleet-throughput.md). So before the pool forks, the worker sets
torch's intra-op threads to ``max(1, cores // N)`` (:func:`thread_budget`), as ``torchrun`` sets
``OMP_NUM_THREADS=1`` for several processes on a host. An operator's ``OMP_NUM_THREADS`` wins; a GPU trainer
(``-c 1``) keeps every core for its data loading. The cores are those this process may run on
(``os.sched_getaffinity``: a container's cpuset), not the host's.

What is preloaded must be safe to fork: imports only. Nothing here starts a thread, opens a connection or
touches CUDA (a CUDA context made before a fork is unusable in the child), so clients are still made in the task
process, once per process (``fsutil.filesystem``).
"""

from __future__ import annotations

import importlib
import logging
import os
import time

from celery.signals import celeryd_init, import_modules

log = logging.getLogger(__name__)

HEAVY = (
    "airflow.sdk",
    "airflow.sdk.execution_time.task_runner",
    "numpy",
    "pandas",
    "pyarrow.fs",
    "pyarrow.parquet",
    "torch",
    "onnx",
    "onnxruntime",
    "modelopt.onnx.quantization",
    "mlflow",
    "mlflow.models",
    "boto3",
    "matplotlib",
    "pipelines.stages",
    "pipelines.datasets",
    "pipelines.features",
    "pipelines.train",
    "pipelines.export",
    "pipelines.quantize",
    "pipelines.gates",
    "pipelines.evidence",
    "pipelines.engines.onnxruntime_builder",
    "model_registry.publish",
    "model_registry.runners",
    "monitoring.drift",
    "monitoring.nvml",
)
"""What the nightly's tasks import: third-party first (the cost), then our stage modules (which import little at
module level; listed so the task process only runs them). Not Evidently: only the hourly drift check uses it, and
its import takes ~10 s and starts a native thread in the process that would fork every task."""


def preload(modules: tuple[str, ...] = HEAVY) -> tuple[dict[str, float], dict[str, str]]:
    """Import ``modules`` in this process: ``({module: seconds}, {module: why not})``. One that is not installed on
    this host (a GPU worker's image without ModelOpt, say) is logged and left to the task that needs it, which then
    fails naming it, as it would without a preload."""
    took: dict[str, float] = {}
    missing: dict[str, str] = {}
    for name in modules:
        t0 = time.perf_counter()
        try:
            importlib.import_module(name)
        except ImportError as exc:
            missing[name] = str(exc)
            log.warning("warm worker: %s not preloaded (%s); a task that needs it will say so", name, exc)
            continue
        took[name] = round(time.perf_counter() - t0, 3)
    return took, missing


@import_modules.connect
def _preload_in_worker(*_args, **_kwargs) -> None:
    t0 = time.perf_counter()
    took, _ = preload()
    log.warning("warm worker: preloaded %d modules in %.1f s (slowest: %s)", len(took), time.perf_counter() - t0,
                ", ".join(f"{k} {v:.1f}s" for k, v in sorted(took.items(), key=lambda kv: -kv[1])[:4]))


def thread_budget(slots: int | None, cores: int | None = None) -> int | None:
    """Intra-op threads for each of ``slots`` concurrent task processes on ``cores`` cores (default: this
    process's CPU affinity); None when there is nothing to divide (one slot, or the slots unknown)."""
    if not slots or int(slots) <= 1:
        return None
    cores = cores or len(os.sched_getaffinity(0))
    return max(1, cores // int(slots))


@celeryd_init.connect
def _thread_budget_in_worker(*_args, options: dict | None = None, **_kwargs) -> None:
    """Sent in the worker's main process after the preload and before the pool forks: every task process of this
    worker inherits the budget."""
    slots = (options or {}).get("concurrency")
    if os.environ.get("OMP_NUM_THREADS"):
        log.warning("warm worker: OMP_NUM_THREADS=%s set by the operator; %s slots", os.environ["OMP_NUM_THREADS"],
                    slots)
        return
    threads = thread_budget(slots)
    if threads is None:
        return
    import torch

    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)  # and for a child interpreter a task starts (the ONNX export)
    log.warning("warm worker: %d slots on %d cores: %d intra-op thread(s) per task", int(slots),
                len(os.sched_getaffinity(0)), threads)


def _celery_config() -> dict:
    from airflow.providers.celery.executors.default_celery import DEFAULT_CELERY_CONFIG

    return dict(DEFAULT_CELERY_CONFIG)


CELERY_CONFIG = _celery_config()
"""Airflow's default Celery configuration: importing this module is what connects :func:`preload`."""
