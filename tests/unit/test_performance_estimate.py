"""Label-free performance estimation (CBPE) and its calibration check, on synthetic worlds whose true probabilities
are known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families

from factory_core.config import load_config
from monitoring.drift import DriftResult, DriftStatus, export_metrics
from monitoring.performance_estimate import (
    Calibration,
    check_calibration,
    estimate,
    estimate_performance,
    expected_calibration_error,
    realised,
)

THRESHOLD = 0.3


def world(n: int, seed: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """True probabilities (a logistic score, about 3 % positives) and labels drawn from them. ``shift`` moves the
    inputs: the probabilities stay true, the score distribution changes (covariate shift, which CBPE follows)."""
    rng = np.random.default_rng(seed)
    p = 1 / (1 + np.exp(-(-4.5 + 1.6 * (rng.normal(size=n) + shift))))
    return p, rng.random(n) < p


@pytest.mark.parametrize("shift", [0.0, 0.7])
def test_calibrated_estimate_lands_on_the_realised_metrics(shift):
    # 20 days of 5,000 rows: each day's realised metric lies inside the estimate's 5-95 % sampling interval on most
    # days, and the mean error over days is small (what is left is sampling noise, which averages out)
    errors = {"auc": [], "precision": [], "recall": []}
    inside = {k: 0 for k in errors}
    for day in range(20):
        p, y = world(5000, 100 + day, shift)
        est, real = estimate(p, p, THRESHOLD, seed=day), realised(y, p, THRESHOLD)
        for k in errors:
            errors[k].append(est[k] - real[k])
            lo, hi = est[f"{k}_interval"]
            inside[k] += lo <= real[k] <= hi
    tolerance = {"auc": 0.01, "precision": 0.03, "recall": 0.03}  # |mean error| over 20 days
    for k in errors:
        assert abs(np.mean(errors[k])) < tolerance[k], (k, np.mean(errors[k]))
        assert np.mean(np.abs(errors[k])) < 3 * tolerance[k], (k, np.mean(np.abs(errors[k])))
        assert inside[k] >= 15, (k, inside[k])  # a 90 % interval: 18 of 20 expected


def test_expected_auc_with_certain_probabilities_is_the_realised_auc():
    rng = np.random.default_rng(0)
    y = rng.random(1000) < 0.1
    score = rng.random(1000) + 0.3 * y
    est = estimate(y.astype(float), score, 0.8)
    real = realised(y, score, 0.8)
    assert est["auc"] == pytest.approx(real["auc"], abs=1e-9)
    assert est["precision"] == pytest.approx(real["precision"])
    assert est["recall"] == pytest.approx(real["recall"])


def test_calibrated_scores_pass_the_check():
    (pf, yf), (pc, yc) = world(4000, 1), world(4000, 2)
    check, cal = check_calibration(yf, pf, yc, pc)
    assert check.status is Calibration.CALIBRATED, check.reason
    assert check.ece <= check.bound
    np.testing.assert_array_equal(cal(pc), pc)


def test_an_overconfident_model_is_flagged_and_recalibrated_by_isotonic_regression():
    (pf, yf), (pc, yc) = world(4000, 1), world(4000, 2)
    squash = lambda p: p ** 0.4  # noqa: E731 -- monotone: the ranking (AUC) is kept, the probabilities are not
    check, cal = check_calibration(yf, squash(pf), yc, squash(pc))
    assert check.status is Calibration.RECALIBRATED, check.reason
    assert check.raw_ece > check.raw_bound
    assert expected_calibration_error(yc, cal(squash(pc))) < check.raw_ece / 3
    # and the estimate from the recalibrated probabilities is close again, where the raw one is far off
    p, y = world(20000, 3)
    raw, fixed, real = (estimate(squash(p), squash(p), THRESHOLD)["precision"],
                        estimate(cal(squash(p)), squash(p), THRESHOLD)["precision"],
                        realised(y, squash(p), THRESHOLD)["precision"])
    assert abs(fixed - real) < 0.05 < abs(raw - real)


def test_a_model_that_does_not_hold_on_the_test_rows_is_miscalibrated_and_not_trusted(tmp_path):
    # validation and test disagree (the world changed between them): no calibrator fitted on one fits the other
    (pf, yf), (pc, _) = world(4000, 1), world(4000, 2)
    yc = np.random.default_rng(5).random(4000) < np.clip(3 * pc, 0, 1)  # three times the fraud the scores say
    ref = pd.DataFrame({"prediction": np.r_[pf, pc], "label": np.r_[yf, yc].astype(float),
                        "split": ["val"] * 4000 + ["test"] * 4000})
    est = estimate_performance(ref, world(3000, 9)[0], THRESHOLD)
    assert est.calibration.status is Calibration.MISCALIBRATED
    assert not est.trusted and est.reason.startswith("not trusted")
    assert est.auc is not None  # computed and recorded, but not exported as a metric:
    samples = _export(tmp_path, est)
    assert samples["factory_estimate_calibrated"] == 0.0
    assert "factory_estimated_auc" not in samples and "factory_estimated_precision" not in samples


def test_a_reference_without_labels_leaves_the_estimate_unchecked():
    est = estimate_performance(pd.DataFrame({"prediction": [0.1, 0.2]}), np.array([0.1, 0.6]), THRESHOLD)
    assert est.calibration.status is Calibration.UNCHECKED and not est.trusted
    assert "no labels" in est.reason


def test_a_trusted_estimate_is_exported_beside_the_drift_metrics_and_in_the_summary(tmp_path):
    (pf, yf), (pc, yc) = world(4000, 1), world(4000, 2)
    ref = pd.DataFrame({"prediction": np.r_[pf, pc], "label": np.r_[yf, yc].astype(float),
                        "split": ["val"] * 4000 + ["test"] * 4000})
    est = estimate_performance(ref, world(3000, 9)[0], THRESHOLD)
    assert est.trusted, est.reason
    samples = _export(tmp_path, est)
    assert samples["factory_estimate_calibrated"] == 1.0
    assert samples["factory_estimated_auc"] == pytest.approx(est.auc)
    assert samples["factory_estimated_precision"] == pytest.approx(est.precision)
    assert samples["factory_estimated_recall"] == pytest.approx(est.recall)
    assert "factory_drift_share" in samples
    summary = DriftResult("fraud_risk", "cpu", "a", "b", DriftStatus.OK, estimate=est).to_dict()
    assert summary["estimate"]["calibration"]["status"] == "calibrated"
    assert type(summary["estimate"]["calibration"]["status"]) is str


def _export(tmp_path, est) -> dict[str, float]:
    cfg = load_config(env={}, overrides={"home": str(tmp_path)})
    path = export_metrics(cfg, DriftResult("fraud_risk", "cpu", "a", "b", DriftStatus.OK, estimate=est))
    return {s.name: s.value for fam in text_string_to_metric_families(path.read_text()) for s in fam.samples}


def test_the_drift_check_estimates_only_for_families_with_delayed_labels():
    from monitoring.drift import reference_frame
    from pipelines.drift import estimate_without_labels

    cfg = load_config(env={})
    (pf, yf), (pc, yc) = world(2000, 1), world(2000, 2)
    x = np.zeros((4000, 18), np.float32)
    ref = reference_frame(x, np.r_[pf, pc], [f"f{i}" for i in range(18)], 4000, labels=np.r_[yf, yc],
                          splits=np.array(["val"] * 2000 + ["test"] * 2000))
    current = pd.DataFrame({"prediction": world(1000, 3)[0]})
    est = estimate_without_labels(cfg, "fraud_risk", ref, current)  # label_delay_days = 7
    assert est is not None and est.n == 1000 and est.threshold == cfg.families["fraud_risk"].threshold
    assert est.calibration.n == 2000  # decided on the test rows
    assert estimate_without_labels(cfg, "market_alert", ref, current) is None  # its labels are there
