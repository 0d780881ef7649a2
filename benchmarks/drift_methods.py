"""How often each drift stattest alarms on ordinary days vs shifted days, against the champion's reference.

    factory nightly --profile smoke --date 2026-11-22       # a champion with a reference window
    python benchmarks/drift_methods.py market_alert [--profile smoke] [--days 8]
    python benchmarks/drift_methods.py market_alert --profile smoke --reference runs/D/market_alert/reference/reference.parquet --ticks-per-day 20000

Current windows: ``--days`` unshifted simulated days after the reference, and 3 days with a
regime shift from the start of the session (features only; the prediction column is held
constant so only feature drift counts). Prints the share of drifted feature columns per
(day, method) and how many days each method would alarm on at the family's ``drift_share``, and, for the
configured stattest, each day's most drifted column against ``severe_score`` (the rule that one column far out of
range is drift on its own).
Days are simulated into a scratch lake, not the factory's. ``--reference`` reads a reference window from a run
folder instead of the registry's champion; ``--ticks-per-day`` sets the simulated day's length, and so the span of
each current window (the market's slowest volatility component has a half-life of 6,000 ticks, 5 minutes: a window
much shorter than that is one volatility state).
"""

from __future__ import annotations

import argparse
import datetime as dt
import tempfile

import pandas as pd

METHODS = [(None, None), ("ks", 0.05), ("wasserstein", 0.1), ("psi", 0.1), ("psi", 0.2), ("jensenshannon", 0.1)]


def main() -> None:
    from factory_core.config import load_config
    from model_registry.registry import Registry
    from monitoring.drift import PREDICTION, compare, feature_names, load_reference, monitored_columns, to_columns
    from pipelines.data.simulator import Shift
    from pipelines.replay import requests_for_day

    ap = argparse.ArgumentParser()
    ap.add_argument("family")
    ap.add_argument("--profile", default=None)
    ap.add_argument("--target", default="cpu")
    ap.add_argument("--days", type=int, default=8)
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--reference", default=None, help="a reference.parquet (default: the champion's)")
    ap.add_argument("--ticks-per-day", type=int, default=None)
    ap.add_argument("--start", default="2030-01-01", help="first unshifted day (the shifted ones follow 100 days on)")
    ap.add_argument("--columns", action="store_true", help="print each unshifted day's drifted columns (PSI 0.2)")
    args = ap.parse_args()
    cfg = load_config(profile=args.profile)
    if args.reference:
        reference, source = pd.read_parquet(args.reference), args.reference
    else:
        champion = Registry(cfg.tracking_uri).resolve(args.family, args.target, "champion")
        reference, source = load_reference(cfg, champion.run_id), f"champion v{champion.version}"
    dcfg = cfg.monitoring.drift
    names, share = monitored_columns(args.family, dcfg), dcfg.share_for(args.family)
    data = {"source": "simulator"} | ({"ticks_per_day": args.ticks_per_day} if args.ticks_per_day else {})
    scratch = load_config(profile=args.profile, overrides={"home": tempfile.mkdtemp(prefix="drift-methods-"),
                                                           "data": data})
    start = dt.date.fromisoformat(args.start)
    days = [((start + dt.timedelta(days=k)).isoformat(), None) for k in range(args.days)]
    days += [((start + dt.timedelta(days=100 + k)).isoformat(), Shift(start=0.0)) for k in range(3)]
    ref = reference.copy()
    ref[PREDICTION] = 0.5
    rows, worst = [], []
    for day, shift in days:
        x, _, _ = requests_for_day(scratch, args.family, day, shift, args.rows)
        cur = to_columns(x, feature_names(args.family))
        cur[PREDICTION] = 0.5
        for method, threshold in METHODS:
            configured = (method, threshold) == (dcfg.method, dcfg.threshold) and dcfg.severe_score is not None
            figures, cols = compare(ref, cur, names, share, method, threshold,
                                    dcfg.severe_score if configured else None)
            rows.append({"shifted": shift is not None, "day": day, "method": f"{method or 'evidently default'} "
                         f"({threshold or 'default'})", "share": figures["drift_share"],
                         "alarm": figures["drift_share"] >= share})
            if configured:  # the factory's own rule: the share, or one column at severe_score
                top = max(figures["columns"], key=lambda c: c.score)
                worst.append({"day": day, "shifted": shift is not None, "share": figures["drift_share"],
                              "top column": top.column, "top score": round(top.score, 2)})
                rows.append({**rows[-1], "method": f"{method} ({threshold}) + severe {dcfg.severe_score}",
                             "alarm": figures["dataset_drift"]})
                if args.columns:
                    print(day, "shifted" if shift else "unshifted", figures["drift_share"],
                          {c.column: round(c.score, 2) for c in figures["columns"] if c.drifted})
    df = pd.DataFrame(rows)
    pd.set_option("display.width", 200)
    print(f"{args.family}: reference {len(reference)} rows ({source}); current {args.rows} "
          f"rows per day; drift_share {share}\n")
    print(df.pivot(index=["shifted", "day"], columns="method", values="share").round(2).to_string())
    if worst:
        print(f"\neach day's most drifted column ({dcfg.method}); severe_score {dcfg.severe_score}:")
        print(pd.DataFrame(worst).to_string(index=False))
    alarms = df.groupby(["method", "shifted"])["alarm"].agg(["sum", "count"]).unstack("shifted")
    print("\nalarms (days alarmed / days):")
    for method, r in alarms.iterrows():
        print(f"  {method:32} unshifted {int(r[('sum', False)])}/{int(r[('count', False)])}   "
              f"shifted {int(r[('sum', True)])}/{int(r[('count', True)])}")


if __name__ == "__main__":
    main()
