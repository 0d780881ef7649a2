"""Metrics on known inputs, time-ordered splits, and ONNX export parity."""

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from factory_core.config import Family, load_config
from model_registry.runners import OnnxRuntimeRunner
from pipelines import stages
from pipelines.datasets import build_family_data
from pipelines.evaluate import backtest, classification_metrics, net_backtest
from pipelines.export import (
    INPUT_NAME,
    OUTPUT_NAME,
    ParityError,
    onnx_parity,
    torch_to_onnx,
)
from pipelines.models import build_model


def test_classification_metrics_known_values():
    y = np.array([0, 0, 1, 1, 1, 0])
    p = np.array([0.1, 0.95, 0.92, 0.3, 0.99, 0.2])
    m = classification_metrics(y, p, threshold=0.9)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["auc"] == pytest.approx(7 / 9)
    assert m["pr_auc"] == pytest.approx((1 + 2 / 3 + 3 / 4) / 3)  # precision at each positive, by rank
    bad = classification_metrics(y, np.array([np.nan, 0, 1, 1, 1, 0.0]), 0.5)
    assert bad["finite"] == 0.0 and np.isnan(bad["auc"])


def test_backtest_perfect_and_flat_signal():
    fwd = np.array([1.0, -2.0, 3.0, -1.0])
    ts = np.zeros(4, dtype=np.int64)
    perfect = backtest(np.where(fwd > 0, 0.9, 0.1), fwd, ts)
    assert perfect["hit_rate"] == 1.0 and perfect["pnl_bps"] == pytest.approx(7.0) and perfect["sharpe"] > 0
    flat = backtest(np.full(4, 0.5), fwd, ts)
    assert flat["trades"] == 0 and flat["sharpe"] == 0.0


def test_splits_are_time_ordered_and_purged(smoke_cfg):
    p = stages.plan(smoke_cfg, "2026-11-22")
    fs = stages.build_features(smoke_cfg, p, stages.ingest(smoke_cfg, p))
    import pandas as pd

    market = pd.read_parquet(fs.market_uri)
    for fam in (Family.MARKET_ALERT, Family.PRICE_DIRECTION):
        d = build_family_data(fam, smoke_cfg, market, None)
        assert d.train.ts.max() < d.val.ts.min() and d.val.ts.max() < d.test.ts.min()
        assert d.train.x.shape[1:] == (smoke_cfg.families[fam].window, 16)
    # purge: no training window's label horizon reaches the validation period
    ends = market.set_index("ts")["label_end_ts"]
    d = build_family_data(Family.PRICE_DIRECTION, smoke_cfg, market, None)
    train_label_end = ends.loc[pd.to_datetime(d.train.ts, utc=True)].to_numpy()
    assert train_label_end.max() < d.val.ts.min()


@pytest.mark.parametrize("family,shape", [(Family.MARKET_ALERT, (5, 40, 16)), (Family.PRICE_DIRECTION, (5, 64, 16)),
                                          (Family.FRAUD_RISK, (5, 11))])
def test_export_checker_dynamic_axes_and_parity(tmp_path, factory_home, family, shape):
    cfg = load_config(profile="smoke")
    torch.manual_seed(0)
    model = build_model(family, cfg.families[family], shape[-1]).eval()
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    path = torch_to_onnx(model, family, x, tmp_path / "model.fp32.onnx", opset=cfg.export.opset)
    proto = onnx.load(path)
    onnx.checker.check_model(proto, full_check=True)
    assert proto.opset_import[0].version >= 17
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert not dims[0].dim_value  # symbolic batch
    if family is Family.MARKET_ALERT:
        assert not dims[1].dim_value  # symbolic sequence
        longer = np.random.default_rng(1).normal(size=(3, 120, 16)).astype(np.float32)
        with OnnxRuntimeRunner(path) as runner:
            assert runner.infer_named({INPUT_NAME: longer})[OUTPUT_NAME].shape == (3, 1)
    big = np.random.default_rng(2).normal(size=(64, *shape[1:])).astype(np.float32)
    parity = onnx_parity(model, path, big, atol=1e-4, rtol=1e-3)
    assert parity.ok and parity.max_abs_err < 1e-5


def test_parity_catches_a_diverging_graph(tmp_path, factory_home):
    cfg = load_config(profile="smoke")
    model = build_model(Family.FRAUD_RISK, cfg.families[Family.FRAUD_RISK], 11).eval()
    x = np.random.default_rng(0).normal(size=(32, 11)).astype(np.float32)
    path = torch_to_onnx(model, Family.FRAUD_RISK, x, tmp_path / "m.onnx", opset=18)
    with torch.no_grad():  # the graph no longer computes this model
        model.head.bias += 0.5
    parity = onnx_parity(model, path, x, atol=1e-4, rtol=1e-3)
    assert not parity.ok and parity.max_abs_err > 1e-2


def test_export_stage_raises_parity_error(smoke_cfg, monkeypatch):
    from pipelines import export as export_mod
    from pipelines.export import Parity

    monkeypatch.setattr(export_mod, "onnx_parity", lambda *a, **k: Parity(0.5, 0.9, 8, False))
    p = stages.plan(smoke_cfg, "2026-11-22")
    model = build_model(Family.FRAUD_RISK, smoke_cfg.families[Family.FRAUD_RISK], 11)
    ckpt = smoke_cfg.home / "m.pt"
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"family": "fraud_risk", "family_config": smoke_cfg.families[Family.FRAUD_RISK].model_dump(),
                "n_features": 11, "feature_names": [], "state_dict": model.state_dict()}, ckpt)
    from pipelines.datasets import FamilyData, Split

    rng = np.random.default_rng(0)
    s = Split(rng.normal(size=(16, 11)).astype(np.float32), np.r_[np.zeros(8), np.ones(8)].astype(np.float32),
              np.arange(16), np.full(16, "n/a"), np.zeros(16, bool), np.zeros(16, np.float32))
    FamilyData(Family.FRAUD_RISK, [], s, s, s).save(smoke_cfg.home / "splits.npz")
    from factory_core.contracts import Status, TrainResult

    tr = TrainResult(family="fraud_risk", status=Status.OK, checkpoint_uri=str(ckpt),
                     splits_uri=str(smoke_cfg.home / "splits.npz"), metrics={}, n_train=16, n_val=16, n_test=16,
                     epochs=1, device="cpu", seconds=0.0)
    with pytest.raises(ParityError, match="fraud_risk: ONNX vs PyTorch max abs err 0.5"):
        stages.export(smoke_cfg, p, tr)
    assert not Path(smoke_cfg.run_layout("2026-11-22").onnx("fraud_risk")).exists()


def test_net_backtest_pays_the_spread_and_fee_and_trades_only_a_clearing_edge():
    fwd = np.array([3.0, -2.0, 1.0, -4.0])
    ts = np.arange(4) * 10**9
    spread = np.array([1.0, 1.0, 1.0, 1.0])  # 0.5 bp half-spread each way
    p = np.array([0.95, 0.05, 0.6, 0.5])  # edges 0.9*2, 0.9*2, 0.2*2, 0 with a 2 bp expected move
    out = net_backtest(p, fwd, ts, spread, expected_move_bps=2.0, fee_bps=0.1)
    # cost per trade 2 * (0.5 + 0.1) = 1.2 bp: the first two clear it, the weak call (0.4 bp edge) and the flat one do not
    assert out["net_trades"] == 2
    assert out["net_pnl_bps"] == pytest.approx((3.0 - 1.2) + (2.0 - 1.2))
    assert out["cost_bps"] == pytest.approx(1.2)
    # the same calls with a fixed 1 bp half-spread: cost 2.2 bp clears neither 1.8 bp edge
    assert backtest(p, fwd, ts)["trades"] == 3
    assert net_backtest(p, fwd, ts, spread, 2.0, fee_bps=0.1, half_spread_bps=1.0)["net_trades"] == 0
    with pytest.raises(ValueError, match="must be >= 0"):
        net_backtest(p, fwd, ts, spread, 2.0, fee_bps=-1.0)
