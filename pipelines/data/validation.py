"""Validation of lake partitions. Every error names the partition and the column.

Two layers: :func:`validate_table` checks a partition on its own (the schema, then each row and each tick against
the one before); :func:`validate_history` checks its scale against the instrument's previous published day, whose
:class:`Reference` statistics the lake keeps in that day's Parquet footer (see ``lake.py`` and docs/lake_schema.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa

from factory_core.errors import BadInput

from .schema import BOOK_LEVELS, CHARGEBACKS_DATASET, MARKET_DATASET, REGIMES, TRANSACTIONS_DATASET, present_schema


class DataValidationError(BadInput, ValueError):
    """Bad input data; ``partition`` and ``column`` say where."""

    def __init__(self, partition: str, column: str | None, problem: str):
        self.partition, self.column, self.problem = partition, column, problem
        where = f"column {column!r}" if column else "partition"
        super().__init__(f"{partition}: {where}: {problem}")


MAX_PRICE_DEVIATION = 0.5
"""A price further than this fraction from the row's level-1 mid is an outlier (a fat-finger 1e9, a unit slip)."""

MAX_TICK_LOG_RETURN = 0.05
"""Bound on |log(mid_t / mid_t-1)| between consecutive rows (about 5 %): a larger one-tick move of the whole book is
a feed error, not a market. Measured with ``python benchmarks/lake_bounds.py`` (800 simulated days, 20 consecutive
days x 4 symbols x 10 seeds, regime-shifted days among them): the largest is 0.0066 (the slow volatility components
peaking on a shifted day), so the bound is about 7.6 times that; a 40 % jump is log(1.4) = 0.34."""

MAX_DAY_RATIO = 10.0
"""Factor either way between a day's median level-1 mid and the previous day's close, and between a day's median
size or amount (and 99th-percentile amount) and the previous day's: beyond it is a unit slip (x100 cents, x1e9
nano-units), not a market. Measured with ``python benchmarks/lake_bounds.py``: simulated days stay within 0.80-1.45
(mid), 0.33-3.0 (sizes, across a regime shift that thins the book to 0.35) and 0.40-2.5 (amounts), margins of 6.9,
3.3 and 4.0."""

ABSOLUTE_MAX = {"price": 1e9, "size": 1e10, "amount": 1e10}
"""Ceilings no instrument's price or book size and no card payment reach in their own units: they catch a unit slip
on a first day, which has no history to compare with."""

REFERENCE_KEY = b"model_factory.reference"
"""Key of a published partition's :class:`Reference` (JSON) in its Parquet footer's schema metadata."""


def validate_table(table: pa.Table, dataset: str, partition: str, day: str | None = None) -> None:
    """Raise :class:`DataValidationError` unless ``table`` meets the dataset's contract.

    ``day`` (``YYYY-MM-DD``, the partition's ``date=``): every timestamp must fall inside that UTC day.
    """
    schema = present_schema(dataset, table.column_names)  # optional columns (market regime/anomaly) may be absent
    missing = [n for n in schema.names if n not in table.column_names]
    extra = [n for n in table.column_names if n not in schema.names]
    if missing:
        raise DataValidationError(partition, missing[0], f"missing column (all missing: {missing})")
    if extra:
        raise DataValidationError(partition, extra[0], f"unexpected extra column (all extra: {extra})")
    if table.num_rows == 0 and dataset != CHARGEBACKS_DATASET:  # a day without a chargeback is a good day
        raise DataValidationError(partition, None, "empty partition (0 rows)")
    for field in schema:
        col = table.column(field.name)
        if col.null_count:
            raise DataValidationError(partition, field.name, f"{col.null_count} null/NaN value(s)")
        if not _compatible(col.type, field.type):
            raise DataValidationError(partition, field.name, f"type {col.type}, expected {field.type}")
        if pa.types.is_floating(field.type):
            values = col.to_numpy()
            bad = ~np.isfinite(values)
            if bad.any():
                first = int(np.flatnonzero(bad)[0])
                raise DataValidationError(partition, field.name,
                                          f"{int(bad.sum())} NaN/inf value(s), first at row {first}")
    ts = table.column("ts").cast(pa.int64()).to_numpy()
    back = np.flatnonzero(np.diff(ts) <= 0)
    if back.size:
        raise DataValidationError(partition, "ts", f"timestamps not strictly increasing at row {int(back[0]) + 1}")
    if day is not None:
        start = np.datetime64(day, "ns").astype(np.int64)
        end = start + 86_400 * 10**9
        outside = np.flatnonzero((ts < start) | (ts >= end))
        if outside.size:
            r = int(outside[0])
            raise DataValidationError(partition, "ts", f"{outside.size} timestamp(s) outside the partition's day "
                                                       f"{day}, first at row {r}: "
                                                       f"{np.datetime64(int(ts[r]), 'ns')}")
    if dataset == MARKET_DATASET:
        _validate_book(table, partition)
    elif dataset == TRANSACTIONS_DATASET:
        amount = table.column("amount").to_numpy()
        if (amount <= 0).any():
            raise DataValidationError(partition, "amount", f"non-positive amount at row {int(np.argmax(amount <= 0))}")
        _unique_ids(table, partition, "txn_id")
    elif dataset == CHARGEBACKS_DATASET:
        txn_ts = table.column("txn_ts").cast(pa.int64()).to_numpy()
        _first(partition, "txn_ts", txn_ts > ts, "chargeback reported before its transaction (txn_ts > ts)")
        _unique_ids(table, partition, "txn_id")


def _unique_ids(table: pa.Table, partition: str, column: str) -> None:
    ids = table.column(column).to_numpy()
    dup = pd.Series(ids).duplicated(keep=False).to_numpy()
    if dup.any():
        first = ids[np.argmax(dup)]
        rows = np.flatnonzero(ids == first).tolist()
        n = pd.Series(ids[dup]).nunique()
        raise DataValidationError(partition, column, f"duplicate id {first} at rows {rows[:10]}"
                                                     f"{' …' if len(rows) > 10 else ''} ({n} duplicated id(s); "
                                                     f"an id is unique within a partition)")


def _first(partition: str, column: str, bad: np.ndarray, what: str, values: np.ndarray | None = None) -> None:
    rows = np.flatnonzero(bad)
    if rows.size:
        r = int(rows[0])
        shown = f" ({values[r].item()!r})" if values is not None else ""
        raise DataValidationError(partition, column, f"{what} in {rows.size} row(s), first at row {r}{shown}")


def _validate_book(table: pa.Table, partition: str) -> None:
    px = {(side, lvl): table.column(f"{side}_px_{lvl}").to_numpy() for side in ("bid", "ask")
          for lvl in range(1, BOOK_LEVELS + 1)}
    last = table.column("last_px").to_numpy()
    for (side, lvl), values in px.items():
        _first(partition, f"{side}_px_{lvl}", values <= 0, "non-positive price", values)
    _first(partition, "last_px", last <= 0, "non-positive price", last)
    for lvl in range(1, BOOK_LEVELS + 1):
        bid, ask = px[("bid", lvl)], px[("ask", lvl)]
        crossed = np.flatnonzero(bid >= ask)
        if crossed.size:
            r = int(crossed[0])
            raise DataValidationError(partition, f"bid_px_{lvl}",
                                      f"crossed book (bid >= ask) at level {lvl} in {crossed.size} row(s), first at "
                                      f"row {r}: bid {bid[r]} >= ask {ask[r]}")
    for lvl in range(2, BOOK_LEVELS + 1):  # bids fall and asks rise away from the touch
        _first(partition, f"bid_px_{lvl}", px[("bid", lvl)] > px[("bid", lvl - 1)],
               f"book not monotone (bid_px_{lvl} > bid_px_{lvl - 1})", px[("bid", lvl)])
        _first(partition, f"ask_px_{lvl}", px[("ask", lvl)] < px[("ask", lvl - 1)],
               f"book not monotone (ask_px_{lvl} < ask_px_{lvl - 1})", px[("ask", lvl)])
    mid = (px[("bid", 1)] + px[("ask", 1)]) / 2
    for name, values in [("last_px", last)] + [(f"{s}_px_{lvl}", px[(s, lvl)]) for s in ("ask", "bid")
                                               for lvl in range(BOOK_LEVELS, 0, -1)]:
        _first(partition, name, np.abs(values / mid - 1) > MAX_PRICE_DEVIATION,
               f"price more than {MAX_PRICE_DEVIATION:.0%} from the level-1 mid (outlier)", values)
    step = np.diff(np.log(mid))  # the row check above keeps the book together; this one keeps the ticks together
    jumps = np.flatnonzero(np.abs(step) > MAX_TICK_LOG_RETURN)
    if jumps.size:
        r = int(jumps[0]) + 1
        raise DataValidationError(partition, "bid_px_1",
                                  f"the book jumps: level-1 mid moves {np.expm1(step[r - 1]):+.1%} in one tick, "
                                  f"from row {r - 1} ({mid[r - 1]:.6g}) to row {r} ({mid[r]:.6g}), beyond the "
                                  f"bound |log return| <= {MAX_TICK_LOG_RETURN} per tick ({jumps.size} such "
                                  f"tick(s))")
    for side in ("bid", "ask"):
        for lvl in range(1, BOOK_LEVELS + 1):
            name = f"{side}_sz_{lvl}"
            sz = table.column(name).to_numpy()
            if (sz < 0).any():
                raise DataValidationError(partition, name, f"negative size at row {int(np.argmax(sz < 0))}")
    if "regime" in table.column_names:  # optional (simulator ground truth); validated when present
        regimes = set(pd.unique(table.column("regime").to_numpy(zero_copy_only=False)))
        unknown = regimes - set(REGIMES) - {"unknown"}
        if unknown:
            raise DataValidationError(partition, "regime", f"unknown regime label(s) {sorted(unknown)}")


@dataclass(frozen=True)
class Reference:
    """A published day's scale: what the instrument's next day is checked against."""

    partition: str
    close_mid: float | None = None
    """Market: the level-1 mid of the day's last row."""
    median: dict[str, float] = field(default_factory=dict)
    """Median of each size column (market) or of ``amount`` (transactions)."""
    q99: dict[str, float] = field(default_factory=dict)
    """99th percentile of ``amount`` (transactions): a slip in a minority of rows moves it before the median."""

    def to_json(self) -> bytes:
        return json.dumps({"close_mid": self.close_mid, "median": self.median, "q99": self.q99}).encode()

    @classmethod
    def from_json(cls, partition: str, data: bytes) -> Reference:
        d = json.loads(data)
        return cls(partition, d.get("close_mid"), d.get("median", {}), d.get("q99", {}))


def _size_columns() -> list[str]:
    return [f"{s}_sz_{lvl}" for s in ("bid", "ask") for lvl in range(1, BOOK_LEVELS + 1)] + ["last_sz"]


def _np(table: pa.Table, column: str) -> np.ndarray:
    return table.column(column).to_numpy().astype(float)


def reference_of(table: pa.Table, dataset: str, partition: str) -> Reference:
    """The day's :class:`Reference` statistics (``table`` has passed :func:`validate_table`)."""
    if dataset == MARKET_DATASET:
        bid, ask = _np(table, "bid_px_1"), _np(table, "ask_px_1")
        return Reference(partition, close_mid=float(bid[-1] + ask[-1]) / 2,
                         median={c: float(np.median(_np(table, c))) for c in _size_columns()})
    if dataset != TRANSACTIONS_DATASET:  # chargebacks: no scale to compare
        return Reference(partition)
    amount = _np(table, "amount")
    return Reference(partition, median={"amount": float(np.median(amount))},
                     q99={"amount": float(np.quantile(amount, 0.99))})


def validate_history(table: pa.Table, dataset: str, partition: str, previous: Reference | None) -> Reference:
    """Raise :class:`DataValidationError` if ``table``'s scale is off; return its own :class:`Reference`.

    Against ``previous`` (the instrument's previous published day; ``None`` on its first day, which passes these) the
    median mid, sizes and amounts must stay within :data:`MAX_DAY_RATIO` either way; then every price, size and amount
    must stay under :data:`ABSOLUTE_MAX`, history or not.
    """
    today = reference_of(table, dataset, partition)
    if previous is not None:
        bound = f"beyond the factor of {MAX_DAY_RATIO:g} either way a day allows (a unit slip?)"
        if dataset == MARKET_DATASET and previous.close_mid:
            mid = float(np.median((_np(table, "bid_px_1") + _np(table, "ask_px_1")) / 2))
            if _off(mid, previous.close_mid):
                raise DataValidationError(partition, "bid_px_1",
                                          f"median level-1 mid {mid:.6g} is {mid / previous.close_mid:.3g}× the "
                                          f"previous close {previous.close_mid:.6g} ({previous.partition}): {bound}")
        for stat, now, before in [("median", today.median, previous.median), ("99th percentile", today.q99,
                                                                                previous.q99)]:
            for column, value in now.items():
                ref = before.get(column)
                if ref is not None and _off(value, ref):
                    raise DataValidationError(partition, column,
                                              f"{stat} {value:.6g} is {value / ref:.3g}× the previous day's "
                                              f"{stat} {ref:.6g} ({previous.partition}): {bound}")
    if dataset == MARKET_DATASET:
        limits = [(f"{s}_px_{lvl}", "price") for s in ("bid", "ask") for lvl in range(1, BOOK_LEVELS + 1)]
        limits += [("last_px", "price")] + [(c, "size") for c in _size_columns()]
    else:
        limits = [("amount", "amount")] if dataset == TRANSACTIONS_DATASET else []
    for column, kind in limits:
        values = _np(table, column)
        _first(partition, column, values > ABSOLUTE_MAX[kind],
               f"{kind} above the absolute ceiling {ABSOLUTE_MAX[kind]:g} (a unit slip?)", values)
    return today


def _off(value: float, ref: float) -> bool:
    """Whether ``value`` is beyond :data:`MAX_DAY_RATIO` of ``ref`` either way (undecidable when either is <= 0)."""
    if not (np.isfinite(value) and np.isfinite(ref) and value > 0 and ref > 0):
        return False
    return not 1 / MAX_DAY_RATIO <= value / ref <= MAX_DAY_RATIO


def _compatible(actual: pa.DataType, expected: pa.DataType) -> bool:
    if actual.equals(expected) or pa.types.is_null(actual):  # null: an empty column (a non-empty one failed above)
        return True
    if pa.types.is_timestamp(expected):
        return pa.types.is_timestamp(actual) and actual.tz is not None
    if pa.types.is_string(expected):
        return pa.types.is_string(actual) or pa.types.is_large_string(actual) or pa.types.is_dictionary(actual)
    if pa.types.is_floating(expected):
        return pa.types.is_floating(actual) or pa.types.is_integer(actual)
    if pa.types.is_integer(expected):
        return pa.types.is_integer(actual)
    return False


def validate_payments(txns: pd.DataFrame, chargebacks: pd.DataFrame) -> None:
    """Checks across a channel's loaded days; each frame's ``partition`` column names the partition of its row.

    A ``txn_id`` may appear in one transactions partition only and be charged back once; a chargeback whose
    ``txn_ts`` falls on a loaded transactions day must name a transaction of that day, at that time.
    """
    for frame, what in ((txns, "transaction"), (chargebacks, "chargeback")):
        dup = frame["txn_id"].duplicated(keep=False).to_numpy()
        if dup.any():
            first = frame["txn_id"].to_numpy()[np.argmax(dup)]
            where = frame.loc[frame["txn_id"] == first, "partition"].tolist()
            raise DataValidationError(where[-1], "txn_id", f"{what} id {first} also in {where[0]} (a {what} id is "
                                                           f"unique across days; {int(dup.sum())} row(s) share an id)")
    if not len(chargebacks):
        return
    days = {p.split("date=", 1)[1].split("/", 1)[0] for p in txns["partition"].unique()}
    paid = pd.Series(txns["ts"].to_numpy(), index=txns["txn_id"].to_numpy())
    on_loaded_day = chargebacks["txn_ts"].dt.strftime("%Y-%m-%d").isin(days).to_numpy()
    known = chargebacks["txn_id"].isin(paid.index).to_numpy()
    bad = on_loaded_day & ~known
    if bad.any():
        row = chargebacks.iloc[int(np.argmax(bad))]
        raise DataValidationError(row["partition"], "txn_id", f"chargeback for an unknown transaction: txn_id "
                                                              f"{row['txn_id']} (txn_ts {row['txn_ts']}) is in no "
                                                              f"transactions partition of that day ({int(bad.sum())} "
                                                              f"such row(s))")
    matched = chargebacks[known]
    off = (paid.loc[matched["txn_id"].to_numpy()].to_numpy() != matched["txn_ts"].to_numpy())
    if off.any():
        row = matched.iloc[int(np.argmax(off))]
        raise DataValidationError(row["partition"], "txn_ts", f"txn_ts {row['txn_ts']} of txn_id {row['txn_id']} is "
                                                              f"not its transaction's ts {paid.loc[row['txn_id']]} "
                                                              f"({int(off.sum())} such row(s))")
