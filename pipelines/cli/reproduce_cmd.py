"""``factory reproduce DATE``: re-run a recorded night into a scratch home and compare it artifact by artifact."""

from __future__ import annotations

import argparse
import datetime as dt
import os
from pathlib import Path

from .common import FAMILIES, add_config_arguments, iso_date
from .common import load as _load


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from rich.console import Console

    from ..reproduce import reproduce

    if args.home:  # the home the night ran in: its config finds the night's record and artifacts
        os.environ["FACTORY_HOME"] = str(Path(args.home).resolve())
    cfg = _load(args)
    stamp = dt.datetime.now().strftime("%Y%m%dT%H%M%S")
    scratch = Path(args.scratch).resolve() if args.scratch else cfg.home / "reproduce" / f"{args.date}-{stamp}"
    return reproduce(cfg, args.date, scratch, args.set, args.allow_code_change, args.families,
                     Console())


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reproduce", help="re-run a recorded night into a scratch home and compare its artifacts")
    p.add_argument("date", type=iso_date, help="the night's logical date, YYYY-MM-DD")
    p.add_argument("--home", default=None, help="the FACTORY_HOME the night ran in (default: $FACTORY_HOME)")
    p.add_argument("--scratch", default=None,
                   help="an empty folder for the re-run (default: <home>/reproduce/<date>-<time>)")
    p.add_argument("--families", nargs="+", default=None, choices=[f.value for f in FAMILIES],
                   help="reproduce only these of the night's families")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="change one key of the recorded config (e.g. train.seed=99): plant a difference")
    p.add_argument("--allow-code-change", action="store_true",
                   help="compare even though the running code is not the night's (a warning, not a refusal)")
    add_config_arguments(p)
    p.set_defaults(func=_cmd_reproduce)
