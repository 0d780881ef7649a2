"""Validation of lake partitions. Every error names the partition and the column."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from factory_core.errors import BadInput

from .schema import BOOK_LEVELS, MARKET_DATASET, REGIMES, SCHEMAS


class DataValidationError(BadInput, ValueError):
    """Bad input data; ``partition`` and ``column`` say where."""

    def __init__(self, partition: str, column: str | None, problem: str):
        self.partition, self.column, self.problem = partition, column, problem
        where = f"column {column!r}" if column else "partition"
        super().__init__(f"{partition}: {where}: {problem}")


MAX_PRICE_DEVIATION = 0.5
"""A price further than this fraction from the row's level-1 mid is an outlier (a fat-finger 1e9, a unit slip)."""


def validate_table(table: pa.Table, dataset: str, partition: str, day: str | None = None) -> None:
    """Raise :class:`DataValidationError` unless ``table`` meets the dataset's contract.

    ``day`` (``YYYY-MM-DD``, the partition's ``date=``): every timestamp must fall inside that UTC day.
    """
    schema = SCHEMAS[dataset]
    missing = [n for n in schema.names if n not in table.column_names]
    extra = [n for n in table.column_names if n not in schema.names]
    if missing:
        raise DataValidationError(partition, missing[0], f"missing column (all missing: {missing})")
    if extra:
        raise DataValidationError(partition, extra[0], f"unexpected extra column (all extra: {extra})")
    if table.num_rows == 0:
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
    else:
        amount = table.column("amount").to_numpy()
        if (amount <= 0).any():
            raise DataValidationError(partition, "amount", f"non-positive amount at row {int(np.argmax(amount <= 0))}")


def _first(partition: str, column: str, bad: np.ndarray, what: str, values: np.ndarray | None = None) -> None:
    rows = np.flatnonzero(bad)
    if rows.size:
        r = int(rows[0])
        shown = f" ({values[r]!r})" if values is not None else ""
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
    for side in ("bid", "ask"):
        for lvl in range(1, BOOK_LEVELS + 1):
            name = f"{side}_sz_{lvl}"
            sz = table.column(name).to_numpy()
            if (sz < 0).any():
                raise DataValidationError(partition, name, f"negative size at row {int(np.argmax(sz < 0))}")
    regimes = set(pd.unique(table.column("regime").to_numpy(zero_copy_only=False)))
    unknown = regimes - set(REGIMES) - {"unknown"}
    if unknown:
        raise DataValidationError(partition, "regime", f"unknown regime label(s) {sorted(unknown)}")


def _compatible(actual: pa.DataType, expected: pa.DataType) -> bool:
    if actual.equals(expected):
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
