"""Shared fixtures. Every test gets its own FACTORY_HOME so nothing leaks between tests."""

from __future__ import annotations

import pytest

from factory_core.config import FactoryConfig, load_config

SMOKE_TARGETS = {"engines": {"targets": [{"name": "cpu", "required": True}, {"name": "sm_90"}]}}


@pytest.fixture
def factory_home(tmp_path, monkeypatch):
    home = tmp_path / "factory"
    monkeypatch.setenv("FACTORY_HOME", str(home))
    for key in list(__import__("os").environ):
        if key.startswith("FACTORY__") or key in ("FACTORY_CONFIG", "FACTORY_PROFILE"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    return home


@pytest.fixture
def smoke_cfg(factory_home) -> FactoryConfig:
    """The smoke profile with two targets: cpu (required) and sm_90 (which this machine cannot build)."""
    return load_config(profile="smoke", overrides=SMOKE_TARGETS)


@pytest.fixture(scope="session")
def export_small_model():
    """``make(family, x, dest, seed=0, fit_norm=False) -> (model, onnx_path)``: a smoke-size model of a family,
    seeded, optionally with its input normalisation fitted on ``x`` (realistic activation ranges), exported
    to FP32 ONNX (opset 18) at ``dest``."""

    def make(family, x, dest, seed: int = 0, fit_norm: bool = False):
        import torch

        from pipelines.export import torch_to_onnx
        from pipelines.models import build_model

        cfg = load_config(profile="smoke", env={})
        torch.manual_seed(seed)
        model = build_model(family, cfg.families[family], x.shape[-1]).eval()
        if fit_norm:
            with torch.no_grad():
                model.norm.fit(torch.from_numpy(x))
        return model, torch_to_onnx(model, family, x, dest, 18)

    return make
