"""The statistics gates decide on, with exact figures on synthetic outputs."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from factory_core.config import Family, load_config
from factory_core.contracts import Decision
from pipelines.datasets import Split
from pipelines.evidence import agreement, auc_rows, log_mean_interval, metric_rows, paired_bootstrap
from pipelines.gates import accuracy_verdict, champion_check

CFG = load_config(profile="smoke", env={})
GATES = CFG.gates


def test_agreement_figures():
    ref = np.array([0.10, 0.50, 0.89, 0.91, 0.95])
    got = np.array([0.12, 0.50, 0.91, 0.91, 0.85])
    a = agreement(ref, got, 0.9)
    assert a.n == 5 and a.flips == 2 and a.new_alerts == 1 and a.flip_rate == pytest.approx(0.4)
    assert a.mean_abs == pytest.approx((0.02 + 0 + 0.02 + 0 + 0.10) / 5)
    assert a.max_abs == pytest.approx(0.10) and a.bias == pytest.approx((0.02 + 0.02 - 0.10) / 5)
    assert agreement(ref, np.array([np.nan, 0.5, 0.89, 0.91, 0.95]), 0.9).nonfinite == 1


def test_auc_rows_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    y = rng.random((4, 300)) < 0.2
    p = np.round(rng.random((4, 300)) + y * 0.3, 1)  # rounded: many ties
    for i in range(4):
        assert auc_rows(y[i:i + 1], p[i:i + 1])[0] == pytest.approx(roc_auc_score(y[i], p[i]))


def test_paired_bootstrap_of_identical_models_is_exactly_zero_and_covers_a_true_difference():
    rng = np.random.default_rng(1)
    y = rng.random(2000) < 0.3
    p = np.clip(y * 0.2 + rng.random(2000) * 0.8, 0, 1)
    same = paired_bootstrap(lambda idx: metric_rows("auc", y, p, 0.5, idx) - metric_rows("auc", y, p, 0.5, idx),
                            len(y), resamples=200)
    assert (same.point, same.lo, same.hi) == (0.0, 0.0, 0.0)
    noisy = np.clip(p + rng.normal(0, 0.3, len(p)), 0, 1)
    iv = paired_bootstrap(lambda idx: metric_rows("auc", y, p, 0.5, idx) - metric_rows("auc", y, noisy, 0.5, idx),
                          len(y), resamples=300)
    assert iv.lo < iv.point < iv.hi and iv.lo > 0  # the noisy model is worse, and the interval shows it


def test_metric_rows_precision_is_undefined_without_alerts():
    y = np.array([1, 0, 1, 0])
    p = np.array([0.2, 0.3, 0.4, 0.1])
    assert np.isnan(metric_rows("precision", y, p, 0.9, np.arange(4)[None])[0])
    assert metric_rows("recall", y, p, 0.3, np.arange(4)[None])[0] == pytest.approx(0.5)


def test_log_mean_interval_exact():
    iv = log_mean_interval(np.array([1.0, 4.0]), 0.95)
    assert iv.point == pytest.approx(2.0)
    # t(0.975, 1) = 12.706; sd of logs = ln(4)/sqrt(2); half-width = 12.706 * sd / sqrt(2) = 12.706 * ln(4) / 2
    assert iv.lo == pytest.approx(2.0 * np.exp(-12.7062 * np.log(4) / 2), rel=1e-3)


def _split(n=900, seed=0, pos_rate=0.05):
    """A market_alert-like test split whose FP32 outputs know the labels a little."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < pos_rate).astype(np.float32)
    flash = rng.random(n) < 0.02
    ref = np.clip(0.05 + 0.6 * y + rng.normal(0, 0.15, n), 0.001, 0.999).astype(np.float32)[:, None]
    split = Split(x=np.zeros((n, 1), np.float32), y=y, ts=np.arange(n, dtype=np.int64), state=np.zeros(n, np.int8),
                  flash=flash, fwd_ret_bps=np.zeros(n, np.float32))
    return split, ref


def test_a_constant_shift_is_caught_by_agreement_where_auc_cannot_see_it():
    split, ref = _split()
    fam, bounds = Family.MARKET_ALERT, GATES.families[Family.MARKET_ALERT]
    healthy = accuracy_verdict(fam, "int8", split, ref, ref + np.float32(1e-4), bounds, 0.9, GATES)
    assert healthy.status == "ok", healthy.reasons
    shifted = accuracy_verdict(fam, "int8", split, ref, np.clip(ref + 0.04, 0, 1), bounds, 0.9, GATES)
    assert shifted.status == "rejected"
    failed = {c.name for c in shifted.checks if not c.ok}
    assert {"agree_mean_abs", "calibration_shift"} <= failed
    auc = next(c for c in shifted.checks if c.name == "auc_drop")
    assert auc.ok and abs(auc.value) < 1e-9  # AUC does not move under a constant shift


def test_zero_alerts_on_both_sides_is_undecided_never_a_pass_or_fail():
    split, ref = _split()
    low = np.minimum(ref, 0.8)  # nobody alerts at 0.9
    v = accuracy_verdict(Family.MARKET_ALERT, "fp32", split, low, low, GATES.families[Family.MARKET_ALERT], 0.9,
                         GATES)
    prec = next(c for c in v.checks if c.name == "precision_drop")
    assert prec.decision is Decision.UNDECIDED and "0 FP32 alerts vs 0 candidate alerts" in prec.detail
    assert "min_events" in prec.detail and v.status == "ok"


def test_a_few_flipped_decisions_are_not_evidence_but_many_are():
    split, ref = _split(n=875, seed=3, pos_rate=0.5)
    fam = Family.FRAUD_RISK  # threshold 0.5, accuracy margin 0.005
    bounds = GATES.families[fam]
    p = ref.copy()
    near = np.argsort(np.abs(ref[:, 0] - 0.5))[:4]  # 4 decisions flipped next to the threshold
    p[near, 0] = 1 - ref[near, 0]
    few = accuracy_verdict(fam, "fp32", split, ref, p, bounds, 0.5, GATES)
    acc = next(c for c in few.checks if c.name == "accuracy_drop")
    assert acc.decision is Decision.PASS and acc.ci[0] <= 0.005
    worse = ref.copy()
    flip = np.flatnonzero((ref[:, 0] >= 0.5) == (split.y > 0.5))[:60]  # 60 right decisions made wrong
    worse[flip, 0] = 1 - ref[flip, 0]
    bad = accuracy_verdict(fam, "int8", split, ref, worse, bounds, 0.5, GATES)
    acc = next(c for c in bad.checks if c.name == "accuracy_drop")
    assert acc.decision is Decision.FAIL and acc.ci[0] > 0.005


def test_champion_non_inferior_worse_and_undecided_with_the_policy():
    split, ref = _split(n=3000, seed=5, pos_rate=0.2)
    fam, bounds = Family.FRAUD_RISK, GATES.families[Family.FRAUD_RISK]
    same = champion_check(fam, split, ref, ref, bounds, 0.5, GATES)
    assert same.decision is Decision.PASS and same.ci == (0.0, 0.0) and same.ok
    rng = np.random.default_rng(0)
    worse = np.clip(ref + rng.normal(0, 0.4, ref.shape), 0, 1).astype(np.float32)
    bad = champion_check(fam, split, ref, worse, bounds, 0.5, GATES)
    assert bad.decision is Decision.FAIL and not bad.ok and "worse than the champion" in bad.detail
    tiny, tref = _split(n=200, seed=6, pos_rate=0.05)  # about 10 positives
    promote = GATES.model_copy(update={"champion": GATES.champion.model_copy(update={"undecided": "promote"})})
    und = champion_check(fam, tiny, tref, tref, bounds, 0.5, promote)
    assert und.decision is Decision.UNDECIDED and und.ok and not und.holds_champion and "positives" in und.detail
    # the default: keep_champion, refresh after 7 days; undecided never rejects the engine, it holds the champion
    assert GATES.champion.undecided == "keep_champion" and GATES.champion.refresh_after_days == 7
    kept = champion_check(fam, tiny, tref, tref, bounds, 0.5, GATES)
    assert kept.ok and kept.holds_champion and "keep_champion" in kept.detail and "challenger only" in kept.detail
    young = champion_check(fam, tiny, tref, tref, bounds, 0.5, GATES, champion_age_days=6)
    assert young.ok and young.holds_champion and young.decision is Decision.UNDECIDED
    old = champion_check(fam, tiny, tref, tref, bounds, 0.5, GATES, champion_age_days=7)
    assert old.ok and not old.holds_champion and "7 days old" in old.detail
    unknown = champion_check(fam, tiny, tref, tref, bounds, 0.5, GATES, champion_age_days=None)
    assert unknown.holds_champion
    never = GATES.model_copy(update={"champion": GATES.champion.model_copy(update={"refresh_after_days": None})})
    assert champion_check(fam, tiny, tref, tref, bounds, 0.5, never, champion_age_days=400).holds_champion
    # evidence still rules: worse is rejected whatever the champion's age; non-inferior never holds
    assert not champion_check(fam, split, ref, worse, bounds, 0.5, GATES, champion_age_days=30).ok
    assert not same.holds_champion


def test_smoke_sized_windows_say_when_they_cannot_decide():
    """The smoke profile's market_alert test window: ~900 windows, ~36 positives, no FP32 alert at 0.9."""
    split, ref = _split(n=880, seed=7, pos_rate=0.04)
    ref = np.minimum(ref, 0.87)
    v = accuracy_verdict(Family.MARKET_ALERT, "fp16", split, ref, ref, GATES.families[Family.MARKET_ALERT], 0.9,
                         GATES)
    by = {c.name: c for c in v.checks}
    assert by["auc_drop"].decision is Decision.PASS  # enough positives to decide AUC
    for name in ("precision_drop", "recall_drop"):
        assert by[name].decision is Decision.UNDECIDED and "alerts" in by[name].detail
    assert by["tail_brier"].decision is (Decision.PASS if by["tail_brier"].n and by["tail_brier"].n >= 20
                                         else Decision.UNDECIDED)
