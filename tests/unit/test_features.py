"""Features against hand-computed values."""

import numpy as np
import pandas as pd
import pytest

from factory_core.config import FeatureConfig
from pipelines.data.schema import BOOK_LEVELS
from pipelines.features import MARKET_FEATURES, fraud_features, make_windows, market_features


def _book(n=400, seed=0):
    rng = np.random.default_rng(seed)
    mid = 100 + np.cumsum(rng.normal(0, 0.01, n))
    df = pd.DataFrame({"ts": pd.to_datetime(1_700_000_000_000_000_000 + np.arange(n) * 50_000_000, utc=True)})
    for lvl in range(1, BOOK_LEVELS + 1):
        df[f"bid_px_{lvl}"] = np.round(mid - 0.01 * lvl, 2)
        df[f"bid_sz_{lvl}"] = 100.0 + lvl
        df[f"ask_px_{lvl}"] = np.round(mid + 0.01 * lvl, 2)
        df[f"ask_sz_{lvl}"] = 50.0 + lvl
    df["last_px"] = mid
    df["last_sz"] = rng.integers(1, 100, n).astype(float)
    df["regime"] = "sideways"
    df["anomaly"] = False
    return df


def test_market_features_match_hand_computation():
    cfg = FeatureConfig()
    raw = _book()
    f = market_features(raw, cfg)
    assert list(f.columns[1:17]) == MARKET_FEATURES
    row = f.iloc[10]
    i = raw.index[raw["ts"] == row["ts"]][0]
    r = raw.iloc[i]
    mid = (r.bid_px_1 + r.ask_px_1) / 2
    assert row.spread_bps == pytest.approx((r.ask_px_1 - r.bid_px_1) / mid * 1e4, rel=1e-5)
    assert row.imbalance_l1 == pytest.approx((101 - 51) / (101 + 51), rel=1e-6)
    bsum, asum = sum(100 + k for k in range(1, 6)), sum(50 + k for k in range(1, 6))
    assert row.imbalance_l5 == pytest.approx((bsum - asum) / (bsum + asum), rel=1e-6)
    mids = (raw.bid_px_1 + raw.ask_px_1) / 2
    assert row.ret_5 == pytest.approx(np.log(mid / mids[i - 5]) * 1e4, rel=1e-4, abs=1e-4)
    w = raw.iloc[i - cfg.vwap_window + 1 : i + 1]
    vwap = (w.last_px * w.last_sz).sum() / w.last_sz.sum()
    assert row.vwap_dist_bps == pytest.approx((mid - vwap) / mid * 1e4, rel=1e-4, abs=1e-4)
    ema = mids.iloc[: i + 1].ewm(span=cfg.ema_fast, adjust=False).mean().iloc[-1]
    assert row.ema_fast_dist_bps == pytest.approx((mid - ema) / mid * 1e4, rel=1e-4, abs=1e-4)
    r1 = np.log(mids).diff() * 1e4
    assert row.vol == pytest.approx(r1.iloc[i - cfg.vol_window + 1 : i + 1].std(), rel=1e-4)
    assert row.gap_log_ms == pytest.approx(np.log1p(50.0), rel=1e-5)


def test_labels_look_forward_only():
    cfg = FeatureConfig(alert_horizon_ticks=5)
    raw = _book()
    raw.loc[300, "last_sz"] = 10_000.0  # an abnormal volume tick
    f = market_features(raw, cfg).set_index("ts")
    ts = raw["ts"]
    on = lambda k: f.loc[ts[k], "alert_label"]  # noqa: E731
    assert on(295) == 1 and on(299) == 1  # within the next 5 ticks
    assert on(294) == 0 and on(300) == 0  # too early / the tick itself is not "future"
    # direction: 100 ms ahead is two ticks at 50 ms spacing
    mids = ((raw.bid_px_1 + raw.ask_px_1) / 2).to_numpy()
    k = 250
    assert f.loc[ts[k], "direction_label"] == float(mids[k + 2] > mids[k])
    assert f.loc[ts[k], "fwd_ret_bps"] == pytest.approx((mids[k + 2] / mids[k] - 1) * 1e4, rel=1e-6)


def test_windows():
    values = np.arange(30, dtype=np.float32).reshape(10, 3)
    w = make_windows(values, np.array([3, 9]), 4)
    assert w.shape == (2, 4, 3)
    np.testing.assert_array_equal(w[0], values[0:4])
    np.testing.assert_array_equal(w[1], values[6:10])
    with pytest.raises(ValueError):
        make_windows(values, np.array([2]), 4)


def test_fraud_features_hand_computed():
    t0 = pd.Timestamp("2026-11-20T10:00:00Z")  # a Friday
    sunday_night = pd.Timestamp("2026-11-22T03:00:00Z")
    tx = pd.DataFrame({
        "ts": [t0, t0 + pd.Timedelta("5min"), t0 + pd.Timedelta("8min"), t0 + pd.Timedelta("2h"),
               t0 + pd.Timedelta("1min"), sunday_night],
        "txn_id": [1, 2, 3, 4, 5, 6], "account_id": [1, 1, 1, 1, 2, 2], "terminal_id": [7, 7, 8, 7, 9, 9],
        "amount": [10.0, 10.0, 1000.0, 10.0, 5.0, 15.0], "merchant_category": [5411, 5411, 7995, 5411, 5411, 5411],
        "country": ["US", "US", "NG", "US", "GB", "GB"], "home_country": ["US", "US", "US", "US", "GB", "GB"],
        "device_id": [10, 10, 99, 10, 20, 20],
    })
    cb = pd.DataFrame({"ts": [t0 + pd.Timedelta(days=3)], "txn_id": [3], "txn_ts": [tx.loc[2, "ts"]],
                       "reason": ["card_not_present"]})
    f = fraud_features(tx, cb)  # sorted by time: rows are t0, t0+1m(acct2), +5m, +8m, +2h, Sunday(acct2)
    acct1 = f.iloc[[0, 2, 3, 4]].reset_index(drop=True)
    assert acct1["cust_count_1d"].tolist() == pytest.approx(np.log1p([1, 2, 3, 4]).tolist())
    assert acct1["cust_amount_1d"].tolist() == pytest.approx(np.log([10, 10, 1020 / 3, 1030 / 4]).tolist())
    assert acct1["new_device"].tolist() == [1, 0, 1, 0]  # not used by the account in the previous 30 days
    assert acct1["country_mismatch"].tolist() == [0, 0, 1, 0]
    assert acct1["high_risk_mcc"].tolist() == [0, 0, 1, 0]
    assert acct1["term_count_1d"].tolist() == pytest.approx(np.log1p([0, 1, 0, 2]).tolist())
    acct2 = f.iloc[[1, 5]].reset_index(drop=True)
    assert acct2["weekend"].tolist() == [0, 1] and acct2["night"].tolist() == [0, 1]
    assert acct2["new_device"].tolist() == [1, 0]
    assert acct2["cust_count_1d"].tolist() == pytest.approx(np.log1p([1, 1]).tolist())
    assert acct2["cust_count_7d"].tolist() == pytest.approx(np.log1p([1, 2]).tolist())
    assert acct2["cust_amount_7d"].tolist() == pytest.approx(np.log([5, 10]).tolist())
    assert f["label"].tolist() == [0, 0, 0, 1, 0, 0]  # the chargeback names txn 3
