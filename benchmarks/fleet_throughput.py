"""Wall time of a night on the local Celery fleet against `factory nightly` (one process), and how it grows with
families x targets x precisions.

Extra targets are simulated as CPU classes (`cpu_sim1`, ...: ONNX Runtime builds on the CPU worker, each its
own engine_/gate_ tasks and pool), so the DAG widens exactly as it would with more GPU architectures.

Each case runs twice on the same machine, back to back: `factory nightly` (dag.test, one process, tasks in
sequence) and a fresh local fleet (tests/cluster/fleet.py: Postgres, Redis, moto S3, MLflow, Airflow with the
CeleryExecutor, workers `default` and `train` in their own network namespaces) triggered over REST. For the
fleet it also reports the work (sum of task durations) and the critical path (per stage, the longest task
instance, summed along the DAG's chain): the wall time with one worker per mapped task.

    sudo .venv/bin/python benchmarks/fleet_throughput.py --cases scaling --out benchmarks/results/fleet.json
    .venv/bin/python benchmarks/fleet_throughput.py --report benchmarks/results/fleet.json

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
}
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
    return {"wall_s": round(wall, 1)}


def _stage(task_id: str) -> str:
    for s in ("engine", "gate_report", "gate"):
        if task_id.startswith(s):
            return s
    return task_id


def run_fleet(profile: str, fams: list[str], tgts: list[dict], root: Path) -> dict:
    from tests.cluster.fleet import Fleet, Worker

    fleet = Fleet(root / "fleet", [Worker("w-default", ["default"], 4), Worker("w-train", ["train"], 3)], tgts,
                  pools_file=write_pools(root / "pools.json", tgts))
    try:
        fleet.start()
        fleet.init_pools()
        fleet.api("PATCH", "/dags/nightly_model_factory", {"is_paused": False})
        t0 = time.monotonic()
        run_id = fleet.trigger(DATE, {"profile": profile, "families": fams})
        run = fleet.wait_run(run_id, 3 * 3600)
        wall = time.monotonic() - t0
        tis = fleet.task_instances(run_id)
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
    return {"wall_s": round(wall, 1), "work_s": round(work, 1),
            "critical_path_s": round(sum(longest.get(s, 0.0) for s in CHAIN), 1), "tasks": len(tis)}


def report(rows: list[dict]) -> str:
    head = ("| families | targets | precisions | engines | `factory nightly` s | fleet wall s | fleet work s | "
            "critical path s | fleet / one process |\n|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        local = r.get("local", {}).get("wall_s")
        ratio = f"{r['fleet']['wall_s'] / local:.2f}" if local else "—"
        lines.append(f"| {r['families']} | {r['targets']} | {r['precisions']} | {r['engines']} | {local or '—'} "
                     f"| {r['fleet']['wall_s']} | {r['fleet']['work_s']} | {r['fleet']['critical_path_s']} | {ratio} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", choices=sorted(CASES), default="smoke")
    ap.add_argument("--profile", default="smoke", choices=["smoke", "default"])
    ap.add_argument("--out", type=Path)
    ap.add_argument("--local", choices=["all", "first"], default="all",
                    help="run `factory nightly` for every case, or only the first (the fleet runs every case)")
    ap.add_argument("--report", type=Path, help="print the table of a saved run and exit")
    args = ap.parse_args()
    if args.report:
        print(report(json.loads(args.report.read_text())["rows"]))
        return 0
    rows = []
    for i, (n_fam, extra, n_prec) in enumerate(CASES[args.cases]):
        fams, tgts = ALL[:n_fam], targets(extra, n_prec)
        row = {"families": n_fam, "targets": len(tgts), "precisions": n_prec, "engines": n_fam * len(tgts) * n_prec,
               "profile": args.profile}
        print(f"case: {row}", flush=True)
        if args.local == "all" or i == 0:
            with tempfile.TemporaryDirectory(prefix="bench-local-") as d:
                row["local"] = run_local(args.profile, fams, tgts, Path(d))
            print(f"  factory nightly: {row['local']}", flush=True)
        with tempfile.TemporaryDirectory(prefix="bench-fleet-") as d:
            row["fleet"] = run_fleet(args.profile, fams, tgts, Path(d))
        print(f"  fleet: {row['fleet']}", flush=True)
        rows.append(row)
    table = report(rows)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"measured": dt.date.today().isoformat(), "cpus": os.cpu_count(),
                                        "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
