"""Clear ends for a night: a full disk, two nights set up at once, a killed publish's staging objects."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration]

_PREPARE = """
import sys
from factory_core.config import load_config
from pipelines.cli.airflow_embedded import prepare_airflow
prepare_airflow(load_config(profile="smoke", env={"FACTORY_HOME": sys.argv[1]}))
print("prepared")
"""


def test_two_nights_set_up_at_once_in_a_fresh_home_both_get_a_migrated_db(tmp_path):
    """Two dates started at once in a fresh home used to crash in Airflow's table creation ("table
    asset_alias_asset_event already exists"); the set-up is now one at a time per home, under a lock."""
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FACTORY", "AIRFLOW"))}
    procs = [subprocess.Popen([sys.executable, "-c", _PREPARE, str(home)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0 and "prepared" in out, out[-3000:]
    assert (home / "airflow" / "airflow.db").is_file()


def test_a_killed_publish_leaves_staging_that_the_next_publish_removes(aws_env, export_small_model, tmp_path,
                                                                        monkeypatch):
    """A publish killed after uploading to ``.staging/`` left its objects in the bucket for good; the next publish
    removes what is older than the grace, and keeps a staging area another publish is filling now."""
    import time

    from model_registry import store as store_mod
    from model_registry.store import S3Store

    from .conftest import make_bucket
    from .test_registry import _engine

    make_bucket(aws_env, "staging")
    store = S3Store("s3://staging/engines", endpoint_url=aws_env)
    e1, e2 = _engine(export_small_model, tmp_path, 1), _engine(export_small_model, tmp_path, 2)
    real_copy = store.s3.copy_object

    def killed(*a, **k):
        raise ConnectionError("publish killed after staging its files")

    monkeypatch.setattr(store.s3, "copy_object", killed)
    with pytest.raises(ConnectionError):
        store.put_version(e1, "fraud_risk", "cpu", "v1")
    monkeypatch.setattr(store.s3, "copy_object", real_copy)

    def staged() -> list[str]:
        out = store.s3.list_objects_v2(Bucket="staging", Prefix="engines/.staging/").get("Contents", [])
        return sorted(o["Key"] for o in out)

    abandoned = staged()
    assert abandoned and all(k.startswith("engines/.staging/fraud_risk.cpu.v1.") for k in abandoned)
    time.sleep(2.5)
    running = "engines/.staging/market_alert.cpu.v9.abcdef01/model.onnx"  # another night's publish, now
    store.s3.put_object(Bucket="staging", Key=running, Body=b"in flight")
    monkeypatch.setattr(store_mod, "STAGING_GRACE_S", 1.5)
    store.put_version(e2, "fraud_risk", "cpu", "v2")
    assert staged() == [running]
    assert store.versions("fraud_risk", "cpu") == ["v2"]


def _can_mount() -> bool:
    import shutil

    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"],
                           capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _can_mount(), reason="needs a private mount namespace (root, unshare) for a small disk")
def test_a_full_disk_ends_the_night_naming_it_in_a_failure_record(tmp_path):
    """The home on a 24 MiB disk with 1.5 MiB free: Airflow's SQLite set-up hits the full disk. The night ends
    with one line naming it and a failure record (its room given back by the home's reserve), exit 1: not a
    SQLAlchemy traceback."""
    import json

    home = tmp_path / "home"
    home.mkdir()
    factory = Path(sys.executable).with_name("factory")
    script = (f"mount -t tmpfs -o size=24m tmpfs {home} && head -c {22 * 2**20 + 2**19} /dev/zero > {home}/filler "
              f"&& {factory} nightly --profile smoke --date 2026-11-22; rc=$?; "
              f"echo; cat {home}/runs/2026-11-22/failures/nightly.json; exit $rc")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FACTORY", "AIRFLOW"))}
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], env={**env, "FACTORY_HOME": str(home), "COLUMNS": "200"},
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert f"FAILED night 2026-11-22: disk full at {home}/airflow/airflow.db" in out, out[-3000:]
    assert "Traceback" not in proc.stdout.split("{")[0] and "Traceback" not in proc.stderr, out[-3000:]
    record = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert record["error"] == "DiskFull" and record["reason"].startswith(f"disk full at {home}/airflow/airflow.db")
