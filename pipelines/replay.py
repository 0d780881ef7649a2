"""``factory replay``: serve the champion on one day, as a serving host would, and log what it saw.

The day comes from the lake. With the embedded simulator (``data.source: simulator``) a
day the lake lacks is simulated first, by default with a regime shift part-way through
(:class:`pipelines.data.simulator.Shift`: a stressed market, or a changed customer base),
and written to the lake like any other day, so the retraining it triggers learns from it.
With ``data.source: lake`` the real day is replayed as it is.

Requests go through :class:`model_registry.runtime.EngineRunner` (the champion pulled
and verified like on a serving host) with serving metrics and a prediction log at sample
rate 1, each record stamped with the request's market time. ``drift_monitor`` then
checks that window.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from factory_core.config import FactoryConfig, Family
from factory_core.families import spec

from .data.simulator import Shift

log = logging.getLogger(__name__)


@dataclass
class Replay:
    family: str
    target: str
    date: str
    champion_version: str
    engine_version: str
    requests: int
    since: dt.datetime
    until: dt.datetime
    day_source: str
    """``simulated with shift …``, ``simulated without shift`` or ``lake``."""
    p50_ms: float
    p99_ms: float


def _day(cfg: FactoryConfig, dataset: str, symbol: str, date: str, shift: Shift | None) -> tuple[pd.DataFrame, str]:
    from .data import lake
    from .data.payments import simulate_chargebacks
    from .data.schema import MARKET_DATASET, TRANSACTIONS_DATASET
    from .data.simulator import simulate_market, simulate_transactions

    part = lake.Partition(dataset, date, symbol)
    if lake.exists(cfg.lake_uri, part):
        return lake.read_partition(cfg.lake_uri, part), "lake"
    if cfg.data.source != "simulator":
        raise FileNotFoundError(f"replay: the lake {cfg.lake_uri} has no partition {part.key}")
    if dataset == MARKET_DATASET:
        df = simulate_market(date, symbol, cfg.data.ticks_per_day, cfg.data.seed, shift=shift)
    elif dataset == TRANSACTIONS_DATASET:
        df = simulate_transactions(date, symbol, cfg.data.transactions_per_day, cfg.data.seed, shift=shift)
    else:  # chargebacks: the shift changes no transaction's identity, so none of them
        df = simulate_chargebacks(date, symbol, cfg.data.transactions_per_day, cfg.data.seed)
    lake.write_partition(cfg.lake_uri, part, df)
    how = f"simulated with a regime shift from {shift.start:.0%} of the day" if shift else "simulated without shift"
    return df, how


def requests_for_day(cfg: FactoryConfig, family: str, date: str, shift: Shift | None,
                     max_requests: int) -> tuple[np.ndarray, np.ndarray, str]:
    """Model inputs and their times (ns) for ``date``, at most ``max_requests`` evenly spaced."""
    from .data import lake
    from .data.schema import CHARGEBACKS_DATASET, MARKET_DATASET, TRANSACTIONS_DATASET, TRANSACTIONS_SYMBOL
    from .data.validation import validate_payments
    from .features import FRAUD_FEATURES, MARKET_FEATURES, fraud_features, make_windows, market_features
    from .stages import payment_warmup_days

    fam = Family(family)
    if spec(fam).source == "transactions":
        # The features look back 30 days (payments, and the chargebacks reported before each payment): load the
        # warm-up days before too, keep the day's rows.
        day = dt.date.fromisoformat(date)
        txns, chargebacks, source = [], [], ""
        for k in range(payment_warmup_days(), -1, -1):
            d = (day - dt.timedelta(days=k)).isoformat()
            for dataset, frames in ((TRANSACTIONS_DATASET, txns), (CHARGEBACKS_DATASET, chargebacks)):
                try:
                    df, how = _day(cfg, dataset, TRANSACTIONS_SYMBOL, d, shift if k == 0 else None)
                except FileNotFoundError:
                    log.warning("replay: no %s %s in the lake; the history features are short", dataset, d)
                    continue
                frames.append(df.assign(partition=lake.Partition(dataset, d, TRANSACTIONS_SYMBOL).key))
                source = how if k == 0 and dataset == TRANSACTIONS_DATASET else source
        if not source:
            raise FileNotFoundError(f"replay: no {TRANSACTIONS_DATASET} {date} in the lake {cfg.lake_uri}")
        txn_df, cb_df = pd.concat(txns, ignore_index=True), pd.concat(chargebacks, ignore_index=True)
        validate_payments(txn_df, cb_df)
        feats = fraud_features(txn_df, cb_df, since=pd.Timestamp(day, tz="UTC"))
        x, ts = feats[FRAUD_FEATURES].to_numpy(np.float32), feats["ts"].astype("int64").to_numpy()
    else:
        window = cfg.families[fam].window
        xs, tss, source = [], [], ""
        for symbol in cfg.data.symbols:
            ticks, source = _day(cfg, MARKET_DATASET, symbol, date, shift)
            feats = market_features(ticks, cfg.features)
            values = feats[MARKET_FEATURES].to_numpy(np.float32)
            ends = np.arange(window - 1, len(feats))
            xs.append(make_windows(values, ends, window))
            tss.append(feats["ts"].astype("int64").to_numpy()[ends])
        x, ts = np.concatenate(xs), np.concatenate(tss)
    order = np.argsort(ts, kind="stable")
    x, ts = x[order], ts[order]
    keep = np.arange(len(x)) if len(x) <= max_requests else np.linspace(0, len(x) - 1, max_requests).round().astype(int)
    return x[keep], ts[keep], source


def replay(cfg: FactoryConfig, family: str, date: str, target: str = "cpu", shift: Shift | None = Shift(),
           max_requests: int = 4000) -> Replay:
    """Pull the champion, serve the day one request at a time, log every prediction."""
    from model_registry.pull import pull
    from model_registry.runtime import EngineRunner
    from monitoring.serving import PredictionLog

    inst = pull(cfg, family, target, "champion", cfg.home / "serving")
    x, ts, source = requests_for_day(cfg, family, date, shift, max_requests)
    if not len(x):
        raise ValueError(f"replay: no requests for {family} on {date}")
    plog = PredictionLog(cfg.prediction_log_uri, family, target, sample_rate=1.0, max_queue=len(x) + 1,
                         batch_rows=2000, s3_endpoint_url=cfg.registry.s3_endpoint_url)
    runner = EngineRunner(inst.path)
    latencies = np.empty(len(x))
    log.info("replay %s/%s %s: %d requests on champion v%s (%s)", family, target, date, len(x),
             inst.registry_version, inst.version)
    for i in range(len(x)):
        req = x[i:i + 1]
        t0 = time.perf_counter()
        out = runner.predict(req)
        latencies[i] = time.perf_counter() - t0
        plog.record(req, out, latencies[i], runner.version,
                    ts=dt.datetime.fromtimestamp(ts[i] / 1e9, dt.timezone.utc))
        if (i + 1) % 1000 == 0:
            log.info("replay: %d/%d requests", i + 1, len(x))
    plog.close(timeout=120)
    since = dt.datetime.fromtimestamp(ts[0] / 1e9, dt.timezone.utc)
    until = dt.datetime.fromtimestamp(ts[-1] / 1e9, dt.timezone.utc) + dt.timedelta(seconds=1)
    return Replay(family, target, date, inst.registry_version, inst.version, len(x), since, until, source,
                  float(np.percentile(latencies, 50) * 1e3), float(np.percentile(latencies, 99) * 1e3))
