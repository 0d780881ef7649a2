"""How close the label-free (CBPE) estimate of fraud_risk's AUC, precision and recall comes to the realised values.

    python benchmarks/label_free_estimate.py [--profile smoke] [--date 2026-11-22] [--days 12]

Trains fraud_risk once as the night for ``--date`` would (the same payment days, features, label cutoff and
``label_delay_days`` = 7, splits and training: ``pipelines.features.fraud_features``,
``pipelines.datasets.build_family_data``, ``pipelines.train.train_family``), checks calibration on its validation
and test splits (:func:`monitoring.performance_estimate.estimate_performance`), then for each of ``--days``
simulated days from ``--date`` on estimates the day's metrics at the family threshold from the model's scores
alone, and compares them with the realised values once every chargeback has matured (30 days after the last day:
the simulator's cap, so the labels are the truth). Prints one row per day (estimate, 5-95 % sampling interval,
realised, error) and the mean absolute error per metric. Nothing is written to the factory's lake or registry.
"""

from __future__ import annotations

import argparse
import datetime as dt
import time

import numpy as np
import pandas as pd


def _days(first: dt.date, n: int) -> list[str]:
    return [(first + dt.timedelta(days=k)).isoformat() for k in range(n)]


def main() -> None:
    from factory_core.families import Family, spec
    from monitoring.performance_estimate import estimate_performance, realised
    from pipelines.data.payments import CHARGEBACK_MAX_DAYS, simulate_chargebacks
    from pipelines.data.schema import TRANSACTIONS_SYMBOL
    from pipelines.data.simulator import simulate_transactions
    from pipelines.datasets import build_family_data
    from pipelines.features import FRAUD_FEATURES, fraud_features
    from pipelines.stages import payment_dates, payment_warmup_days
    from pipelines.train import positive_probability, predict, train_family
    from factory_core.config import load_config

    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", default="smoke")
    ap.add_argument("--date", default="2026-11-22", help="the training night")
    ap.add_argument("--days", type=int, default=12, help="days estimated, from --date on")
    args = ap.parse_args()
    fam = Family.FRAUD_RISK
    cfg = load_config(profile=args.profile, env={}, overrides={"data": {"source": "simulator"}})
    n_txn, seed, channel = cfg.data.transactions_per_day, cfg.data.seed, TRANSACTIONS_SYMBOL
    threshold = cfg.families[fam].threshold
    night = dt.date.fromisoformat(args.date)
    history = payment_dates(cfg, args.date)  # what the night reads: warm-up + history, ending the day before
    later = _days(night, args.days)
    matured = _days(night + dt.timedelta(days=args.days), CHARGEBACK_MAX_DAYS + 1)  # every later fraud reported
    t0 = time.perf_counter()
    txns = pd.concat([simulate_transactions(d, channel, n_txn, seed) for d in [*history, *later]], ignore_index=True)
    cbs = pd.concat([simulate_chargebacks(d, channel, n_txn, seed) for d in [*history, *later, *matured]],
                    ignore_index=True)
    first = dt.date.fromisoformat(history[0]) + dt.timedelta(days=payment_warmup_days())
    # the night: what was known at its cutoff (chargebacks reported before it; rows younger than 7 days unlabelled)
    known = cbs[cbs["ts"] < pd.Timestamp(night, tz="UTC")]
    night_rows = fraud_features(txns[txns["ts"] < pd.Timestamp(night, tz="UTC")], known,
                                since=pd.Timestamp(first, tz="UTC"), cutoff=pd.Timestamp(night, tz="UTC"),
                                maturity_days=spec(fam).label_delay_days)
    data = build_family_data(fam, cfg, None, night_rows)
    outcome = train_family(fam, data, cfg)
    print(f"trained {fam} for the night {args.date} ({args.profile}, {n_txn} payments a day): {len(data.train)} "
          f"train / {len(data.val)} val / {len(data.test)} test rows, "
          f"test AUC {outcome.metrics.get('auc', float('nan')):.3f}"
          f" ({time.perf_counter() - t0:.0f} s)")

    def score(x: np.ndarray) -> np.ndarray:
        return np.asarray(positive_probability(fam, predict(outcome.model, x)), np.float64).reshape(-1)

    reference = pd.DataFrame({"prediction": np.r_[score(data.val.x), score(data.test.x)],
                              "label": np.r_[data.val.y, data.test.y].astype(np.float64),
                              "split": ["val"] * len(data.val) + ["test"] * len(data.test)})
    # the later days' features see only what had happened before each payment (as serving would); their labels
    # are the matured ones, known only here
    rows = fraud_features(txns, cbs, since=pd.Timestamp(night, tz="UTC"),
                          cutoff=pd.Timestamp(matured[-1], tz="UTC") + pd.Timedelta(days=1))
    day_of = rows["ts"].dt.strftime("%Y-%m-%d").to_numpy()
    head = f"{'day':<10} {'n':>5} {'fraud':>5} | " + " | ".join(
        f"{m:<9} {'est':>5} {'5-95 %':>11} {'real':>5} {'err':>6}" for m in ("AUC", "precision", "recall"))
    lines, errors, inside, check = [head, "-" * len(head)], {m: [] for m in ("auc", "precision", "recall")}, {}, None
    for day in later:
        today = rows[day_of == day]
        s = score(today[FRAUD_FEATURES].to_numpy(np.float32))
        est = estimate_performance(reference, s, threshold)
        check = est.calibration
        real = realised(today["label"].to_numpy() > 0.5, s, threshold)
        cells = []
        for m in errors:
            e, r, iv = getattr(est, m), real[m], getattr(est, f"{m}_interval")
            if e is None or r is None:
                cells.append(f"{'':<9} {'n/a':>5} {'':>11} {'n/a':>5} {'':>6}")
                continue
            errors[m].append(e - r)
            inside[m] = inside.get(m, 0) + (iv[0] <= r <= iv[1])
            cells.append(f"{'':<9} {e:5.3f} {iv[0]:5.3f}-{iv[1]:5.3f} {r:5.3f} {e - r:+6.3f}")
        lines.append(f"{day:<10} {real['n']:>5} {real['positives']:>5} | " + " | ".join(cells))
    print(f"calibration: {check.status} — {check.reason}")
    print("\n".join(lines))
    for m, err in errors.items():
        if err:
            print(f"{m:<9}: mean abs error {np.mean(np.abs(err)):.3f}, mean error (bias) {np.mean(err):+.3f}, "
                  f"realised inside the 5-95 % interval on {inside[m]}/{len(err)} days")
    print(f"({time.perf_counter() - t0:.0f} s in all)")


if __name__ == "__main__":
    main()
