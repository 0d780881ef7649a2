"""``factory drift | replay | telemetry``: drift checks, a served day replayed through the drift monitor, NVML."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
from pathlib import Path

from .airflow_embedded import NIGHTLY_DAG, prepare_airflow, run_drift_monitor
from .common import FAMILIES, add_config_arguments, iso_date, parse_time
from .common import load as _load


def _cmd_drift(args: argparse.Namespace) -> int:
    """``factory drift check``: one check in this process, outside Airflow."""
    from ..drift import check
    from ..report import print_drift

    cfg = _load(args)
    until = args.until or dt.datetime.now(dt.timezone.utc)
    since = args.since or until - dt.timedelta(hours=args.hours or cfg.monitoring.drift.window_hours)
    result = check(cfg, args.family, args.target, since, until, record_episode=False)
    print_drift(result.to_dict())
    if result.status == "drift":
        print("(a manual check records no drift episode and triggers nothing: drift_monitor does both)")
    return 0


def _cmd_replay(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from ..data.simulator import Shift
    from ..replay import replay
    from ..report import print_drift

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


def _cmd_telemetry(args: argparse.Namespace) -> int:
    from monitoring.exporter import exposition, serve

    if args.action == "once":
        print(exposition(), end="")
        return 0
    serve(args.port)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    drift = sub.add_parser("drift", help="check FAMILY's logged predictions for drift against its champion")
    drift.add_argument("action", choices=["check"])
    drift.add_argument("family", choices=FAMILIES)
    drift.add_argument("--target", default="cpu")
    drift.add_argument("--since", type=parse_time, default=None, help="window start (default: --hours before --until)")
    drift.add_argument("--until", type=parse_time, default=None, help="window end (default: now)")
    drift.add_argument("--hours", type=float, default=None, help="window length (default monitoring.drift.window_hours)")
    add_config_arguments(drift)
    drift.set_defaults(func=_cmd_drift)
    rep = sub.add_parser("replay", help="serve FAMILY's champion on a (shifted) day, then run drift_monitor on it")
    rep.add_argument("family", choices=FAMILIES)
    rep.add_argument("--date", required=True, type=iso_date, help="the day to serve (simulated if the lake lacks it)")
    rep.add_argument("--target", default="cpu")
    rep.add_argument("--requests", type=int, default=4000, help="at most this many requests, evenly over the day")
    rep.add_argument("--shift-at", type=float, default=0.4, help="regime shift from this fraction of the day")
    rep.add_argument("--no-shift", action="store_true", help="simulate the day without a regime shift")
    rep.add_argument("--windows", type=int, default=4, help="run drift_monitor on this many consecutive windows")
    add_config_arguments(rep)
    rep.set_defaults(func=_cmd_replay)
    tele = sub.add_parser("telemetry", help="NVML telemetry with dcgm-exporter names: one scrape, or a server")
    tele.add_argument("action", choices=["once", "serve"])
    tele.add_argument("--port", type=int, default=9400)
    tele.set_defaults(func=_cmd_telemetry)
