"""``factory``: the command line of the model factory."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import os
import sys
import time
from pathlib import Path

from factory_core.config import ConfigError, FactoryConfig, load_config
from factory_core.errors import BadInput, FactoryError
from factory_core.fsutil import get_json
from factory_core.layout import GATE_PLOT
from model_registry.cli import add_pull_arguments

DAGS_DIR = Path(__file__).resolve().parent.parent / "dags"
NIGHTLY_DAG = "nightly_model_factory"
DRIFT_DAG = "drift_monitor"


def airflow_env(cfg: FactoryConfig) -> dict[str, str]:
    """Environment for an embedded Airflow on SQLite under ``$FACTORY_HOME/airflow``."""
    home = cfg.home / "airflow"
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_DIR),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__DAGBAG_IMPORT_ERROR_TRACEBACKS": "True",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        "FACTORY_HOME": str(cfg.home),
    }


def prepare_airflow(cfg: FactoryConfig) -> None:
    """Point Airflow at the factory's SQLite DB and DAGs, migrating the DB on first use.

    Must run before anything imports ``airflow``.
    """
    env = airflow_env(cfg)
    Path(env["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)
    os.environ.update(env)
    if "airflow" in sys.modules:
        raise RuntimeError("airflow was imported before its environment was set")
    from airflow.utils import db

    logging.getLogger(__name__).info("airflow: migrating metadata DB at %s", env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    db.initdb()
    ensure_pools(cfg)


def ensure_pools(cfg: FactoryConfig) -> None:
    """Create (or resize) each target's Airflow pool; a task in a missing pool would never be scheduled."""
    from airflow.models.pool import Pool

    for t in cfg.declared_targets():
        Pool.create_or_update_pool(str(t.pool), t.pool_slots, f"model-factory engine builds/benchmarks for {t.name}",
                                   include_deferred=False)


def run_nightly(cfg: FactoryConfig, date: str, config_path: str | None, families: list[str] | None = None,
                targets: list[str] | None = None) -> int:
    """Run the nightly DAG once through ``dag.test()`` and print the summary. Returns the exit code."""
    from rich.console import Console

    console = Console()
    if config_path:  # the one config channel: the file shapes the DAG and configures every task
        os.environ["FACTORY_CONFIG"] = str(Path(config_path).resolve())
    with night_lock(cfg, date):
        return _run_nightly_locked(cfg, date, console, {"profile": cfg.profile, "families": families,
                                                        "targets": targets})


class NightRunning(ConfigError):
    """Another night for the same date runs in this home; the message names it."""


@contextlib.contextmanager
def night_lock(cfg: FactoryConfig, date: str):
    """One night per date and home at a time: ``runs/<date>/.night.lock`` (created exclusively) names the running
    night (pid, host, start). A lock whose process is gone (a killed night) is taken over."""
    import socket

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


def _run_nightly_locked(cfg: FactoryConfig, date: str, console, params: dict) -> int:
    from . import orchestration, report

    prepare_airflow(cfg)
    orchestration.clear_failures(cfg, date)
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS_DIR))
    if bag.import_errors:
        for path, err in bag.import_errors.items():
            console.print(f"[red]DAG import error[/red] {path}:\n{err}")
        return 3
    dag = bag.dags[NIGHTLY_DAG]
    logical = dt.datetime.fromisoformat(date).replace(hour=2, tzinfo=dt.timezone.utc)
    console.rule(f"nightly_model_factory · {date} · profile {cfg.profile}")
    start = time.perf_counter()
    dagrun = dag.test(logical_date=logical, run_conf=params)
    elapsed = time.perf_counter() - start
    state = str(getattr(dagrun, "state", "unknown"))
    failures = orchestration.read_failures(cfg, date)
    run = cfg.run_layout(date)
    data = get_json(run.summary())
    if data is not None and state.endswith("success"):
        report.print_nightly_summary(data, console)
        if data.get("gate_report"):
            report.print_gates(get_json(data["gate_report"]), console)
            console.print(f"gate report: {data['gate_report']} · plot: {run.gates()}/{GATE_PLOT}")
        report.print_published(data, console)
    console.print(f"run state: [bold]{state}[/bold] in {elapsed:.1f}s · outputs under {run.uri}")
    if not state.endswith("success"):
        for f in failures:
            console.print(f"[red]FAILED[/red] task [bold]{f['task']}[/bold]: {f['error']}: {f['reason']}")
        if not failures:
            for ti in dagrun.get_task_instances():
                if str(ti.state).endswith("failed") or str(ti.state).endswith("upstream_failed"):
                    console.print(f"[red]{ti.state}[/red] task {ti.task_id} (see its log above)")
        return 1
    return 0


def _parse_time(text: str) -> dt.datetime:
    try:
        t = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected an ISO 8601 time, got {text!r}") from exc
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


def _cmd_drift(args: argparse.Namespace) -> int:
    """``factory drift check``: one check in this process, outside Airflow."""
    from .drift import check

    from .report import print_drift

    cfg = _load(args)
    until = args.until or dt.datetime.now(dt.timezone.utc)
    since = args.since or until - dt.timedelta(hours=args.hours or cfg.monitoring.drift.window_hours)
    result = check(cfg, args.family, args.target, since, until, record_episode=False)
    print_drift(result.to_dict())
    if result.status == "drift":
        print("(a manual check records no drift episode and triggers nothing: drift_monitor does both)")
    return 0


def run_drift_monitor(cfg: FactoryConfig, config_path: str | None, windows: list[tuple[dt.datetime, dt.datetime]],
                      families: list[str]) -> list[dict]:
    """Run ``drift_monitor`` through ``dag.test`` once per window; per run its state and retrain request.

    The DAGs are synced to the metadata DB and the nightly unpaused first (once), so an
    asset event queues a nightly run exactly as the scheduler would see it.
    """
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db
    from airflow.models.asset import AssetDagRunQueue, AssetEvent
    from airflow.models.dag import DagModel
    from airflow.models.dagbundle import DagBundleModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    bag = DagBag(dag_folder=str(DAGS_DIR))
    if bag.import_errors:
        raise RuntimeError(f"DAG import errors: {bag.import_errors}")
    with create_session() as session:
        session.merge(DagBundleModel(name="dags-folder"))
    sync_bag_to_db(bag, "dags-folder", None)
    with create_session() as session:
        session.get(DagModel, NIGHTLY_DAG).is_paused = False
    runs = []
    for since, until in windows:
        if config_path:  # the one config channel: the file every task of the DAG reads
            os.environ["FACTORY_CONFIG"] = str(Path(config_path).resolve())
        run = bag.dags[DRIFT_DAG].test(run_conf={"profile": cfg.profile,
                                                 "since": since.isoformat(), "until": until.isoformat(),
                                                 "families": families})
        with create_session() as session:
            events = [{"asset": e.uri, "extra": e.extra, "timestamp": str(e.timestamp)} for e in session.scalars(
                select(AssetEvent).where(AssetEvent.source_run_id == run.run_id))]
            queued = [q.target_dag_id for q in session.scalars(select(AssetDagRunQueue))]
        runs.append({"state": str(run.state), "asset_events": events, "queued": queued})
    return runs


def _cmd_replay(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from .data.simulator import Shift
    from .replay import replay
    from .report import print_drift

    cfg = _load(args)
    console = Console()
    os.environ["FACTORY_PROFILE"] = cfg.profile
    if args.config:
        os.environ["FACTORY_CONFIG"] = str(Path(args.config).resolve())
    prepare_airflow(cfg)
    console.rule(f"replay {args.family} · {args.date} · target {args.target}")
    r = replay(cfg, args.family, args.date, args.target, None if args.no_shift else Shift(start=args.shift_at),
               args.requests)
    console.print(f"served {r.requests} requests on champion v{r.champion_version} ({r.engine_version}); day: "
                  f"{r.day_source}; p50 {r.p50_ms:.3f} ms, p99 {r.p99_ms:.3f} ms; predictions logged under "
                  f"{cfg.prediction_log_uri}/predictions/{r.family}/{r.target}/date={r.date}/")
    # The day, cut into consecutive windows: what the hourly drift_monitor sees, one run per window.
    step = (r.until - r.since) / args.windows
    table = Table(title=f"drift_monitor over {args.windows} consecutive windows of the day")
    for col in ("window (UTC)", "rows", "drifted columns", "prediction", "status", "retrain"):
        table.add_column(col)
    windows = [(r.since + k * step, r.since + (k + 1) * step) for k in range(args.windows)]
    console.rule(f"drift_monitor · {args.windows} windows")
    runs = run_drift_monitor(cfg, args.config, windows, [args.family])
    # Each check left its summary under <home>/drift/<family>/<target>/<stamp>/: the newest ones, in order.
    summaries = sorted((cfg.home / "drift" / args.family / args.target).glob("*/summary.json"))[-len(windows):]
    first_drift, events = None, []
    for (since, until), out, path in zip(windows, runs, summaries):
        res = json.loads(path.read_text())
        events += out["asset_events"]
        first_drift = first_drift or (res if res["status"] == "drift" else None)
        pred = res.get("prediction") or {}
        retrain = ("[bold]requested[/bold] (asset event)" if out["asset_events"] else
                   "episode open: not again" if res["status"] == "drift" else "–")
        table.add_row(f"{since:%H:%M:%S}–{until:%H:%M:%S}", str(res["n_current"]),
                      f"{res['drifted_columns']}/{len(res['columns'])} ({res['drift_share']:.2f})",
                      "drifted" if pred.get("drifted") else "stable",
                      "[red]drift[/red]" if res["status"] == "drift" else res["status"], retrain)
    if first_drift:
        print_drift(first_drift, console)
    console.print(table)
    for e in events:
        console.print(f"[bold]retrain triggered[/bold]: asset event on {e['asset']} "
                      f"(families {e['extra'].get('families')})")
    if events and NIGHTLY_DAG in runs[-1]["queued"]:
        console.print(f"{NIGHTLY_DAG} is queued on the asset: the scheduler (`airflow standalone`) starts it; "
                      f"or run it now: factory nightly --date "
                      f"{(dt.date.fromisoformat(args.date) + dt.timedelta(days=1)).isoformat()}")
    if not events:
        console.print("no retrain triggered (no new drift episode)")
    states = {o["state"] for o in runs}
    console.print(f"drift_monitor runs: {', '.join(sorted(states))}")
    return 0 if all(s.endswith("success") for s in states) else 1


def _cmd_nightly(args: argparse.Namespace) -> int:
    cfg = _load(args)
    return run_nightly(cfg, args.date, args.config, args.families, args.targets)


def _whoami() -> str:
    import getpass

    try:
        return getpass.getuser()
    except Exception:
        return "unknown"


def _cmd_promote(args: argparse.Namespace) -> int:
    from model_registry.registry import Registry

    cfg = _load(args)
    v = Registry(cfg.tracking_uri).promote(args.family, args.target, str(args.version), by=f"cli:{_whoami()}",
                                           why=args.why)
    print(f"{args.family}.{args.target}: champion -> v{v} (by {_whoami()}: {args.why})")
    return 0


def _cmd_rollback(args: argparse.Namespace) -> int:
    from model_registry.registry import Registry

    cfg = _load(args)
    v = Registry(cfg.tracking_uri).rollback(args.family, args.target, by=f"cli:{_whoami()}", why=args.why)
    print(f"{args.family}.{args.target}: champion rolled back to v{v} (by {_whoami()}: {args.why})")
    return 0


def _cmd_pull(args: argparse.Namespace) -> int:
    from model_registry.cli import run_pull

    return run_pull(args, _load(args))


def _cmd_triton(args: argparse.Namespace) -> int:
    from model_registry.triton import write_repository

    cfg = _load(args)
    print(f"wrote {write_repository(cfg, args.family, Path(args.dest))}")
    return 0


def _cmd_ui(args: argparse.Namespace) -> int:
    import subprocess

    from model_registry.registry import ensure_local_backend

    cfg = _load(args)
    ensure_local_backend(cfg.tracking_uri)
    print(f"MLflow UI on http://127.0.0.1:{args.port} (backend {cfg.tracking_uri})", flush=True)
    return subprocess.call([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", cfg.tracking_uri,
                            "--host", "127.0.0.1", "--port", str(args.port)])


def _cmd_telemetry(args: argparse.Namespace) -> int:
    from monitoring.exporter import exposition, serve

    if args.action == "once":
        print(exposition(), end="")
        return 0
    serve(args.port)
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="factory.yaml (default: $FACTORY_CONFIG or ./factory.yaml)")
    p.add_argument("--profile", choices=["smoke", "default"], default=None)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="factory", description=__doc__ or "model factory")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    nightly = sub.add_parser("nightly", help="run the nightly DAG once (Airflow dag.test on SQLite)")
    nightly.add_argument("--date", default=dt.date.today().isoformat(), type=_iso_date,
                         help="logical date YYYY-MM-DD (default: today); trains on the lake days before it")
    nightly.add_argument("--profile", choices=["smoke", "default"], default=None,
                         help="smoke: test-sized night; default: a realistic night for a small machine")
    nightly.add_argument("--config", default=None, help="factory.yaml (default: $FACTORY_CONFIG or ./factory.yaml)")
    nightly.add_argument("--families", nargs="+", default=None, help="train only these families")
    nightly.add_argument("--targets", nargs="+", default=None,
                         help="build only these configured targets (the others record skipped)")
    nightly.set_defaults(func=_cmd_nightly)

    fams = ["market_alert", "price_direction", "fraud_risk"]
    promote = sub.add_parser("promote", help="point the champion alias of FAMILY.TARGET at VERSION")
    promote.add_argument("family", choices=fams)
    promote.add_argument("--target", required=True)
    promote.add_argument("--version", required=True, type=int)
    promote.add_argument("--why", required=True, help="recorded on the version")
    _common(promote)
    promote.set_defaults(func=_cmd_promote)
    rollback = sub.add_parser("rollback", help="point the champion alias back at the version it replaced")
    rollback.add_argument("family", choices=fams)
    rollback.add_argument("--target", required=True)
    rollback.add_argument("--why", required=True)
    _common(rollback)
    rollback.set_defaults(func=_cmd_rollback)
    pull = sub.add_parser("pull", help="install the engine an alias points at, verified, atomically")
    add_pull_arguments(pull)
    _common(pull)
    pull.set_defaults(func=_cmd_pull)
    triton = sub.add_parser("triton-repo", help="write a Triton model repository for FAMILY's champions")
    triton.add_argument("family", choices=fams)
    triton.add_argument("--dest", required=True)
    _common(triton)
    triton.set_defaults(func=_cmd_triton)
    ui = sub.add_parser("ui", help="the MLflow UI on localhost")
    ui.add_argument("--port", type=int, default=5000)
    _common(ui)
    ui.set_defaults(func=_cmd_ui)
    drift = sub.add_parser("drift", help="check FAMILY's logged predictions for drift against its champion")
    drift.add_argument("action", choices=["check"])
    drift.add_argument("family", choices=fams)
    drift.add_argument("--target", default="cpu")
    drift.add_argument("--since", type=_parse_time, default=None, help="window start (default: --hours before --until)")
    drift.add_argument("--until", type=_parse_time, default=None, help="window end (default: now)")
    drift.add_argument("--hours", type=float, default=None, help="window length (default monitoring.drift.window_hours)")
    _common(drift)
    drift.set_defaults(func=_cmd_drift)
    rep = sub.add_parser("replay", help="serve FAMILY's champion on a (shifted) day, then run drift_monitor on it")
    rep.add_argument("family", choices=fams)
    rep.add_argument("--date", required=True, type=_iso_date, help="the day to serve (simulated if the lake lacks it)")
    rep.add_argument("--target", default="cpu")
    rep.add_argument("--requests", type=int, default=4000, help="at most this many requests, evenly over the day")
    rep.add_argument("--shift-at", type=float, default=0.4, help="regime shift from this fraction of the day")
    rep.add_argument("--no-shift", action="store_true", help="simulate the day without a regime shift")
    rep.add_argument("--windows", type=int, default=4, help="run drift_monitor on this many consecutive windows")
    _common(rep)
    rep.set_defaults(func=_cmd_replay)
    tele = sub.add_parser("telemetry", help="NVML telemetry with dcgm-exporter names: one scrape, or a server")
    tele.add_argument("action", choices=["once", "serve"])
    tele.add_argument("--port", type=int, default=9400)
    tele.set_defaults(func=_cmd_telemetry)
    return parser


def _iso_date(text: str) -> str:
    try:
        return dt.date.fromisoformat(text).isoformat()
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--date must be YYYY-MM-DD, got {text!r}") from exc


def _load(args: argparse.Namespace):
    """The config for a command, with the MLflow client's retries and timeouts bounded by it."""
    from .preflight import apply_client_limits

    cfg = load_config(args.config, args.profile)
    apply_client_limits(cfg)
    return cfg


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except FactoryError as exc:  # the factory's own errors print one line; bugs keep their traceback
        print(f"factory: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, BadInput) else 1


if __name__ == "__main__":
    sys.exit(main())
