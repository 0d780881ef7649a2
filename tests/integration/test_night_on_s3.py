"""A smoke night with its run root, lake and engine store on the S3 server, every task in a fresh, empty home.

Its own module (it needs none of ``test_nightly``'s night), so that ``make test``'s two pytest-xdist workers
(``--dist loadscope``) can run it beside that module's long chain of nights.
"""

import json

import pytest

from .test_nightly import DATE, FAMILIES, _factory, services  # noqa: F401 (services: a fixture)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_a_smoke_night_on_s3_with_a_fresh_empty_home_per_task(tmp_path, services, s3_server):
    """Run root, lake and engine store on the S3 server; every task in a fresh, empty FACTORY_HOME that is
    deleted after it: a task that read a file another task left on local disk would fail this night."""
    import boto3

    from .conftest import MlflowServer, make_bucket

    make_bucket(s3_server, "fleet")
    mlflow = MlflowServer(tmp_path / "mlflow").start()  # a registry of its own: no champion from other tests
    try:
        env = {**services, "FACTORY__REGISTRY__TRACKING_URI": mlflow.uri,
               "FACTORY__REGISTRY__STORE_URI": "s3://fleet/engines", "FACTORY__RUNS__ROOT": "s3://fleet/runs",
               "FACTORY__DATA__LAKE_URI": "s3://fleet/lake", "FACTORY__RUNS__ISOLATE_TASKS": "true"}
        home = tmp_path / "home"
        proc = _factory(home, "nightly", "--profile", "smoke", "--date", DATE, "--targets", "cpu", extra_env=env)
    finally:
        mlflow.stop()
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert not (home / "runs").exists() and not (home / "lake").exists()  # nothing of the night on local disk
    s3 = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    keys = {o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket="fleet", Prefix="runs/")
            for o in page.get("Contents", [])}
    run = f"runs/{DATE}"
    committed = {k.rsplit("/", 1)[0] for k in keys if k.endswith("/_COMMITTED.json")}
    assert {f"{run}/features", f"{run}/gates"} <= committed
    for fam in FAMILIES:
        assert {f"{run}/{fam}/{s}" for s in ("train", "onnx", "variants", "accuracy", "reference")} <= committed
        assert f"{run}/{fam}/engines/cpu/fp32" in committed
    summary = json.loads(s3.get_object(Bucket="fleet", Key=f"{run}/summary.json")["Body"].read())
    assert summary["gate_report"] == f"s3://fleet/{run}/gates/report.json"
    published = [v for p in summary["published"] for v in p["versions"]]
    assert len(published) == 3 and all(v["store_uri"].startswith("s3://fleet/engines/") for v in published)
    assert f"outputs under s3://fleet/{run}" in proc.stdout
