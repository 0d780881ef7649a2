"""Metrics: AUC, accuracy, precision/recall at the alert threshold, and a signal backtest."""

from __future__ import annotations

import numpy as np

TRADING_DAYS = 252
BACKTEST_MARGIN = 0.05
"""The direction backtest trades when P(up) is more than this far from 0.5."""


def sharpe_annualisation(trades: int, ts_ns: np.ndarray) -> float:
    """sqrt(trades per year): the trades per day observed in the window, times 252 days."""
    days = max(len(np.unique(np.asarray(ts_ns) // 86_400_000_000_000)), 1)
    return float(np.sqrt(trades / days * TRADING_DAYS))


def classification_metrics(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, float]:
    """AUC, PR-AUC (average precision), accuracy, precision and recall of P(positive) ``p`` at ``threshold``.

    PR-AUC beside AUC: where positives are rare (card fraud, abnormal moves) AUC is dominated by the easy negatives;
    average precision is what people report there, and its chance level is the positive rate, not 0.5."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    y = np.asarray(y).astype(int)
    p = np.asarray(p, dtype=np.float64)
    finite = bool(np.isfinite(p).all())
    pred = p >= threshold
    tp = int((pred & (y == 1)).sum())
    fp = int((pred & (y == 0)).sum())
    fn = int((~pred & (y == 1)).sum())
    both = finite and len(np.unique(y)) == 2
    auc = float(roc_auc_score(y, p)) if both else float("nan")
    return {
        "auc": auc,
        "pr_auc": float(average_precision_score(y, p)) if both else float("nan"),
        "accuracy": float((pred == (y == 1)).mean()),
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / (tp + fn) if tp + fn else 0.0,
        "positive_rate": float(y.mean()),
        "alert_rate": float(pred.mean()),
        "n": float(len(y)),
        "finite": float(finite),
    }


def backtest(p_up: np.ndarray, fwd_ret_bps: np.ndarray, ts_ns: np.ndarray, margin: float = BACKTEST_MARGIN,
             cost_bps: float = 0.0) -> dict[str, float]:
    """Trade the direction signal over the test window, gross of costs.

    Long when P(up) > 0.5 + margin, short when P(up) < 0.5 - margin, flat otherwise;
    each trade earns the forward mid return over the label horizon minus ``cost_bps``.
    Sharpe is per-trade mean/std annualised by the number of trades per day observed
    in the window (x 252 days). Hit rate is the share of trades with positive P&L.
    """
    p_up = np.asarray(p_up, dtype=np.float64)
    pos = np.where(p_up > 0.5 + margin, 1.0, np.where(p_up < 0.5 - margin, -1.0, 0.0))
    return _pnl_stats(pos, np.asarray(fwd_ret_bps, dtype=np.float64) * pos - cost_bps * (pos != 0), ts_ns)


def _pnl_stats(pos: np.ndarray, pnl_all: np.ndarray, ts_ns: np.ndarray) -> dict[str, float]:
    traded = pos != 0
    pnl = pnl_all[traded]
    if len(pnl) < 2 or pnl.std() == 0:
        return {"sharpe": 0.0, "hit_rate": 0.0, "trades": float(len(pnl)), "pnl_bps": float(pnl.sum())}
    return {
        "sharpe": float(pnl.mean() / pnl.std() * sharpe_annualisation(len(pnl), ts_ns)),
        "hit_rate": float((pnl > 0).mean()),
        "trades": float(len(pnl)),
        "pnl_bps": float(pnl.sum()),
    }


def net_backtest(p_up: np.ndarray, fwd_ret_bps: np.ndarray, ts_ns: np.ndarray, spread_bps: np.ndarray,
                 expected_move_bps: float, fee_bps: float, half_spread_bps: float | None = None) -> dict[str, float]:
    """The direction signal traded net of costs, only where its expected edge clears them.

    A trade crosses the spread on the way in and out (half the quoted spread each way, ``spread_bps`` at entry,
    or a fixed ``half_spread_bps``) and pays ``fee_bps`` each way: its cost is ``2 * (half spread + fee)``.
    The expected edge of a call with probability ``p`` is ``|2p - 1| * expected_move_bps`` (the mean absolute
    move over the horizon, measured by the caller on data before the test window); the signal trades, in its
    direction, only when that edge exceeds the trade's cost. Returns ``net_sharpe``, ``net_hit_rate``,
    ``net_trades``, ``net_pnl_bps`` and ``cost_bps`` (mean cost per trade taken).
    """
    p_up = np.asarray(p_up, dtype=np.float64)
    if expected_move_bps < 0 or fee_bps < 0 or (half_spread_bps is not None and half_spread_bps < 0):
        raise ValueError("net_backtest: expected move, fee and half-spread must be >= 0")
    half = (np.asarray(spread_bps, dtype=np.float64) / 2 if half_spread_bps is None
            else np.full(len(p_up), float(half_spread_bps)))
    cost = 2 * (half + fee_bps)
    edge = np.abs(2 * p_up - 1) * expected_move_bps
    pos = np.where(edge > cost, np.sign(p_up - 0.5), 0.0)
    stats = _pnl_stats(pos, np.asarray(fwd_ret_bps, dtype=np.float64) * pos - cost * (pos != 0), ts_ns)
    taken = pos != 0
    stats["cost_bps"] = float(cost[taken].mean()) if taken.any() else float(np.mean(cost)) if len(cost) else 0.0
    return {f"net_{k}" if k != "cost_bps" else k: v for k, v in stats.items()}
