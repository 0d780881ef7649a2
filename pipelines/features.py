"""Features, labels and windows for the three families.

Everything here is causal: a feature at tick t uses ticks up to t only, and labels
look forward from t. Market features are computed per (date, symbol) session, so
nothing leaks across a session boundary.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from factory_core.config import FeatureConfig
from factory_core.families import FRAUD_FEATURES, MARKET_FEATURES

from .data.schema import BOOK_LEVELS, HIGH_RISK_MCC

_BPS = 1e4


def _ema(x: pd.Series, span: int) -> pd.Series:
    return x.ewm(span=span, adjust=False).mean()


def market_features(ticks: pd.DataFrame, cfg: FeatureConfig) -> pd.DataFrame:
    """Per-tick features and labels for one session of one symbol.

    The first ``warmup`` rows (where rolling windows are not yet full) are dropped.

    Returns columns ``ts``, :data:`MARKET_FEATURES`, ``alert_label``, ``direction_label``,
    ``fwd_ret_bps``, ``label_end_ts``, ``regime``, ``anomaly``.
    """
    if cfg.return_horizons != [1, 5, 20, 50]:
        raise ValueError("features.return_horizons: the 16-feature layout expects [1, 5, 20, 50]")
    bid1, ask1 = ticks["bid_px_1"], ticks["ask_px_1"]
    mid = (bid1 + ask1) / 2
    bsz = ticks[[f"bid_sz_{i}" for i in range(1, BOOK_LEVELS + 1)]].sum(axis=1)
    asz = ticks[[f"ask_sz_{i}" for i in range(1, BOOK_LEVELS + 1)]].sum(axis=1)
    logmid = np.log(mid)
    r1 = logmid.diff() * _BPS
    size = ticks["last_sz"]

    out = pd.DataFrame({"ts": ticks["ts"]})
    out["spread_bps"] = (ask1 - bid1) / mid * _BPS
    out["imbalance_l1"] = (ticks["bid_sz_1"] - ticks["ask_sz_1"]) / (ticks["bid_sz_1"] + ticks["ask_sz_1"])
    out["imbalance_l5"] = (bsz - asz) / (bsz + asz)
    out["depth_log"] = np.log(bsz + asz)
    for h in cfg.return_horizons:
        out[f"ret_{h}"] = (logmid - logmid.shift(h)) * _BPS
    vol = r1.rolling(cfg.vol_window).std()
    out["vol"] = vol
    out["vol_spike"] = r1.rolling(10).std() / (vol + 1e-6)
    vmean = size.rolling(cfg.vwap_window).mean()
    vstd = size.rolling(cfg.vwap_window).std()
    out["volume_anomaly"] = (size - vmean) / (vstd + 1e-9)
    out["volume_log"] = np.log1p(size)
    px_sz = (ticks["last_px"] * size).rolling(cfg.vwap_window).sum()
    vwap = px_sz / size.rolling(cfg.vwap_window).sum()
    out["vwap_dist_bps"] = (mid - vwap) / mid * _BPS
    out["ema_fast_dist_bps"] = (mid - _ema(mid, cfg.ema_fast)) / mid * _BPS
    out["ema_slow_dist_bps"] = (mid - _ema(mid, cfg.ema_slow)) / mid * _BPS
    ts_ns = ticks["ts"].astype("int64").to_numpy()
    out["gap_log_ms"] = np.log1p(np.diff(ts_ns, prepend=ts_ns[0]) / 1e6)

    # market_alert label: an abnormal tick (price move beyond alert_sigma trailing sigmas,
    # or volume beyond alert_volume_ratio x trailing mean) within the next H ticks.
    trailing_vol = vol.shift(1)
    trailing_size = vmean.shift(1)
    abnormal = ((r1.abs() > cfg.alert_sigma * trailing_vol) | (size > cfg.alert_volume_ratio * trailing_size))
    h = cfg.alert_horizon_ticks
    future_any = abnormal[::-1].astype(float).rolling(h, min_periods=1).max()[::-1].shift(-1)
    out["alert_label"] = future_any
    # price_direction label: is the mid higher horizon_ms from now?
    horizon_ns = cfg.horizon_ms * 1_000_000
    j = np.searchsorted(ts_ns, ts_ns + horizon_ns, side="left")
    valid = j < len(ts_ns)
    j_clip = np.minimum(j, len(ts_ns) - 1)
    mid_np = mid.to_numpy()
    fwd = np.where(valid, (mid_np[j_clip] / mid_np - 1) * _BPS, np.nan)
    out["fwd_ret_bps"] = fwd
    out["direction_label"] = np.where(valid, (fwd > 0).astype(float), np.nan)
    # The latest tick either label looks at, for purging across split boundaries.
    alert_end = np.minimum(np.arange(len(ts_ns)) + h, len(ts_ns) - 1)
    out["label_end_ts"] = np.maximum(ts_ns[alert_end], ts_ns[j_clip])
    out["regime"] = ticks["regime"].to_numpy()
    out["anomaly"] = ticks["anomaly"].to_numpy()

    warmup = max(cfg.vol_window, cfg.vwap_window, max(cfg.return_horizons)) + 1
    out = out.iloc[warmup:]
    # Labels need the future: the session's tail has none.
    out = out[out["alert_label"].notna() & out["direction_label"].notna()]
    out[MARKET_FEATURES] = out[MARKET_FEATURES].astype(np.float32)
    return out.reset_index(drop=True)


def fraud_features(txns: pd.DataFrame) -> pd.DataFrame:
    """Per-transaction features, each using only the account's earlier transactions.

    ``txns`` may span several days (account history carries across days); it is
    processed in time order. Returns ``ts``, :data:`FRAUD_FEATURES`, ``label``.

    The history features look back a bounded 24 h (count of the account's transactions,
    time since its previous one, capped at a day), so their distribution does not depend
    on how many days a job happens to load: a cumulative count would grow with the window
    and show as drift between training and serving. Load a day before the rows you need.
    """
    df = txns.sort_values("ts", kind="stable").reset_index(drop=True)
    ts_s = (df["ts"].astype("int64") // 1_000_000_000).to_numpy()
    ts_s = ts_s - ts_s.min()
    acct = df["account_id"].to_numpy()
    order = np.lexsort((np.arange(len(df)), ts_s, acct))  # by account, then time
    key = acct[order].astype(np.int64) * 10**9 + ts_s[order]
    pos = np.arange(len(df))
    out = pd.DataFrame({"ts": df["ts"]})
    amount_log = np.log(df["amount"].to_numpy())
    out["amount_log"] = amount_log
    g = df.groupby("account_id", sort=False)
    prior = g.cumcount().to_numpy()
    prev_sum = g["amount"].transform(lambda s: np.log(s).cumsum().shift(1)).to_numpy()
    prev_mean = np.where(prior > 0, prev_sum / np.maximum(prior, 1), np.nan)
    out["amount_z"] = np.nan_to_num(amount_log - prev_mean, nan=0.0)
    since = g["ts"].diff().dt.total_seconds().to_numpy()
    out["since_prev_log"] = np.log1p(np.minimum(np.nan_to_num(since, nan=86_400.0), 86_400.0))

    def recent(window_s: int) -> np.ndarray:
        """Same-account rows within [t - window, t): sorted keys make it a searchsorted."""
        counts = np.empty(len(df))
        counts[order] = pos - np.searchsorted(key, key - window_s, side="left")
        return counts

    out["velocity_10m"], out["velocity_1h"] = recent(600), recent(3600)
    out["history_24h_log"] = np.log1p(recent(86_400))
    seen_device = df.groupby(["account_id", "device_id"], sort=False).cumcount().to_numpy()
    out["new_device"] = ((seen_device == 0) & (prior > 0)).astype(float)
    out["country_mismatch"] = (df["country"] != df["home_country"]).astype(float)
    out["high_risk_mcc"] = df["merchant_category"].isin(HIGH_RISK_MCC).astype(float)
    hour = df["ts"].dt.hour + df["ts"].dt.minute / 60
    out["hour_sin"] = np.sin(2 * np.pi * hour / 24)
    out["hour_cos"] = np.cos(2 * np.pi * hour / 24)
    out["label"] = df["is_fraud"].astype(float).to_numpy()
    out[FRAUD_FEATURES] = out[FRAUD_FEATURES].astype(np.float32)
    return out


def make_windows(values: np.ndarray, ends: np.ndarray, length: int) -> np.ndarray:
    """Stack windows ``values[e-length+1 : e+1]`` for each end index ``e``.

    Args:
        values: ``[T, F]`` per-tick features of one session.
        ends: window end indices, each ``>= length - 1``.
        length: window length in ticks.

    Returns:
        ``[len(ends), length, F]`` float32 array (a copy).
    """
    if len(ends) and (ends.min() < length - 1 or ends.max() >= len(values)):
        raise ValueError(f"window ends must lie in [{length - 1}, {len(values) - 1}]")
    view = np.lib.stride_tricks.sliding_window_view(values, length, axis=0)  # [T-L+1, F, L]
    return np.ascontiguousarray(view[ends - length + 1].transpose(0, 2, 1), dtype=np.float32)
