"""A night's date: checked where a night starts, and the one rule for which dates can be trusted.

A night's date orders champions (a champion trained for a newer date is not replaced by an older night), so a
mistyped future date (``--date 2027-06-01``) would train on simulated days that have not happened and then block
every later promotion. A night may be dated at most :data:`FUTURE_ALLOWANCE_DAYS` after today's UTC date: the
one day lets a desk ahead of UTC (Tokyo, Sydney) run its local "today" before UTC midnight.
"""

from __future__ import annotations

import datetime as dt

from .errors import BadInput

FUTURE_ALLOWANCE_DAYS = 1
"""How far after today's UTC date a night may be dated (time zones ahead of UTC)."""


class FutureDate(BadInput, ValueError):
    """A night dated beyond today plus the allowance; the message names the date and the allowance."""


def today_utc() -> dt.date:
    return dt.datetime.now(dt.timezone.utc).date()


def latest_night_date(today: dt.date | None = None) -> dt.date:
    """The latest date a night may carry now."""
    return (today or today_utc()) + dt.timedelta(days=FUTURE_ALLOWANCE_DAYS)


def is_future(date: str, today: dt.date | None = None) -> bool:
    """Whether ``date`` (``YYYY-MM-DD``) lies beyond today's UTC date plus the allowance."""
    return dt.date.fromisoformat(date) > latest_night_date(today)


def check_night_date(date: str, today: dt.date | None = None) -> str:
    """``date`` unchanged, or :class:`FutureDate` naming it, today's UTC date and the allowance."""
    if is_future(date, today):
        now = today or today_utc()
        ahead = (dt.date.fromisoformat(date) - now).days
        raise FutureDate(f"night date {date} is {ahead} days after today ({now.isoformat()} UTC); a night may be dated "
                         f"at most {FUTURE_ALLOWANCE_DAYS} day after today. A future date would train on days that "
                         f"have not happened and, once its engine is champion, block every later promotion. "
                         f"Check --date (or the DAG run's logical date).")
    return date
