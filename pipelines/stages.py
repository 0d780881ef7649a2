"""The nightly stages as adapters: records in, one call, record out. Airflow tasks (and tests) call these.

Each stage reads its inputs by the URIs its input records carry (fetched into this task's local scratch),
works locally, and commits its outputs to the night's folder under the run root in one step
(:func:`factory_core.fsutil.stage_output`): a local path, or ``s3://…`` in a fleet, where no task reads
another's disk. Folder and file names come from :class:`factory_core.layout.RunLayout`. Heavy libraries load
inside the functions, so importing this module is cheap.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from factory_core import layout
from factory_core.config import ConfigError, FactoryConfig, Family, TargetConfig
from factory_core.contracts import (
    AccuracyReport,
    EngineResult,
    ExportResult,
    FeatureSet,
    GateReport,
    LakeSnapshot,
    Plan,
    PublishResult,
    Status,
    TargetGate,
    TrainResult,
    Variant,
    VariantSet,
)
from factory_core.families import spec
from factory_core.fsutil import fetch, get_json, put_json, stage_output, write_json
from factory_core.precisions import REFERENCE
from factory_core.precisions import precision as precision_spec

if TYPE_CHECKING:
    from factory_core.contracts import Registered
    from model_registry.publish import Evidence, Night

log = logging.getLogger(__name__)


def _run(p: Plan) -> layout.RunLayout:
    return layout.RunLayout(p.run_uri)


def plan(cfg: FactoryConfig, date: str, families: list[str] | None = None, trigger: str = "schedule",
         targets: list[str] | None = None, pools: list[str] | None = None) -> Plan:
    """Resolve the logical date into the lake days to use, the families to train and the targets to build.

    ``families`` (a drift trigger, or the run's params) and ``targets`` (the run's params) narrow the night;
    they never widen it. First, the preflight: the tracking server, the engine store, the run root and the
    lake are reached with short timeouts, and a failure names the endpoint and what failed
    (:class:`pipelines.preflight.PreflightError`, final).
    """
    from factory_core.dates import check_night_date

    from .preflight import preflight

    check_night_date(date)  # a future date would train on days to come and then block every later promotion
    if pools:  # Airflow pools the night's tasks use: a missing one would leave its tasks unscheduled, silently
        from .fleet import check_pools

        check_pools(pools)
    for line in preflight(cfg):  # every service the night needs, reached now with short timeouts
        log.info("preflight ok: %s", line)
    day = dt.date.fromisoformat(date)
    lake_dates = [(day - dt.timedelta(days=k)).isoformat() for k in range(cfg.data.history_days, 0, -1)]
    enabled = [f.value for f in cfg.enabled_families]
    if families:
        unknown = sorted(set(families) - set(enabled))
        if unknown:
            raise ConfigError(f"families {unknown} requested for this run are not enabled families ({enabled})")
        enabled = [f for f in enabled if f in families]
    declared = [t.name for t in cfg.declared_targets()]
    if targets:
        unknown = sorted(set(targets) - set(declared))
        if unknown:
            raise ConfigError(f"targets {unknown} requested for this run are not configured targets ({declared}); "
                              f"a run's params narrow the targets, they never add one")
        declared = [t for t in declared if t in targets]
    if trigger != "schedule":
        log.info("night triggered: %s", trigger)
    return Plan(date=date, lake_dates=lake_dates, families=enabled, targets=declared,
                run_uri=cfg.run_layout(date).uri, trigger=trigger)


def payment_warmup_days() -> int:
    """Days of payments read before the first model row: the features' longest window (30 days)."""
    from .features import FRAUD_WINDOW_DAYS

    return max(FRAUD_WINDOW_DAYS)


def payment_dates(cfg: FactoryConfig, date: str) -> list[str]:
    """The ``transactions`` and ``chargebacks`` days a night for ``date`` reads, ending the day before it: the
    warm-up (:func:`payment_warmup_days`), then the history days."""
    n = payment_warmup_days() + cfg.data.transactions_history_days
    day = dt.date.fromisoformat(date)
    return [(day - dt.timedelta(days=k)).isoformat() for k in range(n, 0, -1)]


def _payments(p: Plan) -> bool:
    """Whether the night trains a family fed by payments."""
    return any(spec(f).source == "transactions" for f in p.families)


def ingest(cfg: FactoryConfig, p: Plan) -> LakeSnapshot:
    """Make sure the lake holds every partition the night needs, then validate them.

    With ``data.source: simulator`` missing partitions are simulated and written;
    with ``lake`` a missing partition is an error naming it. Payments (transactions and chargebacks) are read over
    :func:`payment_dates`, and only on a night that trains a family fed by them.
    """
    from .data import lake
    from .data.payments import simulate_chargebacks
    from .data.schema import (
        CHARGEBACKS_DATASET,
        MARKET_DATASET,
        TRANSACTIONS_DATASET,
        TRANSACTIONS_SYMBOL,
    )
    from .data.simulator import simulate_market, simulate_transactions
    from .data.validation import DataValidationError
    from .reproduce import record_night

    for d in p.lake_dates:  # a feed that lands a symbol the config does not name is ignored, and says so
        extra = sorted(set(lake.list_symbols(cfg.lake_uri, MARKET_DATASET, d)) - set(cfg.data.symbols))
        if extra:
            log.warning("ingest: lake %s date=%s holds symbol(s) %s not in data.symbols %s: ignored", cfg.lake_uri,
                        d, extra, cfg.data.symbols)
    wanted = [lake.Partition(MARKET_DATASET, d, s) for d in p.lake_dates for s in cfg.data.symbols]
    if _payments(p):
        wanted += [lake.Partition(ds, d, TRANSACTIONS_SYMBOL) for d in payment_dates(cfg, p.date)
                   for ds in (TRANSACTIONS_DATASET, CHARGEBACKS_DATASET)]
    written, rows = 0, 0
    for i, part in enumerate(wanted, 1):
        if not lake.exists(cfg.lake_uri, part):
            if cfg.data.source != "simulator":
                raise DataValidationError(part.key, None, f"partition missing from lake {cfg.lake_uri}")
            if part.dataset == MARKET_DATASET:
                df = simulate_market(part.date, part.symbol, cfg.data.ticks_per_day, cfg.data.seed)
            elif part.dataset == TRANSACTIONS_DATASET:
                df = simulate_transactions(part.date, part.symbol, cfg.data.transactions_per_day, cfg.data.seed)
            else:
                df = simulate_chargebacks(part.date, part.symbol, cfg.data.transactions_per_day, cfg.data.seed)
            lake.write_partition(cfg.lake_uri, part, df)
            written += 1
        rows += len(lake.read_partition(cfg.lake_uri, part))  # validates what is there
        log.info("ingest [%d/%d] %s ok", i, len(wanted), part.key)
    # what the night is made of, for `factory reproduce`: code, resolved config, seeds, each partition's sha256
    record_night(cfg, p, {w.key: lake.partition_sha256(cfg.lake_uri, w) for w in wanted})
    return LakeSnapshot(lake_uri=cfg.lake_uri, dates=p.lake_dates, partitions=[w.key for w in wanted], rows=rows,
                        written=written)


def build_features(cfg: FactoryConfig, p: Plan, snap: LakeSnapshot) -> FeatureSet:
    """Per-tick market features and per-transaction fraud features for the night's lake days."""
    import pandas as pd

    from .data import lake
    from .data.schema import CHARGEBACKS_DATASET, MARKET_DATASET, TRANSACTIONS_DATASET
    from .data.validation import validate_payments
    from .features import FRAUD_FEATURES, fraud_features, market_features

    market, txns, chargebacks = [], [], []
    for key in snap.partitions:
        dataset, date_kv, symbol_kv = key.split("/")
        part = lake.Partition(dataset, date_kv.split("=", 1)[1], symbol_kv.split("=", 1)[1])
        df = lake.read_partition(snap.lake_uri, part)
        if dataset == MARKET_DATASET:
            feats = market_features(df, cfg.features)
            feats.insert(0, "symbol", part.symbol)
            feats.insert(0, "date", part.date)
            market.append(feats)
        elif dataset in (TRANSACTIONS_DATASET, CHARGEBACKS_DATASET):
            (txns if dataset == TRANSACTIONS_DATASET else chargebacks).append(df.assign(partition=key))
    market_df = pd.concat(market, ignore_index=True)
    fraud_df = pd.DataFrame(columns=["ts", *FRAUD_FEATURES, "label"])
    if txns:  # labels: the chargebacks reported by the end of the night's last day; the newest days' are not final
        txn_df, cb_df = pd.concat(txns, ignore_index=True), pd.concat(chargebacks, ignore_index=True)
        validate_payments(txn_df, cb_df)
        first = dt.date.fromisoformat(payment_dates(cfg, p.date)[0]) + dt.timedelta(days=payment_warmup_days())
        fraud_df = fraud_features(txn_df, cb_df, since=pd.Timestamp(first, tz="UTC"),
                                  cutoff=pd.Timestamp(p.date, tz="UTC"),
                                  maturity_days=max(spec(f).label_delay_days for f in p.families
                                                    if spec(f).source == "transactions"))
    dest = _run(p).features()
    with stage_output(dest, cfg.scratch) as tmp:
        market_df.to_parquet(tmp / "market.parquet", index=False)
        fraud_df.to_parquet(tmp / "fraud.parquet", index=False)
    log.info("features: %d market rows, %d fraud rows", len(market_df), len(fraud_df))
    return FeatureSet(market_uri=f"{dest}/market.parquet", fraud_uri=f"{dest}/fraud.parquet",
                      market_rows=len(market_df), fraud_rows=len(fraud_df))


def train(cfg: FactoryConfig, p: Plan, fs: FeatureSet, family: str) -> TrainResult:
    """Train one family; save its checkpoint, test/val/calibration splits and metrics."""
    import pandas as pd
    import torch

    from monitoring.nvml import TelemetrySampler

    from .datasets import build_family_data
    from .train import train_family

    fam = Family(family)
    if spec(fam).source == "transactions":
        data = build_family_data(fam, cfg, None, pd.read_parquet(fetch(fs.fraud_uri, cfg.scratch)))
    else:
        data = build_family_data(fam, cfg, pd.read_parquet(fetch(fs.market_uri, cfg.scratch)), None)
    log.info("%s: %d train / %d val / %d test samples, input %s", fam, len(data.train), len(data.val),
             len(data.test), data.train.x.shape[1:])
    with TelemetrySampler(interval_s=0.5) if torch.cuda.is_available() else contextlib.nullcontext() as sampler:
        outcome = train_family(fam, data, cfg)
    dest = _run(p).train(family)
    telemetry = ""
    with stage_output(dest, cfg.scratch) as tmp:
        if sampler is not None and sampler.samples:  # attached to the family's MLflow run at publish
            write_json(tmp / layout.TELEMETRY, {"summary": sampler.summary(), "samples": sampler.samples})
            telemetry = f"{dest}/{layout.TELEMETRY}"
        torch.save({"family": family, "family_config": cfg.families[fam].model_dump(),
                    "n_features": data.train.x.shape[-1], "feature_names": data.feature_names,
                    "state_dict": outcome.model.state_dict()}, tmp / layout.CHECKPOINT)
        data.save(tmp / layout.SPLITS)
        write_json(tmp / layout.METRICS, outcome.metrics)
        write_json(tmp / layout.HISTORY, outcome.history)
    return TrainResult(family=family, status=Status.OK, checkpoint_uri=f"{dest}/{layout.CHECKPOINT}",
                       splits_uri=f"{dest}/{layout.SPLITS}", telemetry_uri=telemetry, metrics=outcome.metrics,
                       n_train=len(data.train), n_val=len(data.val), n_test=len(data.test), epochs=outcome.epochs,
                       device=outcome.device, seconds=round(outcome.seconds, 2))


def export(cfg: FactoryConfig, p: Plan, tr: TrainResult) -> ExportResult:
    """FP32 ONNX export with checker and parity against PyTorch on held-out test inputs.

    Parity beyond tolerance raises :class:`pipelines.export.ParityError`: an export
    that does not compute the trained model is a bug, not a candidate to reject.
    """
    from .datasets import load_splits
    from .export import ParityError, onnx_parity, torch_to_onnx
    from .models import load_model

    logging.getLogger("onnx_ir").setLevel(logging.WARNING)  # one INFO line per initializer otherwise
    fam = Family(tr.family)
    model = load_model(fetch(tr.checkpoint_uri, cfg.scratch))
    test = load_splits(fetch(tr.splits_uri, cfg.scratch))["test"]
    x = test.x[: cfg.export.parity_samples]
    dest = _run(p).onnx(tr.family)
    start = time.perf_counter()
    with stage_output(dest, cfg.scratch) as tmp:
        onnx_path = torch_to_onnx(model, fam, x, tmp / layout.FP32_ONNX, cfg.export.opset)
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
    return ExportResult(family=tr.family, status=Status.OK, onnx_uri=f"{dest}/{layout.FP32_ONNX}",
                        opset=cfg.export.opset, max_abs_err=parity.max_abs_err, max_rel_err=parity.max_rel_err,
                        checkpoint_uri=tr.checkpoint_uri, splits_uri=tr.splits_uri)


def make_variants(cfg: FactoryConfig, p: Plan, ex: ExportResult) -> VariantSet:
    """FP16 and INT8 (ModelOpt Q/DQ) graphs from the FP32 ONNX, each scored in ONNX Runtime on validation.

    The INT8 calibration set is ~``quantize.calibration_size`` training windows stratified
    across trailing-volatility terciles with tail events (``gates.tail_mask``) kept; its sha256 is recorded
    and, with the FP32 graph's, keys the calibration cache under ``$FACTORY_HOME/cache``.
    """
    import shutil

    import numpy as np

    from factory_core.fsutil import sha256_file
    from model_registry.runners import infer_batched, open_runner

    from .datasets import load_splits
    from .gates import tail_mask
    from .quantize import (
        array_sha256,
        calibration_set,
        check_calibration,
        onnx_fp32_to_fp16,
        onnx_fp32_to_int8,
        quantization_coverage,
    )
    from .train import evaluate_split

    fam = Family(ex.family)
    splits = load_splits(fetch(ex.splits_uri, cfg.scratch))
    pool, val = splits["calib"], splits["val"]
    tail = tail_mask(fam, pool)  # the gates' own definition of the extreme-move windows
    calib = calibration_set(pool.x, pool.state, tail, cfg.quantize.calibration_size, cfg.train.seed)
    src = fetch(ex.onnx_uri, cfg.scratch)
    dest = _run(p).variants(ex.family)
    threshold = cfg.families[fam].threshold

    def score(path: Path) -> dict[str, float]:
        prob = infer_batched(open_runner(path, "onnxruntime", threads=0), val.x, 4096)
        return evaluate_split(fam, prob, val, threshold)

    variants, not_offered = [], {}
    with stage_output(dest, cfg.scratch) as tmp:
        fp32 = tmp / layout.variant_onnx(REFERENCE)
        shutil.copyfile(src, fp32)
        variants.append(Variant(precision=REFERENCE, onnx_uri=f"{dest}/{fp32.name}", sha256=sha256_file(fp32),
                                seconds=0.0, val_metrics=score(fp32)))
        for prec in cfg.quantize.precisions:
            out = tmp / layout.variant_onnx(prec)
            start = time.perf_counter()
            kept, coverage, hit = [], {}, False
            if not precision_spec(prec).calibrated:
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
            variants.append(Variant(precision=prec, onnx_uri=f"{dest}/{out.name}", sha256=sha256_file(out),
                                    seconds=round(seconds, 3), val_metrics=score(out), kept_fp32=kept,
                                    coverage=coverage, cache_hit=hit))
            log.info("%s: %s variant in %.1fs, val AUC %.4f", fam, prec, seconds, variants[-1].val_metrics["auc"])
        np.save(tmp / layout.CALIBRATION, calib)
        result = VariantSet(family=ex.family, calibration_sha256=array_sha256(calib),
                            calibration_method=cfg.quantize.calibration_method, variants=variants,
                            not_offered=not_offered, checkpoint_uri=ex.checkpoint_uri, splits_uri=ex.splits_uri)
        write_json(tmp / layout.VARIANTS, result.to_xcom())
    return result


def _left_out(p: Plan, target: str) -> str:
    """Why ``target`` does not run tonight ('' when it does)."""
    if target not in p.targets:
        return f"target {target} left out of this run by its params (targets: {p.targets})"
    return ""


def build_engine(cfg: FactoryConfig, p: Plan, vs: VariantSet, precision: str, target: str) -> EngineResult:
    """Build one variant for one target into ``<run>/<family>/engines/<target>/<precision>/``.

    A target this worker cannot build (no TensorRT, no GPU, another architecture), or one the run's params
    leave out, returns a ``skipped`` record with the reason; a ``required`` target this worker cannot build
    raises :class:`~pipelines.engines.base.TargetUnavailableError` (final).
    """
    from factory_core.availability import host_facts

    from . import engines
    from .engines.base import BuildSpec, TargetUnavailableError, onnx_io
    from .engines.base import build_engine as build

    fam = Family(vs.family)
    declared = cfg.declared_target(target)

    def skipped(reason: str, tgt: TargetConfig = declared) -> EngineResult:
        log.warning("%s/%s for %s skipped: %s", fam, precision, tgt.name, reason)
        return EngineResult(family=fam, precision=precision, target=tgt.name, backend=str(tgt.backend),
                            status=Status.SKIPPED, reason=reason, required=tgt.required)

    if reason := _left_out(p, target):
        return skipped(reason)
    tgt, reason = cfg.resolve_target(target)  # ``auto`` becomes this worker's own architecture, here
    if tgt is None:
        return skipped(reason)
    variant = next((v for v in vs.variants if v.precision == precision), None)
    if precision not in tgt.precisions:
        return skipped(f"precision {precision} is not enabled for target {tgt.name}", tgt)
    if precision in vs.not_offered:
        return skipped(f"{precision}: {vs.not_offered[precision]}", tgt)
    if variant is None:
        return skipped(f"no {precision} variant this run (quantize.precisions: {cfg.quantize.precisions})", tgt)
    builder = engines.builder_for(str(tgt.backend), cfg.engine_store)
    reason = builder.unavailable_reason(tgt)
    if reason:
        if tgt.required:
            raise TargetUnavailableError(f"required target {tgt.name} cannot be built on this worker: {reason}")
        return skipped(reason, tgt)
    options = (cfg.engines.tensorrt if tgt.backend == "tensorrt" else cfg.engines.onnxruntime).model_dump()
    onnx_path = fetch(variant.onnx_uri, cfg.scratch)
    inputs, outputs, profile = onnx_io(onnx_path, fam, cfg.families[fam])
    spec_ = BuildSpec(family=fam, version=engine_version(p, vs), precision=precision, target=tgt, onnx=onnx_path,
                      profile=profile, options=options,
                      calibration_sha256=vs.calibration_sha256 if precision_spec(precision).calibrated else None)
    dest = _run(p).engine(fam, tgt.name, precision)
    with stage_output(dest, cfg.scratch) as tmp:
        manifest = build(builder, spec_, tmp, inputs, outputs, host_facts(), sample=_canary_sample(cfg, vs, inputs))
    log.info("%s/%s for %s: %s %s engine in %.1fs", fam, precision, tgt.name, manifest.backend,
             manifest.backend_version, manifest.build["seconds"])
    return EngineResult(family=fam, precision=precision, target=tgt.name, backend=manifest.backend, status=Status.OK,
                        engine_dir=dest, engine_sha256=manifest.sha256["engine"] or "",
                        backend_version=manifest.backend_version, seconds=manifest.build["seconds"],
                        required=tgt.required)


def _canary_sample(cfg: FactoryConfig, vs: VariantSet, inputs: list):
    """The serving canary's recorded sample: ``CANARY_ROWS`` (1,024) test windows drawn uniformly, plus up to
    ``CANARY_TAIL_ROWS`` (256) of the test windows the gates score as the tail (:func:`pipelines.gates.tail_mask`).

    Uniform, so an engine failing on a share p of inputs slips past with probability at most (1 - p)^1024: 0.59 %
    at p = 0.5 % (drawing without replacement only lowers it); the tail on top, so rare inputs are there whatever
    their share. A test split smaller than 1,024 windows is topped up with validation windows. Any number of rows:
    the build and the canary run it in chunks of the profile's max batch (``inputs``' profile).
    """
    import numpy as np

    from factory_core.contracts import CANARY_ROWS, CANARY_TAIL_ROWS

    from .datasets import load_splits
    from .gates import tail_mask

    splits = load_splits(fetch(vs.splits_uri, cfg.scratch))
    test, val = splits["test"], splits["val"]
    rng = np.random.default_rng(cfg.train.seed)
    uniform = rng.permutation(len(test))[:CANARY_ROWS]
    tail = rng.permutation(np.flatnonzero(tail_mask(Family(vs.family), test)))[:CANARY_TAIL_ROWS]
    x = test.x[np.union1d(uniform, tail)]
    short = CANARY_ROWS - len(uniform)
    if short > 0 and len(val):
        x = np.concatenate([x, val.x[np.sort(rng.permutation(len(val))[:short])]])
    return x


def engine_version(p: Plan, vs: VariantSet) -> str:
    """The night's model version: logical date plus the FP32 graph's hash (same date, same model → same version)."""
    fp32 = next(v for v in vs.variants if v.precision == REFERENCE)
    return f"{p.date.replace('-', '')}.{fp32.sha256[:8]}"


def gate_accuracy(cfg: FactoryConfig, p: Plan, vs: VariantSet) -> AccuracyReport:
    """Verdict per precision: each variant's own outputs (ONNX Runtime) against FP32 PyTorch on the test split.

    Also saves the FP32 PyTorch outputs on the test split, which every engine is scored against on its
    own target's worker.
    """
    import numpy as np

    from model_registry.runners import infer_batched, open_runner

    from .datasets import load_splits
    from .gates import accuracy_verdict
    from .models import load_model
    from .train import evaluate_split, predict

    fam = Family(vs.family)
    test = load_splits(fetch(vs.splits_uri, cfg.scratch))["test"]
    prob_ref = predict(load_model(fetch(vs.checkpoint_uri, cfg.scratch)), test.x)
    threshold = cfg.families[fam].threshold
    verdicts = []
    for v in vs.variants:
        prob = infer_batched(open_runner(fetch(v.onnx_uri, cfg.scratch), "onnxruntime", threads=0), test.x, 4096)
        verdict = accuracy_verdict(fam, v.precision, test, prob_ref, prob, cfg.gates.families[fam], threshold,
                                   cfg.gates, onnx_sha256=v.sha256)
        log.info("%s/%s accuracy gate: %s %s", fam, v.precision, verdict.status, "; ".join(verdict.reasons))
        verdicts.append(verdict)
    dest = _run(p).accuracy(fam)
    with stage_output(dest, cfg.scratch) as tmp:
        np.save(tmp / layout.REFERENCE_OUTPUTS, prob_ref)
    return AccuracyReport(family=fam, reference=evaluate_split(fam, prob_ref, test, threshold), verdicts=verdicts,
                          reference_uri=f"{dest}/{layout.REFERENCE_OUTPUTS}", splits_uri=vs.splits_uri)


def gate_target(cfg: FactoryConfig, p: Plan, acc: AccuracyReport, built: list[EngineResult],
                target: str) -> TargetGate:
    """Every engine of one family built for ``target``, gated on that target's worker (:func:`pipelines.gates.gate_engines`).

    ``built`` is every record of this target's build tasks; this family's ``ok`` ones are fetched and gated.
    """
    import numpy as np

    from .champions import read_champion
    from .datasets import load_splits
    from .gates import gate_engines

    fam = Family(acc.family)
    if reason := _left_out(p, target):
        return TargetGate(family=fam, target=target, status=Status.SKIPPED, reason=reason)
    tgt, reason = cfg.resolve_target(target)
    if tgt is None:
        return TargetGate(family=fam, target=target, status=Status.SKIPPED, reason=reason)
    mine = sorted((b for b in built if b.family == fam and b.target == tgt.name and b.status is Status.OK),
                  key=lambda b: b.precision)
    if not mine:
        return TargetGate(family=fam, target=tgt.name, status=Status.SKIPPED,
                          reason=f"no {tgt.name} engines were built this run (see the engine records)")
    engines = [(b.engine_dir, fetch(b.engine_dir, cfg.scratch)) for b in mine]
    splits = load_splits(fetch(acc.splits_uri, cfg.scratch))
    prob_ref = np.load(fetch(acc.reference_uri, cfg.scratch))
    champion = read_champion(cfg, fam, tgt.name)  # a registry outage raises (retry): never "no champion"
    return gate_engines(cfg, fam, tgt, engines, acc, splits, prob_ref, champion, night=p.date)


def gate_report(cfg: FactoryConfig, p: Plan, accuracy: list[AccuracyReport], gated: list[TargetGate],
                unavailable: dict[str, str] | None = None) -> GateReport:
    """The night's gate report and its accuracy-vs-p99 plot, committed under ``<run>/gates/``.

    ``unavailable``: targets whose build and gate tasks never ran (no worker on their queue), with the reason;
    each family records them ``skipped``.
    """
    from .report import plot_accuracy_vs_p99

    seen = {(g.family, g.target) for g in gated}
    gated = gated + [TargetGate(family=a.family, target=t, status=Status.SKIPPED, reason=reason)
                     for t, reason in sorted((unavailable or {}).items()) for a in accuracy if (a.family, t) not in seen]
    report = GateReport(date=p.date, profile=cfg.profile, accuracy=accuracy, targets=gated)
    with stage_output(_run(p).gates(), cfg.scratch) as tmp:
        write_json(tmp / layout.GATE_REPORT, report.to_xcom())
        plot_accuracy_vs_p99(report.to_xcom(), tmp / layout.GATE_PLOT)
    return report


def reference_window(cfg: FactoryConfig, p: Plan, ex: ExportResult) -> str:
    """The drift monitor's reference: rows spread over the whole history (the calibration pool, an even sample of
    the train days, then val and test) with the FP32 ONNX model's predictions.

    Not the test split alone: on a market with slow volatility the last minutes of one day are one volatility
    state, and any other window would drift from it (docs/monitoring.md, "Replay on the new world")."""
    import numpy as np

    from model_registry.runners import infer_batched, open_runner
    from monitoring.drift import feature_names, reference_frame

    from .datasets import load_splits

    splits = load_splits(fetch(ex.splits_uri, cfg.scratch))
    names = [k for k in ("calib", "val", "test") if k in splits]
    x = np.concatenate([splits[k].x for k in names])
    y = np.concatenate([splits[k].y.reshape(len(splits[k].y), -1)[:, 0] for k in names])  # the label-free estimate
    split = np.concatenate([np.full(len(splits[k].x), k) for k in names])  # checks calibration on val/test rows
    rows = cfg.monitoring.drift.reference_rows
    if len(x) > rows:
        keep = np.linspace(0, len(x) - 1, rows).round().astype(int)
        x, y, split = x[keep], y[keep], split[keep]
    runner = open_runner(fetch(ex.onnx_uri, cfg.scratch), "onnxruntime", threads=0)
    prob = infer_batched(runner, np.ascontiguousarray(x), 4096)
    df = reference_frame(x, prob, feature_names(ex.family), rows, labels=y, splits=split)
    dest = _run(p).reference(ex.family)
    with stage_output(dest, cfg.scratch) as tmp:
        df.to_parquet(tmp / layout.REFERENCE_WINDOW, index=False)
    return f"{dest}/{layout.REFERENCE_WINDOW}"


def publish(cfg: FactoryConfig, p: Plan, tr: TrainResult, ex: ExportResult, report: GateReport) -> PublishResult:
    """Track the family's night in MLflow, push each selected engine to the store, register it
    (:func:`model_registry.publish.publish_family`): only engines that passed every gate."""
    import json

    from model_registry.publish import Night, NightFiles, publish_family
    from monitoring.nvml import summary_metrics

    from .reproduce import code_identity

    family = tr.family
    extra: dict[str, float] = {}
    telemetry = fetch(tr.telemetry_uri, cfg.scratch) if tr.telemetry_uri else None
    if telemetry is not None:
        extra |= summary_metrics(json.loads(telemetry.read_text())["summary"], "train_gpu")
    selected = []
    for g in report.targets:
        if g.family != family or g.winner is None:
            continue
        tele = (g.winner.benchmark.telemetry if g.winner.benchmark else None) or {}
        if tele.get("available"):  # NVML during the winner's benchmark (GPU targets)
            extra |= summary_metrics(tele, f"{g.target}.bench_gpu")
        selected.append((g, fetch(g.winner.engine_dir, cfg.scratch)))
    files = NightFiles(checkpoint=fetch(tr.checkpoint_uri, cfg.scratch), onnx=fetch(ex.onnx_uri, cfg.scratch),
                       gate_report=fetch(f"{_run(p).gates()}/{layout.GATE_REPORT}", cfg.scratch),
                       reference=fetch(reference_window(cfg, p, ex), cfg.scratch), telemetry=telemetry)
    dates = payment_dates(cfg, p.date) if spec(family).source == "transactions" else p.lake_dates
    window = f"{dates[0]}..{dates[-1]}" if dates else p.date
    night = Night(family=family, date=p.date, data_window=window, git_commit=code_identity()["commit"],
                  test_metrics=tr.metrics, extra_metrics=extra)
    return publish_family(cfg, night, files, selected, evidence=_evidence_pages(cfg, report, night))


def _evidence_pages(cfg: FactoryConfig, report: GateReport, night: Night) -> Evidence:
    """The page renderer publish calls once the family's versions are registered: the gate report, the policy in
    force, and per target the latest drift check of the champion (with its label-free estimate) where one exists."""
    from .drift import latest_check
    from .evidence_page import policy_of, render

    family, data = night.family, report.to_xcom()
    targets = sorted({g.target for g in report.targets if g.family == family and g.status is not Status.SKIPPED})
    monitoring = {t: latest_check(cfg, family, t) for t in targets}
    facts = {"git_commit": night.git_commit[:12], "data_window": night.data_window}

    def page(target: str | None, versions: list[Registered]) -> str:
        return render(data, family, target=target, policy=policy_of(cfg, family), monitoring=monitoring,
                      registered=[v.to_xcom() for v in versions], run=facts)

    return page


def summarize(cfg: FactoryConfig, p: Plan, trained: list[TrainResult], exported: list[ExportResult],
              variants: list[VariantSet] | None = None, built: list[EngineResult] | None = None,
              report: GateReport | None = None, published: list[PublishResult] | None = None,
              unavailable: dict[str, str] | None = None) -> str:
    """Write ``summary.json`` for the night: one row per family, with its engines per target and precision.

    ``unavailable``: targets whose build tasks never ran (no worker on their queue, or left out by the run's
    params); each of their (family, precision) is recorded ``skipped`` with the reason.
    """
    built = list(built or [])
    seen = {(b.family, b.target, b.precision) for b in built}
    for name, reason in sorted((unavailable or {}).items()):
        tgt = cfg.declared_target(name)
        built += [EngineResult(family=t.family, precision=prec, target=name, backend=str(tgt.backend),
                               status=Status.SKIPPED, reason=reason, required=tgt.required)
                  for t in trained for prec in tgt.precisions if (t.family, name, prec) not in seen]
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
    run = _run(p)
    return put_json(run.summary(), {"date": p.date, "profile": cfg.profile, "trigger": p.trigger, "families": rows,
                                    "targets": p.targets,
                                    "gate_report": f"{run.gates()}/{layout.GATE_REPORT}" if report else None,
                                    "published": [x.to_xcom() for x in published or []]})


def record_outcome(cfg: FactoryConfig, date: str, unreported: Callable[[set[str]], dict[str, str]] | None = None
                   ) -> list[str]:
    """Export the night's outcome and champion freshness to Prometheus; returns the failed tasks.

    Args:
        unreported: ``reported -> {task: reason}``: the failed tasks that wrote no failure record (a task the
            scheduler failed in ``queued``, a host that died on its last try), given the tasks that did; each is
            recorded in ``failures/`` with that reason, so no failure goes unnamed.
    """
    from model_registry.registry import Registry
    from monitoring.batch import nightly_outcome

    from .orchestration import read_failures

    failed = [f["task"] for f in read_failures(cfg, date)]
    try:
        silent = unreported(set(failed)) if unreported else {}
    except Exception as exc:  # noqa: BLE001 - the outcome is recorded even when the API cannot say more
        log.warning("failed tasks without a record of their own not listed: %s", exc)
        silent = {}
    for task, reason in silent.items():
        put_json(cfg.run_layout(date).failure(task), {"task": task, "error": "NotReported", "reason": reason})
        log.error("%s", reason)
        failed.append(task)
    if not failed and get_json(cfg.run_layout(date).summary()) is None:
        failed = ["summarize"]
    champions: dict[tuple[str, str], float] = {}
    try:
        registry = Registry(cfg.tracking_uri)
        for fam in cfg.enabled_families:
            for t in cfg.declared_targets():
                t, _ = cfg.resolve_target(t.name)
                if t is None:
                    continue
                when = registry.promoted_at(fam.value, t.name)
                if when is not None:
                    champions[(fam.value, t.name)] = when.timestamp()
    except Exception as exc:  # the night's outcome is recorded even when the registry is down; freshness is not
        log.warning("champion freshness not exported: %s", exc)
    for path in nightly_outcome(cfg, date, failed, champions):
        log.info("metrics: %s", path)
    return failed
