"""``factory-serve``: what a serving host runs, from the lean ``[serve]`` install (no torch, Airflow, ModelOpt or
Evidently): pull the engine an alias names for this host's GPU, verify it and install it atomically, once or
``--watch``. ``factory pull`` is the same command in the full install."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from factory_core.config import load_config
from factory_core.errors import BadInput, FactoryError, exit_code


def add_pull_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("family")
    p.add_argument("--target", default="auto", help="auto (NVML: sm_XY, or cpu) | cpu | sm_XY")
    p.add_argument("--alias", default="champion")
    p.add_argument("--dest", required=True)
    p.add_argument("--watch", action="store_true", help="keep polling the alias")
    p.add_argument("--interval", type=float, default=30.0)
    p.add_argument("--webhook", metavar="HOST:PORT", help="with --watch: also receive MLflow's alias events here "
                   "(HMAC-verified with registry.webhook_secret_file) and pull at once on a move")


def run_pull(args: argparse.Namespace, cfg) -> int:
    from .pull import pull, watch

    if args.webhook and not args.watch:
        raise BadInput("--webhook follows alias moves, so it needs --watch")
    if args.watch:
        wake = None
        if args.webhook:
            import threading

            from .webhook import AliasWebhook, read_secret

            host, _, port = args.webhook.rpartition(":")
            if not port.isdigit():
                raise BadInput(f"--webhook must be HOST:PORT (e.g. 0.0.0.0:8491), got {args.webhook!r}")
            receiver = AliasWebhook(read_secret(cfg.registry.webhook_secret_file), host or "0.0.0.0", int(port),
                                    max_age_s=cfg.registry.webhook_max_age_s).start()
            wake = threading.Event()
            receiver.follow(args.family, args.alias, wake)
        watch(cfg, args.family, args.target, args.alias, Path(args.dest), args.interval, wake=wake,
              on_change=lambda i: print(f"installed {i.family}/{i.target} v{i.registry_version} ({i.version}) "
                                        f"at {i.path}", flush=True))
        return 0
    inst = pull(cfg, args.family, args.target, args.alias, Path(args.dest))
    print(f"{'installed' if inst.changed else 'already current'}: {inst.family}/{inst.target} {inst.alias} "
          f"v{inst.registry_version} ({inst.version}) at {inst.path}")
    return 0


def add_replay_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("id", nargs="?", help="the failure's id (omit with --list)")
    p.add_argument("--failures", required=True, help="the serving host's failure store (FailureStore root)")
    p.add_argument("--engine", help="installed engine directory to re-run it against (any version)")
    p.add_argument("--list", action="store_true", help="list the stored failures")


def run_replay(args: argparse.Namespace) -> int:
    """Re-run a captured failed request against an installed engine; prints JSON (outputs, finite, error)."""
    import json

    import numpy as np

    from .canary import read_manifest
    from .runners import open_engine
    from .runtime import FailureStore

    store = FailureStore(Path(args.failures))
    if args.list or not args.id:
        for rec in store.list():
            print(json.dumps(rec))
        return 0
    if not args.engine:
        raise BadInput("replay-failure needs --engine DIR (the installed version to re-run the request against)")
    try:
        x, rec = store.load(args.id)
    except KeyError as exc:
        raise BadInput(str(exc)) from exc
    manifest = read_manifest(Path(args.engine))
    out: dict = {"id": args.id, "failed_on": rec["version"], "error": rec["error"], "replayed_on": manifest.version}
    try:
        y = open_engine(Path(args.engine), manifest).infer(np.ascontiguousarray(x, dtype=np.float32))
        out.update(outputs=y.tolist(), finite=bool(np.isfinite(y).all()))
    except Exception as exc:
        out.update(outputs=None, finite=False, replay_error=f"{type(exc).__name__}: {exc}")
    print(json.dumps(out))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="factory-serve", description=__doc__)
    parser.add_argument("--config", default=None, help="factory.yaml (default: $FACTORY_CONFIG or ./factory.yaml)")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    add_pull_arguments(sub.add_parser("pull", help="install the engine an alias names for this host"))
    add_replay_arguments(sub.add_parser("replay-failure", help="re-run a captured failed request on any version"))
    args = parser.parse_args(argv)
    from factory_core.logsafe import install_log_redaction

    install_log_redaction()  # a serving host's log never shows a credential inside a URI
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "replay-failure":
            return run_replay(args)
        return run_pull(args, load_config(args.config))
    except FactoryError as exc:
        print(f"factory-serve: {exc}", file=sys.stderr)
        return exit_code(exc)


if __name__ == "__main__":
    sys.exit(main())
