"""Shared fixtures. Every test gets its own FACTORY_HOME so nothing leaks between tests."""

from __future__ import annotations

import pytest

from pipelines.config import FactoryConfig, load_config


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
    return load_config(profile="smoke")
