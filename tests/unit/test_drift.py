"""Drift detection (Evidently, real), episodes, the prediction-log round trip and the batch metrics."""

import datetime as dt
import functools

import numpy as np
import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families

from factory_core.config import load_config
from monitoring.drift import (
    PREDICTION,
    ColumnDrift,
    DriftError,
    DriftResult,
    DriftStatus,
    compare,
    export_metrics,
    monitored_columns,
    next_episode,
    served_frame,
    to_columns,
)
from pipelines.data.payments import simulate_chargebacks
from pipelines.data.simulator import Shift, simulate_market, simulate_transactions
from pipelines.features import FRAUD_FEATURES, MARKET_FEATURES, fraud_features, market_features

SEEDS = range(8)


def _market_columns(cfg, shift):
    ticks = simulate_market("2026-03-02", "ESZ6", 4000, seed=3, shift=shift)
    return market_features(ticks, cfg.features)[MARKET_FEATURES].reset_index(drop=True)


FRAUD_DAY = dt.date(2026, 3, 2)


@functools.cache
def _fraud_history() -> tuple[pd.DataFrame, pd.DataFrame]:
    """30 unshifted days of payments before the day, and the chargebacks reported by the end of the day."""
    before = [(FRAUD_DAY - dt.timedelta(days=k)).isoformat() for k in range(30, 0, -1)]
    txns = pd.concat([simulate_transactions(d, "cards", 6000, seed=3) for d in before], ignore_index=True)
    return txns, pd.concat([simulate_chargebacks(d, "cards", 6000, 3) for d in before + [FRAUD_DAY.isoformat()]])


def _fraud_columns(shift):
    """The day's features (shifted or not) over its history."""
    txns, chargebacks = _fraud_history()
    day = simulate_transactions(FRAUD_DAY.isoformat(), "cards", 6000, seed=3, shift=shift)
    feats = fraud_features(pd.concat([txns, day], ignore_index=True), chargebacks,
                           since=pd.Timestamp(FRAUD_DAY, tz="UTC"))
    return feats[FRAUD_FEATURES]


def _with_prediction(df):
    out = df.reset_index(drop=True).copy()
    out[PREDICTION] = 1 / (1 + np.exp(-out.iloc[:, :3].sum(axis=1).to_numpy() / 10))  # a fixed stand-in score
    return out


def _rates(family, base, shifted, cfg):
    """Per seed: reference and current drawn from one pool (same distribution) vs current from the shifted day."""
    dcfg = cfg.monitoring.drift
    names, share = monitored_columns(family, dcfg), dcfg.share_for(family)
    false_pos, detected = [], []
    for seed in SEEDS:
        idx = np.random.default_rng(seed).permutation(len(base))
        ref, cur = _with_prediction(base.iloc[idx[:1500]]), _with_prediction(base.iloc[idx[1500:3000]])
        sh = _with_prediction(shifted.iloc[np.random.default_rng(seed).permutation(len(shifted))[:1500]])
        args = (names, share, dcfg.method, dcfg.threshold, dcfg.severe_score)
        false_pos.append(compare(ref, cur, *args)[0]["dataset_drift"])
        detected.append(compare(ref, sh, *args)[0]["dataset_drift"])
    return float(np.mean(false_pos)), float(np.mean(detected))


@pytest.mark.slow
@pytest.mark.parametrize("family", ["market_alert", "fraud_risk"])
def test_drift_caught_on_a_planted_shift_and_not_on_same_distribution_data(family, capsys):
    cfg = load_config(profile="smoke", env={})
    if family == "fraud_risk":
        base, shifted = _fraud_columns(None), _fraud_columns(Shift(start=0.0))
    else:
        base, shifted = _market_columns(cfg, None), _market_columns(cfg, Shift(start=0.0))
    fpr, tpr = _rates(family, base, shifted, cfg)
    with capsys.disabled():
        print(f"\n{family}: false-positive rate {fpr:.2f}, detection rate {tpr:.2f} over {len(SEEDS)} seeds "
              f"(psi > {cfg.monitoring.drift.threshold})")
    assert fpr == 0.0
    assert tpr == 1.0


def test_evidently_reports_method_score_and_drift_per_column():
    rng = np.random.default_rng(0)
    ref = pd.DataFrame(rng.normal(size=(2000, 3)), columns=["a", "b", "c"])
    cur = pd.DataFrame(rng.normal(size=(2000, 3)), columns=["a", "b", "c"])
    cur["a"] += 2.0
    ref[PREDICTION], cur[PREDICTION] = rng.random(2000), rng.random(2000)
    figures, snapshot = compare(ref, cur, ["a", "b", "c"], drift_share=0.3, method="psi", threshold=0.2)
    cols = {c.column: c for c in figures["columns"]}
    assert cols["a"].drifted and not cols["b"].drifted and not cols["c"].drifted
    assert cols["a"].method.lower().startswith("psi") and cols["a"].score > 0.2 > cols["b"].score
    assert figures["drifted_columns"] == 1 and figures["drift_share"] == pytest.approx(1 / 3)
    assert figures["dataset_drift"] and not figures["prediction"].drifted
    assert "<html" in snapshot.get_html_str(as_iframe=False).lower()


def test_one_column_far_out_of_range_is_drift_whatever_the_share():
    """A liquidity shock moves one input of ten (book depth at a third): a share of 0.1 never reaches 0.5, but
    its score reaches ``severe_score``; a column drifted but not severely does not."""
    rng = np.random.default_rng(1)
    names = [f"f{k}" for k in range(10)]
    ref = pd.DataFrame(rng.normal(size=(2000, 10)), columns=names)
    cur = pd.DataFrame(rng.normal(size=(2000, 10)), columns=names)
    cur["f0"] = cur["f0"] * 0.2 - 4.0  # far below the whole reference
    cur["f1"] += 0.5  # drifted (PSI > 0.2), not severely
    ref[PREDICTION], cur[PREDICTION] = rng.random(2000), rng.random(2000)
    figures, _ = compare(ref, cur, names, drift_share=0.5, method="psi", threshold=0.2, severe_score=5.0)
    cols = {c.column: c for c in figures["columns"]}
    assert cols["f0"].score >= 5.0 > cols["f1"].score > 0.2 and figures["drift_share"] == pytest.approx(0.2)
    assert figures["severe_columns"] == ["f0"] and figures["dataset_drift"]
    off, _ = compare(ref, cur, names, drift_share=0.5, method="psi", threshold=0.2, severe_score=None)
    assert off["severe_columns"] == [] and not off["dataset_drift"]


def test_severe_score_needs_a_distance_stattest():
    from factory_core.config import ConfigError

    with pytest.raises(ConfigError, match="severe_score needs a distance stattest.*'ks'"):
        load_config(env={}, overrides={"monitoring": {"drift": {"method": "ks", "threshold": 0.05}}})
    cfg = load_config(env={}, overrides={"monitoring": {"drift": {"method": "ks", "threshold": 0.05,
                                                                  "severe_score": None}}})
    assert cfg.monitoring.drift.severe_score is None


def test_a_drift_episode_fires_once_and_a_clean_check_or_new_champion_rearms_it():
    state, fired = None, []
    for drifting, champion in [(False, "1"), (True, "1"), (True, "1"), (True, "1"), (False, "1"), (True, "1"),
                               (True, "2"), (True, "2")]:
        state, fire = next_episode(state, drifting, champion, "t", "why")
        fired.append(fire)
    assert fired == [False, True, False, False, False, True, True, False]
    assert state["open"] and state["champion"] == "2" and state["checks"] == 2


def test_a_share_hovering_at_the_threshold_keeps_one_episode():
    """The measured ordinary day: 0.38 / 0.50 / 0.44 / 0.50 at share 0.5 fired twice without hysteresis."""
    shares = [0.38, 0.50, 0.44, 0.50, 0.44, 0.50]

    def run(clean_to_close, close_below):
        state, fired = None, []
        for s in shares:
            state, fire = next_episode(state, s >= 0.5, "1", "t", "why", share=s, clean_to_close=clean_to_close,
                                       close_below_share=close_below)
            fired.append(fire)
        return state, fired

    _, fired = run(1, None)
    assert sum(fired) == 3  # the old behaviour: every upward crossing fires
    state, fired = run(3, 0.25)
    assert fired == [False, True, False, False, False, False] and state["open"]
    # three clean checks in a row close it; so does one clean check clearly below the lower share
    state, _ = run(3, 0.25)
    for s in (0.44, 0.40, 0.45):
        state, _ = next_episode(state, False, "1", "t", "why", share=s, clean_to_close=3, close_below_share=0.25)
    assert not state["open"]
    state, _ = run(3, 0.25)
    state, _ = next_episode(state, False, "1", "t", "why", share=0.1, clean_to_close=3, close_below_share=0.25)
    assert not state["open"]
    state, fire = next_episode(state, True, "1", "t", "why", share=0.6, clean_to_close=3, close_below_share=0.25)
    assert fire and state["open"]


def test_prediction_log_round_trip_to_drift_columns(tmp_path):
    from monitoring.serving import PredictionLog, read_predictions

    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 40, 16)).astype(np.float32)
    log = PredictionLog(tmp_path, "market_alert", "cpu", sample_rate=1.0, batch_rows=7)
    t0 = dt.datetime(2026, 3, 2, 23, 59, 50, tzinfo=dt.timezone.utc)
    for i in range(30):  # 10 s apart: crosses midnight, so two date= partitions
        log.record(x[i:i + 1], np.array([[i / 30]], np.float32), 1e-4, "v1", ts=t0 + dt.timedelta(seconds=10 * i))
    log.close()
    assert sorted(p.name for p in (tmp_path / "predictions" / "market_alert" / "cpu").iterdir()) == [
        "date=2026-03-02", "date=2026-03-03"]
    got = read_predictions(tmp_path, "market_alert", "cpu", t0 + dt.timedelta(seconds=5), t0 + dt.timedelta(seconds=95))
    assert len(got) == 9  # records 1..9
    df = served_frame(got, MARKET_FEATURES)
    np.testing.assert_array_equal(df[MARKET_FEATURES].to_numpy(), to_columns(x[1:10], MARKET_FEATURES).to_numpy())
    np.testing.assert_allclose(df[PREDICTION], np.arange(1, 10) / 30, rtol=1e-6)
    with pytest.raises(DriftError, match=f"do not match the {len(FRAUD_FEATURES)} features"):
        served_frame(got, FRAUD_FEATURES)


def test_drift_metrics_are_a_valid_exposition(tmp_path):
    cfg = load_config(env={}, overrides={"home": str(tmp_path)})
    result = DriftResult("fraud_risk", "cpu", "a", "b", DriftStatus.DRIFT, drift_share=0.5, drifted_columns=1,
                         dataset_drift=True, triggered=True,
                         columns=[ColumnDrift("amount_log", "PSI", 0.7, 0.2, True),
                                  ColumnDrift("amount_z", "PSI", 0.05, 0.2, False)],
                         prediction=ColumnDrift("prediction", "PSI", 0.1, 0.2, False))
    path = export_metrics(cfg, result)
    assert path.parent == tmp_path / "metrics"
    samples = {(s.name, s.labels.get("column")): s.value for fam in text_string_to_metric_families(path.read_text())
               for s in fam.samples}
    assert samples[("factory_drift_detected", None)] == 1.0
    assert samples[("factory_drift_retrain_triggered", None)] == 1.0
    assert samples[("factory_drift_column_score", "amount_log")] == 0.7
    assert samples[("factory_drift_column_score", "prediction")] == 0.1


def test_nightly_outcome_keeps_the_last_success_time_when_a_night_fails(tmp_path):
    from monitoring.batch import nightly_outcome

    cfg = load_config(env={}, overrides={"home": str(tmp_path)})
    t1, t2 = (dt.datetime(2026, 3, d, 3, tzinfo=dt.timezone.utc) for d in (2, 3))
    nightly_outcome(cfg, "2026-03-02", [], {("fraud_risk", "cpu"): 100.0}, now=t1)
    nightly_outcome(cfg, "2026-03-03", ["train[fraud_risk]"], {("fraud_risk", "cpu"): 100.0}, now=t2)

    def values(name):
        return {s.name: s.value for f in text_string_to_metric_families((tmp_path / "metrics" / name).read_text())
                for s in f.samples}

    assert values("factory_nightly.prom")["factory_nightly_last_run_success"] == 0.0
    assert values("factory_nightly.prom")["factory_nightly_failed_tasks"] == 1.0
    assert values("factory_nightly_success.prom")["factory_nightly_last_success_timestamp_seconds"] == t1.timestamp()
