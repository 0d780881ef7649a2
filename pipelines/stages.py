"""The nightly stages as plain typed functions. Airflow tasks (and tests) call these.

Each stage reads its inputs by URI, writes its outputs under the run directory of
the logical date through :func:`pipelines.fsutil.committed_dir`, and returns a small
record. Heavy libraries load inside the functions, so importing this module is cheap.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import time
from pathlib import Path

from .config import ConfigError, Family, FactoryConfig
from .fsutil import committed_dir, write_json
from .records import (AccuracyReport, EngineResult, ExportResult, FeatureSet, LakeSnapshot, Plan, PublishResult,
                      Status, TargetGate, TrainResult, Variant, VariantSet)

log = logging.getLogger(__name__)


def plan(cfg: FactoryConfig, date: str, families: list[str] | None = None, trigger: str = "schedule") -> Plan:
    """Resolve the logical date into the lake days to use and the families to train.

    ``families`` (from a drift trigger) narrows the night to those families. First, the preflight: the
    tracking server, the engine store, the run root and the lake are reached with short timeouts, and a
    failure names the endpoint and what failed (:class:`pipelines.preflight.PreflightError`, final).
    """
    from .preflight import preflight

    for line in preflight(cfg):  # every service the night needs, reached now with short timeouts
        log.info("preflight ok: %s", line)
    day = dt.date.fromisoformat(date)
    lake_dates = [(day - dt.timedelta(days=k)).isoformat() for k in range(cfg.data.history_days, 0, -1)]
    enabled = [f.value for f in cfg.enabled_families]
    if families:
        unknown = sorted(set(families) - set(enabled))
        if unknown:
            raise ConfigError(f"retrain requested for {unknown}, which are not enabled families ({enabled})")
        enabled = [f for f in enabled if f in families]
    if trigger != "schedule":
        log.info("night triggered: %s", trigger)
    return Plan(date=date, lake_dates=lake_dates, families=enabled, run_dir=str(cfg.run_dir(date)), trigger=trigger)


def ingest(cfg: FactoryConfig, p: Plan) -> LakeSnapshot:
    """Make sure the lake holds every partition the night needs, then validate them.

    With ``data.source: simulator`` missing partitions are simulated and written;
    with ``lake`` a missing partition is an error naming it.
    """
    from .data import lake
    from .data.schema import MARKET_DATASET, TRANSACTIONS_DATASET, TRANSACTIONS_SYMBOL
    from .data.simulator import simulate_market, simulate_transactions
    from .data.validation import DataValidationError

    for d in p.lake_dates:  # a feed that lands a symbol the config does not name is ignored, and says so
        extra = sorted(set(lake.list_symbols(cfg.lake_uri, MARKET_DATASET, d)) - set(cfg.data.symbols))
        if extra:
            log.warning("ingest: lake %s date=%s holds symbol(s) %s not in data.symbols %s: ignored", cfg.lake_uri,
                        d, extra, cfg.data.symbols)
    wanted = [lake.Partition(MARKET_DATASET, d, s) for d in p.lake_dates for s in cfg.data.symbols]
    wanted += [lake.Partition(TRANSACTIONS_DATASET, d, TRANSACTIONS_SYMBOL) for d in p.lake_dates]
    written, rows = 0, 0
    for i, part in enumerate(wanted, 1):
        if not lake.exists(cfg.lake_uri, part):
            if cfg.data.source != "simulator":
                raise DataValidationError(part.key, None, f"partition missing from lake {cfg.lake_uri}")
            if part.dataset == MARKET_DATASET:
                df = simulate_market(part.date, part.symbol, cfg.data.ticks_per_day, cfg.data.seed)
            else:
                df = simulate_transactions(part.date, part.symbol, cfg.data.transactions_per_day, cfg.data.seed)
            lake.write_partition(cfg.lake_uri, part, df)
            written += 1
        rows += len(lake.read_partition(cfg.lake_uri, part))  # validates what is there
        log.info("ingest [%d/%d] %s ok", i, len(wanted), part.key)
    return LakeSnapshot(lake_uri=cfg.lake_uri, dates=p.lake_dates, partitions=[w.key for w in wanted], rows=rows,
                        written=written)


def build_features(cfg: FactoryConfig, p: Plan, snap: LakeSnapshot) -> FeatureSet:
    """Per-tick market features and per-transaction fraud features for the night's lake days."""
    import pandas as pd

    from .data import lake
    from .data.schema import MARKET_DATASET, TRANSACTIONS_DATASET
    from .features import fraud_features, market_features

    market, txns = [], []
    for key in snap.partitions:
        dataset, date_kv, symbol_kv = key.split("/")
        part = lake.Partition(dataset, date_kv.split("=", 1)[1], symbol_kv.split("=", 1)[1])
        df = lake.read_partition(snap.lake_uri, part)
        if dataset == MARKET_DATASET:
            feats = market_features(df, cfg.features)
            feats.insert(0, "symbol", part.symbol)
            feats.insert(0, "date", part.date)
            market.append(feats)
        elif dataset == TRANSACTIONS_DATASET:
            txns.append(df)
    market_df = pd.concat(market, ignore_index=True)
    fraud_df = fraud_features(pd.concat(txns, ignore_index=True))
    dest = Path(p.run_dir) / "features"
    with committed_dir(dest) as tmp:
        market_df.to_parquet(tmp / "market.parquet", index=False)
        fraud_df.to_parquet(tmp / "fraud.parquet", index=False)
    log.info("features: %d market rows, %d fraud rows", len(market_df), len(fraud_df))
    return FeatureSet(market_uri=str(dest / "market.parquet"), fraud_uri=str(dest / "fraud.parquet"),
                      market_rows=len(market_df), fraud_rows=len(fraud_df))


def train(cfg: FactoryConfig, p: Plan, fs: FeatureSet, family: str) -> TrainResult:
    """Train one family; save its checkpoint, test/val/calibration splits and metrics."""
    import pandas as pd
    import torch

    from monitoring.nvml import TelemetrySampler

    from .datasets import build_family_data
    from .train import train_family

    fam = Family(family)
    if fam is Family.FRAUD_RISK:
        data = build_family_data(fam, cfg, None, pd.read_parquet(fs.fraud_uri))
    else:
        data = build_family_data(fam, cfg, pd.read_parquet(fs.market_uri), None)
    log.info("%s: %d train / %d val / %d test samples, input %s", fam, len(data.train), len(data.val),
             len(data.test), data.train.x.shape[1:])
    with TelemetrySampler(interval_s=0.5) if torch.cuda.is_available() else contextlib.nullcontext() as sampler:
        outcome = train_family(fam, data, cfg)
    dest = Path(p.run_dir) / family / "train"
    with committed_dir(dest) as tmp:
        if sampler is not None and sampler.samples:  # attached to the family's MLflow run at publish
            write_json(tmp / "telemetry.json", {"summary": sampler.summary(), "samples": sampler.samples})
        torch.save({"family": family, "family_config": cfg.families[fam].model_dump(),
                    "n_features": data.train.x.shape[-1], "feature_names": data.feature_names,
                    "state_dict": outcome.model.state_dict()}, tmp / "model.pt")
        data.save(tmp / "splits.npz")
        write_json(tmp / "metrics.json", outcome.metrics)
        write_json(tmp / "history.json", outcome.history)
    return TrainResult(family=family, status=Status.OK, checkpoint_uri=str(dest / "model.pt"),
                       splits_uri=str(dest / "splits.npz"), metrics=outcome.metrics, n_train=len(data.train),
                       n_val=len(data.val), n_test=len(data.test), epochs=outcome.epochs, device=outcome.device,
                       seconds=round(outcome.seconds, 2))


def load_model(checkpoint_uri: str):
    """Rebuild a trained model from its checkpoint (CPU, eval mode)."""
    import torch

    from .config import FamilyConfig
    from .models import build_model

    ckpt = torch.load(checkpoint_uri, map_location="cpu", weights_only=True)
    model = build_model(Family(ckpt["family"]), FamilyConfig(**ckpt["family_config"]), ckpt["n_features"])
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()


def export(cfg: FactoryConfig, p: Plan, tr: TrainResult) -> ExportResult:
    """FP32 ONNX export with checker and parity against PyTorch on held-out test inputs.

    Parity beyond tolerance raises :class:`pipelines.export.ParityError`: an export
    that does not compute the trained model is a bug, not a candidate to reject.
    """
    from .datasets import load_splits
    from .export import ParityError, onnx_parity, torch_to_onnx

    logging.getLogger("onnx_ir").setLevel(logging.WARNING)  # one INFO line per initializer otherwise
    fam = Family(tr.family)
    model = load_model(tr.checkpoint_uri)
    test = load_splits(tr.splits_uri)["test"]
    x = test.x[: cfg.export.parity_samples]
    dest = Path(p.run_dir) / tr.family / "onnx"
    start = time.perf_counter()
    with committed_dir(dest) as tmp:
        onnx_path = torch_to_onnx(model, fam, x, tmp / "model.fp32.onnx", cfg.export.opset)
        parity = onnx_parity(model, onnx_path, x, cfg.export.parity_atol, cfg.export.parity_rtol)
        if not parity.ok:
            raise ParityError(f"{fam}: ONNX vs PyTorch max abs err {parity.max_abs_err:.3g}, "
                              f"max rel err {parity.max_rel_err:.3g} exceed atol {cfg.export.parity_atol} / "
                              f"rtol {cfg.export.parity_rtol} on {parity.n} test inputs")
        write_json(tmp / "export.json", {"opset": cfg.export.opset, "max_abs_err": parity.max_abs_err,
                                         "max_rel_err": parity.max_rel_err, "n": parity.n,
                                         "seconds": time.perf_counter() - start})
    log.info("%s: exported ONNX opset %d, parity max abs %.2e rel %.2e", fam, cfg.export.opset,
             parity.max_abs_err, parity.max_rel_err)
    return ExportResult(family=tr.family, status=Status.OK, onnx_uri=str(dest / "model.fp32.onnx"),
                        opset=cfg.export.opset, max_abs_err=parity.max_abs_err, max_rel_err=parity.max_rel_err)


def make_variants(cfg: FactoryConfig, p: Plan, ex: ExportResult) -> VariantSet:
    """FP16 and INT8 (ModelOpt Q/DQ) graphs from the FP32 ONNX, each scored in ONNX Runtime on validation.

    The INT8 calibration set is ~``quantize.calibration_size`` training windows stratified
    across regimes with tail events (label-positive windows) kept; its sha256 is recorded
    and, with the FP32 graph's, keys the calibration cache under ``$FACTORY_HOME/cache``.
    """
    import shutil

    import numpy as np

    from .benchmark import OnnxRuntimeRunner, infer_batched
    from .datasets import load_splits
    from .fsutil import sha256_file
    from .quantize import (Precision, array_sha256, calibration_set, check_calibration, onnx_fp32_to_fp16,
                           onnx_fp32_to_int8, quantization_coverage)
    from .gates import tail_mask
    from .train import evaluate_split

    fam = Family(ex.family)
    splits = load_splits(Path(p.run_dir) / ex.family / "train" / "splits.npz")
    pool, val = splits["calib"], splits["val"]
    tail = tail_mask(fam, pool)  # the gates' own definition of the extreme-move windows
    calib = calibration_set(pool.x, pool.regime, tail, cfg.quantize.calibration_size, cfg.train.seed)
    src = Path(ex.onnx_uri)
    dest = Path(p.run_dir) / ex.family / "variants"
    threshold = cfg.families[fam].threshold

    def score(path: Path) -> dict[str, float]:
        return evaluate_split(fam, infer_batched(OnnxRuntimeRunner(path, threads=0), val.x, 4096), val, threshold)

    variants, not_offered = [], {}
    with committed_dir(dest) as tmp:
        fp32 = tmp / "model.fp32.onnx"
        shutil.copyfile(src, fp32)
        variants.append(Variant(precision=Precision.FP32, onnx_uri=str(dest / fp32.name), sha256=sha256_file(fp32),
                                seconds=0.0, val_metrics=score(fp32)))
        for prec in cfg.quantize.precisions:
            out = tmp / f"model.{prec}.onnx"
            start = time.perf_counter()
            kept, coverage, hit = [], {}, False
            if prec == Precision.FP16:
                kept = onnx_fp32_to_fp16(src, out)
            else:
                check_calibration(calib, pool.x.shape[-1])
                hit = onnx_fp32_to_int8(src, out, calib, cfg.quantize.calibration_method, cfg.home / "cache" / "calib",
                                        cfg.families[fam].opt_batch)
                cov = quantization_coverage(out)
                coverage = {"quantized": cov.quantized, "not_quantized": cov.not_quantized,
                            "qdq_pairs": {"QuantizeLinear": cov.qdq_pairs}}
                if not cov.quantized:  # the same FP32 graph under another name is no candidate
                    not_offered[prec] = (f"no layer quantized: ModelOpt left {cov.not_quantized} in FP32 "
                                         f"(K or N < 16, GEMV at opt batch, or no quantizable pattern)")
                    out.unlink()
                    log.warning("%s: %s not offered: %s", fam, prec, not_offered[prec])
                    continue
            seconds = time.perf_counter() - start
            variants.append(Variant(precision=prec, onnx_uri=str(dest / out.name), sha256=sha256_file(out),
                                    seconds=round(seconds, 3), val_metrics=score(out), kept_fp32=kept,
                                    coverage=coverage, cache_hit=hit))
            log.info("%s: %s variant in %.1fs, val AUC %.4f", fam, prec, seconds, variants[-1].val_metrics["auc"])
        np.save(tmp / "calibration.npy", calib)
        result = VariantSet(family=ex.family, calibration_sha256=array_sha256(calib),
                            calibration_method=cfg.quantize.calibration_method, variants=variants,
                            not_offered=not_offered)
        write_json(tmp / "variants.json", result.to_xcom())
    return result


def engine_version(p: Plan, vs: VariantSet) -> str:
    """The night's model version: logical date plus the FP32 graph's hash (same date, same model → same version)."""
    fp32 = next(v for v in vs.variants if v.precision == "fp32")
    return f"{p.date.replace('-', '')}.{fp32.sha256[:8]}"


def build_engine(cfg: FactoryConfig, p: Plan, vs: VariantSet, precision: str, target: str) -> EngineResult:
    """Build one variant for one target into ``runs/<date>/<family>/engines/<target>/<precision>/``.

    A target this worker cannot build (no TensorRT, no GPU, another architecture)
    returns a ``skipped`` record with the reason, or raises
    :class:`~pipelines.engines.base.TargetUnavailableError` when the target is ``required``.
    """
    from . import engines
    from .availability import host_facts
    from .engines.base import BuildSpec, TargetUnavailableError, build_engine as build, onnx_io

    tgt = cfg.target(target)
    fam = Family(vs.family)

    def skipped(reason: str) -> EngineResult:
        log.warning("%s/%s for %s skipped: %s", fam, precision, target, reason)
        return EngineResult(family=fam, precision=precision, target=target, backend=str(tgt.backend),
                            status=Status.SKIPPED, reason=reason, required=tgt.required)

    variant = next((v for v in vs.variants if v.precision == precision), None)
    if precision not in tgt.precisions:
        return skipped(f"precision {precision} is not enabled for target {target}")
    if precision in vs.not_offered:
        return skipped(f"{precision}: {vs.not_offered[precision]}")
    if variant is None:
        return skipped(f"no {precision} variant this run (quantize.precisions: {cfg.quantize.precisions})")
    builder = engines.builder_for(str(tgt.backend), cfg.engine_store)
    reason = builder.unavailable_reason(tgt)
    if reason:
        if tgt.required:
            raise TargetUnavailableError(f"required target {target} cannot be built on this worker: {reason}")
        return skipped(reason)
    options = (cfg.engines.tensorrt if tgt.backend == "tensorrt" else cfg.engines.onnxruntime).model_dump()
    inputs, outputs, profile = onnx_io(Path(variant.onnx_uri), cfg.families[fam])
    spec = BuildSpec(family=fam, version=engine_version(p, vs), precision=precision, target=tgt,
                     onnx=Path(variant.onnx_uri), profile=profile, options=options,
                     calibration_sha256=vs.calibration_sha256 if precision == "int8" else None)
    dest = Path(p.run_dir) / fam / "engines" / target / precision
    manifest = build(builder, spec, dest, inputs, outputs, host_facts())
    log.info("%s/%s for %s: %s %s engine in %.1fs", fam, precision, target, manifest.backend,
             manifest.backend_version, manifest.build["seconds"])
    return EngineResult(family=fam, precision=precision, target=target, backend=manifest.backend, status=Status.OK,
                        engine_dir=str(dest), engine_sha256=manifest.sha256["engine"] or "",
                        backend_version=manifest.backend_version, seconds=manifest.build["seconds"],
                        required=tgt.required)


def gate_accuracy(cfg: FactoryConfig, p: Plan, vs: VariantSet) -> AccuracyReport:
    """Verdict per precision: each variant's own outputs (ONNX Runtime) against FP32 PyTorch on the test split.

    Also saves the FP32 PyTorch outputs on the test split, which every engine is scored against on its
    own target's worker.
    """
    import numpy as np

    from .benchmark import OnnxRuntimeRunner, infer_batched
    from .datasets import load_splits
    from .gates import accuracy_verdict
    from .train import evaluate_split, predict

    fam = Family(vs.family)
    base = Path(p.run_dir) / fam / "train"
    test = load_splits(base / "splits.npz")["test"]
    prob_ref = predict(load_model(str(base / "model.pt")), test.x)
    threshold = cfg.families[fam].threshold
    verdicts = []
    for v in vs.variants:
        prob = infer_batched(OnnxRuntimeRunner(Path(v.onnx_uri), threads=0), test.x, 4096)
        verdict = accuracy_verdict(fam, v.precision, test, prob_ref, prob, cfg.gates.families[fam], threshold,
                                   cfg.gates, onnx_sha256=v.sha256)
        log.info("%s/%s accuracy gate: %s %s", fam, v.precision, verdict.status, "; ".join(verdict.reasons))
        verdicts.append(verdict.to_xcom())
    dest = Path(p.run_dir) / fam / "accuracy"
    with committed_dir(dest) as tmp:
        np.save(tmp / "reference.npy", prob_ref)
    return AccuracyReport(family=fam, reference=evaluate_split(fam, prob_ref, test, threshold), verdicts=verdicts,
                          reference_uri=str(dest / "reference.npy"))


def gate_target(cfg: FactoryConfig, p: Plan, acc: AccuracyReport, target: str) -> TargetGate:
    """Every engine of one family on ``target`` (run on that target's worker), scored on its own outputs.

    Per engine: lineage (built from the graph that passed accuracy), its outputs on every test window
    against FP32 PyTorch (the accuracy gate's checks), parity with its ONNX (diagnostic; NaN rejects),
    latency interleaved with the champion's in rounds, and the paired champion comparison. Then the
    selection: lowest batch-1 p99 among candidates that pass every gate.
    """
    import numpy as np

    from .benchmark import benchmark_interleaved, engine_runner, infer_batched
    from .champions import read_champion
    from .datasets import load_splits
    from .engines.base import MANIFEST, verify_manifest
    from .gates import (Candidate, Verdict, accuracy_verdict, champion_check, failed, latency_checks, onnx_runner,
                        parity_check, passed, polygraphy_runner, select)

    tgt = cfg.target(target)
    fam = Family(acc.family)
    root = Path(p.run_dir) / fam / "engines" / target
    dirs = sorted(d for d in root.iterdir() if (d / MANIFEST).is_file()) if root.is_dir() else []
    if not dirs:
        return TargetGate(family=fam, target=target, status=Status.SKIPPED,
                          reason=f"no {target} engines were built this run (see the engine records)")
    splits = load_splits(Path(p.run_dir) / fam / "train" / "splits.npz")
    val, test = splits["val"], splits["test"]
    prob_ref = np.load(acc.reference_uri)
    bounds, gpu = cfg.gates.families[fam], tgt.backend == "tensorrt"
    budget = bounds.p99_budget_ms["gpu" if gpu else "cpu"]
    threshold = cfg.families[fam].threshold

    def runner(d: Path, m) -> object:
        threads = m.build.get("options", {}).get("intra_op_threads", 1)
        return engine_runner(d, m.backend, m.engine_file, threads=threads, cuda_graph=cfg.benchmark.cuda_graphs)

    from model_registry.store import StoreError

    runners, champ_prob = {}, None
    try:  # a registry outage raises (the task retries): it is never "no champion"
        champion = read_champion(cfg, fam, target)
    except StoreError as exc:  # the registry named a champion whose copy is bad: measured without it, said so
        champion = {"comparable": False, "reason": f"champion's engine unusable: {exc}"}
        log.warning("%s/%s: %s", fam, target, champion["reason"])
    if champion is None:
        champion = {"comparable": False, "reason": "no champion yet: the registry has no 'champion' alias for "
                                                   f"{fam}.{target}"}
    if "engine_dir" in champion:
        try:  # the champion, on this host, on today's test window
            cm = verify_manifest(Path(champion["engine_dir"]))
            cr = runner(Path(champion["engine_dir"]), cm)
            champ_prob = infer_batched(cr, test.x, 1024)
            runners["champion"] = cr
            champion = {**champion, "comparable": True}
        except Exception as exc:  # another input shape, a corrupted copy, a foreign engine
            champion = {**champion, "comparable": False, "reason": f"{type(exc).__name__}: {exc}"}
            log.warning("%s/%s: champion %s not comparable: %s", fam, target, champion.get("version"), exc)

    verdicts = {v["precision"]: Verdict.model_validate(v) for v in acc.verdicts}
    x_par = val.x[: cfg.gates.parity_samples]
    batches = [np.ascontiguousarray(x_par[i:i + 128]) for i in range(0, len(x_par), 128)]
    scored = []
    for d in dirs:
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
        checks.append(parity_check(polygraphy_runner(d, m.backend, m.engine_file), onnx_runner(d / m.onnx_file),
                                   batches, *cfg.gates.parity[m.precision]))
        if champ_prob is not None:
            checks.append(champion_check(fam, test, champ_prob, prob, bounds, threshold, cfg.gates))
        runners[m.precision] = r
        scored.append((d, m, checks, own.metrics.get("auc")))
    bench = benchmark_interleaved(runners, val.x[:64], opt_batch=cfg.families[fam].opt_batch,
                                  warmup=cfg.benchmark.warmup, iters=cfg.benchmark.iters,
                                  max_seconds=cfg.benchmark.max_seconds, rounds=cfg.benchmark.rounds, gpu=gpu)
    if "champion" in bench:
        cb = bench["champion"]
        champion = {**champion, "p99_ms": cb["batch1"]["p99_ms"], "benchmark": cb}
    candidates = []
    for d, m, checks, auc in scored:
        b = bench[m.precision]
        checks = checks + latency_checks(b, budget, bench.get("champion"), cfg.gates.latency_regression_max,
                                         cfg.gates.latency_noise_floor_ms, cfg.gates.confidence)
        status = Status.OK if all(c.ok for c in checks) else Status.REJECTED
        p99 = b["batch1"]["p99_ms"]
        candidates.append(Candidate(precision=m.precision, engine_dir=str(d), version=m.version, status=status,
                                    checks=checks, auc=auc, p99_ms=p99, benchmark=b))
        log.info("%s/%s/%s: p99 %.3f ms (batch 1), %s %s", fam, target, m.precision, p99, status,
                 "; ".join(c.detail for c in checks if not c.ok))
    winner, candidates = select(candidates, cfg.gates.tie_tolerance)
    return TargetGate(family=fam, target=target, status=Status.OK if winner else Status.REJECTED,
                      reason="" if winner else "no candidate passed every gate",
                      candidates=[c.to_xcom() for c in candidates], selected=winner.precision if winner else None,
                      champion=champion)


def gate_report(cfg: FactoryConfig, p: Plan, accuracy: list[AccuracyReport], gated: list[TargetGate]) -> Path:
    """Write the gate report JSON and its accuracy-vs-p99 plot under ``runs/<date>/gates/``."""
    from .report import plot_accuracy_vs_p99

    dest = Path(p.run_dir) / "gates"
    report = {"date": p.date, "profile": cfg.profile, "accuracy": [a.to_xcom() for a in accuracy],
              "targets": [g.to_xcom() for g in gated]}
    write_json(dest / "report.json", report)
    plot_accuracy_vs_p99(report, dest / "accuracy_vs_p99.png")
    return dest / "report.json"


def _git_commit() -> str:
    import subprocess

    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True,
                             timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def reference_window(cfg: FactoryConfig, p: Plan, family: str) -> Path:
    """The drift monitor's reference: a sample of the test split with the FP32 ONNX model's predictions."""
    from monitoring.drift import feature_names, reference_frame

    from .benchmark import OnnxRuntimeRunner, infer_batched
    from .datasets import load_splits

    base = Path(p.run_dir) / family
    test = load_splits(base / "train" / "splits.npz")["test"]
    prob = infer_batched(OnnxRuntimeRunner(base / "onnx" / "model.fp32.onnx", threads=0), test.x, 4096)
    df = reference_frame(test.x, prob, feature_names(family), cfg.monitoring.drift.reference_rows)
    dest = base / "reference" / "reference.parquet"
    dest.parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(dest, index=False)
    return dest


def _close_interrupted_runs(experiment: str, family: str, date: str) -> None:
    """A publish killed mid-run leaves its MLflow run RUNNING for good; the re-run marks it FAILED."""
    import mlflow

    exp = mlflow.get_experiment_by_name(experiment)
    runs = mlflow.search_runs(experiment_ids=[exp.experiment_id], output_format="list",
                              filter_string=f"tags.family = '{family}' and tags.date = '{date}' and "
                                            f"attributes.status = 'RUNNING'")
    client = mlflow.MlflowClient()
    for run in runs:
        client.set_terminated(run.info.run_id, status="FAILED")
        log.warning("%s %s: closed MLflow run %s left RUNNING by an interrupted publish as FAILED", family, date,
                    run.info.run_id)


def _auto_promote(registry, family: str, target: str, version: str, date: str, why: str) -> tuple[bool, str]:
    """Move ``champion`` to ``version`` unless the current champion was trained on a newer night.

    Two dates run at once, or a re-run of an old date, must not replace a champion from fresher data.
    A registry outage raises (the task retries); only the registry's "no such alias" means no champion.
    """
    from model_registry.registry import NoSuchAlias

    try:
        current = registry.resolve(family, target, "champion")
    except NoSuchAlias:
        current = None
    if current is not None and str(current.version) == str(version):
        return False, f"v{version} is already the champion"
    champ_date = ((current.tags or {}).get("date") or "") if current is not None else ""
    if champ_date > date:
        note = (f"not promoted: champion v{current.version} was trained for {champ_date}, newer than this "
                f"night's {date}")
        log.warning("%s/%s: %s", family, target, note)
        return False, note
    registry.promote(family, target, version, by="policy:auto_promote", why=why)
    return True, ""


def publish(cfg: FactoryConfig, p: Plan, family: str, report_uri: str) -> PublishResult:
    """Track the family's night in MLflow, push each selected engine to the store, register it.

    One MLflow run per family and night: params, test metrics, the PyTorch checkpoint, the
    FP32 ONNX and the gate report. Each target's selected engine (only those that passed
    every gate) is pushed to the engine store, becomes a version of ``<family>.<target>``
    with alias ``challenger``, and with ``gates.auto_promote`` also ``champion``.
    """
    import json

    import mlflow

    from model_registry.registry import Registry, use_experiment
    from model_registry.store import open_store
    from monitoring.nvml import summary_metrics

    from .engines.base import engine_identity
    from .fsutil import sha256_file

    report = json.loads(Path(report_uri).read_text())
    run_dir = Path(p.run_dir)
    registry = Registry(cfg.tracking_uri)
    use_experiment(cfg, cfg.registry.experiment)
    _close_interrupted_runs(cfg.registry.experiment, family, p.date)
    commit, window = _git_commit(), f"{p.lake_dates[0]}..{p.lake_dates[-1]}" if p.lake_dates else p.date
    metrics = json.loads((run_dir / family / "train" / "metrics.json").read_text())
    store = open_store(cfg.store_uri, cfg.registry.s3_endpoint_url)
    versions = []
    with mlflow.start_run(run_name=f"{family} {p.date}", tags={"family": family, "date": p.date,
                                                                "profile": cfg.profile, "git_commit": commit,
                                                                "data_window": window}) as run:
        mlflow.log_params({f"family.{k}": v for k, v in cfg.families[Family(family)].model_dump().items()}
                          | {f"train.{k}": v for k, v in cfg.train.model_dump().items()})
        mlflow.log_metrics({f"test_{k}": float(v) for k, v in metrics.items() if v == v})
        mlflow.log_artifact(str(run_dir / family / "train" / "model.pt"), "pytorch")
        mlflow.log_artifact(str(run_dir / family / "onnx" / "model.fp32.onnx"), "onnx")
        mlflow.log_artifact(report_uri, "gates")
        mlflow.log_artifact(str(reference_window(cfg, p, family)), "reference")  # drift_monitor's baseline
        telemetry = run_dir / family / "train" / "telemetry.json"
        if telemetry.is_file():  # GPU telemetry sampled during training (GPU workers only)
            mlflow.log_artifact(str(telemetry), "telemetry")
            mlflow.log_metrics(summary_metrics(json.loads(telemetry.read_text())["summary"], "train_gpu"))
        for g in (g for g in report["targets"] if g["family"] == family and g["selected"]):
            win = next(c for c in g["candidates"] if c["precision"] == g["selected"])
            mlflow.log_metrics({f"{g['target']}.p99_ms": win["p99_ms"], f"{g['target']}.auc": win["auc"] or 0.0})
            tele = (win.get("benchmark") or {}).get("telemetry") or {}
            if tele.get("available"):  # NVML during the winner's benchmark (GPU targets)
                mlflow.log_metrics(summary_metrics(tele, f"{g['target']}.bench_gpu"))
            engine_dir = Path(win["engine_dir"])
            manifest = json.loads((engine_dir / "manifest.json").read_text())
            identity = engine_identity(manifest)
            # One version per family x target x date: a re-run that selects another engine for a date that is
            # already registered keeps the registered one (and says so) rather than adding a second.
            earlier = [mv for mv in registry.find(family, g["target"], date=p.date)
                       if (mv.tags or {}).get("engine_identity") != identity]
            if earlier:
                mv = earlier[0]
                note = (f"kept v{mv.version} ({(mv.tags or {}).get('precision')}, engine "
                        f"{(mv.tags or {}).get('engine_identity', '')[:12]}) registered for {p.date} by an earlier "
                        f"run; this run selected {g['selected']} (engine {identity[:12]}): nothing registered. "
                        f"Delete v{mv.version} to replace it.")
                log.warning("%s/%s: %s", family, g["target"], note)
                versions.append({"target": g["target"], "registry_version": str(mv.version),
                                 "store_uri": mv.source, "precision": (mv.tags or {}).get("precision"),
                                 "promoted": False, "note": note})
                continue
            store_version = f"{manifest['version']}.{identity[:12]}"  # the content names the store folder
            uri = store.put_version(engine_dir, family, g["target"], store_version)
            manifest = {**manifest, "version": store_version}
            description = (f"{family} for {g['target']}: {manifest['precision']} {manifest['backend']} "
                           f"{manifest['backend_version']} engine from the {p.date} nightly (data {window}). "
                           f"Test AUC {win['auc']:.4f}; batch-1 p99 {win['p99_ms']:.3f} ms on the build host. "
                           f"Selected over: " + "; ".join(f"{c['precision']}: {c['outcome']}" for c in g["candidates"]
                                                          if c["precision"] != g["selected"]))
            version = registry.register(family, g["target"], uri, manifest, sha256_file(engine_dir / "manifest.json"),
                                        run.info.run_id, {"source_run": run.info.run_id, "data_window": window,
                                                          "git_commit": commit, "date": p.date}, description)
            promoted, note = False, ""
            if cfg.gates.auto_promote:
                promoted, note = _auto_promote(registry, family, g["target"], version, p.date,
                                               f"nightly {p.date}: passed every gate; lowest p99 "
                                               f"{win['p99_ms']:.3f} ms")
            versions.append({"target": g["target"], "registry_version": version, "store_uri": uri,
                             "precision": g["selected"], "promoted": promoted, "note": note})
            log.info("%s/%s: registered v%s (%s) at %s%s", family, g["target"], version, g["selected"], uri,
                     ", promoted to champion" if promoted else "")
    return PublishResult(family=family, run_id=run.info.run_id, versions=versions)


def summarize(cfg: FactoryConfig, p: Plan, trained: list[TrainResult], exported: list[ExportResult],
              variants: list[VariantSet] | None = None, built: list[EngineResult] | None = None,
              gates: str | None = None, published: list[PublishResult] | None = None) -> Path:
    """Write ``summary.json`` for the night: one row per family, with its engines per target and precision."""
    by_family = {e.family: e for e in exported}
    var_by_family = {v.family: v for v in variants or []}
    rows = []
    for t in sorted(trained, key=lambda r: r.family):
        e = by_family.get(t.family)
        v = var_by_family.get(t.family)
        rows.append({"family": t.family, "status": t.status, "train": t.model_dump(mode="json"),
                     "export": e.model_dump(mode="json") if e else None,
                     "variants": v.model_dump(mode="json") if v else None,
                     "engines": [b.model_dump(mode="json") for b in sorted(built or [], key=lambda b: (b.target,
                                 b.precision)) if b.family == t.family]})
    return write_json(Path(p.run_dir) / "summary.json", {"date": p.date, "profile": cfg.profile, "trigger": p.trigger,
                                                         "families": rows,
                                                         "gate_report": gates,
                                                         "published": [x.to_xcom() for x in published or []]})


def record_outcome(cfg: FactoryConfig, date: str) -> list[str]:
    """Export the night's outcome and champion freshness to Prometheus; returns the failed tasks."""
    from model_registry.registry import NoSuchAlias, Registry
    from monitoring.batch import nightly_outcome

    from .orchestration import read_failures

    failed = [f["task"] for f in read_failures(cfg, date)]
    if not failed and not (cfg.run_dir(date) / "summary.json").is_file():
        failed = ["summarize"]
    champions: dict[tuple[str, str], float] = {}
    try:
        registry = Registry(cfg.tracking_uri)
        for fam in cfg.enabled_families:
            for t in cfg.targets():
                try:
                    mv = registry.resolve(fam.value, t.name, "champion")
                except NoSuchAlias:
                    continue
                when = (mv.tags or {}).get("promoted_at")
                champions[(fam.value, t.name)] = (dt.datetime.fromisoformat(when).timestamp() if when
                                                  else mv.creation_timestamp / 1000)
    except Exception as exc:  # the night's outcome is recorded even when the registry is down; freshness is not
        log.warning("champion freshness not exported: %s", exc)
    for path in nightly_outcome(cfg, date, failed, champions):
        log.info("metrics: %s", path)
    return failed
