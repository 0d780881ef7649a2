"""``factory data facts``: the market data's stylized facts, measured on lake days, beside the published ranges."""

from __future__ import annotations

import argparse
import datetime as dt

from .common import add_config_arguments, iso_date
from .common import load as _load

FACTS_FOLDER = "data_facts"
"""The command's folder in the run folder of ``--date``: the facts' table (JSON) and plot."""
FACTS_PLOT = "stylized_facts.png"
FACTS_TABLE = "stylized_facts.json"


def market_sessions(cfg, dates: list[str]) -> tuple[list[tuple[str, object]], int]:
    """``(symbol, ticks)`` for every configured symbol on each of ``dates``, and how many were simulated.

    A partition the lake lacks is simulated (and not written) when ``data.source`` is ``simulator``, as ``ingest``
    would write it; with ``lake`` it is an error naming the partition.
    """
    from ..data import lake
    from ..data.schema import MARKET_DATASET
    from ..data.simulator import simulate_market
    from ..data.validation import DataValidationError

    sessions, simulated = [], 0
    for d in dates:
        for symbol in cfg.data.symbols:
            part = lake.Partition(MARKET_DATASET, d, symbol)
            if lake.exists(cfg.lake_uri, part):
                sessions.append((symbol, lake.read_partition(cfg.lake_uri, part)))
            elif cfg.data.source == "simulator":
                sessions.append((symbol, simulate_market(d, symbol, cfg.data.ticks_per_day, cfg.data.seed)))
                simulated += 1
            else:
                raise DataValidationError(part.key, None, f"partition missing from lake {cfg.lake_uri} (data.source "
                                                          f"is lake: nothing is simulated); factory data facts "
                                                          f"needs {len(dates)} day(s) of data.symbols "
                                                          f"{cfg.data.symbols}, {dates[0]} to {dates[-1]}")
    return sessions, simulated


def print_facts(facts, title: str, console=None) -> None:
    """One row per fact: measured value beside the published range, its source, the sample size, pass or fail."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    if not console.is_terminal:
        console.width = max(console.width, 160)
    table = Table(title=title)
    for col in ("fact", "statistic", "measured", "published range / threshold", "source", "n", "ok"):
        table.add_column(col, justify="right" if col in ("measured", "n") else "left")
    for r in facts.rows:
        ok = "[dim]stated[/]" if r.ok is None else "[green]pass[/]" if r.ok else "[bold red]FAIL[/]"
        table.add_row(r.fact, r.statistic, f"{r.value:.4g}", r.published, r.source, f"{r.n:,}", ok)
    console.print(table)


def _cmd_facts(args: argparse.Namespace) -> int:
    from factory_core.fsutil import join, stage_output, write_json

    from ..data import facts as stylized

    cfg = _load(args)
    date = args.date or dt.datetime.now(dt.timezone.utc).date().isoformat()
    day = dt.date.fromisoformat(date)
    dates = [(day - dt.timedelta(days=k)).isoformat() for k in range(args.days, 0, -1)]
    sessions, simulated = market_sessions(cfg, dates)
    measured = stylized.measure(sessions)
    where = f"{simulated} simulated (not written to the lake), {len(sessions) - simulated} from the lake"
    print_facts(measured, f"Stylized facts · {dates[0]} to {dates[-1]} · {len(cfg.data.symbols)} symbols × "
                          f"{args.days} days = {len(sessions)} sessions ({where})")
    dest = join(cfg.run_layout(date).uri, FACTS_FOLDER)
    with stage_output(dest, cfg.scratch) as tmp:
        stylized.plot(measured, tmp / FACTS_PLOT)
        write_json(tmp / FACTS_TABLE, {"dates": dates, "symbols": cfg.data.symbols, "sessions": len(sessions),
                                       "simulated": simulated, "kurtosis": measured.kurtosis,
                                       "facts": measured.to_frame().to_dict(orient="records")})
    print(f"plot and table: {dest}/{FACTS_PLOT}, {dest}/{FACTS_TABLE}")
    return 0 if measured.ok else 1


def _cmd_import_lobster(args: argparse.Namespace) -> int:
    """``factory data import-lobster``: one LOBSTER message/order-book pair into the configured lake."""
    from ..data.lobster import import_lobster

    cfg = _load(args)
    path, s = import_lobster(cfg.lake_uri, args.message, args.orderbook, args.symbol, args.date, args.tz,
                             max_empty_fraction=args.max_empty_fraction)
    print(f"wrote {path}: {s.ticks:,} ticks from {s.messages:,} messages ({s.merged:,} merged at equal timestamps, "
          f"{s.halts} halt messages, {s.before_first_trade:,} before the first trade, {s.empty_levels:,} with an "
          f"unoccupied level dropped)")
    return 0


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"--days must be a positive whole number, got {text!r}")
    return n


def register(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="the lake's market data: stylized facts")
    cmds = data.add_subparsers(dest="data_command", required=True)
    facts = cmds.add_parser("facts", help="the market's stylized facts (Cont 2001) on lake days, beside the published "
                                          "ranges; exit 1 if one fails")
    facts.add_argument("--date", type=iso_date, default=None,
                       help="measure the --days lake days before it, as the night of that date trains on, and write "
                            "the plot into its run folder (default: today, UTC)")
    facts.add_argument("--days", type=_positive, default=20,
                       help="days to pool (default 20: with 4 symbols, about 1,200 one-minute returns)")
    add_config_arguments(facts)
    facts.set_defaults(func=_cmd_facts)
    lob = cmds.add_parser("import-lobster", help="write a LOBSTER message/orderbook pair (one symbol, one day) into "
                                                 "the lake as market_ticks (docs/data.md)")
    lob.add_argument("message", help="the LOBSTER message CSV")
    lob.add_argument("orderbook", help="the LOBSTER orderbook CSV (at least 5 levels)")
    lob.add_argument("--symbol", required=True)
    lob.add_argument("--date", required=True, type=iso_date, help="the trading day (the partition's date=)")
    lob.add_argument("--tz", default="America/New_York", help="the exchange timezone LOBSTER's seconds after "
                                                               "midnight are in (default America/New_York)")
    lob.add_argument("--max-empty-fraction", type=float, default=0.01,
                     help="refuse the file if more ticks than this have an unoccupied level among the first 5 "
                          "(fewer are dropped)")
    add_config_arguments(lob)
    lob.set_defaults(func=_cmd_import_lobster)
