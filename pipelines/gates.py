"""Gates: accuracy against the FP32 reference, engine parity against its ONNX, latency, and selection.

Every function here returns a verdict (checks with values, bounds and reasons); a
rejected candidate is data, not an exception. Bounds come from ``cfg.gates``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .config import Family, FamilyGates
from .records import Record, Status

PRECISION_RANK = {"fp32": 3, "fp16": 2, "int8": 1}
"""Higher wins a latency tie."""


class Check(Record):
    name: str
    ok: bool
    value: float | None = None
    bound: float | None = None
    detail: str = ""


class _Checked(Record):
    checks: list[Check]

    @property
    def reasons(self) -> list[str]:
        """The sentences of the failed checks."""
        return [c.detail for c in self.checks if not c.ok]


class Verdict(_Checked):
    family: str
    precision: str
    status: Status
    metrics: dict[str, float] = {}


def _verdict(family: str, precision: str, checks: list[Check], metrics: dict[str, float] | None = None) -> Verdict:
    status = Status.OK if all(c.ok for c in checks) else Status.REJECTED
    return Verdict(family=family, precision=precision, status=status, checks=checks, metrics=metrics or {})


def tail_mask(family: Family, split: Any, quantile: float = 0.95) -> np.ndarray:
    """The extreme-move subset of a split: where the seeds warn INT8 misjudges markets.

    market_alert: windows holding a flash move or an abnormal move ahead; price_direction:
    flash-move windows and the top 5 % of |forward return|; fraud_risk: the frauds.
    """
    if family is Family.FRAUD_RISK:
        return np.asarray(split.y) > 0.5
    mask = np.asarray(split.anomaly).astype(bool)
    if family is Family.MARKET_ALERT:
        return mask | (np.asarray(split.y) > 0.5)
    r = np.abs(np.asarray(split.fwd_ret_bps, dtype=np.float64))
    finite = np.isfinite(r)
    if finite.any():
        mask = mask | (finite & (r >= np.quantile(r[finite], quantile)))
    return mask


def _brier(p: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean((np.asarray(p, dtype=np.float64) - np.asarray(y, dtype=np.float64)) ** 2))


def accuracy_verdict(family: Family, precision: str, split: Any, prob_ref: np.ndarray, prob: np.ndarray,
                     bounds: FamilyGates, threshold: float) -> Verdict:
    """Compare a candidate's outputs ``prob`` with the FP32 reference's on the same (test) split."""
    from .models import positive_probability
    from .train import evaluate_split

    bad = int((~np.isfinite(prob)).sum())
    if bad:
        return _verdict(family, precision, [Check(name="finite", ok=False, value=bad, bound=0,
                                                  detail=f"{bad} NaN/inf outputs on the test split")])
    ref = evaluate_split(family, prob_ref, split, threshold)
    got = evaluate_split(family, prob, split, threshold)
    checks = [Check(name="finite", ok=True, value=0, bound=0)]

    def drop(name: str, key: str, bound: float | None) -> None:
        if bound is None:
            return
        d = ref[key] - got[key]
        checks.append(Check(name=name, ok=d <= bound, value=d, bound=bound,
                            detail=f"{key} dropped {d:.4f} vs FP32 ({ref[key]:.4f} → {got[key]:.4f}), bound {bound}"))

    drop("auc_drop", "auc", bounds.auc_drop_max)
    drop("accuracy_drop", "accuracy", bounds.accuracy_drop_max)
    drop("precision_drop", "precision", bounds.precision_drop_max)
    drop("recall_drop", "recall", bounds.recall_drop_max)
    if bounds.sharpe_rel_tol is not None and "sharpe" in ref:
        base = abs(ref["sharpe"])
        d = abs(got["sharpe"] - ref["sharpe"])
        rel = d / base if base > 0 else 0.0
        checks.append(Check(name="sharpe", ok=rel <= bounds.sharpe_rel_tol, value=rel, bound=bounds.sharpe_rel_tol,
                            detail=f"backtest Sharpe {got['sharpe']:.2f} vs FP32 {ref['sharpe']:.2f} "
                                   f"({rel:.1%} off, bound ±{bounds.sharpe_rel_tol:.0%})"))
    tail = tail_mask(family, split)
    y = np.asarray(split.y)
    if tail.any():
        p_ref, p_got = (np.asarray(positive_probability(family, a))[tail] for a in (prob_ref, prob))
        inc = _brier(p_got, y[tail]) - _brier(p_ref, y[tail])
        checks.append(Check(name="tail_brier", ok=inc <= bounds.tail_brier_increase_max, value=inc,
                            bound=bounds.tail_brier_increase_max,
                            detail=f"on {int(tail.sum())} extreme-move windows the Brier score worsened by {inc:.4f} "
                                   f"(mean |Δp| {np.abs(p_got - p_ref).mean():.4f}), bound "
                                   f"{bounds.tail_brier_increase_max}"))
    else:
        checks.append(Check(name="tail_brier", ok=True, detail="no extreme-move windows in the test split"))
    metrics = {f"{k}": float(v) for k, v in got.items()} | {f"ref_{k}": float(v) for k, v in ref.items()}
    metrics["tail_n"] = float(tail.sum())
    return _verdict(family, precision, checks, metrics)


def parity_check(candidate: Any, reference: Any, batches: list[np.ndarray], atol: float, rtol: float,
                 input_name: str = "features") -> Check:
    """Engine vs its ONNX variant through Polygraphy's comparator (both as Polygraphy runners)."""
    from polygraphy.comparator import Comparator, CompareFunc
    from polygraphy.logger import G_LOGGER

    G_LOGGER.module_severity = G_LOGGER.WARNING  # per-iteration INFO lines would flood the task log
    feeds = [{input_name: b} for b in batches]
    results = Comparator.run([reference, candidate], data_loader=feeds)
    ok = bool(Comparator.compare_accuracy(results, compare_func=CompareFunc.simple(atol=atol, rtol=rtol)))
    (_, ref_iters), (_, got_iters) = results[0], results[1]
    worst, nonfinite = 0.0, 0
    for r, g in zip(ref_iters, got_iters):
        for name in r.keys():
            a, b = np.asarray(r[name], dtype=np.float64), np.asarray(g[name], dtype=np.float64)
            nonfinite += int((~np.isfinite(b)).sum())
            if np.isfinite(b).all():
                worst = max(worst, float(np.max(np.abs(a - b))))
    if nonfinite:
        return Check(name="parity", ok=False, value=float("nan"), bound=atol,
                     detail=f"engine emitted {nonfinite} NaN/inf values on the validation slice")
    return Check(name="parity", ok=ok and worst <= atol + rtol, value=worst, bound=atol,
                 detail=f"engine vs ONNX max |Δ| {worst:.2e} (atol {atol}, rtol {rtol})")


def polygraphy_runner(engine_dir: Path, backend: str, engine_file: str) -> Any:
    """A Polygraphy runner for a built engine: ONNX Runtime CPU session or TensorRT engine."""
    if backend == "onnxruntime":
        from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx

        return OnnxrtRunner(SessionFromOnnx(str(Path(engine_dir) / engine_file), providers=["cpu"]))
    from polygraphy.backend.common import BytesFromPath
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    return TrtRunner(EngineFromBytes(BytesFromPath(str(Path(engine_dir) / engine_file))))


def onnx_runner(path: Path) -> Any:
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx

    return OnnxrtRunner(SessionFromOnnx(str(path), providers=["cpu"]))


def latency_checks(p99_ms: float, budget_ms: float, champion_p99_ms: float | None, max_regression: float,
                   noise_floor_ms: float = 0.0) -> list[Check]:
    """Batch-1 p99 within the family's budget, and within ``max_regression`` of the champion's (same run).

    A regression counts only when it also exceeds ``noise_floor_ms`` in absolute terms.
    """
    checks = [Check(name="p99_budget", ok=p99_ms <= budget_ms, value=p99_ms, bound=budget_ms,
                    detail=f"p99 {p99_ms:.3f} ms over the {budget_ms} ms budget")]
    if champion_p99_ms is not None:
        limit = max(champion_p99_ms * (1 + max_regression), champion_p99_ms + noise_floor_ms)
        checks.append(Check(name="p99_vs_champion", ok=p99_ms <= limit, value=p99_ms / champion_p99_ms - 1,
                            bound=max_regression,
                            detail=f"p99 {p99_ms:.3f} ms is {p99_ms / champion_p99_ms - 1:+.1%} vs the champion's "
                                   f"{champion_p99_ms:.3f} ms (bound +{max_regression:.0%}, at least "
                                   f"+{noise_floor_ms} ms)"))
    return checks


class Candidate(_Checked):
    precision: str
    engine_dir: str
    version: str
    status: Status
    auc: float | None = None
    p99_ms: float | None = None
    """Batch-1 p99."""
    benchmark: dict[str, Any] = {}
    outcome: str = ""
    """``selected``, or why it lost."""


def select(candidates: list[Candidate], tie_tolerance: float) -> tuple[Candidate | None, list[Candidate]]:
    """Lowest batch-1 p99 among passing candidates; within ``tie_tolerance`` the higher precision wins.

    Returns the winner (None when nothing passed) and every candidate with its ``outcome``.
    """
    passing = [c for c in candidates if c.status is Status.OK and c.p99_ms is not None]
    winner = None
    if passing:
        fastest = min(c.p99_ms for c in passing)
        tied = [c for c in passing if c.p99_ms <= fastest * (1 + tie_tolerance)]
        winner = max(tied, key=lambda c: (PRECISION_RANK.get(c.precision, 0), -c.p99_ms))
    out = []
    for c in candidates:
        if c is winner:
            outcome = "selected"
        elif c.status is not Status.OK:
            outcome = "rejected: " + "; ".join(c.reasons)
        elif c.p99_ms <= fastest * (1 + tie_tolerance):
            outcome = (f"tie with {winner.precision} (p99 {c.p99_ms:.3f} vs {winner.p99_ms:.3f} ms, within "
                       f"{tie_tolerance:.0%}): the higher precision wins")
        else:
            outcome = f"slower: p99 {c.p99_ms:.3f} ms vs {winner.precision} {winner.p99_ms:.3f} ms"
        out.append(c.model_copy(update={"outcome": outcome}))
    chosen = next((c for c in out if c.outcome == "selected"), None)
    return chosen, out
