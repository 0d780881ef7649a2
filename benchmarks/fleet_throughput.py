"""Wall time of a night on the local Celery fleet against `factory nightly` (one process), and how it grows with
families x targets x precisions.

Extra targets are simulated as CPU classes (`cpu_sim1`, ...: ONNX Runtime builds on the CPU worker, each its
own engine_/gate_ tasks and pool), so the DAG widens exactly as it would with more GPU architectures.

Each case runs twice on the same machine, back to back: `factory nightly` (dag.test, one process, tasks in
sequence) and a fresh local fleet (tests/cluster/fleet.py: Postgres, Redis, moto S3, MLflow, Airflow with the
CeleryExecutor, workers `default` and `train` in their own network namespaces) triggered over REST. For the
fleet it also reports the work (sum of task durations) and the critical path (per stage, the longest task
instance, summed along the DAG's chain): the wall time with one worker per mapped task; and each task's overhead:
from its start (Airflow's ``start_date``, when the worker has forked the task process) to the stage body, and from
the body's end to the task's ``end_date`` (the body's timestamps are the XCom ``factory_timing`` that
``run_stage`` pushes), median and p95 over the night's task instances, beside the queue wait (queued → start).
A task's lazy imports happen inside its body, so a warm worker (``pipelines.worker``) shortens the bodies too: the
work and the critical path show that part.

    sudo .venv/bin/python benchmarks/fleet_throughput.py --cases scaling --out benchmarks/results/fleet.json
    sudo .venv/bin/python benchmarks/fleet_throughput.py --cases one --workers cold warm --local none  # before/after
    .venv/bin/python benchmarks/fleet_throughput.py --report benchmarks/results/fleet.json --plot docs/img/fleet_scaling.png

Needs what tests/cluster needs (root, PostgreSQL, redis-server). Prints a table; --out keeps the records.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DATE = "2026-11-22"
ALL = ["market_alert", "price_direction", "fraud_risk"]
PRECISIONS = ["fp32", "fp16", "int8"]
# (families, extra CPU-class targets, precisions per target)
CASES = {
    "smoke": [(3, 0, 3)],
    "scaling": [(3, 0, 3), (1, 0, 1), (3, 0, 1), (3, 2, 3)],
    "quick": [(3, 0, 3), (1, 0, 1), (3, 2, 3)],
    "one": [(1, 0, 1)],
    "axes": [(1, 0, 1), (3, 0, 1), (1, 0, 3), (1, 2, 1), (3, 2, 3)],  # 1 -> 3 along each axis, then all three
    "widen": [(3, 0, 1), (1, 0, 3), (1, 2, 1), (3, 2, 3)],  # the axes without the base case
    "full": [(3, 2, 3)],  # the widest case alone
}
DAG_ID = "nightly_model_factory"
CHAIN = ["plan", "ingest", "features", "train", "export", "variants", "engine", "gate", "gate_report", "publish",
         "summarize", "outcome"]


def targets(extra: int, precisions: int) -> list[dict]:
    prec = PRECISIONS[:precisions]
    return [{"name": "cpu", "required": True, "precisions": prec}] + [
        {"name": f"cpu_sim{i}", "precisions": prec} for i in range(1, extra + 1)]


def write_pools(path: Path, tgts: list[dict]) -> Path:
    path.write_text(json.dumps({f"engines_{t['name']}": {"slots": 2, "description": "benchmark",
                                                         "include_deferred": False} for t in tgts}))
    return path


def run_local(profile: str, fams: list[str], tgts: list[dict], root: Path) -> dict:
    cfg = root / "factory.yaml"
    cfg.write_text(json.dumps({"engines": {"targets": tgts}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FACTORY", "AIRFLOW"))}
    env.update({"FACTORY_HOME": str(root / "home"), "FACTORY_CONFIG": str(cfg),
                "FACTORY_POOLS": str(write_pools(root / "pools.json", tgts))})
    t0 = time.monotonic()
    r = subprocess.run([str(Path(sys.executable).with_name("factory")), "nightly", "--profile", profile, "--date",
                        DATE, "--families", *fams], env=env, capture_output=True, text=True)
    wall = time.monotonic() - t0
    if r.returncode:
        raise RuntimeError(f"factory nightly failed: {r.stdout[-2000:]}{r.stderr[-2000:]}")
    return {"wall_s": round(wall, 1), "load": " ".join(f"{x:.1f}" for x in os.getloadavg())}


def _stage(task_id: str) -> str:
    for s in ("engine", "gate_report", "gate"):
        if task_id.startswith(s):
            return s
    return task_id


def _when(s: str | None) -> float | None:
    return dt.datetime.fromisoformat(s).timestamp() if s else None


def _pct(xs: list[float], q: float) -> float | None:
    """The q-quantile, nearest rank (p95 of 12 samples is the largest: say n beside it)."""
    if not xs:
        return None
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, max(0, int(-(-q * len(xs) // 1)) - 1))], 2)


def overhead(tis: list[dict], timings: dict[tuple[str, int], dict]) -> dict:
    """Median and p95 of the time before and after each task's stage body, and of the queue wait."""
    pre, post, total, queued, per_task = [], [], [], [], []
    for t in tis:
        start, end, tm = _when(t.get("start_date")), _when(t.get("end_date")), timings.get((t["task_id"],
                                                                                            t["map_index"]))
        if start and t.get("queued_when"):
            queued.append(start - _when(t["queued_when"]))
        if start and end and tm:
            pre.append(tm["body_start"] - start)
            post.append(end - tm["body_end"])
            total.append(pre[-1] + post[-1])
            per_task.append({"task": t["task_id"], "map_index": t["map_index"], "pre_s": round(pre[-1], 2),
                             "body_s": round(tm["body_end"] - tm["body_start"], 2), "post_s": round(post[-1], 2),
                             "cpu_pre_s": round(tm.get("cpu_before_body", float("nan")), 2),
                             "cpu_body_s": round(tm.get("cpu_body", float("nan")), 2)})
    cpu_pre = [t["cpu_pre_s"] for t in per_task]
    return {"n": len(total), **{f"{name}_{q}": _pct(xs, v) for name, xs in
                                (("pre", pre), ("post", post), ("overhead", total), ("queued", queued),
                                 ("cpu_pre", cpu_pre)) for q, v in (("median", 0.5), ("p95", 0.95))},
            "body_sum_s": round(sum(t["body_s"] for t in per_task), 1),
            "cpu_pre_sum_s": round(sum(cpu_pre), 1), "cpu_body_sum_s": round(sum(t["cpu_body_s"] for t in per_task), 1),
            "tasks": per_task}


def timings_of(fleet, run_id: str, tis: list[dict]) -> dict[tuple[str, int], dict]:
    """The ``factory_timing`` XCom of every task instance that ran a stage body (run_stage pushes it)."""
    from pipelines.orchestration import TIMING_KEY

    out = {}
    for t in tis:
        if t["state"] != "success":
            continue
        path = (f"/dags/{DAG_ID}/dagRuns/{urllib.parse.quote(run_id)}/taskInstances/{t['task_id']}/xcomEntries/"
                f"{TIMING_KEY}?map_index={t['map_index']}")
        try:
            value = fleet.api("GET", path)["value"]
        except RuntimeError:  # a task without a stage body (families, route_*, queues, outcome)
            continue
        out[(t["task_id"], t["map_index"])] = json.loads(value) if isinstance(value, str) else value
    return out


def run_fleet(profile: str, fams: list[str], tgts: list[dict], root: Path, warm: bool = True) -> dict:
    from tests.cluster.fleet import Fleet, Worker

    fleet = Fleet(root / "fleet", [Worker("w-default", ["default"], 4), Worker("w-train", ["train"], 3)], tgts,
                  pools_file=write_pools(root / "pools.json", tgts), warm=warm)
    try:
        fleet.start()
        fleet.init_pools()
        fleet.api("PATCH", "/dags/nightly_model_factory", {"is_paused": False})
        t0, t0_epoch = time.monotonic(), time.time()
        run_id = fleet.trigger(DATE, {"profile": profile, "families": fams})
        run = fleet.wait_run(run_id, 3 * 3600)
        wall = time.monotonic() - t0
        tis = fleet.task_instances(run_id)
        timings = timings_of(fleet, run_id, tis)
        restarts = [{**r, "at": round(r["at"] - t0_epoch, 1)} for r in fleet.restarts]  # seconds into the night
    finally:
        fleet.stop()
    if run["state"] != "success":
        raise RuntimeError(f"fleet night {run['state']}: {[t['task_id'] for t in tis if t['state'] == 'failed']}")
    longest: dict[str, float] = {}
    work = 0.0
    for t in tis:
        if t.get("start_date") and t.get("end_date"):
            d = (dt.datetime.fromisoformat(t["end_date"]) - dt.datetime.fromisoformat(t["start_date"])).total_seconds()
            work += d
            longest[_stage(t["task_id"])] = max(longest.get(_stage(t["task_id"]), 0.0), d)
    return {"wall_s": round(wall, 1), "work_s": round(work, 1), "warm": warm,
            "critical_path_s": round(sum(longest.get(s, 0.0) for s in CHAIN), 1), "tasks": len(tis),
            # a task that needed a second try waited runs.retry_delay_s: name it, or the wall time misleads
            "retried": [f"{t['task_id']}[{t['map_index']}] try {t['try_number']}" for t in tis
                        if (t.get("try_number") or 1) > 1],
            "service_restarts": restarts, "overhead": overhead(tis, timings)}


STAGE_IMPORTS = {
    "DAG parse (every task)": ["dags.nightly_model_factory"],
    "train": ["dags.nightly_model_factory", "pandas", "torch", "pipelines.train", "pipelines.datasets"],
    "export": ["dags.nightly_model_factory", "torch", "onnx", "pipelines.export", "pipelines.models"],
    "variants": ["dags.nightly_model_factory", "torch", "onnxruntime", "modelopt.onnx.quantization",
                 "pipelines.quantize", "model_registry.runners"],
    "publish": ["dags.nightly_model_factory", "mlflow", "boto3", "model_registry.publish"],
}
"""What a task process of each stage imports (the DAG file, then the stage's lazy imports)."""


COLD_WORKER = ["airflow.providers.celery.executors.celery_executor", "airflow.sdk.execution_time.supervisor",
               "airflow.providers.standard.operators.python", "jinja2.ext", "numpy"]
"""What an Airflow Celery worker has imported before it forks a task process, without pipelines.worker (the
executor, the supervisor, and Airflow's own preload, ``on_celery_import_modules``): not counted."""


def import_cost() -> dict[str, dict[str, float]]:
    """CPU and wall seconds a fresh interpreter spends importing each stage's modules: what a cold worker's task
    process pays and a warm worker's inherits. CPU seconds hardly move with the neighbours' load; wall seconds do."""
    code = ("import importlib, sys, time\n"
            f"for m in {COLD_WORKER!r}: importlib.import_module(m)\n"  # a cold worker's task process has these
            "c, w = time.process_time(), time.perf_counter()\n"
            "for m in sys.argv[1:]: importlib.import_module(m)\n"
            "print(time.process_time() - c, time.perf_counter() - w)")
    out = {}
    for stage, mods in STAGE_IMPORTS.items():
        r = subprocess.run([sys.executable, "-c", code, *mods], capture_output=True, text=True, cwd=REPO,
                           env={**os.environ, "PYTHONPATH": str(REPO)})
        if r.returncode:
            raise RuntimeError(f"importing {mods}: {r.stderr[-1500:]}")
        cpu, wall = map(float, r.stdout.split()[-2:])
        out[stage] = {"cpu_s": round(cpu, 2), "wall_s": round(wall, 2)}
        print(f"  {stage}: {out[stage]}", flush=True)
    return out


def save(out: Path | None, rows: list[dict]) -> None:
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"measured": dt.date.today().isoformat(), "cpus": os.cpu_count(), "rows": rows},
                                  indent=2))


def merged(rows: list[dict]) -> list[dict]:
    """Fleet rows, each with its case's `factory nightly` time (from a local-only row where it has none)."""
    def case(r):
        return r.get("profile", "smoke"), r["families"], r["targets"], r["precisions"]

    local = {case(r): r["local"] for r in rows if "local" in r and "fleet" not in r}
    return [{**r, "local": r.get("local") or local.get(case(r), {})} for r in rows if "fleet" in r]


def report(rows: list[dict]) -> str:
    head = ("| profile | families | targets | precisions | engines | workers | `factory nightly` s | fleet wall s | "
            "fleet work s | critical path s | fleet / one process | critical path / one process | "
            "overhead median / p95 s (n) | before body median | after body median | queued median | "
            "CPU s before body median | CPU s in bodies, sum | tasks retried | load 1/5/15 min at end |\n"
            "|" + "---|" * 20)
    lines = [head]
    for r in rows:
        local = r.get("local", {}).get("wall_s")
        f, o = r["fleet"], r["fleet"].get("overhead", {})
        ratio = f"{f['wall_s'] / local:.2f}" if local else "—"
        cp = f"{f['critical_path_s'] / local:.2f}" if local else "—"
        kind = "warm" if f.get("warm", False) else "cold"  # rows saved before warm workers were cold
        lines.append(f"| {r.get('profile', 'smoke')} | {r['families']} | {r['targets']} | {r['precisions']} | "
                     f"{r['engines']} | {kind} | {local or '—'} | {f['wall_s']} | "
                     f"{f['work_s']} | {f['critical_path_s']} | {ratio} | {cp} | {o.get('overhead_median', '—')} / "
                     f"{o.get('overhead_p95', '—')} ({o.get('n', 0)}) | {o.get('pre_median', '—')} | "
                     f"{o.get('post_median', '—')} | {o.get('queued_median', '—')} | "
                     f"{o.get('cpu_pre_median', '—')} | "
                     f"{o.get('cpu_body_sum_s', '—')} | {', '.join(f.get('retried', [])) if 'retried' in f else '—'}"
                     f" | {r.get('load', '—')} |")
    return "\n".join(lines)


def plot(rows: list[dict], dest: Path) -> Path:
    """Bars per case: `factory nightly`, the fleet's wall time and its critical path (one panel per profile)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    profiles = sorted({r.get("profile", "smoke") for r in rows}, key=["smoke", "default"].index)
    fig, axes = plt.subplots(1, len(profiles), figsize=(6.5 * len(profiles), 4.2), squeeze=False)
    for ax, prof in zip(axes[0], profiles):
        rs = [r for r in rows if r.get("profile", "smoke") == prof]
        xs = range(len(rs))
        series = [("factory nightly (one process)", [r.get("local", {}).get("wall_s") or 0 for r in rs]),
                  ("fleet wall", [r["fleet"]["wall_s"] for r in rs]),
                  ("fleet critical path", [r["fleet"]["critical_path_s"] for r in rs])]
        for k, (name, ys) in enumerate(series):
            ax.bar([x + (k - 1) * 0.27 for x in xs], ys, width=0.27, label=name)
        ax.set_xticks(list(xs), [f"{r['families']}f x {r['targets']}t x {r['precisions']}p\n{r['engines']} engines"
                                 for r in rs], fontsize=8)
        ax.set_ylabel("seconds")
        ax.set_title(f"{prof} profile, 2 CPU cores")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(dest)
    return dest


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", choices=sorted(CASES), default="smoke")
    ap.add_argument("--profile", default="smoke", choices=["smoke", "default"])
    ap.add_argument("--out", type=Path)
    ap.add_argument("--local", choices=["all", "first", "none"], default="all",
                    help="run `factory nightly` for every case, only the first, or none (the fleet runs every case)")
    ap.add_argument("--workers", nargs="+", choices=["warm", "cold", "none"], default=["warm"],
                    help="fleet workers that preload the stack (pipelines.worker, as deployed) and/or Airflow's "
                         "default (each task process imports it afresh); each kind runs every case; none: only "
                         "`factory nightly` (no fleet, no root needed)")
    ap.add_argument("--report", nargs="+", type=Path,
                    help="print the table of saved runs and exit; a fleet row without a `factory nightly` time takes "
                         "that of its case from a local-only row (--workers none)")
    ap.add_argument("--plot", type=Path, help="with --report: also draw the cases as bars into this PNG")
    ap.add_argument("--import-cost", action="store_true",
                    help="only measure what a cold task process spends importing, per stage (CPU and wall seconds)")
    args = ap.parse_args()
    if args.import_cost:
        costs = import_cost()
        if args.out:
            args.out.write_text(json.dumps({"measured": dt.date.today().isoformat(), "load": os.getloadavg(),
                                            "import_cost": costs}, indent=2))
        return 0
    if args.report:
        rows = merged([r for p in args.report for r in json.loads(p.read_text())["rows"]])
        print(report(rows))
        if args.plot:
            print(f"plot: {plot(rows, args.plot)}")
        return 0
    rows = []
    for i, (n_fam, extra, n_prec) in enumerate(CASES[args.cases]):
        fams, tgts = ALL[:n_fam], targets(extra, n_prec)
        row = {"families": n_fam, "targets": len(tgts), "precisions": n_prec, "engines": n_fam * len(tgts) * n_prec,
               "profile": args.profile}
        print(f"case: {row}", flush=True)
        if args.local == "all" or (args.local == "first" and i == 0):
            with tempfile.TemporaryDirectory(prefix="bench-local-") as d:
                row["local"] = run_local(args.profile, fams, tgts, Path(d))
            print(f"  factory nightly: {row['local']}", flush=True)
        if args.workers == ["none"]:
            rows.append(row)
            save(args.out, rows)
        for kind in (k for k in args.workers if k != "none"):
            with tempfile.TemporaryDirectory(prefix="bench-fleet-") as d:
                fleet_row = {**row, "fleet": run_fleet(args.profile, fams, tgts, Path(d), warm=kind == "warm"),
                             "load": " ".join(f"{x:.1f}" for x in os.getloadavg())}
            print(f"  fleet ({kind}): {fleet_row['fleet']} load {fleet_row['load']}", flush=True)
            rows.append(fleet_row)
            save(args.out, rows)  # after every row: a long series interrupted keeps what it measured
    print(report(merged(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
