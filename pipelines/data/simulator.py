"""Embedded, deterministic synthetic sources: an L2 market and a card-transaction stream.

Output is a pure function of (date, symbol, seed). The market has:

* a price level of the instrument's own (a function of symbol and seed) that each day
  starts near, so consecutive days join up as a real instrument's do;
* regimes (bull, bear, sideways) as a sticky Markov chain with their own drift and vol;
* volatility clustering through a GARCH(1,1) variance (tick to tick) times two slow log-volatility components
  (half-lives of 30 s and 5 min, their shocks tied to falls: the leverage effect), so |returns| stay correlated
  for minutes as a real market's do (docs/data.md measures the stylized facts);
* an order-book imbalance (AR(1)) that shifts the next ticks' returns: the learnable
  short-horizon signal for ``price_direction``;
* anomalies (flash moves and volume bursts) preceded by a short build-up of wider
  spreads, thinner books and rising volume: the learnable signal for ``market_alert``.

The card-payment world (customers, terminals, three fraud scenarios, chargebacks reported days later) is
:mod:`.payments`, after the Fraud-Detection Handbook's generator; :func:`simulate_transactions` delegates to it.

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

from .schema import BOOK_LEVELS, MARKET_SCHEMA, REGIMES

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


SLOW_VOL = ((0.35, 600), (0.45, 6000))
"""Slow log-volatility components multiplying the GARCH variance: (stationary sd, half-life in ticks): about 30 s
and 5 min at ~50 ms a tick. GARCH alone (alpha + beta = 0.97 a tick) forgets within a second or two; these keep the
ACF of |1-second returns| above 0.02 past 50 lags (``pipelines/data/facts.py``)."""
LEVERAGE = -0.35
"""Correlation of the slow components' shocks with the return shocks: a fall raises the volatility to come."""


def _slow_volatility(seed: int, eps: np.ndarray) -> np.ndarray:
    """exp of a sum of AR(1) log-volatilities, each started in its stationary law, of mean 1 in variance."""
    from scipy.signal import lfilter

    rng = np.random.default_rng(seed)
    log_vol = np.zeros(len(eps))
    for sd, half_life in SLOW_VOL:
        phi = 0.5 ** (1 / half_life)
        z = LEVERAGE * eps + np.sqrt(1 - LEVERAGE**2) * rng.standard_normal(len(eps))
        shocks = sd * np.sqrt(1 - phi**2) * z
        shocks[0] = sd * rng.standard_normal()
        log_vol += lfilter([1.0], [1.0, -phi], shocks) - sd**2
    return np.exp(log_vol)


def simulate_market(date: str, symbol: str, n_ticks: int, seed: int, shift: Shift | None = None) -> pd.DataFrame:
    """One trading session of L2 ticks for one symbol, in the lake's market schema."""
    from scipy.signal import lfilter

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
    imb = np.clip(lfilter([1.0], [1.0, -phi], shocks), -0.95, 0.95)

    # GARCH(1,1) returns with drift, imbalance signal and jumps.
    sigma0 = rng.uniform(0.8e-4, 1.4e-4)
    alpha, beta = 0.07, 0.9
    omega = (1 - alpha - beta)
    eps = rng.standard_normal(n)
    var = lfilter([1.0], [1.0, -beta], np.concatenate([[1.0], omega + alpha * eps[:-1] ** 2]))  # var[0] = 1
    kappa = 0.55  # imbalance -> next-tick return, in sigmas
    prev_imb = np.concatenate([[0.0], imb[:-1]])
    ret = np.sqrt(var) * (eps * (1 + 0.6 * build) + kappa * prev_imb)
    slow = _slow_volatility(stable_seed("market-vol", seed, date, symbol), eps)  # own stream: the draws above stay
    sigma = sigma0 * vol_mult * np.sqrt(var) * slow
    log_ret = sigma0 * vol_mult * (slow * ret + drift) + sigma0 * flash
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


def simulate_transactions(date: str, channel: str, n_txn: int, seed: int, shift: Shift | None = None) -> pd.DataFrame:
    """One day of card authorisations in the lake's transaction schema (no label): see :mod:`.payments`.

    The world is a function of ``(date, channel, seed)`` and ``n_txn`` (its size); its frauds are known through
    :func:`.payments.simulate_chargebacks`, and :func:`.payments.simulate_day` keeps the truth.
    """
    from .payments import simulate_transactions as payments_day

    return payments_day(date, channel, n_txn, seed, shift)
