"""Run artifacts on an object store (moto over HTTP): a stage's outputs appear all at once or not at all, and a
reader gets exactly the bytes the stage committed."""

from __future__ import annotations

import boto3
import pytest

from factory_core.fsutil import ArtifactError, fetch, get_json, list_json, put_json, stage_output

pytestmark = pytest.mark.integration


@pytest.fixture
def bucket(aws_env, monkeypatch):
    from .conftest import make_bucket

    monkeypatch.setenv("AWS_ENDPOINT_URL", aws_env)  # what apply_client_limits sets from registry.s3_endpoint_url
    make_bucket(aws_env, "artifacts")
    return boto3.client("s3", endpoint_url=aws_env, region_name="us-east-1")


def _write(tmp, files):
    for name, body in files.items():
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / name).write_bytes(body)


def test_a_stage_commits_all_its_files_and_readers_get_them_back(bucket, tmp_path):
    uri = "s3://artifacts/runs/d/fam/train"
    with stage_output(uri, tmp_path / "scratch") as tmp:
        _write(tmp, {"model.pt": b"weights", "splits.npz": b"splits", "sub/x.json": b"{}"})
    assert fetch(f"{uri}/model.pt", tmp_path / "reader").read_bytes() == b"weights"
    folder = fetch(uri, tmp_path / "reader2")
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == [
        "model.pt", "splits.npz", "sub/x.json"]
    assert not list((tmp_path / "scratch").iterdir())  # the writer's scratch is gone


def test_a_failed_stage_leaves_the_last_commit_untouched(bucket, tmp_path):
    uri = "s3://artifacts/runs/d/fam/onnx"
    with stage_output(uri, tmp_path) as tmp:
        _write(tmp, {"model.onnx": b"v1"})
    with pytest.raises(RuntimeError, match="export blew up"):
        with stage_output(uri, tmp_path) as tmp:
            _write(tmp, {"model.onnx": b"half"})
            raise RuntimeError("export blew up")
    assert fetch(f"{uri}/model.onnx", tmp_path / "r").read_bytes() == b"v1"


def test_uncommitted_or_tampered_artifacts_are_refused_naming_the_uri(bucket, tmp_path):
    bucket.put_object(Bucket="artifacts", Key="runs/d/fam/variants/model.int8.onnx", Body=b"no commit record")
    with pytest.raises(ArtifactError, match=r"variants/model.int8.onnx: not committed"):
        fetch("s3://artifacts/runs/d/fam/variants/model.int8.onnx", tmp_path)
    uri = "s3://artifacts/runs/d/fam/accuracy"
    with stage_output(uri, tmp_path) as tmp:
        _write(tmp, {"reference.npy": b"good"})
    bucket.put_object(Bucket="artifacts", Key="runs/d/fam/accuracy/reference.npy", Body=b"evil")
    with pytest.raises(ArtifactError, match=r"accuracy/reference.npy: sha256 differs from its commit record"):
        fetch(f"{uri}/reference.npy", tmp_path / "r")
    assert not (tmp_path / "r").exists() or not any(p.is_file() for p in (tmp_path / "r").rglob("*"))


def test_json_documents_round_trip(bucket, tmp_path):
    put_json("s3://artifacts/runs/d/failures/train.fraud_risk.json", {"task": "train[fraud_risk]"})
    put_json("s3://artifacts/runs/d/failures/export.json", {"task": "export"})
    assert [f["task"] for f in list_json("s3://artifacts/runs/d/failures")] == ["export", "train[fraud_risk]"]
    assert get_json("s3://artifacts/runs/d/summary.json") is None


def test_one_s3_filesystem_per_bucket_and_aws_environment(monkeypatch):
    # Made once per process (a client and a region lookup each time used to cost every artifact ~40 ms); new
    # credentials or a new endpoint make a new one. No request is sent: the endpoint is given.
    from factory_core.fsutil import filesystem

    a, path = filesystem("s3://night/runs/2026-11-22/train", "http://127.0.0.1:9")
    b, _ = filesystem("s3://night/lake", "http://127.0.0.1:9")
    assert a is b and path == "night/runs/2026-11-22/train"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "rotated")
    assert filesystem("s3://night/lake", "http://127.0.0.1:9")[0] is not a
    assert filesystem("s3://night", "http://127.0.0.1:9")[1] == "night"
