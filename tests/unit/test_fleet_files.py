"""The deployment files agree with the code: compose services, ports, queues, pools, images and Prometheus targets.

Docker and Kubernetes cannot run here, so these files are checked by parsing them against the factory's own
config (the fleet config every worker reads), the pools file and the CLI's defaults.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from factory_core.config import load_config

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
COMPOSE = yaml.safe_load((INFRA / "docker-compose.fleet.yml").read_text())
SERVICES = COMPOSE["services"]
HELM = yaml.safe_load((INFRA / "helm" / "values.yaml").read_text())
FLEET = load_config(INFRA / "fleet" / "factory.fleet.yaml", env={})
POOLS = json.loads((INFRA / "airflow" / "pools.json").read_text())
PINNED = re.compile(r"^[\w./-]+:(v?\d[\w.-]*|RELEASE\.[\w-]+)$")


def _url(value: str):
    """A URL from the compose file, its ``${VAR:?…}`` interpolations replaced by a placeholder."""
    return urlparse(re.sub(r"\$\{[^}]*\}", "secret", value))


def _queues(command: str) -> set[str]:
    args = shlex.split(command)
    assert args[:3] == ["airflow", "celery", "worker"], command
    return set(args[args.index("-q") + 1].split(","))


def _needed_queues(cfg) -> set[str]:
    return {str(t.queue) for t in cfg.declared_targets()} | {cfg.train.queue, "default"}


def test_every_queue_of_the_fleet_config_has_a_compose_worker():
    served = {}
    for name, svc in SERVICES.items():
        if str(svc.get("command", "")).startswith("airflow celery worker"):
            for q in _queues(svc["command"]):
                served.setdefault(q, []).append(name)
    assert _needed_queues(FLEET) <= set(served), set(_needed_queues(FLEET)) - set(served)
    for t in FLEET.declared_targets():
        if t.queue != "default":  # a GPU architecture's worker: one GPU, and a profile named after it
            (svc,) = [SERVICES[n] for n in served[str(t.queue)]]
            assert svc["deploy"]["resources"]["reservations"]["devices"][0]["count"] == 1
            assert svc["profiles"] == [t.name] and svc["image"].startswith("model-factory-gpu:")


def test_compose_references_only_services_and_files_that_exist():
    for name, svc in SERVICES.items():
        for dep in svc.get("depends_on", {}):
            assert dep in SERVICES, f"{name} depends on missing service {dep}"
        build = svc.get("build")
        if build:
            assert (INFRA / build["context"] / build["dockerfile"]).is_file(), build
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith("."):
                assert (INFRA / src).exists(), f"{name}: {src}"
            else:
                assert src in COMPOSE["volumes"], f"{name}: volume {src} not declared"


def test_images_are_pinned_and_the_gpu_worker_is_ngc_tensorrt():
    for name, svc in SERVICES.items():
        assert PINNED.match(svc["image"]), f"{name}: image {svc['image']} is not pinned to a version"
        assert not svc["image"].endswith(":latest")
    froms = {p.name: re.findall(r"^FROM (\S+)", p.read_text(), re.M) for p in (INFRA / "docker").glob("*.Dockerfile")}
    assert froms["gpu-worker.Dockerfile"] == ["nvcr.io/nvidia/tensorrt:25.10-py3"]
    for img in froms["factory.Dockerfile"]:
        assert PINNED.match(img), img
    gpu = (INFRA / "docker" / "gpu-worker.Dockerfile").read_text()
    assert "ARG TENSORRT_MAJOR=10" in gpu and "tensorrt.__version__" in gpu  # the build checks what it got
    assert PINNED.match(f"{HELM['images']['airflow']['repository']}:{HELM['images']['airflow']['tag']}")


def test_endpoints_in_the_fleet_config_are_compose_services_on_their_ports():
    env = COMPOSE["x-factory-env"]
    for url in (FLEET.registry.tracking_uri, FLEET.registry.s3_endpoint_url,
                env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"], env["AIRFLOW__CELERY__BROKER_URL"]):
        u = _url(url)
        assert u.hostname in SERVICES, url
        published = {p.split(":")[-1] for p in SERVICES[u.hostname].get("ports", [])}
        assert str(u.port) in published, (url, published)
    from pipelines.fleet import API_CONNECTION

    api = _url(env[f"AIRFLOW_CONN_{API_CONNECTION.upper()}"])
    assert api.hostname == "airflow-apiserver" and api.port == 8080
    assert env["FACTORY_CONFIG"] == "/opt/factory/infra/fleet/factory.fleet.yaml"  # the image copies infra/
    assert "factory airflow init" in " ".join(SERVICES["airflow-init"]["command"])


@pytest.mark.parametrize("cfg", [load_config(env={}), FLEET], ids=["default", "fleet"])
def test_every_target_pool_is_declared_once_in_the_pools_file(cfg):
    for t in cfg.declared_targets():
        assert t.pool in POOLS, f"target {t.name}: pool {t.pool} not in infra/airflow/pools.json"
        assert isinstance(POOLS[t.pool]["slots"], int) and POOLS[t.pool]["slots"] >= 1
        if t.queue != "default":
            assert POOLS[t.pool]["slots"] == 1, "one timing per GPU at a time"


def test_prometheus_scrapes_compose_services_on_the_ports_the_code_serves():
    prom = yaml.safe_load((INFRA / "prometheus" / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    for job in jobs.values():
        for sc in job.get("static_configs", []):
            for target in sc["targets"]:
                host, port = target.split(":")
                assert host in SERVICES, f"job {job['job_name']}: {host} is no compose service"
                assert any(p.endswith(f":{port}") for p in SERVICES[host].get("ports", [])), target
        for fsd in job.get("file_sd_configs", []):
            for f in fsd["files"]:
                assert (INFRA / "prometheus" / f).is_file(), f
    (am,) = prom["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert am.split(":")[0] in SERVICES
    from pipelines.cli import build_parser

    tele = build_parser().parse_args(["telemetry", "serve"])
    assert jobs["gpu-telemetry"]["static_configs"][0]["targets"] == [f"telemetry:{tele.port}"]
    assert f"--port {tele.port}" in SERVICES["telemetry"]["command"]


def test_helm_worker_sets_cover_every_queue_and_select_gpus_by_compute_capability():
    sets = HELM["workers"]["celery"]["sets"]
    by_queue = {s["queue"]: s for s in sets}
    assert _needed_queues(FLEET) <= set(by_queue)
    assert len({s["name"] for s in sets}) == len(sets)
    for t in FLEET.declared_targets():
        if t.compute_capability is None:
            continue
        s = by_queue[str(t.queue)]
        major, minor = t.compute_capability
        assert s["nodeSelector"] == {"nvidia.com/gpu.compute.major": str(major),
                                     "nvidia.com/gpu.compute.minor": str(minor)}
        assert s["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert HELM["executor"] == "CeleryExecutor"
    assert "factory airflow init" in " ".join(HELM["migrateDatabaseJob"]["args"])


def test_the_monitoring_compose_runs_the_alertmanager_prometheus_points_at():
    mon = yaml.safe_load((INFRA / "docker-compose.monitoring.yml").read_text())["services"]
    assert {"prometheus", "alertmanager", "grafana", "node-exporter", "pushgateway"} <= set(mon)
