"""``factory nightly``: tonight's DAG once, through ``dag.test`` on the embedded Airflow.

The console shows one line per finished task (task, family, state, seconds), a failure's reason at once,
then the night's tables. Airflow's task logs go to a file whose path is printed.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path

from factory_core.config import FactoryConfig
from factory_core.errors import LockConflict, disk_full
from factory_core.fsutil import get_json, reserve_space
from factory_core.layout import GATE_PLOT

from .airflow_embedded import DAGS_DIR, NIGHTLY_DAG, prepare_airflow
from .common import add_config_arguments, iso_date
from .common import load as _load


def run_nightly(cfg: FactoryConfig, date: str, config_path: str | None, families: list[str] | None = None,
                targets: list[str] | None = None, tables: bool = True) -> int:
    """Run the nightly DAG once through ``dag.test()`` and print the summary (``tables``). Returns the exit code."""
    from rich.console import Console

    console = Console()
    if config_path:  # the one config channel: the file shapes the DAG and configures every task
        os.environ["FACTORY_CONFIG"] = str(Path(config_path).resolve())
    with night_lock(cfg, date):
        return _run_nightly_locked(cfg, date, console, {"profile": cfg.profile, "families": families,
                                                        "targets": targets}, tables)


class NightRunning(LockConflict):
    """Another night for the same date runs in this home; the message names it. A lock conflict, not bad config:
    ``factory nightly`` exits 75 (try again later)."""


@contextlib.contextmanager
def night_lock(cfg: FactoryConfig, date: str):
    """One night per date and home at a time: ``runs/<date>/.night.lock`` (created exclusively) names the running
    night (pid, host, start). A lock whose process is gone (a killed night) is taken over."""

    from factory_core.fsutil import pid_alive

    lock = cfg.home / "locks" / f"night-{date}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": dt.datetime.now(dt.timezone.utc).isoformat()}
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                other = json.loads(lock.read_text() or "{}")
            except (OSError, json.JSONDecodeError):
                other = {}
            if other.get("host") == me["host"] and other.get("pid") and not pid_alive(int(other["pid"])):
                lock.unlink(missing_ok=True)  # the night that held it was killed
                continue
            raise NightRunning(f"a night for {date} is already running in {cfg.home} (pid {other.get('pid')} on "
                               f"{other.get('host')} since {other.get('started')}); wait for it or stop it") from None
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        break
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


@contextlib.contextmanager
def task_logs_to(path: Path):
    """Send this process's stdout and stderr (Airflow's task logs, library progress bars) to ``path``;
    yield a stream on the original terminal for the progress lines."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    terminal = os.fdopen(os.dup(1), "w", buffering=1)
    with open(path, "a") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield terminal
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            terminal.close()


FINISHED = {"success", "failed", "skipped", "upstream_failed", "up_for_retry", "removed"}


class Progress:
    """Polls the metadata DB for this run's task instances and prints each one that finishes, once."""

    def __init__(self, cfg: FactoryConfig, date: str, out, logical: dt.datetime, interval_s: float = 0.5):
        self.cfg, self.date, self.out, self.interval, self.logical = cfg, date, out, interval_s, logical
        self.seen: set[tuple[str, int, int, str]] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="nightly-progress", daemon=True)
        self.counts: dict[str, int] = {}
        self.started = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=5)  # clock slack against the DB's
        self._run_id: str | None = None

    def __enter__(self) -> "Progress":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.poll()  # the last ones

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(Exception):  # a locked SQLite read is retried at the next tick
                self.poll()

    def poll(self) -> None:
        from airflow.models.taskinstance import TaskInstance
        from airflow.utils.session import create_session
        from sqlalchemy import select

        with create_session() as session:
            rows = session.execute(select(TaskInstance.task_id, TaskInstance.map_index, TaskInstance.try_number,
                                          TaskInstance.state, TaskInstance.rendered_map_index,
                                          TaskInstance.start_date, TaskInstance.end_date)
                                   .where(TaskInstance.dag_id == NIGHTLY_DAG)
                                   .where(TaskInstance.run_id == self.run_id())).all()
        never = dt.datetime.max.replace(tzinfo=dt.timezone.utc)
        for task_id, map_index, tries, state, label, start, end in sorted(rows, key=lambda r: r.end_date or never):
            state = str(state.value if hasattr(state, "value") else state or "")
            key = (task_id, map_index, tries, state)
            if state not in FINISHED or key in self.seen:
                continue
            self.seen.add(key)
            self.counts[state] = self.counts.get(state, 0) + 1
            seconds = (end - start).total_seconds() if start and end else 0.0
            what = label or ("" if map_index in (-1, None) else f"#{map_index}")
            mark = {"success": "done", "skipped": "skip", "up_for_retry": "retry"}.get(state, state.upper())
            self.out.write(f"  {mark:<8} {task_id:<16} {what:<24} {seconds:7.1f}s\n")
            if state in ("failed", "up_for_retry"):
                self._reason(task_id, label)

    def _reason(self, task_id: str, label: str | None) -> None:
        from ..orchestration import read_failures

        for f in read_failures(self.cfg, self.date):
            if f["task"].split("[")[0] == task_id and (not label or label in f["task"] or "[" not in f["task"]):
                self.out.write(f"           {f['error']}: {f['reason'].splitlines()[0][:300]}\n")

    def run_id(self) -> str | None:
        """This night's run: the DAG's run for this logical date created after this watcher started.

        Not by ``start_date``: ``dag.test`` sets a run's start date to its logical date (02:00 of the night), so
        a watcher filtering on it found no run for any past date and printed nothing (seen in 18 of 20 nights).
        ``run_after`` is when the run was created."""
        if self._run_id is None:
            from airflow.models.dagrun import DagRun
            from airflow.utils.session import create_session
            from sqlalchemy import select

            with create_session() as session:
                self._run_id = session.scalar(select(DagRun.run_id).where(DagRun.dag_id == NIGHTLY_DAG)
                                              .where(DagRun.logical_date == self.logical)
                                              .where(DagRun.run_after >= self.started)
                                              .order_by(DagRun.id.desc()).limit(1))
        return self._run_id


def _run_nightly_locked(cfg: FactoryConfig, date: str, console, params: dict, tables: bool = True) -> int:
    from .. import orchestration, report

    logs = cfg.home / "logs" / f"nightly-{date}-{dt.datetime.now():%Y%m%dT%H%M%S}.log"
    console.rule(f"nightly_model_factory · {date} · profile {cfg.profile}")
    console.print(f"task logs: {logs}")
    start = time.perf_counter()
    reserve_space(cfg.home)  # room for the failure record should the night fill the disk
    try:
        with task_logs_to(logs) as terminal:
            prepare_airflow(cfg)
            orchestration.clear_failures(cfg, date)
            from airflow.dag_processing.dagbag import DagBag

            bag = DagBag(dag_folder=str(DAGS_DIR))
            if bag.import_errors:
                for path, err in bag.import_errors.items():
                    terminal.write(f"DAG import error {path}:\n{err}\n")
                return 3
            dag = bag.dags[NIGHTLY_DAG]
            logical = dt.datetime.fromisoformat(date).replace(hour=2, tzinfo=dt.timezone.utc)
            with Progress(cfg, date, terminal, logical) as progress:
                dagrun = dag.test(logical_date=logical, run_conf=params)
    except Exception as exc:  # Airflow's own writes (its SQLite DB, XComs) raise out of dag.test
        full = disk_full(exc, cfg.home / "airflow" / "airflow.db")
        if full is None:
            raise
        return _end_on_full_disk(cfg, date, console, full)
    elapsed = time.perf_counter() - start
    state = str(getattr(dagrun, "state", "unknown"))
    failures = orchestration.read_failures(cfg, date)
    run = cfg.run_layout(date)
    data = get_json(run.summary())
    if data is not None and state.endswith("success") and tables:
        report.print_nightly_summary(data, console)
        if data.get("gate_report"):
            report.print_gates(get_json(data["gate_report"]), console)
            console.print(f"gate report: {data['gate_report']} · plot: {run.gates()}/{GATE_PLOT}")
        report.print_published(data, console)
    tasks = ", ".join(f"{n} {s}" for s, n in sorted(progress.counts.items()))
    console.print(f"run state: [bold]{state}[/bold] in {elapsed:.1f}s ({tasks}) · outputs under {run.uri}")
    console.print(f"task logs: {logs}")
    if not state.endswith("success"):
        for f in failures:
            console.print(f"[red]FAILED[/red] task [bold]{f['task']}[/bold]: {f['error']}: {f['reason']}")
        if not failures:
            for ti in dagrun.get_task_instances():
                if str(ti.state).endswith("failed") or str(ti.state).endswith("upstream_failed"):
                    console.print(f"[red]{ti.state}[/red] task {ti.task_id} (see the task logs)")
        return 1
    return 0


def _end_on_full_disk(cfg: FactoryConfig, date: str, console, full: BaseException) -> int:
    """A full disk ends the night with one line and a failure record (``failures/nightly.json``), the room for
    which the home's reserve gives back; not with a SQLAlchemy traceback."""
    from factory_core.fsutil import release_space

    from ..orchestration import record_failure

    release_space(cfg.home)
    console.print(f"[red]FAILED[/red] night {date}: {full}")
    try:
        console.print(f"failure record: {record_failure(cfg, date, 'nightly', full)}")
    except OSError as exc:
        console.print(f"[red]no failure record[/red]: the disk has no room for it either ({exc.strerror})")
    return 1


def _cmd_nightly(args: argparse.Namespace) -> int:
    from factory_core.dates import check_night_date

    check_night_date(args.date)  # before anything starts: the plan task checks it again for runs from elsewhere
    cfg = _load(args)
    return run_nightly(cfg, args.date, args.config, args.families, args.targets)


def register(sub: argparse._SubParsersAction) -> None:
    nightly = sub.add_parser("nightly", help="run the nightly DAG once (Airflow dag.test on SQLite)")
    nightly.add_argument("--date", default=dt.date.today().isoformat(), type=iso_date,
                         help="logical date YYYY-MM-DD (default: today); trains on the lake days before it")
    add_config_arguments(nightly)
    nightly.add_argument("--families", nargs="+", default=None, help="train only these families")
    nightly.add_argument("--targets", nargs="+", default=None,
                         help="build only these configured targets (the others record skipped)")
    nightly.set_defaults(func=_cmd_nightly)
