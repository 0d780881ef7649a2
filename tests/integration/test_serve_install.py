"""A serving host from the lean install: a fresh virtual environment with only ``model-factory[serve]`` pulls a
champion from a real MLflow server and S3 server, predicts, and hot-swaps to the next champion."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from factory_core.contracts import Manifest
from factory_core.fsutil import sha256_file
from model_registry.registry import Registry
from model_registry.runners import OnnxRuntimeRunner
from model_registry.store import S3Store

from .conftest import make_bucket
from .test_registry import _engine

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
FAM = "serve_test"
ABSENT = ["torch", "airflow", "modelopt", "evidently", "pandas", "sklearn", "onnx", "matplotlib"]


@pytest.fixture(scope="module")
def lean(tmp_path_factory) -> Path:
    """``python -m venv`` + ``pip install '<this repo>[serve]'``: nothing else."""
    venv = tmp_path_factory.mktemp("lean") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    proc = subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", f"{ROOT}[serve]"], capture_output=True,
                          text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return venv


def test_the_lean_install_serves_without_the_training_stack(lean):
    probe = ("import importlib.util as u, json\n"
             "import model_registry.cli, model_registry.pull, model_registry.runtime, monitoring.serving, "
             "monitoring.exporter, factory_core.config\n"
             f"print(json.dumps([m for m in {ABSENT!r} if u.find_spec(m)]))")
    out = subprocess.run([str(lean / "bin" / "python"), "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout) == []
    helped = subprocess.run([str(lean / "bin" / "factory-serve"), "pull", "--help"], capture_output=True, text=True)
    assert helped.returncode == 0 and "--watch" in helped.stdout


SERVE = r"""
import json, sys
from pathlib import Path
import numpy as np
from factory_core.config import load_config
from model_registry.pull import pull
from model_registry.runtime import EngineRunner

cfg = load_config(sys.argv[1])
dest, x = Path(sys.argv[2]), np.load(sys.argv[3])
inst = pull(cfg, "serve_test", "cpu", "champion", dest)
runner = EngineRunner(dest / "serve_test" / "cpu" / "current")
print(json.dumps({"version": runner.version, "prob": runner.predict(x).ravel().tolist()}), flush=True)
sys.stdin.readline()  # the test moves the champion alias, then says go
inst = pull(cfg, "serve_test", "cpu", "champion", dest)
seconds = runner.swap(inst.path)
print(json.dumps({"version": runner.version, "prob": runner.predict(x).ravel().tolist(), "changed": inst.changed,
                  "swap_s": seconds}), flush=True)
"""


def test_a_lean_host_pulls_predicts_and_hot_swaps(lean, export_small_model, mlflow_server, aws_env, tmp_path):
    e1, e2 = _engine(export_small_model, tmp_path, 3), _engine(export_small_model, tmp_path, 4)
    make_bucket(aws_env, "serving")
    store, reg = S3Store("s3://serving/engines", endpoint_url=aws_env), Registry(mlflow_server.uri)
    versions = []
    for e in (e1, e2):
        m = json.loads((e / "manifest.json").read_text())
        uri = store.put_version(e, FAM, "cpu", m["version"])
        versions.append(reg.register(FAM, "cpu", uri, Manifest.model_validate(m), sha256_file(e / "manifest.json"), None, {}, "lean test"))
    reg.promote(FAM, "cpu", versions[0], by="test", why="first")
    cfg = tmp_path / "factory.yaml"
    cfg.write_text(f"registry:\n  tracking_uri: {mlflow_server.uri}\n  store_uri: s3://serving/engines\n"
                   f"  s3_endpoint_url: {aws_env}\n")
    x = np.random.default_rng(0).normal(size=(8, 11)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)

    def expected(e: Path) -> list[float]:
        m = json.loads((e / "manifest.json").read_text())
        with OnnxRuntimeRunner(e / m["engine_file"]) as runner:
            return runner.infer_named({m["inputs"][0]["name"]: x})[m["outputs"][0]["name"]].ravel()

    env = {k: v for k, v in os.environ.items() if k.startswith("AWS_")} | {"PATH": "/usr/bin:/bin"}
    proc = subprocess.Popen([str(lean / "bin" / "python"), "-c", SERVE, str(cfg), str(tmp_path / "hosts"),
                             str(tmp_path / "x.npy")], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        first = json.loads(proc.stdout.readline() or "null")
        assert first is not None, proc.stderr.read()[-3000:] if proc.poll() is not None else "no output"
        np.testing.assert_allclose(first["prob"], expected(e1), rtol=1e-5, atol=1e-6)
        reg.promote(FAM, "cpu", versions[1], by="test", why="next night")
        proc.stdin.write("go\n")
        proc.stdin.flush()
        second = json.loads(proc.stdout.readline() or "null")
        assert second is not None, proc.stderr.read()[-3000:]
    finally:
        proc.kill()
    assert second["changed"] and second["version"] != first["version"]
    np.testing.assert_allclose(second["prob"], expected(e2), rtol=1e-5, atol=1e-6)
