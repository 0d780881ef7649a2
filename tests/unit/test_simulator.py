"""Statistics of the embedded simulator: determinism, regimes, clustering, signal, anomalies, fraud."""

import numpy as np
import pandas as pd

from pipelines.data.schema import MARKET_SCHEMA, TRANSACTIONS_SCHEMA
from pipelines.data.simulator import simulate_market, simulate_transactions

N = 8000


def _returns(df):
    mid = (df["bid_px_1"] + df["ask_px_1"]) / 2
    return np.log(mid).diff().dropna().to_numpy()


def test_market_is_deterministic_per_date_symbol_seed():
    a = simulate_market("2026-11-20", "ESZ6", 2000, seed=7)
    b = simulate_market("2026-11-20", "ESZ6", 2000, seed=7)
    pd.testing.assert_frame_equal(a, b)
    for other in (simulate_market("2026-11-21", "ESZ6", 2000, 7), simulate_market("2026-11-20", "NQZ6", 2000, 7),
                  simulate_market("2026-11-20", "ESZ6", 2000, 8)):
        assert not np.allclose(a["bid_px_1"].to_numpy(), other["bid_px_1"].to_numpy())
    assert list(a.columns) == MARKET_SCHEMA.names


def test_regimes_all_appear_across_days():
    seen = set()
    for day in range(1, 8):
        seen |= set(simulate_market(f"2026-11-{day:02d}", "ESZ6", N, 7)["regime"])
    assert seen == {"bull", "bear", "sideways"}


def test_volatility_clusters():
    r = _returns(simulate_market("2026-11-20", "ESZ6", N, 7))
    a = np.abs(r - r.mean())
    lag1 = np.corrcoef(a[:-1], a[1:])[0, 1]
    raw = np.corrcoef(r[:-1], r[1:])[0, 1]
    assert lag1 > 0.05, f"|r| autocorrelation {lag1:.3f}: no volatility clustering"
    assert lag1 > abs(raw)


def test_book_imbalance_predicts_next_move():
    df = simulate_market("2026-11-20", "ESZ6", N, 7)
    imb = ((df["bid_sz_1"] - df["ask_sz_1"]) / (df["bid_sz_1"] + df["ask_sz_1"])).to_numpy()
    mid = ((df["bid_px_1"] + df["ask_px_1"]) / 2).to_numpy()
    fwd = np.log(mid[3:] / mid[:-3])
    corr = np.corrcoef(imb[:-3], fwd)[0, 1]
    assert corr > 0.1, f"imbalance/forward-return correlation {corr:.3f} too weak to learn"


def test_anomalies_are_labelled_and_stand_out():
    df = simulate_market("2026-11-20", "ESZ6", N, 7)
    rate = df["anomaly"].mean()
    assert 0.005 < rate < 0.06
    assert df.loc[df["anomaly"], "last_sz"].median() > 2 * df.loc[~df["anomaly"], "last_sz"].median()
    r = np.abs(np.concatenate([[0.0], _returns(df)]))
    assert r[df["anomaly"].to_numpy()].mean() > 2 * r[~df["anomaly"].to_numpy()].mean()


def test_book_is_never_crossed():
    df = simulate_market("2026-11-20", "ESZ6", N, 7)
    assert (df["bid_px_1"] < df["ask_px_1"]).all()
    assert df["ts"].is_monotonic_increasing and df["ts"].is_unique


def test_transactions_are_the_payments_world_without_labels():
    """The card stream is :mod:`pipelines.data.payments` (tests/unit/test_payments.py): an authorisation has no label."""
    from pipelines.data.payments import simulate_day

    tx = simulate_transactions("2026-11-20", "CARD", 20000, 7)
    assert list(tx.columns) == TRANSACTIONS_SCHEMA.names and "is_fraud" not in tx
    truth = simulate_day("2026-11-20", "CARD", 20000, 7)
    pd.testing.assert_frame_equal(tx, truth[TRANSACTIONS_SCHEMA.names])
    assert 0.002 < truth["is_fraud"].mean() < 0.01
