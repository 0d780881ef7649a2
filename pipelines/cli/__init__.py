"""``factory``: the command line of the model factory, one module per command group.

``nightly`` (:mod:`.nightly`), ``reproduce`` (:mod:`.reproduce_cmd`), the registry and the store
(:mod:`.registry_cmds`), drift, replay and telemetry (:mod:`.monitoring_cmds`), a deployment's Airflow set-up
(:mod:`.airflow_cmds`), a night's evidence page (:mod:`.evidence_cmds`); the embedded Airflow they share is
:mod:`.airflow_embedded`. A serving host uses
``factory-serve`` (:mod:`model_registry.cli`) from the lean install instead.
"""

from __future__ import annotations

import argparse
import logging
import sys

from factory_core.config import redact
from factory_core.errors import FactoryError, exit_code
from factory_core.logsafe import install_log_redaction

from . import airflow_cmds, data_cmds, evidence_cmds, monitoring_cmds, nightly, registry_cmds, reproduce_cmd
from .nightly import NightRunning, night_lock, run_nightly

__all__ = ["NightRunning", "build_parser", "main", "night_lock", "run_nightly"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="factory", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in (nightly, reproduce_cmd, registry_cmds, monitoring_cmds, airflow_cmds, data_cmds, evidence_cmds):
        group.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    install_log_redaction()
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except FactoryError as exc:  # the factory's own errors print one line; bugs keep their traceback
        print(f"factory: {redact(str(exc))}", file=sys.stderr)
        return exit_code(exc)  # 2 bad input, 75 a lock held by another night, 1 otherwise


if __name__ == "__main__":
    sys.exit(main())
