"""A card-payments world after the Fraud-Detection Handbook's transaction generator, with delayed chargebacks.

Le Borgne et al., *Reproducible Machine Learning for Credit Card Fraud Detection - Practical Handbook*, ch. 3
("Simulated dataset"): customers and terminals at locations on a 100 x 100 map; each customer has a mean and
std of amount and a mean number of transactions per day, and pays at the terminals within a radius of home.
Three fraud scenarios, as there:

1. **Stolen cards** (the Handbook's "amount > 220 is fraud", made weaker): a few purchases a day at a terminal near
   the customer with a large amount; legitimate big-ticket purchases overlap them, so amount alone is no rule.
2. **Compromised terminals:** a few terminals a day; every transaction on one in the 28 days from the day it was
   compromised is fraud (skimming). Only the terminal's known chargebacks reveal it.
3. **Compromised customers:** a few customers a day; a third of their transactions in the next 14 days are
   card-not-present fraud with amounts x5, at any hour, some at a terminal anywhere (often abroad or at a
   high-risk merchant) and some from a device the customer never used.

The world is a pure function of ``(date, channel, seed)`` (and the size ``n_txn``): the population depends on
``(seed, channel, n_txn)``, and each day's compromise events on a per-day seed, so a day looks back 28 (14) days of
events to know which terminals (customers) are compromised and needs no other day's output.

A fraud becomes known when its chargeback is reported: a log-normal delay (median
:data:`CHARGEBACK_MEDIAN_DAYS`, capped at :data:`CHARGEBACK_MAX_DAYS`) after the transaction. The lake keeps the
authorisations (``transactions``, no label) and the chargebacks by report date (``chargebacks``); a day's
chargebacks come from the fraud of the :data:`CHARGEBACK_MAX_DAYS` days before it.
"""

from __future__ import annotations

import datetime as dt
import functools

import numpy as np
import pandas as pd

from .schema import CHARGEBACKS_SCHEMA, HIGH_RISK_MCC, TRANSACTIONS_SCHEMA
from .simulator import Shift, stable_seed  # simulator imports this module only inside simulate_transactions

MAP = 100.0
RADIUS = 5.0
"""A customer pays at the terminals within this distance of home (Handbook: r = 5 on a 100 x 100 map)."""
TERMINALS_PER_CUSTOMER = 2
"""Handbook: 5,000 customers, 10,000 terminals; with 2 transactions per customer-day on average, n_txn a day
means n_txn / 2 customers and n_txn terminals."""
TERMINAL_EVENTS = 2 / 10_000
"""Terminals compromised a day, per terminal (Handbook: 2 of 10,000)."""
TERMINAL_DAYS = 28
CUSTOMER_EVENTS = 3 / 5_000
"""Customers compromised a day, per customer (Handbook: 3 of 5,000)."""
CUSTOMER_DAYS = 14
CUSTOMER_FRAUD_SHARE = 1 / 3
STOLEN_CARD_RATE = 0.0008
"""Scenario 1: stolen-card purchases a day, per transaction."""
BIG_TICKET_RATE = 0.004
"""Legitimate purchases of 3-12 x the customer's mean amount, per transaction."""
TRAVEL_RATE = 0.01
"""Legitimate payments at a terminal anywhere on the map (travel, online shops)."""
CHARGEBACK_MEDIAN_DAYS = 3.0
CHARGEBACK_SIGMA = 0.75
CHARGEBACK_MAX_DAYS = 30
COUNTRIES = np.array(["US", "GB", "DE", "FR"])
"""The map's four quadrants: a terminal's country is where it stands, a customer's home is where they live."""
MCC = np.array([5411, 5812, 5541, 5999, 4121, 5732] + list(HIGH_RISK_MCC), dtype=np.int32)
MCC_P = np.array([0.3, 0.2, 0.15, 0.1, 0.1, 0.1] + [0.05 / len(HIGH_RISK_MCC)] * len(HIGH_RISK_MCC))
REASONS = np.array(["none", "lost_stolen", "counterfeit", "card_not_present"])
"""Chargeback reason by scenario (0 is legitimate)."""
FRAUDSTER_DEVICE = 10**12


def _country(xy: np.ndarray) -> np.ndarray:
    return COUNTRIES[(xy[:, 0] >= MAP / 2).astype(int) * 2 + (xy[:, 1] >= MAP / 2).astype(int)]


@functools.lru_cache(maxsize=4)
def _population(seed: int, channel: str, n_customers: int) -> dict[str, np.ndarray]:
    """Customer profiles and terminals (Handbook 3.2): a function of ``(seed, channel, n_customers)``."""
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(stable_seed("payments-population", seed, channel, n_customers))
    n_terminals = TERMINALS_PER_CUSTOMER * n_customers
    cxy = rng.uniform(0, MAP, (n_customers, 2))
    mean_amount = rng.uniform(5, 100, n_customers)
    rate = rng.uniform(0, 4, n_customers)
    txy = rng.uniform(0, MAP, (n_terminals, 2))
    tree = cKDTree(txy)
    near = tree.query_ball_point(cxy, RADIUS)
    nearest = tree.query(cxy, k=1)[1]
    near = [n if len(n) else [int(nearest[i])] for i, n in enumerate(near)]  # no customer without a terminal
    counts = np.array([len(n) for n in near])
    return {
        "mean_amount": mean_amount, "std_amount": mean_amount / 2, "p": rate / rate.sum(),
        "home": _country(cxy), "near": np.concatenate(near).astype(np.int64), "near_count": counts,
        "near_start": np.concatenate([[0], np.cumsum(counts)[:-1]]),
        "terminal_country": _country(txy), "terminal_mcc": MCC[rng.choice(len(MCC), n_terminals, p=MCC_P)],
    }


def _compromised(kind: str, date: dt.date, days: int, n: int, rate: float, seed: int, channel: str) -> np.ndarray:
    """Ids compromised on any of the ``days`` days up to ``date`` (each day's events from that day's seed)."""
    ids = []
    for back in range(days):
        day = (date - dt.timedelta(days=back)).isoformat()
        rng = np.random.default_rng(stable_seed("payments-compromised", kind, seed, channel, day, n))
        ids.append(rng.choice(n, min(int(rng.poisson(rate * n)), n), replace=False))
    return np.unique(np.concatenate(ids)).astype(np.int64)


def compromised_terminals(date: str, n_txn: int, seed: int, channel: str = "CARD") -> np.ndarray:
    """Terminals compromised on ``date``: those with an event in the :data:`TERMINAL_DAYS` days up to it."""
    n_terminals = TERMINALS_PER_CUSTOMER * _n_customers(n_txn)
    return _compromised("terminal", dt.date.fromisoformat(date), TERMINAL_DAYS, n_terminals, TERMINAL_EVENTS, seed,
                        channel)


def _n_customers(n_txn: int) -> int:
    return max(n_txn // 2, 50)


def simulate_day(date: str, channel: str, n_txn: int, seed: int, shift: Shift | None = None) -> pd.DataFrame:
    """One day of authorisations with the simulator's truth: the lake's transaction columns plus ``is_fraud``,
    ``scenario`` (0 legitimate, 1-3 as in the module docstring) and ``report_ts`` (when its chargeback is
    reported; NaT if legitimate). Exactly ``n_txn`` rows.

    ``shift`` (``factory replay``) changes the customer base from ``shift.start`` of the day: amounts
    x ``shift.amount``, and a share ``shift.abroad`` of the payments made by visitors (cards from another
    country never seen before, at a terminal anywhere). It draws from its own stream, so which transactions exist
    and which are fraud does not change.
    """
    if not 0 < n_txn < 10**7:
        raise ValueError(f"n_txn must be in (0, 1e7), got {n_txn}")
    day = dt.date.fromisoformat(date)
    n_customers = _n_customers(n_txn)
    pop = _population(seed, channel, n_customers)
    n_terminals = len(pop["terminal_mcc"])
    rng = np.random.default_rng(stable_seed("payments-day", seed, channel, date, n_txn))

    # Handbook 3.3: who pays (in proportion to their rate), when (around midday), where (a terminal near home).
    cust = np.sort(rng.choice(n_customers, n_txn, p=pop["p"]))
    secs = np.mod(rng.normal(43_200, 20_000, n_txn), 86_399)  # the tails wrap round midnight
    amount = rng.normal(pop["mean_amount"][cust], pop["std_amount"][cust])
    neg = amount <= 0
    amount[neg] = rng.uniform(0, 2 * pop["mean_amount"][cust[neg]])
    big = rng.random(n_txn) < BIG_TICKET_RATE
    amount[big] *= rng.uniform(3, 12, big.sum())
    term = pop["near"][pop["near_start"][cust] + (rng.random(n_txn) * pop["near_count"][cust]).astype(np.int64)]
    travel = rng.random(n_txn) < TRAVEL_RATE
    term[travel] = rng.integers(0, n_terminals, travel.sum())
    device = cust.astype(np.int64) * 10 + (rng.random(n_txn) < 0.08)  # phone, sometimes the laptop
    new_device = rng.random(n_txn) < 0.005
    device[new_device] = cust[new_device] * 10 + rng.integers(2, 10, new_device.sum())
    scenario = np.zeros(n_txn, np.int8)

    # 1. stolen cards: a large purchase near the victim's home
    stolen = rng.random(n_txn) < STOLEN_CARD_RATE
    scenario[stolen] = 1
    amount[stolen] = rng.lognormal(np.log(200), 0.5, stolen.sum())
    # 2. compromised terminals: everything paid there is fraud
    scenario[np.isin(term, compromised_terminals(date, n_txn, seed, channel))] = 2
    # 3. compromised customers: a third of their payments, x5, at any hour, often elsewhere or from another device
    victims = _compromised("customer", day, CUSTOMER_DAYS, n_customers, CUSTOMER_EVENTS, seed, channel)
    cnp = np.isin(cust, victims) & (rng.random(n_txn) < CUSTOMER_FRAUD_SHARE)
    k = int(cnp.sum())
    scenario[cnp] = 3
    amount[cnp] *= 5
    secs[cnp] = rng.uniform(0, 86_399, k)
    risky = np.flatnonzero(np.isin(pop["terminal_mcc"], HIGH_RISK_MCC))
    where = rng.random(k)
    term[cnp] = np.where(where < 0.3, rng.choice(risky, k), np.where(where < 0.55, rng.integers(0, n_terminals, k),
                                                                     term[cnp]))
    device[cnp] = np.where(rng.random(k) < 0.5, FRAUDSTER_DEVICE + rng.integers(0, 10**6, k), device[cnp])

    home = pop["home"][cust]
    if shift is not None:  # its own stream: the same transactions, the same fraud
        srng = np.random.default_rng(stable_seed("payments-shift", seed, channel, date, n_txn))
        late = secs >= shift.start * 86_400
        amount[late] *= shift.amount
        away = late & (srng.random(n_txn) < shift.abroad)  # visitors: cards from elsewhere, never seen here
        k = int(away.sum())
        term[away] = srng.integers(0, n_terminals, k)
        cust[away] = n_customers + srng.integers(0, 100 * n_customers, k)
        home[away] = COUNTRIES[srng.integers(0, len(COUNTRIES), k)]
        device[away] = cust[away] * 10

    order = np.argsort(secs, kind="stable")
    day_start = pd.Timestamp(day, tz="UTC").value
    ts = np.maximum.accumulate(day_start + (secs[order] * 1e9).astype(np.int64) + np.arange(n_txn))
    fraud = scenario[order] > 0
    delay_days = np.minimum(rng.lognormal(np.log(CHARGEBACK_MEDIAN_DAYS), CHARGEBACK_SIGMA, n_txn),
                            CHARGEBACK_MAX_DAYS)  # drawn for every row, so the stream does not depend on the fraud
    report = pd.to_datetime(ts + (delay_days * 86_400e9).astype(np.int64), utc=True).where(fraud)
    cust, term, home = cust[order], term[order], home[order]
    out = pd.DataFrame({
        "ts": pd.to_datetime(ts, utc=True).astype("datetime64[ns, UTC]"),
        "txn_id": (day - dt.date(1970, 1, 1)).days * 10**7 + np.arange(n_txn, dtype=np.int64),
        "account_id": cust.astype(np.int64),
        "terminal_id": term.astype(np.int64),
        "amount": np.round(amount[order], 2) + 0.01,
        "merchant_category": pop["terminal_mcc"][term].astype(np.int32),
        "country": pop["terminal_country"][term].astype(str),
        "home_country": home.astype(str),
        "device_id": device[order].astype(np.int64),
    })[TRANSACTIONS_SCHEMA.names]
    out["is_fraud"] = fraud
    out["scenario"] = scenario[order]
    out["report_ts"] = report
    return out


def simulate_transactions(date: str, channel: str, n_txn: int, seed: int, shift: Shift | None = None) -> pd.DataFrame:
    """One day of authorisations in the lake's ``transactions`` schema (no label: see :func:`simulate_chargebacks`)."""
    return simulate_day(date, channel, n_txn, seed, shift)[TRANSACTIONS_SCHEMA.names]


@functools.lru_cache(maxsize=256)
def _ledger(date: str, channel: str, n_txn: int, seed: int) -> pd.DataFrame:
    """The day's frauds with their chargeback report times (small: a cache of many days stays cheap)."""
    day = simulate_day(date, channel, n_txn, seed)
    fraud = day[day["is_fraud"]]
    return pd.DataFrame({"ts": fraud["report_ts"].to_numpy(), "txn_id": fraud["txn_id"].to_numpy(),
                         "txn_ts": fraud["ts"].to_numpy(), "reason": REASONS[fraud["scenario"].to_numpy()]})


def simulate_chargebacks(date: str, channel: str, n_txn: int, seed: int) -> pd.DataFrame:
    """The chargebacks reported on ``date`` (``ts`` is the report time), in the lake's ``chargebacks`` schema.

    They come from the frauds of the :data:`CHARGEBACK_MAX_DAYS` days up to ``date``. May be empty.
    """
    day = dt.date.fromisoformat(date)
    start = pd.Timestamp(day, tz="UTC")
    frames = [_ledger((day - dt.timedelta(days=back)).isoformat(), channel, n_txn, seed)
              for back in range(CHARGEBACK_MAX_DAYS, -1, -1)]
    cb = pd.concat(frames, ignore_index=True)
    cb = cb[(cb["ts"] >= start) & (cb["ts"] < start + pd.Timedelta(days=1))]
    cb = cb.sort_values(["ts", "txn_id"], kind="stable").reset_index(drop=True)
    ts = cb["ts"].astype("int64").to_numpy()
    ts = np.maximum.accumulate(ts + np.arange(len(ts))) if len(ts) else ts  # strictly increasing
    cb["ts"] = pd.to_datetime(ts, utc=True).astype("datetime64[ns, UTC]")
    cb["txn_ts"] = cb["txn_ts"].astype("datetime64[ns, UTC]")
    cb["reason"] = cb["reason"].astype(str)
    return cb[CHARGEBACKS_SCHEMA.names]
