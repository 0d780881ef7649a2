"""``factory promote | rollback | pull | triton-repo | ui``: the registry and the engine store."""

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
