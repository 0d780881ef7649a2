"""A real multi-host fleet on one machine: every part a real process, every worker a separate "host".

- control plane on a bridge (10.77.0.1): PostgreSQL (Airflow's metadata DB, Celery's result backend and MLflow's
  backend store), Redis (the Celery broker), moto's S3 server (run root, lake and engine store), an MLflow server
  (Postgres + S3 artifacts), and Airflow's api-server, scheduler and dag-processor with the CeleryExecutor;
- each Celery worker in its own network namespace (veth onto the bridge), UTS namespace (its own hostname) and
  mount namespace with a private tmpfs as its local disk: no worker can see another's files, and the control
  plane sees none of them.

Needs root (``ip netns``), PostgreSQL's server binaries and ``redis-server``; :func:`missing` says what is absent.
Used by ``tests/cluster`` and ``benchmarks/fleet_throughput.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from glob import glob
from pathlib import Path

BRIDGE, NET = "mfbr0", "10.77.0"
SUPERVISED = ("api-server", "scheduler", "dag-processor")
"""Started again when they exit, as compose's ``restart: unless-stopped`` and Kubernetes do for the same
processes: Airflow 3.3's scheduler and dag-processor exit when their database goes away (seen here at a
PostgreSQL restart: ``OperationalError: connection refused``, exit) and expect their supervisor to start them."""
SUPERVISE_EVERY_S = 2.0
HOST = f"{NET}.1"
REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
DAG_ID = "nightly_model_factory"


@dataclass
class Worker:
    name: str
    queues: list[str]
    concurrency: int = 2
    ip: str = ""
    proc: subprocess.Popen | None = None


def pg_bin() -> Path | None:
    found = sorted(glob("/usr/lib/postgresql/*/bin/postgres"))
    return Path(found[-1]).parent if found else None


def missing() -> list[str]:
    """What this machine lacks to run a fleet (empty when it can)."""
    out = []
    if os.geteuid() != 0:
        out.append("root (for ip netns)")
    if shutil.which("ip") is None:
        out.append("iproute2 (ip)")
    if shutil.which("redis-server") is None:
        out.append("redis-server (Debian package redis-server)")
    if pg_bin() is None:
        out.append("PostgreSQL server binaries (/usr/lib/postgresql/*/bin)")
    try:
        import airflow.providers.celery  # noqa: F401
        import psycopg2  # noqa: F401
    except ImportError as exc:
        out.append(f"python package: {exc.name}")
    return out


def _sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, capture_output=True, text=True)


@dataclass
class Fleet:
    root: Path
    workers: list[Worker]
    targets: list[dict] = field(default_factory=list)
    wait_s: float = 20.0
    pools_file: Path | None = None
    """Pools file for `factory airflow init` (default: infra/airflow/pools.json)."""
    airflow_conf: dict[str, str] = field(default_factory=dict)
    """Extra ``AIRFLOW__SECTION__KEY`` settings for every Airflow process (the fault tests' bounds)."""
    runs: dict = field(default_factory=dict)
    """The fleet config's ``runs`` section (e.g. a short ``retry_delay_s``)."""
    warm: bool = True
    """Workers preload the heavy stack before forking task processes (``pipelines.worker``), as deployed; False
    gives Airflow's default Celery config, where each task process imports it afresh (the benchmark's baseline)."""
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    spawned: dict[str, tuple] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    restarts: list[dict] = field(default_factory=list)
    """What the supervisor started again: ``{"service", "exit", "at"}`` (epoch seconds)."""

    # ---- plumbing -------------------------------------------------------------------------------------
    def _net(self) -> None:
        self._teardown_net()
        _sh("ip", "link", "add", BRIDGE, "type", "bridge")
        _sh("ip", "addr", "add", f"{HOST}/24", "dev", BRIDGE)
        _sh("ip", "link", "set", BRIDGE, "up")
        for i, w in enumerate(self.workers):
            ns, w.ip = f"mf-{w.name}", f"{NET}.{11 + i}"
            _sh("ip", "netns", "add", ns)
            _sh("ip", "link", "add", f"mfh{i}", "type", "veth", "peer", "name", f"mfn{i}")
            _sh("ip", "link", "set", f"mfn{i}", "netns", ns)
            _sh("ip", "link", "set", f"mfh{i}", "master", BRIDGE, "up")
            _sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{w.ip}/24", "dev", f"mfn{i}")
            _sh("ip", "netns", "exec", ns, "ip", "link", "set", f"mfn{i}", "up")
            _sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")

    def _teardown_net(self) -> None:
        for ns in _sh("ip", "netns", "list", check=False).stdout.split("\n"):
            if ns.startswith("mf-"):
                _sh("ip", "netns", "del", ns.split()[0], check=False)
        for line in _sh("ip", "-o", "link", "show", check=False).stdout.splitlines():
            name = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
            if name.startswith("mfh"):
                _sh("ip", "link", "del", name, check=False)
        _sh("ip", "link", "del", BRIDGE, check=False)

    def _spawn(self, name: str, cmd: list[str], env: dict[str, str], **kw) -> subprocess.Popen:
        log = open(self.root / "logs" / f"{name}.log", "a")
        self.spawned[name] = (cmd, env, kw)
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True, **kw)
        self.procs[name] = p
        return p

    def _wait_port(self, name: str, port: int, timeout: float = 120) -> None:
        import socket

        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.procs[name].poll() is not None:
                raise RuntimeError(f"{name} exited {self.procs[name].returncode}: {self.tail(name)}")
            with socket.socket() as s:
                s.settimeout(1)
                if s.connect_ex((HOST, port)) == 0:
                    return
            time.sleep(0.5)
        raise RuntimeError(f"{name} did not listen on {HOST}:{port} within {timeout}s: {self.tail(name)}")

    def tail(self, name: str, n: int = 3000) -> str:
        p = self.root / "logs" / f"{name}.log"
        return p.read_text(errors="replace")[-n:] if p.exists() else ""

    @staticmethod
    def _free_port() -> int:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    # ---- services -------------------------------------------------------------------------------------
    def _postgres(self) -> None:
        import tempfile

        # the server runs as user postgres, who cannot enter a root-only tree (pytest's tmp is 0700)
        pg, data = pg_bin(), Path(tempfile.mkdtemp(prefix="factory-fleet-pg-"))
        self.pg_data = data
        shutil.chown(data, "postgres", "postgres")
        run_as = ["runuser", "-u", "postgres", "--"]
        r = subprocess.run([*run_as, str(pg / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
                           capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"initdb: {r.stdout[-1500:]}{r.stderr[-1500:]}")
        with open(data / "pg_hba.conf", "a") as f:
            f.write(f"host all all {NET}.0/24 trust\n")
        port = self.ports["postgres"] = self._free_port()
        self._spawn("postgres", [*run_as, str(pg / "postgres"), "-D", str(data), "-p", str(port), "-k", str(data),
                                 "-h", f"{HOST},127.0.0.1", "-c", "max_connections=300", "-c", "fsync=off"],
                    dict(os.environ))
        self._wait_port("postgres", port)
        for db in ("airflow", "mlflow"):
            for _ in range(20):
                r = _sh(str(pg / "psql"), "-h", HOST, "-p", str(port), "-U", "postgres", "-c", f"CREATE DATABASE {db}",
                        check=False)
                if r.returncode == 0:
                    break
                time.sleep(0.5)
            else:
                raise RuntimeError(f"create database {db}: {r.stderr}")

    def pg_url(self, db: str, driver: str = "postgresql+psycopg2") -> str:
        return f"{driver}://postgres@{HOST}:{self.ports['postgres']}/{db}"

    def _redis(self) -> None:
        port = self.ports["redis"] = self._free_port()
        self._spawn("redis", ["redis-server", "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no",
                              "--protected-mode", "no"], dict(os.environ))
        self._wait_port("redis", port)

    def _s3(self) -> None:
        port = self.ports["s3"] = self._free_port()
        self._spawn("s3", [str(VENV_BIN / "moto_server"), "-H", HOST, "-p", str(port)], self.aws_env())
        self._wait_port("s3", port)
        import boto3

        boto3.client("s3", endpoint_url=self.s3_url, region_name="us-east-1", aws_access_key_id="testing",
                     aws_secret_access_key="testing").create_bucket(Bucket="fleet")

    @property
    def s3_url(self) -> str:
        return f"http://{HOST}:{self.ports['s3']}"

    def aws_env(self) -> dict[str, str]:
        return {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1"}

    def _mlflow(self) -> None:
        port = self.ports["mlflow"] = self._free_port()
        env = {**self.aws_env(), "MLFLOW_S3_ENDPOINT_URL": self.s3_url}
        self._spawn("mlflow", [str(VENV_BIN / "mlflow"), "server", "--backend-store-uri",
                               self.pg_url("mlflow"), "--artifacts-destination", "s3://fleet/mlflow",
                               "--host", HOST, "--port", str(port), "--workers", "1"], env)
        self._wait_port("mlflow", port, 180)

    @property
    def mlflow_url(self) -> str:
        return f"http://{HOST}:{self.ports['mlflow']}"

    @property
    def api_url(self) -> str:
        return f"http://{HOST}:{self.ports['api']}"

    def _config(self) -> Path:
        cfg = {
            "runs": {"root": "s3://fleet/runs", **self.runs},
            "data": {"lake_uri": "s3://fleet/lake"},
            "train": {"queue": "train"},
            "engines": {"targets": self.targets, "worker_wait_s": self.wait_s},
            "registry": {"tracking_uri": self.mlflow_url, "store_uri": "s3://fleet/engines",
                         "s3_endpoint_url": self.s3_url},
        }
        path = self.root / "factory.fleet.yaml"  # on the shared image, like the code
        path.write_text(json.dumps(cfg, indent=2))
        return path

    def airflow_env(self, home: Path, factory_home: Path) -> dict[str, str]:
        keep = {k: v for k, v in self.aws_env().items() if not k.startswith(("AIRFLOW", "FACTORY"))}
        return {
            **keep,
            "PATH": f"{VENV_BIN}:{keep.get('PATH', '')}",
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.api_url}/execution/",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.pg_url("airflow"),
            "AIRFLOW__CELERY__BROKER_URL": f"redis://{HOST}:{self.ports['redis']}/0",
            "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + self.pg_url("airflow"),
            "AIRFLOW__API_AUTH__JWT_SECRET": "fleet-test-jwt-secret-0123456789abcdef",
            "AIRFLOW__API__SECRET_KEY": "fleet-test-secret",
            "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "3600",
            **({"AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS": "pipelines.worker.CELERY_CONFIG"} if self.warm else {}),
            "AIRFLOW_CONN_FACTORY_AIRFLOW_API": self.api_url,
            "FACTORY_CONFIG": str(self.config_path),
            "FACTORY_HOME": str(factory_home),
            **({"FACTORY_POOLS": str(self.pools_file)} if self.pools_file else {}),
            "MLFLOW_S3_ENDPOINT_URL": self.s3_url,
            "PYTHONUNBUFFERED": "1",
            **self.airflow_conf,
        }

    def start(self) -> "Fleet":
        (self.root / "logs").mkdir(parents=True, exist_ok=True)
        self._net()
        self._postgres()
        self._redis()
        self._s3()
        self._mlflow()
        self.ports["api"] = self._free_port()
        self.config_path = self._config()
        ctl = self.root / "control"
        self.ctl_env = self.airflow_env(ctl / "airflow", ctl / "factory")
        r = subprocess.run([str(VENV_BIN / "airflow"), "db", "migrate"], env=self.ctl_env, capture_output=True,
                           text=True, timeout=600)
        if r.returncode:
            raise RuntimeError(f"airflow db migrate: {(r.stdout + r.stderr)[-3000:]}")
        self._spawn("api-server", [str(VENV_BIN / "airflow"), "api-server", "--host", HOST, "--port",
                                   str(self.ports["api"]), "--workers", "1"], self.ctl_env)
        self._spawn("scheduler", [str(VENV_BIN / "airflow"), "scheduler"], self.ctl_env)
        self._spawn("dag-processor", [str(VENV_BIN / "airflow"), "dag-processor"], self.ctl_env)
        self._wait_port("api-server", self.ports["api"], 180)
        self._lock, self._stopping = threading.RLock(), threading.Event()
        threading.Thread(target=self._supervise, name="fleet-supervisor", daemon=True).start()
        self.local = self.root / "host-local"  # each worker's private tmpfs is mounted here, in its own namespace
        self.local.mkdir()
        for w in self.workers:
            self.start_worker(w)
        self.wait_dag()
        return self

    def start_worker(self, w: Worker) -> None:
        """Start (or, after :meth:`kill_host`, restart) worker ``w`` on its host: a fresh private disk."""
        env = self.airflow_env(self.local / "airflow", self.local / "factory")
        # task logs outlive the worker's tmpfs (a log volume): read by people and by the test, never by tasks
        env["AIRFLOW__LOGGING__BASE_LOG_FOLDER"] = str(self.root / "logs" / w.name)
        script = (f"hostname {w.name} && mount -t tmpfs -o size=8g tmpfs {self.local} && "
                  f"exec {VENV_BIN / 'airflow'} celery worker -q {','.join(w.queues)} -H {w.name}@{w.name} "
                  f"-c {w.concurrency}")
        w.proc = self._spawn(f"worker-{w.name}", ["ip", "netns", "exec", f"mf-{w.name}", "unshare", "--uts",
                                                  "--mount", "sh", "-c", script], env)

    def _supervise(self) -> None:
        """Every ``SUPERVISE_EVERY_S``: start again a :data:`SUPERVISED` process that exited (not one stopped on
        purpose: :meth:`restart` and :meth:`stop` hold the lock). The poll interval is the backoff: a scheduler
        that exits again because PostgreSQL is still down is tried again 2 s later."""
        while not self._stopping.wait(SUPERVISE_EVERY_S):
            with self._lock:
                for name in SUPERVISED:
                    p = self.procs.get(name)
                    if self._stopping.is_set() or p is None or p.poll() is None:
                        continue
                    self.restarts.append({"service": name, "exit": p.returncode, "at": time.time()})
                    cmd, env, kw = self.spawned[name]
                    self._spawn(name, cmd, env, **kw)

    def stop(self) -> None:
        if getattr(self, "_stopping", None) is not None:
            self._stopping.set()
            self._lock.acquire()  # held for good: nothing is started again while everything stops
        for sig, grace in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):  # whole process groups: no stragglers
            for p in reversed(list(self.procs.values())):
                try:
                    os.killpg(p.pid, sig)
                except (ProcessLookupError, PermissionError):
                    pass
            deadline = time.time() + grace
            for p in self.procs.values():
                try:
                    p.wait(timeout=max(0.1, deadline - time.time()))
                except subprocess.TimeoutExpired:
                    pass
        self._teardown_net()
        if getattr(self, "pg_data", None):
            shutil.rmtree(self.pg_data, ignore_errors=True)

    # ---- the operator's view: REST --------------------------------------------------------------------
    def api(self, method: str, path: str, body: dict | None = None) -> dict:
        req = urllib.request.Request(f"{self.api_url}/api/v2{path}", method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return json.load(r)
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"{method} {path}: {exc.code} {exc.read()[:500]!r}") from exc

    def wait_dag(self, timeout: float = 180) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                self.api("GET", f"/dags/{DAG_ID}")
                return
            except RuntimeError:
                time.sleep(2)
        raise RuntimeError(f"{DAG_ID} not parsed within {timeout}s: {self.tail('dag-processor')}")

    def init_pools(self) -> str:
        r = subprocess.run([str(VENV_BIN / "factory"), "airflow", "init"], env=self.ctl_env, capture_output=True,
                           text=True, timeout=300)
        if r.returncode:
            raise RuntimeError(f"factory airflow init: {r.stderr[-2000:]}")
        return r.stdout

    def trigger(self, date: str, conf: dict) -> str:
        run = self.api("POST", f"/dags/{DAG_ID}/dagRuns", {"logical_date": f"{date}T02:00:00Z", "conf": conf})
        return run["dag_run_id"]

    def wait_run(self, run_id: str, timeout: float, progress=None) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            run = self.api("GET", f"/dags/{DAG_ID}/dagRuns/{urllib.parse.quote(run_id)}")
            if progress:
                progress(run, self.task_instances(run_id))
            if run["state"] in ("success", "failed"):
                return run
            time.sleep(5)
        raise TimeoutError(f"run {run_id} not finished in {timeout}s")

    def task_instances(self, run_id: str) -> list[dict]:
        return self.api("GET", f"/dags/{DAG_ID}/dagRuns/{urllib.parse.quote(run_id)}/taskInstances?limit=1000")[
            "task_instances"]


    # ---- faults ---------------------------------------------------------------------------------------
    def worker(self, name: str) -> Worker:
        return next(w for w in self.workers if w.name == name)

    def kill_host(self, name: str) -> list[int]:
        """``kill -9`` of every process on worker host ``name`` (all of its network namespace): the host dies
        with its worker, the task processes it forked and their children. Returns the pids killed."""
        pids = [int(p) for p in _sh("ip", "netns", "pids", f"mf-{name}").stdout.split()]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        p = self.procs[f"worker-{name}"]
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=10)
        return pids

    def set_link(self, name: str, up: bool) -> None:
        """``ip link set … down|up`` of worker host ``name``'s interface, inside its namespace: the host stays up
        and keeps its processes, but reaches nothing and nothing reaches it."""
        i = [w.name for w in self.workers].index(name)
        _sh("ip", "netns", "exec", f"mf-{name}", "ip", "link", "set", f"mfn{i}", "up" if up else "down")

    def restart(self, name: str, pause_s: float = 0.0, env: dict[str, str] | None = None) -> None:
        """Stop service ``name`` (``postgres``, ``redis``, ``scheduler``, ``api-server``, …) with SIGTERM, as a
        supervisor would (SIGKILL after 30 s), wait ``pause_s``, and start it again with the same command,
        address and data; ``env`` adds settings to the new process."""
        with self._lock:
            self._restart(name, pause_s, env)

    def _restart(self, name: str, pause_s: float, env: dict[str, str] | None) -> None:
        p = self.procs[name]
        try:
            if name == "postgres":  # a fast shutdown (pg_ctl -m fast): SIGTERM would wait for every client to leave
                pid = int((self.pg_data / "postmaster.pid").read_text().split()[0])
                os.kill(pid, signal.SIGINT)
            else:
                os.killpg(p.pid, signal.SIGTERM)
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=10)
        except ProcessLookupError:
            pass
        time.sleep(pause_s)
        cmd, old_env, kw = self.spawned[name]
        self._spawn(name, cmd, {**old_env, **(env or {})}, **kw)
        if name in self.ports:
            self._wait_port(name, self.ports[name])
