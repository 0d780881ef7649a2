"""Metrics of batch jobs (the nightly, drift checks) for Prometheus.

Batch jobs do not live long enough to be scraped, so each writes its figures to a
node_exporter textfile-collector file (``monitoring.textfile_dir``, written atomically
by ``prometheus_client``) and, when ``monitoring.pushgateway_url`` is set, pushes them
to a Pushgateway too. ``infra/prometheus`` scrapes both and alerts on them.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def publish(cfg: Any, name: str, registry: Any, grouping_key: dict[str, str] | None = None) -> Path:
    """Write ``registry`` to ``<textfile_dir>/<name>.prom`` and push it when a Pushgateway is configured."""
    from prometheus_client import push_to_gateway, write_to_textfile

    path = Path(cfg.textfile_dir) / f"{name}.prom"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_to_textfile(str(path), registry)
    if cfg.monitoring.pushgateway_url:
        try:
            push_to_gateway(cfg.monitoring.pushgateway_url, job=name, registry=registry, grouping_key=grouping_key or {})
        except OSError as exc:  # metrics must not fail the job they describe
            log.warning("pushgateway %s: %s", cfg.monitoring.pushgateway_url, exc)
    return path


def nightly_outcome(cfg: Any, date: str, failed_tasks: list[str], champions: dict[tuple[str, str], float],
                    now: dt.datetime | None = None) -> list[Path]:
    """The night's outcome, and when each champion was last promoted (for the 48 h freshness alert).

    The success timestamp goes to its own file, written on success only, so a failed
    night leaves the last good one in place.
    """
    from prometheus_client import CollectorRegistry, Gauge

    now = now or dt.datetime.now(dt.timezone.utc)
    reg = CollectorRegistry()
    Gauge("factory_nightly_last_run_timestamp_seconds", "When the last nightly finished", registry=reg).set(
        now.timestamp())
    Gauge("factory_nightly_last_run_success", "1 when the last nightly succeeded", registry=reg).set(
        0.0 if failed_tasks else 1.0)
    Gauge("factory_nightly_failed_tasks", "Failed tasks in the last nightly", registry=reg).set(len(failed_tasks))
    Gauge("factory_nightly_last_run_info", "Logical date of the last nightly", ["date"], registry=reg).labels(
        date=date).set(1)
    champ = Gauge("factory_champion_promoted_timestamp_seconds", "When the current champion was promoted",
                  ["family", "target"], registry=reg)
    for (family, target), ts in sorted(champions.items()):
        champ.labels(family=family, target=target).set(ts)
    paths = [publish(cfg, "factory_nightly", reg)]
    if not failed_tasks:
        ok = CollectorRegistry()
        Gauge("factory_nightly_last_success_timestamp_seconds", "When a nightly last succeeded", registry=ok).set(
            now.timestamp())
        paths.append(publish(cfg, "factory_nightly_success", ok))
    return paths
