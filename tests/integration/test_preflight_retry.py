"""An object-store outage at preflight is retried, and the retry succeeds once the store is back.

The 02:00 case of the fleet issue: the store (a real moto S3 server on loopback) is down when the night's
preflight runs. The task fails with ``ServiceUnreachable``, the DAGs' retry policy (Airflow's
``ExceptionRetryPolicy``) retries it, the store comes back, and the second try succeeds. For contrast, a missing
bucket (the store up, the configuration wrong) fails after one try whatever the retries. Runs Airflow's
``dag.test`` in a subprocess, as ``factory nightly`` does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration]

_DAGS = r'''
import datetime as dt, json, os
from pathlib import Path

from airflow.sdk import DAG, task

from pipelines.orchestration import retry_policy, run_stage
from pipelines.preflight import preflight


def checked(cfg):
    # The nightly's preflight; each try's outcome is noted for the test.
    tries = Path(os.environ["FACTORY_HOME"]) / "tries.jsonl"
    try:
        out = preflight(cfg)
    except Exception as exc:
        with tries.open("a") as f:
            f.write(json.dumps({"error": type(exc).__name__, "reason": str(exc)}) + "\n")
        raise
    with tries.open("a") as f:
        f.write(json.dumps({"ok": out}) + "\n")
    return out


for dag_id in ("preflight_outage", "preflight_misconfig"):
    with DAG(dag_id, schedule=None, default_args={"retries": 3, "retry_delay": dt.timedelta(seconds=3),
                                                  "retry_policy": retry_policy()}):
        @task(task_id="plan")
        def plan():
            return run_stage(checked)

        plan()
'''

_NIGHT = r'''
import datetime as dt, json, os, sys, threading, time
from pathlib import Path

from factory_core.config import load_config
from pipelines.cli.airflow_embedded import airflow_env

home, port, dags = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
env = airflow_env(load_config(profile="smoke", env={"FACTORY_HOME": str(home)}))
env["AIRFLOW__CORE__DAGS_FOLDER"] = dags  # the test's DAGs, as the embedded Airflow runs the nightly's
Path(env["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)
os.environ.update(env)
from airflow.utils import db

db.initdb()
from airflow.dag_processing.dagbag import DagBag

bag = DagBag(dag_folder=dags)
assert not bag.import_errors, bag.import_errors
tries = home / "tries.jsonl"


def store_returns():
    # Once the first try has failed, the store comes back: a moto server in this process whose bucket exists
    # before its port opens, so a retry sees either no store or the whole store, never a store without its bucket.
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends
    from moto.server import ThreadedMotoServer

    while not tries.exists():
        time.sleep(0.1)
    s3_backends[DEFAULT_ACCOUNT_ID]["global"].create_bucket("night", "us-east-1")
    ThreadedMotoServer(ip_address="127.0.0.1", port=port).start()


def run(dag_id, bucket):
    os.environ["FACTORY__REGISTRY__STORE_URI"] = f"s3://{bucket}/engines"
    dr = bag.dags[dag_id].test(logical_date=dt.datetime(2026, 11, 22, 2, tzinfo=dt.timezone.utc))
    ti = dr.get_task_instance("plan")
    return {"state": str(dr.state), "task": str(ti.state), "try_number": ti.try_number}


threading.Thread(target=store_returns, daemon=True).start()
outage = run("preflight_outage", "night")
tries.rename(home / "outage.jsonl")
misconfig = run("preflight_misconfig", "no-such-bucket")  # the store is up now; the bucket is wrong
print("RESULT " + json.dumps({"outage": outage, "misconfig": misconfig}))
'''


def test_an_object_store_outage_at_preflight_is_retried_then_succeeds(tmp_path):
    from .conftest import free_port

    home, port = tmp_path / "factory", free_port()  # nothing listens on the port: the store is down
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "preflight_dags.py").write_text(_DAGS)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FACTORY", "AIRFLOW", "AWS_"))}
    env.update({"FACTORY_HOME": str(home), "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1", "FACTORY__REGISTRY__S3_ENDPOINT_URL": f"http://127.0.0.1:{port}",
                "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    proc = subprocess.run([sys.executable, "-c", _NIGHT, str(home), str(port), str(dags)],
                          env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    result = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])

    outage = [json.loads(line) for line in (home / "outage.jsonl").read_text().splitlines()]
    assert outage[0]["error"] == "ServiceUnreachable", outage
    assert f"engine store (registry.store_uri) s3://night/engines at http://127.0.0.1:{port} is unreachable: " \
           f"refused" in outage[0]["reason"]
    assert all(t.get("error") == "ServiceUnreachable" for t in outage[:-1]) and "ok" in outage[-1], outage
    assert result["outage"]["state"].endswith("success") and result["outage"]["task"].endswith("success")
    assert result["outage"]["try_number"] == len(outage) >= 2  # failed, retried by the policy, then succeeded
    assert "Retry policy decision" in out and "retry" in out

    # the same task with a wrong bucket: configuration, final at the first try despite retries=3
    misconfig = [json.loads(line) for line in (home / "tries.jsonl").read_text().splitlines()]
    assert [t["error"] for t in misconfig] == ["PreflightError"]
    assert "missing bucket 'no-such-bucket'" in misconfig[0]["reason"]
    assert result["misconfig"]["task"].endswith("failed") and result["misconfig"]["try_number"] == 1
