"""``factory airflow init``: what a deployment's Airflow needs before the first night, run where the scheduler runs
(it needs the metadata DB): the pools of ``infra/airflow/pools.json``, checked against every configured target."""

from __future__ import annotations

import argparse

from factory_core.config import load_config
from factory_core.errors import BadInput


def _cmd_init(args: argparse.Namespace) -> int:
    from pipelines.fleet import declared_pools, ensure_pools

    cfg = load_config(args.config)
    pools = declared_pools(args.pools)
    needed = {str(t.pool): t.name for t in cfg.declared_targets()}
    undeclared = sorted(set(needed) - set(pools))
    if undeclared:
        raise BadInput(f"targets {[needed[p] for p in undeclared]} use pools {undeclared}, which the pools file does "
                       "not declare: add them to infra/airflow/pools.json (or $FACTORY_POOLS)")
    if args.migrate:
        from airflow.utils import db

        db.initdb()
    for line in ensure_pools(args.pools):
        print(f"pool {line}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    af = sub.add_parser("airflow", help="set up a deployment's Airflow for the factory (pools)")
    cmds = af.add_subparsers(dest="airflow_command", required=True)
    init = cmds.add_parser("init", help="create or resize the pools of infra/airflow/pools.json (needs the metadata "
                                        "DB: run it where the scheduler runs, after `airflow db migrate`)")
    init.add_argument("--pools", help="pools file (default $FACTORY_POOLS or infra/airflow/pools.json)")
    init.add_argument("--config", help="factory config whose targets' pools must be declared (default $FACTORY_CONFIG)")
    init.add_argument("--migrate", action="store_true", help="run `airflow db migrate` first")
    init.set_defaults(func=_cmd_init)
