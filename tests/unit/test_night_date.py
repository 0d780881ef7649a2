"""A night's date is checked where the night starts: beyond today (UTC) plus one day is refused, naming both."""

import datetime as dt

import pytest

from factory_core.dates import FUTURE_ALLOWANCE_DAYS, FutureDate, check_night_date, is_future

TODAY = dt.date(2026, 12, 2)


def test_today_and_the_allowance_pass_and_beyond_is_refused_naming_date_and_allowance():
    assert FUTURE_ALLOWANCE_DAYS == 1
    assert check_night_date("2026-12-02", TODAY) == "2026-12-02"
    assert check_night_date("2026-12-03", TODAY) == "2026-12-03"  # a desk ahead of UTC
    assert check_night_date("2019-01-01", TODAY) == "2019-01-01"  # backfills are fine
    with pytest.raises(FutureDate, match=r"night date 2027-06-01 is 181 days after today \(2026-12-02 UTC\); a night "
                                         r"may be dated at most 1 day after today"):
        check_night_date("2027-06-01", TODAY)
    assert is_future("2026-12-04", TODAY) and not is_future("2026-12-03", TODAY)


def test_the_cli_refuses_a_future_date_before_any_work(capsys, tmp_path, monkeypatch):
    from pipelines.cli import main

    monkeypatch.setenv("FACTORY_HOME", str(tmp_path))
    future = (dt.datetime.now(dt.timezone.utc).date() + dt.timedelta(days=181)).isoformat()
    assert main(["nightly", "--profile", "smoke", "--date", future]) == 2
    err = capsys.readouterr().err
    assert f"night date {future} is 181 days after today" in err and "at most 1 day" in err
    assert not (tmp_path / "airflow").exists() and not (tmp_path / "runs").exists()  # nothing started


def test_the_plan_task_refuses_it_too_for_runs_started_elsewhere(tmp_path):
    """A DAG run triggered over the REST API or the UI with a future logical date fails in its first task."""
    from factory_core.config import load_config
    from pipelines.stages import plan

    cfg = load_config(profile="smoke", env={"FACTORY_HOME": str(tmp_path)})
    future = (dt.datetime.now(dt.timezone.utc).date() + dt.timedelta(days=30)).isoformat()
    with pytest.raises(FutureDate, match=f"night date {future}"):
        plan(cfg, future)
