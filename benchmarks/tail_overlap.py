"""Measure how the data-defined tail overlaps the simulator's ground truth: ``python benchmarks/tail_overlap.py``.

The gates and INT8 calibration no longer read the lake's optional ``anomaly`` (a real feed has none): the tail is
``flash`` (:func:`pipelines.features.market_features`, from prices and sizes) plus the positives or the top 5 %
|forward return| (:func:`pipelines.gates.tail_mask`). This prints, over simulated days, the precision and recall of
``flash`` against the planted ``anomaly`` per tick and per planted event, and of each market family's new tail
against the tail the ground truth gave (``anomaly`` at the window's end instead of ``flash``), on every window.
"""

from __future__ import annotations

import argparse
import datetime as dt
from dataclasses import replace

import numpy as np
import pandas as pd

from factory_core.config import load_config
from factory_core.families import Family
from pipelines.data.simulator import simulate_market
from pipelines.datasets import _market_windows
from pipelines.features import FLASH_TICKS, market_features
from pipelines.gates import tail_mask


def _pr(flag: np.ndarray, truth: np.ndarray) -> str:
    tp = int((flag & truth).sum())
    return (f"precision {tp / max(int(flag.sum()), 1):.3f}  recall {tp / max(int(truth.sum()), 1):.3f}  "
            f"(flagged {flag.mean():.2%}, truth {truth.mean():.2%})")


def measure(days: int, seeds: list[int], symbols: list[str], ticks: int, profile: str) -> None:
    cfg = load_config(profile=profile, env={})
    start = dt.date(2026, 1, 5)
    feats, ticks_flash, ticks_truth, ticks_near, events, caught = [], [], [], [], 0, 0
    for seed in seeds:
        for symbol in symbols:
            for k in range(days):
                date = (start + dt.timedelta(days=k)).isoformat()
                raw = simulate_market(date, symbol, ticks, seed)
                f = market_features(raw.drop(columns=["regime", "anomaly"]), cfg.features)
                truth = raw.set_index("ts")["anomaly"]
                f["anomaly"] = truth.loc[f["ts"]].to_numpy()
                f.insert(0, "symbol", f"{symbol}-{seed}")
                f.insert(0, "date", date)
                feats.append(f)
                flash, anom = f["flash"].to_numpy(bool), f["anomaly"].to_numpy(bool)
                ticks_flash.append(flash)
                ticks_truth.append(anom)
                # lenient: a flash counts if a planted anomaly tick lies in its FLASH_TICKS look-back
                ticks_near.append(pd.Series(anom).astype(float).rolling(FLASH_TICKS, min_periods=1).max()
                                  .to_numpy() > 0)
                starts = np.flatnonzero(np.diff(np.concatenate([[0], anom.astype(int)])) == 1)
                ends = np.flatnonzero(np.diff(np.concatenate([anom.astype(int), [0]])) == -1)
                for s, e in zip(starts, ends):
                    events += 1
                    caught += bool(flash[s:e + FLASH_TICKS].any())
    flash, truth, near = (np.concatenate(a) for a in (ticks_flash, ticks_truth, ticks_near))
    print(f"{len(flash)} ticks after warm-up, {len(feats)} sessions ({days} days x {len(symbols)} symbols x "
          f"{len(seeds)} seeds of {ticks} ticks), FLASH_TICKS={FLASH_TICKS}, alert_sigma={cfg.features.alert_sigma}")
    print(f"per tick, flash vs anomaly:                {_pr(flash, truth)}")
    tp_near = int((flash & near).sum())
    print(f"per tick, lenient (anomaly in look-back):  precision {tp_near / max(int(flash.sum()), 1):.3f}")
    print(f"per planted event (flash within it or {FLASH_TICKS} ticks after): recall {caught / events:.3f} "
          f"({caught}/{events})")
    market = pd.concat(feats, ignore_index=True)
    for family in (Family.MARKET_ALERT, Family.PRICE_DIRECTION):
        windows, _ = _market_windows(market, family, cfg)
        truth_at_end = np.concatenate([s["anomaly"].to_numpy(bool)[np.arange(cfg.families[family].window - 1,
                                                                              len(s), cfg.families[family].stride)]
                                       for _, s in market.groupby(["date", "symbol"], sort=True)])
        new = tail_mask(family, windows)
        old = tail_mask(family, replace(windows, flash=truth_at_end))
        print(f"{family} ({len(windows)} windows): flash vs anomaly at the window end: "
              f"{_pr(windows.flash, truth_at_end)}")
        print(f"{family}: tail (flash) vs tail (anomaly): {_pr(new, old)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--days", type=int, default=5)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    ap.add_argument("--symbols", nargs="+", default=["ESZ6", "NQZ6"])
    ap.add_argument("--ticks", type=int, default=20_000)
    ap.add_argument("--profile", default="default", choices=["default", "smoke"])
    a = ap.parse_args()
    measure(a.days, a.seeds, a.symbols, a.ticks, a.profile)


if __name__ == "__main__":
    main()
