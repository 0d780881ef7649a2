"""The embedded market's stylized facts (docs/data.md): each holds on the default profile's simulated days, and each
check fails on a series built to lack that fact, so none passes vacuously.

Every threshold is a constant of :mod:`pipelines.data.facts`, where its published source is stated.
"""

import datetime as dt

import numpy as np
import pandas as pd
import pytest
from scipy.signal import lfilter

from factory_core.config import DataConfig
from pipelines.data import facts
from pipelines.data.simulator import simulate_market

DAYS = [(dt.date(2026, 11, 2) + dt.timedelta(days=k)).isoformat() for k in range(20)]
MIN_MINUTE_RETURNS = 1000
"""At least 1,000 one-minute returns, so the top 5 % the Hill estimator uses holds 50 or more."""


@pytest.fixture(scope="module")
def sessions() -> list[tuple[str, pd.DataFrame]]:
    data = DataConfig()  # the default profile's market: 4 symbols x 20,000 ticks, seed 7
    return [(s, simulate_market(d, s, data.ticks_per_day, data.seed)) for d in DAYS for s in data.symbols]


@pytest.fixture(scope="module")
def measured(sessions) -> facts.Facts:
    return facts.measure(sessions)


def test_sample_is_large_enough(measured):
    assert measured.sessions == 80
    assert measured.row("heavy tails").n >= MIN_MINUTE_RETURNS
    assert measured.hill_k >= facts.HILL_TAIL * MIN_MINUTE_RETURNS


def test_no_linear_autocorrelation(measured):
    worst = max(abs(measured.acf_r[k]) for k in facts.ACF_LAGS)
    assert worst < facts.ACF_MAX, measured.acf_r[:21].round(3)
    assert measured.row("no linear autocorrelation").ok
    assert measured.row("autocorrelation, lag 1").ok is None  # stated, not gated


def test_heavy_tails(measured):
    lo, hi = facts.HILL_RANGE
    assert lo <= measured.row("heavy tails").value <= hi


def test_aggregational_gaussianity(measured):
    k = measured.kurtosis
    assert k["1min"] < k["1s"], k
    assert k["1s"] > 0  # fat-tailed at the finest scale to begin with
    assert measured.row("aggregational Gaussianity").ok


def test_volatility_clusters_and_decays_slowly(measured):
    low = min(measured.acf_abs[k] for k in facts.CLUSTER_LAGS)
    assert low > facts.CLUSTER_MIN, measured.acf_abs.round(3)


def test_leverage_effect(measured):
    assert measured.row("leverage effect").value < 0


def test_imbalance_explains_a_few_percent(measured):
    lo, hi = facts.IMBALANCE_R2
    assert lo <= measured.row("order-book imbalance signal").value <= hi
    assert measured.ok


# Counter-examples: each a market built to lack one fact; its check must fail.


def _with_log_mid(df: pd.DataFrame, log_mid: np.ndarray) -> pd.DataFrame:
    """``df`` with its level-1 mid replaced (the facts read the mid from bid_px_1 and ask_px_1 only)."""
    out = df.copy()
    mid = 100 * np.exp(log_mid - log_mid[0])
    out["bid_px_1"], out["ask_px_1"] = mid - 0.005, mid + 0.005
    return out


def _log_mid(df: pd.DataFrame) -> np.ndarray:
    return np.log(((df["bid_px_1"] + df["ask_px_1"]) / 2).to_numpy())


def _shuffled(df, rng):  # tick returns in random order: no clustering, no leverage, no signal
    r = np.diff(_log_mid(df))
    return _with_log_mid(df, np.concatenate([[0.0], np.cumsum(rng.permutation(r))]))


def _garch_only(df, rng):  # GARCH(1,1) with the simulator's tick parameters and nothing slower
    alpha, beta = 0.07, 0.9
    eps = rng.standard_normal(len(df))
    var = lfilter([1.0], [1.0, -beta], np.concatenate([[1.0], 1 - alpha - beta + alpha * eps[:-1] ** 2]))
    return _with_log_mid(df, np.cumsum(1e-4 * np.sqrt(var) * eps))


def _mirrored(df, rng):  # every return negated: volatility now follows rises, the inverse of leverage
    return _with_log_mid(df, -_log_mid(df))


def _smoothed(df, rng):  # a mid that trails its moving average over ~3 s: returns autocorrelated for seconds
    return _with_log_mid(df, pd.Series(_log_mid(df)).rolling(60, min_periods=1).mean().to_numpy())


def _cauchy(df, rng):  # Cauchy ticks: a tail index of 1, far heavier than any market's
    return _with_log_mid(df, np.cumsum(1e-5 * rng.standard_cauchy(len(df))))


def _trend_bursts(df, rng):  # Gaussian ticks, but a few minutes trend: 1-minute returns fatter than 1-second ones
    minute = (pd.DatetimeIndex(df["ts"]).asi8 - pd.DatetimeIndex(df["ts"]).asi8[0]) // 60_000_000_000
    trend = rng.choice([-1.0, 1.0], minute.max() + 1) * (rng.random(minute.max() + 1) < 0.03)
    trend[-1] = 0.0  # the session's last minute is cut short: a trend there would be a jump
    ticks_in = np.bincount(minute)
    return _with_log_mid(df, np.cumsum(1e-4 * rng.standard_normal(len(df)) + 5e-2 * trend[minute] / ticks_in[minute]))


def _imbalance_noise(df, rng):  # book sizes from another moment: the imbalance predicts nothing
    out = df.copy()
    cols = [c for c in df.columns if "_sz_" in c]
    out[cols] = df[cols].to_numpy()[rng.permutation(len(df))]
    return out


def _imbalance_oracle(df, rng):  # the book shows the next 100 ms move: an R² no market offers
    out = df.copy()
    imb = np.tanh(facts.forward_move(df) / 1e-4)
    out["bid_sz_1"], out["ask_sz_1"] = 500 * (1 + 0.95 * imb) + 1, 500 * (1 - 0.95 * imb) + 1
    return out


@pytest.mark.parametrize(("market", "fact"), [
    (_shuffled, "volatility clustering, slow decay"),
    (_garch_only, "volatility clustering, slow decay"),
    (_mirrored, "leverage effect"),
    (_smoothed, "no linear autocorrelation"),
    (_cauchy, "heavy tails"),
    (_trend_bursts, "aggregational Gaussianity"),
    (_imbalance_noise, "order-book imbalance signal"),
    (_imbalance_oracle, "order-book imbalance signal"),
])
def test_check_fails_on_a_market_without_the_fact(sessions, market, fact):
    rng = np.random.default_rng(0)
    row = facts.measure([(symbol, market(s, rng)) for symbol, s in sessions]).row(fact)
    assert row.ok is False, row


def test_a_lake_without_the_days_names_the_missing_partition(tmp_path):
    from types import SimpleNamespace

    from pipelines.cli.data_cmds import market_sessions
    from pipelines.data.validation import DataValidationError

    cfg = SimpleNamespace(lake_uri=str(tmp_path), data=SimpleNamespace(source="lake", symbols=["ESZ6"],
                                                                        ticks_per_day=1000, seed=7))
    with pytest.raises(DataValidationError, match=r"market_ticks/date=2026-11-02/symbol=ESZ6.*missing from lake"):
        market_sessions(cfg, DAYS[:2])


def test_too_few_minutes_is_bad_input(sessions):
    from factory_core.errors import BadInput

    with pytest.raises(BadInput, match="one-minute returns"):
        facts.measure(sessions[:4])
