"""Deterministic input failures are final (no Airflow retry) and name the setting or the data at fault."""

from __future__ import annotations

import numpy as np
import pytest

from factory_core.config import Family, load_config
from factory_core.errors import FactoryError, is_final
from pipelines.datasets import FamilyData, InsufficientDataError, Split, build_family_data
from pipelines.preflight import PreflightError
from pipelines.train import NonFiniteLossError, train_family


def _split(x, y):
    n = len(y)
    return Split(x=x, y=y, ts=np.arange(n, dtype=np.int64), state=np.zeros(n, np.int8), flash=np.zeros(n, bool),
                 fwd_ret_bps=np.full(n, np.nan, np.float32))


def test_too_little_data_is_final_and_names_the_setting():
    import pandas as pd

    from pipelines.data.simulator import simulate_transactions
    from pipelines.features import fraud_features

    cfg = load_config(profile="smoke", env={})
    tiny = fraud_features(simulate_transactions("2026-11-20", "CARD", 500, 7).head(10))
    with pytest.raises(InsufficientDataError, match=r"data\.history_days") as err:
        build_family_data(Family.FRAUD_RISK, cfg, None, pd.DataFrame(tiny))
    assert is_final(err.value)


def test_non_finite_training_loss_is_final_and_names_the_family():
    cfg = load_config(profile="smoke", env={}, overrides={"train": {"max_epochs": 1}})
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 11)).astype(np.float32)
    x[7, 3] = np.inf  # one impossible feature value poisons the fitted normalisation
    y = (rng.random(400) < 0.3).astype(np.float32)
    data = FamilyData(Family.FRAUD_RISK, [f"f{i}" for i in range(11)], _split(x, y), _split(x[:100], y[:100]),
                      _split(x[:100], y[:100]))
    with pytest.raises(NonFiniteLossError, match="fraud_risk: training loss is nan at epoch 1") as err:
        train_family(Family.FRAUD_RISK, data, cfg)
    assert is_final(err.value)
    assert is_final(PreflightError("tracking server http://x: credentials refused"))


def test_one_base_class_decides_retry_by_kind():
    from model_registry.registry import RegistryUnavailable
    from model_registry.store import StoreError
    from pipelines.data.validation import DataValidationError
    from pipelines.engines.base import EngineBuildError, TargetUnavailableError

    final = [DataValidationError("market/date=2026-11-20/symbol=ESZ6", "bid_px_1", "negative"),
             EngineBuildError("bad graph"), TargetUnavailableError("no GPU")]
    retried = [RegistryUnavailable("http://mlflow: refused"), StoreError("s3 503"), FactoryError("other")]
    assert all(isinstance(e, FactoryError) for e in final + retried)
    assert [is_final(e) for e in final] == [True] * 3
    assert [is_final(e) for e in retried] == [False] * 3
    assert not is_final(RuntimeError("a bug"))
