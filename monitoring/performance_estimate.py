"""Label-free performance for families whose labels arrive late: NannyML's confidence-based performance
estimation (CBPE), with the calibration check it rests on.

fraud_risk's labels are chargebacks, reported days after the payment (``label_delay_days``): the newest days have
no label. If the model's probabilities are calibrated, P(y=1 | p) = p, then on unlabelled rows the confusion
matrix at a threshold has known expectations: a row predicted positive is a true positive with probability p and a
false positive with 1 - p, so E[TP] = sum of p over predicted positives, E[FP] = sum of 1 - p there, E[FN] = sum
of p over predicted negatives. Precision and recall follow from those sums, and ROC AUC from the expected TPR/FPR
curve over every threshold (rows sorted by score, cumulative sums of p). This is NannyML's CBPE: nannyml 0.13.1,
``nannyml/performance_estimation/confidence_based/metrics.py`` (``estimate_precision``, ``estimate_recall``,
``estimate_roc_auc``) and https://nannyml.readthedocs.io/en/stable/how_it_works/performance_estimation.html.

NannyML itself is not a dependency: its 0.13.1 wheel fits pandas/numpy/scikit-learn here, but it pulls lightgbm,
FLAML, category-encoders, kaleido, seaborn, APScheduler, gcsfs, s3fs and a telemetry client into every
monitoring host for four short functions (docs/monitoring.md, "Label-free performance").

**Calibration first.** The estimate is only as good as P(y=1 | p) = p. :func:`check_calibration` measures the
expected calibration error (NannyML's: equal-count bins, ``nannyml/calibration.py``) on labelled held-out rows
and compares it with the ECE a perfectly calibrated model would show on the same probabilities by chance (the
``quantile`` of the ECE of labels drawn as Bernoulli(p): a consistency bound, Bröcker & Smith 2007, "Increasing
the reliability of reliability diagrams"), because with 1 % positives an absolute ECE bound means nothing. If the
raw scores fail, isotonic regression (scikit-learn) is fitted on the validation rows and checked on the test rows;
if that fails too, or no labels exist to check with, the estimate says so and is not trustworthy.

The other assumption: no concept drift. CBPE sees the inputs move, not P(y | x): a new kind of fraud the model
scores low is invisible to it until the labels arrive.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np


class Calibration(StrEnum):
    CALIBRATED = "calibrated"
    """The raw scores pass the check: they are the probabilities."""
    RECALIBRATED = "recalibrated"
    """The raw scores fail, isotonic regression fitted on validation rows passes on test rows."""
    MISCALIBRATED = "miscalibrated"
    """Both fail: an estimate from these probabilities is not to be trusted."""
    UNCHECKED = "unchecked"
    """No labelled rows (or no positives) to check with: undecided, not trusted."""


TRUSTED = (Calibration.CALIBRATED, Calibration.RECALIBRATED)


@dataclass
class CalibrationCheck:
    status: Calibration
    ece: float | None = None
    """ECE of the probabilities the estimate uses (raw, or isotonic when recalibrated) on the check rows."""
    bound: float | None = None
    """The ``quantile`` of the ECE a calibrated model shows by chance on those probabilities."""
    raw_ece: float | None = None
    raw_bound: float | None = None
    n: int = 0
    positives: int = 0
    reason: str = ""


@dataclass
class PerformanceEstimate:
    threshold: float
    n: int
    auc: float | None
    precision: float | None
    recall: float | None
    auc_interval: tuple[float, float] | None = None
    """5-95 % of the realised AUC if labels were drawn from the calibrated probabilities (sampling spread)."""
    precision_interval: tuple[float, float] | None = None
    recall_interval: tuple[float, float] | None = None
    predicted_positives: int = 0
    expected_positives: float = 0.0
    calibration: CalibrationCheck = field(default_factory=lambda: CalibrationCheck(Calibration.UNCHECKED))
    trusted: bool = False
    reason: str = ""


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """NannyML's ECE: rows sorted by ``p`` in ``bins`` equal-count bins, sum of share x |mean p - mean y|."""
    return float(_ece(np.asarray(y, np.float64)[None, :], np.asarray(p, np.float64), bins)[0])


def _ece(y: np.ndarray, p: np.ndarray, bins: int) -> np.ndarray:
    """ECE of each row of ``y`` (``[draws, n]``) against ``p`` (``[n]``)."""
    n = len(p)
    if n < 2 * bins:
        bins = max(n // 2, 1)
    order = np.argsort(p, kind="stable")
    p, y = p[order], y[:, order]
    edges = np.arange(0, n, n // bins)[:bins]  # width n // bins, the last bin takes the remainder
    size = np.diff(np.r_[edges, n])
    mean_p = np.add.reduceat(p, edges) / size
    mean_y = np.add.reduceat(y, edges, axis=1) / size
    return (np.abs(mean_y - mean_p) * size / n).sum(axis=1)


def ece_bound(p: np.ndarray, bins: int = 10, quantile: float = 0.99, draws: int = 500, seed: int = 0) -> float:
    """The ``quantile`` of the ECE of labels drawn as Bernoulli(``p``): what a calibrated model shows by chance."""
    p = np.asarray(p, np.float64)
    y = np.random.default_rng(seed).random((draws, len(p))) < p
    return float(np.quantile(_ece(y.astype(np.float64), p, bins), quantile))


class Calibrator:
    """Identity, or isotonic regression from raw score to probability (scikit-learn, clipped out of range)."""

    def __init__(self, isotonic: Any = None):
        self.isotonic = isotonic

    @classmethod
    def fit(cls, y: np.ndarray, score: np.ndarray) -> Calibrator:
        from sklearn.isotonic import IsotonicRegression

        return cls(IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(score, y))

    def __call__(self, score: np.ndarray) -> np.ndarray:
        score = np.asarray(score, np.float64)
        return score if self.isotonic is None else np.asarray(self.isotonic.predict(score), np.float64)


def check_calibration(y_fit: np.ndarray, score_fit: np.ndarray, y_check: np.ndarray, score_check: np.ndarray, *,
                      bins: int = 10, quantile: float = 0.99, seed: int = 0) -> tuple[CalibrationCheck, Calibrator]:
    """Are the scores probabilities on the check rows? If not, does isotonic regression fitted on the fit rows
    make them so? Returns the verdict and the calibrator to apply (identity unless recalibrated; when
    recalibrated, refitted on fit and check rows together).

    Args:
        y_fit, score_fit: labelled rows to fit a calibrator on (the validation split).
        y_check, score_check: labelled held-out rows the check is decided on (the test split).
    """
    y_check, score_check = np.asarray(y_check, np.float64), np.asarray(score_check, np.float64)
    n, pos = len(y_check), int(y_check.sum())
    if n < 2 * bins or pos == 0:
        return CalibrationCheck(Calibration.UNCHECKED, n=n, positives=pos,
                                reason=f"{n} labelled check rows with {pos} positives: too few to check calibration"
                                ), Calibrator()
    raw_ece = expected_calibration_error(y_check, score_check, bins)
    raw_bound = ece_bound(score_check, bins, quantile, seed=seed)
    common = dict(raw_ece=raw_ece, raw_bound=raw_bound, n=n, positives=pos)
    if raw_ece <= raw_bound:
        return CalibrationCheck(Calibration.CALIBRATED, ece=raw_ece, bound=raw_bound, **common,
                                reason=f"raw scores calibrated: ECE {raw_ece:.2g} <= {raw_bound:.2g} (the "
                                       f"{quantile:.0%} of a calibrated model's) on {n} rows, {pos} positives"
                                ), Calibrator()
    y_fit = np.asarray(y_fit, np.float64)
    if len(y_fit) == 0 or y_fit.sum() == 0:
        return CalibrationCheck(Calibration.MISCALIBRATED, **common,
                                reason=f"raw scores miscalibrated (ECE {raw_ece:.2g} > {raw_bound:.2g}) and no "
                                       f"labelled positives to fit a calibrator on"), Calibrator()
    p_check = Calibrator.fit(y_fit, score_fit)(score_check)
    ece, bound = expected_calibration_error(y_check, p_check, bins), ece_bound(p_check, bins, quantile, seed=seed)
    if ece <= bound:
        both = Calibrator.fit(np.r_[y_fit, y_check], np.r_[np.asarray(score_fit, np.float64), score_check])
        return CalibrationCheck(Calibration.RECALIBRATED, ece=ece, bound=bound, **common,
                                reason=f"raw scores miscalibrated (ECE {raw_ece:.2g} > {raw_bound:.2g}); isotonic "
                                       f"regression fitted on {len(y_fit)} validation rows passes on {n} test rows "
                                       f"(ECE {ece:.2g} <= {bound:.2g})"), both
    return CalibrationCheck(Calibration.MISCALIBRATED, ece=ece, bound=bound, **common,
                            reason=f"miscalibrated: raw ECE {raw_ece:.2g} > {raw_bound:.2g}, isotonic ECE {ece:.2g} > "
                                   f"{bound:.2g} on {n} test rows"), Calibrator()


def estimate(p: np.ndarray, score: np.ndarray, threshold: float, *, draws: int = 200,
             seed: int = 0) -> dict[str, Any]:
    """CBPE on unlabelled rows: expected ROC AUC, precision and recall at ``threshold``.

    ``p``: calibrated probabilities; ``score``: the model's own output, which the decision (``score >=
    threshold``) and the ROC ordering use. The intervals are the 5-95 % of the metrics realised on ``draws`` label
    sets drawn as Bernoulli(``p``): how far a day's realised value may sit from the estimate by chance alone.
    """
    p, score = np.asarray(p, np.float64), np.asarray(score, np.float64)
    if p.shape != score.shape or p.ndim != 1:
        raise ValueError(f"p {p.shape} and score {score.shape} must be equal-length vectors")
    pred = score >= threshold
    tp, fn = p[pred].sum(), p[~pred].sum()
    fp = (1 - p[pred]).sum()
    out: dict[str, Any] = {"n": len(p), "predicted_positives": int(pred.sum()), "expected_positives": float(p.sum()),
                           "precision": float(tp / (tp + fp)) if pred.any() else None,
                           "recall": float(tp / (tp + fn)) if tp + fn > 0 else None,
                           "auc": _expected_auc(p, score)}
    y = np.random.default_rng(seed).random((draws, len(p))) < p
    npos = y.sum(axis=1)
    ranks = _average_ranks(score)
    ok = (npos > 0) & (npos < len(p))
    auc = ((y[ok] @ ranks) - npos[ok] * (npos[ok] + 1) / 2) / (npos[ok] * (len(p) - npos[ok]))
    tp_draw = y[:, pred].sum(axis=1)
    prec = tp_draw / pred.sum() if pred.any() else np.array([])
    rec = tp_draw[npos > 0] / npos[npos > 0]
    for name, values in (("auc", auc), ("precision", prec), ("recall", rec)):
        out[f"{name}_interval"] = (tuple(float(v) for v in np.quantile(values, [0.05, 0.95]))
                                   if len(values) else None)
    return out


def _expected_auc(p: np.ndarray, score: np.ndarray) -> float | None:
    """NannyML's ``estimate_roc_auc``: expected TP and FP counts cumulated down the score order, trapezoids."""
    order = np.argsort(score, kind="stable")[::-1]
    tps = np.r_[0.0, np.cumsum(p[order])]
    fps = np.r_[0.0, np.arange(1, len(p) + 1) - tps[1:]]
    if tps[-1] <= 0 or fps[-1] <= 0:
        return None
    return float(np.trapezoid(tps / tps[-1], fps / fps[-1]))


def _average_ranks(x: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(x, method="average")


def realised(y: np.ndarray, score: np.ndarray, threshold: float) -> dict[str, float | None]:
    """The same three metrics once the labels are known (scikit-learn)."""
    from sklearn.metrics import roc_auc_score

    y, score = np.asarray(y).astype(bool), np.asarray(score, np.float64)
    pred = score >= threshold
    tp = int((y & pred).sum())
    return {"auc": float(roc_auc_score(y, score)) if 0 < y.sum() < len(y) else None,
            "precision": tp / int(pred.sum()) if pred.any() else None,
            "recall": tp / int(y.sum()) if y.any() else None, "n": len(y), "positives": int(y.sum())}


def estimate_performance(reference: Any, current_score: np.ndarray, threshold: float, *, label: str = "label",
                         score: str = "prediction", split: str = "split", draws: int = 200,
                         seed: int = 0) -> PerformanceEstimate:
    """Check calibration on the labelled reference rows, then estimate on the current (unlabelled) scores.

    ``reference``: a DataFrame with ``score`` and ``label`` (NaN or missing: no label) and, where known, ``split``
    (``val`` rows fit a calibrator, ``test`` rows decide the check; rows of other splits, such as the training
    sample, are not used: their scores are in-sample). Without ``split`` the labelled rows' first half fits and
    the second half checks.
    """
    current_score = np.asarray(current_score, np.float64)
    if label not in reference.columns or reference[label].notna().sum() == 0:
        check, cal = CalibrationCheck(Calibration.UNCHECKED, reason="the reference window has no labels (a champion "
                                      "registered before labels were stored with it)"), Calibrator()
    else:
        ref = reference[reference[label].notna()]
        if split in ref.columns:
            fit, chk = ref[ref[split] == "val"], ref[ref[split] == "test"]
        else:
            fit, chk = ref.iloc[: len(ref) // 2], ref.iloc[len(ref) // 2:]
        check, cal = check_calibration(fit[label].to_numpy(), fit[score].to_numpy(), chk[label].to_numpy(),
                                       chk[score].to_numpy(), seed=seed)
    if len(current_score) == 0:
        return PerformanceEstimate(threshold, 0, None, None, None, calibration=check, reason="no rows to estimate on")
    figures = estimate(cal(current_score), current_score, threshold, draws=draws, seed=seed)
    trusted = check.status in TRUSTED
    reason = check.reason if trusted else f"not trusted: {check.reason}"
    return PerformanceEstimate(threshold=threshold, calibration=check, trusted=trusted, reason=reason, **figures)


def add_gauges(registry: Any, labels: dict[str, str], est: PerformanceEstimate) -> None:
    """The estimate as Prometheus gauges in ``registry`` (beside the drift check's). The metric gauges are written
    only when the estimate is trusted; ``factory_estimate_calibrated`` says which."""
    from prometheus_client import Gauge

    keys = list(labels)
    Gauge("factory_estimate_calibrated", "1 when the label-free estimate's calibration check passed (raw or "
          "isotonic), 0 when it failed or could not be checked", keys, registry=registry).labels(**labels).set(
        float(est.trusted))
    if est.calibration.ece is not None or est.calibration.raw_ece is not None:
        Gauge("factory_estimate_calibration_error", "Expected calibration error of the estimate's probabilities on "
              "the reference's test rows", keys, registry=registry).labels(**labels).set(
            est.calibration.ece if est.calibration.ece is not None else est.calibration.raw_ece)
    if not est.trusted:
        return
    for name, what in (("auc", "ROC AUC"), ("precision", "precision at the family threshold"),
                       ("recall", "recall at the family threshold")):
        value = getattr(est, name)
        if value is not None:
            Gauge(f"factory_estimated_{name}", f"Label-free (CBPE) estimate of {what} on the last check's window",
                  keys, registry=registry).labels(**labels).set(value)
