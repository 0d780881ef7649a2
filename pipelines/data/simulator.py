"""Embedded, deterministic synthetic sources: an L2 market and a card-transaction stream.

Output is a pure function of (date, symbol, seed). The market has:

* a price level of the instrument's own (a function of symbol and seed) that each day
  starts near, so consecutive days join up as a real instrument's do;
* regimes (bull, bear, sideways) as a sticky Markov chain with their own drift and vol;
* volatility clustering through a GARCH(1,1) variance;
* an order-book imbalance (AR(1)) that shifts the next ticks' returns: the learnable
  short-horizon signal for ``price_direction``;
* anomalies (flash moves and volume bursts) preceded by a short build-up of wider
  spreads, thinner books and rising volume: the learnable signal for ``market_alert``.

The transaction stream is imbalanced (about 2 % fraud) with three fraud patterns:
velocity bursts, amount spikes against the account's habit, and new devices abroad.

A :class:`Shift` plants a regime shift part-way through a day (a stressed market:
higher volatility, thinner books, wider spreads; a changed customer base: larger
amounts, more spending abroad). ``factory replay`` and the drift tests use it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .schema import BOOK_LEVELS, HIGH_RISK_MCC, MARKET_SCHEMA, REGIMES, TRANSACTIONS_SCHEMA

TICK = 0.01
SESSION_OPEN_UTC = dt.time(13, 30)
_REGIME_DRIFT = {"bull": 0.04, "bear": -0.04, "sideways": 0.0}  # in units of per-tick sigma
_REGIME_VOL = {"bull": 0.9, "bear": 1.4, "sideways": 0.75}


@dataclass(frozen=True)
class Shift:
    """A regime shift from ``start`` (fraction of the day) to the end of the day."""

    start: float = 0.4
    vol: float = 2.5
    """Market: volatility multiplier (spreads widen with it)."""
    depth: float = 0.35
    """Market: book-depth multiplier."""
    amount: float = 2.5
    """Transactions: amount multiplier."""
    abroad: float = 0.25
    """Transactions: extra share of transactions made abroad."""

    def __post_init__(self) -> None:
        if not 0 <= self.start < 1:
            raise ValueError(f"Shift.start must be in [0, 1), got {self.start}")


def stable_seed(*parts: object) -> int:
    """A seed that does not depend on Python's hash randomisation."""
    digest = hashlib.sha256("|".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def _session_start(date: str) -> pd.Timestamp:
    day = dt.date.fromisoformat(date)
    return pd.Timestamp(dt.datetime.combine(day, SESSION_OPEN_UTC), tz="UTC")


def _regime_path(rng: np.random.Generator, n: int) -> np.ndarray:
    """Sticky regime chain: segments of geometric length (mean n/4)."""
    out = np.empty(n, dtype=np.int8)
    i, current = 0, int(rng.integers(len(REGIMES)))
    while i < n:
        length = int(rng.geometric(4.0 / n)) + 200
        out[i : i + length] = current
        i += length
        current = int((current + rng.integers(1, len(REGIMES))) % len(REGIMES))
    return out


def simulate_market(date: str, symbol: str, n_ticks: int, seed: int, shift: Shift | None = None) -> pd.DataFrame:
    """One trading session of L2 ticks for one symbol, in the lake's market schema."""
    rng = np.random.default_rng(stable_seed("market", seed, date, symbol))
    n = n_ticks
    regime_idx = _regime_path(rng, n)
    regimes = np.asarray(REGIMES)[regime_idx]
    drift = np.vectorize(_REGIME_DRIFT.get)(regimes)
    vol_mult = np.vectorize(_REGIME_VOL.get)(regimes)
    stress = np.ones(n)  # depth multiplier; < 1 after a planted shift
    if shift is not None:
        s0 = int(shift.start * n)
        vol_mult = vol_mult.astype(float)
        vol_mult[s0:] *= shift.vol
        stress[s0:] = shift.depth

    # Anomaly events, each with a build-up ("precursor") before it.
    precursor, event_len = 15, 6
    n_events = max(1, int(rng.poisson(n / 250)))
    starts = np.sort(rng.choice(np.arange(precursor + 100, n - event_len - 60), n_events, replace=False))
    build = np.zeros(n)  # 0..1 ramp during precursors
    flash = np.zeros(n)  # signed jump per tick, in sigmas
    burst = np.ones(n)  # volume multiplier
    anomaly = np.zeros(n, dtype=bool)
    for s in starts:
        build[s - precursor : s] = np.maximum(build[s - precursor : s], np.linspace(0.2, 1.0, precursor))
        anomaly[s : s + event_len] = True
        if rng.random() < 0.6:  # flash move over 4 ticks, partly reverting afterwards
            sign = rng.choice([-1.0, 1.0])
            size = rng.uniform(14, 22)
            flash[s : s + 4] += sign * size / 4
            flash[s + event_len : s + 3 * event_len] -= sign * 0.3 * size / (2 * event_len)
            burst[s : s + event_len] *= 4.0
        else:  # volume burst with a moderate move
            burst[s : s + event_len] *= rng.uniform(8, 14)
            flash[s : s + event_len] += rng.choice([-1.0, 1.0]) * rng.uniform(1, 3) / event_len

    # Order-book imbalance: AR(1) in (-1, 1).
    phi = 0.92
    shocks = rng.standard_normal(n) * 0.38 * np.sqrt(1 - phi**2)
    imb = np.empty(n)
    imb[0] = shocks[0]
    for t in range(1, n):
        imb[t] = phi * imb[t - 1] + shocks[t]
    imb = np.clip(imb, -0.95, 0.95)

    # GARCH(1,1) returns with drift, imbalance signal and jumps.
    sigma0 = rng.uniform(0.8e-4, 1.4e-4)
    alpha, beta = 0.07, 0.9
    omega = (1 - alpha - beta)
    eps = rng.standard_normal(n)
    var = np.empty(n)
    ret = np.empty(n)
    var[0] = 1.0
    kappa = 0.55  # imbalance -> next-tick return, in sigmas
    prev_imb = np.concatenate([[0.0], imb[:-1]])
    for t in range(n):
        if t:
            var[t] = omega + alpha * eps[t - 1] ** 2 + beta * var[t - 1]
        ret[t] = np.sqrt(var[t]) * (eps[t] * (1 + 0.6 * build[t]) + kappa * prev_imb[t])
    sigma = sigma0 * vol_mult * np.sqrt(var)
    log_ret = sigma0 * vol_mult * (ret + drift) + sigma0 * flash
    # The instrument keeps its own price level from day to day (as a real one does: the lake's validation checks
    # each day against the previous close); each day opens with a small gap from it.
    level = np.random.default_rng(stable_seed("level", seed, symbol)).uniform(-1.5, 2.5)
    mid = 100.0 * np.exp(level + np.cumsum(log_ret) + rng.uniform(-0.05, 0.05))

    # Book: spread widens with vol and during build-ups; depth thins in build-ups.
    spread_ticks = np.maximum(1, np.round(1 + 2.5 * (sigma / sigma0 - 0.8).clip(0) + 4 * build))
    bid1 = np.floor((mid - spread_ticks * TICK / 2) / TICK) * TICK
    ask1 = bid1 + spread_ticks * TICK
    depth = 500.0 * (1 - 0.6 * build) * stress
    frame: dict[str, np.ndarray] = {}
    for lvl in range(1, BOOK_LEVELS + 1):
        decay = 1.0 + 0.15 * (lvl - 1)
        noise_b = rng.lognormal(0, 0.25, n)
        noise_a = rng.lognormal(0, 0.25, n)
        frame[f"bid_px_{lvl}"] = np.round(bid1 - (lvl - 1) * TICK, 2)
        frame[f"bid_sz_{lvl}"] = np.round(depth * decay * (1 + imb) * noise_b, 0) + 1
        frame[f"ask_px_{lvl}"] = np.round(ask1 + (lvl - 1) * TICK, 2)
        frame[f"ask_sz_{lvl}"] = np.round(depth * decay * (1 - imb) * noise_a, 0) + 1

    side = np.where(log_ret >= 0, 1.0, -1.0)
    last_px = np.round(np.where(side > 0, ask1, bid1), 2)
    last_sz = np.round(rng.lognormal(3.0, 0.6, n) * burst * (1 + 1.5 * build) * (sigma / sigma0) ** 0.5, 0) + 1

    # Arrivals: ~50 ms apart, faster when the market is busy.
    gaps_ns = (rng.exponential(50e6, n) / (1 + build + (burst - 1) * 0.3)).astype(np.int64) + 1000
    ts = _session_start(date).value + np.cumsum(gaps_ns)

    df = pd.DataFrame({"ts": pd.to_datetime(ts, utc=True).astype("datetime64[ns, UTC]"), **frame})
    df["last_px"] = last_px
    df["last_sz"] = last_sz
    df["regime"] = regimes.astype(str)
    df["anomaly"] = anomaly
    return df[MARKET_SCHEMA.names]


def simulate_transactions(date: str, channel: str, n_txn: int, seed: int, n_accounts: int = 3000,
                          shift: Shift | None = None) -> pd.DataFrame:
    """One day of card transactions, in the lake's transaction schema.

    Accounts are a function of ``seed`` alone, so habits carry across days.
    """
    acc_rng = np.random.default_rng(stable_seed("accounts", seed, channel))
    countries = np.array(["US", "GB", "DE", "FR", "JP", "SG", "BR", "NG"])
    home = countries[acc_rng.choice(len(countries), n_accounts, p=[0.45, 0.15, 0.1, 0.1, 0.08, 0.05, 0.04, 0.03])]
    habit_mu = acc_rng.normal(3.5, 0.8, n_accounts)  # log-amount habit
    home_device = np.arange(n_accounts, dtype=np.int64) * 10
    usual_mcc = acc_rng.choice([5411, 5812, 5541, 5999, 4121, 5732], size=(n_accounts, 3))

    rng = np.random.default_rng(stable_seed("transactions", seed, date, channel))
    n_fraud_sessions = max(2, int(n_txn * 0.004))
    n_normal = n_txn  # normal transactions first; fraud bursts are appended, then the day is trimmed
    acct = rng.integers(0, n_accounts, n_normal)
    day_start = pd.Timestamp(dt.date.fromisoformat(date), tz="UTC").value
    secs = np.sort(rng.uniform(0, 86_400, n_normal))
    amount = np.exp(rng.normal(habit_mu[acct], 0.45))
    mcc = usual_mcc[acct, rng.integers(0, 3, n_normal)]
    risky = rng.random(n_normal) < 0.03  # legitimate gambling, transfers, ...
    mcc[risky] = rng.choice(np.array(HIGH_RISK_MCC), risky.sum())
    country = home[acct].copy()
    travel = rng.random(n_normal) < 0.02
    country[travel] = countries[rng.integers(0, len(countries), travel.sum())]
    device = home_device[acct].copy()
    new_dev = rng.random(n_normal) < 0.01  # legitimate new phones
    device[new_dev] += rng.integers(1, 9, new_dev.sum())
    fraud = np.zeros(n_normal, dtype=bool)
    if shift is not None:
        late = secs >= shift.start * 86_400
        amount[late] *= shift.amount
        away = late & (rng.random(n_normal) < shift.abroad)
        country[away] = countries[rng.integers(0, len(countries), away.sum())]

    rows = [pd.DataFrame({"secs": secs, "account_id": acct, "amount": amount, "merchant_category": mcc,
                          "country": country, "device_id": device, "is_fraud": fraud})]
    for _ in range(n_fraud_sessions):
        a = int(rng.integers(0, n_accounts))
        k = int(rng.integers(3, 9))
        t0 = rng.uniform(0, 86_400 - 3600)
        burst_secs = t0 + np.sort(rng.uniform(0, rng.uniform(60, 900), k))  # velocity
        spike = np.exp(habit_mu[a] + rng.normal(1.8, 0.6, k))  # amount spike
        pattern = rng.random()
        dev = np.full(k, home_device[a] + 7777 + int(rng.integers(0, 1000)))  # new device
        ctry = np.full(k, countries[rng.integers(0, len(countries))])
        if pattern < 0.3:  # card-testing: small amounts at high velocity, home device spoofed
            spike = np.exp(rng.normal(0.5, 0.5, k))
            dev[:] = home_device[a]
            ctry[:] = home[a]
        mccs = rng.choice(np.array(HIGH_RISK_MCC + (5999, 5732)), k)
        rows.append(pd.DataFrame({"secs": burst_secs, "account_id": a, "amount": spike, "merchant_category": mccs,
                                  "country": ctry, "device_id": dev, "is_fraud": True}))
    df = pd.concat(rows, ignore_index=True).sort_values("secs", kind="stable").head(n_txn).reset_index(drop=True)
    ts_ns = day_start + (df["secs"].to_numpy() * 1e9).astype(np.int64)
    ts_ns = np.maximum.accumulate(ts_ns + np.arange(len(df)))  # strictly increasing
    out = pd.DataFrame({
        "ts": pd.to_datetime(ts_ns, utc=True).astype("datetime64[ns, UTC]"),
        "txn_id": stable_seed("txn", seed, date) % 10**9 * 10**6 + np.arange(len(df), dtype=np.int64),
        "account_id": df["account_id"].astype(np.int64),
        "amount": np.round(df["amount"].to_numpy(), 2) + 0.01,
        "merchant_category": df["merchant_category"].astype(np.int32),
        "country": df["country"].astype(str),
        "home_country": home[df["account_id"].to_numpy()].astype(str),
        "device_id": df["device_id"].astype(np.int64),
        "is_fraud": df["is_fraud"].astype(bool),
    })
    return out[TRANSACTIONS_SCHEMA.names]
