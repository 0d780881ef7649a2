"""A fourth family on the market data, added through its spec and its model only: the config, the CLI, the
train and export stages take it from there."""

from __future__ import annotations

import os
from pathlib import Path

import onnx
import pytest
import torch
from torch import nn

from factory_core.config import ConfigError, load_config
from factory_core.contracts import Status
from factory_core.families import MARKET_FEATURES, SPECS, Family, FamilySpec, register, spec
from pipelines import stages
from pipelines.cli import build_parser
from pipelines.models import ARCHITECTURES, Normalise, UnknownArchitecture, build_model

DATE = "2026-11-22"


class VolBurstConv(nn.Module):
    """One 1-D convolution over ``[B, T, F]`` ticks, averaged over time → P(abnormal move) ``[B, 1]``."""

    def __init__(self, n_features: int, hidden: int):
        super().__init__()
        self.norm = Normalise(n_features)
        self.conv = nn.Conv1d(n_features, hidden, kernel_size=5, padding=2)
        self.head = nn.Linear(hidden, 1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(self.norm(x).transpose(1, 2))).mean(dim=2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(x))


def _vol_burst(**changes) -> FamilySpec:
    alert = spec(Family.MARKET_ALERT)
    fields = dict(family="vol_burst", source="market", features=tuple(MARKET_FEATURES), label="alert_label",
                  architecture="vol_conv", input_axes=("batch", "time", "feature"), classes=1, tail=alert.tail,
                  threshold=0.5, window=32, window_range=(32, 32), agreement=alert.agreement, stride=4, hidden=16,
                  smoke={"stride": 2}, gate_margins={"p99_budget_ms": {"cpu": 4.0, "gpu": 2.0}})
    return FamilySpec(**(fields | changes))


@pytest.fixture
def register_family(monkeypatch):
    """Registers a family spec and the vol_conv architecture; both are gone after the test."""
    monkeypatch.setitem(ARCHITECTURES, "vol_conv", lambda fc, n: VolBurstConv(n, fc.hidden))
    # The export runs in a child process, which unpickles the model: it must import this module as pytest did.
    root = Path(__file__).resolve().parents[len(__name__.split(".")) - 1]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])))
    names = []

    def add(s: FamilySpec) -> Family:
        names.append(register(s).family)
        return s.family

    yield add
    for name in names:
        SPECS.pop(name)


def test_a_fourth_family_needs_only_its_spec_and_its_model(register_family, factory_home, tmp_path):
    fam = register_family(_vol_burst())
    assert Family("vol_burst") is fam and fam in list(Family) and len(Family) == 4

    cfg = load_config(profile="smoke", overrides={"engines": {"targets": ["cpu"]},
                                                  "train": {"max_epochs": 1, "max_train_samples": 600}})
    fc, gates = cfg.families[fam], cfg.gates.families[fam]
    assert (fc.window, fc.stride, fc.hidden, fc.threshold) == (32, 2, 16, 0.5)  # the spec's sizes, smoke's stride
    assert gates.p99_budget_ms == {"cpu": 4.0, "gpu": 2.0} and gates.auc_drop_max == 0.005
    assert gates.agreement == cfg.gates.families[Family.MARKET_ALERT].agreement
    assert cfg.monitoring.drift.share_for(fam) == cfg.monitoring.drift.drift_share
    assert fam in cfg.enabled_families
    assert build_parser().parse_args(["drift", "check", "vol_burst"]).family == "vol_burst"

    p = stages.plan(cfg, DATE, families=["vol_burst"])
    assert p.families == ["vol_burst"]
    fs = stages.build_features(cfg, p, stages.ingest(cfg, p))
    tr = stages.train(cfg, p, fs, "vol_burst")  # build_family_data, then train_family
    assert tr.status is Status.OK and tr.n_train > 0 and 0 <= tr.metrics["auc"] <= 1
    ex = stages.export(cfg, p, tr)  # FP32 ONNX in a child process, parity-checked against PyTorch
    assert ex.status is Status.OK and ex.max_abs_err <= cfg.export.parity_atol
    dims = onnx.load(ex.onnx_uri).graph.input[0].type.tensor_type.shape.dim
    assert not dims[0].dim_value and [d.dim_value for d in dims[1:]] == [32, 16]  # symbolic batch, fixed window


def test_a_family_without_a_module_or_bounds_is_refused_by_name(register_family, factory_home):
    fam = register_family(_vol_burst(family="no_module", architecture="lstm_of_dreams"))
    cfg = load_config()
    with pytest.raises(UnknownArchitecture, match=r"no_module: architecture 'lstm_of_dreams' has no module"):
        build_model(fam, cfg.families[fam], len(MARKET_FEATURES))

    without_int8 = {p: b for p, b in spec(Family.MARKET_ALERT).agreement.items() if p != "int8"}
    register_family(_vol_burst(family="unbounded", agreement=without_int8))
    with pytest.raises(ConfigError, match=r"gates\.families\.unbounded\.agreement: .*no agreement bounds for int8"):
        load_config()


def test_an_override_of_an_unregistered_family_is_named(factory_home):
    for overrides, key in [
        ({"families": {"vol_burst": {"window": 32}}}, r"families\.vol_burst"),
        ({"gates": {"families": {"vol_burst": {"auc_drop_max": 0.01}}}}, r"gates\.families\.vol_burst"),
        ({"monitoring": {"drift": {"family_drift_share": {"vol_burst": 0.3}}}},
         r"monitoring\.drift\.family_drift_share\.vol_burst"),
    ]:
        with pytest.raises(ConfigError, match=key + r".*unknown family 'vol_burst'; families with a spec: market"):
            load_config(overrides=overrides)
    with pytest.raises(ValueError, match="unknown family 'vol_burst'"):
        Family("vol_burst")
    assert list(Family) == [Family.MARKET_ALERT, Family.PRICE_DIRECTION, Family.FRAUD_RISK]
