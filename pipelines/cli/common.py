"""Argument helpers every command group shares."""

from __future__ import annotations

import argparse
import datetime as dt

from factory_core.config import FactoryConfig, load_config
from factory_core.families import Family

FAMILIES = Family
"""The ``choices`` of a family argument: the registered families, read when a parser is built (``Family``
iterates them)."""


def add_config_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="factory.yaml (default: $FACTORY_CONFIG or ./factory.yaml)")
    p.add_argument("--profile", choices=["smoke", "default"], default=None)


def iso_date(text: str) -> str:
    try:
        return dt.date.fromisoformat(text).isoformat()
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--date must be YYYY-MM-DD, got {text!r}") from exc


def parse_time(text: str) -> dt.datetime:
    try:
        t = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected an ISO 8601 time, got {text!r}") from exc
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


def load(args: argparse.Namespace) -> FactoryConfig:
    """The config for a command, with the MLflow client's retries and timeouts bounded by it."""
    from ..preflight import apply_client_limits

    cfg = load_config(args.config, args.profile)
    apply_client_limits(cfg)
    return cfg
