"""A real feed in: LOBSTER files into the lake, and a night's stages on a lake without the simulator's ground truth."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from factory_core.families import Family
from pipelines.data import lake
from pipelines.data.lobster import LobsterFormatError, import_lobster, read_lobster, write_lobster
from pipelines.data.schema import MARKET_DATASET, MARKET_OPTIONAL
from pipelines.data.simulator import simulate_market
from pipelines.data.validation import DataValidationError, validate_table
from pipelines.datasets import build_family_data, load_splits
from pipelines.features import FLASH_TICKS, market_features
from pipelines.gates import tail_mask
from pipelines.quantize import calibration_set, check_calibration

DATE, SYMBOL = "2026-11-03", "ESZ6"
BOOK_AND_LAST = [c for c in simulate_market(DATE, SYMBOL, 500, 1).columns if c not in ("ts", *MARKET_OPTIONAL)]


@pytest.fixture(scope="module")
def day():
    return simulate_market(DATE, SYMBOL, 3000, 5)


@pytest.fixture
def files(day, tmp_path):
    return write_lobster(day, tmp_path / "lobster", SYMBOL, DATE)


def _lines(path):
    return path.read_text().splitlines()


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_simulated_day_round_trips_through_lobster_files_into_the_lake(day, files, tmp_path):
    message, orderbook = files
    assert message.name.startswith(f"{SYMBOL}_{DATE}_") and message.name.endswith("_message_5.csv")
    assert len(_lines(message)[0].split(",")) == 6 and len(_lines(orderbook)[0].split(",")) == 20
    path, summary = import_lobster(str(tmp_path / "lake"), message, orderbook, SYMBOL, DATE)
    assert summary.ticks == len(day) and summary.merged == summary.halts == summary.empty_levels == 0
    back = lake.read_partition(str(tmp_path / "lake"), lake.Partition(MARKET_DATASET, DATE, SYMBOL))
    assert not set(MARKET_OPTIONAL) & set(back.columns)  # a real feed has no ground truth
    assert (back["ts"].to_numpy() == day["ts"].to_numpy()).all()  # New York seconds after midnight -> UTC ns
    np.testing.assert_allclose(back[BOOK_AND_LAST].to_numpy(), day[BOOK_AND_LAST].to_numpy(), rtol=0, atol=1e-9)


def test_the_exchange_timezone_is_a_parameter(day, files):
    message, orderbook = files
    london, _ = read_lobster(message, orderbook, DATE, tz="Europe/London")
    shift = london["ts"].to_numpy() - day["ts"].to_numpy()
    assert (shift == np.timedelta64(-5, "h")).all()  # New York is UTC-5 on 3 Nov 2026, London UTC+0


def test_events_at_one_timestamp_become_one_tick_and_trades_carry_forward(day, files, tmp_path):
    message, orderbook = files
    m, b = _lines(message), _lines(orderbook)
    t = [line.split(",") for line in m[:6]]
    t[0][1] = "1"  # a submission before the day's first trade: no last trade yet, dropped
    t[2][0] = t[1][0]  # a second fill at the same time as row 2: one tick, sizes summed, the last price
    t[3][1] = "3"  # a deletion: the last trade carries forward
    t[4][1], t[4][4], t[4][3] = "7", "-1", "0"  # a trading halt: dropped
    msg = _write(tmp_path / "m.csv", [",".join(r) for r in t] + m[6:])
    ticks, summary = read_lobster(msg, _write(tmp_path / "b.csv", b), DATE)
    assert (summary.before_first_trade, summary.merged, summary.halts) == (1, 1, 1)
    assert len(ticks) == len(day) - 3
    assert ticks["ts"].is_monotonic_increasing and ticks["ts"].is_unique
    first = ticks.iloc[0]  # rows 2 and 3 of the file: the book after row 3, both fills
    assert first["ts"] == day["ts"].iloc[1]
    assert first["last_sz"] == int(t[1][3]) + int(t[2][3]) and first["last_px"] == int(t[2][4]) / 1e4
    assert first["bid_px_1"] == day["bid_px_1"].iloc[2]
    carried = ticks.iloc[1]  # row 4, the deletion
    assert carried["last_px"] == first["last_px"] and carried["last_sz"] == first["last_sz"]
    assert carried["ask_sz_1"] == day["ask_sz_1"].iloc[3]


def test_unoccupied_levels_drop_the_tick_or_refuse_a_thin_book(day, files, tmp_path):
    message, orderbook = files
    b = [line.split(",") for line in _lines(orderbook)]
    b[10][16] = "9999999999"  # ask_px_5 unoccupied (LOBSTER's dummy), size 0
    b[10][17] = "0"
    book = _write(tmp_path / "b.csv", [",".join(r) for r in b])
    ticks, summary = read_lobster(message, book, DATE)
    assert summary.empty_levels == 1 and len(ticks) == len(day) - 1
    assert not (ticks[[c for c in ticks.columns if "_px_" in c]] > 1e5).any().any()
    with pytest.raises(LobsterFormatError, match=r"b\.csv: line 11, column 17 \(ask_px_5\): unoccupied level"):
        read_lobster(message, book, DATE, max_empty_fraction=0.0)


def test_fewer_than_five_levels_are_refused(files, tmp_path):
    message, orderbook = files
    four = _write(tmp_path / "b.csv", [",".join(line.split(",")[:16]) for line in _lines(orderbook)])
    with pytest.raises(LobsterFormatError, match=r"b\.csv: 4 book level\(s\); the lake needs 5"):
        read_lobster(message, four, DATE)


@pytest.mark.parametrize(("edit", "error"), [
    (lambda m: m[:5] + [m[5] + ",7"] + m[6:], r"m\.csv: line 6: 7 fields where the first row has 6"),
    (lambda m: [line + ",0" for line in m], r"m\.csv: 7 columns, a LOBSTER message file has 6"),
    (lambda m: m[:5] + [m[5].rsplit(",", 1)[0]] + m[6:], r"m\.csv: line 6, column 6 \(direction\): empty"),
    (lambda m: m[:7] + [m[7].replace(",4,", ",x,", 1)] + m[8:], r"m\.csv: line 8, column 2 \(type\): 'x' is not an "
                                                                r"integer"),
    (lambda m: m[:7] + ["abc" + m[7][5:]] + m[8:], r"m\.csv: line 8, column 1 \(time\): '.*' is not a number"),
    (lambda m: m[:9] + [m[10], m[9]] + m[11:], r"m\.csv: line 11, column 1 \(time\): time goes backwards"),
    (lambda m: m[:-1], r"m\.csv: line 3000: 2999 message rows but 3000 order-book rows"),
], ids=["extra-field", "seven-columns", "missing-field", "non-numeric", "bad-time", "unsorted", "row-count"])
def test_malformed_message_files_are_named_with_line_and_column(files, tmp_path, edit, error):
    message, orderbook = files
    with pytest.raises(LobsterFormatError, match=error) as info:
        read_lobster(_write(tmp_path / "m.csv", edit(_lines(message))), orderbook, DATE)
    assert isinstance(info.value, DataValidationError)  # BadInput: final, never retried


def test_a_malformed_orderbook_cell_is_named(files, tmp_path):
    message, orderbook = files
    b = _lines(orderbook)
    b[3] = ",".join(["1.5" if i == 2 else v for i, v in enumerate(b[3].split(","))])
    with pytest.raises(LobsterFormatError, match=r"b\.csv: line 4, column 3 \(bid_px_1\): '1.5' is not an integer"):
        read_lobster(message, _write(tmp_path / "b.csv", b), DATE)


def test_a_file_name_of_another_day_is_refused(files):
    message, orderbook = files
    with pytest.raises(LobsterFormatError, match=f"file name's date {DATE} is not the partition date 2026-11-04"):
        read_lobster(message, orderbook, "2026-11-04")


def test_ground_truth_columns_are_optional_and_still_checked_when_present(day):
    bare = pa.Table.from_pandas(day.drop(columns=list(MARKET_OPTIONAL)), preserve_index=False)
    validate_table(bare, MARKET_DATASET, "bare", DATE)
    validate_table(pa.Table.from_pandas(day.drop(columns=["anomaly"]), preserve_index=False), MARKET_DATASET, "r",
                   DATE)
    bad = day.assign(regime="euphoric")
    with pytest.raises(DataValidationError, match="unknown regime label"):
        validate_table(pa.Table.from_pandas(bad, preserve_index=False), MARKET_DATASET, "bad", DATE)
    with pytest.raises(DataValidationError, match="'anomaly': type"):
        validate_table(pa.Table.from_pandas(day.assign(anomaly="yes"), preserve_index=False), MARKET_DATASET,
                       "bad", DATE)


def test_a_night_runs_on_a_lake_without_ground_truth(smoke_cfg, tmp_path):
    """features -> datasets -> tail mask -> calibration set, on partitions a real feed could have written."""
    uri = str(tmp_path / "lake")
    frames = []
    for date in ("2026-11-03", "2026-11-04"):
        for symbol in smoke_cfg.data.symbols:
            raw = simulate_market(date, symbol, smoke_cfg.data.ticks_per_day, 3).drop(columns=list(MARKET_OPTIONAL))
            part = lake.Partition(MARKET_DATASET, date, symbol)
            lake.write_partition(uri, part, raw)
            feats = market_features(lake.read_partition(uri, part), smoke_cfg.features)
            assert not set(MARKET_OPTIONAL) & set(feats.columns)
            frames.append(feats.assign(date=date, symbol=symbol))
    market = pd.concat(frames, ignore_index=True)
    for family in (Family.MARKET_ALERT, Family.PRICE_DIRECTION):
        data = build_family_data(family, smoke_cfg, market, None)
        pool = data.train
        assert set(np.unique(pool.state)) == {0, 1, 2}  # trailing-volatility terciles
        tail = tail_mask(family, pool)
        assert 0 < tail.mean() < 0.5 and pool.flash.any()
        calib = calibration_set(pool.x, pool.state, tail, smoke_cfg.quantize.calibration_size, 0)
        check_calibration(calib, len(data.feature_names))
        data.save(tmp_path / f"{family}.npz")
        saved = load_splits(tmp_path / f"{family}.npz")
        assert (saved["test"].flash == data.test.flash).all() and (saved["test"].state == data.test.state).all()


def test_splits_saved_under_the_former_field_names_still_load(tmp_path):
    n = 8
    cols = {"x": np.zeros((n, 3), np.float32), "y": np.zeros(n, np.float32), "ts": np.arange(n, dtype=np.int64),
            "regime": np.full(n, "bull"), "anomaly": np.arange(n) % 2 == 0, "fwd_ret_bps": np.zeros(n, np.float32)}
    np.savez(tmp_path / "old.npz", **{f"{p}.{k}": v for p in ("val", "test", "calib") for k, v in cols.items()})
    old = load_splits(tmp_path / "old.npz")["calib"]
    assert list(old.state) == ["bull"] * n and list(old.flash) == list(cols["anomaly"])


def test_the_data_defined_flash_finds_the_simulators_planted_anomalies(smoke_cfg):
    """The tail no longer reads ``anomaly``; its replacement, computed from prices and sizes, must still find the
    planted events (benchmarks/tail_overlap.py measures the full overlap)."""
    caught = events = flagged = hits = 0
    for seed in (0, 1):
        raw = simulate_market(DATE, SYMBOL, 20_000, seed)
        feats = market_features(raw.drop(columns=list(MARKET_OPTIONAL)), smoke_cfg.features)
        truth = raw.set_index("ts")["anomaly"].loc[feats["ts"]].to_numpy(bool)
        flash = feats["flash"].to_numpy(bool)
        near = pd.Series(truth.astype(float)).rolling(FLASH_TICKS, min_periods=1).max().to_numpy() > 0
        flagged, hits = flagged + flash.sum(), hits + (flash & near).sum()
        starts = np.flatnonzero(np.diff(np.concatenate([[0], truth.astype(int)])) == 1)
        events += len(starts)
        caught += sum(flash[s:s + 6 + FLASH_TICKS].any() for s in starts)
    assert events > 100
    assert caught / events > 0.8  # recall per planted event
    assert hits / flagged > 0.6  # a flash is mostly a planted event (the rest: the market's own extreme moves)
