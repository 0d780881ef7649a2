"""Registry and distribution against real local services: MLflow server (SQLite) and an S3 server (moto)."""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from factory_core.config import Family, TargetConfig, load_config
from factory_core.contracts import Manifest
from factory_core.errors import ManifestError
from factory_core.fsutil import sha256_file
from model_registry.pull import pull
from model_registry.registry import CHALLENGER, CHAMPION, Registry, RegistryError
from model_registry.runtime import EngineRunner
from model_registry.store import LocalStore, S3Store, StoreError
from model_registry.triton import config_pbtxt
from pipelines.engines.base import BuildSpec, build_engine, onnx_io
from pipelines.engines.onnxruntime_builder import OnnxRuntimeBuilder

from .conftest import MlflowServer, make_bucket

pytestmark = pytest.mark.integration


def _engine(export_small_model, folder: Path, seed: int) -> Path:
    """A real fraud_risk CPU engine directory (manifest, engine, ONNX, reproduce.sh)."""
    cfg = load_config(profile="smoke", env={})
    x = np.random.default_rng(seed).normal(size=(64, 11)).astype(np.float32)
    _, onnx_path = export_small_model(Family.FRAUD_RISK, x, folder / f"src{seed}" / "model.fp32.onnx", seed=seed)
    inputs, outputs, profile = onnx_io(onnx_path, Family.FRAUD_RISK, cfg.families[Family.FRAUD_RISK])
    opts = {"graph_optimization_level": "extended", "intra_op_threads": 1, "build_timeout_s": 120}
    spec = BuildSpec(family="fraud_risk", version=f"2026112{seed}.{seed:08x}", precision="fp32",
                     target=TargetConfig(name="cpu"), onnx=onnx_path, calibration_sha256=None, profile=profile,
                     options=opts)
    dest = folder / f"engine{seed}"
    build_engine(OnnxRuntimeBuilder(), spec, dest, inputs, outputs, {"hostname": "test"})
    return dest


@pytest.fixture(scope="module")
def engines(tmp_path_factory, export_small_model):
    folder = tmp_path_factory.mktemp("engines")
    return _engine(export_small_model, folder, 1), _engine(export_small_model, folder, 2)


def _record(m: dict) -> Manifest:
    return Manifest.model_validate(m)


def _manifest(d: Path) -> dict:
    return json.loads((d / "manifest.json").read_text())


def test_s3_store_roundtrip_with_sha256_metadata(engines, aws_env, tmp_path):
    make_bucket(aws_env, "factory")
    store = S3Store("s3://factory/engines", endpoint_url=aws_env)
    e1, _ = engines
    m = _manifest(e1)
    uri = store.put_version(e1, "fraud_risk", "cpu", m["version"])
    assert uri == f"s3://factory/engines/fraud_risk/cpu/{m['version']}/"
    assert store.versions("fraud_risk", "cpu") == [m["version"]]
    head = store.s3.head_object(Bucket="factory", Key=f"engines/fraud_risk/cpu/{m['version']}/model.ort.onnx")
    assert head["Metadata"]["sha256"] == m["sha256"]["engine"]
    got = store.fetch("fraud_risk", "cpu", m["version"], tmp_path)
    assert got.model_dump(mode="json") == m and sha256_file(tmp_path / "model.ort.onnx") == m["sha256"]["engine"]


def test_upload_dying_midway_leaves_no_visible_version(engines, aws_env, monkeypatch):
    make_bucket(aws_env, "factory2")
    store = S3Store("s3://factory2/engines", endpoint_url=aws_env)
    e1, _ = engines
    version = _manifest(e1)["version"]
    calls = {"n": 0}
    real_copy = store.s3.copy_object

    def dying_copy(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise ConnectionError("worker killed mid-upload")
        return real_copy(*a, **k)

    monkeypatch.setattr(store.s3, "copy_object", dying_copy)
    with pytest.raises(ConnectionError):
        store.put_version(e1, "fraud_risk", "cpu", version)
    assert not store.exists("fraud_risk", "cpu", version) and store.versions("fraud_risk", "cpu") == []
    with pytest.raises(StoreError, match="no committed version"):
        store.fetch("fraud_risk", "cpu", version, Path("unused"))
    monkeypatch.setattr(store.s3, "copy_object", real_copy)
    store.put_version(e1, "fraud_risk", "cpu", version)  # the retry completes it
    assert store.versions("fraud_risk", "cpu") == [version]


def test_manifest_path_traversal_is_refused(engines, tmp_path):
    e1, _ = engines
    bad = shutil.copytree(e1, tmp_path / "bad")
    m = _manifest(bad)
    m["engine_file"] = "../../outside.bin"
    (bad / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(StoreError, match="unsafe file name"):
        LocalStore(tmp_path / "store").put_version(bad, "fraud_risk", "cpu", m["version"])


FAM = "registry_test"


def test_registry_aliases_promote_rollback_and_idempotent_registration(engines, mlflow_server):
    reg = Registry(mlflow_server.uri)  # a model of its own: the server is shared with the nightly test
    e1, e2 = engines
    m1, m2 = _manifest(e1), _manifest(e2)
    v1 = reg.register(FAM, "cpu", "s3://x/1", _record(m1), sha256_file(e1 / "manifest.json"), None,
                      {"data_window": "a..b", "git_commit": "abc"}, "first")
    again = reg.register(FAM, "cpu", "s3://x/1", _record(m1), sha256_file(e1 / "manifest.json"), None, {}, "first")
    assert again == v1  # a retried task does not create a second version
    mv = reg.resolve(FAM, "cpu", CHALLENGER)
    assert mv.version == v1 and mv.tags["precision"] == "fp32" and mv.tags["backend"] == "onnxruntime"
    assert mv.tags["engine_sha256"] == m1["sha256"]["engine"] and mv.description == "first"
    with pytest.raises(RegistryError, match="registry_test.cpu: no version has alias 'champion'"):
        reg.resolve(FAM, "cpu", CHAMPION)
    reg.promote(FAM, "cpu", v1, by="test", why="first champion")
    v2 = reg.register(FAM, "cpu", "s3://x/2", _record(m2), sha256_file(e2 / "manifest.json"), None, {}, "second")
    reg.promote(FAM, "cpu", v2, by="alice", why="better AUC")
    champ = reg.resolve(FAM, "cpu", CHAMPION)
    last = reg.history(FAM, "cpu")[-1]
    assert champ.version == v2 and {k: last[k] for k in ("version", "from", "by", "why", "kind")} == {
        "version": v2, "from": v1, "by": "alice", "why": "better AUC", "kind": "promote"}
    assert last["engine"]["engine_sha256"] == m2["sha256"]["engine"]
    assert reg.rollback(FAM, "cpu", by="bob", why="p99 spike") == v1
    assert reg.resolve(FAM, "cpu", CHAMPION).version == v1
    assert [(e["version"], e["by"]) for e in reg.history(FAM, "cpu")] == [(v1, "test"), (v2, "alice"), (v1, "bob")]


def test_a_champion_moved_in_the_mlflow_ui_leaves_rollback_metric_and_provenance_true(engines, mlflow_server):
    """Version 2 promoted by the policy; a person points ``champion`` back at version 1 in the UI (the same REST
    call the UI makes). The factory's history takes the move in; rollback goes back to version 2 (the version
    the UI move replaced), and the promotion time is the move's, not version 2's."""
    import datetime as dt

    from model_registry.registry import MOVE_TAG, model_name

    fam = "ui_moves"
    reg = Registry(mlflow_server.uri)
    e1, e2 = engines
    v1 = reg.register(fam, "cpu", "s3://x/1", _record(_manifest(e1)), sha256_file(e1 / "manifest.json"), None, {}, "1")
    v2 = reg.register(fam, "cpu", "s3://x/2", _record(_manifest(e2)), sha256_file(e2 / "manifest.json"), None, {}, "2")
    reg.promote(fam, "cpu", v1, by="policy:auto_promote", why="first night")
    reg.promote(fam, "cpu", v2, by="policy:auto_promote", why="second night")
    before = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    reg.client.set_registered_model_alias(model_name(fam, "cpu"), CHAMPION, v1)  # what the UI does
    history = reg.history(fam, "cpu")
    assert [(e["version"], e["by"]) for e in history] == [
        (v1, "policy:auto_promote"), (v2, "policy:auto_promote"), (v1, "outside the factory (MLflow UI or API)")]
    assert reg.promoted_at(fam, "cpu") >= before  # the promotion metric dates the UI move, not v2's promotion
    assert reg.client.get_registered_model(model_name(fam, "cpu")).tags["champion"].startswith(f"v{v1} since ")
    assert reg.rollback(fam, "cpu", by="carol", why="the UI move was a mistake") == v2
    assert reg.resolve(fam, "cpu", CHAMPION).version == v2
    assert reg.history(fam, "cpu")[-1]["why"] == f"rollback from v{v1}: the UI move was a mistake"
    assert len(reg.history(fam, "cpu")) == 4  # reading again adds nothing
    tags = reg.client.get_registered_model(model_name(fam, "cpu")).tags
    assert len([k for k in tags if k.startswith(MOVE_TAG)]) == 4  # one tag per move
    assert [e["kind"] for e in reg.history(fam, "cpu")] == ["promote", "promote", "outside", "rollback"]


def test_champion_history_lists_every_move_with_its_evidence_and_engine(engines, mlflow_server, monkeypatch,
                                                                         capsys):
    """``factory champion history``: the policy's promotion, a person's promote, a move in the UI and a rollback,
    each with when, who or what, the evidence page (or the gate report of a run that has none) and the engine;
    two readers that see the same UI move at once record it once."""
    from mlflow import MlflowClient

    from model_registry.registry import MOVE_TAG, model_name
    from pipelines.cli import main

    fam, target = "fraud_risk", "history"  # a model of its own on the session's server
    name = model_name(fam, target)
    client, reg = MlflowClient(mlflow_server.uri), Registry(mlflow_server.uri)
    experiment = client.create_experiment("history_test")
    runs = []
    for page in (False, True):  # a night before the evidence page existed, and one with it
        run = client.create_run(experiment).info.run_id
        client.log_text(run, "{}", "gates/report.json")
        if page:
            client.log_text(run, "<html>decision</html>", "evidence/history.html")
        client.set_terminated(run)
        runs.append(run)
    e1, e2 = engines
    v1 = reg.register(fam, target, "s3://x/1", _record(_manifest(e1)), sha256_file(e1 / "manifest.json"), runs[0],
                      {}, "1")
    v2 = reg.register(fam, target, "s3://x/2", _record(_manifest(e2)), sha256_file(e2 / "manifest.json"), runs[1],
                      {}, "2")
    reg.promote(fam, target, v1, by="policy:auto_promote", why="nightly 2026-11-21: passed every gate")
    reg.promote(fam, target, v2, by="cli:alice", why="better AUC")
    client.set_registered_model_alias(name, CHAMPION, v1)  # what the UI does
    assert Registry(mlflow_server.uri).history(fam, target)[-1] == reg.history(fam, target)[-1]  # recorded once
    assert len([k for k in client.get_registered_model(name).tags if k.startswith(MOVE_TAG)]) == 3
    reg.rollback(fam, target, by="cli:bob", why="the UI move was a mistake")

    monkeypatch.setenv("FACTORY__REGISTRY__TRACKING_URI", mlflow_server.uri)
    capsys.readouterr()  # MLflow's own lines about the runs above
    assert main(["champion", "history", f"{name}", "--json"]) == 0
    moves = json.loads(capsys.readouterr().out)["moves"]
    assert [(m["kind"], m["from"], m["version"], m["by"]) for m in moves] == [
        ("promote", "", v1, "policy:auto_promote"), ("promote", v1, v2, "cli:alice"),
        ("outside", v2, v1, "outside the factory (MLflow UI or API)"), ("rollback", v1, v2, "cli:bob")]
    assert moves[2]["not_before"] == moves[1]["at"] <= moves[2]["at"]
    assert [m["evidence"].get("page") for m in moves] == [None, f"runs:/{runs[1]}/evidence/history.html", None,
                                                          f"runs:/{runs[1]}/evidence/history.html"]
    assert moves[0]["evidence"]["report"] == f"runs:/{runs[0]}/gates/report.json"
    assert moves[3]["evidence"]["ui"] == (f"{mlflow_server.uri}/#/experiments/{experiment}/runs/{runs[1]}/artifacts/"
                                          f"evidence/history.html")
    assert moves[2]["engine"]["engine_sha256"] == _manifest(e1)["sha256"]["engine"]
    assert moves[3]["engine"]["manifest_sha256"] == sha256_file(e2 / "manifest.json")
    monkeypatch.setenv("COLUMNS", "400")  # one line per row: the table's cells are not folded
    assert main(["champion", "history", name]) == 0
    table = capsys.readouterr().out
    for text in ("outside the factory", f"rollback v{v1} → v{v2}", "cli:alice", "evidence/history.html",
                 "no evidence page in the run: its gate report"):
        assert text in table
    with pytest.raises(SystemExit):
        main(["champion", "history", "no_such_family.cpu"])
    assert "expected FAMILY.TARGET" in capsys.readouterr().err


def test_mlflow_down_during_registration_fails_clearly_with_no_dangling_alias(engines, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    server = MlflowServer(tmp_path / "mlflow").start()
    e1, _ = engines
    m1 = _manifest(e1)
    reg = Registry(server.uri)
    reg._ensure_model("fraud_risk.cpu", "fraud_risk", "cpu")
    server.stop()
    with pytest.raises(Exception, match="127.0.0.1"):  # the error names the unreachable endpoint
        reg.register("fraud_risk", "cpu", "s3://x/1", _record(m1), "sha", None, {}, "d")
    server.start()  # same DB, back up: nothing half-done is visible
    reg = Registry(server.uri)
    with pytest.raises(RegistryError):
        reg.resolve("fraud_risk", "cpu", CHALLENGER)
    assert reg.register("fraud_risk", "cpu", "s3://x/1", _record(m1), "sha", None, {}, "d") == "1"  # the retry succeeds
    server.stop()


def test_pull_verifies_installs_atomically_and_keeps_the_installed_version_on_corruption(
        engines, mlflow_server, aws_env, tmp_path, monkeypatch):
    make_bucket(aws_env, "pull")
    monkeypatch.setenv("FACTORY_HOME", str(tmp_path / "home"))
    cfg = load_config(profile="smoke", env={"FACTORY_HOME": str(tmp_path / "home")}, overrides={"registry": {
        "tracking_uri": mlflow_server.uri, "store_uri": "s3://pull/engines", "s3_endpoint_url": aws_env}})
    store = S3Store(cfg.store_uri, endpoint_url=aws_env)
    reg = Registry(cfg.tracking_uri)
    e1, e2 = engines
    versions = {}
    for e in (e1, e2):
        m = _manifest(e)
        uri = store.put_version(e, "fraud_risk", "cpu", m["version"])
        versions[e] = reg.register("fraud_risk", "cpu", uri, _record(m), sha256_file(e / "manifest.json"), None, {}, "d")
    name = "fraud_risk.cpu"
    reg.client.set_registered_model_alias(name, "prod", versions[e1])
    dest = tmp_path / "serving"
    first = pull(cfg, "fraud_risk", "cpu", "prod", dest)
    assert first.changed and (dest / "fraud_risk" / "cpu" / "current" / "model.ort.onnx").is_file()
    assert pull(cfg, "fraud_risk", "cpu", "prod", dest).changed is False
    # corrupt the second version's engine object in S3: the pull fails, the installed version stays
    m2 = _manifest(e2)
    key = f"engines/fraud_risk/cpu/{m2['version']}/model.ort.onnx"
    store.s3.put_object(Bucket="pull", Key=key, Body=(e2 / "model.ort.onnx").read_bytes()[:100])  # truncated
    reg.client.set_registered_model_alias(name, "prod", versions[e2])
    with pytest.raises(StoreError, match="sha256 of model.ort.onnx does not match"):
        pull(cfg, "fraud_risk", "cpu", "prod", dest)
    assert os.readlink(dest / "fraud_risk" / "cpu" / "current") == f"versions/{versions[e1]}-{_manifest(e1)['version']}"
    assert not [p for p in (dest / "fraud_risk" / "cpu" / "versions").iterdir() if p.name.startswith(".tmp")]
    # repaired object: the pull installs it and keeps the previous version for rollback
    store.s3.upload_file(str(e2 / "model.ort.onnx"), "pull", key)
    second = pull(cfg, "fraud_risk", "cpu", "prod", dest)
    assert second.changed and second.registry_version == versions[e2]
    assert len(list((dest / "fraud_risk" / "cpu" / "versions").iterdir())) == 2


def test_hot_swap_under_concurrent_requests_loses_none(engines, tmp_path):
    from prometheus_client import CollectorRegistry

    from monitoring.serving import PredictionLog, ServingMetrics

    e1, e2 = engines
    prom = CollectorRegistry()
    metrics = ServingMetrics("fraud_risk", "cpu", registry=prom)
    plog = PredictionLog(tmp_path, "fraud_risk", "cpu", sample_rate=0.01, metrics=metrics, seed=0)
    runner = EngineRunner(e1, metrics=metrics, prediction_log=plog)
    x = np.random.default_rng(0).normal(size=(4, 11)).astype(np.float32)
    stop, served, failed, versions_seen = threading.Event(), [0], [0], set()

    def client():
        while not stop.is_set():
            try:
                out = runner.predict(x)
                assert out.shape == (4, 1) and np.isfinite(out).all()
                served[0] += 1
                versions_seen.add(runner.version)
            except Exception:
                failed[0] += 1

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    import time

    time.sleep(0.3)
    seconds = runner.swap(e2)
    time.sleep(0.3)
    stop.set()
    for t in threads:
        t.join()
    assert failed[0] == 0 and served[0] > 100
    assert runner.version == _manifest(e2)["version"] and len(versions_seen) == 2
    plog.close()
    import pandas as pd

    logged = pd.concat(pd.read_parquet(f) for f in tmp_path.rglob("part-*.parquet"))
    assert set(logged["version"]) == {_manifest(e1)["version"], _manifest(e2)["version"]}  # both sides of the swap
    count = prom.get_sample_value("factory_inference_latency_seconds_count", {"family": "fraud_risk", "target": "cpu"})
    assert count >= served[0]  # every served request was observed
    assert 0 < seconds < 5
    print(f"hot swap {seconds * 1000:.0f} ms; served {served[0]}, failed {failed[0]}")


def test_triton_config_maps_compute_capabilities_to_plans():
    def m(cc):
        return _record({"family": "market_alert", "version": "v", "target": f"sm_{cc.replace('.', '')}",
                        "backend": "tensorrt", "backend_version": "10.13.3", "precision": "fp16",
                        "engine_file": "model.plan", "onnx_file": "model.onnx", "compute_capability": cc,
                        "inputs": [{"name": "features", "dtype": "float32", "shape": ["batch", "seq", 16],
                                    "profile": {"min": [1, 30, 16], "opt": [32, 60, 16], "max": [256, 120, 16]}}],
                        "outputs": [{"name": "prob", "dtype": "float32", "shape": ["batch", 1]}],
                        "sha256": {"engine": "e", "onnx": "o"}, "build": {}, "host": {}, "versions": {}})

    text = config_pbtxt("market_alert", {"model.sm_86.plan": m("8.6"), "model.sm_90.plan": m("9.0")})
    assert 'platform: "tensorrt_plan"' in text and "max_batch_size: 256" in text
    assert 'cc_model_filenames [ { key: "8.6" value: "model.sm_86.plan" } ]' in text
    assert 'cc_model_filenames [ { key: "9.0" value: "model.sm_90.plan" } ]' in text
    assert 'default_model_filename: "model.sm_90.plan"' in text
    assert "preferred_batch_size: [ 32 ]" in text and "dims: [ -1, 16 ]" in text


def _rebuilt(engine: Path, tmp_path: Path) -> Path:
    """The same engine "rebuilt": other build times and host in the manifest, same bytes."""
    again = tmp_path / "rebuilt"
    shutil.copytree(engine, again)
    m = _manifest(again)
    m["build"] = {**m["build"], "started_at": "2030-01-01T00:00:00+00:00", "seconds": 99.0}
    m["host"] = {"hostname": "another-builder"}
    (again / "manifest.json").write_text(json.dumps(m))
    return again


def test_store_keys_engines_by_content_and_refuses_another_engine_under_a_version(engines, aws_env, tmp_path):
    import hashlib

    from factory_core.contracts import engine_identity

    make_bucket(aws_env, "identity")
    e1, e2 = engines
    for store in (S3Store("s3://identity/engines", endpoint_url=aws_env), LocalStore(tmp_path / "store")):
        store.put_version(e1, "fraud_risk", "cpu", "v")
        store.put_version(_rebuilt(e1, tmp_path / type(store).__name__), "fraud_risk", "cpu", "v")  # same engine: ok
        with pytest.raises(StoreError, match="already holds another engine under this version"):
            store.put_version(e2, "fraud_risk", "cpu", "v")
    s3 = S3Store("s3://identity/engines", endpoint_url=aws_env)
    marker = s3.s3.get_object(Bucket="identity", Key="engines/fraud_risk/cpu/v/_COMMITTED")
    body = marker["Body"].read()
    assert body.decode() == engine_identity(_manifest(e1))
    assert marker["Metadata"]["sha256"] == hashlib.sha256(body).hexdigest()  # the marker's own hash
    for key in [o["Key"] for o in s3.s3.list_objects_v2(Bucket="identity", Prefix="engines/")["Contents"]]:
        obj = s3.s3.get_object(Bucket="identity", Key=key)  # a generic bucket audit: every object its own hash
        assert hashlib.sha256(obj["Body"].read()).hexdigest() == obj["Metadata"]["sha256"], key


def test_store_trusts_only_what_the_manifest_hashes(engines, tmp_path):
    e1, _ = engines
    store = LocalStore(tmp_path / "store")
    store.put_version(e1, "fraud_risk", "cpu", "v1")
    version = tmp_path / "store" / "fraud_risk" / "cpu" / "v1"
    assert set(_manifest(e1)["files"]) >= {"model.ort.onnx", "model.onnx", "reproduce.sh"}
    # a symlink planted in a committed version (reproduce.sh → a file outside the store) is refused on read
    outside = tmp_path / "secret.txt"
    outside.write_text("not yours")
    (version / "reproduce.sh").unlink()
    (version / "reproduce.sh").symlink_to(outside)
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(StoreError, match="reproduce.sh is a symlink"):
        store.fetch("fraud_risk", "cpu", "v1", dest)
    assert not (dest / "reproduce.sh").exists()
    # and on write
    src = tmp_path / "src"
    shutil.copytree(e1, src)
    (src / "reproduce.sh").unlink()
    (src / "reproduce.sh").symlink_to(outside)
    with pytest.raises(StoreError, match="symlink"):
        store.put_version(src, "fraud_risk", "cpu", "v2")
    # an unlisted file in a version is never fetched
    store.put_version(e1, "fraud_risk", "cpu", "v3")
    (tmp_path / "store" / "fraud_risk" / "cpu" / "v3" / "extra.sh").write_text("rm -rf /")
    dest3 = tmp_path / "dest3"
    dest3.mkdir()
    store.fetch("fraud_risk", "cpu", "v3", dest3)
    assert not (dest3 / "extra.sh").exists()


@pytest.mark.parametrize("text, problem", [("{not json", "not valid JSON"), ('{"family": "fraud_risk"}',
                                                                             "key 'version' missing")])
def test_a_malformed_manifest_is_one_clear_line(engines, tmp_path, text, problem):
    e1, _ = engines
    store = LocalStore(tmp_path / "store")
    store.put_version(e1, "fraud_risk", "cpu", "v1")
    (tmp_path / "store" / "fraud_risk" / "cpu" / "v1" / "manifest.json").write_text(text)
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(ManifestError) as err:  # the one reader's error: bad input, final
        store.fetch("fraud_risk", "cpu", "v1", dest)
    assert problem in str(err.value) and "malformed manifest.json" in str(err.value)
    assert "\n" not in str(err.value)


def test_pull_refuses_a_store_that_disagrees_with_the_registry_and_cleans_a_killed_pull(
        engines, mlflow_server, aws_env, tmp_path):
    make_bucket(aws_env, "mismatch")
    home = tmp_path / "home"
    cfg = load_config(profile="smoke", env={"FACTORY_HOME": str(home)}, overrides={"registry": {
        "tracking_uri": mlflow_server.uri, "store_uri": "s3://mismatch/engines", "s3_endpoint_url": aws_env}})
    store = S3Store(cfg.store_uri, endpoint_url=aws_env)
    reg = Registry(cfg.tracking_uri)
    e1, e2 = engines
    uri = store.put_version(e2, "mismatch_test", "cpu", "20261121.x")  # the store holds e2 under the version...
    m1 = {**_manifest(e1), "family": "mismatch_test", "version": "20261121.x"}
    v = reg.register("mismatch_test", "cpu", uri, _record(m1), "sha", None, {}, "d")  # ...the registry says e1
    reg.client.set_registered_model_alias("mismatch_test.cpu", CHAMPION, v)
    dest = tmp_path / "serving"
    killed = dest / "mismatch_test" / "cpu" / "versions" / ".tmp-999999-deadbeef"  # a pull killed by kill -9
    killed.mkdir(parents=True)
    (killed / "model.ort.onnx").write_bytes(b"x" * 1000)
    with pytest.raises(StoreError) as err:
        pull(cfg, "mismatch_test", "cpu", CHAMPION, dest)
    assert _manifest(e1)["sha256"]["engine"] in str(err.value) and _manifest(e2)["sha256"]["engine"] in str(err.value)
    assert not killed.exists()  # the next pull cleaned it
    assert not (dest / "mismatch_test" / "cpu" / "current").exists()


def test_a_registry_outage_is_never_no_champion(tmp_path):
    from model_registry.registry import NoSuchAlias, RegistryUnavailable
    from pipelines.champions import read_champion

    from .conftest import free_port

    port = free_port()  # nothing listens here
    cfg = load_config(profile="smoke", env={"FACTORY_HOME": str(tmp_path)}, overrides={"registry": {
        "tracking_uri": f"http://127.0.0.1:{port}"}})
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    try:
        with pytest.raises(RegistryUnavailable, match=f"registry at http://127.0.0.1:{port} did not answer"):
            read_champion(cfg, "fraud_risk", "cpu")
    finally:
        os.environ.pop("MLFLOW_HTTP_REQUEST_MAX_RETRIES")
    local = load_config(profile="smoke", env={"FACTORY_HOME": str(tmp_path)})
    none = read_champion(local, "fraud_risk", "cpu")  # the registry answered: no alias
    assert not none.comparable and not none.engine_dir and "no champion yet" in none.reason
    with pytest.raises(NoSuchAlias):
        Registry(local.tracking_uri).resolve("fraud_risk", "cpu", CHAMPION)


def test_auto_promotion_never_skips_the_comparison_nor_replaces_a_champion_from_a_newer_night(
        engines, mlflow_server, export_small_model, tmp_path):
    import datetime as dt

    from factory_core.contracts import Champion
    from model_registry.publish import auto_promote

    e1, e2 = engines
    reg = Registry(mlflow_server.uri)

    def seen(version, comparable=True, reason=""):  # the champion as tonight's gate saw it
        return Champion(family="dates_test", target="cpu", registry_version=str(version) if version else None,
                        comparable=comparable, reason=reason)

    newer = reg.register("dates_test", "cpu", "s3://x/1", _record(_manifest(e1)), "a", None, {"date": "2026-11-22"}, "d")
    assert auto_promote(reg, "dates_test", "cpu", newer, "2026-11-22", "why", seen(None, False)) == (True, "")
    older = reg.register("dates_test", "cpu", "s3://x/2", _record(_manifest(e2)), "b", None, {"date": "2026-11-21"}, "d")
    promoted, note = auto_promote(reg, "dates_test", "cpu", older, "2026-11-21", "why", seen(newer))
    assert not promoted and "trained for 2026-11-22, newer than this night's 2026-11-21" in note
    assert reg.resolve("dates_test", "cpu", CHAMPION).version == newer

    # whatever made the champion unusable to the gate, the champion stays and the note says why
    gone = "champion's engine unusable: s3://x: no committed version dates_test/cpu/1"
    promoted, note = auto_promote(reg, "dates_test", "cpu", older, "2026-11-23", "why", seen(newer, False, gone))
    assert not promoted and f"kept champion v{newer}" in note and "no committed version" in note
    promoted, note = auto_promote(reg, "dates_test", "cpu", older, "2026-11-23", "why", seen(None, False))
    assert not promoted and "never compared" in note  # the gate saw no champion; one appeared since
    promoted, note = auto_promote(reg, "dates_test", "cpu", older, "2026-11-23", "why", seen("999"))
    assert not promoted and "compared v" in note and "moved since" in note
    # compared and comparable, but the comparison could not decide under keep_champion: the champion stays
    held = "auc undecided; policy gates.champion.undecided=keep_champion"
    promoted, note = auto_promote(reg, "dates_test", "cpu", older, "2026-11-23", "why", seen(newer), held=held)
    assert not promoted and f"champion kept, v{older} is challenger" in note and held in note
    assert reg.resolve("dates_test", "cpu", CHAMPION).version == newer

    # a champion dated beyond today (a mistyped --date before the date check) never blocks in silence
    future = (dt.datetime.now(dt.timezone.utc).date() + dt.timedelta(days=200)).isoformat()
    e3 = _engine(export_small_model, tmp_path, 3)
    bogus = reg.register("dates_test", "cpu", "s3://x/3", _record(_manifest(e3)), "c", None, {"date": future}, "d")
    reg.promote("dates_test", "cpu", bogus, by="test", why="a mistyped date")
    promoted, note = auto_promote(reg, "dates_test", "cpu", older, "2026-11-24", "why", seen(bogus))
    assert promoted and f"date {future} lies beyond" in note and "not allowed to block" in note


def test_a_path_store_beside_a_tracking_server_is_refused_before_any_work(mlflow_server, tmp_path):
    """An MLflow server refuses a version whose source is a local path ("Invalid model version source"): the night
    would write the store, then fail at registration. The preflight refuses the pair instead, naming both."""
    from pipelines.preflight import PreflightError, preflight

    store = tmp_path / "engine_store"
    cfg = load_config(profile="smoke", env={"FACTORY_HOME": str(tmp_path)}, overrides={"registry": {
        "tracking_uri": mlflow_server.uri, "store_uri": str(store)}})
    with pytest.raises(PreflightError) as err:
        preflight(cfg)
    msg = str(err.value)
    assert f"registry.store_uri) {store} is a local path" in msg and mlflow_server.uri in msg and "s3://" in msg
    assert not store.exists()  # nothing written


def test_two_publishes_creating_the_same_experiment_and_model_at_once_both_go_on(mlflow_server, tmp_path,
                                                                                   monkeypatch):
    # On the fleet the families' publish tasks run at once on a fresh registry: each looks the experiment (and its
    # models) up, finds none, and creates it; the second create meets the first's. Measured once on the local fleet
    # (benchmarks/fleet_throughput.py, 27 engines): a publish retried after 120 s. Here the lookup always misses,
    # as it does for the task that loses the race, against the real server.
    import types

    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from model_registry.registry import use_experiment

    cfg = types.SimpleNamespace(tracking_uri=mlflow_server.uri, home=tmp_path)
    monkeypatch.setattr(mlflow, "get_experiment_by_name", lambda name: None)
    use_experiment(cfg, "race-nightly")
    use_experiment(cfg, "race-nightly")  # the loser of the race: its create is refused as existing
    monkeypatch.undo()
    assert MlflowClient(mlflow_server.uri).get_experiment_by_name("race-nightly") is not None

    reg = Registry(mlflow_server.uri)

    def missing(name):
        raise MlflowException(f"Registered Model with name={name} not found", error_code="RESOURCE_DOES_NOT_EXIST")

    monkeypatch.setattr(reg.client, "get_registered_model", missing)
    reg._ensure_model("race_family.cpu", "race_family", "cpu")
    reg._ensure_model("race_family.cpu", "race_family", "cpu")
    assert MlflowClient(mlflow_server.uri).get_registered_model("race_family.cpu").tags["target"] == "cpu"
