"""Per-family datasets: windows, labels and time-ordered train/val/test splits.

Splits cut on time, shared by all symbols: a window belongs to the split its end tick
falls in, and a window whose label looks past its split's end is purged, so no label
peeks into the next split.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import pandas as pd

from factory_core.config import FactoryConfig, Family
from factory_core.errors import BadInput
from factory_core.families import spec


class InsufficientDataError(BadInput, ValueError):
    """Too little data to train or gate a family (bad input: the same lake fails the same way; no retry)."""
from .features import FRAUD_FEATURES, MARKET_FEATURES, make_windows


@dataclass(frozen=True)
class Split:
    x: np.ndarray
    y: np.ndarray
    ts: np.ndarray
    """End tick (or transaction) time, int64 ns."""
    state: np.ndarray
    """Market state the INT8 calibration set is stratified by, from the data: the trailing-volatility tercile of
    the window's end tick (0 low, 1 mid, 2 high; cut at the family's 1/3 and 2/3 quantiles of ``vol``). 0 for fraud."""
    flash: np.ndarray
    """The window ends on or within a few ticks of a flash move (``flash`` of :func:`.features.market_features`,
    computed from prices and sizes): the tail the gates score apart. False for fraud."""
    fwd_ret_bps: np.ndarray
    """Forward mid return over the direction horizon (NaN for fraud)."""

    def __len__(self) -> int:
        return len(self.y)

    def take(self, idx: np.ndarray) -> "Split":
        return Split(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})


@dataclass(frozen=True)
class FamilyData:
    family: Family
    feature_names: list[str]
    train: Split
    val: Split
    test: Split

    def save(self, path: Path, calib_pool: int = 4000) -> None:
        """Save val, test and a train subsample (the calibration pool) as one ``.npz``."""
        idx = _evenly(len(self.train), calib_pool)
        arrays = {}
        for name, split in (("val", self.val), ("test", self.test), ("calib", self.train.take(idx))):
            for f in fields(split):
                arrays[f"{name}.{f.name}"] = getattr(split, f.name)
        np.savez(path, **arrays)


_FORMER = {"state": "regime", "flash": "anomaly"}
"""Split fields under their names in files saved before the ground truth became optional."""


def load_splits(path: str | Path) -> dict[str, Split]:
    """Read back what :meth:`FamilyData.save` wrote: ``{"val", "test", "calib"}``.

    A file saved under the former field names (``regime``, ``anomaly``: the simulator's ground truth) reads with
    those arrays as ``state`` and ``flash``.
    """
    with np.load(path, allow_pickle=False) as z:
        def get(name: str, field: str) -> np.ndarray:
            key = f"{name}.{field}"
            return z[key] if key in z.files or field not in _FORMER else z[f"{name}.{_FORMER[field]}"]

        return {name: Split(**{f.name: get(name, f.name) for f in fields(Split)}) for name in ("val", "test", "calib")}


def _evenly(n: int, k: int) -> np.ndarray:
    return np.arange(n) if n <= k else np.linspace(0, n - 1, k).round().astype(int)


def _market_windows(features: pd.DataFrame, family: Family, cfg: FactoryConfig) -> tuple[Split, np.ndarray]:
    fam = cfg.families[family]
    label = spec(family).label
    parts, label_end = [], []
    for _, session in features.groupby(["date", "symbol"], sort=True):
        values = session[MARKET_FEATURES].to_numpy(np.float32)
        ends = np.arange(fam.window - 1, len(session), fam.stride)
        if not len(ends):
            continue
        parts.append(Split(
            x=make_windows(values, ends, fam.window),
            y=session[label].to_numpy(np.float32)[ends],
            ts=session["ts"].astype("int64").to_numpy()[ends],
            state=session["vol"].to_numpy(np.float64)[ends],  # trailing vol; terciles below
            flash=session["flash"].to_numpy(bool)[ends],
            fwd_ret_bps=session["fwd_ret_bps"].to_numpy(np.float32)[ends],
        ))
        label_end.append(session["label_end_ts"].to_numpy(np.int64)[ends])
    if not parts:
        raise InsufficientDataError(f"{family}: no session is longer than the {fam.window}-tick window "
                                    f"(families.{family}.window); more ticks per day (data.ticks_per_day) are needed")
    merged = Split(**{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(Split)})
    return replace(merged, state=vol_terciles(merged.state)), np.concatenate(label_end)


def vol_terciles(vol: np.ndarray) -> np.ndarray:
    """0, 1, 2: below the 1/3 quantile of ``vol``, up to the 2/3 quantile, above (int8)."""
    cuts = np.quantile(vol, [1 / 3, 2 / 3])
    return np.searchsorted(cuts, vol, side="right").astype(np.int8)


def build_family_data(family: Family, cfg: FactoryConfig, market: pd.DataFrame | None,
                      fraud: pd.DataFrame | None) -> FamilyData:
    """Windows and time-ordered splits for one family."""
    if spec(family).source == "transactions":
        assert fraud is not None
        fraud = fraud[fraud["label"].notna()]  # the newest days: labels not final (chargebacks still to come)
        ts = fraud["ts"].astype("int64").to_numpy()
        n = len(fraud)
        data = Split(x=fraud[FRAUD_FEATURES].to_numpy(np.float32), y=fraud["label"].to_numpy(np.float32), ts=ts,
                     state=np.zeros(n, np.int8), flash=np.zeros(n, bool), fwd_ret_bps=np.full(n, np.nan, np.float32))
        label_end, names = ts, FRAUD_FEATURES
    else:
        assert market is not None
        data, label_end = _market_windows(market, family, cfg)
        names = MARKET_FEATURES
    order = np.argsort(data.ts, kind="stable")
    data, label_end = data.take(order), label_end[order]
    f_train, f_val, _ = cfg.train.split
    t1, t2 = np.quantile(data.ts, [f_train, f_train + f_val])
    train = np.flatnonzero((data.ts < t1) & (label_end < t1))
    val = np.flatnonzero((data.ts >= t1) & (data.ts < t2) & (label_end < t2))
    test = np.flatnonzero(data.ts >= t2)
    train = train[_evenly(len(train), cfg.train.max_train_samples)]
    for name, idx in (("train", train), ("validation", val), ("test", test)):
        if len(idx) == 0 or len(np.unique(data.y[idx])) < 2:
            raise InsufficientDataError(f"{family}: the {name} split has {len(idx)} samples and lacks both classes "
                                        f"({len(data)} windows in all); more lake days (data.history_days) or "
                                        f"ticks are needed")
    return FamilyData(family, list(names), data.take(train), data.take(val), data.take(test))
