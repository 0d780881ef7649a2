"""Validation of lake partitions. Every error names the partition and the column."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from .schema import BOOK_LEVELS, MARKET_DATASET, REGIMES, SCHEMAS


class DataValidationError(ValueError):
    """Bad input data; ``partition`` and ``column`` say where."""

    def __init__(self, partition: str, column: str | None, problem: str):
        self.partition, self.column, self.problem = partition, column, problem
        where = f"column {column!r}" if column else "partition"
        super().__init__(f"{partition}: {where}: {problem}")


def validate_table(table: pa.Table, dataset: str, partition: str) -> None:
    """Raise :class:`DataValidationError` unless ``table`` meets the dataset's contract."""
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
    if dataset == MARKET_DATASET:
        _validate_book(table, partition)
    else:
        amount = table.column("amount").to_numpy()
        if (amount <= 0).any():
            raise DataValidationError(partition, "amount", f"non-positive amount at row {int(np.argmax(amount <= 0))}")


def _validate_book(table: pa.Table, partition: str) -> None:
    bid = table.column("bid_px_1").to_numpy()
    ask = table.column("ask_px_1").to_numpy()
    crossed = np.flatnonzero(bid >= ask)
    if crossed.size:
        r = int(crossed[0])
        raise DataValidationError(partition, "bid_px_1",
                                  f"crossed book (bid >= ask) in {crossed.size} row(s), first at row {r}: "
                                  f"bid {bid[r]} >= ask {ask[r]}")
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
