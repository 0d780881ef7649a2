"""Soak: ``--swaps`` hot swaps (default 1,000) of one ``EngineRunner`` under client load, with refused swaps mixed in,
in one run. Does serving stay correct, as fast and as small after a thousand swaps as after the first hundred?

Two versions of a smoke-size fraud_risk model are exported and built into CPU engines by the factory's own builder
(``serving_batching.build_engines``, as ``serving_swap.py`` builds them; in a child process, so that the measured
process is a lean serving one: no torch), and from the second, bad versions as
``tests/unit/test_warm_canary.py`` plants them: bytes that no longer match the manifest (``sha256``), a manifest
declaring 19 features (``contract``, refused before any loading), an engine whose output is not the manifest's
(``contract``, refused by the canary process), an engine that cannot load (``load``), one with NaN outputs
(``non-finite``) and a recorded sample it disagrees with (``disagrees``).

One ``EngineRunner`` (warm canary started and answering first, Prometheus metrics in a private registry, a failure
store) serves v1 to ``--clients`` threads calling ``predict`` (4 rows) in a closed loop for the whole run. The main
thread swaps v1 → v2 → v1 … ``--swaps`` times, ``--dwell-ms`` apart; after every ``--bad-every``-th swap it offers
the next bad version, which must be refused with its reason while the live version keeps serving. The same threads
alternate, request for request, with a control: a second ``EngineRunner`` on v1 that is never swapped. On a shared
host the load of other work moves both alike, so the soaked runner's p50 over the control's, first block vs last,
is what the swaps themselves did; the raw first-vs-last p50 is reported too.

Reported: failed requests (goal 0); each bad version offered and refused, by reason (goal: every one refused with
the expected reason); per-request latency p50/p99 in each block of ``--window`` swaps, and the control's (first vs
last: goal p50 within 5 %, raw and relative to the control); resident memory of this process and of the canary
child (``VmRSS`` of ``/proc/<pid>/status``) at the start, after the first block and at the end (goal: growth
< 50 MB), open file descriptors and threads (a leaked session or pipe shows there); the length of every list,
dict, set or deque on the runner, the failure store and the canary, and the number of metric series (goal: none
longer at the end than after the first block, but a deque within its bound).

Latencies go into a fixed histogram per block and client (bins 0.5 % wide from 1 µs to 100 s, allocated before the
first memory reading): percentiles are read at a bin's geometric centre (error ≤ 0.25 %), and keeping them does
not grow the process being measured.

    PYTHONPATH=. .venv/bin/python benchmarks/serving_soak.py --out benchmarks/results/serving_soak_cpu.json
    PYTHONPATH=. .venv/bin/python benchmarks/serving_soak.py --swaps 30 --window 10 --bad-every 5   # smoke
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

LO_S, STEP = 1e-6, 1.005  # histogram: bin i holds latencies in [LO_S * STEP**i, LO_S * STEP**(i+1))
N_BINS = int(math.ceil(math.log(100.0 / LO_S) / math.log(STEP)))
GOALS = {"failed_requests": 0, "p50_ratio_within": 0.05, "rss_growth_mb_below": 50.0}
BAD = {  # bad version -> the reason it must be refused with
    "sha256": "sha256", "contract-manifest": "contract", "contract-engine": "contract", "load": "load",
    "non-finite": "non-finite", "disagrees": "disagrees"}


def _rehash(folder: Path, name: str) -> None:
    from factory_core.contracts import MANIFEST
    from factory_core.fsutil import sha256_file

    m = json.loads((folder / MANIFEST).read_text())
    m["files"][name] = sha256_file(folder / name)
    (folder / MANIFEST).write_text(json.dumps(m, indent=2))


def bad_versions(good: Path, root: Path) -> dict[str, Path]:
    """Copies of ``good``, each broken one way (as ``tests/unit/test_warm_canary.py`` breaks them)."""
    import onnx

    from factory_core.contracts import MANIFEST
    from pipelines import faults
    from pipelines.export import OUTPUT_NAME

    out = {name: Path(shutil.copytree(good, root / name)) for name in BAD}
    engine = json.loads((good / MANIFEST).read_text())["engine_file"]
    half = (good / engine).read_bytes()[: (good / engine).stat().st_size // 2]
    (out["sha256"] / engine).write_bytes(half)  # the manifest's sha256 no longer matches
    m = json.loads((out["contract-manifest"] / MANIFEST).read_text())
    m["inputs"][0]["shape"][-1] = 19  # the manifest is not among its own hashed files: consistent, but 19 features
    for shape in m["inputs"][0]["profile"].values():
        shape[-1] = 19
    (out["contract-manifest"] / MANIFEST).write_text(json.dumps(m, indent=2))
    model = onnx.load(str(good / "model.onnx"))  # the engine's own output is called "score", not the manifest's
    for node in model.graph.node:
        node.output[:] = ["score" if o == OUTPUT_NAME else o for o in node.output]
    model.graph.output[0].name = "score"
    onnx.save(model, str(root / "score.onnx"))
    faults.replace_engine(out["contract-engine"], root / "score.onnx")
    (root / "half.onnx").write_bytes(half)
    faults.replace_engine(out["load"], root / "half.onnx")  # consistent manifest, an engine that cannot load
    faults.replace_engine(out["non-finite"], faults.nan_on_rare_inputs(good / "model.onnx", root / "nan.onnx",
                                                                       0, -1e9))
    with np.load(out["disagrees"] / "canary.npz") as z:
        inputs, expected = z["inputs"], z["expected"]
    np.savez(out["disagrees"] / "canary.npz", inputs=inputs, expected=expected + 0.2)
    _rehash(out["disagrees"], "canary.npz")
    return out


def rss_mb(pid: int | str | None = "self") -> float | None:
    """Resident memory of ``pid`` (``VmRSS``), MB; None when it is gone."""
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def percentile(hist: np.ndarray, q: float) -> float | None:
    """The ``q`` quantile (0..1) of a latency histogram, ms, at the bin's geometric centre."""
    total = int(hist.sum())
    if total == 0:
        return None
    i = int(np.searchsorted(np.cumsum(hist), q * total, side="left"))
    return LO_S * STEP ** (i + 0.5) * 1e3


def lengths(obj, name: str) -> dict[str, int]:
    """The length of every list, dict, set or deque held by ``obj`` (with its bound where it has one)."""
    out = {}
    for k, v in sorted(vars(obj).items()):
        if isinstance(v, (list, dict, set, deque)):
            out[f"{name}.{k}"] = len(v)
            if isinstance(v, deque) and v.maxlen is not None:
                out[f"{name}.{k} (bound)"] = v.maxlen
    return out


def series(registry) -> int:
    return sum(len(m.samples) for m in registry.collect())


def soak(v1: Path, v2: Path, bad: dict[str, Path], swaps: int, bad_every: int, clients: int, dwell_s: float,
         window: int, workdir: Path) -> dict:
    from prometheus_client import CollectorRegistry

    from model_registry.canary import SwapRefused, WarmCanary
    from model_registry.runtime import EngineRunner, FailureStore
    from monitoring.serving import ServingMetrics

    window = max(1, min(window, swaps // 2 or 1))
    blocks = max(1, swaps // window)  # the last block takes the remainder
    # [runner: 0 soaked, 1 control][block][bin], per client; allocated before the first reading
    hist = [np.zeros((2, blocks, N_BINS), np.int64) for _ in range(clients)]
    served, failed = [[0, 0] for _ in range(clients)], [[0, 0] for _ in range(clients)]
    errors: Counter = Counter()
    block, stop = [0], threading.Event()
    swap_ms = np.full(swaps, np.nan)

    registry = CollectorRegistry()
    warm = WarmCanary()
    warm.check(v1)  # started and answering: the serving process has been up a while
    store = FailureStore(workdir / "failures")
    runner = EngineRunner(v1, metrics=ServingMetrics("fraud_risk", "cpu", registry=registry), failures=store,
                          warm_canary=warm)
    # the control: the same engine, never swapped, served by the same threads request for request (ABAB), so a
    # change of the shared host's load moves both alike and their ratio shows what the swaps themselves did
    control = EngineRunner(v1, metrics=ServingMetrics("fraud_risk", "cpu", registry=CollectorRegistry()),
                           failures=FailureStore(workdir / "control-failures"), canary=False)
    runners = (runner, control)
    log_base = math.log(STEP)

    def client(c: int) -> None:
        x = np.random.default_rng(c).normal(size=(4, 18)).astype(np.float32)
        h, n = hist[c], 0
        while not stop.is_set():
            which = n % 2
            n += 1
            b = block[0]
            t0 = time.perf_counter()
            try:
                runners[which].predict(x)
            except Exception as exc:  # noqa: BLE001 - any failed request counts
                failed[c][which] += 1
                errors[type(exc).__name__] += 1
                continue
            lat = time.perf_counter() - t0
            h[which, b, min(N_BINS - 1, max(0, int(math.log(lat / LO_S) / log_base)))] += 1
            served[c][which] += 1

    def histories() -> dict[str, int]:
        return (lengths(runner, "runner") | lengths(store, "failures") | lengths(warm, "canary")
                | {"runner.swaps_total": runner.swaps_total, "metric series": series(registry)})

    def reading(after: int) -> dict:
        return {"after_swaps": after, "rss_mb": rss_mb(), "canary_rss_mb": rss_mb(warm.pid),
                "fds": len(os.listdir("/proc/self/fd")), "threads": threading.active_count(),
                "served": sum(s[0] for s in served), "histories": histories()}

    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(clients)]
    offered: dict[str, Counter] = {name: Counter() for name in BAD}
    live_changed = 0
    load0 = os.getloadavg()
    started = time.perf_counter()
    try:
        for t in threads:
            t.start()
        time.sleep(2.0)  # clients running, arenas and caches warm before the first reading
        for h in hist:
            h[:] = 0
        readings = [reading(0)]
        for i in range(swaps):
            block[0] = min(i // window, blocks - 1)
            swap_ms[i] = runner.swap(v2 if i % 2 == 0 else v1) * 1e3
            if (i + 1) % bad_every == 0:
                name = list(BAD)[((i + 1) // bad_every - 1) % len(BAD)]
                live = runner.version
                try:
                    runner.swap(bad[name])
                    offered[name]["accepted"] += 1
                except SwapRefused as exc:
                    offered[name][exc.kind] += 1
                live_changed += runner.version != live
            time.sleep(dwell_s)
            if i + 1 == swaps or ((i + 1) % window == 0 and (i + 1) // window < blocks):  # each block's end
                readings.append(reading(i + 1))
    finally:
        stop.set()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - started
        warm.close()

    per_block = []
    total = sum(hist)
    for b in range(blocks):
        lo, hi = b * window, (swaps if b == blocks - 1 else (b + 1) * window)
        soaked, ctl = total[0, b], total[1, b]
        row = {"swaps": f"{lo + 1}-{hi}", "requests": int(soaked.sum()),
               "p50_ms": percentile(soaked, 0.5), "p99_ms": percentile(soaked, 0.99),
               "control_p50_ms": percentile(ctl, 0.5), "control_p99_ms": percentile(ctl, 0.99),
               "swap_median_ms": round(float(np.median(swap_ms[lo:hi])), 1)}
        row["p50_to_control"] = row["p50_ms"] / row["control_p50_ms"]
        per_block.append({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})
    first, last = per_block[0], per_block[-1]
    rss = {"start": readings[0], "after_first_block": readings[1], "end": readings[-1]}
    at_block, at_end = readings[1]["histories"], readings[-1]["histories"]
    grew = {k: (at_block.get(k), n) for k, n in at_end.items()  # longer at the end than after the first block,
            if k != "runner.swaps_total" and "(bound)" not in k and n > at_block.get(k, 0)  # unless a deque
            and not (f"{k} (bound)" in at_end and n <= at_end[f"{k} (bound)"])}  # within its bound
    growth = {k: round(readings[-1][k] - readings[0][k], 1) for k in ("rss_mb", "canary_rss_mb")
              if readings[-1][k] is not None and readings[0][k] is not None}
    refused = {name: {"offered": sum(c.values()), "refused": sum(n for k, n in c.items() if k != "accepted"),
                      "expected": BAD[name], "kinds": dict(c)} for name, c in offered.items() if c}
    ratios = {"p50": last["p50_ms"] / first["p50_ms"], "p99": last["p99_ms"] / first["p99_ms"],
              "control_p50": last["control_p50_ms"] / first["control_p50_ms"],
              "p50_vs_control": last["p50_to_control"] / first["p50_to_control"]}
    within = GOALS["p50_ratio_within"]
    verdicts = {
        "0 failed requests": sum(f[0] + f[1] for f in failed) == 0,
        "every bad version refused with its reason": live_changed == 0 and all(
            r["kinds"] == {r["expected"]: r["offered"]} for r in refused.values()),
        f"p50 last {window} swaps within 5 % of first {window}": abs(ratios["p50"] - 1) <= within,
        "the same, relative to the never-swapped control": abs(ratios["p50_vs_control"] - 1) <= within,
        "RSS growth < 50 MB (process + canary)": sum(growth.values()) < GOALS["rss_growth_mb_below"],
        "histories bounded": not grew,
    }
    return {"date": dt.date.today().isoformat(), "cpus": os.cpu_count(), "load_avg_start": [round(v, 2) for v in load0],
            "load_avg_end": [round(v, 2) for v in os.getloadavg()], "elapsed_s": round(elapsed, 1),
            "config": {"swaps": swaps, "bad_every": bad_every, "clients": clients, "dwell_ms": dwell_s * 1e3,
                       "window": window, "rows_per_request": 4},
            "served_requests": sum(s[0] for s in served), "control_requests": sum(s[1] for s in served),
            "timed_requests": int(total[0].sum()), "failed_requests": sum(f[0] for f in failed),
            "control_failed_requests": sum(f[1] for f in failed), "errors": dict(errors),
            "swaps_done": runner.swaps_total, "refused": refused, "live_changed_on_refusal": live_changed,
            "blocks": per_block, "ratios_last_to_first": {k: round(v, 3) for k, v in ratios.items()},
            "readings": readings, "memory": rss, "growth_mb": growth, "histories_at_end": at_end,
            "histories_grown_after_first_block": grew, "goals": GOALS, "verdicts": verdicts}


def report(res: dict) -> str:
    c, r = res["config"], res["ratios_last_to_first"]
    first, last = res["blocks"][0], res["blocks"][-1]
    lines = [f"{res['swaps_done']} swaps under {c['clients']} clients ({res['served_requests']:,} requests to the "
             f"swapped runner, {res['timed_requests']:,} of them timed after a 2 s warm-up, and "
             f"{res['control_requests']:,} to the control; {res['elapsed_s']} s, {res['cpus']} CPUs, load average "
             f"{res['load_avg_start'][0]} → {res['load_avg_end'][0]})", "",
             f"| measure | swaps {first['swaps']} | swaps {last['swaps']} | last / first | goal |",
             "|---|---|---|---|---|",
             f"| failed requests | | {res['failed_requests']} (control {res['control_failed_requests']}) | | 0 |",
             f"| p50 ms per request | {first['p50_ms']} | {last['p50_ms']} | {r['p50']} | within 5 % |",
             f"| p50 ms, never-swapped control | {first['control_p50_ms']} | {last['control_p50_ms']} | "
             f"{r['control_p50']} | |",
             f"| p50 / control p50 | {first['p50_to_control']} | {last['p50_to_control']} | {r['p50_vs_control']} | "
             f"within 5 % |",
             f"| p99 ms per request | {first['p99_ms']} | {last['p99_ms']} | {r['p99']} | |",
             f"| swap median ms | {first['swap_median_ms']} | {last['swap_median_ms']} | "
             f"{round(last['swap_median_ms'] / first['swap_median_ms'], 3)} | |"]
    m = res["memory"]
    for key, what, goal in (("rss_mb", "RSS MB, serving process", "< 50 MB growth with the canary's"),
                            ("canary_rss_mb", "RSS MB, canary child", ""), ("fds", "open file descriptors", ""),
                            ("threads", "threads", "")):
        s, mid, e = m["start"][key], m["after_first_block"][key], m["end"][key]
        growth = f"{e - s:+.1f}" if None not in (s, e) else ""
        lines.append(f"| {what} (start / after {c['window']} swaps; end) | {s} / {mid} | {e} | {growth} | {goal} |")
    lines += ["", "| bad version | offered | refused | as | expected |", "|---|---|---|---|---|"]
    for name, b in res["refused"].items():
        lines.append(f"| {name} | {b['offered']} | {b['refused']} | "
                     f"{', '.join(f'{k} {n}' for k, n in b['kinds'].items())} | {b['expected']} |")
    lines += ["", "| history at the end | length |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in res["histories_at_end"].items()]
    lines += ["", "| swaps | requests | p50 ms | p99 ms | control p50 ms | p50 / control | swap median ms | RSS MB | "
              "canary RSS MB |", "|---|---|---|---|---|---|---|---|---|"]
    for b, rd in zip(res["blocks"], res["readings"][1:]):
        lines.append(f"| {b['swaps']} | {b['requests']:,} | {b['p50_ms']} | {b['p99_ms']} | {b['control_p50_ms']} | "
                     f"{b['p50_to_control']} | {b['swap_median_ms']} | {rd['rss_mb']} | {rd['canary_rss_mb']} |")
    lines += ["", "goals: " + "; ".join(f"{k}: {'met' if ok else 'MISSED'}" for k, ok in res["verdicts"].items())]
    if res["histories_grown_after_first_block"]:
        lines.append("grown since the first block (after, end): " + ", ".join(
            f"{k} {a} → {b}" for k, (a, b) in res["histories_grown_after_first_block"].items()))
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--swaps", type=int, default=1000, help="good swaps, alternating v1 and v2")
    ap.add_argument("--bad-every", type=int, default=10, help="offer a bad version after every N-th swap")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--dwell-ms", type=float, default=20.0, help="pause after each swap")
    ap.add_argument("--window", type=int, default=100, help="swaps per block (first vs last block compared)")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--build-into", type=Path, help=argparse.SUPPRESS)  # the child that builds the engines
    args = ap.parse_args()
    if args.build_into:
        from serving_batching import build_engines

        print(json.dumps([str(p) for p in build_engines("fraud_risk", args.build_into, versions=2)]))
        return 0
    if args.swaps < 2 or args.bad_every < 1 or args.clients < 1:
        ap.error("needs --swaps >= 2, --bad-every >= 1 and --clients >= 1")

    logging.getLogger("model_registry.runtime").setLevel(logging.CRITICAL)  # each refusal is in the table
    with tempfile.TemporaryDirectory(prefix="serving-soak-") as d:
        built = subprocess.run([sys.executable, __file__, "--build-into", d], check=True, capture_output=True,
                               text=True)
        v1, v2 = (Path(p) for p in json.loads(built.stdout.strip().splitlines()[-1]))
        bad = bad_versions(v2, Path(d) / "bad")
        res = soak(v1, v2, bad, args.swaps, args.bad_every, args.clients, args.dwell_ms / 1e3, args.window,
                   Path(d))
    print(report(res))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
