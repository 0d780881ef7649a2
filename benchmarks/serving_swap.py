"""Swap time with the warm canary, the cold canary and no canary, in one run, under client load.

Two versions of a smoke-size fraud_risk model are exported and built into CPU engines by the factory's own builder
(with their canary samples, as :mod:`benchmarks.serving_batching` builds them). Then, ``--swaps`` rounds; in each
round, in a fresh random order, one ``EngineRunner`` per mode serves v1 under 4 client threads and ``swap()``s to
v2:

- ``warm``: the pre-started canary process (:class:`model_registry.canary.WarmCanary`), started and answering
  before the first timed swap, as in a serving process that has been up a while;
- ``cold``: a fresh ``python -m model_registry.canary`` child per swap (numpy and ONNX Runtime imported each time);
- ``none``: sha256 and contract only (``canary=False``), the floor.

Printed: median and max per mode, the ratios cold/warm and warm/none, and the failed requests (every mode).

    .venv/bin/python benchmarks/serving_swap.py --swaps 15 --out benchmarks/results/serving_swap_cpu.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

MODES = ("warm", "cold", "none")


def swap_times(v1: Path, v2: Path, swaps: int, seed: int = 0) -> dict:
    from model_registry.canary import WarmCanary
    from model_registry.runtime import EngineRunner

    x = np.random.default_rng(0).normal(size=(4, 18)).astype(np.float32)
    warm = WarmCanary()
    warm.check(v1)  # started and answering: the serving process has been up a while
    out: dict[str, list[float]] = {m: [] for m in MODES}
    canary_ms: dict[str, list[float]] = {m: [] for m in MODES}
    failed, served = [0], [0]
    rng = np.random.default_rng(seed)
    try:
        for _ in range(swaps):
            for mode in rng.permutation(MODES):
                runner = EngineRunner(v1, canary=mode != "none", warm_canary=warm if mode == "warm" else False)
                stop = threading.Event()

                def client(r=runner, stop=stop):
                    while not stop.is_set():
                        try:
                            r.predict(x)
                            served[0] += 1
                        except Exception:  # noqa: BLE001 - any failed request counts
                            failed[0] += 1

                threads = [threading.Thread(target=client) for _ in range(4)]
                for t in threads:
                    t.start()
                time.sleep(0.2)
                seconds = runner.swap(v2)
                stop.set()
                for t in threads:
                    t.join()
                out[mode].append(seconds * 1e3)
                canary_ms[mode].append((runner.swaps[-1]["canary_seconds"] or 0.0) * 1e3)
    finally:
        warm.close()
    res = {m: {"median_ms": round(float(np.median(v)), 1), "max_ms": round(float(np.max(v)), 1),
               "canary_median_ms": round(float(np.median(canary_ms[m])), 1), "n": len(v)} for m, v in out.items()}
    return res | {"ratio_cold_to_warm": round(res["cold"]["median_ms"] / res["warm"]["median_ms"], 2),
                  "ratio_warm_to_none": round(res["warm"]["median_ms"] / res["none"]["median_ms"], 2),
                  "failed_requests": failed[0], "served_requests": served[0]}


def report(res: dict) -> str:
    lines = ["| canary | swap median ms | swap max ms | of which canary, median ms | swaps |", "|---|---|---|---|---|"]
    for m in MODES:
        r = res[m]
        lines.append(f"| {m} | {r['median_ms']} | {r['max_ms']} | {r['canary_median_ms']} | {r['n']} |")
    lines.append(f"\ncold / warm {res['ratio_cold_to_warm']}x, warm / none {res['ratio_warm_to_none']}x; "
                 f"under 4 clients: served {res['served_requests']}, failed {res['failed_requests']}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--swaps", type=int, default=15, help="rounds (one swap per mode each)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    from serving_batching import build_engines

    with tempfile.TemporaryDirectory(prefix="serving-swap-") as d:
        v1, v2 = build_engines("fraud_risk", Path(d), versions=2)
        res = swap_times(v1, v2, args.swaps)
    print(report(res))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
