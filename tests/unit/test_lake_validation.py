"""Every bad-input case fails with an error naming the partition and the column, and writes nothing."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.data import lake
from pipelines.data.schema import BOOK_LEVELS, MARKET_DATASET, TRANSACTIONS_DATASET
from pipelines.data.simulator import Shift, simulate_market, simulate_transactions
from pipelines.data.validation import DataValidationError

PART = lake.Partition(MARKET_DATASET, "2026-11-20", "ESZ6")
TXN = lake.Partition(TRANSACTIONS_DATASET, "2026-11-20", "CARD")
PRICES = [f"{s}_px_{lvl}" for s in ("bid", "ask") for lvl in range(1, BOOK_LEVELS + 1)] + ["last_px"]


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


def _book_jumps_40_percent(df):
    df.loc[300:, PRICES] *= 1.4  # every level moves together: each row is consistent, the tick is not
    return df, "bid_px_1", "level-1 mid moves +40.0% in one tick, from row 299 ("


def _book_spikes_40_percent(df):
    df.loc[300, PRICES] *= 0.6
    return df, "bid_px_1", "level-1 mid moves -40.0% in one tick, from row 299 ("


@pytest.mark.parametrize("corrupt", [_nan, _inf, _backwards, _crossed, _empty, _missing, _extra, _negative_last,
                                     _outlier, _deep_outlier, _crossed_level_2, _not_monotone, _other_day,
                                     _book_jumps_40_percent, _book_spikes_40_percent])
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


def test_duplicated_txn_id_is_named_with_its_rows(tmp_path):
    tx = simulate_transactions("2026-11-20", "CARD", 600, 7)
    tx.loc[[9, 40], "txn_id"] = tx.loc[3, "txn_id"]
    tx.loc[50, "txn_id"] = tx.loc[45, "txn_id"]
    with pytest.raises(DataValidationError) as err:
        lake.write_partition(str(tmp_path), TXN, tx)
    assert (err.value.partition, err.value.column) == (TXN.key, "txn_id")
    assert f"duplicate id {tx.loc[3, 'txn_id']} at rows [3, 9, 40] (2 duplicated id(s)" in err.value.problem
    assert not lake.exists(str(tmp_path), TXN)


# --- Scale against the instrument's own history -----------------------------------------------------------------

YESTERDAY = "2026-11-19"


@pytest.fixture
def lake_with_yesterday(tmp_path):
    """A lake holding the previous day of ESZ6 and of CARD, published (their reference statistics with them)."""
    root = str(tmp_path)
    lake.write_partition(root, lake.Partition(MARKET_DATASET, YESTERDAY, "ESZ6"),
                         simulate_market(YESTERDAY, "ESZ6", 600, 7))
    lake.write_partition(root, lake.Partition(TRANSACTIONS_DATASET, YESTERDAY, "CARD"),
                         simulate_transactions(YESTERDAY, "CARD", 600, 7))
    return root


def _prices_x1e9(df):
    df[PRICES] *= 1e9
    return df, "bid_px_1", "× the previous close"


def _prices_in_cents(df):
    df[PRICES] *= 100
    return df, "bid_px_1", "× the previous close"


def _volume_x1e9(df):
    df["last_sz"] *= 1e9
    return df, "last_sz", "× the previous day's median"


def _size_x1e9(df):
    df["ask_sz_1"] *= 1e9
    return df, "ask_sz_1", "× the previous day's median"


def _amount_x1e9(df):
    df["amount"] *= 1e9
    return df, "amount", "× the previous day's median"


def _amount_x1000_in_some_rows(df):
    df.loc[::40, "amount"] *= 1000  # 2.5 % of the rows: the median holds, the tail does not
    return df, "amount", "99th percentile"


@pytest.mark.parametrize("slip", [_prices_x1e9, _prices_in_cents, _volume_x1e9, _size_x1e9, _amount_x1e9,
                                  _amount_x1000_in_some_rows])
def test_unit_slip_against_the_previous_day_is_refused(lake_with_yesterday, slip):
    part = TXN if "amount" in slip.__name__ else PART
    day = (simulate_transactions(part.date, "CARD", 600, 7) if part is TXN
           else simulate_market(part.date, "ESZ6", 600, 7))
    df, column, problem = slip(day.copy())
    with pytest.raises(DataValidationError) as err:
        lake.write_partition(lake_with_yesterday, part, df)
    assert (err.value.partition, err.value.column) == (part.key, column)
    assert problem in err.value.problem and "beyond the factor of 10 either way" in err.value.problem
    assert f"({part.dataset}/date={YESTERDAY}/symbol={part.symbol})" in err.value.problem  # the day compared with
    assert not lake.exists(lake_with_yesterday, part)
    lake.write_partition(lake_with_yesterday, part, day)  # the same day without the slip publishes


@pytest.mark.parametrize("dataset, column, kind", [(MARKET_DATASET, "bid_px_1", "price"),
                                                   (MARKET_DATASET, "last_sz", "size"),
                                                   (TRANSACTIONS_DATASET, "amount", "amount")])
def test_a_first_day_has_no_history_but_the_absolute_ceilings_hold(tmp_path, dataset, column, kind):
    part = PART if dataset == MARKET_DATASET else TXN
    day = simulate_market(part.date, "ESZ6", 600, 7) if part is PART else simulate_transactions(part.date, "CARD",
                                                                                                600, 7)
    x100 = day.copy()
    x100[PRICES if kind == "price" else column] *= 100
    lake.write_partition(str(tmp_path / "a"), part, x100)  # nothing to compare with: a first day passes
    slipped = day.copy()
    slipped[PRICES if kind == "price" else column] *= 1e9
    with pytest.raises(DataValidationError) as err:
        lake.write_partition(str(tmp_path / "b"), part, slipped)
    assert (err.value.partition, err.value.column) == (part.key, column)
    assert f"{kind} above the absolute ceiling" in err.value.problem


def _drop(root, date, df):
    """Write a file straight into the lake, as a feed may, without write_partition (so without statistics)."""
    import pathlib

    _, path = lake.partition_file(str(root), lake.Partition(MARKET_DATASET, date, "ESZ6"))
    pathlib.Path(path).parent.mkdir(parents=True)
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), path)


def test_a_feed_file_dropped_into_the_lake_is_checked_against_history_on_read(tmp_path):
    """Neither day went through write_partition: the previous day's statistics come from its columns."""
    _drop(tmp_path, YESTERDAY, simulate_market(YESTERDAY, "ESZ6", 600, 7))
    slipped = simulate_market(PART.date, "ESZ6", 600, 7)
    slipped[PRICES] *= 1e9
    _drop(tmp_path, PART.date, slipped)
    lake.read_partition(str(tmp_path), lake.Partition(MARKET_DATASET, YESTERDAY, "ESZ6"))
    with pytest.raises(DataValidationError, match=r"date=2026-11-20/symbol=ESZ6: column 'bid_px_1': median level-1 "
                                                  r"mid .* the previous close .*date=2026-11-19/symbol=ESZ6"):
        lake.read_partition(str(tmp_path), PART)


def test_a_bad_previous_day_is_named_not_trusted(tmp_path):
    _drop(tmp_path, YESTERDAY, simulate_market(YESTERDAY, "ESZ6", 600, 7).drop(columns=["last_sz"]))
    with pytest.raises(DataValidationError) as err:
        lake.write_partition(str(tmp_path), PART, simulate_market(PART.date, "ESZ6", 600, 7))
    assert (err.value.partition, err.value.column) == (f"{MARKET_DATASET}/date={YESTERDAY}/symbol=ESZ6", "last_sz")
    assert "missing column" in err.value.problem
    assert not lake.exists(str(tmp_path), PART)


def test_history_skips_missing_days_and_other_symbols(lake_with_yesterday):
    """The reference is the instrument's most recent earlier day, however far back; another symbol has its own."""
    later = lake.Partition(MARKET_DATASET, "2026-11-24", "ESZ6")  # a weekend and a holiday after YESTERDAY
    assert lake.previous_reference(lake_with_yesterday, later).partition == f"{MARKET_DATASET}/date={YESTERDAY}/" \
                                                                          f"symbol=ESZ6"
    assert lake.previous_reference(lake_with_yesterday, lake.Partition(MARKET_DATASET, "2026-11-24", "NQZ6")) is None
    slipped = simulate_market(later.date, "ESZ6", 600, 7)
    slipped[PRICES] *= 100
    with pytest.raises(DataValidationError, match="previous close"):
        lake.write_partition(lake_with_yesterday, later, slipped)


def test_a_real_change_of_scale_is_published_on_request_and_becomes_the_baseline(lake_with_yesterday):
    """A 20:1 stock split is refused by default; published with check_history=False, the next day follows it."""
    split = simulate_market(PART.date, "ESZ6", 600, 7)
    split[PRICES] /= 20
    with pytest.raises(DataValidationError, match="previous close"):
        lake.write_partition(lake_with_yesterday, PART, split)
    lake.write_partition(lake_with_yesterday, PART, split, check_history=False)
    after = simulate_market("2026-11-21", "ESZ6", 600, 7)
    after[PRICES] /= 20
    lake.write_partition(lake_with_yesterday, lake.Partition(MARKET_DATASET, "2026-11-21", "ESZ6"), after)
    lake.read_partition(lake_with_yesterday, PART)  # published: its own reference, not re-checked on read


@pytest.mark.parametrize("seed", [1, 7, 42])
def test_clean_consecutive_simulated_days_publish(tmp_path, seed):
    """No false rejection: five consecutive days of two symbols and the card channel, a regime-shifted day among
    them (``factory replay`` writes such days), each checked against the one before."""
    days = [f"2026-11-{d:02d}" for d in range(16, 21)]
    for date in days:
        shift = Shift(start=0.0) if date == days[2] else Shift() if date == days[3] else None
        for symbol in ("ESZ6", "AAPL"):
            lake.write_partition(str(tmp_path), lake.Partition(MARKET_DATASET, date, symbol),
                                 simulate_market(date, symbol, 2000, seed, shift=shift))
        lake.write_partition(str(tmp_path), lake.Partition(TRANSACTIONS_DATASET, date, "CARD"),
                             simulate_transactions(date, "CARD", 2000, seed, shift=shift))
    assert len(_files(tmp_path)) == 15


def test_unknown_symbols_in_the_lake_are_logged_by_ingest(tmp_path, ticks, smoke_cfg, caplog):
    from pipelines import stages

    p = stages.plan(smoke_cfg, "2026-11-21")
    lake.write_partition(smoke_cfg.lake_uri, lake.Partition(MARKET_DATASET, p.lake_dates[0], "ZZZ9"),
                         simulate_market(p.lake_dates[0], "ZZZ9", 600, 7))
    with caplog.at_level("WARNING"):
        stages.ingest(smoke_cfg, p)
    assert any("symbol(s) ['ZZZ9'] not in data.symbols" in r.getMessage() for r in caplog.records)
