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


class Chromium:
    """Headless Chromium on a local file: a screenshot and the DOM after rendering (no network is needed)."""

    def __init__(self, exe: str, profile_dir):
        self.exe, self.profile_dir = exe, profile_dir

    def _run(self, *args: str) -> "subprocess.CompletedProcess[str]":
        import subprocess

        cmd = [self.exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
               f"--user-data-dir={self.profile_dir}", *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc

    def screenshot(self, page, dest, width: int = 1280, height: int = 2400):
        """``page`` rendered at ``width`` x ``height`` into the PNG ``dest``; returns ``dest``."""
        self._run(f"--screenshot={dest}", f"--window-size={width},{height}", page.as_uri())
        return dest

    def dump_dom(self, page) -> str:
        """The serialized DOM once ``page`` has loaded (what the browser parsed, not the file's text)."""
        return self._run("--dump-dom", page.as_uri()).stdout


@pytest.fixture(scope="session")
def chromium(tmp_path_factory):
    """Headless Chromium, for the pages a person reads in a browser. ``make test`` skips (with the reason) where it
    is missing; ``.ci/run`` installs it and sets ``FACTORY_REQUIRE_BROWSER=1``, under which a missing one fails."""
    import os
    import shutil

    exe = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    if exe is None:
        if os.environ.get("FACTORY_REQUIRE_BROWSER") == "1":
            pytest.fail("browser test required (FACTORY_REQUIRE_BROWSER=1) but no chromium on PATH")
        pytest.skip("no chromium on PATH (.ci/run installs it: apt-get install chromium)")
    return Chromium(exe, tmp_path_factory.mktemp("chromium-profile"))
