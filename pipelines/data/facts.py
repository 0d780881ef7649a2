"""Stylized facts of a market's mid returns, each against the range the literature reports.

Works on lake market partitions (one session of one symbol each) and uses only ``ts`` and the book columns, never
the simulator's ``regime`` or ``anomaly``, so it measures a real feed the same way as the embedded world.

Mid returns are log changes of the level-1 mid sampled on a grid (the last mid in each interval, carried forward over
an empty one), per session: no return spans two sessions, and each session's last, usually incomplete, interval is
dropped. Sessions pool: an autocorrelation sums lagged products within sessions (each series centred on its own
mean), and returns are standardised by their symbol's volatility (the standard deviation of all its 1-second returns,
times the square root of the interval in seconds) before the tail and kurtosis are taken, so symbols of different
volatility pool into one sample while each keeps its own days of calm and stress (a scale per session would shrink
the very tails measured: one extreme return inflates its session's standard deviation).

References: R. Cont (2001), "Empirical properties of asset returns: stylized facts and statistical issues",
Quantitative Finance 1, 223-236 (the facts below, numbered as there); S. Vyetrenko et al. (2019), "Get Real: Realism
Metrics for Robust Limit Order Book Market Simulations", arXiv:1912.04941 (the same facts as simulator checks);
M. Gould, J. Bonart (2016), "Queue imbalance as a one-tick-ahead price predictor in a limit order book", Market
Microstructure and Liquidity 2 (the imbalance signal).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from factory_core.errors import BadInput

from .schema import BOOK_LEVELS

ACF_LAGS = range(2, 21)
"""Lags (1-second returns) where |ACF(r)| must stay small; lag 1 is reported, not gated (microstructure)."""
ACF_MAX = 0.05
"""Cont (2001) fact 1, absence of autocorrelations: insignificant beyond the shortest intraday scales. With the
default sample (about 80,000 one-second returns) the standard error of one lag is about 0.004, so 0.05 is a clear
breach, not noise."""
CLUSTER_LAGS = range(1, 51)
CLUSTER_MIN = 0.02
"""Cont (2001) fact 8 (volatility clustering) and fact 5 (slow decay of the ACF of |r|, a power law of exponent
0.2-0.4, positive over days): ACF(|r|, k) > 0.02 at every lag up to 50 seconds."""
HILL_TAIL = 0.05
"""Hill estimator on the largest 5 % of |1-minute returns|."""
MIN_MINUTE_RETURNS = 200
"""Fewest one-minute returns measured: 5 % of them, the Hill estimator's tail, is then 10 or more points."""
HILL_RANGE = (2.0, 6.0)
"""Cont (2001) fact 2, heavy tails: a finite tail index between 2 and 5 in most data sets (the "inverse cubic law"
of Gopikrishnan et al. 1999 is about 3); 6 leaves room for the estimator's noise on ~60 tail points
(its standard error is about alpha / sqrt(k), 0.5 at alpha 3.8, k 59)."""
KURTOSIS_SCALES = ("1s", "5s", "15s", "30s", "1min")
LEVERAGE_LAGS = range(1, 21)
"""Leverage effect over the next 1-20 seconds: past the imbalance signal's memory (under a second) and within the
clustering window, so the mean over these lags measures returns leading volatility, not microstructure."""
IMBALANCE_HORIZON = pd.Timedelta(milliseconds=100)
IMBALANCE_R2 = (0.005, 0.10)
"""The level-1 queue imbalance predicts the next mid move (Gould & Bonart 2016) but explains only a few percent of
its variance at 100 ms: an R² of tens of percent would be a free lunch no liquid market leaves. A band, not a
published number."""


@dataclass(frozen=True)
class Fact:
    """One row of the table: a statistic, the range it must fall in, and whether it does (``None``: stated only)."""

    fact: str
    statistic: str
    value: float
    published: str
    source: str
    ok: bool | None
    n: int
    """Sample size behind the statistic (returns, or ticks for the imbalance)."""


@dataclass
class Facts:
    """The table and the curves behind it (for the plot)."""

    rows: list[Fact]
    sessions: int
    acf_r: np.ndarray = field(repr=False)
    """ACF of 1-second returns at lags 0..50."""
    acf_abs: np.ndarray = field(repr=False)
    """ACF of |1-second returns| at lags 0..50."""
    tail: np.ndarray = field(repr=False)
    """|standardised 1-minute returns|, descending."""
    hill_k: int = 0
    kurtosis: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(r.ok is not False for r in self.rows)

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([asdict(r) for r in self.rows])

    def row(self, fact: str) -> Fact:
        return next(r for r in self.rows if r.fact == fact)


def _mid(df: pd.DataFrame) -> np.ndarray:
    return ((df["bid_px_1"] + df["ask_px_1"]) / 2).to_numpy()


def grid_returns(session: pd.DataFrame, freq: str) -> np.ndarray:
    """Log returns of the last mid in each ``freq`` interval of one session (its last interval dropped).

    Intervals are aligned on the clock (whole seconds, whole minutes); an empty one carries the previous mid.
    """
    ts = pd.DatetimeIndex(session["ts"]).asi8
    step = pd.Timedelta(freq).value
    ends = np.arange(ts[0] // step * step + step, ts[-1] + 1, step)  # ends of the complete intervals
    last = np.searchsorted(ts, ends, side="left") - 1  # the last tick before each end
    return np.diff(np.log(_mid(session)[last]))


def pooled_acf(series: Sequence[np.ndarray], nlags: int) -> np.ndarray:
    """Autocorrelation at lags 0..nlags of several series pooled: lagged products never span two series."""
    num, den = np.zeros(nlags + 1), 0.0
    for x in series:
        x = x - x.mean()
        n = len(x)
        full = np.correlate(x, x, mode="full")[n - 1:]
        m = min(nlags + 1, n)
        num[:m] += full[:m]
        den += full[0]
    return num / den


def pooled_cross(series: Sequence[np.ndarray], other: Sequence[np.ndarray], lags: Iterable[int]) -> np.ndarray:
    """corr(x_t, y_{t+k}) for each k, pooled over sessions like :func:`pooled_acf`."""
    lags = list(lags)
    num, sx, sy = np.zeros(len(lags)), 0.0, 0.0
    for x, y in zip(series, other):
        x, y = x - x.mean(), y - y.mean()
        sx, sy = sx + x @ x, sy + y @ y
        for i, k in enumerate(lags):
            num[i] += x[:-k] @ y[k:]
    return num / np.sqrt(sx * sy)


def hill(x: np.ndarray, k: int) -> float:
    """Hill estimator of the tail index from the ``k`` largest of ``x`` (positive)."""
    top = np.sort(x)[::-1][: k + 1]
    return float(1.0 / np.mean(np.log(top[:k] / top[k])))


def imbalance(df: pd.DataFrame, levels: int = 1) -> np.ndarray:
    """Queue imbalance over the first ``levels`` levels, in (-1, 1)."""
    bid = sum(df[f"bid_sz_{lvl}"].to_numpy(float) for lvl in range(1, levels + 1))
    ask = sum(df[f"ask_sz_{lvl}"].to_numpy(float) for lvl in range(1, levels + 1))
    return (bid - ask) / (bid + ask)


def forward_move(df: pd.DataFrame, horizon: pd.Timedelta = IMBALANCE_HORIZON) -> np.ndarray:
    """Log change of the mid from each tick to the last tick at or before ``horizon`` later (within the session)."""
    ts = pd.DatetimeIndex(df["ts"]).asi8
    m = np.log(_mid(df))
    ahead = np.searchsorted(ts, ts + horizon.value, side="right") - 1
    return m[ahead] - m


def measure(sessions: Iterable[tuple[str, pd.DataFrame]]) -> Facts:
    """The stylized facts of ``sessions``, ``(symbol, market partition)`` pairs (one session each), pooled."""
    sessions = [(symbol, s) for symbol, s in sessions if len(s)]
    if not sessions:
        raise BadInput("no market ticks to measure")
    r1 = [grid_returns(s, "1s") for _, s in sessions]
    by_symbol: dict[str, list[np.ndarray]] = {}
    for (symbol, _), r in zip(sessions, r1):
        by_symbol.setdefault(symbol, []).append(r)
    sd = {symbol: np.concatenate(rs).std() for symbol, rs in by_symbol.items()}
    vol = [sd[symbol] for symbol, _ in sessions]
    std = {f: [grid_returns(s, f) / (v * np.sqrt(pd.Timedelta(f) / pd.Timedelta("1s")))
               for (_, s), v in zip(sessions, vol)] for f in KURTOSIS_SCALES}
    r1m = np.concatenate(std["1min"])
    n1, n1m = sum(map(len, r1)), len(r1m)
    if n1m < MIN_MINUTE_RETURNS:
        raise BadInput(f"{len(sessions)} session(s) give {n1m} one-minute returns, fewer than the "
                       f"{MIN_MINUTE_RETURNS} the tail estimate needs: pool more days or symbols")
    nlags = max(CLUSTER_LAGS)
    acf_r = pooled_acf(r1, nlags)
    acf_abs = pooled_acf([np.abs(r) for r in r1], nlags)
    kurt = {f: float(stats.kurtosis(np.concatenate(std[f]))) for f in KURTOSIS_SCALES}
    tail = np.sort(np.abs(r1m))[::-1]
    k = int(HILL_TAIL * n1m)
    alpha = hill(tail, k)
    lev = pooled_cross(r1, [np.abs(r) for r in r1], LEVERAGE_LAGS)
    x = np.concatenate([imbalance(s, 1) for _, s in sessions])
    y = np.concatenate([forward_move(s) for _, s in sessions])
    r2 = float(stats.linregress(x, y).rvalue ** 2)
    x5 = np.concatenate([imbalance(s, BOOK_LEVELS) for _, s in sessions])
    r2_5 = float(stats.linregress(x5, y).rvalue ** 2)

    worst = max(ACF_LAGS, key=lambda k_: abs(acf_r[k_]))
    weakest = min(CLUSTER_LAGS, key=lambda k_: acf_abs[k_])
    first, last = KURTOSIS_SCALES[0], KURTOSIS_SCALES[-1]
    lo, hi = IMBALANCE_R2
    rows = [
        Fact("autocorrelation, lag 1", "ACF(r, 1), 1-s returns", float(acf_r[1]), "stated, not gated: bid-ask "
             "bounce and book dynamics", "Cont 2001 (1)", None, n1),
        Fact("no linear autocorrelation", f"max |ACF(r, k)|, k=2..20 s (at k={worst})", float(abs(acf_r[worst])),
             f"< {ACF_MAX}", "Cont 2001 (1)", bool(abs(acf_r[worst]) < ACF_MAX), n1),
        Fact("heavy tails", f"Hill index, top {HILL_TAIL:.0%} of |1-min r| (k={k})", alpha,
             f"{HILL_RANGE[0]:g}-{HILL_RANGE[1]:g} (2-5 in most markets)", "Cont 2001 (2); Gopikrishnan et al. 1999",
             bool(HILL_RANGE[0] <= alpha <= HILL_RANGE[1]), n1m),
        Fact("aggregational Gaussianity", f"excess kurtosis {first} → {last}", kurt[last],
             f"< {kurt[first]:.2f} (its value at {first})", "Cont 2001 (4)", bool(kurt[last] < kurt[first]), n1m),
        Fact("volatility clustering, slow decay", f"min ACF(|r|, k), k=1..50 s (at k={weakest})",
             float(acf_abs[weakest]), f"> {CLUSTER_MIN} at every lag", "Cont 2001 (5), (8)",
             bool(acf_abs[weakest] > CLUSTER_MIN), n1),
        Fact("leverage effect", f"mean corr(r_t, |r_t+k|), k={min(LEVERAGE_LAGS)}..{max(LEVERAGE_LAGS)} s",
             float(lev.mean()), "< 0", "Cont 2001 (9); Bouchaud et al. 2001", bool(lev.mean() < 0), n1),
        Fact("order-book imbalance signal", "R², L1 imbalance → next 100 ms mid move", r2,
             f"{lo:.1%}-{hi:.0%}", "Gould & Bonart 2016 (band: see facts.py)", bool(lo <= r2 <= hi), len(y)),
        Fact("order-book imbalance signal", "R², L5 imbalance → next 100 ms mid move", r2_5,
             "stated, not gated", "Gould & Bonart 2016", None, len(y)),
    ]
    return Facts(rows=rows, sessions=len(sessions), acf_r=acf_r, acf_abs=acf_abs, tail=tail, hill_k=k,
                 kurtosis=kurt)


def plot(facts: Facts, dest) -> None:
    """ACF of r and |r| with the thresholds, a log-log tail plot of 1-minute |r|, excess kurtosis by scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b, c) = plt.subplots(1, 3, figsize=(13, 3.6))
    lags = np.arange(1, len(facts.acf_r))
    a.plot(lags, facts.acf_r[1:], "o-", ms=3, label="ACF(r)")
    a.plot(lags, facts.acf_abs[1:], "s-", ms=3, label="ACF(|r|)")
    a.axhline(CLUSTER_MIN, color="tab:orange", ls="--", lw=1, label=f"|r| floor {CLUSTER_MIN}")
    for s in (-1, 1):
        a.hlines(s * ACF_MAX, min(ACF_LAGS), max(ACF_LAGS), color="tab:blue", ls=":", lw=1,
                 label=f"r band ±{ACF_MAX}" if s > 0 else None)
    a.axhline(0, color="k", lw=0.5)
    a.set_xlabel("lag (seconds)")
    a.set_title("autocorrelation, 1-s mid returns", fontsize=10)
    a.legend(fontsize=7)
    rank = np.arange(1, len(facts.tail) + 1) / len(facts.tail)
    b.loglog(facts.tail, rank, ".", ms=3, label="|1-min r| / σ")
    alpha = facts.row("heavy tails").value
    x0, p0 = facts.tail[facts.hill_k], (facts.hill_k + 1) / len(facts.tail)
    xs = np.geomspace(x0, facts.tail[0], 10)
    b.loglog(xs, p0 * (xs / x0) ** -alpha, "r-", label=f"Hill α = {alpha:.2f}")
    b.set_xlabel("|r| (σ of its symbol)")
    b.set_ylabel("P(|R| ≥ |r|)")
    b.set_title("tail of 1-minute returns", fontsize=10)
    b.legend(fontsize=7)
    scales = list(facts.kurtosis)
    c.plot(range(len(scales)), [facts.kurtosis[s] for s in scales], "o-")
    c.set_xticks(range(len(scales)), scales)
    c.axhline(0, color="k", lw=0.5)
    c.set_xlabel("sampling interval")
    c.set_title("excess kurtosis by scale", fontsize=10)
    fig.suptitle(f"stylized facts · {facts.sessions} sessions", fontsize=10)
    fig.tight_layout()
    fig.savefig(dest, dpi=80)
    plt.close(fig)
