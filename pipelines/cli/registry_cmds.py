"""``factory promote | rollback | champion history | pull | triton-repo | ui``: the registry and the engine store."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from model_registry.cli import add_pull_arguments

from .common import FAMILIES, add_config_arguments
from .common import load as _load


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


def _model(text: str) -> tuple[str, str]:
    """``FAMILY.TARGET`` (a registered model's name) → ``(family, target)``."""
    from model_registry.store import StoreError, check_name

    family, _, target = text.partition(".")
    if family not in {f.value for f in FAMILIES} or not target:
        raise argparse.ArgumentTypeError(f"expected FAMILY.TARGET (e.g. fraud_risk.cpu, market_alert.sm_90) with "
                                         f"FAMILY one of {', '.join(f.value for f in FAMILIES)}; got {text!r}")
    try:
        return family, check_name(target, "target")
    except StoreError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def champion_history(registry, family: str, target: str) -> list[dict]:
    """Every move of ``champion`` (:meth:`Registry.history`), each with where its evidence lies."""
    runs: dict[str, dict] = {}
    moves = registry.history(family, target)
    for m in moves:
        if m.get("run_id") and m["run_id"] not in runs:
            runs[m["run_id"]] = registry.evidence(m["run_id"], target)
        m["evidence"] = runs.get(m.get("run_id"), {})
    return moves


def _cmd_champion_history(args: argparse.Namespace) -> int:
    import json

    from rich.console import Console
    from rich.table import Table

    from model_registry.registry import Registry, model_name

    family, target = args.model
    cfg = _load(args)
    moves = champion_history(Registry(cfg.tracking_uri), family, target)
    if args.json:
        print(json.dumps({"model": model_name(family, target), "moves": moves}, indent=2))
        return 0
    table = Table(title=f"{model_name(family, target)}: every move of 'champion', oldest first", show_lines=True)
    for col in ("when (UTC)", "move", "who or what", "why", "evidence", "engine"):
        table.add_column(col, overflow="fold")
    for m in moves:
        when = f"{m['not_before'] or '?'} .. {m['at']}" if m["kind"] in ("outside", "removed") else m["at"]
        move = f"{m['kind']} " + (f"v{m['from']} → " if m.get("from") else "") + (f"v{m['version']}" if m["version"]
                                                                                   else "(no champion)")
        ev = m["evidence"]
        evidence = ev.get("ui") or ev.get("page") or ev.get("report") or "-"
        if ev.get("missing"):
            evidence += f" ({ev['missing']})"
        elif ev and "page" not in ev:
            evidence += " (no evidence page in the run: its gate report)"
        e = m.get("engine") or {}
        engine = " ".join(x for x in (e.get("factory_version"), e.get("precision"), e.get("backend")) if x)
        if e.get("engine_sha256"):
            engine += f"\nengine sha256 {e['engine_sha256'][:16]}…\nmanifest sha256 {e.get('manifest_sha256', '?')[:16]}…"
        table.add_row(when, move, m["by"], m["why"], evidence, engine or "-")
    Console().print(table if moves else f"{model_name(family, target)}: no champion has been set")
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


def register(sub: argparse._SubParsersAction) -> None:
    promote = sub.add_parser("promote", help="point the champion alias of FAMILY.TARGET at VERSION")
    promote.add_argument("family", choices=FAMILIES)
    promote.add_argument("--target", required=True)
    promote.add_argument("--version", required=True, type=int)
    promote.add_argument("--why", required=True, help="recorded in the champion's history")
    add_config_arguments(promote)
    promote.set_defaults(func=_cmd_promote)
    rollback = sub.add_parser("rollback", help="point the champion alias back at the version it replaced")
    rollback.add_argument("family", choices=FAMILIES)
    rollback.add_argument("--target", required=True)
    rollback.add_argument("--why", required=True)
    add_config_arguments(rollback)
    rollback.set_defaults(func=_cmd_rollback)
    champion = sub.add_parser("champion", help="the champion alias: its history")
    cmds = champion.add_subparsers(dest="champion_command", required=True)
    history = cmds.add_parser("history", help="every move of FAMILY.TARGET's champion alias: when, who or what (the "
                                              "policy, a promote, a rollback, a move in the MLflow UI), why, the "
                                              "evidence and the engine it pointed to")
    history.add_argument("model", type=_model, metavar="FAMILY.TARGET")
    history.add_argument("--json", action="store_true", help="the moves as JSON (full hashes and URIs)")
    add_config_arguments(history)
    history.set_defaults(func=_cmd_champion_history)
    pull = sub.add_parser("pull", help="install the engine an alias points at, verified, atomically")
    add_pull_arguments(pull)
    add_config_arguments(pull)
    pull.set_defaults(func=_cmd_pull)
    triton = sub.add_parser("triton-repo", help="write a Triton model repository for FAMILY's champions")
    triton.add_argument("family", choices=FAMILIES)
    triton.add_argument("--dest", required=True)
    add_config_arguments(triton)
    triton.set_defaults(func=_cmd_triton)
    ui = sub.add_parser("ui", help="the MLflow UI on localhost")
    ui.add_argument("--port", type=int, default=5000)
    add_config_arguments(ui)
    ui.set_defaults(func=_cmd_ui)
