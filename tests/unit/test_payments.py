"""The payments world: determinism, fraud rate, scenario persistence, delayed chargebacks, causal features, and a
night that trains only on matured, chargeback-labelled transactions."""

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from factory_core.families import FRAUD_FEATURES
from pipelines.data import lake
from pipelines.data import payments as P
from pipelines.data.schema import CHARGEBACKS_DATASET, CHARGEBACKS_SCHEMA, TRANSACTIONS_DATASET, TRANSACTIONS_SCHEMA
from pipelines.data.validation import DataValidationError, validate_payments
from pipelines.features import fraud_features

N = 4000


def _days(start: str, n: int) -> list[str]:
    d = dt.date.fromisoformat(start)
    return [(d + dt.timedelta(days=k)).isoformat() for k in range(n)]


def test_a_day_is_a_pure_function_of_date_channel_seed():
    a = P.simulate_day("2026-11-20", "CARD", N, 7)
    pd.testing.assert_frame_equal(a, P.simulate_day("2026-11-20", "CARD", N, 7))
    for other in (P.simulate_day("2026-11-21", "CARD", N, 7), P.simulate_day("2026-11-20", "CARD", N, 8)):
        assert not np.array_equal(a["amount"].to_numpy(), other["amount"].to_numpy())
    tx = P.simulate_transactions("2026-11-20", "CARD", N, 7)
    assert list(tx.columns) == TRANSACTIONS_SCHEMA.names and "is_fraud" not in tx  # no label in an authorisation
    assert len(tx) == N and tx["ts"].is_monotonic_increasing and tx["txn_id"].is_unique
    cb = P.simulate_chargebacks("2026-11-20", "CARD", N, 7)
    assert list(cb.columns) == CHARGEBACKS_SCHEMA.names
    pd.testing.assert_frame_equal(cb, P.simulate_chargebacks("2026-11-20", "CARD", N, 7))


def test_fraud_is_rare_and_every_scenario_appears():
    days = pd.concat([P.simulate_day(d, "CARD", 10_000, 7) for d in _days("2026-10-01", 10)])
    assert 0.002 <= days["is_fraud"].mean() <= 0.01
    assert set(days.loc[days["is_fraud"], "scenario"]) == {1, 2, 3}
    cnp = days[days["scenario"] == 3]
    assert (cnp["country"] != cnp["home_country"]).mean() > 3 * (days["country"] != days["home_country"]).mean()


def test_a_compromised_terminal_stays_compromised_28_days():
    days = _days("2026-09-30", 36)  # the day before, the day of the compromise, 34 days after
    compromised = [set(P.compromised_terminals(d, 10_000, 7).tolist()) for d in days]
    new = compromised[1] - compromised[0]
    assert new, "no terminal compromised that day"
    assert all(new <= c for c in compromised[1:29])  # from the day of the compromise to 27 days after
    assert not new & compromised[29]  # released on day 28 (an event since would show here)
    during, after = 0, 0
    for k, d in enumerate(days[1:], 1):
        tx = P.simulate_day(d, "CARD", 10_000, 7)
        at = tx[tx["terminal_id"].isin(new - compromised[k] if k >= 29 else new)]
        if k < 29:
            assert (at["scenario"] > 0).all()  # every payment there is fraud
            during += len(at)
        else:
            assert not (at["scenario"] == 2).any()
            after += len(at)
    assert during > 10 and after > 0


def test_each_fraud_is_charged_back_once_within_the_cap():
    days = _days("2026-10-01", 32)  # frauds of the first two days are all reported by the last
    truth = pd.concat([P.simulate_day(d, "CARD", N, 7) for d in days[:2]], ignore_index=True)
    cbs = pd.concat([P.simulate_chargebacks(d, "CARD", N, 7) for d in days], ignore_index=True)
    fraud = truth[truth["is_fraud"]]
    assert cbs["txn_id"].is_unique
    assert set(fraud["txn_id"]) <= set(cbs["txn_id"])
    mine = cbs[cbs["txn_id"].isin(fraud["txn_id"])].set_index("txn_id")
    assert (mine["ts"] > mine["txn_ts"]).all()
    assert (mine["txn_ts"] == fraud.set_index("txn_id")["ts"].loc[mine.index]).all()
    assert (mine["ts"] - mine["txn_ts"]).max() <= pd.Timedelta(days=P.CHARGEBACK_MAX_DAYS)


def test_the_reporting_delay_is_days_and_a_week_sees_most():
    rng = np.random.default_rng(0)
    delay = np.minimum(rng.lognormal(np.log(P.CHARGEBACK_MEDIAN_DAYS), P.CHARGEBACK_SIGMA, 100_000),
                       P.CHARGEBACK_MAX_DAYS)
    truth = pd.concat([P.simulate_day(d, "CARD", 10_000, 7) for d in _days("2026-10-01", 6)])
    seen = (truth.loc[truth["is_fraud"], "report_ts"] - truth.loc[truth["is_fraud"], "ts"]).dt.total_seconds() / 86400
    assert 2 < seen.median() < 4.5
    assert 0.8 < (delay <= 7).mean() < 0.92  # the fraud_risk maturity window: about 87 % reported


def test_chargeback_partitions_validate_and_bad_ones_are_named(tmp_path):
    root = str(tmp_path)
    part = lake.Partition(CHARGEBACKS_DATASET, "2026-11-20", "CARD")
    cb = P.simulate_chargebacks(part.date, "CARD", N, 7)
    lake.write_partition(root, part, cb)
    pd.testing.assert_frame_equal(lake.read_partition(root, part), cb, check_dtype=False)
    empty = lake.Partition(CHARGEBACKS_DATASET, "2026-11-21", "CARD")
    lake.write_partition(root, empty, cb.iloc[0:0])  # a day without a chargeback
    assert len(lake.read_partition(root, empty)) == 0
    bad = cb.copy()
    bad.loc[2, "txn_ts"] = bad.loc[2, "ts"] + pd.Timedelta(hours=1)
    with pytest.raises(DataValidationError, match="reported before its transaction") as err:
        lake.write_partition(str(tmp_path / "b"), part, bad)
    assert (err.value.partition, err.value.column) == (part.key, "txn_ts")
    dup = cb.copy()
    dup.loc[3, "txn_id"] = dup.loc[1, "txn_id"]
    with pytest.raises(DataValidationError, match="duplicate id") as err:
        lake.write_partition(str(tmp_path / "b"), part, dup)
    assert (err.value.partition, err.value.column) == (part.key, "txn_id")


def _loaded(days: list[str], n: int = N):
    tx = pd.concat([P.simulate_transactions(d, "CARD", n, 7).assign(partition=f"{TRANSACTIONS_DATASET}/date={d}/"
                                                                                f"symbol=CARD") for d in days],
                   ignore_index=True)
    cb = pd.concat([P.simulate_chargebacks(d, "CARD", n, 7).assign(partition=f"{CHARGEBACKS_DATASET}/date={d}/"
                                                                                f"symbol=CARD") for d in days],
                   ignore_index=True)
    return tx, cb


def test_payments_across_partitions_are_checked():
    days = _days("2026-11-01", 8)
    tx, cb = _loaded(days)
    validate_payments(tx, cb)
    known = cb[cb["txn_ts"] >= pd.Timestamp(days[0], tz="UTC")].index[0]
    unknown = cb.copy()
    unknown.loc[known, "txn_id"] = 123
    with pytest.raises(DataValidationError, match="chargeback for an unknown transaction") as err:
        validate_payments(tx, unknown)
    assert (err.value.partition, err.value.column) == (cb.loc[known, "partition"], "txn_id")
    moved = cb.copy()
    moved.loc[known, "txn_ts"] += pd.Timedelta(seconds=1)
    with pytest.raises(DataValidationError, match="not its transaction's ts"):
        validate_payments(tx, moved)
    dup = tx.copy()
    dup.loc[len(tx) - 1, "txn_id"] = tx.loc[0, "txn_id"]
    with pytest.raises(DataValidationError, match="also in transactions/date=2026-11-01") as err:
        validate_payments(dup, cb)
    assert (err.value.partition, err.value.column) == (f"{TRANSACTIONS_DATASET}/date={days[-1]}/symbol=CARD", "txn_id")


def test_features_of_a_day_do_not_see_later_days_or_later_chargebacks():
    """The leak test: day D's features (and its labels at a cutoff) are the same whether or not the lake already
    holds the days after D, their transactions and their chargebacks."""
    days = _days("2026-10-01", 12)
    tx, cb = _loaded(days, 2000)
    d = pd.Timestamp(days[8], tz="UTC")
    cutoff = d + pd.Timedelta(days=1)
    full = fraud_features(tx, cb, since=d, cutoff=cutoff)
    upto = fraud_features(tx[tx["ts"] < cutoff], cb[cb["ts"] < cutoff], since=d, cutoff=cutoff)
    full = full[full["ts"] < cutoff].reset_index(drop=True)
    pd.testing.assert_frame_equal(full, upto)
    # and a row's terminal risk uses only chargebacks reported before it: drop the ones reported on day D after 12:00
    noon = d + pd.Timedelta(hours=12)
    cut = fraud_features(tx, cb[(cb["ts"] < noon) | (cb["ts"] >= cutoff)], since=d, cutoff=cutoff)
    cut = cut[cut["ts"] < cutoff].reset_index(drop=True)
    before = full["ts"] < noon
    pd.testing.assert_frame_equal(full.loc[before, FRAUD_FEATURES], cut.loc[before, FRAUD_FEATURES])
    assert not full.loc[~before, FRAUD_FEATURES].equals(cut.loc[~before, FRAUD_FEATURES])  # the test can see one
    assert full["term_risk_30d"].max() > 0  # the risk features do carry known chargebacks


def test_terminal_risk_counts_known_frauds_in_the_window():
    t0 = pd.Timestamp("2026-11-20T10:00:00Z")
    h = pd.Timedelta(hours=1)
    tx = pd.DataFrame({"ts": [t0, t0 + h, t0 + 30 * h, t0 + 50 * h, t0 + 9 * 24 * h], "txn_id": [1, 2, 3, 4, 5],
                       "account_id": [1, 2, 3, 1, 2], "terminal_id": [9, 9, 9, 9, 9],
                       "amount": [10.0, 20.0, 30.0, 40.0, 50.0], "merchant_category": [5411] * 5,
                       "country": ["US"] * 5, "home_country": ["US"] * 5, "device_id": [10, 20, 30, 10, 20]})
    cb = pd.DataFrame({"ts": [t0 + 40 * h], "txn_id": [1], "txn_ts": [t0], "reason": ["counterfeit"]})
    f = fraud_features(tx, cb)
    assert f["term_count_7d"].tolist() == pytest.approx(np.log1p([0, 1, 2, 3, 1]).tolist())
    # txn 1 reported at +40 h: unknown to txns 2 and 3, known to 4 (1 of 3 in its 7 days); out of txn 5's 7 days
    assert f["term_risk_7d"].tolist() == pytest.approx([0, 0, 0, 1 / 3, 0])
    assert f["term_risk_30d"].tolist() == pytest.approx([0, 0, 0, 1 / 3, 1 / 4])
    assert f["cust_count_1d"].tolist() == pytest.approx(np.log1p([1, 1, 1, 1, 1]).tolist())
    assert f["cust_amount_7d"].tolist() == pytest.approx(np.log([10, 20, 30, 25, 50]).tolist())
    assert f["label"].tolist() == [1, 0, 0, 0, 0]
    late = fraud_features(tx, cb, cutoff=t0 + 20 * h)  # not reported by the cutoff: not a fraud yet
    assert late["label"].tolist()[:2] == [0, 0] and late["label"].isna().tolist() == [False, False, True, True, True]


def test_a_night_trains_only_on_matured_transactions_labelled_by_known_chargebacks(factory_home):
    from factory_core.config import Family, load_config
    from pipelines import stages
    from pipelines.datasets import build_family_data

    cfg = load_config(profile="smoke", overrides={"data": {"transactions_per_day": 1000}})
    date = "2026-11-22"
    p = stages.plan(cfg, date, families=["fraud_risk"])
    snap = stages.ingest(cfg, p)
    dates = stages.payment_dates(cfg, date)
    history = cfg.data.transactions_history_days
    assert dates[-1] == "2026-11-21" and len(dates) == 30 + history
    assert sum(k.startswith(CHARGEBACKS_DATASET) for k in snap.partitions) == len(dates)
    fs = stages.build_features(cfg, p, snap)
    fraud = pd.read_parquet(fs.fraud_uri)
    cutoff = pd.Timestamp(date, tz="UTC")
    matured = cutoff - pd.Timedelta(days=7)
    assert fraud["ts"].min() >= pd.Timestamp(dates[30], tz="UTC")  # the warm-up is history only
    assert fraud.loc[fraud["ts"] >= matured, "label"].isna().all()  # the newest week: unlabelled, kept
    assert fraud.loc[fraud["ts"] < matured, "label"].notna().all()
    data = build_family_data(Family.FRAUD_RISK, cfg, None, fraud)
    for split in (data.train, data.val, data.test):
        assert split.ts.max() < matured.value
    # the labels are the chargebacks reported by the cutoff, not the truth
    truth = pd.concat([P.simulate_day(d, "CARD", 1000, cfg.data.seed) for d in dates[30:]], ignore_index=True)
    truth = truth.set_index(truth["ts"])
    old = fraud[fraud["ts"] < matured].set_index("ts")
    reported = truth.loc[old.index, "report_ts"] < cutoff
    assert (old["label"].to_numpy() == reported.to_numpy()).all()
    assert old["label"].sum() < truth.loc[old.index, "is_fraud"].sum()  # some frauds are not reported yet
