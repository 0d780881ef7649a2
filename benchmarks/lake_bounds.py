"""Measure, on the simulator, what the lake's scale checks bound: ``python benchmarks/lake_bounds.py``.

Prints, over consecutive simulated days of several symbols and seeds (a regime-shifted day planted among them, as
``factory replay`` writes one), the largest one-tick mid move and the day-to-day ratios that
:func:`pipelines.data.validation.validate_history` checks, each with its margin to the bound in force.
"""

from __future__ import annotations

import argparse
import datetime as dt

import numpy as np
import pyarrow as pa

from pipelines.data.schema import MARKET_DATASET, TRANSACTIONS_DATASET, TRANSACTIONS_SYMBOL
from pipelines.data.simulator import Shift, simulate_market, simulate_transactions
from pipelines.data.validation import MAX_DAY_RATIO, MAX_TICK_LOG_RETURN, reference_of


def measure(days: int, seeds: list[int], symbols: list[str], ticks: int, txns: int,
            shifted: bool = True) -> dict[str, float]:
    start = dt.date(2026, 1, 5)
    dates = [(start + dt.timedelta(days=k)).isoformat() for k in range(days)]
    shifts = {dates[days // 3]: Shift(), dates[2 * days // 3]: Shift(start=0.0)} if shifted else {}  # as replay
    worst_tick, mid_lo, mid_hi, size_lo, size_hi, amount_lo, amount_hi = 0.0, np.inf, 0.0, np.inf, 0.0, np.inf, 0.0
    for seed in seeds:
        for symbol in symbols:
            refs, mids = [], []
            for d in dates:
                df = simulate_market(d, symbol, ticks, seed, shift=shifts.get(d))
                mid = ((df["bid_px_1"] + df["ask_px_1"]) / 2).to_numpy()
                worst_tick = max(worst_tick, float(np.abs(np.diff(np.log(mid))).max()))
                refs.append(reference_of(pa.Table.from_pandas(df), MARKET_DATASET, d))
                mids.append(float(np.median(mid)))
            for prev, mid in zip(refs, mids[1:]):
                mid_lo, mid_hi = min(mid_lo, mid / prev.close_mid), max(mid_hi, mid / prev.close_mid)
            for a, b in zip(refs, refs[1:]):
                r = [b.median[c] / a.median[c] for c in a.median]
                size_lo, size_hi = min(size_lo, *r), max(size_hi, *r)
        refs = [reference_of(pa.Table.from_pandas(simulate_transactions(d, TRANSACTIONS_SYMBOL, txns, seed,
                                                                        shift=shifts.get(d))), TRANSACTIONS_DATASET, d)
                for d in dates]
        for a, b in zip(refs, refs[1:]):
            r = [b.median["amount"] / a.median["amount"], b.q99["amount"] / a.q99["amount"]]
            amount_lo, amount_hi = min(amount_lo, *r), max(amount_hi, *r)
    return {"max |tick log return|": worst_tick, "median mid / previous close, min": mid_lo,
            "median mid / previous close, max": mid_hi, "size median / previous, min": size_lo,
            "size median / previous, max": size_hi, "amount median, q99 / previous, min": amount_lo,
            "amount median, q99 / previous, max": amount_hi}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--days", type=int, default=20)
    ap.add_argument("--seeds", type=int, nargs="+", default=list(range(1, 11)))
    ap.add_argument("--symbols", nargs="+", default=["ESZ6", "NQZ6", "AAPL", "MSFT"])
    ap.add_argument("--ticks", type=int, default=20_000)
    ap.add_argument("--transactions", type=int, default=40_000)
    ap.add_argument("--no-shift", action="store_true", help="no regime-shifted days")
    a = ap.parse_args(argv)
    m = measure(a.days, a.seeds, a.symbols, a.ticks, a.transactions, shifted=not a.no_shift)
    print(f"{a.days} consecutive days x {len(a.seeds)} seeds x {len(a.symbols)} symbols ({a.ticks} ticks/day), "
          f"{a.days} x {len(a.seeds)} transaction days ({a.transactions}/day)"
          f"{'' if a.no_shift else '; two regime-shifted days among them'}")
    for name, value in m.items():
        if name.startswith("max |tick"):
            margin = MAX_TICK_LOG_RETURN / value
            bound = f"bound {MAX_TICK_LOG_RETURN}"
        else:
            margin = MAX_DAY_RATIO / value if value >= 1 else value * MAX_DAY_RATIO
            bound = f"bound {MAX_DAY_RATIO:g}x either way"
        print(f"  {name:38s} {value:10.4g}   {bound:28s} margin {margin:6.1f}")


if __name__ == "__main__":
    main()
