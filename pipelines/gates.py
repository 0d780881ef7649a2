"""Gates: every candidate (variant graph or built engine) scored on its own outputs against the FP32 PyTorch
reference, the champion compared paired on the same window, latency compared in interleaved rounds, selection.

Every function here returns a verdict (checks with values, bounds, intervals and reasons); a rejected
candidate is data, not an exception. Bounds come from ``cfg.gates``; the statistics from :mod:`.evidence`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from factory_core.config import (
    AgreementBounds,
    FactoryConfig,
    Family,
    FamilyGates,
    GateConfig,
    TargetConfig,
)
from factory_core.contracts import (
    AccuracyReport,
    Candidate,
    Champion,
    Check,
    Decision,
    Manifest,
    Status,
    TargetGate,
    Verdict,
    failed,
    passed,
    undecided,
)
from factory_core.families import spec
from factory_core.precisions import PRECISIONS

from .evidence import Agreement, agreement, metric_rows, paired_bootstrap

log = logging.getLogger(__name__)

def _verdict(family: str, precision: str, checks: list[Check], metrics: dict[str, float] | None = None,
             onnx_sha256: str = "") -> Verdict:
    status = Status.OK if all(c.ok for c in checks) else Status.REJECTED
    return Verdict(family=family, precision=precision, status=status, checks=checks, metrics=metrics or {},
                   onnx_sha256=onnx_sha256)


def tail_mask(family: Family, split: Any, quantile: float = 0.95) -> np.ndarray:
    """The extreme-move subset of a split: where the seeds warn INT8 misjudges markets.

    The one definition, shared by INT8 calibration (the windows kept in the calibration set) and
    the gates. market_alert: windows holding a flash move or an abnormal move ahead; price_direction:
    flash-move windows and the top 5 % of |forward return|; fraud_risk: the frauds. A flash move
    (``split.flash``) is computed from prices and sizes (:func:`pipelines.features.market_features`), never
    from the simulator's ground truth, so a real feed's tail means what the simulator's does.
    """
    rule = spec(family).tail
    positives = np.asarray(split.y) > 0.5
    if rule == "positives":
        return positives
    mask = np.asarray(split.flash).astype(bool)
    if rule == "flash_or_positive":
        return mask | positives
    r = np.abs(np.asarray(split.fwd_ret_bps, dtype=np.float64))
    finite = np.isfinite(r)
    if finite.any():
        mask = mask | (finite & (r >= np.quantile(r[finite], quantile)))
    return mask


def agreement_checks(a: Agreement, tail: Agreement | None, b: AgreementBounds, precision: str,
                     min_events: int) -> list[Check]:
    """Candidate vs FP32 PyTorch on the same windows, against bounds measured on healthy variants."""

    def bound(name: str, value: float, limit: float, sentence: str, n: int) -> Check:
        ok = value <= limit
        return Check(name=name, decision=Decision.PASS if ok else Decision.FAIL, value=value, bound=limit, n=n,
                     detail=f"{sentence} {value:.2e} vs FP32 on {n} windows, bound {limit:.2e} ({precision})")

    checks = [bound("agree_mean_abs", a.mean_abs, b.mean_abs, "mean |Δp|", a.n),
              bound("agree_p99_abs", a.p99_abs, b.p99_abs, "p99 |Δp|", a.n),
              bound("agree_max_abs", a.max_abs, b.max_abs, "max |Δp|", a.n),
              bound("calibration_shift", abs(a.bias), b.bias, "|mean Δp| (calibration shift)", a.n),
              bound("decision_flips", a.flip_rate, b.flip_rate,
                    f"{a.flips} flipped decisions ({a.new_alerts} new alerts); flip rate", a.n)]
    if tail is None or tail.n < min_events:
        checks.append(undecided("tail_agreement", f"cannot decide on the tail: {tail.n if tail else 0} "
                                f"extreme-move windows (< min_events {min_events})", n=tail.n if tail else 0))
    else:
        checks += [bound("tail_mean_abs", tail.mean_abs, b.tail_mean_abs, "on extreme-move windows, mean |Δp|",
                         tail.n),
                   bound("tail_calibration_shift", abs(tail.bias), b.tail_bias,
                         "on extreme-move windows, |mean Δp|", tail.n)]
    return checks


def delta_check(name: str, metric: str, y: np.ndarray, p_ref: np.ndarray, p: np.ndarray, threshold: float,
                margin: float, gates: GateConfig, *, events: int, events_what: str, relative: bool = False,
                higher_is_better: bool = True, champion: bool = False, **metric_kw: Any) -> Check:
    """A metric's degradation (reference − candidate; for Brier candidate − reference), paired bootstrap.

    Variant/engine vs FP32 (``champion=False``): fails only when the whole interval lies beyond ``margin``.
    Champion vs challenger (``champion=True``): fails when the challenger is worse with evidence (interval
    beyond the margin), passes when it is non-inferior (interval below the margin), else undecided.
    Too few events (positives, alerts, trades, tail windows) in either sample: undecided, naming them.
    """
    if events < gates.min_events:
        return undecided(name, f"{metric} cannot decide: {events_what} (< min_events {gates.min_events})",
                         n=events)
    sign = 1.0 if higher_is_better else -1.0

    def stat(idx: np.ndarray) -> np.ndarray:
        ref = metric_rows(metric, y, p_ref, threshold, idx, **metric_kw)
        got = metric_rows(metric, y, p, threshold, idx, **metric_kw)
        return sign * (ref - got)

    iv = paired_bootstrap(stat, len(y), resamples=gates.bootstrap_resamples, level=gates.confidence)
    if relative:
        base = abs(float(metric_rows(metric, y, p_ref, threshold, np.arange(len(y))[None, :], **metric_kw)[0]))
        scale = 1.0 / base if base > 0 else float("nan")
        point, lo, hi = iv.point * scale, iv.lo * scale, iv.hi * scale
    else:
        point, lo, hi = iv.point, iv.lo, iv.hi
    if not np.isfinite(lo):
        return undecided(name, f"{metric} cannot decide: undefined on the resamples ({events_what})", n=events)
    against = "the champion" if champion else "FP32"
    unit = "" if not relative else " (relative)"
    diff = f"{metric} degradation ({'champion − challenger' if champion else 'FP32 − candidate'}) {point:+.4f}{unit}"
    ci = f"{gates.confidence:.0%} CI [{lo:+.4f}, {hi:+.4f}]"
    if lo > margin:
        return failed(name, point, margin, ci=(lo, hi), n=len(y),
                      detail=f"{metric} worse than {against}: {diff}, {ci} entirely beyond the margin {margin} "
                             f"({events_what})")
    if champion and hi > margin:
        return undecided(name, f"{diff}, {ci} straddles the margin {margin}: this window cannot decide "
                               f"({events_what})", n=len(y), value=point, bound=margin, ci=(lo, hi))
    return passed(name, point, margin, ci=(lo, hi), n=len(y),
                  detail=f"{diff}, {ci}: {'non-inferior within' if champion else 'not shown beyond'} the margin "
                         f"{margin} ({events_what})")


SKILL_MIN_EVENTS = 5
"""Below this many positives (or negatives) on the test window no AUC interval means anything: no demonstrated
skill."""


def skill_check(family: Family, split: Any, prob: np.ndarray, gates: GateConfig) -> Check:
    """No demonstrated skill, no selection: the candidate's own test AUC must lie above chance (0.5) with the gates'
    confidence (percentile bootstrap over the test windows).

    The champion comparison cannot do this: on a window without signal (labels shuffled by a leak or a feed
    fault) the champion is at chance too, the paired interval straddles the margin, and an ``undecided → promote``
    policy would promote noise. This check is absolute.
    """
    from .models import positive_probability

    y = np.asarray(split.y) > 0.5
    p = np.asarray(positive_probability(family, prob), dtype=np.float64)
    npos, nneg = int(y.sum()), int((~y).sum())
    what = f"{npos} positives, {nneg} negatives"
    if min(npos, nneg) < SKILL_MIN_EVENTS:
        return failed("skill", None, 0.5, n=len(y),
                      detail=f"no demonstrated skill: {what} on the test window (< {SKILL_MIN_EVENTS}): an AUC "
                             f"cannot be told from chance")
    iv = paired_bootstrap(lambda idx: metric_rows("auc", y, p, 0.5, idx), len(y), resamples=gates.bootstrap_resamples,
                          level=gates.confidence)
    ci = f"{gates.confidence:.0%} CI [{iv.lo:.4f}, {iv.hi:.4f}]"
    if np.isfinite(iv.lo) and iv.lo > 0.5:
        return passed("skill", iv.point, 0.5, ci=(iv.lo, iv.hi), n=len(y),
                      detail=f"test AUC {iv.point:.4f}, {ci} above chance (0.5) ({what})")
    return failed("skill", iv.point, 0.5, ci=(iv.lo, iv.hi), n=len(y),
                  detail=f"no demonstrated skill: test AUC {iv.point:.4f}, {ci} does not lie above chance (0.5) ({what})")


def accuracy_verdict(family: Family, precision: str, split: Any, prob_ref: np.ndarray, prob: np.ndarray,
                     bounds: FamilyGates, threshold: float, gates: GateConfig, onnx_sha256: str = "") -> Verdict:
    """A candidate's own outputs ``prob`` against the FP32 PyTorch reference's on the same (test) windows.

    Rejects on: any NaN/inf output (every window is scored); agreement beyond the family's bounds for this
    precision (``bounds.agreement``, measured on healthy variants: |Δp| mean/p99/max, calibration shift, flipped
    decisions, the same on the tail); a metric degradation beyond its margin shown by a paired bootstrap.
    Undecided checks name their sample sizes.
    """
    from .models import positive_probability
    from .train import evaluate_split

    prob = np.asarray(prob)
    bad = int((~np.isfinite(prob)).sum())
    if bad:
        return _verdict(family, precision, [failed("finite", bad, 0, n=int(prob.shape[0]),
                                                   detail=f"{bad} NaN/inf outputs on {prob.shape[0]} test windows")],
                        onnx_sha256=onnx_sha256)
    y = np.asarray(split.y) > 0.5
    p_ref = np.asarray(positive_probability(family, prob_ref), dtype=np.float64)
    p = np.asarray(positive_probability(family, prob), dtype=np.float64)
    tail = tail_mask(family, split)
    agree = agreement(p_ref, p, threshold)
    agree_tail = agreement(p_ref[tail], p[tail], threshold) if tail.any() else None
    checks = [passed("finite", 0, 0, n=len(p), detail=f"all {len(p)} test windows finite")]
    checks += agreement_checks(agree, agree_tail, bounds.agreement[precision], precision, gates.min_events)

    npos, nneg = int(y.sum()), int((~y).sum())
    checks.append(delta_check("auc_drop", "auc", y, p_ref, p, threshold, bounds.auc_drop_max, gates,
                              events=min(npos, nneg), events_what=f"{npos} positives, {nneg} negatives"))
    checks.append(delta_check("accuracy_drop", "accuracy", y, p_ref, p, threshold, bounds.accuracy_drop_max, gates,
                              events=len(y), events_what=f"{len(y)} windows"))
    alerts_ref, alerts = int((p_ref >= threshold).sum()), int((p >= threshold).sum())
    if bounds.precision_drop_max is not None:
        checks.append(delta_check("precision_drop", "precision", y, p_ref, p, threshold, bounds.precision_drop_max,
                                  gates, events=min(alerts_ref, alerts),
                                  events_what=f"{alerts_ref} FP32 alerts vs {alerts} candidate alerts at {threshold}"))
    if bounds.recall_drop_max is not None:
        checks.append(delta_check("recall_drop", "recall", y, p_ref, p, threshold, bounds.recall_drop_max, gates,
                                  events=min(npos, max(alerts_ref, alerts)),
                                  events_what=f"{npos} positives; {alerts_ref} FP32 vs {alerts} candidate alerts "
                                              f"at {threshold}"))
    if bounds.sharpe_rel_tol is not None:
        from .evaluate import BACKTEST_MARGIN, sharpe_annualisation

        ret = np.asarray(split.fwd_ret_bps, dtype=np.float64)
        trades = [int((np.abs(q - 0.5) > BACKTEST_MARGIN).sum()) for q in (p_ref, p)]
        annualise = sharpe_annualisation(max(trades[0], 1), split.ts)
        checks.append(delta_check("sharpe", "sharpe", y, p_ref, p, threshold, bounds.sharpe_rel_tol, gates,
                                  events=min(trades), events_what=f"{trades[0]} FP32 vs {trades[1]} candidate trades",
                                  relative=True, ret=ret, annualise=annualise))
    nt = int(tail.sum())
    checks.append(delta_check("tail_brier", "brier", y[tail], p_ref[tail], p[tail], threshold,
                              bounds.tail_brier_increase_max, gates, events=nt, higher_is_better=False,
                              events_what=f"{nt} extreme-move windows"))
    ref, got = evaluate_split(family, prob_ref, split, threshold), evaluate_split(family, prob, split, threshold)
    metrics = {k: float(v) for k, v in got.items()} | {f"ref_{k}": float(v) for k, v in ref.items()}
    metrics |= {f"agree_{k}": v for k, v in agree.to_dict().items()}
    if agree_tail is not None:
        metrics |= {f"tail_agree_{k}": v for k, v in agree_tail.to_dict().items()}
    metrics["tail_n"] = float(nt)
    return _verdict(family, precision, checks, metrics, onnx_sha256=onnx_sha256)


def champion_check(family: Family, split: Any, prob_champion: np.ndarray, prob: np.ndarray, bounds: FamilyGates,
                   threshold: float, gates: GateConfig, champion_age_days: int | None = None) -> Check:
    """Challenger vs champion on today's test window, paired: AUC non-inferiority within the family's margin.

    ``undecided`` (too few positives, or an interval straddling the margin) never rejects the engine; whether it
    may replace the champion is ``gates.champion.undecided``: under ``promote`` it may, under ``keep_champion`` it
    is registered as challenger only (``holds_champion``), unless the champion is ``champion_age_days`` old and
    that reaches ``gates.champion.refresh_after_days``. ``worse`` on evidence rejects under either policy.
    """
    from .models import positive_probability

    y = np.asarray(split.y) > 0.5
    pc = np.asarray(positive_probability(family, prob_champion), dtype=np.float64)
    p = np.asarray(positive_probability(family, prob), dtype=np.float64)
    bad = int((~np.isfinite(pc)).sum())
    if bad:
        return undecided("vs_champion", f"the champion emitted {bad} NaN/inf outputs on today's window: "
                                        "not comparable", gating=False)
    npos, nneg = int(y.sum()), int((~y).sum())
    c = delta_check("vs_champion", "auc", y, pc, p, threshold, bounds.champion_auc_margin, gates,
                    events=min(npos, nneg), events_what=f"{npos} positives, {nneg} negatives", champion=True)
    if c.decision is Decision.UNDECIDED:
        policy = gates.champion
        hold = policy.undecided == "keep_champion"
        why = f"; policy gates.champion.undecided={policy.undecided}"
        if hold and policy.refresh_after_days is not None and champion_age_days is not None \
                and champion_age_days >= policy.refresh_after_days:
            hold = False
            why += (f", but the champion is {champion_age_days} days old (refresh_after_days "
                    f"{policy.refresh_after_days}): refreshed")
        elif hold:
            why += ": the champion stays, this engine is registered as challenger only"
        c = c.model_copy(update={"holds_champion": hold, "detail": c.detail + why})
    return c


def parity_check(candidate: Any, reference: Any, batches: list[np.ndarray], atol: float, rtol: float) -> Check:
    """Engine vs its ONNX variant through Polygraphy's comparator.

    Both are our runners (:mod:`model_registry.runners`), seen as Polygraphy runners through
    :func:`~model_registry.runners.as_polygraphy`: the comparator runs the sessions and engines the gates time and
    serving runs. The feed is named after the reference's own first input."""
    from polygraphy.comparator import Comparator, CompareFunc
    from polygraphy.logger import G_LOGGER

    from model_registry.runners import as_polygraphy

    G_LOGGER.module_severity = G_LOGGER.WARNING  # per-iteration INFO lines would flood the task log
    input_name = reference.activate().inputs()[0].name
    feeds = [{input_name: b} for b in batches]
    results = Comparator.run([as_polygraphy(reference), as_polygraphy(candidate)], data_loader=feeds)
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
        return failed("parity", float("nan"), atol, detail=f"engine emitted {nonfinite} NaN/inf values on the "
                                                           f"{sum(len(b) for b in batches)} parity windows")
    # A diagnostic: the engine is gated on its own outputs against FP32 PyTorch, not on this.
    return Check(name="parity", decision=Decision.PASS if ok and worst <= atol + rtol else Decision.FAIL, value=worst,
                 bound=atol, gating=False, n=sum(len(b) for b in batches),
                 detail=f"diagnostic: engine vs its ONNX max |Δ| {worst:.2e} (atol {atol}, rtol {rtol})")


P99_MIN_CALLS = 100
"""Calls per round below which a round's p99 is its maximum, too noisy to compare with the champion's."""


def latency_checks(cand: dict[str, Any], budget_ms: float, champion: dict[str, Any] | None, max_regression: float,
                   noise_floor_ms: float, level: float) -> list[Check]:
    """Batch-1 latency from interleaved rounds (:func:`pipelines.benchmark.benchmark_interleaved`).

    Budget: the p99 over rounds (geometric mean, t interval on logs) fails only when the whole interval is
    over the budget; an interval that straddles it is ``undecided`` and recorded. Regression: the per-round
    ratios to the champion (paired: same round, same host state) of p50 and of p99; a regression rejects
    when the lower end of a ratio's interval exceeds ``1 + max_regression`` and the pooled difference
    exceeds ``noise_floor_ms``.
    """
    from .evidence import log_mean_interval

    b1 = cand["batch1"]
    p99 = log_mean_interval(np.asarray(b1["rounds_p99_ms"]), level)
    k = len(b1["rounds_p99_ms"])
    ci = f"{level:.0%} CI [{p99.lo:.3f}, {p99.hi:.3f}] ms over {k} rounds"
    if p99.lo > budget_ms:
        checks = [failed("p99_budget", p99.point, budget_ms, ci=(p99.lo, p99.hi), n=k,
                         detail=f"p99 {p99.point:.3f} ms over the {budget_ms} ms budget, {ci}")]
    elif p99.hi > budget_ms:
        checks = [undecided("p99_budget", f"p99 {p99.point:.3f} ms, {ci} straddles the {budget_ms} ms budget", n=k,
                            value=p99.point, bound=budget_ms, ci=(p99.lo, p99.hi))]
    else:
        checks = [passed("p99_budget", p99.point, budget_ms, ci=(p99.lo, p99.hi), n=k,
                         detail=f"p99 {p99.point:.3f} ms within the {budget_ms} ms budget, {ci}")]
    if champion is None:
        return checks
    cb1 = champion["batch1"]
    calls = min(cand.get("host", {}).get("calls_per_round", P99_MIN_CALLS),
                champion.get("host", {}).get("calls_per_round", P99_MIN_CALLS))
    for stat in ("p50", "p99"):
        if stat == "p99" and calls < P99_MIN_CALLS:
            checks.append(undecided("p99_vs_champion", f"p99 not compared: {calls} calls per round, a p99 needs "
                                    f"at least {P99_MIN_CALLS} (raise benchmark.iters)", n=k))
            continue
        mine, theirs = np.asarray(b1[f"rounds_{stat}_ms"]), np.asarray(cb1[f"rounds_{stat}_ms"])
        ratio = log_mean_interval(mine / theirs, level)
        diff = b1[f"{stat}_ms"] - cb1[f"{stat}_ms"]
        text = (f"{stat} {b1[f'{stat}_ms']:.3f} ms vs the champion's {cb1[f'{stat}_ms']:.3f} ms: ratio "
                f"{ratio.point:.3f}, {level:.0%} CI [{ratio.lo:.3f}, {ratio.hi:.3f}] over {k} interleaved rounds "
                f"(bound {1 + max_regression:.2f}, and > +{noise_floor_ms} ms)")
        worse = ratio.lo > 1 + max_regression and diff > noise_floor_ms
        checks.append(Check(name=f"{stat}_vs_champion", decision=Decision.FAIL if worse else Decision.PASS,
                            value=ratio.point - 1, bound=max_regression, ci=(ratio.lo - 1, ratio.hi - 1), n=k,
                            detail=text))
    return checks


def select(candidates: list[Candidate], tie_tolerance: float) -> tuple[Candidate | None, list[Candidate]]:
    """Lowest batch-1 p99 among passing candidates; within ``tie_tolerance`` the higher precision wins.

    Returns the winner (None when nothing passed) and every candidate with its ``outcome``.
    """
    passing = [c for c in candidates if c.status is Status.OK and c.p99_ms is not None]
    winner = None
    if passing:
        fastest = min(c.p99_ms for c in passing)
        tied = [c for c in passing if c.p99_ms <= fastest * (1 + tie_tolerance)]
        winner = max(tied, key=lambda c: (PRECISIONS[c.precision].rank, -c.p99_ms))
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


def _age_days(then: str | None, night: str | None) -> int | None:
    """Whole days from a champion's night to tonight's (None where either is unknown)."""
    import datetime as dt

    if not then or not night:
        return None
    try:
        return (dt.date.fromisoformat(night) - dt.date.fromisoformat(then)).days
    except ValueError:
        return None


def gate_engines(cfg: FactoryConfig, family: Family, target: TargetConfig, engines: list[tuple[str, Path]],
                 acc: AccuracyReport, splits: dict[str, Any], prob_ref: np.ndarray,
                 champion: Champion, night: str | None = None) -> TargetGate:
    """Every engine of one family on ``target``, on this worker, scored on its own outputs; then the selection.

    Args:
        engines: ``(URI in the run root, verified local copy)`` per built engine.
        acc: the family's accuracy verdicts (lineage: an engine must be built from the graph that passed).
        splits: the family's ``val`` and ``test`` windows.
        prob_ref: FP32 PyTorch outputs on the test windows.
        champion: the registry's champion, with a local ``engine_dir`` when there is one to measure.

    Per engine: lineage, its outputs on every test window against FP32 PyTorch (the accuracy gate's checks),
    parity with its ONNX (diagnostic; NaN rejects), latency interleaved with the champion's in rounds, and the
    paired champion comparison. Selection: lowest batch-1 p99 among candidates that pass every gate.
    """
    from model_registry.runners import OnnxRuntimeRunner, infer_batched, open_engine

    from .benchmark import benchmark_interleaved
    from .engines.base import verify_manifest

    fam, name = Family(family), target.name
    val, test = splits["val"], splits["test"]
    bounds, gpu = cfg.gates.families[fam], target.backend == "tensorrt"
    budget = bounds.p99_budget_ms["gpu" if gpu else "cpu"]
    threshold = cfg.families[fam].threshold

    def runner(d: Path, m: Manifest) -> Any:
        return open_engine(d, m, cuda_graph=cfg.benchmark.cuda_graphs)

    runners, champ_prob = {}, None
    if champion.engine_dir:
        try:  # the champion, on this host, on today's test window
            cm = verify_manifest(Path(champion.engine_dir))
            cr = runner(Path(champion.engine_dir), cm)
            champ_prob = infer_batched(cr, test.x, 1024)
            runners["champion"] = cr
            champion = champion.model_copy(update={"comparable": True})
        except Exception as exc:  # another input shape, a corrupted copy, a foreign engine
            champion = champion.model_copy(update={"comparable": False, "reason": f"{type(exc).__name__}: {exc}"})
            log.warning("%s/%s: champion %s not comparable: %s", fam, name, champion.version, exc)

    verdicts = {v.precision: v for v in acc.verdicts}
    x_par = val.x[: cfg.gates.parity_samples]
    batches = [np.ascontiguousarray(x_par[i:i + 128]) for i in range(0, len(x_par), 128)]
    scored = []
    for uri, d in engines:
        m = verify_manifest(d)
        verdict = verdicts.get(m.precision)
        checks = [passed("accuracy", detail=f"variant {m.precision} passed the accuracy gate")
                  if verdict is not None and verdict.status is Status.OK else
                  failed("accuracy", detail="accuracy gate: " + ("; ".join(verdict.reasons) if verdict else
                                                                 f"no {m.precision} verdict"))]
        built_from = m.sha256.get("onnx") or ""
        if verdict is None or built_from != verdict.onnx_sha256:
            checks.append(failed("lineage", detail=f"engine built from ONNX {built_from[:12]}, not the {m.precision} "
                                                   f"variant that passed accuracy "
                                                   f"({(verdict.onnx_sha256 if verdict else '')[:12] or 'none'})"))
        else:
            checks.append(passed("lineage", detail=f"built from the {m.precision} variant {built_from[:12]}"))
        r = runner(d, m)
        prob = infer_batched(r, test.x, 1024)  # every test window, on this target's hardware
        own = accuracy_verdict(fam, m.precision, test, prob_ref, prob, bounds, threshold, cfg.gates)
        checks += [c.model_copy(update={"name": f"engine_{c.name}", "detail": f"engine: {c.detail}"})
                   for c in own.checks]
        checks.append(skill_check(fam, test, prob, cfg.gates))
        checks.append(parity_check(r, OnnxRuntimeRunner(d / m.onnx_file, threads=0), batches,
                                   *cfg.gates.parity[m.precision]))
        if champ_prob is not None:
            checks.append(champion_check(fam, test, champ_prob, prob, bounds, threshold, cfg.gates,
                                         _age_days(champion.date, night)))
        runners[m.precision] = r
        scored.append((uri, m, checks, own.metrics.get("auc")))
    bench = benchmark_interleaved(runners, val.x[:64], opt_batch=cfg.families[fam].opt_batch,
                                  warmup=cfg.benchmark.warmup, iters=cfg.benchmark.iters,
                                  max_seconds=cfg.benchmark.max_seconds, rounds=cfg.benchmark.rounds, gpu=gpu)
    if "champion" in bench:
        cb = bench["champion"]
        champion = champion.model_copy(update={"p99_ms": cb["batch1"]["p99_ms"], "benchmark": cb})
    candidates = []
    for uri, m, checks, auc in scored:
        b = bench[m.precision]
        checks = checks + latency_checks(b, budget, bench.get("champion"), cfg.gates.latency_regression_max,
                                         cfg.gates.latency_noise_floor_ms, cfg.gates.confidence)
        status = Status.OK if all(c.ok for c in checks) else Status.REJECTED
        p99 = b["batch1"]["p99_ms"]
        candidates.append(Candidate(precision=m.precision, engine_dir=uri, version=m.version, status=status,
                                    checks=checks, auc=auc, p99_ms=p99, benchmark=b))
        log.info("%s/%s/%s: p99 %.3f ms (batch 1), %s %s", fam, name, m.precision, p99, status,
                 "; ".join(c.detail for c in checks if not c.ok))
    winner, candidates = select(candidates, cfg.gates.tie_tolerance)
    return TargetGate(family=fam, target=name, status=Status.OK if winner else Status.REJECTED,
                      reason="" if winner else "no candidate passed every gate", candidates=candidates,
                      selected=winner.precision if winner else None, champion=champion)
