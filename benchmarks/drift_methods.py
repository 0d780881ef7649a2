"""How often each drift stattest alarms on ordinary days vs shifted days, against the champion's reference.

    factory nightly --profile smoke --date 2026-11-22       # a champion with a reference window
    python benchmarks/drift_methods.py market_alert [--profile smoke] [--days 8]

Current windows: ``--days`` unshifted simulated days after the reference, and 3 days with a
regime shift from the start of the session (features only; the prediction column is held
constant so only feature drift counts). Prints the share of drifted feature columns per
(day, method) and how many days each method would alarm on at the family's ``drift_share``.
Days are simulated into a scratch lake, not the factory's.
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
    args = ap.parse_args()
    cfg = load_config(profile=args.profile)
    champion = Registry(cfg.tracking_uri).resolve(args.family, args.target, "champion")
    reference = load_reference(cfg, champion.run_id)
    dcfg = cfg.monitoring.drift
    names, share = monitored_columns(args.family, dcfg), dcfg.share_for(args.family)
    scratch = load_config(profile=args.profile, overrides={"home": tempfile.mkdtemp(prefix="drift-methods-"),
                                                           "data": {"source": "simulator"}})
    start = dt.date(2030, 1, 1)
    days = [((start + dt.timedelta(days=k)).isoformat(), None) for k in range(args.days)]
    days += [((start + dt.timedelta(days=100 + k)).isoformat(), Shift(start=0.0)) for k in range(3)]
    ref = reference.copy()
    ref[PREDICTION] = 0.5
    rows = []
    for day, shift in days:
        x, _, _ = requests_for_day(scratch, args.family, day, shift, args.rows)
        cur = to_columns(x, feature_names(args.family))
        cur[PREDICTION] = 0.5
        for method, threshold in METHODS:
            figures, _ = compare(ref, cur, names, share, method, threshold)
            rows.append({"shifted": shift is not None, "day": day, "method": f"{method or 'evidently default'} "
                         f"({threshold or 'default'})", "share": figures["drift_share"],
                         "alarm": figures["dataset_drift"]})
    df = pd.DataFrame(rows)
    pd.set_option("display.width", 200)
    print(f"{args.family}: reference {len(reference)} rows (champion v{champion.version}); current {args.rows} "
          f"rows per day; drift_share {share}\n")
    print(df.pivot(index=["shifted", "day"], columns="method", values="share").round(2).to_string())
    alarms = df.groupby(["method", "shifted"])["alarm"].agg(["sum", "count"]).unstack("shifted")
    print("\nalarms (days alarmed / days):")
    for method, r in alarms.iterrows():
        print(f"  {method:32} unshifted {int(r[('sum', False)])}/{int(r[('count', False)])}   "
              f"shifted {int(r[('sum', True)])}/{int(r[('count', True)])}")


if __name__ == "__main__":
    main()
