"""Every bad-input case fails with an error naming the partition and the column, and writes nothing."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.data import lake
from pipelines.data.schema import MARKET_DATASET, TRANSACTIONS_DATASET
from pipelines.data.simulator import simulate_market, simulate_transactions
from pipelines.data.validation import DataValidationError

PART = lake.Partition(MARKET_DATASET, "2026-11-20", "ESZ6")


@pytest.fixture
def ticks():
    return simulate_market("2026-11-20", "ESZ6", 600, 7)


def _files(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_round_trip(tmp_path, ticks):
    path = lake.write_partition(str(tmp_path), PART, ticks)
    assert path.endswith("market_ticks/date=2026-11-20/symbol=ESZ6/part-0.parquet")
    back = lake.read_partition(str(tmp_path), PART)
    pd.testing.assert_frame_equal(back, ticks, check_dtype=False)
    assert lake.list_symbols(str(tmp_path), MARKET_DATASET, "2026-11-20") == ["ESZ6"]


def _nan(df):
    df.loc[17, "bid_sz_3"] = np.nan
    return df, "bid_sz_3", "NaN"


def _inf(df):
    df.loc[5, "last_px"] = np.inf
    return df, "last_px", "NaN/inf"


def _backwards(df):
    ts = df["ts"].copy()
    ts.iloc[40], ts.iloc[41] = ts.iloc[41], ts.iloc[40]
    df["ts"] = ts
    return df, "ts", "not strictly increasing at row 41"


def _crossed(df):
    df.loc[9, "bid_px_1"] = df.loc[9, "ask_px_1"] + 0.01
    return df, "bid_px_1", "crossed book"


def _empty(df):
    return df.iloc[0:0], None, "empty partition"


def _missing(df):
    return df.drop(columns=["ask_sz_2"]), "ask_sz_2", "missing column"


def _extra(df):
    df["venue"] = "X"
    return df, "venue", "unexpected extra column"


def _negative_last(df):
    df.loc[100:199, "last_px"] = -df.loc[100:199, "last_px"]
    return df, "last_px", "non-positive price in 100 row(s), first at row 100"


def _outlier(df):
    df.loc[250, "last_px"] = 1e9
    return df, "last_px", "from the level-1 mid (outlier) in 1 row(s), first at row 250"


def _deep_outlier(df):
    df.loc[12, "ask_px_5"] = 1e9  # monotone (asks rise), uncrossed: only the band sees it
    return df, "ask_px_5", "outlier"


def _crossed_level_2(df):
    df.loc[30, "bid_px_2"] = df.loc[30, "ask_px_2"]
    return df, "bid_px_2", "crossed book (bid >= ask) at level 2"


def _not_monotone(df):
    df.loc[44, "bid_px_3"] = df.loc[44, "bid_px_2"] + 0.5 * (df.loc[44, "ask_px_1"] - df.loc[44, "bid_px_2"])
    return df, "bid_px_3", "book not monotone (bid_px_3 > bid_px_2)"


def _other_day(df):
    df["ts"] = df["ts"] - pd.Timedelta(days=1)  # yesterday's file copied under this date
    return df, "ts", "outside the partition's day 2026-11-20, first at row 0"


@pytest.mark.parametrize("corrupt", [_nan, _inf, _backwards, _crossed, _empty, _missing, _extra, _negative_last,
                                     _outlier, _deep_outlier, _crossed_level_2, _not_monotone, _other_day])
def test_bad_partition_is_rejected_and_nothing_written(tmp_path, ticks, corrupt):
    df, column, problem = corrupt(ticks.copy())
    with pytest.raises(DataValidationError) as err:
        lake.write_partition(str(tmp_path), PART, df)
    assert err.value.partition == PART.key
    assert err.value.column == column
    assert problem in str(err.value) and PART.key in str(err.value)
    assert not lake.exists(str(tmp_path), PART)
    assert not [f for f in _files(tmp_path) if f.endswith(".parquet")]


def test_bad_file_already_in_lake_is_caught_on_read(tmp_path, ticks):
    """A real feed may drop a bad file straight into the lake: reading names it."""
    _, path = lake.partition_file(str(tmp_path), PART)
    bad = ticks.copy()
    bad.loc[3, "ask_px_1"] = bad.loc[3, "bid_px_1"]
    import pathlib
    pathlib.Path(path).parent.mkdir(parents=True)
    pq.write_table(pa.Table.from_pandas(bad, preserve_index=False), path)
    with pytest.raises(DataValidationError, match=r"date=2026-11-20/symbol=ESZ6: column 'bid_px_1': crossed book"):
        lake.read_partition(str(tmp_path), PART)


def test_truncated_file_is_named(tmp_path, ticks):
    path = lake.write_partition(str(tmp_path), PART, ticks)
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    with pytest.raises(DataValidationError, match="unreadable Parquet"):
        lake.read_partition(str(tmp_path), PART)


def test_transactions_schema_checked(tmp_path):
    part = lake.Partition(TRANSACTIONS_DATASET, "2026-11-20", "CARD")
    tx = simulate_transactions("2026-11-20", "CARD", 600, 7)
    tx.loc[4, "amount"] = -1.0
    with pytest.raises(DataValidationError, match="column 'amount': non-positive amount at row 4"):
        lake.write_partition(str(tmp_path), part, tx)


def test_unknown_symbols_in_the_lake_are_logged_by_ingest(tmp_path, ticks, smoke_cfg, caplog):
    from pipelines import stages

    p = stages.plan(smoke_cfg, "2026-11-21")
    lake.write_partition(smoke_cfg.lake_uri, lake.Partition(MARKET_DATASET, p.lake_dates[0], "ZZZ9"),
                         simulate_market(p.lake_dates[0], "ZZZ9", 600, 7))
    with caplog.at_level("WARNING"):
        stages.ingest(smoke_cfg, p)
    assert any("symbol(s) ['ZZZ9'] not in data.symbols" in r.getMessage() for r in caplog.records)
