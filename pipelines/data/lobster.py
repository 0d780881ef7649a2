"""LOBSTER limit-order-book files into the lake's ``market_ticks`` schema, and back (for tests).

LOBSTER (lobsterdata.com, NASDAQ TotalView-ITCH reconstructed) gives, per instrument and day, two CSV files with no
header and one row per order-book event (format: lobsterdata.com/info/DataStructure.php and the
``LOBSTER_SampleFiles_ReadMe.txt`` shipped with its sample files):

* ``TICKER_YYYY-MM-DD_StartMs_EndMs_message_LEVELS.csv``: time (seconds after midnight, exchange local time, up to
  nanosecond decimals), event type (1 submission, 2 partial cancellation, 3 deletion, 4 visible execution,
  5 hidden execution, 6 cross trade, 7 trading halt), order id, size (shares), price (dollars x 10000), direction
  (-1 sell, 1 buy limit order);
* ``TICKER_YYYY-MM-DD_StartMs_EndMs_orderbook_LEVELS.csv``: the book after each event, ask price, ask size, bid
  price, bid size for levels 1..LEVELS (prices x 10000); an unoccupied level holds the dummy price 9999999999
  (ask) or -9999999999 (bid) with size 0.

The import (:func:`read_lobster`):

* timestamps: seconds after midnight of ``date`` in the exchange timezone ``tz`` (default ``America/New_York``,
  NASDAQ's), converted to UTC nanoseconds;
* the lake needs strictly increasing timestamps, so the events sharing a timestamp (a marketable order filling
  several resting orders is several messages at one time) become one tick: the book after the last of them;
* ``last_px``/``last_sz``: the price of the tick's last execution (types 4 and 5) and the shares its executions
  filled, carried forward to ticks without one; ticks before the day's first execution are dropped (no last trade
  yet). Cross trades (6) do not count; trading-halt messages (7, whose book row repeats the one before) are dropped;
* the book: the first 5 levels (a file with fewer is refused); a tick with an unoccupied level among them cannot
  meet the lake contract (positive prices near the mid) and is dropped; more than ``max_empty_fraction`` of such
  ticks refuses the file (a book too thin for the 5-level features);
* no ``regime``/``anomaly`` (a real feed has no ground truth; the lake takes them as optional).

Malformed files (wrong column count, a non-numeric or non-integer cell, message and order-book row counts that
differ, time going backwards) raise :class:`~.validation.DataValidationError` naming the file, the line and the
column. :func:`write_lobster` writes lake ticks as a LOBSTER pair (one execution message per tick), so a test can
round-trip a simulated day.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import numpy as np
import pandas as pd

from .schema import BOOK_LEVELS, MARKET_DATASET
from .validation import DataValidationError

log = logging.getLogger(__name__)

DEFAULT_TZ = "America/New_York"
PRICE_SCALE = 10_000
DUMMY_ASK, DUMMY_BID = 9_999_999_999, -9_999_999_999
EXECUTIONS = (4, 5)
HALT = 7
MESSAGE_COLUMNS = ("time", "type", "order_id", "size", "price", "direction")
_MESSAGE_DTYPES = {0: np.float64, 1: np.int64, 2: np.int64, 3: np.int64, 4: np.int64, 5: np.int64}
_NAME = re.compile(r"(?P<ticker>[^_/\\]+)_(?P<date>\d{4}-\d{2}-\d{2})_(?P<start>\d+)_(?P<end>\d+)_"
                   r"(?P<kind>message|orderbook)_(?P<levels>\d+)\.csv$")


class LobsterFormatError(DataValidationError):
    """A malformed LOBSTER file: ``partition`` holds the file, ``column`` the column's name (None: the whole file)."""

    def __init__(self, file: str | Path, problem: str, line: int | None = None, column: int | None = None,
                 name: str | None = None):
        super().__init__(str(file), name, problem)
        self.line = line
        where = ", ".join(w for w in (f"line {line}" if line is not None else "",
                                      f"column {column} ({name})" if column is not None else "") if w)
        self.args = (f"{file}: {where + ': ' if where else ''}{problem}",)


@dataclass(frozen=True)
class ImportSummary:
    """What :func:`read_lobster` kept and dropped."""

    messages: int
    ticks: int
    """Rows of the partition."""
    merged: int
    """Messages folded into the tick of an earlier message at the same timestamp."""
    halts: int
    before_first_trade: int
    empty_levels: int
    """Ticks dropped for an unoccupied level among the first 5."""


def _book_columns(levels: int) -> list[str]:
    return [f"{name}_{lvl}" for lvl in range(1, levels + 1) for name in ("ask_px", "ask_sz", "bid_px", "bid_sz")]


def _read_csv(path: Path, names: list[str] | None, dtypes: dict[int, type] | type, what: str) -> pd.DataFrame:
    """``path`` as a headerless numeric table; a malformed one raises naming the file, line and column."""
    try:
        df = pd.read_csv(path, header=None, dtype=dtypes, float_precision="round_trip")
    except FileNotFoundError as exc:
        raise LobsterFormatError(path, f"{what} file not found") from exc
    except pd.errors.EmptyDataError as exc:
        raise LobsterFormatError(path, f"empty {what} file") from exc
    except pd.errors.ParserError as exc:  # a row with more fields than the first: pandas names the line
        found = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(exc))
        if not found:
            raise LobsterFormatError(path, f"malformed {what} CSV: {str(exc).strip()}") from exc
        want, line, saw = map(int, found.groups())
        raise LobsterFormatError(path, f"{saw} fields where the first row has {want}", line=line) from exc
    except (ValueError, TypeError):  # a cell the explicit dtypes refuse: find it
        _locate_bad_cell(path, names, dtypes, what)
    _check_width(path, names, df.shape[1], what)
    if df.isna().any().any():
        r, c = (int(i) for i in np.argwhere(df.isna().to_numpy())[0])
        raise LobsterFormatError(path, "empty (a row with fewer fields?)", r + 1, c + 1, _name(names, c))
    if names is not None:
        df.columns = names
    return df


def _check_width(path: Path, names: list[str] | None, width: int, what: str) -> None:
    if names is not None and width != len(names):
        raise LobsterFormatError(path, f"{width} columns, a LOBSTER {what} file has {len(names)} "
                                       f"({', '.join(names)})")


def _locate_bad_cell(path: Path, names: list[str] | None, dtypes: dict[int, type] | type, what: str) -> NoReturn:
    raw = pd.read_csv(path, header=None, dtype=str, keep_default_na=False)
    _check_width(path, names, raw.shape[1], what)
    for c in raw.columns:
        want = dtypes.get(c, np.int64) if isinstance(dtypes, dict) else dtypes
        values = pd.to_numeric(raw[c], errors="coerce")
        bad = values.isna().to_numpy()
        if want is np.int64:
            bad |= ~np.isclose(values.fillna(0) % 1, 0)
        if bad.any():
            r = int(np.flatnonzero(bad)[0])
            cell = raw.iat[r, c]
            problem = ("empty (a row with fewer fields?)" if cell == "" else
                       f"{cell!r} is not {'a number' if want is np.float64 else 'an integer'}")
            raise LobsterFormatError(path, problem, r + 1, c + 1, _name(names, c))
    raise LobsterFormatError(path, f"unreadable {what} CSV")


def _name(names: list[str] | None, c: int) -> str:
    """A column's name: the message file's, or the order book's ``ask_px_1`` etc."""
    return names[c] if names else _book_columns(c // 4 + 1)[c]


def parse_name(path: str | Path) -> dict[str, str] | None:
    """``ticker``, ``date``, ``start``, ``end``, ``kind``, ``levels`` of a LOBSTER file name; None if not one."""
    m = _NAME.search(Path(path).name)
    return m.groupdict() if m else None


def read_lobster(message: str | Path, orderbook: str | Path, date: str, tz: str = DEFAULT_TZ,
                 max_empty_fraction: float = 0.01) -> tuple[pd.DataFrame, ImportSummary]:
    """One LOBSTER message/order-book pair as a ``market_ticks`` partition's rows (see the module docstring)."""
    message, orderbook = Path(message), Path(orderbook)
    for path in (message, orderbook):
        named = parse_name(path)
        if named and named["date"] != date:
            raise LobsterFormatError(path, f"the file name's date {named['date']} is not the partition date {date}")
    msg = _read_csv(message, list(MESSAGE_COLUMNS), _MESSAGE_DTYPES, "message")
    book = _read_csv(orderbook, None, np.int64, "orderbook")
    if book.shape[1] % 4:
        raise LobsterFormatError(orderbook, f"{book.shape[1]} columns, not 4 per level (ask price, ask size, bid "
                                            f"price, bid size)")
    levels = book.shape[1] // 4
    if levels < BOOK_LEVELS:
        raise LobsterFormatError(orderbook, f"{levels} book level(s); the lake needs {BOOK_LEVELS} (request LOBSTER "
                                            f"files with at least {BOOK_LEVELS} levels)")
    book.columns = _book_columns(levels)
    if len(msg) != len(book):
        raise LobsterFormatError(message, f"{len(msg)} message rows but {len(book)} order-book rows in {orderbook} "
                                          f"(one book row per message)", line=min(len(msg), len(book)) + 1)
    back = np.flatnonzero(np.diff(msg["time"].to_numpy()) < 0)
    if back.size:
        r = int(back[0]) + 1
        raise LobsterFormatError(message, f"time goes backwards: {msg['time'].iat[r]} after {msg['time'].iat[r - 1]} "
                                          f"(LOBSTER files are in time order)", r + 1, 1, "time")
    n_messages = len(msg)
    keep = (msg["type"] != HALT).to_numpy()
    line = np.flatnonzero(keep) + 1  # file line of each message kept
    msg, book = msg[keep].reset_index(drop=True), book[keep].reset_index(drop=True)
    ns = np.round(msg["time"].to_numpy() * 1e9).astype(np.int64)
    trade = msg["type"].isin(EXECUTIONS).to_numpy()
    per_msg = pd.DataFrame({"ns": ns, "px": np.where(trade, msg["price"].to_numpy(), np.nan),
                            "sz": np.where(trade, msg["size"].to_numpy(), 0)})
    groups = per_msg.groupby("ns", sort=False)
    last = groups.tail(1).index  # the book after the timestamp's last event
    ticks = book.loc[last].reset_index(drop=True)
    ticks["ns"], ticks["line"] = ns[last], line[last]
    traded = groups["sz"].sum().to_numpy()
    last_px = groups["px"].last().to_numpy()  # the timestamp's last execution (NaN if none)
    ticks["last_px"] = pd.Series(last_px).ffill().to_numpy() / PRICE_SCALE
    ticks["last_sz"] = pd.Series(np.where(np.isnan(last_px), np.nan, traded)).ffill().to_numpy()
    before = ticks["last_px"].isna().to_numpy()
    cols = _book_columns(BOOK_LEVELS)
    px = ticks[[c for c in cols if "_px_" in c]].to_numpy()
    empty = ((px == DUMMY_ASK) | (px == DUMMY_BID)).any(axis=1) & ~before
    if empty.sum() > max_empty_fraction * max(int((~before).sum()), 1):
        r = int(np.flatnonzero(empty)[0])
        c = int(np.flatnonzero((px[r] == DUMMY_ASK) | (px[r] == DUMMY_BID))[0])
        name = [n for n in cols if "_px_" in n][c]
        raise LobsterFormatError(orderbook, f"unoccupied level (dummy price {DUMMY_ASK}/{DUMMY_BID}) among the first "
                                            f"{BOOK_LEVELS} in {int(empty.sum())} of {int((~before).sum())} ticks, "
                                            f"more than max_empty_fraction {max_empty_fraction:g}; the first here",
                                 int(ticks["line"].iat[r]), cols.index(name) + 1, name)
    ticks = ticks[~before & ~empty]
    if ticks.empty:
        raise LobsterFormatError(message, f"no tick left (no execution, or no complete {BOOK_LEVELS}-level book in "
                                          f"{orderbook})")
    local = pd.to_datetime(date) + pd.to_timedelta(ticks["ns"].to_numpy(), unit="ns")
    ts = pd.DatetimeIndex(local).tz_localize(tz, ambiguous="raise", nonexistent="raise").tz_convert("UTC")
    out = pd.DataFrame({"ts": ts.astype("datetime64[ns, UTC]")})
    for side in ("bid", "ask"):
        for lvl in range(1, BOOK_LEVELS + 1):
            out[f"{side}_px_{lvl}"] = ticks[f"{side}_px_{lvl}"].to_numpy() / PRICE_SCALE
            out[f"{side}_sz_{lvl}"] = ticks[f"{side}_sz_{lvl}"].to_numpy(np.float64)
    out["last_px"] = ticks["last_px"].to_numpy()
    out["last_sz"] = ticks["last_sz"].to_numpy(np.float64)
    summary = ImportSummary(messages=n_messages, ticks=len(out), merged=int(len(per_msg) - groups.ngroups),
                            halts=int((~keep).sum()), before_first_trade=int(before.sum()),
                            empty_levels=int(empty.sum()))
    return out, summary


def import_lobster(lake_uri: str, message: str | Path, orderbook: str | Path, symbol: str, date: str,
                   tz: str = DEFAULT_TZ, *, max_empty_fraction: float = 0.01,
                   check_history: bool = True) -> tuple[str, ImportSummary]:
    """Read a LOBSTER pair and publish it as ``market_ticks/date=<date>/symbol=<symbol>`` (validated, atomic)."""
    from . import lake

    ticks, summary = read_lobster(message, orderbook, date, tz, max_empty_fraction)
    path = lake.write_partition(lake_uri, lake.Partition(MARKET_DATASET, date, symbol), ticks,
                                check_history=check_history)
    log.info("lobster: %s: %d messages -> %d ticks (%d merged at equal timestamps, %d halt messages, %d before the "
             "first trade, %d with an unoccupied level dropped)", path, summary.messages, summary.ticks,
             summary.merged, summary.halts, summary.before_first_trade, summary.empty_levels)
    return path, summary


def write_lobster(ticks: pd.DataFrame, directory: str | Path, symbol: str, date: str,
                  tz: str = DEFAULT_TZ) -> tuple[Path, Path]:
    """Write lake ticks (e.g. a simulated day) as a LOBSTER message/order-book pair with 5 levels.

    Each tick becomes one visible execution (type 4) of ``last_sz`` at ``last_px`` against the side it traded at
    (direction -1, a sell limit order, when the trade is at or above the mid), with the tick's book after it.
    Prices are rounded to LOBSTER's 1/10000. Returns (message path, order-book path).
    """
    local = ticks["ts"].dt.tz_convert(tz).dt.tz_localize(None)
    ns = (local - pd.Timestamp(date)).to_numpy().astype("timedelta64[ns]").astype(np.int64)
    if (ns < 0).any() or (ns >= 86_400 * 10**9).any():
        raise ValueError(f"ticks outside {date} in {tz}")
    secs, frac = np.divmod(ns, 10**9)
    time = pd.Series(secs).astype(str) + "." + pd.Series(frac).astype(str).str.zfill(9)
    mid = (ticks["bid_px_1"] + ticks["ask_px_1"]).to_numpy() / 2

    def scaled(col: str) -> np.ndarray:
        return np.round(ticks[col].to_numpy() * PRICE_SCALE).astype(np.int64)

    msg = pd.DataFrame({"time": time, "type": 4, "order_id": np.arange(1, len(ticks) + 1),
                        "size": np.round(ticks["last_sz"].to_numpy()).astype(np.int64), "price": scaled("last_px"),
                        "direction": np.where(ticks["last_px"].to_numpy() >= mid, -1, 1)})
    book = pd.DataFrame({c: scaled(c) if "_px_" in c else np.round(ticks[c].to_numpy()).astype(np.int64)
                         for c in _book_columns(BOOK_LEVELS)})
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    start_ms, end_ms = int(ns[0] // 10**6), int(-(-ns[-1] // 10**6))
    stem = f"{symbol}_{date}_{start_ms}_{end_ms}"
    paths = directory / f"{stem}_message_{BOOK_LEVELS}.csv", directory / f"{stem}_orderbook_{BOOK_LEVELS}.csv"
    msg.to_csv(paths[0], header=False, index=False)
    book.to_csv(paths[1], header=False, index=False)
    return paths
