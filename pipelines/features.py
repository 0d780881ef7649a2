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
FLASH_TICKS = 6
"""Look-back of the data-defined flash move (``flash`` in :func:`market_features`), in ticks."""


def _ema(x: pd.Series, span: int) -> pd.Series:
    return x.ewm(span=span, adjust=False).mean()


def market_features(ticks: pd.DataFrame, cfg: FeatureConfig) -> pd.DataFrame:
    """Per-tick features and labels for one session of one symbol.

    The first ``warmup`` rows (where rolling windows are not yet full) are dropped.

    Returns columns ``ts``, :data:`MARKET_FEATURES`, ``alert_label``, ``direction_label``,
    ``fwd_ret_bps``, ``label_end_ts``, ``flash``. ``flash`` (the tail the gates score apart, defined from prices and
    sizes so a real feed and the simulator mean the same; the lake's optional ``regime``/``anomaly`` ground truth is
    not read): the mid moved more than ``alert_sigma`` trailing sigmas (scaled by sqrt of the ticks) over the last
    :data:`FLASH_TICKS` ticks, or one of those ticks was abnormal by the ``alert_label`` rule.
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
    m = FLASH_TICKS
    move = (logmid - logmid.shift(m)).abs() * _BPS
    flash = (move > cfg.alert_sigma * np.sqrt(m) * vol.shift(m)) | (abnormal.astype(float).rolling(m).max() > 0)
    out["flash"] = flash.to_numpy(bool)

    warmup = max(cfg.vol_window, cfg.vwap_window, max(cfg.return_horizons)) + 1
    out = out.iloc[warmup:]
    # Labels need the future: the session's tail has none.
    out = out[out["alert_label"].notna() & out["direction_label"].notna()]
    out[MARKET_FEATURES] = out[MARKET_FEATURES].astype(np.float32)
    return out.reset_index(drop=True)


FRAUD_WINDOW_DAYS = (1, 7, 30)
"""The customer and terminal windows. A row needs ``max(FRAUD_WINDOW_DAYS)`` days of the channel's history before it
(the warm-up: earlier rows have short windows and are not model rows)."""
NIGHT_HOURS = 6
"""Payments before 06:00 UTC are "during the night" (Handbook: hour <= 6)."""


def fraud_features(txns: pd.DataFrame, chargebacks: pd.DataFrame | None = None, *, since: pd.Timestamp | None = None,
                   cutoff: pd.Timestamp | None = None, maturity_days: float = 0) -> pd.DataFrame:
    """Per-transaction features (the Fraud-Detection Handbook's, ch. 3.4, and three weak ones) and labels.

    A transaction at ``t`` sees only the channel's transactions up to ``t`` and the chargebacks reported before
    ``t``: its amount, whether it falls on a weekend or at night; the customer's count and mean amount over the
    last 1, 7 and 30 days (this payment included); the terminal's count of payments over the last 1, 7, 30 days
    before ``t`` and the share of them whose chargeback was reported before ``t`` (its risk); whether the merchant is
    abroad, its MCC high-risk, the device new to the account in 30 days.

    ``label``: 1 if a chargeback for the transaction was reported before ``cutoff`` (default: any of
    ``chargebacks``), else 0; NaN (unknown, not a training row) for a transaction younger than ``maturity_days`` at
    ``cutoff``. Rows before ``since`` are history only, left out of the result: load
    ``max(FRAUD_WINDOW_DAYS)`` days before it. Extra columns (a ``partition`` tag) are ignored.
    Returns ``ts``, :data:`FRAUD_FEATURES`, ``label``.
    """
    df = txns.sort_values("ts", kind="stable").reset_index(drop=True)
    cb = chargebacks if chargebacks is not None else pd.DataFrame({"ts": pd.to_datetime([], utc=True),
                                                                     "txn_id": np.array([], np.int64)})
    ms = 1_000_000
    t0 = int(df["ts"].min().value) if len(df) else 0
    t = (df["ts"].astype("int64").to_numpy() - t0) // ms
    day = 86_400_000
    longest = max(FRAUD_WINDOW_DAYS) * day
    span = int(t.max(initial=0)) + 2 * longest + 1  # every value keyed below lies in [-longest, max t + longest]
    amount = df["amount"].to_numpy(np.float64)
    out = pd.DataFrame({"ts": df["ts"]})
    out["amount_log"] = np.log(amount)
    out["weekend"] = (df["ts"].dt.weekday >= 5).astype(float)
    out["night"] = (df["ts"].dt.hour < NIGHT_HOURS).astype(float)

    def keyed(column: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Keys (entity code x span + time) that order rows by entity then time, sorted; the rows' sort positions."""
        codes = pd.factorize(df[column])[0].astype(np.int64)
        if len(codes) and int(codes.max()) >= np.iinfo(np.int64).max // span:
            raise ValueError(f"fraud_features: too many {column} values for int64 keys")
        key = codes * span + longest + t
        order = np.lexsort((np.arange(len(df)), key))
        pos = np.empty(len(df), np.int64)
        pos[order] = np.arange(len(df))
        return key, key[order], pos

    key, sorted_key, pos = keyed("account_id")
    cum = np.concatenate([[0.0], np.cumsum(amount[np.argsort(pos)])])
    for w in FRAUD_WINDOW_DAYS:  # [t - w, t], this payment included
        left = np.searchsorted(sorted_key, key - w * day, side="left")
        count = pos - left + 1
        out[f"cust_count_{w}d"] = np.log1p(count)
        out[f"cust_amount_{w}d"] = np.log((cum[pos + 1] - cum[left]) / count)

    key, sorted_key, pos = keyed("terminal_id")
    # A chargeback reported at r for a payment at s on the same terminal counts for the rows at t in (r, s + w]:
    # reported before t, paid within the window. Counting intervals that contain t is two searchsorted.
    row = pd.Series(np.arange(len(df)), index=df["txn_id"].to_numpy())
    hit = cb[cb["txn_id"].isin(row.index)]
    j = row.loc[hit["txn_id"].to_numpy()].to_numpy()
    reported = (hit["ts"].astype("int64").to_numpy() - t0) // ms
    within = reported <= t.max(initial=0)  # reported after the last payment: nothing here can know it
    j, reported = j[within], reported[within]
    for w in FRAUD_WINDOW_DAYS:  # [t - w, t), this payment left out
        count = pos - np.searchsorted(sorted_key, key - w * day, side="left")
        start, end = key[j] - t[j] + reported, key[j] + w * day
        live = start < end
        known = (np.searchsorted(np.sort(start[live]), key, side="left")
                 - np.searchsorted(np.sort(end[live]), key, side="left"))
        out[f"term_count_{w}d"] = np.log1p(count)
        out[f"term_risk_{w}d"] = known / np.maximum(count, 1)

    out["country_mismatch"] = (df["country"] != df["home_country"]).astype(float)
    out["high_risk_mcc"] = df["merchant_category"].isin(HIGH_RISK_MCC).astype(float)
    since_same = df.groupby(["account_id", "device_id"], sort=False)["ts"].diff()
    out["new_device"] = (since_same.isna() | (since_same > pd.Timedelta(days=max(FRAUD_WINDOW_DAYS)))).astype(float)

    known_by = cb if cutoff is None else cb[cb["ts"] < cutoff]
    label = df["txn_id"].isin(known_by["txn_id"]).astype(float).to_numpy()
    if cutoff is not None:
        label[(df["ts"] >= cutoff - pd.Timedelta(days=maturity_days)).to_numpy()] = np.nan
    out["label"] = label
    if since is not None:
        out = out[out["ts"] >= since]
    out[FRAUD_FEATURES] = out[FRAUD_FEATURES].astype(np.float32)
    return out.reset_index(drop=True)


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
