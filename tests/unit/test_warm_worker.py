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
