"""The statistics gates decide on: agreement of two models' outputs, paired bootstrap intervals of metric
differences, and latency intervals over interleaved rounds.

Pure numpy (and scipy's ranks and t quantiles), so every figure is exact and testable on synthetic outputs.
A decision is ``pass``, ``fail`` or ``undecided``; ``undecided`` always says why (which sample was too
small), and never counts as a pass or a fail by itself: the caller's policy decides what it means.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

from .evaluate import BACKTEST_MARGIN


@dataclass(frozen=True)
class Agreement:
    """How far a candidate's P(positive) is from the reference's on the same windows."""

    n: int
    mean_abs: float
    p99_abs: float
    max_abs: float
    bias: float
    """Mean signed difference (candidate − reference): a calibration shift, e.g. a constant offset."""
    flips: int
    """Decisions at the threshold that differ from the reference's."""
    new_alerts: int
    """Of the flips, windows the candidate flags and the reference does not."""
    flip_rate: float
    nonfinite: int

    def to_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


def agreement(p_ref: np.ndarray, p: np.ndarray, threshold: float) -> Agreement:
    """Agreement of candidate ``p`` with reference ``p_ref`` (both P(positive), same windows)."""
    p_ref = np.asarray(p_ref, dtype=np.float64).ravel()
    p = np.asarray(p, dtype=np.float64).ravel()
    if p.shape != p_ref.shape:
        raise ValueError(f"agreement: candidate has {p.size} outputs, the reference {p_ref.size}")
    finite = np.isfinite(p)
    nonfinite = int((~finite).sum())
    if not p.size or not finite.any():
        nan = float("nan")
        return Agreement(int(p.size), nan, nan, nan, nan, 0, 0, 0.0, nonfinite)
    d = p[finite] - p_ref[finite]
    a = np.abs(d)
    ref_on, got_on = p_ref[finite] >= threshold, p[finite] >= threshold
    flips = int((ref_on != got_on).sum())
    return Agreement(n=int(p.size), mean_abs=float(a.mean()), p99_abs=float(np.quantile(a, 0.99)),
                     max_abs=float(a.max()), bias=float(d.mean()), flips=flips,
                     new_alerts=int((got_on & ~ref_on).sum()), flip_rate=flips / int(finite.sum()),
                     nonfinite=nonfinite)


@dataclass(frozen=True)
class Interval:
    """A statistic's point value on the sample and its bootstrap interval at ``level``."""

    point: float
    lo: float
    hi: float
    level: float
    resamples: int


def paired_bootstrap(stat: Callable[[np.ndarray], np.ndarray], n: int, *, resamples: int = 1000,
                     level: float = 0.95, seed: int = 0, chunk: int = 100) -> Interval:
    """Percentile bootstrap of a paired statistic.

    ``stat(idx)`` gets index rows ``idx`` of shape ``[B, n]`` (each a resample of the same ``n``
    windows, so both models are always scored on the same draws) and returns ``B`` values. Replicates
    where the statistic is undefined (NaN: a resample without positives) are dropped.
    """
    point = float(stat(np.arange(n)[None, :])[0])
    rng = np.random.default_rng(seed)
    vals = []
    for start in range(0, resamples, chunk):
        idx = rng.integers(0, n, size=(min(chunk, resamples - start), n))
        vals.append(np.asarray(stat(idx), dtype=np.float64))
    v = np.concatenate(vals)
    v = v[np.isfinite(v)]
    if not v.size:
        return Interval(point, float("nan"), float("nan"), level, 0)
    lo, hi = np.quantile(v, [(1 - level) / 2, (1 + level) / 2])
    return Interval(point, float(lo), float(hi), level, int(v.size))


def auc_rows(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """ROC AUC of each row of ``p`` against the matching row of labels ``y`` (Mann–Whitney, ties averaged)."""
    from scipy.stats import rankdata

    y = np.asarray(y, dtype=bool)
    ranks = rankdata(p, axis=1)
    n1 = y.sum(axis=1)
    n0 = y.shape[1] - n1
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((ranks * y).sum(axis=1) - n1 * (n1 + 1) / 2) / (n1 * n0)


def _ratio_rows(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def metric_rows(name: str, y: np.ndarray, p: np.ndarray, threshold: float, idx: np.ndarray,
                ret: np.ndarray | None = None, margin: float = BACKTEST_MARGIN, annualise: float = 1.0) -> np.ndarray:
    """Metric ``name`` of outputs ``p`` on each resample row ``idx`` (NaN where it is undefined).

    ``auc``; ``accuracy``, ``precision``, ``recall`` at ``threshold``; ``brier``; ``sharpe`` of the
    direction backtest (long above 0.5 + ``margin``, short below 0.5 − ``margin``, forward returns
    ``ret``, per-trade Sharpe times ``annualise``).
    """
    yy, pp = np.asarray(y)[idx] > 0.5, np.asarray(p, dtype=np.float64)[idx]
    if name == "auc":
        return auc_rows(yy, pp)
    if name == "brier":
        return ((pp - yy) ** 2).mean(axis=1)
    pred = pp >= threshold
    if name == "accuracy":
        return (pred == yy).mean(axis=1)
    tp = (pred & yy).sum(axis=1)
    if name == "precision":
        return _ratio_rows(tp, pred.sum(axis=1))
    if name == "recall":
        return _ratio_rows(tp, yy.sum(axis=1))
    if name == "sharpe":
        pos = np.where(pp > 0.5 + margin, 1.0, np.where(pp < 0.5 - margin, -1.0, 0.0))
        pnl = pos * np.asarray(ret, dtype=np.float64)[idx]
        k = (pos != 0).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = pnl.sum(axis=1) / k
            var = ((pnl - mean[:, None]) ** 2 * (pos != 0)).sum(axis=1) / k
            return np.where((k >= 2) & (var > 0), mean / np.sqrt(var) * annualise, np.nan)
    raise ValueError(f"unknown metric {name!r}")


@dataclass(frozen=True)
class RoundStats:
    """Latency of one runner over interleaved rounds: per-round p50/p99 (ms)."""

    p50: np.ndarray
    p99: np.ndarray


def round_stats(rounds_ns: list[np.ndarray]) -> RoundStats:
    ms = [np.asarray(r, dtype=np.float64) / 1e6 for r in rounds_ns]
    return RoundStats(p50=np.array([np.median(r) for r in ms]), p99=np.array([np.quantile(r, 0.99) for r in ms]))


def log_mean_interval(values: np.ndarray, level: float = 0.95) -> Interval:
    """Geometric mean of positive ``values`` (one per round) with a t interval on their logs.

    Rounds are the independent units: each interleaved round sees the same host state for every
    runner, so round-to-round load changes widen the interval instead of biasing one runner.
    """
    from scipy.stats import t

    v = np.log(np.asarray(values, dtype=np.float64))
    k = v.size
    m = float(v.mean())
    if k < 2:
        return Interval(float(np.exp(m)), float("nan"), float("nan"), level, k)
    half = float(t.ppf((1 + level) / 2, k - 1) * v.std(ddof=1) / np.sqrt(k))
    return Interval(float(np.exp(m)), float(np.exp(m - half)), float(np.exp(m + half)), level, k)
