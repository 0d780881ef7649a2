"""Latency ratio table: each engine against PyTorch eager, from one run on one machine.

    python benchmarks/engine_ratios.py [--run-dir $FACTORY_HOME/runs/<date>] [--gpu]

CPU part (default): for every family of a finished nightly run, PyTorch eager (FP32, 1
thread) and each CPU engine (ONNX Runtime, 1 thread) at batch 1 and at the family's
opt batch; ratio = engine p50 / eager p50 (below 1 is faster).

GPU part (``--gpu``, needs CUDA): the same models in PyTorch eager on the GPU against
the same models replayed as CUDA graphs (CUDA events, pinned host buffers), with
NVML telemetry sampled during the run; TensorRT engines join the table wherever
TensorRT is importable. Without a run directory the models are freshly initialised
(latency does not depend on the weights), so the GPU part needs nothing but torch.
Not a test: it prints numbers, it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from factory_core.config import Family, load_config
from factory_core.precisions import PRECISIONS
from model_registry.runners import open_runner
from pipelines.benchmark import TorchRunner, benchmark_runner

N_FEATURES = {Family.MARKET_ALERT: 16, Family.PRICE_DIRECTION: 16, Family.FRAUD_RISK: 11}


def _models(cfg, run_dir: Path | None):
    import torch

    from pipelines.models import build_model, load_model

    for fam in cfg.enabled_families:
        fc = cfg.families[fam]
        shape = (64, N_FEATURES[fam]) if fam is Family.FRAUD_RISK else (64, fc.window, N_FEATURES[fam])
        ckpt = run_dir / fam / "train" / "model.pt" if run_dir else None
        if ckpt and ckpt.is_file():
            model = load_model(str(ckpt))
            from pipelines.datasets import load_splits

            x = load_splits(run_dir / fam / "train" / "splits.npz")["val"].x[:64]
        else:
            torch.manual_seed(0)
            model = build_model(fam, fc, N_FEATURES[fam]).eval()
            x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
        yield fam, model, x


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run-dir", type=Path, default=None, help="a nightly run directory (default: the latest)")
    ap.add_argument("--profile", default=None)
    ap.add_argument("--gpu", action="store_true", help="GPU part: eager vs CUDA graph (+ TensorRT) with NVML")
    ap.add_argument("--iters", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = ap.parse_args(argv)
    cfg = load_config(profile=args.profile)
    run_dir = args.run_dir
    if run_dir is None and not args.gpu:
        runs = sorted((cfg.home / "runs").glob("*/summary.json"))
        if not runs:
            print("no finished nightly run under $FACTORY_HOME/runs: run `make nightly` first", file=sys.stderr)
            return 2
        run_dir = runs[-1].parent
    b = dict(warmup=cfg.benchmark.warmup, iters=args.iters or cfg.benchmark.iters,
             max_seconds=cfg.benchmark.max_seconds)
    rows = []
    for fam, model, x in _models(cfg, run_dir):
        opt = cfg.families[fam].opt_batch
        if args.gpu:
            base = benchmark_runner(TorchRunner(model, "cuda"), x, opt, gpu=True, **b)
            others = [("torch CUDA graph", benchmark_runner(TorchRunner(model, "cuda", cuda_graph=True), x, opt,
                                                           gpu=True, **b))]
            others += _trt_rows(run_dir, fam, x, opt, b)
            rows += _rows(fam, "torch eager (cuda)", base, others)
        else:
            base = benchmark_runner(TorchRunner(model, "cpu", threads=1), x, opt, **b)
            others = []
            for prec in PRECISIONS:
                d = run_dir / fam / "engines" / "cpu" / prec
                if (d / "model.ort.onnx").is_file():
                    ort = open_runner(d / "model.ort.onnx", "onnxruntime")
                    others.append((f"onnxruntime {prec}", benchmark_runner(ort, x, opt, **b)))
            rows += _rows(fam, "torch eager (cpu, 1 thread)", base, others)
    _print(rows, gpu=args.gpu)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


def _trt_rows(run_dir, fam, x, opt, b):
    from factory_core.availability import first_gpu, tensorrt_version

    gpu = first_gpu()
    if run_dir is None or not tensorrt_version() or gpu is None:
        return []
    out = []
    for prec in PRECISIONS:
        plan = run_dir / fam / "engines" / gpu.target_name / prec / "model.plan"
        if plan.is_file():
            trt = open_runner(plan, "tensorrt", cuda_graph=True)
            out.append((f"tensorrt {prec} (cuda graph)", benchmark_runner(trt, x, opt, gpu=True, **b)))
    return out


def _rows(fam, base_name, base, others):
    rows = []
    for name, r in [(base_name, base), *others]:
        row = {"family": fam.value, "runner": name, "info": {k: v for k, v in r.items() if k not in
                                                                ("batch1", "opt", "telemetry")}}
        for key in ("batch1", "opt"):
            row[key] = r[key]
            row[f"{key}_ratio"] = r[key]["p50_ms"] / base[key]["p50_ms"]
        if "telemetry" in r:
            row["telemetry"] = r["telemetry"]
        rows.append(row)
    return rows


def _print(rows, gpu: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Latency vs PyTorch eager (p50 ratio; < 1 is faster) · one run, one machine")
    for col in ("family", "runner", "b1 p50 ms", "b1 p99 ms", "b1 ratio", "opt", "opt p50 ms", "opt p99 ms",
                "opt ratio", "opt samples/s") + (("GPU util % max", "power W max") if gpu else ()):
        table.add_column(col, justify="left" if col in ("family", "runner") else "right")
    for r in rows:
        t = r.get("telemetry", {})
        tele = ((f"{t['DCGM_FI_DEV_GPU_UTIL']['max']:.0f}", f"{t['DCGM_FI_DEV_POWER_USAGE']['max']:.0f}")
                if t.get("available") else ("—", "—")) if gpu else ()
        table.add_row(r["family"], r["runner"], f"{r['batch1']['p50_ms']:.3f}", f"{r['batch1']['p99_ms']:.3f}",
                      f"{r['batch1_ratio']:.2f}", str(r["opt"]["batch"]), f"{r['opt']['p50_ms']:.3f}",
                      f"{r['opt']['p99_ms']:.3f}", f"{r['opt_ratio']:.2f}", f"{r['opt']['throughput']:.0f}", *tele)
    Console(width=200).print(table)


if __name__ == "__main__":
    sys.exit(main())
