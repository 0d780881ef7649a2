"""The warm worker's Celery config: Airflow's own, plus the preload on the signal the worker's main process gets."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_config_option_resolves_to_airflows_default_with_the_preload_connected():
    # What a worker does with AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS set as the fleet files set it, in a fresh
    # process: the option imports the module (connecting the preload) and yields Airflow's config unchanged.
    code = (
        "from airflow.configuration import conf\n"
        "from celery.signals import import_modules\n"
        "from airflow.providers.celery.executors.default_celery import DEFAULT_CELERY_CONFIG\n"
        "cfg = conf.getimport('celery', 'celery_config_options')\n"
        "assert cfg == DEFAULT_CELERY_CONFIG, 'not airflow default'\n"
        "names = [getattr(r(), '__name__', '') for _, r in import_modules.receivers]\n"
        "assert '_preload_in_worker' in names, names\n"
        "import sys; assert 'torch' not in sys.modules, 'the config import itself must stay light'\n"
        "print('ok')\n")
    env = {"AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS": "pipelines.worker.CELERY_CONFIG", "PYTHONPATH": str(REPO),
           "PATH": "/usr/bin:/bin", "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout[-2000:] + r.stderr[-2000:]


def test_preload_imports_what_it_can_and_names_what_it_cannot():
    from pipelines.worker import preload

    took, missing = preload(("json", "no_such_module_for_the_factory"))
    assert set(took) == {"json"}
    assert "no_such_module_for_the_factory" in missing["no_such_module_for_the_factory"]


def test_every_preloaded_name_is_a_module_this_install_has():
    # A typo in HEAVY would only log a warning on every worker start; here it fails.
    import importlib.util

    from pipelines.worker import HEAVY

    assert [m for m in HEAVY if importlib.util.find_spec(m) is None] == []


def test_thread_budget_divides_this_process_cores_among_the_slots():
    from pipelines.worker import thread_budget

    assert thread_budget(3, cores=2) == 1
    assert thread_budget(4, cores=16) == 4
    assert thread_budget(1, cores=16) is None  # one task at a time keeps torch's default
    assert thread_budget(None) is None


def _budget_in_a_fresh_worker(concurrency: int, omp: str | None) -> str:
    # The worker's main process as Celery drives it: the signal with the CLI's options, then a fork (a task
    # process) that runs a torch op and reports its intra-op threads.
    code = (
        "import os, sys\n"
        "import pipelines.worker\n"
        "from celery.signals import celeryd_init\n"
        f"celeryd_init.send(sender='w@h', instance=None, conf=None, options={{'concurrency': {concurrency}}})\n"
        "import torch\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    torch.ones(256, 256) @ torch.ones(256, 256)\n"
        "    print(torch.get_num_threads(), os.environ.get('OMP_NUM_THREADS')); sys.stdout.flush(); os._exit(0)\n"
        "os.waitpid(pid, 0)\n")
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           **({"OMP_NUM_THREADS": omp} if omp else {})}
    r = subprocess.run(["taskset", "-c", "0,1", sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout.strip().splitlines()[-1]  # after the worker's log lines


def test_a_worker_with_more_slots_than_cores_gives_each_task_one_thread():
    assert _budget_in_a_fresh_worker(3, None) == "1 1"
    assert _budget_in_a_fresh_worker(1, None) == "2 None"  # a trainer with one slot keeps both cores


def test_the_operators_omp_num_threads_wins():
    assert _budget_in_a_fresh_worker(3, "2") == "2 2"
