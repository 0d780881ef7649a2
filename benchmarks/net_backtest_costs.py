"""What price_direction's backtest earns as trading costs rise: ``python benchmarks/net_backtest_costs.py HOME DATE``.

Reads a finished night's price_direction test split and its FP32 PyTorch outputs (``runs/<date>/price_direction``:
``train/splits.npz``, ``accuracy/reference.npy``) and prints the net backtest (:func:`pipelines.evaluate.net_backtest`)
at the quoted spread and at fixed half-spreads, each with the configured fee and with no fee, beside the gross one:
trades taken, hit rate, P&L per trade and annualised Sharpe. The point is the break-even cost: the expected move per
100 ms in the embedded market is several times a liquid future's relative to its spread, so the quoted-spread figure
overstates what a taker would earn on a real book (docs/data.md, "The net backtest and its costs").
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from factory_core.config import load_config
from factory_core.families import Family
from pipelines.datasets import load_splits
from pipelines.evaluate import backtest, net_backtest
from pipelines.features import MARKET_FEATURES
from pipelines.models import positive_probability


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("home", type=Path, help="FACTORY_HOME of a finished night")
    ap.add_argument("date")
    ap.add_argument("--half-spreads", default="0.1,0.25,0.5,1.0", help="fixed half-spreads to try, bp")
    args = ap.parse_args(argv)
    run = args.home / "runs" / args.date / "price_direction"
    splits = load_splits(run / "train" / "splits.npz")
    test, val = splits["test"], splits["val"]
    p = np.asarray(positive_probability(Family.PRICE_DIRECTION, np.load(run / "accuracy" / "reference.npy")))
    spread = test.x[:, -1, MARKET_FEATURES.index("spread_bps")]
    move = float(np.nanmean(np.abs(val.fwd_ret_bps)))
    fee = load_config(env={}).backtest.fee_bps
    fwd = np.asarray(test.fwd_ret_bps, dtype=np.float64)
    print(f"{args.date}: {len(test)} test windows; mean |100 ms move| {move:.3f} bp (validation), "
          f"quoted spread median {np.median(spread):.3f} bp, |move| / spread {move / np.median(spread):.1f}")
    print("\n| cost per trade (both ways) | trades | hit rate | P&L per trade (bp) | Sharpe |")
    print("|---|---|---|---|---|")
    g = backtest(p, fwd, test.ts)
    print(f"| gross (no cost) | {int(g['trades'])} | {g['hit_rate']:.3f} | "
          f"{g['pnl_bps'] / max(g['trades'], 1):+.3f} | {g['sharpe']:.1f} |")
    rows = [(None, fee), (None, 0.0)] + [(float(h), f) for h in args.half_spreads.split(",") for f in (fee, 0.0)]
    for half, f in rows:
        n = net_backtest(p, fwd, test.ts, spread, move, fee_bps=f, half_spread_bps=half)
        what = f"quoted half-spread + fee {f} bp" if half is None else f"half-spread {half} bp + fee {f} bp"
        trades = int(n["net_trades"])
        print(f"| {what} (mean {n['cost_bps']:.2f} bp) | {trades} | {n['net_hit_rate']:.3f} | "
              f"{n['net_pnl_bps'] / max(trades, 1):+.3f} | {n['net_sharpe']:.1f} |")


if __name__ == "__main__":
    main()
